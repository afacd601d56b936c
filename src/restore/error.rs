//! Errors of the restore engine: each names the step, the image or file, the PID and errno.

use std::path::PathBuf;

use nix::errno::Errno;

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// An image file could not be read.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An image is corrupt, truncated or inconsistent.
    #[error("image {path}: entry {index}: {what}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// Entry index in the file.
        index: usize,
        /// What is wrong.
        what: String,
    },
    /// The images need something this restorer does not do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An action script (`--action-script`) failed.
    #[error("{0}")]
    Script(String),
    /// A file the images refer to is missing or differs from the dumped one.
    #[error("file {path}: {what}")]
    FileMismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// A PID or TID of the images is in use.
    #[error("pid {pid} is taken by {owner}")]
    PidTaken {
        /// The PID.
        pid: i32,
        /// comm and command line of the current owner.
        owner: String,
    },
    /// A system call failed.
    #[error("{step} (pid {pid}): {errno}")]
    Sys {
        /// The operation.
        step: String,
        /// The task concerned (0: the restorer itself).
        pid: i32,
        /// The errno.
        errno: Errno,
    },
    /// A task died while being restored.
    #[error("task {pid} died during {step}: {status}")]
    TaskDied {
        /// The task.
        pid: i32,
        /// The restore step.
        step: String,
        /// Its wait status.
        status: String,
    },
    /// A descriptor kind (eventfd, epoll, socket, ...) could not be restored.
    #[error("{0}")]
    Files(#[from] crate::files::FilesError),
    /// The restore did not finish in time.
    #[error("timed out during {0}")]
    Timeout(String),
    /// Packed pages (compressed or encrypted) could not be read back.
    #[error("{0}")]
    Pages(#[from] crate::pages::PagesError),
}

impl RestoreError {
    /// A failed system call; ESRCH becomes "task died".
    pub fn sys(step: impl Into<String>, pid: i32, errno: Errno) -> Self {
        let step = step.into();
        if errno == Errno::ESRCH {
            return Self::TaskDied {
                pid,
                step,
                status: "no such process".into(),
            };
        }
        Self::Sys { step, pid, errno }
    }
}
