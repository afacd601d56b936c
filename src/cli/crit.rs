//! `stasis crit`: decode, encode, show, info and explore image files, like CRIU's crit.

use std::ffi::OsString;

/// Runs the crit tool with `args` (argv[0] first); returns the exit status.
pub fn main(_args: Vec<OsString>) -> i32 {
    1
}
