//! Fault injection for tests: `STASIS_FAULT=<step>` makes the dump fail at that step as if the
//! kernel had returned EIO, so tests can prove a failed dump leaves the tree running unchanged.
//!
//! Steps, in order: `seize`, `collect-tree`, `collect-task`, `mm`, `pages`, `files`, `core`,
//! `images`, `fsync`, `kill`.

use super::error::{DumpError, Result};

/// Every step name [`check`] is called with.
pub const STEPS: &[&str] = &[
    "seize",
    "collect-tree",
    "collect-task",
    "mm",
    "pages",
    "files",
    "core",
    "images",
    "fsync",
    "kill",
];

/// Fails with an injected EIO when `STASIS_FAULT` names `step`.
pub fn check(step: &'static str, pid: i32) -> Result<()> {
    match std::env::var("STASIS_FAULT") {
        Ok(s) if s == step => Err(DumpError::new(
            step,
            pid,
            Some(libc::EIO),
            "injected fault (STASIS_FAULT)",
        )),
        _ => Ok(()),
    }
}
