//! Waiting for ptrace stops and exits (`waitpid(2)` with `__WALL | __WNOTHREAD`).
//!
//! `__WNOTHREAD` limits a wait to tasks the *calling thread* traces or forked, so tracers on
//! different threads (parallel tests) never steal each other's events.
//!
//! Waiting for one task always waits for *any* (`waitpid(-1)`) and stashes the events of
//! other tasks in a per-thread queue, which later waits consume first. Waiting for the one tid
//! with `waitpid(tid)` would deadlock when a process is killed: its leader is reported only
//! after its other (traced) threads are reaped, and those exits are ours to reap. A wait also
//! reaps exits of the calling thread's own untraced children (they are stashed, never
//! delivered to `std::process::Child::wait`).

use super::error::{Error, Result};
use nix::errno::Errno;
use std::cell::RefCell;
use std::collections::VecDeque;

thread_local! {
    /// Events reaped while waiting for another task, per tracer thread.
    static STASH: RefCell<VecDeque<(i32, WaitEvent)>> = const { RefCell::new(VecDeque::new()) };
}

fn unstash(tid: Option<i32>) -> Option<(i32, WaitEvent)> {
    STASH.with(|s| {
        let mut s = s.borrow_mut();
        let pos = match tid {
            Some(tid) => s.iter().position(|(t, _)| *t == tid)?,
            None => 0,
        };
        s.remove(pos)
    })
}

fn stash(tid: i32, ev: WaitEvent) {
    STASH.with(|s| s.borrow_mut().push_back((tid, ev)));
}

/// `__WNOTHREAD`.
const WNOTHREAD: i32 = 0x2000_0000;
/// `PTRACE_EVENT_STOP` in bits 16..24 of the status.
pub const PTRACE_EVENT_STOP: i32 = 128;

/// One decoded `waitpid` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEvent {
    /// A `PTRACE_EVENT_STOP`: after `PTRACE_INTERRUPT` (`sig` SIGTRAP) or a group-stop
    /// (`sig` = the stop signal: SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
    EventStop {
        /// The stop signal.
        sig: i32,
    },
    /// A signal-delivery-stop for `sig` (also our `int3` traps: SIGTRAP).
    SignalStop {
        /// The signal about to be delivered.
        sig: i32,
    },
    /// Another ptrace event stop (`PTRACE_EVENT_*` other than STOP).
    OtherEvent {
        /// The signal of the stop.
        sig: i32,
        /// The event number.
        event: i32,
    },
    /// The task exited with `code`.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// The task was killed by `sig`.
    Killed {
        /// The fatal signal.
        sig: i32,
    },
}

impl WaitEvent {
    /// Decodes a raw wait status.
    pub fn decode(status: i32) -> Self {
        if libc::WIFEXITED(status) {
            WaitEvent::Exited {
                code: libc::WEXITSTATUS(status),
            }
        } else if libc::WIFSIGNALED(status) {
            WaitEvent::Killed {
                sig: libc::WTERMSIG(status),
            }
        } else {
            let sig = libc::WSTOPSIG(status);
            match status >> 16 {
                0 => WaitEvent::SignalStop { sig },
                PTRACE_EVENT_STOP => WaitEvent::EventStop { sig },
                event => WaitEvent::OtherEvent { sig, event },
            }
        }
    }

    /// True for an exit or a fatal signal.
    pub fn is_gone(&self) -> bool {
        matches!(self, WaitEvent::Exited { .. } | WaitEvent::Killed { .. })
    }
}

fn waitpid(pid: i32, flags: i32) -> std::result::Result<Option<(i32, WaitEvent)>, Errno> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live i32 the kernel writes; no other memory is touched.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags | libc::__WALL | WNOTHREAD) };
        match ret {
            -1 if Errno::last() == Errno::EINTR => continue,
            -1 => return Err(Errno::last()),
            0 => return Ok(None),
            tid => return Ok(Some((tid, WaitEvent::decode(status)))),
        }
    }
}

/// Blocks until task `tid` changes state; events of other tasks are stashed. No task left
/// to wait for (ECHILD) is reported as "task N died".
pub fn wait_tid(tid: i32) -> Result<WaitEvent> {
    if let Some((_, ev)) = unstash(Some(tid)) {
        return Ok(ev);
    }
    loop {
        match waitpid(-1, 0) {
            Ok(Some((t, ev))) if t == tid => return Ok(ev),
            Ok(Some((t, ev))) => stash(t, ev),
            Ok(None) => {
                return Err(Error::Unexpected {
                    op: "waitpid",
                    pid: tid,
                    what: "no status".into(),
                })
            }
            Err(Errno::ECHILD) => {
                return Err(Error::TaskDied {
                    pid: tid,
                    op: "waitpid",
                })
            }
            Err(errno) => return Err(Error::task("waitpid", tid, errno)),
        }
    }
}

/// Blocks until thread `tid` of thread group `tgid` changes state. A non-leader thread is
/// waited for directly (`waitpid(tid)`: the kernel looks it up in O(1)); a leader through
/// [`wait_tid`] (its report may wait for its other threads to be reaped). `waitpid(-1)`
/// costs O(tracees) in the kernel per event (it scans the tracer's whole ptraced list), which
/// makes a loop over thousands of threads quadratic; see BENCHMARKS.md.
pub fn wait_task(tgid: i32, tid: i32) -> Result<WaitEvent> {
    if tid == tgid {
        return wait_tid(tid);
    }
    if let Some((_, ev)) = unstash(Some(tid)) {
        return Ok(ev);
    }
    match waitpid(tid, 0) {
        Ok(Some((_, ev))) => Ok(ev),
        Ok(None) => Err(Error::Unexpected {
            op: "waitpid",
            pid: tid,
            what: "no status".into(),
        }),
        Err(Errno::ECHILD) => Err(Error::TaskDied {
            pid: tid,
            op: "waitpid",
        }),
        Err(errno) => Err(Error::task("waitpid", tid, errno)),
    }
}

/// Non-blocking: the state change of task `tid`, if any is pending.
pub fn poll_tid(tid: i32) -> Result<Option<WaitEvent>> {
    if let Some((_, ev)) = unstash(Some(tid)) {
        return Ok(Some(ev));
    }
    match waitpid(tid, libc::WNOHANG) {
        Ok(ev) => Ok(ev.map(|(_, e)| e)),
        Err(Errno::ECHILD) => Err(Error::TaskDied {
            pid: tid,
            op: "waitpid",
        }),
        Err(errno) => Err(Error::task("waitpid", tid, errno)),
    }
}

/// The calling thread's id (`gettid(2)`).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}
