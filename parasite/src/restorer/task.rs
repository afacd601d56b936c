//! Task-wide state: mm fields, personality, umask, sigactions, rlimits, prctls (child
//! subreaper, THP disable), membarrier registrations, pending signals, POSIX timers and
//! itimers.

use crate::abi::{self, step, PosixTimerArgs, SigInfo, TaskArgs, ThreadArgs};
use crate::sys::{self, check, sc, slice};

const PR_SET_PDEATHSIG: usize = 1;
const PR_SET_DUMPABLE: usize = 4;
const PR_SET_MM: usize = 35;
const PR_SET_MM_MAP: usize = 14;
const PR_SET_CHILD_SUBREAPER: usize = 36;
const PR_SET_THP_DISABLE: usize = 41;
const PR_TIMER_CREATE_RESTORE_IDS: usize = 77;

fn prctl(a: &TaskArgs, index: usize, o: usize, v: usize) {
    // SAFETY: the prctl options used here take integers only.
    let r = unsafe { sc(sys::PRCTL, o, v, 0, 0, 0, 0) };
    check(a, step::PRCTL, index, r);
}

/// `PR_SET_MM_MAP` with the image's mm fields, auxv and exe fd.
pub fn restore_mm(a: &TaskArgs) {
    if a.set_mm == 0 {
        return;
    }
    // SAFETY: mm is a prctl_mm_map in the area; its auxv points to auxv_size bytes there.
    let r = unsafe {
        sc(sys::PRCTL, PR_SET_MM, PR_SET_MM_MAP, &a.mm as *const _ as usize, core::mem::size_of::<abi::MmArgs>(), 0, 0)
    };
    check(a, step::MM_MAP, 0, r);
}

/// personality, umask, sigactions, rlimits, child subreaper.
pub fn restore_task_state(a: &TaskArgs) {
    if a.personality != u32::MAX {
        // SAFETY: integer argument only.
        let r = unsafe { sc(sys::PERSONALITY, a.personality as usize, 0, 0, 0, 0, 0) };
        check(a, step::PRCTL, 135, r);
    }
    if a.umask != u32::MAX {
        // SAFETY: integer argument only; umask cannot fail.
        let _ = unsafe { sc(sys::UMASK, a.umask as usize, 0, 0, 0, 0, 0) };
    }
    for (i, sa) in a.sigactions.iter().enumerate() {
        let sig = i + 1;
        if sig == 9 || sig == 19 {
            continue;
        }
        // SAFETY: sa is a kernel_sigaction in the area; no old action is requested.
        let r = unsafe { sc(sys::RT_SIGACTION, sig, sa as *const _ as usize, 0, 8, 0, 0) };
        check(a, step::SIGACTION, sig, r);
    }
    for (i, rl) in a.rlimits.iter().take(a.nr_rlimits as usize).enumerate() {
        // SAFETY: rl is a struct rlimit64 in the area; pid 0 is the caller.
        let r = unsafe { sc(sys::PRLIMIT64, 0, i, rl as *const _ as usize, 0, 0, 0) };
        check(a, step::RLIMIT, i, r);
    }
    if a.child_subreaper != 0 {
        prctl(a, PR_SET_CHILD_SUBREAPER, PR_SET_CHILD_SUBREAPER, a.child_subreaper as usize);
    }
    if a.thp_disabled != u32::MAX {
        prctl(a, PR_SET_THP_DISABLE, PR_SET_THP_DISABLE, a.thp_disabled as usize);
    }
    for bit in (0..32).filter(|b| a.membarrier_mask & (1 << b) != 0) {
        // SAFETY: a registration command takes integers only.
        let r = unsafe { sc(sys::MEMBARRIER, 1 << bit, 0, 0, 0, 0, 0) };
        check(a, step::MEMBARRIER, bit, r);
    }
}

/// `mlockall` for future mappings, once every VMA of the task is in place (the restore maps
/// nothing after it); before the creds, as the locked ranges.
pub fn restore_mlockall(a: &TaskArgs) {
    if a.mlockall != 0 {
        // SAFETY: takes flags only.
        let r = unsafe { sc(sys::MLOCKALL, a.mlockall as usize, 0, 0, 0, 0, 0) };
        check(a, step::MLOCKALL, 0, r);
    }
}

/// Leader-only prctls that must follow the creds (`setresuid` resets them).
pub fn restore_after_creds(a: &TaskArgs, leader: &ThreadArgs) {
    if leader.pdeath_sig != 0 {
        prctl(a, PR_SET_PDEATHSIG, PR_SET_PDEATHSIG, leader.pdeath_sig as usize);
    }
    if a.dumpable != u32::MAX {
        prctl(a, PR_SET_DUMPABLE, PR_SET_DUMPABLE, a.dumpable as usize);
    }
}

fn signo(si: &SigInfo) -> usize {
    i32::from_le_bytes([si.bytes[0], si.bytes[1], si.bytes[2], si.bytes[3]]) as usize
}

/// Queues the shared and per-thread pending signals (all signals are blocked until the final
/// sigreturn, so they stay pending).
pub fn queue_signals(a: &TaskArgs, threads: &[ThreadArgs]) {
    let pid = threads[0].tid as usize;
    // SAFETY: written by the engine inside the area.
    let shared: &[SigInfo] = unsafe { slice(a.shared_signals, a.nr_shared_signals) };
    for si in shared {
        // SAFETY: si is a 128-byte siginfo; the target is this very process.
        let r = unsafe { sc(sys::RT_SIGQUEUEINFO, pid, signo(si), si as *const _ as usize, 0, 0, 0) };
        check(a, step::SIGQUEUE, signo(si), r);
    }
    for t in threads {
        // SAFETY: written by the engine inside the area.
        let private: &[SigInfo] = unsafe { slice(t.signals, t.nr_signals) };
        for si in private {
            // SAFETY: si is a 128-byte siginfo; the target is a thread of this process.
            let r = unsafe {
                sc(sys::RT_TGSIGQUEUEINFO, pid, t.tid as usize, signo(si), si as *const _ as usize, 0, 0)
            };
            check(a, step::SIGQUEUE, signo(si), r);
        }
    }
}

/// `struct sigevent` of x86-64.
#[repr(C)]
struct SigEvent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    pad: [i32; 11],
}

/// Creates the POSIX timers with their old ids and arms them.
pub fn restore_posix_timers(a: &TaskArgs) {
    // SAFETY: written by the engine inside the area.
    let timers: &[PosixTimerArgs] = unsafe { slice(a.posix_timers, a.nr_posix_timers) };
    if timers.is_empty() {
        return;
    }
    // SAFETY: integer arguments only. Old kernels reject it; ids are then checked below.
    let _ = unsafe { sc(sys::PRCTL, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0) };
    for (i, t) in timers.iter().enumerate() {
        let ev = SigEvent { value: t.sigev_value, signo: t.sigev_signo, notify: t.sigev_notify, tid: t.notify_tid, pad: [0; 11] };
        let mut id: i32 = t.id;
        // SAFETY: ev is a sigevent and id an int the kernel reads (wanted id) and writes.
        let r = unsafe { sc(sys::TIMER_CREATE, t.clock_id as usize, &ev as *const _ as usize, &mut id as *mut _ as usize, 0, 0, 0) };
        check(a, step::POSIX_TIMER, i, r);
        if id != t.id {
            sys::fail(a, step::POSIX_TIMER, i as u32, 17);
        }
        let spec = [t.interval, t.value];
        // SAFETY: spec is a struct itimerspec; no old value requested.
        let r = unsafe { sc(sys::TIMER_SETTIME, id as usize, 0, spec.as_ptr() as usize, 0, 0, 0) };
        check(a, step::POSIX_TIMER, i, r);
    }
    // SAFETY: integer arguments only.
    let _ = unsafe { sc(sys::PRCTL, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0) };
}

/// Arms ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF.
pub fn restore_itimers(a: &TaskArgs) {
    for (i, it) in a.itimers.iter().enumerate() {
        if it.value.sec == 0 && it.value.usec == 0 {
            continue;
        }
        // SAFETY: it is a struct itimerval in the area; no old value requested.
        let r = unsafe { sc(sys::SETITIMER, i, it as *const _ as usize, 0, 0, 0, 0) };
        check(a, step::ITIMER, i, r);
    }
}
