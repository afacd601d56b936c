//! Who holds the fixed PIDs of a fixture: a task that is not ours (not a fixture program
//! left by a test, not a dying task being reaped) makes the tests restore that fixture in a
//! fresh PID namespace instead. Shared with the engine's unit tests (included with `#[path]`),
//! so it needs nothing but std.

use std::fmt;

/// A live task holding a PID a fixture needs.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The PID/TID held.
    pub pid: i32,
    /// Its comm.
    pub comm: String,
    /// The process it belongs to (differs from `pid` for a thread).
    pub tgid: i32,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} is held by {} (tgid {})",
            self.pid, self.comm, self.tgid
        )
    }
}

/// Field `key` of /proc/PID/status.
fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
}

/// The live tasks among `pids` that are not fixture programs (zombies and dying tasks are
/// leftovers being reaped, not holders).
pub fn foreign_holders(pids: &[i32]) -> Vec<Holder> {
    pids.iter()
        .filter_map(|&pid| {
            let state = status_field(pid, "State")?;
            if state.starts_with('Z') || state.starts_with('X') {
                return None;
            }
            let ours = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p.starts_with("/tmp/criu-fixtures/bin"))
                .unwrap_or(false);
            if ours {
                return None;
            }
            Some(Holder {
                pid,
                comm: status_field(pid, "Name").unwrap_or_default(),
                tgid: status_field(pid, "Tgid")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(pid),
            })
        })
        .collect()
}

/// One line for stderr: which PIDs are held by whom, and that the namespace is used instead.
pub fn fallback_note(name: &str, holders: &[Holder]) -> String {
    let list: Vec<String> = holders.iter().map(|h| h.to_string()).collect();
    format!(
        "{name}: {} (not ours): restoring {name} in a fresh pid namespace instead",
        list.join(", ")
    )
}
