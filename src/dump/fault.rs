//! Fault injection and interruption.
//!
//! Every step of the dump calls [`check`]. It fails the dump when
//! - `DumpOptions::fault` (filled from `STASIS_FAULT=<step>` by the command line) names the
//!   step: the dump fails as if the kernel had returned EIO there;
//! - the dumper received SIGINT, SIGTERM, SIGHUP or SIGQUIT: these are blocked in the dumping
//!   thread for the duration of the dump and read from a signalfd, so a signal never kills the
//!   dumper halfway with the tree frozen; the dump fails with "interrupted by signal N" and the
//!   tree is released.
//!
//! `signal:<step>` sends SIGTERM to the dumper at that step (to test the second path).
//!
//! Steps, in order: `seize`, `collect-tree`, `collect-task`, `core`, `mm`, `pages`, `files`,
//! `images`, `fsync`, `kill`.

use std::cell::RefCell;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::error::{DumpError, Result};

/// Every step name [`check`] is called with.
pub const STEPS: &[&str] = &[
    "seize",
    "collect-tree",
    "collect-task",
    "core",
    "mm",
    "pages",
    "files",
    "images",
    "fsync",
    "kill",
];

struct State {
    fault: Option<String>,
    sigfd: Option<SignalFd>,
    old_mask: SigSet,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn stop_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        s.add(sig);
    }
    s
}

/// Fault and signal checking for the duration of one dump (in this thread).
pub struct Session(());

impl Session {
    /// Starts checking: blocks the stop signals in this thread and opens a signalfd for them.
    pub fn begin(fault: Option<String>) -> Session {
        let set = stop_signals();
        let mut old = SigSet::empty();
        let blocked =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
                .is_ok();
        let sigfd = if blocked {
            SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).ok()
        } else {
            None
        };
        STATE.with(|s| {
            *s.borrow_mut() = Some(State {
                fault,
                sigfd,
                old_mask: old,
            })
        });
        Session(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        STATE.with(|s| {
            if let Some(st) = s.borrow_mut().take() {
                // Signals that arrived after the last check stay pending and are delivered now.
                let _ = nix::sys::signal::pthread_sigmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&st.old_mask),
                    None,
                );
            }
        });
    }
}

/// Fails if a fault is injected at `step` or the dumper was asked to stop.
pub fn check(step: &'static str, pid: i32) -> Result<()> {
    STATE.with(|s| {
        let s = s.borrow();
        let Some(st) = s.as_ref() else { return Ok(()) };
        if let Some(f) = &st.fault {
            if f == step {
                return Err(DumpError::new(
                    step,
                    pid,
                    Some(libc::EIO),
                    "injected fault (STASIS_FAULT)",
                ));
            }
            if f.strip_prefix("signal:") == Some(step) {
                let _ = nix::sys::signal::raise(Signal::SIGTERM);
            }
        }
        if let Some(fd) = &st.sigfd {
            if let Ok(Some(info)) = fd.read_signal() {
                return Err(DumpError::new(
                    step,
                    pid,
                    Some(libc::EINTR),
                    format!("interrupted by signal {}", info.ssi_signo),
                ));
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_session_no_fault() {
        assert!(check("seize", 1).is_ok());
    }

    #[test]
    fn injected_and_signalled() {
        let s = Session::begin(Some("mm".into()));
        assert!(check("seize", 1).is_ok());
        let e = check("mm", 7).unwrap_err();
        assert_eq!((e.step, e.pid, e.errno), ("mm", 7, Some(libc::EIO)));
        drop(s);
        assert!(check("mm", 7).is_ok());
        let _s = Session::begin(Some("signal:files".into()));
        let e = check("files", 3).unwrap_err();
        assert!(e.to_string().contains("interrupted by signal 15"), "{e}");
    }
}
