//! Errors of the dump engine: every variant names the task, the step and the errno.

use std::fmt;

/// A failed dump step.
#[derive(Debug, thiserror::Error)]
pub struct DumpError {
    /// The step that failed (the same names `STASIS_FAULT` accepts).
    pub step: &'static str,
    /// The task concerned (0 when none).
    pub pid: i32,
    /// The errno, when the failure came from the kernel.
    pub errno: Option<i32>,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for DumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.errno == Some(libc::ESRCH) && self.pid > 0 {
            write!(f, "{}: task {} died", self.step, self.pid)?;
        } else if self.pid > 0 {
            write!(f, "{}: task {}", self.step, self.pid)?;
        } else {
            write!(f, "{}", self.step)?;
        }
        write!(f, ": {}", self.detail)?;
        if let Some(e) = self.errno {
            write!(f, " (errno {e}: {})", nix::errno::Errno::from_raw(e).desc())?;
        }
        Ok(())
    }
}

impl DumpError {
    pub fn new(
        step: &'static str,
        pid: i32,
        errno: Option<i32>,
        detail: impl Into<String>,
    ) -> Self {
        DumpError {
            step,
            pid,
            errno,
            detail: detail.into(),
        }
    }

    /// From a /proc parser error.
    pub fn proc(step: &'static str, pid: i32, e: crate::proc::ProcError) -> Self {
        let errno = e.errno();
        let pid = match &e {
            crate::proc::ProcError::TaskDied { pid, .. } => *pid,
            _ => pid,
        };
        DumpError::new(step, pid, errno, e.to_string())
    }

    /// From an error of the `sys` layer (ptrace, remote syscalls).
    pub fn sys(step: &'static str, pid: i32, e: crate::sys::error::Error) -> Self {
        use crate::sys::error::Error as E;
        let (pid, errno) = match &e {
            E::TaskDied { pid, .. } => (*pid, Some(libc::ESRCH)),
            E::Task { pid, errno, .. } | E::Remote { pid, errno, .. } => {
                (*pid, Some(*errno as i32))
            }
            E::Path { errno, .. } | E::Sys { errno, .. } => (pid, Some(*errno as i32)),
            E::Timeout { .. } => (pid, Some(libc::ETIMEDOUT)),
            _ => (pid, None),
        };
        DumpError::new(step, pid, errno, e.to_string())
    }

    /// From an image writing error.
    pub fn image(step: &'static str, pid: i32, e: super::images_out::ImageError) -> Self {
        DumpError::new(step, pid, e.errno(), e.to_string())
    }

    /// From an I/O error.
    pub fn io(step: &'static str, pid: i32, what: &str, e: std::io::Error) -> Self {
        DumpError::new(step, pid, e.raw_os_error(), format!("{what}: {e}"))
    }
}

/// Result of a dump step.
pub type Result<T> = std::result::Result<T, DumpError>;
