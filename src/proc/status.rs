//! `/proc/PID/status` (`Key:\tvalue` lines) and the fields the dump takes from it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{parse_hex, parse_i64, parse_oct, ProcError};

/// Parsed `/proc/PID/status`: every line kept by key, typed accessors for what the dump uses.
#[derive(Debug, Clone, Default)]
pub struct Status {
    path: PathBuf,
    fields: HashMap<String, String>,
}

/// Real, effective, saved and filesystem ids (the four columns of `Uid:`/`Gid:`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdSet {
    pub real: u32,
    pub effective: u32,
    pub saved: u32,
    pub fs: u32,
}

impl Status {
    /// Parses the text of a status file.
    pub fn parse(path: &Path, text: &str) -> Status {
        let mut fields = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        Status {
            path: path.to_path_buf(),
            fields,
        }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &'static str) -> Result<&str, ProcError> {
        self.fields
            .get(key)
            .map(|s| s.as_str())
            .ok_or_else(|| ProcError::parse(&self.path, 0, key, "missing"))
    }

    fn hex(&self, key: &'static str) -> Result<u64, ProcError> {
        parse_hex(&self.path, 0, key, self.get(key)?)
    }

    fn int(&self, key: &'static str) -> Result<i64, ProcError> {
        parse_i64(&self.path, 0, key, self.get(key)?)
    }

    fn ids(&self, key: &'static str) -> Result<IdSet, ProcError> {
        let v: Vec<&str> = self.get(key)?.split_whitespace().collect();
        if v.len() != 4 {
            return Err(ProcError::parse(&self.path, 0, key, "expected 4 ids"));
        }
        let n = |i: usize| parse_i64(&self.path, 0, key, v[i]).map(|x| x as u32);
        Ok(IdSet {
            real: n(0)?,
            effective: n(1)?,
            saved: n(2)?,
            fs: n(3)?,
        })
    }

    pub fn uids(&self) -> Result<IdSet, ProcError> {
        self.ids("Uid")
    }
    pub fn gids(&self) -> Result<IdSet, ProcError> {
        self.ids("Gid")
    }
    /// Supplementary groups.
    pub fn groups(&self) -> Result<Vec<u32>, ProcError> {
        self.get("Groups")?
            .split_whitespace()
            .map(|g| parse_i64(&self.path, 0, "Groups", g).map(|x| x as u32))
            .collect()
    }
    pub fn cap_inh(&self) -> Result<u64, ProcError> {
        self.hex("CapInh")
    }
    pub fn cap_prm(&self) -> Result<u64, ProcError> {
        self.hex("CapPrm")
    }
    pub fn cap_eff(&self) -> Result<u64, ProcError> {
        self.hex("CapEff")
    }
    pub fn cap_bnd(&self) -> Result<u64, ProcError> {
        self.hex("CapBnd")
    }
    pub fn cap_amb(&self) -> Result<u64, ProcError> {
        self.hex("CapAmb")
    }
    /// Blocked signals of this thread (bit n-1 for signal n).
    pub fn sig_blk(&self) -> Result<u64, ProcError> {
        self.hex("SigBlk")
    }
    /// Thread-private pending signals.
    pub fn sig_pnd(&self) -> Result<u64, ProcError> {
        self.hex("SigPnd")
    }
    /// Process-wide pending signals.
    pub fn shd_pnd(&self) -> Result<u64, ProcError> {
        self.hex("ShdPnd")
    }
    /// Seccomp mode: 0 disabled, 1 strict, 2 filter.
    pub fn seccomp(&self) -> Result<u32, ProcError> {
        Ok(self.int("Seccomp")? as u32)
    }
    pub fn no_new_privs(&self) -> Result<bool, ProcError> {
        Ok(self.int("NoNewPrivs")? != 0)
    }
    pub fn umask(&self) -> Result<u32, ProcError> {
        Ok(parse_oct(&self.path, 0, "Umask", self.get("Umask")?)? as u32)
    }
    #[cfg(test)]
    pub fn tgid(&self) -> Result<i32, ProcError> {
        Ok(self.int("Tgid")? as i32)
    }
    #[cfg(test)]
    /// `NSpid:`: this task's pid in each nested pid namespace, outermost first.
    pub fn ns_pids(&self) -> Result<Vec<i32>, ProcError> {
        self.get("NSpid")?
            .split_whitespace()
            .map(|g| parse_i64(&self.path, 0, "NSpid", g).map(|x| x as i32))
            .collect()
    }
}

/// Reads `/proc/PID/status`.
pub fn read(pid: i32) -> Result<Status, ProcError> {
    let p = super::path(pid, "status");
    Ok(Status::parse(&p, &super::read_text(pid, &p)?))
}

/// Reads `/proc/PID/task/TID/status`.
pub fn read_thread(pid: i32, tid: i32) -> Result<Status, ProcError> {
    let p = super::path(pid, &format!("task/{tid}/status"));
    Ok(Status::parse(&p, &super::read_text(pid, &p)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_status() {
        let me = std::process::id() as i32;
        let s = read(me).unwrap();
        assert_eq!(s.tgid().unwrap(), me);
        assert_eq!(s.uids().unwrap().effective, nix::unistd::geteuid().as_raw());
        assert!(s.cap_bnd().unwrap() != 0);
        let _ = s.umask().unwrap();
        assert_eq!(s.ns_pids().unwrap().last().copied(), Some(me));
    }

    #[test]
    fn missing_and_bad_fields() {
        let s = Status::parse(Path::new("status"), "Uid:\t1 2 3\nSigBlk:\tzz\n");
        assert!(s.uids().unwrap_err().to_string().contains("Uid"));
        assert!(s.sig_blk().unwrap_err().to_string().contains("SigBlk"));
        assert!(s.umask().unwrap_err().to_string().contains("missing"));
    }
}
