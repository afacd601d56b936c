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
