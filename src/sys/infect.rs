//! Helpers of the dump parasite's driver beyond `sys::channel`.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Discards everything buffered in pipe `fd` (`splice(2)` into `/dev/null` with
/// `SPLICE_F_NONBLOCK` until the pipe is empty); returns the bytes discarded. Used after a
/// failed DUMP_PAGES, whose partly spliced pages must not end up in the next image.
pub fn drain_pipe(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let mut total = 0u64;
    loop {
        // SAFETY: splice takes two descriptors we hold and integers; null offsets.
        let r = unsafe {
            libc::splice(
                fd.as_raw_fd(),
                std::ptr::null_mut(),
                null.as_raw_fd(),
                std::ptr::null_mut(),
                1 << 30,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        match r {
            0 => return Ok(total),
            n if n > 0 => total += n as u64,
            _ => match Errno::last() {
                Errno::EINTR => continue,
                Errno::EAGAIN => return Ok(total),
                e => return Err(e),
            },
        }
    }
}
