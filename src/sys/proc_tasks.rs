//! The few `/proc` reads the ptrace layer needs: threads of a process, children of a thread,
//! the one-letter state of a task, whether a process is alive, and an executable private
//! mapping to run code at.

use super::error::{Error, Result};
use std::path::Path;

/// Largest `/proc` file we read whole (maps of big processes are a few MiB at most).
const MAX_PROC_FILE: u64 = 64 << 20;

fn read_small(path: &str) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, &e))?;
    let mut text = String::new();
    file.take(MAX_PROC_FILE)
        .read_to_string(&mut text)
        .map_err(|e| Error::io("read", path, &e))?;
    Ok(text)
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
    // "pid (comm) S ...": comm may contain anything, the state follows the last ')'.
    let state = text
        .rfind(')')
        .and_then(|i| text[i + 1..].trim_start().chars().next())
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
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
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
    let Some(rest) = text.rfind(')').map(|i| &text[i + 1..]) else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] = state (stat field 3); flags is stat field 9.
    let state = fields.first().copied().unwrap_or("");
    let flags = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}
