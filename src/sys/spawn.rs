//! Helpers for the programs stasis runs (action scripts): what they inherit.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// `CLOSE_RANGE_CLOEXEC` (linux/close_range.h).
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// The program gets only descriptors 0-2 (CRIU closes every other before running a script):
/// every other descriptor is marked close-on-exec in the child just before `exec`.
pub fn only_stdio(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe system call on the child's own descriptor table; marking (not
    // closing) keeps std's exec-error pipe working.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
            Ok(())
        })
    };
}
