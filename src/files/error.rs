//! Errors of the fd-kind layer: each names the step, the task/fd or image id, and the errno.

use nix::errno::Errno;

/// Where an error happened: a task's fd at dump time, or a files.img id at restore time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// fd `fd` of task `pid`.
    Fd { pid: i32, fd: i32 },
    /// files.img entry `id`.
    Id(u32),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Fd { pid, fd } => write!(f, "fd {fd} of task {pid}"),
            At::Id(id) => write!(f, "file id {id}"),
        }
    }
}

/// One error enum for `crate::files`.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A syscall failed.
    #[error("{kind} {at}: {op}: {errno}")]
    Sys {
        kind: &'static str,
        at: At,
        op: String,
        errno: Errno,
    },
    /// The task went away while we looked at its fd.
    #[error("task {0} died")]
    Died(i32),
    /// `/proc/PID/fdinfo/FD` lacked a line or had a malformed one.
    #[error("{kind} {at}: fdinfo line {line}: field {field}: {what}")]
    Fdinfo {
        kind: &'static str,
        at: At,
        line: usize,
        field: &'static str,
        what: String,
    },
    /// An image entry is inconsistent (missing member, bad value, dangling reference).
    #[error("{kind} {at}: image: {what}")]
    Image {
        kind: &'static str,
        at: At,
        what: String,
    },
    /// A state we do not (yet) dump or restore, or one the options forbid.
    #[error("{kind} {at}: unsupported: {what}")]
    Unsupported {
        kind: &'static str,
        at: At,
        what: String,
    },
    /// Reading or writing an extra image (sk-queues, tcp-stream-*, tty-info).
    #[error("image {file}: {source}")]
    Images {
        file: String,
        source: stasis_images::error::ImageError,
    },
}

/// Shorthand: this layer's results.
pub type Result<T> = std::result::Result<T, FilesError>;

/// Builds the `Sys` variant, turning ESRCH at dump time into "task N died".
pub fn sys(kind: &'static str, at: At, op: impl Into<String>) -> impl FnOnce(Errno) -> FilesError {
    move |errno| match (errno, at) {
        (Errno::ESRCH, At::Fd { pid, .. }) => FilesError::Died(pid),
        _ => FilesError::Sys {
            kind,
            at,
            op: op.into(),
            errno,
        },
    }
}

/// Builds the `Image` variant.
pub fn image(kind: &'static str, at: At, what: impl Into<String>) -> FilesError {
    FilesError::Image {
        kind,
        at,
        what: what.into(),
    }
}

/// Builds the `Unsupported` variant.
pub fn unsupported(kind: &'static str, at: At, what: impl Into<String>) -> FilesError {
    FilesError::Unsupported {
        kind,
        at,
        what: what.into(),
    }
}

impl FilesError {
    /// The errno behind the error, if a syscall failed (ESRCH for a task that died).
    pub fn errno(&self) -> Option<i32> {
        match self {
            FilesError::Sys { errno, .. } => Some(*errno as i32),
            FilesError::Died(_) => Some(libc::ESRCH),
            FilesError::Unsupported { .. } => Some(libc::ENOTSUP),
            _ => None,
        }
    }
}
