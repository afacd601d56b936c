//! [`FreezeGuard`]: a tiny process that thaws a frozen cgroup if the dumper dies holding it
//! frozen (a dumper can always be killed: OOM killer, a timeout, an operator; its `Drop`
//! never runs then).
//!
//! ```text
//! dumper:    open the control file (O_WRONLY), pipe; fork
//!   child:     setsid (own session and group: a kill of the dumper's group misses it);
//!              fork the guardian; _exit (the dumper reaps it at once)
//!   guardian:  keeps only the pipe's read end and the control file (fd 0 and 1);
//!              read(pipe) -> 1 byte: dismissed (the dumper thawed itself): exit
//!                         -> EOF:    the dumper is gone (the kernel closed its end):
//!                                    write the thaw value, exit
//! ```
//!
//! The guardian runs only raw system calls after the fork (the dumper may have threads).

use super::error::{Error, Result};
use nix::errno::Errno;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// A running guardian; [`FreezeGuard::dismiss`] (or drop) lets it exit without thawing.
#[derive(Debug)]
pub struct FreezeGuard {
    /// Our end of the pipe the guardian reads.
    pipe: Option<OwnedFd>,
}

impl FreezeGuard {
    /// Starts a guardian that writes `thaw` to `control` (the cgroup's `cgroup.freeze` or
    /// `freezer.state`) when the calling process dies without dismissing it.
    pub fn spawn(control: &Path, thaw: &'static str) -> Result<Self> {
        let ctl = OpenOptions::new()
            .write(true)
            .open(control)
            .map_err(|e| Error::io("open", control, &e))?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|errno| Error::Sys { op: "pipe2", errno })?;
        let (r, c) = (read.as_raw_fd(), ctl.as_raw_fd());
        // SAFETY: the guardian only makes raw system calls on descriptors it holds.
        spawn_detached(|| unsafe { guardian(r, c, thaw.as_bytes()) })?;
        drop(read);
        drop(ctl);
        Ok(FreezeGuard { pipe: Some(write) })
    }

    /// Lets the guardian exit without thawing (call after thawing).
    pub fn dismiss(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            // A guardian that is gone already cannot read it: nothing to do then.
            let _ = nix::unistd::write(&pipe, b"D");
        }
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        self.dismiss();
    }
}

/// Runs `body` in a detached grandchild (own session: a kill of the caller's group misses it;
/// its parent exits at once and is reaped here). `body` runs right after a fork of a possibly
/// multi-threaded process: it must make raw system calls only (no allocation, no locks).
pub(crate) fn spawn_detached(body: impl FnOnce()) -> Result<()> {
    // SAFETY: fork; the child and the grandchild only make raw system calls (setsid, fork,
    // _exit) before `body`, which the caller guarantees does the same.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(Error::Sys {
            op: "fork",
            errno: Errno::last(),
        });
    }
    if child == 0 {
        // SAFETY: raw async-signal-safe calls only.
        unsafe {
            libc::setsid();
            if libc::fork() != 0 {
                libc::_exit(0);
            }
        }
        body();
        // SAFETY: leaving the forked process without running anything of the caller's.
        unsafe { libc::_exit(0) }
    }
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None).map_err(|errno| {
        Error::Sys {
            op: "waitpid",
            errno,
        }
    })?;
    Ok(())
}

/// The guardian's body: see the module doc.
///
/// # Safety
/// Called in a freshly forked process; `r` and `c` are open descriptors of it.
unsafe fn guardian(r: i32, c: i32, thaw: &[u8]) -> ! {
    // SAFETY: plain descriptor operations and _exit; `thaw` is a static string.
    unsafe {
        let r2 = libc::fcntl(r, libc::F_DUPFD, 3);
        let c2 = libc::fcntl(c, libc::F_DUPFD, 3);
        libc::dup2(r2, 0);
        libc::dup2(c2, 1);
        libc::syscall(libc::SYS_close_range, 2u32, u32::MAX, 0u32);
        let mut byte = 0u8;
        let n = loop {
            let n = libc::read(0, (&mut byte as *mut u8).cast(), 1);
            if n >= 0 || *libc::__errno_location() != libc::EINTR {
                break n;
            }
        };
        if n <= 0 {
            libc::write(1, thaw.as_ptr().cast(), thaw.len());
        }
        libc::_exit(0)
    }
}
