//! The error type of the `sys` layer: every variant names the operation, the task or path, and
//! the errno. `ESRCH` from a task operation becomes [`Error::TaskDied`] ("task N died").

use nix::errno::Errno;
use std::path::PathBuf;

/// Result of a `sys` operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the `sys` layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The task exited, was killed or was reaped while we operated on it (ESRCH, or an exit
    /// reported by `waitpid`).
    #[error("task {pid} died")]
    TaskDied {
        /// Thread id of the task.
        pid: i32,
        /// The operation that found it gone.
        op: &'static str,
    },
    /// A syscall on a task failed.
    #[error("{op} on task {pid}: {errno}")]
    Task {
        /// The operation (usually the syscall or ptrace request name).
        op: &'static str,
        /// Thread id of the task.
        pid: i32,
        /// The kernel's error.
        errno: Errno,
    },
    /// A syscall executed inside the task (remote syscall or parasite command) failed.
    #[error("remote {op} in task {pid}: {errno}")]
    Remote {
        /// The remote syscall or parasite command.
        op: &'static str,
        /// Thread id of the task that executed it.
        pid: i32,
        /// The error the kernel returned inside the task.
        errno: Errno,
    },
    /// A file operation failed.
    #[error("{op} {path}: {errno}")]
    Path {
        /// The operation.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The kernel's error.
        errno: Errno,
    },
    /// A syscall that concerns no particular task or path failed.
    #[error("{op}: {errno}")]
    Sys {
        /// The operation.
        op: &'static str,
        /// The kernel's error.
        errno: Errno,
    },
    /// A task stopped or behaved in a way the operation cannot handle.
    #[error("{op} on task {pid}: {what}")]
    Unexpected {
        /// The operation.
        op: &'static str,
        /// Thread id of the task.
        pid: i32,
        /// What happened.
        what: String,
    },
    /// A ptrace request came from a thread other than the one that seized the task (the
    /// kernel would answer ESRCH).
    #[error("{op} on task {pid}: called from thread {caller}, the tracer is thread {tracer}")]
    WrongTracer {
        /// The operation.
        op: &'static str,
        /// Thread id of the task.
        pid: i32,
        /// The thread that seized the task.
        tracer: i32,
        /// The calling thread.
        caller: i32,
    },
    /// A wait did not complete in time.
    #[error("{op} on {what}: timed out after {millis} ms")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// What was waited for (a task, a cgroup).
        what: String,
        /// The time waited.
        millis: u64,
    },
    /// A file under /proc or /sys had unexpected contents.
    #[error("parse {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

impl Error {
    /// Error of a task operation; ESRCH becomes [`Error::TaskDied`].
    pub fn task(op: &'static str, pid: i32, errno: Errno) -> Self {
        if errno == Errno::ESRCH {
            Error::TaskDied { pid, op }
        } else {
            Error::Task { op, pid, errno }
        }
    }

    /// Error of a file operation.
    pub fn path(op: &'static str, path: impl Into<PathBuf>, errno: Errno) -> Self {
        Error::Path {
            op,
            path: path.into(),
            errno,
        }
    }

    /// Error of a file operation from a `std::io::Error` (errno EIO when it carries none).
    pub fn io(op: &'static str, path: impl Into<PathBuf>, err: &std::io::Error) -> Self {
        let errno = Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO));
        Error::Path {
            op,
            path: path.into(),
            errno,
        }
    }

    /// The errno this error carries, if any.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::TaskDied { .. } => Some(Errno::ESRCH),
            Error::Task { errno, .. }
            | Error::Remote { errno, .. }
            | Error::Path { errno, .. }
            | Error::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True when the error says the task is gone.
    pub fn is_task_died(&self) -> bool {
        matches!(self, Error::TaskDied { .. })
    }
}
