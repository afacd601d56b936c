//! Pieces every kind shares: the fdinfo text, file status flags, the owner (`fown_entry`)
//! and restoring both onto a new descriptor.
//!
//! ```text
//!  /proc/PID/fdinfo/FD          pos:    0
//!                               flags:  02004002     (octal; O_CLOEXEC 02000000 is the fd's)
//!                               mnt_id: 16
//!                               ino:    1057
//!                               <kind lines: eventfd-count, tfd:, clockid:, sigmask:, inotify wd:>
//! ```
//! CRIU stores the file's status flags without `O_CLOEXEC` (that bit belongs to fdinfo-N.img).

use std::os::fd::{AsFd, BorrowedFd};

use stasis_images::pb;

use super::error::{sys, At, FilesError, Result};
use crate::sys::fdkinds;

/// Most lines we look at in one fdinfo text (an epoll or inotify fd lists one per target).
pub const MAX_FDINFO_LINES: usize = 1 << 16;

/// The fdinfo text of one fd, with its common fields parsed.
#[derive(Debug, Clone)]
pub struct FdInfo<'a> {
    pub text: &'a str,
    /// File status flags without `O_CLOEXEC`.
    pub flags: u32,
}

impl<'a> FdInfo<'a> {
    /// Parses the common fields of `text` (flags is required).
    pub fn parse(kind: &'static str, at: At, text: &'a str) -> Result<Self> {
        let mut flags = None;
        for (i, line) in text.lines().enumerate().take(MAX_FDINFO_LINES) {
            if let Some(v) = field(line, "flags") {
                flags = Some(u32::from_str_radix(v, 8).map_err(|e| bad(kind, at, i, "flags", e))?);
            }
        }
        let flags = flags.ok_or_else(|| bad(kind, at, 0, "flags", "missing"))?;
        Ok(FdInfo {
            text,
            flags: flags & !(libc::O_CLOEXEC as u32),
        })
    }

    /// Lines starting with `key:` (value trimmed), with their line numbers.
    pub fn lines_with(&self, key: &'a str) -> impl Iterator<Item = (usize, &'a str)> + 'a {
        self.text
            .lines()
            .enumerate()
            .take(MAX_FDINFO_LINES)
            .filter_map(move |(i, l)| field(l, key).map(|v| (i, v)))
    }

    /// The first line starting with `key:`.
    pub fn first(&self, kind: &'static str, at: At, key: &'static str) -> Result<(usize, &'a str)> {
        self.lines_with(key)
            .next()
            .ok_or_else(|| bad(kind, at, 0, key, "missing"))
    }
}

/// `key: value` → value, when the line's key is exactly `key`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(key)?;
    Some(rest.strip_prefix(':')?.trim())
}

/// An fdinfo parse error.
pub fn bad(
    kind: &'static str,
    at: At,
    line: usize,
    field: &'static str,
    what: impl ToString,
) -> FilesError {
    FilesError::Fdinfo {
        kind,
        at,
        line,
        field,
        what: what.to_string(),
    }
}

/// Space-separated `name:value` pairs of one line (`tfd: 5 events: 19 data: ...` style lines
/// are normalised first: `name: value` becomes `name:value`).
pub fn pairs(line: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let toks: Vec<&str> = line.split_whitespace().collect();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        if let Some((k, v)) = t.split_once(':') {
            if v.is_empty() && i + 1 < toks.len() && !toks[i + 1].contains(':') {
                out.push((k, toks[i + 1]));
                i += 2;
                continue;
            }
            out.push((k, v));
        }
        i += 1;
    }
    out
}

/// A hex number (with or without `0x`).
pub fn hex(v: &str) -> std::result::Result<u64, std::num::ParseIntError> {
    u64::from_str_radix(v.trim_start_matches("0x"), 16)
}

/// The owner of a file for SIGIO (`F_GETOWN_EX`, `F_GETSIG`), as CRIU records it.
pub fn dump_fown(kind: &'static str, at: At, file: BorrowedFd<'_>) -> Result<pb::FownEntry> {
    let (pid_type, pid) = fdkinds::get_owner(file).map_err(sys(kind, at, "F_GETOWN_EX"))?;
    let signum = fdkinds::get_sig(file).map_err(sys(kind, at, "F_GETSIG"))?;
    Ok(pb::FownEntry {
        uid: 0,
        euid: 0,
        signum: signum as u32,
        pid_type: pid_type as u32,
        pid: pid as u32,
    })
}

/// Status flags `F_SETFL` can change.
pub const SETFL_MASK: u32 =
    (libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME) as u32;

/// Puts the recorded status flags and signal back on a new descriptor (CRIU's
/// `rst_file_params`; the owner is set by the restore engine, see
/// `restore::open_files::set_owners`).
pub fn restore_params(
    kind: &'static str,
    id: u32,
    file: impl AsFd,
    flags: u32,
    fown: &pb::FownEntry,
) -> Result<()> {
    let at = At::Id(id);
    let fd = file.as_fd();
    let cur = fdkinds::get_fl(fd).map_err(sys(kind, at, "F_GETFL"))? as u32;
    let want = (cur & !SETFL_MASK) | (flags & SETFL_MASK);
    if want != cur {
        fdkinds::set_fl(fd, want as i32).map_err(sys(kind, at, "F_SETFL"))?;
    }
    if fown.signum != 0 {
        fdkinds::set_sig(fd, fown.signum as i32).map_err(sys(kind, at, "F_SETSIG"))?;
    }
    // The owner (`fown.pid`) is the engine's business: the owning task may not exist yet.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_common_and_pairs() {
        let at = At::Fd { pid: 1, fd: 3 };
        let t = "pos:\t0\nflags:\t02004002\nmnt_id:\t16\nino:\t1057\ntfd:        5 events:       19 data:                5  pos:0 ino:41 sdev:f\n";
        let i = FdInfo::parse("epoll", at, t).unwrap();
        assert_eq!(i.flags, libc::O_RDWR as u32 | libc::O_NONBLOCK as u32);
        let (_, l) = i.first("epoll", at, "tfd").unwrap();
        let full = format!("tfd: {l}");
        let p = pairs(&full);
        assert_eq!(p[0], ("tfd", "5"));
        assert_eq!(p[1], ("events", "19"));
        assert_eq!(p[2], ("data", "5"));
        assert_eq!(p[4], ("ino", "41"));
        assert!(FdInfo::parse("epoll", at, "pos: 0\n").is_err());
        assert!(FdInfo::parse("epoll", at, "flags: 9z\n").is_err());
    }
}
