//! `/proc/PID/stat` and `/proc/PID/task/TID/stat`.
//!
//! One line: `pid (comm) state f4 f5 ...`; comm may contain spaces and parentheses, so the
//! fields start after the *last* `)`. Field numbers below are those of proc(5).

use std::path::Path;

use super::{parse_i64, parse_u64, ProcError};

/// The fields of `/proc/PID/stat` the dump uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    /// Field 3: R, S, D, Z, T, t, X, I...
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Field 9: PF_* flags.
    pub flags: u32,
    pub nice: i64,
    pub num_threads: i64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub exit_signal: i32,
    pub rt_priority: u32,
    pub policy: u32,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Field 52: the wait status of a zombie.
    pub exit_code: i32,
}

/// Parses the text of a stat file.
pub fn parse(path: &Path, text: &str) -> Result<Stat, ProcError> {
    let open = text
        .find('(')
        .ok_or_else(|| ProcError::parse(path, 0, "comm", "no '('"))?;
    let close = text
        .rfind(')')
        .ok_or_else(|| ProcError::parse(path, 0, "comm", "no ')'"))?;
    if close < open {
        return Err(ProcError::parse(path, 0, "comm", "')' before '('"));
    }
    let pid = parse_i64(path, 0, "pid", &text[..open])? as i32;
    let comm = text[open + 1..close].to_string();
    // fields[0] is field 3 (state).
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let f = |n: usize, name: &'static str| -> Result<&str, ProcError> {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| ProcError::parse(path, 0, name, format!("missing field {n}")))
    };
    let u = |n: usize, name: &'static str| -> Result<u64, ProcError> {
        parse_u64(path, 0, name, f(n, name)?)
    };
    let i = |n: usize, name: &'static str| -> Result<i64, ProcError> {
        parse_i64(path, 0, name, f(n, name)?)
    };
    let state = f(3, "state")?.chars().next().unwrap_or('?');
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: i(4, "ppid")? as i32,
        pgid: i(5, "pgrp")? as i32,
        sid: i(6, "session")? as i32,
        flags: u(9, "flags")? as u32,
        nice: i(19, "nice")?,
        num_threads: i(20, "num_threads")?,
        start_code: u(26, "startcode")?,
        end_code: u(27, "endcode")?,
        start_stack: u(28, "startstack")?,
        exit_signal: i(38, "exit_signal")? as i32,
        rt_priority: u(40, "rt_priority")? as u32,
        policy: u(41, "policy")? as u32,
        start_data: u(45, "start_data")?,
        end_data: u(46, "end_data")?,
        start_brk: u(47, "start_brk")?,
        arg_start: u(48, "arg_start")?,
        arg_end: u(49, "arg_end")?,
        env_start: u(50, "env_start")?,
        env_end: u(51, "env_end")?,
        exit_code: i(52, "exit_code")? as i32,
    })
}

/// Reads `/proc/PID/stat`.
pub fn read(pid: i32) -> Result<Stat, ProcError> {
    let p = super::path(pid, "stat");
    parse(&p, &super::read_text(pid, &p)?)
}

/// Reads `/proc/PID/task/TID/stat`.
pub fn read_thread(pid: i32, tid: i32) -> Result<Stat, ProcError> {
    let p = super::path(pid, &format!("task/{tid}/stat"));
    parse(&p, &super::read_text(pid, &p)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_own_stat() {
        let me = std::process::id() as i32;
        let s = read(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.num_threads >= 1);
        assert!(s.start_code > 0 && s.end_code > s.start_code);
    }

    #[test]
    fn comm_with_parens_and_spaces() {
        // Fields 4..=52 hold their own field number, except ppid (4) = 1 and exit_code = 10752.
        let mut f: Vec<String> = (4..=52).map(|n: u32| n.to_string()).collect();
        f[0] = "1".into();
        f[48] = "10752".into();
        let text = format!("42 (a) b (c)) S {}\n", f.join(" "));
        let text = text.as_str();
        let s = parse(Path::new("stat"), text).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_data, 45);
        assert_eq!(s.exit_code, 10752);
    }

    #[test]
    fn truncated_is_an_error() {
        let e = parse(Path::new("stat"), "42 (x) S 1 2").unwrap_err();
        assert!(e.to_string().contains("session"), "{e}");
        assert!(parse(Path::new("stat"), "garbage").is_err());
    }
}
