//! Raw syscalls of the restorer (numbers of x86-64), results as `Result<usize, errno>`, and
//! the error report (`StatusRecord` to `status_fd`, then `exit_group`).

use crate::abi::{self, StatusRecord, TaskArgs};
use crate::common::syscall::syscall6;

pub const READ: usize = 0;
pub const WRITE: usize = 1;
pub const CLOSE: usize = 3;
pub const MMAP: usize = 9;
pub const MPROTECT: usize = 10;
pub const MUNMAP: usize = 11;
pub const RT_SIGACTION: usize = 13;
pub const RT_SIGPROCMASK: usize = 14;
pub const RT_SIGRETURN: usize = 15;
pub const SCHED_YIELD: usize = 24;
pub const MREMAP: usize = 25;
pub const MADVISE: usize = 28;
pub const IOCTL: usize = 16;
pub const MLOCK: usize = 149;
pub const MLOCKALL: usize = 151;
pub const SETITIMER: usize = 38;
pub const EXIT: usize = 60;
pub const UMASK: usize = 95;
pub const GETGROUPS: usize = 115;
pub const SETGROUPS: usize = 116;
pub const SETRESUID: usize = 117;
pub const GETRESUID: usize = 118;
pub const SETRESGID: usize = 119;
pub const GETRESGID: usize = 120;
pub const SETFSUID: usize = 122;
pub const SETFSGID: usize = 123;
pub const CAPSET: usize = 126;
pub const RT_SIGQUEUEINFO: usize = 129;
pub const SIGALTSTACK: usize = 131;
pub const PERSONALITY: usize = 135;
pub const SETPRIORITY: usize = 141;
pub const SCHED_SETSCHEDULER: usize = 144;
pub const PRCTL: usize = 157;
pub const ARCH_PRCTL: usize = 158;
pub const FUTEX: usize = 202;
pub const SET_TID_ADDRESS: usize = 218;
pub const TIMER_CREATE: usize = 222;
pub const TIMER_SETTIME: usize = 223;
pub const EXIT_GROUP: usize = 231;
pub const SET_ROBUST_LIST: usize = 273;
pub const RT_TGSIGQUEUEINFO: usize = 297;
pub const PRLIMIT64: usize = 302;
pub const SECCOMP: usize = 317;
pub const MEMBARRIER: usize = 324;
pub const RSEQ: usize = 334;
pub const CLONE3: usize = 435;

pub const FUTEX_WAIT_PRIVATE: usize = 128;
pub const FUTEX_WAKE_PRIVATE: usize = 129;

/// Performs a syscall; `Err(errno)` for results in -4095..-1.
///
/// # Safety
/// The arguments must be valid for syscall `nr` (see [`syscall6`]).
#[inline(always)]
pub unsafe fn sc(nr: usize, a1: usize, a2: usize, a3: usize, a4: usize, a5: usize, a6: usize) -> Result<usize, i32> {
    // SAFETY: forwarded contract.
    let r = unsafe { syscall6(nr, a1, a2, a3, a4, a5, a6) };
    if (-4095..0).contains(&r) {
        Err(-r as i32)
    } else {
        Ok(r as usize)
    }
}

/// Writes a status record to `status_fd` (if any); errors are ignored (nobody to tell).
pub fn report(a: &TaskArgs, stage: u32, step: u32, index: u32, code: i32) {
    if a.status_fd < 0 {
        return;
    }
    let pid = if a.nr_threads > 0 && a.threads != 0 {
        // SAFETY: threads points to nr_threads ThreadArgs in the area (checked at entry).
        unsafe { (*(a.threads as *const abi::ThreadArgs)).tid }
    } else {
        0
    };
    let rec = StatusRecord { magic: abi::STATUS_MAGIC, stage, pid, step, index, code };
    // SAFETY: rec is a live 24-byte value; write only reads it.
    let _ = unsafe {
        sc(WRITE, a.status_fd as usize, &rec as *const _ as usize, core::mem::size_of::<StatusRecord>(), 0, 0, 0)
    };
}

/// Reports a failed step and ends the whole task.
pub fn fail(a: &TaskArgs, step: u32, index: u32, errno: i32) -> ! {
    report(a, abi::STAGE_ERROR, step, index, errno);
    loop {
        // SAFETY: exit_group takes no pointers.
        let _ = unsafe { sc(EXIT_GROUP, abi::STATUS_EXIT_CODE as usize, 0, 0, 0, 0, 0) };
    }
}

/// `check(a, step, index, result)`: the value, or fail the task.
pub fn check(a: &TaskArgs, step: u32, index: usize, r: Result<usize, i32>) -> usize {
    match r {
        Ok(v) => v,
        Err(e) => fail(a, step, index as u32, e),
    }
}

/// A slice of `n` values of T at absolute address `addr` in the area (empty if `n == 0`).
///
/// # Safety
/// `addr` must point to `n` valid, aligned T that live as long as the area.
pub unsafe fn slice<T>(addr: u64, n: u64) -> &'static [T] {
    if n == 0 || addr == 0 {
        return &[];
    }
    // SAFETY: forwarded contract.
    unsafe { core::slice::from_raw_parts(addr as *const T, n as usize) }
}

/// A futex word in the area seen as an atomic.
///
/// # Safety
/// `p` points to an aligned u32 shared only through atomics.
pub unsafe fn atomic(p: *const u32) -> &'static core::sync::atomic::AtomicU32 {
    // SAFETY: forwarded contract.
    unsafe { core::sync::atomic::AtomicU32::from_ptr(p as *mut u32) }
}

/// Waits while `*p == val` (FUTEX_WAIT, private).
pub fn futex_wait(p: &core::sync::atomic::AtomicU32, val: u32) {
    // SAFETY: p is a valid futex word; no timeout.
    let _ = unsafe { sc(FUTEX, p.as_ptr() as usize, FUTEX_WAIT_PRIVATE, val as usize, 0, 0, 0) };
}

/// Wakes all waiters of `p`; returns how many woke.
pub fn futex_wake(p: &core::sync::atomic::AtomicU32) -> usize {
    // SAFETY: p is a valid futex word.
    unsafe { sc(FUTEX, p.as_ptr() as usize, FUTEX_WAKE_PRIVATE, i32::MAX as usize, 0, 0, 0) }.unwrap_or(0)
}
