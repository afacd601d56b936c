//! `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp`: `core` emits calls to them. Written with
//! string instructions so the compiler cannot turn them back into calls to themselves.

use core::arch::asm;

/// # Safety
/// `d` and `s` are valid for `n` bytes and do not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    // SAFETY: rep movsb copies n bytes forward from rsi to rdi; the caller guarantees both ranges.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") d => _, inout("rsi") s => _,
             options(nostack, preserves_flags));
    }
    d
}

/// # Safety
/// `d` and `s` are valid for `n` bytes (they may overlap).
#[no_mangle]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) <= (s as usize) || (d as usize) >= (s as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dest is below src or the ranges are disjoint.
        return unsafe { memcpy(d, s, n) };
    }
    // SAFETY: backward copy (direction flag set, restored) for dest above an overlapping src.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") d.add(n).wrapping_sub(1) => _,
             inout("rsi") s.add(n).wrapping_sub(1) => _, options(nostack));
    }
    d
}

/// # Safety
/// `d` is valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: rep stosb stores n bytes at rdi; the caller guarantees the range.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") d => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    d
}

/// # Safety
/// `a` and `b` are valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and both ranges are valid for n bytes.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// Same as [`memcmp`].
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { memcmp(a, b, n) }
}
