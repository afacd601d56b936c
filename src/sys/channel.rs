//! Descriptor plumbing between the dumper and a task: pidfds (`pidfd_open(2)`,
//! `pidfd_getfd(2)`), SOCK_SEQPACKET messages with SCM_RIGHTS (`sendmsg(2)`, `recvmsg(2)`),
//! `poll(2)` for one descriptor, pipes sized with `F_SETPIPE_SZ`, and `splice(2)` from a pipe
//! into a file.

use super::errno::{check, check_int};
use super::error::{Error, Result};
use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Most descriptors received in one message.
pub const MAX_RECV_FDS: usize = 253;

fn owned(op: &'static str, ret: libc::c_long) -> Result<OwnedFd> {
    let fd = check(ret).map_err(|errno| Error::Sys { op, errno })?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    owned("pidfd_open", ret).map_err(|e| match e.errno() {
        Some(errno) => Error::task("pidfd_open", pid, errno),
        None => e,
    })
}

/// `pidfd_getfd(pidfd, fd, 0)`: a duplicate of descriptor `fd` of the task `pidfd` refers to
/// (needs ptrace access to it).
pub fn pidfd_getfd(pid: i32, pidfd: BorrowedFd<'_>, fd: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes integers only; the new descriptor is returned.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    owned("pidfd_getfd", ret).map_err(|e| match e.errno() {
        Some(errno) => Error::task("pidfd_getfd", pid, errno),
        None => e,
    })
}

/// Sends one message made of `parts` with `fds` attached as SCM_RIGHTS (none if empty).
pub fn send_msg(sock: BorrowedFd<'_>, parts: &[&[u8]], fds: &[RawFd]) -> Result<()> {
    let mut iovs: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: msghdr is plain data; zero is a valid initial value for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = iovs.len();
    let mut control = Vec::new();
    super::socket::put_rights(&mut msg, &mut control, fds);
    // SAFETY: `msg` points to live iovecs over `parts` and to `control`.
    let ret = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    check(ret as libc::c_long)
        .map(drop)
        .map_err(|errno| Error::Sys {
            op: "sendmsg",
            errno,
        })
}

/// Receives one message into `buf`; returns its length and the descriptors that came with it
/// (`MSG_CMSG_CLOEXEC`). A truncated message or control part is EMSGSIZE.
pub fn recv_msg(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_RECV_FDS * 4) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zero is a valid initial value for every field.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points to `buf` (through `iov`) and `control`, both live and sized.
    let ret = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    let n = check(ret as libc::c_long).map_err(|errno| Error::Sys {
        op: "recvmsg",
        errno,
    })? as usize;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of cmsghdrs; the CMSG
    // macros walk them within that length. SCM_RIGHTS data are descriptors now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(Error::Sys {
            op: "recvmsg",
            errno: Errno::EMSGSIZE,
        });
    }
    Ok((n, fds))
}

/// Waits up to `timeout_ms` for `fd` to become readable (or hung up); true if it did.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd.
        let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        match check_int(ret) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(Error::Sys { op: "poll", errno }),
        }
    }
}

/// A pipe (`O_CLOEXEC`): (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a live array of two descriptors for the kernel to fill.
    check_int(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })
        .map_err(|errno| Error::Sys { op: "pipe2", errno })?;
    // SAFETY: both descriptors were just created for us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fcntl(F_SETPIPE_SZ)`, then `F_GETPIPE_SZ`: the capacity obtained.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> Result<usize> {
    // SAFETY: F_SETPIPE_SZ/F_GETPIPE_SZ take an integer argument.
    let set = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    check_int(set).map_err(|errno| Error::Sys {
        op: "fcntl(F_SETPIPE_SZ)",
        errno,
    })?;
    // SAFETY: as above.
    let got = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    check_int(got)
        .map(|n| n as usize)
        .map_err(|errno| Error::Sys {
            op: "fcntl(F_GETPIPE_SZ)",
            errno,
        })
}

/// Moves exactly `len` bytes from pipe `from` to `to` with `splice(2)` (no copy through
/// user space), at the current file position of `to`.
pub fn splice_exact(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> Result<()> {
    splice_loop(from, to, len, None)
}

/// [`splice_exact`] into file `to` at offset `off` (its file position is left alone:
/// several threads may fill one file at different offsets).
pub fn splice_exact_at(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    len: usize,
    off: u64,
) -> Result<()> {
    splice_loop(from, to, len, Some(off as libc::loff_t))
}

fn splice_loop(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    len: usize,
    mut off: Option<libc::loff_t>,
) -> Result<()> {
    let mut left = len;
    while left > 0 {
        let off_out = off
            .as_mut()
            .map_or(std::ptr::null_mut(), |o| o as *mut libc::loff_t);
        // SAFETY: splice takes descriptors and integers; a null output offset uses the file
        // position, a non-null one points at a live loff_t the kernel advances.
        let ret = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                off_out,
                left,
                libc::SPLICE_F_MOVE,
            )
        };
        match check(ret as libc::c_long) {
            Ok(0) => {
                return Err(Error::Sys {
                    op: "splice",
                    errno: Errno::EPIPE,
                })
            }
            Ok(n) => left -= n as usize,
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(Error::Sys {
                    op: "splice",
                    errno,
                })
            }
        }
    }
    Ok(())
}
