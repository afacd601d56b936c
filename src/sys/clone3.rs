//! `clone3(2)` with `set_tid`: create a task with a chosen PID (restore's process tree).
//!
//! Wraps `syscall(SYS_clone3, &struct clone_args, sizeof)`; see clone(2). Only the fork-like
//! form (no `CLONE_VM`) is offered: the child continues in a copy of the caller, so the caller
//! must be single-threaded (the restorer is).

use nix::errno::Errno;

/// `struct clone_args` of `<linux/sched.h>` (size 88, version 2 with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Where a fork-like clone returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent, with the child's PID.
    Parent(i32),
    /// In the child.
    Child,
}

/// `clone3({flags, exit_signal, set_tid = [pid]})` without `CLONE_VM`: a new process whose PID
/// in the caller's PID namespace is `pid` (needs `CAP_SYS_ADMIN`/`CAP_CHECKPOINT_RESTORE`).
/// `flags` must not contain `CLONE_VM`, `CLONE_THREAD`, `CLONE_SIGHAND` or `CLONE_VFORK`.
pub fn fork_with_pid(pid: i32, flags: u64, exit_signal: u64) -> Result<Forked, Errno> {
    let forbidden =
        (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND | libc::CLONE_VFORK) as u64;
    if flags & forbidden != 0 || pid <= 0 {
        return Err(Errno::EINVAL);
    }
    let tid = [pid];
    let args = CloneArgs {
        flags,
        exit_signal,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: `args` and `tid` live across the call; fork-like (see `clone3`), and the
    // restorer is single-threaded (documented precondition).
    match unsafe { clone3(&args) }? {
        0 => Ok(Forked::Child),
        r => Ok(Forked::Parent(r as i32)),
    }
}

/// `clone3(args)` without `CLONE_VM`: the child's PID in the parent, 0 in the child.
///
/// # Safety
/// Every pointer in `args` stays valid across the call. The child gets a copy-on-write copy
/// of this address space and continues here with its own stack copy, like fork(2): no Rust
/// invariant is broken only if the caller is single-threaded (no lock held by another thread).
unsafe fn clone3(args: &CloneArgs) -> Result<i64, Errno> {
    // SAFETY: as the caller promises; `args` has the kernel's layout and size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// A pidfd of a process that has exited and been reaped: a child is forked with
/// `CLONE_PIDFD`, exits at once, and is waited for (what a pidfd of a task that had exited
/// at dump time refers to). Same precondition as [`fork_with_pid`]: single-threaded caller.
pub fn exited_child_pidfd() -> Result<std::os::fd::OwnedFd, Errno> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: (libc::CLONE_PIDFD) as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: as in fork_with_pid (fork-like, single-threaded caller); the kernel writes the
    // new pidfd into `pidfd`, which lives across the call. The child only calls _exit.
    match unsafe { clone3(&args) }? {
        0 => {
            // SAFETY: the child exits at once, running nothing of the parent's state.
            unsafe { libc::_exit(0) }
        }
        child => {
            let fd = crate::sys::fds::own(pidfd);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child as i32), None);
            // The flags the caller sets (O_NONBLOCK) go on with F_SETFL; close-on-exec too.
            // SAFETY: plain fcntl on the descriptor just received.
            unsafe {
                libc::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::F_SETFD,
                    libc::FD_CLOEXEC,
                )
            };
            Ok(fd)
        }
    }
}
