//! Post-copy restore (`--lazy-pages`): the restore's side of CRIU's lazy-pages protocol.
//!
//! ```text
//!  restore()                                       lazy-pages daemon (`stasis lazy-pages`)
//!  connect(WORKDIR/lazy-pages.socket) ───────────► accept          (no daemon: fail at once)
//!  zombies: i32 -pid ────────────────────────────►
//!  each task, before its blob (token pipe held):
//!    open_lazy(), i32 pid + SCM_RIGHTS uffd ─────► one handle per task of pstree.img
//!    lazy VMAs premapped without their PE_LAZY pages
//!    blob: mremap in place, UFFDIO_REGISTER        (faults are served from here on)
//!  every task ready, released ─► u32 0x52535446 ─► background transfer of the rest
//! ```
//! Which VMAs are lazy is CRIU's rule (`vma_entry_can_be_lazy`): private anonymous, not
//! locked, not hugetlb, not vdso/vvar/vsyscall.

use std::os::fd::{AsFd, IntoRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::error::RestoreError;
use super::open_files::{LazyHandover, Opened};
use super::plan::{Plan, TASK_DEAD};
use super::premap::StepErr;
use crate::sys::uffd;

/// The daemon's socket, in the work directory (CRIU's `LAZY_PAGES_SOCK_NAME`).
pub const SOCKET_NAME: &str = "lazy-pages.socket";
/// Sent once every task runs (CRIU's `LAZY_PAGES_RESTORE_FINISHED`, "RSTF").
pub const RESTORE_FINISHED: u32 = 0x5253_5446;

pub use crate::pages::lazy::can_be_lazy;

/// The socket path in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_NAME)
}

/// Connects to the lazy-pages daemon listening in `dir`.
pub fn connect(dir: &Path) -> Result<std::os::unix::net::UnixStream, RestoreError> {
    let p = socket_path(dir);
    std::os::unix::net::UnixStream::connect(&p).map_err(|e| {
        RestoreError::Unsupported(format!(
            "--lazy-pages: no lazy-pages daemon answers on {} ({e}); start `stasis lazy-pages \
             -D {}` first",
            p.display(),
            dir.display()
        ))
    })
}

fn sys(step: &str, e: Errno) -> RestoreError {
    RestoreError::sys(step.to_string(), 0, e)
}

/// Announces the zombies of `plan` (`-pid`, no handle) and parks what the tasks need to hand
/// their handles over.
pub fn prepare(
    sock: &std::os::unix::net::UnixStream,
    plan: &Plan,
    opened: &mut Opened,
) -> Result<(), RestoreError> {
    for t in plan.tasks.iter().filter(|t| t.state == TASK_DEAD) {
        uffd::send_handle(sock.as_fd(), t.pid, None).map_err(|e| sys("lazy-pages: send", e))?;
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys("pipe", e))?;
    nix::unistd::write(&w, b"t").map_err(|e| sys("lazy-pages: token", e))?;
    let s: OwnedFd = sock
        .try_clone()
        .map_err(|e| {
            sys(
                "dup",
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })?
        .into();
    opened.lazy = Some(LazyHandover {
        sock: opened.park(s)?,
        token_r: opened.park(r)?,
        token_w: opened.park(w)?,
    });
    Ok(())
}

/// In task `pid`: opens its userfaultfd and sends it to the daemon; returns the descriptor,
/// left open for the blob.
pub fn hand_over(h: LazyHandover, pid: i32) -> Result<RawFd, StepErr> {
    let fd = uffd::open_lazy().map_err(|e| ("lazy-pages: userfaultfd", e))?;
    // SAFETY: the parked descriptors stay open in this task until the blob closes them.
    let (sock, tr, tw) = unsafe {
        (
            std::os::fd::BorrowedFd::borrow_raw(h.sock),
            std::os::fd::BorrowedFd::borrow_raw(h.token_r),
            std::os::fd::BorrowedFd::borrow_raw(h.token_w),
        )
    };
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(tr, &mut b) {
            Ok(1) => break,
            Err(Errno::EINTR) => continue,
            Ok(_) => return Err(("lazy-pages: token", Errno::EPIPE)),
            Err(e) => return Err(("lazy-pages: token", e)),
        }
    }
    let sent = uffd::send_handle(sock, pid, Some(fd.as_fd()));
    nix::unistd::write(tw, b"t").map_err(|e| ("lazy-pages: token", e))?;
    sent.map_err(|e| ("lazy-pages: send the userfaultfd to the daemon", e))?;
    Ok(fd.into_raw_fd())
}

/// Tells the daemon that every task runs (it then pulls the remaining pages).
pub fn finish(sock: &std::os::unix::net::UnixStream) -> Result<(), RestoreError> {
    crate::sys::socket::send(sock, &RESTORE_FINISHED.to_ne_bytes(), libc::MSG_NOSIGNAL)
        .map_err(|e| sys("lazy-pages: send restore-finished", e))
        .map(drop)
}
