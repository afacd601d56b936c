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
    #[allow(unused_unsafe)]
    // SAFETY: CPUID leaf 0xD sub-leaf 1 only reads CPU information.
    let r = unsafe { core::arch::x86_64::__cpuid_count(0xd, 1) };
    xcr0() & 0b110 != 0 && r.eax & (1 << 2) != 0
}

/// True when a 64-bit task can make 32-bit system calls through `int 0x80` (IA-32
/// emulation built in and not disabled at boot). Probed once, in a forked child: without
/// emulation the instruction faults and the signal kills only the child.
pub fn int80_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(probe_int80)
}

fn probe_int80() -> bool {
    // SAFETY: after fork the child only makes raw system calls and exits with _exit: no
    // allocation, lock or destructor of the (possibly multi-threaded) parent runs in it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: an anonymous private mapping; its address is only passed to the kernel.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            // SAFETY: _exit ends the child without running the parent's handlers.
            unsafe { libc::_exit(2) };
        }
        let desc = page.cast::<u32>();
        // SAFETY: `desc` points at a fresh writable page below 4 GiB; get_thread_area
        // (i386 number 244) only writes one 16-byte user_desc there; int 0x80 changes rax
        // only (r8-r11 are preserved by kernels since 4.16; declared clobbered anyway).
        let ret: i64 = unsafe {
            desc.write(12);
            let ret: i64;
            // rbx is reserved by LLVM: swap the pointer in and out around the call.
            core::arch::asm!("xchg rbx, {p}", "int 0x80", "xchg rbx, {p}",
                             p = inout(reg) desc as u64 => _,
                             inlateout("rax") 244i64 => ret,
                             lateout("r8") _, lateout("r9") _, lateout("r10") _,
                             lateout("r11") _, options(nostack));
            ret
        };
        // SAFETY: as above.
        unsafe { libc::_exit(if ret == 0 { 0 } else { 1 }) };
    }
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}
