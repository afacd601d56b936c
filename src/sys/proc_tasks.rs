//! The few `/proc` reads the ptrace layer needs: threads of a process, children of a thread,
//! which processes have children at all (one pass over `/proc`), the one-letter state of a
//! task, whether a process is alive, and an executable private mapping to run code at.

use super::error::{Error, Result};
use std::collections::HashSet;
use std::path::Path;

/// Largest `/proc` file we read whole (maps of big processes are a few MiB at most).
const MAX_PROC_FILE: u64 = 64 << 20;

fn read_small(path: &str) -> Result<String> {
    let mut text = String::new();
    read_into(path, &mut text)?;
    Ok(text)
}

/// Reads `path` whole into `text` (cleared first), so a loop can reuse one buffer.
fn read_into(path: &str, text: &mut String) -> Result<()> {
    use std::io::Read;
    text.clear();
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, &e))?;
    file.take(MAX_PROC_FILE)
        .read_to_string(text)
        .map_err(|e| Error::io("read", path, &e))?;
    Ok(())
}

/// Thread ids of process `pid` (`/proc/PID/task`), ascending. ENOENT means the process is gone.
pub fn threads(pid: i32) -> Result<Vec<i32>> {
    let path = format!("/proc/{pid}/task");
    let dir = std::fs::read_dir(&path).map_err(|e| dir_error(pid, &path, &e))?;
    let mut tids = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| dir_error(pid, &path, &e))?;
        if let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

fn dir_error(pid: i32, path: &str, e: &std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::TaskDied {
            pid,
            op: "list threads",
        }
    } else {
        Error::io("read_dir", path, e)
    }
}

/// Children of thread `tid` (`/proc/PID/task/TID/children`; complete only while the thread is
/// stopped).
pub fn children(pid: i32, tid: i32) -> Result<Vec<i32>> {
    let path = format!("/proc/{pid}/task/{tid}/children");
    let text = match read_small(&path) {
        Ok(t) => t,
        Err(Error::Path {
            errno: nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH,
            ..
        }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    text.split_whitespace()
        .map(|w| {
            w.parse().map_err(|_| Error::Parse {
                path: path.clone().into(),
                what: format!("bad pid {w:?}"),
            })
        })
        .collect()
}

/// Fewer `children` files than this are not worth listing `/proc` for (see [`with_children`]).
pub const SCAN_MIN_THREADS: usize = 64;

/// Every process that has at least one child, zombies included, when that is cheaper to learn
/// than reading `reads` `children` files; `None` when it is not (the system has at least as
/// many processes as `reads`: one stat file each costs about what a `children` file does) or
/// when `/proc` may hide processes (`hidepid=`: a child we may not see is still listed in a
/// `children` file). See [`parents`].
pub fn with_children(reads: usize) -> Result<Option<HashSet<i32>>> {
    let pids = processes()?;
    if reads <= pids.len() || proc_hides_pids()? {
        return Ok(None);
    }
    parents(&pids).map(Some)
}

/// True when the `/proc` we read is mounted with `hidepid=` (the kernel shows the option only
/// when it is not `off`).
fn proc_hides_pids() -> Result<bool> {
    let text = read_small("/proc/self/mountinfo")?;
    Ok(text.lines().any(hides_pids))
}

/// One line of `mountinfo`: `ID PARENT DEV ROOT MOUNTPOINT OPTS [TAGS] - FSTYPE SOURCE SUPER`;
/// true for a proc mount at `/proc` with `hidepid=` among its super options.
fn hides_pids(line: &str) -> bool {
    let Some((mount, fs)) = line.split_once(" - ") else {
        return false;
    };
    let mut fs = fs.split_whitespace();
    mount.split_whitespace().nth(4) == Some("/proc")
        && fs.next() == Some("proc")
        && fs
            .nth(1)
            .is_some_and(|opts| opts.split(',').any(|o| o.starts_with("hidepid=")))
}

/// Pids of every process (thread group) listed in `/proc`.
pub fn processes() -> Result<Vec<i32>> {
    const PROC: &str = "/proc";
    let dir = std::fs::read_dir(PROC).map_err(|e| Error::io("read_dir", PROC, &e))?;
    let mut pids = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| Error::io("read_dir", PROC, &e))?;
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The parents of processes `pids` (field 4 of their stat, 0 left out): given every process
/// ([`processes`]), the processes with at least one child. Those missing from the set have
/// no child in any thread, so none of their threads' `children` files needs reading.
///
/// Field 4 is the thread group of the task's real parent, the relation the `children` files
/// list (group leaders whose real parent is that thread; ptrace does not change it); pids are
/// those of the `/proc` mount's namespace, like the `children` files. A thread stopped before
/// the pass cannot have forked a child the pass missed; a child can still arrive by
/// reparenting (an orphan), exactly as it can after a `children` file was read. The leader's
/// `task/PID/stat` is read, not `PID/stat`, which sums over every thread (5 ms for 8000);
/// the parent is the same for every thread of a group. Processes gone meanwhile are skipped.
pub fn parents(pids: &[i32]) -> Result<HashSet<i32>> {
    let mut parents = HashSet::new();
    let mut text = String::new();
    for &pid in pids {
        let path = format!("/proc/{pid}/task/{pid}/stat");
        match read_into(&path, &mut text) {
            Ok(()) => {}
            Err(Error::Path {
                errno: nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH,
                ..
            }) => continue,
            Err(e) => return Err(e),
        }
        let ppid = parse_ppid(&text).ok_or_else(|| Error::Parse {
            path: path.into(),
            what: "no parent pid after comm".into(),
        })?;
        if ppid > 0 {
            parents.insert(ppid);
        }
    }
    Ok(parents)
}

/// The fields of a stat line `pid (comm) S ppid ...` from field 3 (the state) on; comm may
/// contain anything, so they start after the last `)`. `None` without a `)`.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// Field 4 (ppid) of a stat line.
fn parse_ppid(stat: &str) -> Option<i32> {
    stat_fields(stat)?.nth(1)?.parse().ok()
}

/// The state letter of a task (`R`, `S`, `D`, `T`, `t`, `Z`, `X`, ...) from
/// `/proc/PID/task/TID/stat`; `None` when the task is gone.
pub fn state(pid: i32, tid: i32) -> Result<Option<char>> {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let text = match read_small(&path) {
        Ok(t) => t,
        Err(Error::Path {
            errno: nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH,
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let state = stat_fields(&text)
        .and_then(|mut f| f.next())
        .and_then(|f| f.chars().next())
        .ok_or_else(|| Error::Parse {
            path: path.into(),
            what: "no state after comm".into(),
        })?;
    Ok(Some(state))
}

/// Whether `pid` exists and is not a zombie: `/proc/PID/stat` is readable and the state
/// letter after the last `)` is not `Z`. Used to wait for killed tasks to go away.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_fields(&s).and_then(|mut f| f.next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Start address of the first executable private mapping of `pid` that is a regular
/// mapping (not `[vdso]`, `[vsyscall]`, `[uprobes]`): a place to poke `syscall; int3`.
pub fn exec_area(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/maps");
    let text = read_small(&path).map_err(|e| match e {
        Error::Path {
            errno: nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH,
            ..
        } => Error::TaskDied {
            pid,
            op: "read maps",
        },
        e => e,
    })?;
    if text.trim().is_empty() {
        // Only an exiting task has no mappings at all.
        return Err(Error::TaskDied {
            pid,
            op: "read maps",
        });
    }
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let name = fields.nth(3).unwrap_or("");
        if perms.as_bytes().get(2) != Some(&b'x') || perms.as_bytes().get(3) != Some(&b'p') {
            continue;
        }
        if name.starts_with('[') {
            continue;
        }
        let start = range.split('-').next().unwrap_or("");
        return u64::from_str_radix(start, 16).map_err(|_| Error::Parse {
            path: path.clone().into(),
            what: format!("bad range {range:?}"),
        });
    }
    // The maps of a killed task can come back cut short, not empty: its mm was torn down
    // between two reads of the file (std reads a small probe first). Every thread sets
    // PF_EXITING before it lets go of the mm, so the leader shows it by now.
    if is_exiting(pid, pid) {
        return Err(Error::TaskDied {
            pid,
            op: "read maps",
        });
    }
    Err(Error::Parse {
        path: Path::new(&path).into(),
        what: "no executable private mapping".into(),
    })
}

/// `PF_EXITING` in the flags field of `/proc/PID/stat`.
const PF_EXITING: u64 = 0x4;

/// True when task `tid` of `pid` is gone, a zombie, or exiting (`PF_EXITING`): what a closed
/// socket or pipe to it usually means.
pub fn is_exiting(pid: i32, tid: i32) -> bool {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let Ok(text) = read_small(&path) else {
        return true;
    };
    let Some(fields) = stat_fields(&text) else {
        return false;
    };
    let fields: Vec<&str> = fields.collect();
    // fields[0] = state (stat field 3); flags is stat field 9.
    let state = fields.first().copied().unwrap_or("");
    let flags = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_after_the_last_parenthesis() {
        assert_eq!(parse_ppid("12 (sh) S 1 12 12 0 -1"), Some(1));
        assert_eq!(parse_ppid("12 (a) b (c) 7) Z 345 12 12"), Some(345));
        assert_eq!(parse_ppid("12 (x y) R 0 0 0"), Some(0));
        assert_eq!(parse_ppid("12 (sh"), None);
        assert_eq!(parse_ppid("12 (sh) S"), None);
        assert_eq!(parse_ppid("12 (sh) S x"), None);
    }

    #[test]
    fn hidepid_mounts() {
        assert!(!hides_pids("22 27 0:21 / /proc rw,relatime - proc proc rw"));
        assert!(hides_pids(
            "22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw,hidepid=invisible"
        ));
        assert!(hides_pids(
            "22 27 0:21 / /proc rw - proc none rw,gid=5,hidepid=2"
        ));
        assert!(!hides_pids("40 27 0:33 / /mnt rw - proc proc rw,hidepid=2"));
        assert!(!hides_pids("40 27 0:33 / /proc rw - tmpfs hidepid=2 rw"));
        assert!(!hides_pids("garbage"));
    }

    #[test]
    fn processes_with_children_include_a_zombie_parent_and_not_a_leaf() {
        // `true` exits and `sleep` (exec'd in place of sh) never reaps it: a zombie child.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "true & exec sleep 5"])
            .spawn()
            .unwrap();
        let sleeper = child.id() as i32;
        let mut zombie = None;
        for _ in 0..500 {
            let kids = children(sleeper, sleeper).unwrap();
            if let [z] = kids[..] {
                if state(z, z).unwrap() == Some('Z') {
                    zombie = Some(z);
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let found = processes().and_then(|pids| parents(&pids));
        let _ = child.kill();
        let _ = child.wait();
        let zombie = zombie.expect("no zombie child appeared");
        let found = found.unwrap();
        assert!(
            found.contains(&(std::process::id() as i32)),
            "we have a child"
        );
        assert!(found.contains(&sleeper), "its only child is a zombie");
        assert!(!found.contains(&zombie), "a zombie has no child");
    }
}
