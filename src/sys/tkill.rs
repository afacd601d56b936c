//! Sending a signal to one thread: `tgkill(2)`.

use super::errno::check;
use super::error::{Error, Result};

/// `tgkill(tgid, tid, sig)`: queues `sig` on thread `tid`'s private queue.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> Result<()> {
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    check(ret)
        .map(drop)
        .map_err(|errno| Error::task("tgkill", tid, errno))
}
