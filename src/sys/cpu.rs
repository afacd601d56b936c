//! CPU feature queries: CPUID leaf 0xD (xsave layout) and XCR0.

/// `(offset, size)` of xsave component `i` (>= 2) in the standard (non-compacted) format.
pub fn xsave_component(i: u32) -> (u32, u32) {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID is available on every x86-64 CPU; leaf 0xD sub-leaf i only reads
    // CPU information (it is an unsafe fn on older toolchains only).
    let r = unsafe { core::arch::x86_64::__cpuid_count(0xd, i) };
    (r.ebx, r.eax)
}

/// The user state components the OS enabled (XCR0), or x87|SSE when xsave is off.
pub fn xcr0() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 1 only reads CPU information.
    let leaf1 = unsafe { core::arch::x86_64::__cpuid(1) };
    if leaf1.ecx & (1 << 27) == 0 {
        return 3;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE (CPUID.1:ECX bit 27) is set, so XGETBV with ecx = 0 is allowed in user
    // mode; it only writes eax and edx.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                         options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// True when `xgetbv` with ecx = 1 (the XINUSE bitmap) is supported (CPUID.(0xD, 1):EAX
/// bit 2).
pub fn xgetbv1_available() -> bool {
    // CPUID exits to the hypervisor in a VM: ask once.
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 0xD sub-leaf 1 only reads CPU information.
        let r = unsafe { core::arch::x86_64::__cpuid_count(0xd, 1) };
        xcr0() & 0b110 != 0 && r.eax & (1 << 2) != 0
    })
}

/// Number of 32-bit capability words in CRIU's `cpuinfo.img` (capability version 2).
pub const NCAPINTS: usize = 19;

/// The CPU as CRIU's compel library describes it: identification, the capability words in
/// the Linux kernel's layout (word 0 CPUID.1:EDX, 4 CPUID.1:ECX, 9 CPUID.(7,0):EBX, ...), and
/// the user xsave features with the xsave area sizes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuId {
    /// The 12-byte vendor string (`GenuineIntel`, `AuthenticAMD`, `HygonGenuine`, ...).
    pub vendor: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub caps: [u32; NCAPINTS],
    /// The brand string, leading blanks dropped.
    pub model_id: String,
    /// Xsave components this CPU supports for user state.
    pub xfeatures_mask: u64,
    /// CPUID.(0xD,0):EBX and ECX: the xsave area size for XCR0 and its maximum.
    pub xsave_size: u32,
    pub xsave_size_max: u32,
}

fn cpuid(leaf: u32, sub: u32) -> core::arch::x86_64::CpuidResult {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU and only reads CPU information; leaves above
    // the maximum return data of the highest leaf, never fault.
    unsafe {
        core::arch::x86_64::__cpuid_count(leaf, sub)
    }
}

impl CpuId {
    /// Whether capability bit `word * 32 + bit` is set.
    pub fn has(&self, word: usize, bit: u32) -> bool {
        self.caps.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn set(&mut self, word: usize, bit: u32, on: bool) {
        if on {
            self.caps[word] |= 1 << bit;
        } else {
            self.caps[word] &= !(1 << bit);
        }
    }

    /// This CPU, read with CPUID the way CRIU's dump and restore read it (`compel_cpuid`), so
    /// that words and masks compare equal with CRIU's `cpuinfo.img` of the same host.
    pub fn host() -> CpuId {
        let mut c = CpuId::default();
        let l0 = cpuid(0, 0);
        let max = l0.eax;
        let mut v = Vec::with_capacity(12);
        for r in [l0.ebx, l0.edx, l0.ecx] {
            v.extend_from_slice(&r.to_le_bytes());
        }
        c.vendor = String::from_utf8_lossy(&v).into_owned();
        c.family = 4;
        if max >= 1 {
            let l1 = cpuid(1, 0);
            c.family = (l1.eax >> 8) & 0xf;
            c.model = (l1.eax >> 4) & 0xf;
            c.stepping = l1.eax & 0xf;
            if c.family == 0xf {
                c.family += (l1.eax >> 20) & 0xff;
            }
            if c.family >= 6 {
                c.model += ((l1.eax >> 16) & 0xf) << 4;
            }
            c.caps[0] = l1.edx;
            c.caps[4] = l1.ecx;
        }
        if max >= 6 {
            c.caps[14] = cpuid(6, 0).eax;
        }
        if max >= 7 {
            let l7 = cpuid(7, 0);
            (c.caps[9], c.caps[11], c.caps[18]) = (l7.ebx, l7.ecx, l7.edx);
        }
        if max >= 0xd {
            c.caps[10] = cpuid(0xd, 1).eax;
        }
        if max >= 0xf {
            c.caps[16] = cpuid(0xf, 0).edx;
            // LLC QoS (word 16 bit 1): its sub-leaf.
            if c.has(16, 1) {
                c.caps[12] = cpuid(0xf, 1).edx;
            }
        }
        let ext = cpuid(0x8000_0000, 0).eax;
        if ext & 0xffff_0000 == 0x8000_0000 && ext >= 0x8000_0001 {
            let e1 = cpuid(0x8000_0001, 0);
            (c.caps[6], c.caps[1]) = (e1.ecx, e1.edx);
        }
        if ext >= 0x8000_0004 {
            let mut b = Vec::with_capacity(48);
            for leaf in 0x8000_0002..=0x8000_0004 {
                let r = cpuid(leaf, 0);
                for w in [r.eax, r.ebx, r.ecx, r.edx] {
                    b.extend_from_slice(&w.to_le_bytes());
                }
            }
            let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
            c.model_id = String::from_utf8_lossy(&b[..end])
                .trim_start_matches(' ')
                .to_string();
        }
        if ext >= 0x8000_0007 {
            c.caps[17] = cpuid(0x8000_0007, 0).ebx;
        }
        if ext >= 0x8000_000a {
            c.caps[15] = cpuid(0x8000_000a, 0).edx;
        }
        if ext >= 0x8000_0008 {
            c.caps[13] = cpuid(0x8000_0008, 0).ebx;
        }
        // Synthetic words as CRIU sets them: CPUID and NOPL always on x86-64 (word 3).
        c.set(3, 25, true);
        c.set(3, 20, true);
        if max < 0xd {
            c.set(4, 26, false);
        }
        match c.vendor.as_str() {
            "GenuineIntel" if c.family == 15 => {
                c.set(3, 16, false);
                c.set(9, 9, false);
            }
            "GenuineIntel" if c.family == 6 => c.set(3, 16, true),
            "AuthenticAMD" | "HygonGenuine" => {
                c.set(0, 31, false);
                if c.family >= 0x10 {
                    c.set(3, 16, true);
                }
                let level = cpuid(1, 0).eax;
                if c.family == 0xf && ((0x0f48..0x0f50).contains(&level) || level >= 0x0f58) {
                    c.set(3, 16, true);
                }
            }
            _ => {}
        }
        c.xsave_features();
        c
    }

    /// `xfeatures_mask` and the xsave sizes, as compel's `compel_fpuid`.
    fn xsave_features(&mut self) {
        if !self.has(4, 26) {
            return;
        }
        let d = cpuid(0xd, 0);
        let mut mask = u64::from(d.eax) | (u64::from(d.edx) << 32);
        // The CPUID feature each xsave component needs (fpu, xmm, avx, mpx, mpx, avx512f x3,
        // intel_pt, pku, hdc): a component whose feature is off is not used.
        const NEEDS: [(usize, u32); 11] = [
            (0, 0),
            (0, 25),
            (4, 28),
            (9, 14),
            (9, 14),
            (9, 16),
            (9, 16),
            (9, 16),
            (9, 25),
            (11, 3),
            (14, 13),
        ];
        for (i, &(w, b)) in NEEDS.iter().enumerate() {
            if !self.has(w, b) {
                mask &= !(1 << i);
            }
        }
        // User components: x87, SSE, AVX, MPX (2), AVX-512 (3), PKRU.
        const USER: u64 = 0b10_1111_1111;
        // CRIU then clears its "supervisor" mask, which is the PT bit ORed with the HDC
        // component's index (10), not its bit: SSE (1) and MPX bounds (3) are cleared too.
        // Kept, so the mask compares equal with CRIU's cpuinfo.img of the same host.
        const CRIU_SUPERVISOR: u64 = (1 << 8) | 10;
        self.xfeatures_mask = mask & USER & !CRIU_SUPERVISOR;
        self.xsave_size = d.ebx;
        self.xsave_size_max = d.ecx;
    }
}
