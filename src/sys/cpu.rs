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
