//! Small single-value files: limits, auxv, personality, loginuid, oom_score_adj, comm.

use std::path::Path;

use super::{parse_hex, parse_i64, parse_u64, ProcError};

/// Number of resource limits the kernel has (RLIMIT_CPU .. RLIMIT_RTTIME).
pub const RLIM_NLIMITS: usize = 16;

/// One resource limit (`u64::MAX` is unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rlimit {
    pub cur: u64,
    pub max: u64,
}

/// Parses `/proc/PID/limits` (a header line, then one line per limit in RLIMIT_* order).
pub fn parse_limits(path: &Path, text: &str) -> Result<Vec<Rlimit>, ProcError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if out.len() >= RLIM_NLIMITS {
            break;
        }
        // The name column is 26 characters wide; soft and hard follow, then optional units.
        let rest = line.get(26..).unwrap_or("");
        let mut it = rest.split_whitespace();
        let val = |s: Option<&str>, field: &'static str| -> Result<u64, ProcError> {
            match s {
                Some("unlimited") => Ok(u64::MAX),
                Some(v) => parse_u64(path, i, field, v),
                None => Err(ProcError::parse(path, i, field, "missing")),
            }
        };
        let cur = val(it.next(), "soft")?;
        let max = val(it.next(), "hard")?;
        out.push(Rlimit { cur, max });
    }
    if out.len() != RLIM_NLIMITS {
        return Err(ProcError::parse(
            path,
            out.len(),
            "limit",
            "expected 16 limits",
        ));
    }
    Ok(out)
}

/// Reads `/proc/PID/limits`.
pub fn read_limits(pid: i32) -> Result<Vec<Rlimit>, ProcError> {
    let p = super::path(pid, "limits");
    parse_limits(&p, &super::read_text(pid, &p)?)
}

/// Most auxv words we accept.
pub const MAX_AUXV_WORDS: usize = 1024;

/// Reads `/proc/PID/auxv` as u64 words (type, value pairs up to and including AT_NULL).
pub fn read_auxv(pid: i32) -> Result<Vec<u64>, ProcError> {
    let p = super::path(pid, "auxv");
    let b = super::read_bytes(pid, &p)?;
    let mut out: Vec<u64> = Vec::new();
    for c in b.chunks_exact(8).take(MAX_AUXV_WORDS) {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        out.push(u64::from_le_bytes(w));
    }
    // Stop after the AT_NULL pair.
    let mut end = out.len();
    for i in (0..out.len()).step_by(2) {
        if out[i] == 0 {
            end = (i + 2).min(out.len());
            break;
        }
    }
    out.truncate(end);
    Ok(out)
}

/// Reads `/proc/PID/personality` (hex).
pub fn read_personality(pid: i32) -> Result<u32, ProcError> {
    let p = super::path(pid, "personality");
    Ok(parse_hex(&p, 0, "personality", &super::read_text(pid, &p)?)? as u32)
}

/// Reads `/proc/PID/loginuid` (4294967295 when unset).
pub fn read_loginuid(pid: i32) -> Result<u32, ProcError> {
    let p = super::path(pid, "loginuid");
    Ok(parse_u64(&p, 0, "loginuid", &super::read_text(pid, &p)?)? as u32)
}

/// Reads `/proc/PID/oom_score_adj`.
pub fn read_oom_score_adj(pid: i32) -> Result<i32, ProcError> {
    let p = super::path(pid, "oom_score_adj");
    Ok(parse_i64(&p, 0, "oom_score_adj", &super::read_text(pid, &p)?)? as i32)
}

/// Reads `/proc/PID/task/TID/comm` without the newline.
pub fn read_comm(pid: i32, tid: i32) -> Result<String, ProcError> {
    let p = super::path(pid, &format!("task/{tid}/comm"));
    Ok(super::read_text(pid, &p)?
        .trim_end_matches('\n')
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_values() {
        let me = std::process::id() as i32;
        let l = read_limits(me).unwrap();
        let nofile =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((l[7].cur, l[7].max), nofile);
        let a = read_auxv(me).unwrap();
        assert!(a.len() >= 4 && a.len() % 2 == 0 && a[a.len() - 2] == 0);
        assert!(a.chunks(2).any(|p| p[0] == libc::AT_PAGESZ && p[1] == 4096));
        let _ = read_personality(me).unwrap();
        let _ = read_loginuid(me).unwrap();
        let _ = read_oom_score_adj(me).unwrap();
        assert!(!read_comm(me, me).unwrap().is_empty());
    }

    #[test]
    fn short_limits_rejected() {
        assert!(parse_limits(Path::new("limits"), "Limit  Soft  Hard\n").is_err());
    }
}
