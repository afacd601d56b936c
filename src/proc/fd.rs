//! Open files of a task: `/proc/PID/fd/N` links and `/proc/PID/fdinfo/N`.
//!
//! ```text
//!  fdinfo:  pos:\t12345
//!           flags:\t0100002        (octal, O_* incl. O_CLOEXEC 02000000)
//!           mnt_id:\t24
//!           ino:\t10078617
//!           <type-specific lines: eventfd-count, tfd, inotify wd, sigmask, seals...>
//! ```

use std::path::{Path, PathBuf};

use super::{io_err, parse_i64, parse_oct, parse_u64, ProcError};

/// Most fds we accept for one task.
pub const MAX_FDS: usize = 1 << 20;

/// `/proc/PID/fdinfo/N`, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// `flags` as the kernel shows them (includes O_CLOEXEC).
    pub flags: u32,
    pub mnt_id: i32,
    pub ino: u64,
    /// Every other `key: value` line, in order (type-specific details).
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    #[cfg(test)]
    /// The first extra line with this key.
    pub fn extra(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses fdinfo text.
pub fn parse_fdinfo(path: &Path, text: &str) -> Result<FdInfo, ProcError> {
    let mut info = FdInfo::default();
    let mut seen_flags = false;
    for (i, line) in text.lines().enumerate() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "pos" => info.pos = parse_u64(path, i, "pos", v)?,
            "flags" => {
                info.flags = parse_oct(path, i, "flags", v)? as u32;
                seen_flags = true;
            }
            "mnt_id" => info.mnt_id = parse_i64(path, i, "mnt_id", v)? as i32,
            "ino" => info.ino = parse_u64(path, i, "ino", v)?,
            _ => {
                if info.extra.len() < 1 << 16 {
                    info.extra.push((k.to_string(), v.to_string()));
                }
            }
        }
    }
    if !seen_flags {
        return Err(ProcError::parse(path, 0, "flags", "missing"));
    }
    Ok(info)
}

/// Reads `/proc/PID/fdinfo/FD`.
pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let p = super::path(pid, &format!("fdinfo/{fd}"));
    parse_fdinfo(&p, &super::read_text(pid, &p)?)
}

/// The open fd numbers of `pid`, ascending.
pub fn list_fds(pid: i32) -> Result<Vec<i32>, ProcError> {
    let p = super::path(pid, "fd");
    let mut out = Vec::new();
    for (i, ent) in std::fs::read_dir(&p)
        .map_err(|e| io_err(pid, &p, e))?
        .enumerate()
    {
        let ent = ent.map_err(|e| io_err(pid, &p, e))?;
        if out.len() >= MAX_FDS {
            return Err(ProcError::parse(&p, i, "fd", "too many fds"));
        }
        out.push(parse_i64(&p, i, "fd", &ent.file_name().to_string_lossy())? as i32);
    }
    out.sort_unstable();
    Ok(out)
}

/// What `/proc/PID/fd/N` points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdTarget {
    /// A path (possibly ending in ` (deleted)`; memfds show `/memfd:NAME (deleted)`).
    Path(PathBuf),
    /// `pipe:[ino]`
    Pipe(u64),
    /// `socket:[ino]`
    Socket(u64),
    /// `anon_inode:[eventfd]`, `anon_inode:[eventpoll]`, `anon_inode:[timerfd]`, ...
    AnonInode(String),
    /// Anything else (`net:[...]`, ...).
    Other(String),
}

/// Classifies a link target.
pub fn classify(target: &Path) -> FdTarget {
    let s = target.to_string_lossy();
    let bracket = |prefix: &str| -> Option<u64> {
        s.strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?
            .parse()
            .ok()
    };
    if let Some(i) = bracket("pipe:") {
        return FdTarget::Pipe(i);
    }
    if let Some(i) = bracket("socket:") {
        return FdTarget::Socket(i);
    }
    if let Some(a) = s.strip_prefix("anon_inode:") {
        return FdTarget::AnonInode(a.trim_start_matches('[').trim_end_matches(']').to_string());
    }
    if s.starts_with('/') {
        return FdTarget::Path(target.to_path_buf());
    }
    FdTarget::Other(s.into_owned())
}

/// Reads and classifies `/proc/PID/fd/FD`.
pub fn read_target(pid: i32, fd: i32) -> Result<FdTarget, ProcError> {
    let p = super::path(pid, &format!("fd/{fd}"));
    Ok(classify(&super::read_link(pid, &p)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_fds() {
        let me = std::process::id() as i32;
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        assert!(list_fds(me).unwrap().contains(&fd));
        let info = read_fdinfo(me, fd).unwrap();
        assert_eq!(info.flags & libc::O_ACCMODE as u32, libc::O_RDONLY as u32);
        assert_ne!(info.flags & libc::O_CLOEXEC as u32, 0);
        assert!(matches!(read_target(me, fd).unwrap(), FdTarget::Path(_)));
    }

    #[test]
    fn classify_targets() {
        assert_eq!(classify(Path::new("pipe:[865018]")), FdTarget::Pipe(865018));
        assert_eq!(classify(Path::new("socket:[1]")), FdTarget::Socket(1));
        assert_eq!(
            classify(Path::new("anon_inode:[eventfd]")),
            FdTarget::AnonInode("eventfd".into())
        );
        assert_eq!(
            classify(Path::new("anon_inode:inotify")),
            FdTarget::AnonInode("inotify".into())
        );
        assert!(matches!(
            classify(Path::new("net:[4026531840]")),
            FdTarget::Other(_)
        ));
    }

    #[test]
    fn fdinfo_needs_flags() {
        assert!(parse_fdinfo(Path::new("fdinfo"), "pos:\t0\n").is_err());
        assert!(parse_fdinfo(Path::new("fdinfo"), "pos:\tx\nflags:\t0\n").is_err());
        let i = parse_fdinfo(
            Path::new("fdinfo"),
            "pos:\t5\nflags:\t02\nmnt_id:\t3\nino:\t9\neventfd-count: 4\n",
        )
        .unwrap();
        assert_eq!((i.pos, i.flags, i.mnt_id, i.ino), (5, 2, 3, 9));
        assert_eq!(i.extra("eventfd-count"), Some("4"));
    }
}
