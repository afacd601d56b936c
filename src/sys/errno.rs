//! Raw syscall results: `-1` + `errno` from libc calls, and `-4095..=-1` from raw syscall
//! return registers (a remote syscall's `rax`, a parasite reply).

use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;

/// Decodes a raw kernel return value: `-4095..=-1` is `-errno`, anything else is a value.
pub fn decode_raw(ret: u64) -> Result<u64, Errno> {
    let signed = ret as i64;
    if (-4095..=-1).contains(&signed) {
        Err(Errno::from_raw((-signed) as i32))
    } else {
        Ok(ret)
    }
}

/// Turns a libc-style result (`-1` with `errno` set) into `Result`.
pub fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Same as [`check`] for `c_int` returns.
pub fn check_int(ret: libc::c_int) -> Result<libc::c_int, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// Same as [`check_int`] for a call that returns a new descriptor, which becomes owned.
pub fn new_fd(ret: libc::c_int) -> Result<OwnedFd, Errno> {
    let fd = check_int(ret)?;
    // SAFETY: `fd` is a descriptor the kernel just returned to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `-ERESTARTSYS`: restart the syscall unless a handler without SA_RESTART runs.
pub const ERESTARTSYS: i64 = 512;
/// `-ERESTARTNOINTR`: always restart the syscall.
pub const ERESTARTNOINTR: i64 = 513;
/// `-ERESTARTNOHAND`: restart the syscall if no handler runs.
pub const ERESTARTNOHAND: i64 = 514;
/// `-ERESTART_RESTARTBLOCK`: restart through `restart_syscall` if no handler runs.
pub const ERESTART_RESTARTBLOCK: i64 = 516;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_errno_range() {
        assert_eq!(decode_raw(5), Ok(5));
        assert_eq!(decode_raw(0), Ok(0));
        assert_eq!(decode_raw((-9i64) as u64), Err(Errno::EBADF));
        assert_eq!(decode_raw((-4095i64) as u64), Err(Errno::from_raw(4095)));
        // An mmap address in the upper half is a value, not an error.
        assert_eq!(decode_raw((-4096i64) as u64), Ok((-4096i64) as u64));
    }
}
