//! `/proc/PID/cgroup`: `hierarchy-id:controllers:path` lines.

use std::path::Path;

use super::{parse_i64, ProcError};

/// One line of `/proc/PID/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy: u32,
    /// Controllers (`cpu,cpuacct`, `name=systemd`, empty for v2).
    pub controllers: String,
    pub path: String,
}

/// Parses cgroup text.
pub fn parse(path: &Path, text: &str) -> Result<Vec<CgroupLine>, ProcError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut it = line.splitn(3, ':');
        let (Some(h), Some(c), Some(p)) = (it.next(), it.next(), it.next()) else {
            return Err(ProcError::parse(path, i, "line", line.to_string()));
        };
        out.push(CgroupLine {
            hierarchy: parse_i64(path, i, "hierarchy", h)? as u32,
            controllers: c.to_string(),
            path: p.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
/// Reads `/proc/PID/cgroup`.
pub fn read(pid: i32) -> Result<Vec<CgroupLine>, ProcError> {
    let p = super::path(pid, "cgroup");
    parse(&p, &super::read_text(pid, &p)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_lines() {
        let v = parse(Path::new("cgroup"), "6:freezer:/a\n0::/b:c\n").unwrap();
        assert_eq!(v[1].path, "/b:c");
        assert!(parse(Path::new("cgroup"), "x\n").is_err());
        assert!(!read(std::process::id() as i32).unwrap().is_empty());
    }
}
