//! `/proc/PID/timers`: the POSIX timers of a process (`timer_create`).
//!
//! ```text
//!  ID: 0
//!  signal: 35/0000000000000309      (signo / sigev_value as hex pointer)
//!  notify: signal/pid.30500         (signal|thread|none / pid.N or tid.N)
//!  ClockID: 1
//! ```
//! The remaining value/interval/overrun come from `timer_gettime` in the task (parasite).

use std::path::Path;

use super::{parse_hex, parse_i64, ProcError};

/// Most timers we accept per process.
pub const MAX_TIMERS: usize = 1 << 16;

/// One POSIX timer as /proc shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub signo: i32,
    pub sival: u64,
    /// SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4 (as `sigev_notify`).
    pub notify: i32,
    /// The thread of SIGEV_THREAD_ID (or the pid shown).
    pub notify_pid: i32,
    pub clock_id: i32,
}

/// Parses timers text.
pub fn parse(path: &Path, text: &str) -> Result<Vec<PosixTimer>, ProcError> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        let i = out.len();
        if k == "ID" {
            if out.len() >= MAX_TIMERS {
                return Err(ProcError::parse(path, i, "ID", "too many timers"));
            }
            out.push(PosixTimer {
                id: parse_i64(path, i, "ID", v)? as i32,
                ..Default::default()
            });
            continue;
        }
        let cur = out
            .last_mut()
            .ok_or_else(|| ProcError::parse(path, 0, "ID", "field before ID"))?;
        match k {
            "signal" => {
                let (s, val) = v
                    .split_once('/')
                    .ok_or_else(|| ProcError::parse(path, i, "signal", v.to_string()))?;
                cur.signo = parse_i64(path, i, "signal", s)? as i32;
                cur.sival = parse_hex(path, i, "signal", val)?;
            }
            "notify" => {
                let (kind, who) = v
                    .split_once('/')
                    .ok_or_else(|| ProcError::parse(path, i, "notify", v.to_string()))?;
                let base = match kind {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    "thread" => libc::SIGEV_THREAD,
                    _ => return Err(ProcError::parse(path, i, "notify", v.to_string())),
                };
                let (tag, n) = who
                    .split_once('.')
                    .ok_or_else(|| ProcError::parse(path, i, "notify", v.to_string()))?;
                cur.notify = if tag == "tid" {
                    base | libc::SIGEV_THREAD_ID
                } else {
                    base
                };
                cur.notify_pid = parse_i64(path, i, "notify", n)? as i32;
            }
            "ClockID" => cur.clock_id = parse_i64(path, i, "ClockID", v)? as i32,
            _ => {}
        }
    }
    Ok(out)
}

/// Reads `/proc/PID/timers`.
pub fn read(pid: i32) -> Result<Vec<PosixTimer>, ProcError> {
    let p = super::path(pid, "timers");
    parse(&p, &super::read_text(pid, &p)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_two() {
        let t = "ID: 0\nsignal: 35/0000000000000309\nnotify: signal/pid.30500\nClockID: 1\nID: 1\nsignal: 14/0000000000000000\nnotify: thread/tid.7\nClockID: 0\n";
        let v = parse(Path::new("timers"), t).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            (
                v[0].signo,
                v[0].sival,
                v[0].notify,
                v[0].notify_pid,
                v[0].clock_id
            ),
            (35, 0x309, 0, 30500, 1)
        );
        assert_eq!(v[1].notify, libc::SIGEV_THREAD | libc::SIGEV_THREAD_ID);
        assert!(parse(Path::new("timers"), "signal: 1/0\n").is_err());
        assert!(parse(Path::new("timers"), "ID: 0\nnotify: bogus\n").is_err());
    }

    #[test]
    fn own_timers_readable() {
        assert!(read(std::process::id() as i32).unwrap().is_empty());
    }
}
