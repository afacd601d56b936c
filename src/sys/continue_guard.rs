//! [`ContinueGuard`]: a tiny process that sends SIGCONT to a stopped tree if the caller dies
//! before deciding its fate (`stasis migrate` leaves the source tree stopped while the
//! destination restores it; killed then, the tree would stay stopped forever: no copy
//! running anywhere).
//!
//! ```text
//! caller:    pidfd_open every pid of the tree, pipe; the guardian forked detached
//!            (freeze_guard::spawn_detached: own session)
//!   guardian:  keeps only the pipe's read end and the pidfds (everything else closed: no
//!              socket of the caller stays open in it)
//!              read(pipe) -> 1 byte: dismissed (the caller killed or resumed the tree): exit
//!                         -> EOF:    the caller is gone: SIGCONT through every pidfd, exit
//! ```
//! pidfds, not pids: a pid reused after the tree died is never signalled. The guardian runs
//! only raw system calls after the fork (the caller may have threads).

use super::error::{Error, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A running guardian; [`ContinueGuard::dismiss`] (or drop) lets it exit without a signal.
#[derive(Debug)]
pub struct ContinueGuard {
    pipe: Option<OwnedFd>,
}

impl ContinueGuard {
    /// Starts a guardian that sends SIGCONT to `pids` (those still alive now) when the calling
    /// process dies without dismissing it.
    pub fn spawn(pids: &[i32]) -> Result<Self> {
        let mut fds: Vec<OwnedFd> = Vec::new();
        for &p in pids {
            // SAFETY: pidfd_open takes a pid and flags; the result is a new descriptor.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0u32) };
            if fd >= 0 {
                // SAFETY: a descriptor the kernel just returned to us.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
        }
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|errno| Error::Sys { op: "pipe2", errno })?;
        // Every descriptor the guardian keeps, sorted: it closes the gaps between them.
        let mut keep: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let r = read.as_raw_fd();
        keep.push(r);
        keep.sort_unstable();
        let pidfds: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: the guardian only makes raw system calls on descriptors it holds and on
        // memory the fork copied.
        super::freeze_guard::spawn_detached(|| unsafe { guardian(r, &keep, &pidfds) })?;
        drop(read);
        drop(fds);
        Ok(ContinueGuard { pipe: Some(write) })
    }

    /// Lets the guardian exit without signalling (the caller decided).
    pub fn dismiss(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            let _ = nix::unistd::write(&pipe, b"D");
        }
    }
}

impl Drop for ContinueGuard {
    fn drop(&mut self) {
        self.dismiss();
    }
}

/// The guardian's body: see the module doc.
///
/// # Safety
/// Called in a freshly forked process; `r` and `pidfds` are open descriptors of it, `keep`
/// holds them all, sorted.
unsafe fn guardian(r: i32, keep: &[i32], pidfds: &[i32]) -> ! {
    // SAFETY: plain descriptor operations and _exit on memory the fork copied.
    unsafe {
        let mut next = 0u32;
        for &k in keep {
            if (k as u32) > next {
                libc::syscall(libc::SYS_close_range, next, k as u32 - 1, 0u32);
            }
            next = k as u32 + 1;
        }
        libc::syscall(libc::SYS_close_range, next, u32::MAX, 0u32);
        let mut byte = 0u8;
        let n = loop {
            let n = libc::read(r, (&mut byte as *mut u8).cast(), 1);
            if n >= 0 || *libc::__errno_location() != libc::EINTR {
                break n;
            }
        };
        if n <= 0 {
            for &fd in pidfds {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd,
                    libc::SIGCONT,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                );
            }
        }
        libc::_exit(0)
    }
}
