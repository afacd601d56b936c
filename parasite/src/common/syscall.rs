//! Raw x86-64 Linux syscalls (`syscall` instruction, args in rdi, rsi, rdx, r10, r8, r9).
//! Results are raw: -4095..-1 is -errno.

use core::arch::asm;

/// Performs syscall `nr` with six arguments (unused ones may be 0).
///
/// # Safety
/// The caller guarantees the arguments are valid for syscall `nr` (pointers point to memory of
/// the size the kernel will read or write).
#[inline(always)]
pub unsafe fn syscall6(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize, a6: usize) -> isize {
    let ret: isize;
    // SAFETY: the caller upholds the syscall's contract; rcx and r11 are clobbered by the
    // instruction and declared so.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Syscall with three arguments. Same contract as [`syscall6`].
///
/// # Safety
/// See [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(nr: usize, a1: usize, a2: usize, a3: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a1, a2, a3, 0, 0, 0) }
}
