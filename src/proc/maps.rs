//! `/proc/PID/smaps` (or `maps`): one [`Vma`] per mapping, with its `VmFlags`.
//!
//! ```text
//!  start-end       perms offset   dev   inode   path
//!  7f66..000-7f..  rw-s  00000000 00:01 6125    /memfd:fx-memfd (deleted)
//!  Size:  ...                     (smaps only: key/value lines)
//!  VmFlags: rd wr sh mr mw me ms sd
//! ```

use std::path::Path;

use super::{parse_hex, ProcError};

/// Most VMAs a process may have (kernel default `vm.max_map_count` is 65530).
pub const MAX_VMAS: usize = 1 << 20;

/// One mapping of `/proc/PID/smaps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (MAP_SHARED) rather than `p`.
    pub shared: bool,
    pub pgoff: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub ino: u64,
    /// Path column as shown (may end in ` (deleted)`; `[heap]`, `[stack]`, `[vdso]`...).
    pub path: String,
    /// Two-letter `VmFlags` (empty when parsed from `maps`).
    pub vm_flags: Vec<String>,
    /// `Anonymous:` in kB (smaps only).
    pub anonymous_kb: u64,
}

impl Vma {
    /// Whether `VmFlags` has `flag` (e.g. "hg", "nh", "dd", "gd").
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }

    /// The path without a trailing ` (deleted)`, and whether it was there.
    pub fn path_deleted(&self) -> (&str, bool) {
        match self.path.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (&self.path, false),
        }
    }

    #[cfg(test)]
    /// A file-backed mapping (inode != 0 and not a pseudo path).
    pub fn is_file(&self) -> bool {
        self.ino != 0 && !self.path.starts_with('[')
    }
}

fn is_header(line: &str) -> bool {
    // A header starts with "hex-hex ": key lines start with a capitalised word and a colon.
    match line.split_once(' ') {
        Some((range, _)) => {
            range.contains('-') && range.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        }
        None => false,
    }
}

fn parse_header(path: &Path, idx: usize, line: &str) -> Result<Vma, ProcError> {
    let mut rest = line;
    let mut tok = |name: &'static str| -> Result<&str, ProcError> {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        if end == 0 {
            return Err(ProcError::parse(path, idx, name, "missing"));
        }
        let (a, b) = t.split_at(end);
        rest = b;
        Ok(a)
    };
    let range = tok("range")?;
    let perms = tok("perms")?;
    let off = tok("offset")?;
    let dev = tok("dev")?;
    let ino = tok("inode")?;
    let name = rest.trim_start().to_string();
    let (s, e) = range
        .split_once('-')
        .ok_or_else(|| ProcError::parse(path, idx, "range", range.to_string()))?;
    let pb = perms.as_bytes();
    if pb.len() != 4 {
        return Err(ProcError::parse(path, idx, "perms", perms.to_string()));
    }
    let (maj, min) = dev
        .split_once(':')
        .ok_or_else(|| ProcError::parse(path, idx, "dev", dev.to_string()))?;
    Ok(Vma {
        start: parse_hex(path, idx, "start", s)?,
        end: parse_hex(path, idx, "end", e)?,
        read: pb[0] == b'r',
        write: pb[1] == b'w',
        exec: pb[2] == b'x',
        shared: pb[3] == b's',
        pgoff: parse_hex(path, idx, "offset", off)?,
        dev_major: parse_hex(path, idx, "dev", maj)? as u32,
        dev_minor: parse_hex(path, idx, "dev", min)? as u32,
        ino: super::parse_u64(path, idx, "inode", ino)?,
        path: name,
        vm_flags: Vec::new(),
        anonymous_kb: 0,
    })
}

/// Parses smaps (or maps) text.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Vma>, ProcError> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        if is_header(line) {
            if out.len() >= MAX_VMAS {
                return Err(ProcError::parse(path, out.len(), "range", "too many VMAs"));
            }
            out.push(parse_header(path, out.len(), line)?);
            continue;
        }
        let idx = out.len();
        let Some(cur) = out.last_mut() else {
            return Err(ProcError::parse(
                path,
                0,
                "range",
                format!("key line before any VMA: {line:?}"),
            ));
        };
        if let Some(v) = line.strip_prefix("VmFlags:") {
            cur.vm_flags = v.split_whitespace().map(str::to_string).collect();
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            let n = v.trim().trim_end_matches("kB").trim();
            cur.anonymous_kb = super::parse_u64(path, idx, "Anonymous", n)?;
        }
    }
    Ok(out)
}

/// Reads `/proc/PID/smaps`.
pub fn read_smaps(pid: i32) -> Result<Vec<Vma>, ProcError> {
    let p = super::path(pid, "smaps");
    parse(&p, &super::read_text(pid, &p)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_smaps() {
        let v = read_smaps(std::process::id() as i32).unwrap();
        assert!(v.iter().any(|m| m.path == "[stack]" && m.has_flag("gd")));
        assert!(v.iter().all(|m| m.start < m.end && !m.vm_flags.is_empty()));
        assert!(v.iter().any(|m| m.is_file() && m.exec));
    }

    #[test]
    fn deleted_memfd_and_spaces() {
        let t = "7f666d7c0000-7f666d8c0000 rw-s 00000000 00:01 6125                       /memfd:fx memfd (deleted)\nVmFlags: rd wr sh mr mw me ms sd \n";
        let v = parse(Path::new("smaps"), t).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].path_deleted(), ("/memfd:fx memfd", true));
        assert!(v[0].shared && v[0].write && !v[0].exec);
        assert_eq!(v[0].ino, 6125);
        assert!(v[0].has_flag("sh"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(Path::new("smaps"), "VmFlags: rd\n").is_err());
        assert!(parse(Path::new("smaps"), "1000-zz00 rw-p 0 00:00 0\n").is_err());
        assert!(parse(Path::new("smaps"), "1000-2000 rw 0 00:00 0\n").is_err());
    }
}
