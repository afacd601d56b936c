//! The criu-compatible command line.
//!
//! One file per verb (`dump.rs`, `restore.rs`, `check.rs`, `crit.rs`); this file parses the
//! arguments and dispatches. Exit status: 0 on success, 1 on failure (like CRIU).

use std::ffi::OsString;

pub mod check;
pub mod crit;
pub mod dump;

/// Parses `args` (argv including argv[0]) and runs the command; returns the exit status.
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    let mut args = args;
    // `stasis crit ...` and a binary invoked as `crit` both reach the crit tool.
    let argv0 = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name().map(|f| f.to_os_string()));
    if argv0.as_deref() == Some(std::ffi::OsStr::new("crit")) {
        return crit::main(args);
    }
    if args.get(1).map(|a| a == "crit").unwrap_or(false) {
        args.remove(1);
        return crit::main(args);
    }
    match args.get(1).and_then(|a| a.to_str()) {
        Some("dump") => return dump::main(args[1..].to_vec()),
        Some("check") => return check::main(args[1..].to_vec()),
        _ => {}
    }
    eprintln!("stasis: no such command (work in progress)");
    1
}
