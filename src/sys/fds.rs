//! Raw descriptor operations the restorer's forked tasks need on plain numbers (descriptors
//! inherited across a fork have no Rust owner in the child).

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// Takes ownership of `fd`, which the caller just received from the kernel (e.g. `F_DUPFD`)
/// and which nothing else owns.
pub fn own(fd: RawFd) -> OwnedFd {
    assert!(fd >= 0, "own() of a negative descriptor");
    // SAFETY: the caller passes a descriptor freshly returned by the kernel that no other
    // object owns, so the OwnedFd is its only owner and closes it exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A borrowed view of descriptor `fd`, which the caller keeps open while it uses the view
/// (parked descriptors of the restorer, inherited ones of its forked tasks).
pub fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    assert!(fd >= 0, "borrow() of a negative descriptor");
    // SAFETY: the caller guarantees `fd` is open for as long as the view is used.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// `close(fd)` of a descriptor that has no Rust owner in this task (inherited by fork).
pub fn close_raw(fd: RawFd) {
    // SAFETY: closing a number only affects the descriptor table; callers use it for
    // descriptors no Rust object in this (forked, single-threaded) task owns.
    unsafe {
        libc::close(fd);
    }
}

/// `dup2(old, new)` then set or clear `FD_CLOEXEC` on `new`.
pub fn dup2_raw(old: RawFd, new: RawFd, cloexec: bool) -> Result<(), Errno> {
    // SAFETY: dup2 only changes the descriptor table; `new` is an image descriptor number
    // that no Rust object of this forked task owns.
    let r = unsafe { libc::dup2(old, new) };
    if r < 0 {
        return Err(Errno::last());
    }
    let flag = if cloexec { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: plain fcntl on a descriptor we just created.
    let r = unsafe { libc::fcntl(new, libc::F_SETFD, flag) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `write(fd, buf)` on a raw descriptor.
pub fn write_raw(fd: RawFd, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: buf is valid for buf.len() bytes for the duration of the call.
    let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r as usize)
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`: a copy of `fd` at the lowest free number >= `min`
/// (fails with EBADF if `fd` is not open). The caller owns the returned number.
pub fn dup_above(fd: RawFd, min: RawFd) -> Result<RawFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC only adds a descriptor to the table; `fd` is only read.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r)
}

/// `pread(fd, dst, len, off)` into memory of this task that the caller just mapped writable
/// (`dst..dst+len` must be such a mapping; used to fill premapped VMAs).
pub fn pread_raw(fd: RawFd, dst: u64, len: u64, off: u64) -> Result<usize, Errno> {
    // SAFETY: the caller guarantees dst..dst+len is a writable mapping of its own that no
    // Rust object refers to (a premapped VMA of a forked task).
    let r = unsafe {
        libc::pread(
            fd,
            dst as *mut libc::c_void,
            len as usize,
            off as libc::off_t,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r as usize)
}

/// Kinds of file locks (CRIU's `file_lock_entry.flag`).
pub const FL_POSIX: u32 = 1;
pub const FL_FLOCK: u32 = 2;
pub const FL_OFD: u32 = 4;

/// Takes a lock on `fd` without waiting: `kind` one of [`FL_POSIX`] (`F_SETLK`),
/// [`FL_FLOCK`] (`flock`) or [`FL_OFD`] (`F_OFD_SETLK`); `ty` `F_RDLCK` or `F_WRLCK`; a byte
/// range from `start`, `len` 0 meaning to the end (flock locks the whole file).
pub fn take_lock(fd: RawFd, kind: u32, ty: i32, start: i64, len: i64) -> Result<(), Errno> {
    let r = if kind == FL_FLOCK {
        let op = if ty == libc::F_RDLCK {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock takes no pointers.
        unsafe { libc::flock(fd, op | libc::LOCK_NB) }
    } else {
        let cmd = match kind {
            FL_POSIX => libc::F_SETLK,
            FL_OFD => libc::F_OFD_SETLK,
            _ => return Err(Errno::EINVAL),
        };
        // SAFETY: an all-zero flock is a valid value of the plain C struct.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = ty as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = len;
        // SAFETY: `fl` is a valid struct flock for the call.
        unsafe { libc::fcntl(fd, cmd, &fl) }
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Takes ownership of descriptor `fd` inherited from the parent process and named on the
/// command line (`--ps-socket FD`, `--status-fd FD`); fails with EBADF if it is not open.
/// The caller must not take the same number twice.
pub fn inherited(fd: RawFd) -> Result<OwnedFd, Errno> {
    if fd < 0 {
        return Err(Errno::EBADF);
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Errno::last());
    }
    Ok(own(fd))
}
