//! Raw syscalls behind the "other" file kinds of [`crate::files`]: eventfd, timerfd,
//! signalfd, epoll, inotify and file handles (`name_to_handle_at`/`open_by_handle_at`).
//!
//! Every wrapper takes `AsFd`, returns an `OwnedFd` for new descriptors and a plain
//! [`Errno`] on failure; callers above add the operation and pid to their errors.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;

use super::errno::{check, new_fd};

/// `TFD_IOC_SET_TICKS` (`_IOW('T', 0, u64)`): sets the expiration count of a timerfd.
pub const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

// fcntl commands and struct libc does not export for this target (values from fcntl.h).
const F_SETSIG: libc::c_int = 10;
const F_GETSIG: libc::c_int = 11;
const F_SETOWN_EX: libc::c_int = 15;
const F_GETOWN_EX: libc::c_int = 16;

#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// `eventfd(initval, flags)` (eventfd(2)).
pub fn eventfd(initval: u32, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: eventfd takes no pointers.
    new_fd(unsafe { libc::eventfd(initval, flags) })
}

/// `timerfd_create(clockid, flags)` (timerfd_create(2)).
pub fn timerfd_create(clockid: i32, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: timerfd_create takes no pointers.
    new_fd(unsafe { libc::timerfd_create(clockid, flags) })
}

/// `timerfd_settime(fd, flags, new, NULL)`.
pub fn timerfd_settime(fd: impl AsFd, flags: i32, new: &libc::itimerspec) -> Result<(), Errno> {
    // SAFETY: `new` points to a valid itimerspec for the call; the old value is not requested.
    let r =
        unsafe { libc::timerfd_settime(fd.as_fd().as_raw_fd(), flags, new, std::ptr::null_mut()) };
    check(r.into()).map(drop)
}

/// `timerfd_gettime(fd)`: time left and interval.
pub fn timerfd_gettime(fd: impl AsFd) -> Result<libc::itimerspec, Errno> {
    // SAFETY: itimerspec is plain integers; all-zero is a valid value.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: `cur` is a valid, writable itimerspec for the duration of the call.
    let r = unsafe { libc::timerfd_gettime(fd.as_fd().as_raw_fd(), &mut cur) };
    check(r.into())?;
    Ok(cur)
}

/// `ioctl(fd, TFD_IOC_SET_TICKS, &ticks)`: pretends the timer expired `ticks` times.
pub fn timerfd_set_ticks(fd: impl AsFd, ticks: u64) -> Result<(), Errno> {
    // SAFETY: the ioctl reads one u64 from the pointer, which is valid for the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            TFD_IOC_SET_TICKS,
            &ticks as *const u64,
        )
    };
    check(r.into()).map(drop)
}

/// `clock_gettime(clockid)`.
pub fn clock_gettime(clockid: i32) -> Result<libc::timespec, Errno> {
    // SAFETY: timespec is plain integers; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid and writable for the call.
    let r = unsafe { libc::clock_gettime(clockid, &mut ts) };
    check(r.into())?;
    Ok(ts)
}

/// `signalfd(-1, mask, flags)` with a kernel sigset given as a 64-bit mask (bit n-1 = signal n).
pub fn signalfd(mask: u64, flags: i32) -> Result<OwnedFd, Errno> {
    // The kernel reads exactly 8 bytes (its sigset_t) through signalfd4.
    // SAFETY: raw signalfd4 with a pointer to 8 valid bytes and their size.
    let r = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) };
    new_fd(check(r)? as libc::c_int)
}

/// `epoll_create1(flags)`.
pub fn epoll_create(flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: epoll_create1 takes no pointers.
    new_fd(unsafe { libc::epoll_create1(flags) })
}

/// `epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data})`.
pub fn epoll_add(epfd: impl AsFd, fd: impl AsFd, events: u32, data: u64) -> Result<(), Errno> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call.
    let r = unsafe {
        libc::epoll_ctl(
            epfd.as_fd().as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_fd().as_raw_fd(),
            &mut ev,
        )
    };
    check(r.into()).map(drop)
}

/// `epoll_ctl(epfd, EPOLL_CTL_ADD, fd, ..)` for a target known only by number (a descriptor
/// the restore engine parked); a stale number fails with `EBADF`, never touches memory.
pub fn epoll_add_raw(
    epfd: impl AsFd,
    fd: std::os::fd::RawFd,
    events: u32,
    data: u64,
) -> Result<(), Errno> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call; `fd` is only a number to the kernel.
    let r = unsafe { libc::epoll_ctl(epfd.as_fd().as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
    check(r.into()).map(drop)
}

/// `epoll_wait(epfd, max, timeout 0)`: the ready (events, data) pairs, without blocking.
pub fn epoll_poll(epfd: impl AsFd, max: usize) -> Result<Vec<(u32, u64)>, Errno> {
    let max = max.clamp(1, 1024);
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; max];
    // SAFETY: `evs` holds `max` writable epoll_event slots.
    let r = unsafe { libc::epoll_wait(epfd.as_fd().as_raw_fd(), evs.as_mut_ptr(), max as i32, 0) };
    let n = check(r.into())? as usize;
    Ok(evs[..n].iter().map(|e| (e.events, e.u64)).collect())
}

/// `inotify_init1(flags)`.
pub fn inotify_init(flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: inotify_init1 takes no pointers.
    new_fd(unsafe { libc::inotify_init1(flags) })
}

/// `fanotify_init(flags, event_f_flags)`.
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: fanotify_init takes no pointers.
    new_fd(unsafe { libc::fanotify_init(flags, event_f_flags) })
}

/// `fanotify_mark(fd, flags, mask, AT_FDCWD, path)`.
pub fn fanotify_mark(fd: impl AsFd, flags: u32, mask: u64, path: &str) -> Result<(), Errno> {
    let p = CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `p` is a NUL-terminated string valid for the call.
    let r = unsafe {
        libc::fanotify_mark(
            fd.as_fd().as_raw_fd(),
            flags,
            mask,
            libc::AT_FDCWD,
            p.as_ptr(),
        )
    };
    check(r.into()).map(drop)
}

/// `inotify_add_watch(fd, path, mask)`: returns the watch descriptor.
pub fn inotify_add_watch(fd: impl AsFd, path: &str, mask: u32) -> Result<i32, Errno> {
    let p = CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `p` is a NUL-terminated string valid for the call.
    let r = unsafe { libc::inotify_add_watch(fd.as_fd().as_raw_fd(), p.as_ptr(), mask) };
    Ok(check(r.into())? as i32)
}

/// `inotify_rm_watch(fd, wd)`.
pub fn inotify_rm_watch(fd: impl AsFd, wd: i32) -> Result<(), Errno> {
    // SAFETY: plain integers.
    let r = unsafe { libc::inotify_rm_watch(fd.as_fd().as_raw_fd(), wd) };
    check(r.into()).map(drop)
}

/// Largest opaque file handle (`MAX_HANDLE_SZ`).
pub const MAX_HANDLE_SZ: usize = 128;

#[repr(C)]
struct FileHandle {
    bytes: u32,
    kind: i32,
    data: [u8; MAX_HANDLE_SZ],
}

/// `name_to_handle_at(AT_FDCWD, path, ..)`: (handle type, handle bytes, mount id).
pub fn name_to_handle(path: &str) -> Result<(i32, Vec<u8>, i32), Errno> {
    let p = CString::new(path).map_err(|_| Errno::EINVAL)?;
    let mut fh = FileHandle {
        bytes: MAX_HANDLE_SZ as u32,
        kind: 0,
        data: [0; MAX_HANDLE_SZ],
    };
    let mut mnt: libc::c_int = 0;
    // SAFETY: `p` is NUL-terminated; `fh` is a file_handle whose `bytes` announces the room
    // that follows it; `mnt` is writable.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            p.as_ptr(),
            &mut fh as *mut FileHandle,
            &mut mnt as *mut libc::c_int,
            0,
        )
    };
    check(r)?;
    let n = (fh.bytes as usize).min(MAX_HANDLE_SZ);
    Ok((fh.kind, fh.data[..n].to_vec(), mnt))
}

/// `open_by_handle_at(mount_fd, handle, flags)` (needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(
    mount_fd: impl AsFd,
    kind: i32,
    handle: &[u8],
    flags: i32,
) -> Result<OwnedFd, Errno> {
    if handle.len() > MAX_HANDLE_SZ {
        return Err(Errno::EINVAL);
    }
    let mut fh = FileHandle {
        bytes: handle.len() as u32,
        kind,
        data: [0; MAX_HANDLE_SZ],
    };
    fh.data[..handle.len()].copy_from_slice(handle);
    // SAFETY: `fh` is a file_handle with `bytes` valid bytes of handle after its header.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_fd().as_raw_fd(),
            &mut fh as *mut FileHandle,
            flags,
        )
    };
    new_fd(check(r)? as libc::c_int)
}

/// `fcntl(fd, F_GETOWN_EX)`: (owner type, pid).
pub fn get_owner(fd: impl AsFd) -> Result<(i32, i32), Errno> {
    let mut o = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: `o` is a writable f_owner_ex for the call.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), F_GETOWN_EX, &mut o) };
    check(r.into())?;
    Ok((o.kind, o.pid))
}

/// `fcntl(fd, F_SETOWN_EX, {type, pid})`.
pub fn set_owner(fd: impl AsFd, kind: i32, pid: i32) -> Result<(), Errno> {
    let o = FOwnerEx { kind, pid };
    // SAFETY: `o` is a valid f_owner_ex for the call.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), F_SETOWN_EX, &o) };
    check(r.into()).map(drop)
}

/// `fcntl(fd, F_GETSIG)`.
pub fn get_sig(fd: impl AsFd) -> Result<i32, Errno> {
    // SAFETY: plain integers.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), F_GETSIG) };
    Ok(check(r.into())? as i32)
}

/// `fcntl(fd, F_SETSIG, sig)`.
pub fn set_sig(fd: impl AsFd, sig: i32) -> Result<(), Errno> {
    // SAFETY: plain integers.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), F_SETSIG, sig) };
    check(r.into()).map(drop)
}

/// `fcntl(fd, F_GETFL)`.
pub fn get_fl(fd: impl AsFd) -> Result<i32, Errno> {
    // SAFETY: plain integers.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETFL) };
    Ok(check(r.into())? as i32)
}

/// `fcntl(fd, F_SETFL, flags)`.
pub fn set_fl(fd: impl AsFd, flags: i32) -> Result<(), Errno> {
    // SAFETY: plain integers.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_SETFL, flags) };
    check(r.into()).map(drop)
}

/// `read(fd, buf)`.
pub fn read(fd: impl AsFd, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is writable for `buf.len()` bytes.
    let r = unsafe { libc::read(fd.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    Ok(check(r as libc::c_long)? as usize)
}

/// `write(fd, buf)`.
pub fn write(fd: impl AsFd, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is readable for `buf.len()` bytes.
    let r = unsafe { libc::write(fd.as_fd().as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    Ok(check(r as libc::c_long)? as usize)
}

/// Reopens `/proc/self/fd/N` of an fd (a new open file description of the same object).
pub fn reopen(fd: impl AsFd, flags: i32) -> Result<OwnedFd, Errno> {
    let p = CString::new(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
        .map_err(|_| Errno::EINVAL)?;
    // SAFETY: `p` is NUL-terminated and valid for the call.
    new_fd(unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// `open(path, flags)`.
pub fn open(path: &str, flags: i32) -> Result<OwnedFd, Errno> {
    let p = CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `p` is NUL-terminated and valid for the call.
    new_fd(unsafe { libc::open(p.as_ptr(), flags, 0) })
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    pidfd_open_flags(pid, 0)
}

/// `pidfd_open(pid, flags)` (`PIDFD_NONBLOCK` = `O_NONBLOCK`); the pidfd is close-on-exec.
pub fn pidfd_open_flags(pid: i32, flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags as libc::c_uint) };
    new_fd(check(r)? as libc::c_int)
}

/// `pidfd_getfd(pidfd, fd, 0)`: a duplicate of another task's descriptor (needs ptrace
/// access to it); the copy is close-on-exec.
pub fn pidfd_getfd(pidfd: impl AsFd, fd: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_getfd takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_fd().as_raw_fd(), fd, 0) };
    new_fd(check(r)? as libc::c_int)
}

/// `KCMP_FILES`: whether two tasks share one descriptor table.
const KCMP_FILES: libc::c_int = 2;
/// `KCMP_FILE`: whether two descriptors are the same open file description.
const KCMP_FILE: libc::c_int = 0;

fn kcmp(pid1: i32, pid2: i32, kind: libc::c_int, a: u64, b: u64) -> Result<bool, Errno> {
    // SAFETY: kcmp with KCMP_FILE/KCMP_FILES takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, a, b) };
    Ok(check(r)? == 0)
}

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are one open file description
/// (`kcmp(KCMP_FILE)`, needs ptrace access to both).
pub fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<bool, Errno> {
    kcmp(pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64)
}

/// Whether two tasks share their descriptor table (`CLONE_FILES`; `kcmp(KCMP_FILES)`).
pub fn same_fd_table(pid1: i32, pid2: i32) -> Result<bool, Errno> {
    kcmp(pid1, pid2, KCMP_FILES, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_counts() {
        let fd = eventfd(5, libc::EFD_CLOEXEC).unwrap();
        write(&fd, &3u64.to_ne_bytes()).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(read(&fd, &mut b).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(b), 8);
    }

    #[test]
    fn kcmp_files() {
        let me = std::process::id() as i32;
        let a = eventfd(0, libc::EFD_CLOEXEC).unwrap();
        let b = eventfd(0, libc::EFD_CLOEXEC).unwrap();
        let c = a.try_clone().unwrap();
        let (a, b, c) = (a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd());
        assert!(same_file(me, a, me, c).unwrap());
        assert!(!same_file(me, a, me, b).unwrap());
        assert!(same_fd_table(me, me).unwrap());
    }

    #[test]
    fn handle_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let (kind, h, _mnt) = name_to_handle(p.to_str().unwrap()).unwrap();
        // An O_PATH descriptor is refused as mount fd (EBADF): use a real open.
        let root = open(
            dir.path().to_str().unwrap(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
        .unwrap();
        let f = open_by_handle(&root, kind, &h, libc::O_RDONLY | libc::O_CLOEXEC).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(read(&f, &mut b).unwrap(), 1);
        assert_eq!(
            open_by_handle(&root, kind, &[0u8; 200], 0).unwrap_err(),
            Errno::EINVAL
        );
    }
}
