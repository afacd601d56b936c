//! Parsers for the `/proc` files the dump engine reads.
//!
//! Each submodule parses one kind of file into plain data; none of them touches the task in any
//! other way (no ptrace, no syscalls besides open/read/readlink). Every parser is total: bad
//! input gives a [`ProcError`] naming the file, the line (or entry) and the field, never a panic,
//! and lengths read from files are capped before they size an allocation.
//!
//! ```text
//!  /proc/PID/stat          -> stat::Stat        (ppid/pgid/sid, mm boundaries, policy)
//!  /proc/PID/status        -> status::Status    (creds, caps, signal masks, umask, seccomp)
//!  /proc/PID/smaps         -> maps::Vma         (one per VMA, with VmFlags)
//!  /proc/PID/task, children -> tasks            (thread ids, child pids)
//!  /proc/PID/fd, fdinfo    -> fd::FdLink, fd::FdInfo
//!  /proc/PID/mountinfo     -> mountinfo::Mount
//!  /proc/PID/timers        -> timers::PosixTimer
//!  /proc/PID/cgroup        -> cgroup::CgroupLine
//!  /proc/PID/ns/*          -> ns::NsIds
//!  /proc/PID/pagemap       -> pagemap::PagemapReader
//!  limits, auxv, personality, loginuid, oom_score_adj, comm -> misc
//! ```

pub(crate) mod cgroup;
pub(crate) mod fd;
pub(crate) mod maps;
pub(crate) mod misc;
pub(crate) mod mountinfo;
pub(crate) mod ns;
pub(crate) mod pagemap;
pub(crate) mod stat;
pub(crate) mod status;
pub(crate) mod tasks;
pub(crate) mod timers;

use std::path::{Path, PathBuf};

/// Errors of the `/proc` parsers.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The task is gone (ENOENT/ESRCH on its /proc directory).
    #[error("task {pid} died (reading {path})")]
    TaskDied { pid: i32, path: PathBuf },
    /// Any other I/O error.
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's content does not have the expected format.
    #[error("parse {path}: entry {entry}: field {field}: {why}")]
    Parse {
        path: PathBuf,
        entry: usize,
        field: &'static str,
        why: String,
    },
}

impl ProcError {
    /// The errno of an I/O error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ProcError::Io { source, .. } => source.raw_os_error(),
            ProcError::TaskDied { .. } => Some(libc::ESRCH),
            ProcError::Parse { .. } => None,
        }
    }

    pub(crate) fn parse(
        path: &Path,
        entry: usize,
        field: &'static str,
        why: impl Into<String>,
    ) -> Self {
        ProcError::Parse {
            path: path.to_path_buf(),
            entry,
            field,
            why: why.into(),
        }
    }
}

/// The largest /proc text file we read (smaps of a big process can be several MiB).
pub const MAX_PROC_FILE: u64 = 256 << 20;

/// `/proc/<pid>/<rest>` (or `/proc/<pid>` when `rest` is empty).
pub fn path(pid: i32, rest: &str) -> PathBuf {
    if rest.is_empty() {
        PathBuf::from(format!("/proc/{pid}"))
    } else {
        PathBuf::from(format!("/proc/{pid}/{rest}"))
    }
}

/// Maps an I/O error on a file of task `pid` to [`ProcError`] (ENOENT/ESRCH: the task died).
pub(crate) fn io_err(pid: i32, path: &Path, e: std::io::Error) -> ProcError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) if pid > 0 => ProcError::TaskDied {
            pid,
            path: path.to_path_buf(),
        },
        _ => ProcError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Reads a whole /proc file (capped at [`MAX_PROC_FILE`]).
pub fn read_bytes(pid: i32, path: &Path) -> Result<Vec<u8>, ProcError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| io_err(pid, path, e))?;
    let mut buf = Vec::new();
    f.take(MAX_PROC_FILE)
        .read_to_end(&mut buf)
        .map_err(|e| io_err(pid, path, e))?;
    Ok(buf)
}

/// Reads a whole /proc text file.
pub fn read_text(pid: i32, path: &Path) -> Result<String, ProcError> {
    let b = read_bytes(pid, path)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Reads a symlink of task `pid` as raw bytes (file names need not be UTF-8).
pub fn read_link(pid: i32, path: &Path) -> Result<PathBuf, ProcError> {
    std::fs::read_link(path).map_err(|e| io_err(pid, path, e))
}

pub(crate) fn parse_u64(
    path: &Path,
    entry: usize,
    field: &'static str,
    s: &str,
) -> Result<u64, ProcError> {
    s.trim()
        .parse::<u64>()
        .map_err(|e| ProcError::parse(path, entry, field, format!("{s:?}: {e}")))
}

pub(crate) fn parse_i64(
    path: &Path,
    entry: usize,
    field: &'static str,
    s: &str,
) -> Result<i64, ProcError> {
    s.trim()
        .parse::<i64>()
        .map_err(|e| ProcError::parse(path, entry, field, format!("{s:?}: {e}")))
}

pub(crate) fn parse_hex(
    path: &Path,
    entry: usize,
    field: &'static str,
    s: &str,
) -> Result<u64, ProcError> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    u64::from_str_radix(t, 16)
        .map_err(|e| ProcError::parse(path, entry, field, format!("{s:?}: {e}")))
}

pub(crate) fn parse_oct(
    path: &Path,
    entry: usize,
    field: &'static str,
    s: &str,
) -> Result<u64, ProcError> {
    u64::from_str_radix(s.trim(), 8)
        .map_err(|e| ProcError::parse(path, entry, field, format!("{s:?}: {e}")))
}
