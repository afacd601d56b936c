//! Going to the background (`--daemon` of the page server), as CRIU's `cr_daemon`.

use nix::errno::Errno;
use nix::unistd::{fork, setsid, ForkResult};

/// Forks: the parent gets `Some(child pid)`; the child gets `None`, leads a new session and
/// has its standard input, output and error on `/dev/null` (log to a file with `-o`).
///
/// The caller must be single-threaded.
pub fn daemonize() -> Result<Option<i32>, Errno> {
    // SAFETY: the caller is single-threaded (a command-line verb before it starts any
    // thread), so the child may run arbitrary code after the fork.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(Some(child.as_raw())),
        ForkResult::Child => {
            setsid()?;
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
            for fd in 0..3 {
                super::fds::dup2_raw(std::os::fd::AsRawFd::as_raw_fd(&null), fd, false)?;
            }
            Ok(None)
        }
    }
}

/// Forks a worker that shares everything with its parent (CRIU's service forks one per
/// request it isolates): the parent gets `Some(child pid)`, the child `None`.
///
/// The caller must be single-threaded.
pub fn fork_worker() -> Result<Option<i32>, Errno> {
    // SAFETY: the caller is single-threaded (the RPC service between requests), so the
    // child may run arbitrary code after the fork.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(Some(child.as_raw())),
        ForkResult::Child => Ok(None),
    }
}

/// SIGCHLD ignored (`true`: children are reaped by the kernel, never waited for) or back to
/// its default disposition (`false`).
pub fn reap_children_automatically(on: bool) {
    use nix::sys::signal::{signal, SigHandler, Signal};
    let h = if on {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    // SAFETY: SIG_IGN and SIG_DFL install no handler code.
    let _ = unsafe { signal(Signal::SIGCHLD, h) };
}
