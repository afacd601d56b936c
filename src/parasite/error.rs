//! Errors of the parasite driver.

use crate::sys;
use crate::sys::wait::WaitEvent;
use nix::errno::Errno;

/// Result of a parasite operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of injecting, driving and curing the dump parasite.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `sys` operation failed (ptrace, remote syscall, socket); ESRCH reads "task N died".
    #[error(transparent)]
    Sys(#[from] sys::Error),
    /// The parasite ran a command and a syscall inside the task failed.
    #[error("parasite {cmd} in task {pid}: {errno}")]
    Command {
        /// The command.
        cmd: &'static str,
        /// The task.
        pid: i32,
        /// The errno of the failing syscall.
        errno: Errno,
    },
    /// The parasite answered something malformed.
    #[error("parasite {cmd} in task {pid}: {what}")]
    Protocol {
        /// The command.
        cmd: &'static str,
        /// The task.
        pid: i32,
        /// What was wrong.
        what: String,
    },
    /// The task stopped while the parasite should have been serving (a fault in it).
    #[error("parasite {cmd} in task {pid}: the task stopped ({event:?}) at ip {ip:#x}")]
    Stopped {
        /// The command.
        cmd: &'static str,
        /// The task.
        pid: i32,
        /// How it stopped.
        event: WaitEvent,
        /// Where.
        ip: u64,
    },
    /// The caller asked for something the protocol cannot carry.
    #[error("parasite {cmd} in task {pid}: bad request: {what}")]
    Request {
        /// The command.
        cmd: &'static str,
        /// The task.
        pid: i32,
        /// What was wrong.
        what: String,
    },
}

impl Error {
    /// True when the task is gone.
    pub fn is_task_died(&self) -> bool {
        matches!(self, Error::Sys(e) if e.is_task_died())
    }
}
