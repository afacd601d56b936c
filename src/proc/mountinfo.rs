//! `/proc/PID/mountinfo`.
//!
//! ```text
//!  36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//!  id par dev  root  mountpoint  opts      optional.. - fstype source super-opts
//! ```

use std::path::Path;

use super::{parse_i64, ProcError};

/// Most mounts we accept in one namespace.
pub const MAX_MOUNTS: usize = 1 << 20;

/// One mountinfo line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub mnt_id: i32,
    pub parent_id: i32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub root: String,
    pub mountpoint: String,
    pub options: String,
    pub optional: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// Undoes the kernel's octal escapes (`\040` for a space).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &s[i + 1..(i + 4).min(s.len())];
            if oct.len() == 3 {
                if let Ok(v) = u8::from_str_radix(oct, 8) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Mount>, ProcError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_MOUNTS {
            return Err(ProcError::parse(path, i, "mnt_id", "too many mounts"));
        }
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f
            .iter()
            .position(|x| *x == "-")
            .ok_or_else(|| ProcError::parse(path, i, "separator", "no ' - '"))?;
        if sep < 6 || f.len() < sep + 3 {
            return Err(ProcError::parse(path, i, "fields", "too few fields"));
        }
        let (maj, min) = f[2]
            .split_once(':')
            .ok_or_else(|| ProcError::parse(path, i, "dev", f[2].to_string()))?;
        out.push(Mount {
            mnt_id: parse_i64(path, i, "mnt_id", f[0])? as i32,
            parent_id: parse_i64(path, i, "parent_id", f[1])? as i32,
            dev_major: parse_i64(path, i, "dev", maj)? as u32,
            dev_minor: parse_i64(path, i, "dev", min)? as u32,
            root: unescape(f[3]),
            mountpoint: unescape(f[4]),
            options: f[5].to_string(),
            optional: f[6..sep].iter().map(|s| s.to_string()).collect(),
            fstype: f[sep + 1].to_string(),
            source: unescape(f[sep + 2]),
            super_options: f.get(sep + 3).map(|s| s.to_string()).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Reads `/proc/PID/mountinfo`.
pub fn read(pid: i32) -> Result<Vec<Mount>, ProcError> {
    let p = super::path(pid, "mountinfo");
    parse(&p, &super::read_text(pid, &p)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_mounts() {
        let m = read(std::process::id() as i32).unwrap();
        assert!(m
            .iter()
            .any(|m| m.mountpoint == "/proc" && m.fstype == "proc"));
    }

    #[test]
    fn parse_line_and_escapes() {
        let t = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n";
        let m = parse(Path::new("mountinfo"), t).unwrap();
        assert_eq!(m[0].mountpoint, "/mnt/a b");
        assert_eq!(m[0].optional, vec!["master:1"]);
        assert_eq!((m[0].dev_major, m[0].dev_minor), (98, 0));
        assert!(parse(Path::new("mountinfo"), "1 2 3\n").is_err());
        assert!(parse(Path::new("mountinfo"), "1 2 3 / / rw - x\n").is_err());
    }
}
