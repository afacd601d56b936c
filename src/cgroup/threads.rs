//! The cgroup text of many threads of one process without opening one /proc file per thread:
//! the threads nearly always share the leader's cgroups, and each cgroup lists its threads.
//!
//! ```text
//!  /proc/PID/task/PID/cgroup       "6:freezer:/a"   "0::/b"      the leader's text, read once
//!  one membership file per line    <freezer mount>/a/tasks       (v1: tids of the cgroup)
//!                                  <v2 mount>/b/cgroup.threads   (v2: tids of the cgroup)
//!  a thread listed in every file   is in exactly the leader's cgroups: its text is the leader's
//!  any other thread                reads its own /proc/PID/task/TID/cgroup (the caller does)
//! ```
//!
//! A root cgroup ("/") lists every task of the system that is in no other cgroup of its
//! hierarchy, and a kernel builds such a list at about half a microsecond an entry: there the
//! membership files of the directories below the root are read instead (as long as there are
//! at most [`MAX_WALK`] of them), and a thread listed in none of them is in the root.
//!
//! The mapping from a line to a file is checked with the leader itself: every file must list
//! it (or, below a root, none may). A hierarchy that is not mounted here (or only below its
//! root), a path that does not name a directory of that mount (cgroup namespaces, removed
//! cgroups), a file that cannot be read, or a leader missing from a file (an exited leader)
//! make [`shared_with_leader`] fail, and then every thread reads its own file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{mountpoint_of, mountpoints, CgroupError};
use crate::proc::cgroup::CgroupLine;

/// Why the membership files could not stand in for the per-thread files.
#[derive(Debug, thiserror::Error)]
pub enum Unshared {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{path}: no hierarchy lines")]
    NoLines { path: PathBuf },
    #[error("cgroup {path:?} of hierarchy {name:?}: no membership file here")]
    NoFile { name: String, path: String },
    #[error("{file}: does not list the leader {pid}")]
    LeaderNotListed { file: PathBuf, pid: i32 },
    #[error("{dir}: the leader {pid} is in a cgroup below this root")]
    LeaderBelowRoot { dir: PathBuf, pid: i32 },
}

/// The leader's text and which threads have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// `/proc/PID/task/PID/cgroup` as read.
    pub text: Vec<u8>,
    /// Per thread asked about, in order: listed in every membership file, so its own file
    /// says exactly `text`.
    pub same: Vec<bool>,
}

/// Most directories below a root cgroup whose membership files are read instead of the
/// root's own (module doc).
pub const MAX_WALK: usize = 256;

/// Where the cgroup of one `/proc/PID/cgroup` line lists its threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The cgroup's directory.
    pub dir: PathBuf,
    /// `tasks` (v1) or `cgroup.threads` (v2).
    pub file: &'static str,
    /// The line names the root of its hierarchy.
    pub root: bool,
}

/// The membership file of the cgroup of `line`, with the hierarchy mounts of
/// [`mountpoints`]: v1 `<mount>/<path>/tasks`, v2 (`0::path`) `<mount>/<path>/cgroup.threads`.
/// `None` when the hierarchy is not mounted or the path is not a plain absolute path.
pub fn membership(mounts: &BTreeMap<String, PathBuf>, line: &CgroupLine) -> Option<Membership> {
    let rel = line.path.strip_prefix('/')?;
    if rel.split('/').any(|c| c == "." || c == "..") || line.path.ends_with(" (deleted)") {
        return None;
    }
    let v2 = line.hierarchy == 0 && line.controllers.is_empty();
    let mount = mountpoint_of(mounts, &line.controllers)?;
    Some(Membership {
        dir: if rel.is_empty() {
            mount.to_path_buf()
        } else {
            mount.join(rel)
        },
        file: if v2 { "cgroup.threads" } else { "tasks" },
        root: rel.is_empty(),
    })
}

/// The thread ids of a membership file (one decimal id a line), sorted, without repeats.
pub fn parse_ids(path: &Path, text: &[u8]) -> Result<Vec<i32>, CgroupError> {
    let mut ids = Vec::with_capacity(text.len() / 6);
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let id = std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .ok_or_else(|| CgroupError::Parse {
                path: path.to_path_buf(),
                why: format!(
                    "line {}: {:?} is not a thread id",
                    i + 1,
                    line.escape_ascii()
                ),
            })?;
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Clears `same[i]` of every `tids[i]` that is missing from `ids` (sorted) when `listed`,
/// or found in it when not.
pub fn keep(tids: &[i32], ids: &[i32], listed: bool, same: &mut [bool]) {
    for (s, tid) in same.iter_mut().zip(tids) {
        *s = *s && ids.binary_search(tid).is_ok() == listed;
    }
}

/// The ids listed in the membership files `file` of every directory below `top` (not of
/// `top` itself), sorted; `None` when there are more than `max_dirs` of them or one cannot
/// be listed or read.
pub fn listed_below(top: &Path, file: &str, max_dirs: usize) -> Option<Vec<i32>> {
    let mut ids = Vec::new();
    let mut todo = vec![top.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).ok()? {
            let e = e.ok()?;
            if !e.file_type().ok()?.is_dir() {
                continue;
            }
            seen += 1;
            if seen > max_dirs {
                return None;
            }
            let path = e.path();
            let f = path.join(file);
            ids.extend(parse_ids(&f, &std::fs::read(&f).ok()?).ok()?);
            todo.push(path);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

fn read(path: &Path) -> Result<Vec<u8>, CgroupError> {
    std::fs::read(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Which of `tids` (threads of `pid`) are in exactly the cgroups of the leader `pid`, and the
/// leader's text. Fails when any hierarchy's membership file is unusable (module doc).
pub fn shared_with_leader(pid: i32, tids: &[i32]) -> Result<Shared, Unshared> {
    let path = crate::proc::path(pid, &format!("task/{pid}/cgroup"));
    let text = read(&path)?;
    let lines =
        crate::proc::cgroup::parse(&path, &String::from_utf8_lossy(&text)).map_err(|e| {
            CgroupError::Parse {
                path: path.clone(),
                why: e.to_string(),
            }
        })?;
    if lines.is_empty() {
        return Err(Unshared::NoLines { path });
    }
    let mounts = mountpoints();
    let mut same = vec![true; tids.len()];
    for line in &lines {
        let m = membership(&mounts, line).ok_or_else(|| Unshared::NoFile {
            name: line.controllers.clone(),
            path: line.path.clone(),
        })?;
        if m.root {
            if let Some(below) = listed_below(&m.dir, m.file, MAX_WALK) {
                if below.binary_search(&pid).is_ok() {
                    return Err(Unshared::LeaderBelowRoot { dir: m.dir, pid });
                }
                keep(tids, &below, false, &mut same);
                continue;
            }
        }
        let file = m.dir.join(m.file);
        let listed = parse_ids(&file, &read(&file)?)?;
        if listed.binary_search(&pid).is_err() {
            return Err(Unshared::LeaderNotListed { file, pid });
        }
        keep(tids, &listed, true, &mut same);
    }
    Ok(Shared { text, same })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn line(hierarchy: u32, controllers: &str, path: &str) -> CgroupLine {
        CgroupLine {
            hierarchy,
            controllers: controllers.into(),
            path: path.into(),
        }
    }

    #[test]
    fn membership_files_of_v1_and_v2_lines() {
        let mounts: BTreeMap<String, PathBuf> = [
            ("", "/cg/unified"),
            ("freezer", "/cg/freezer"),
            ("cpu,cpuacct", "/cg/cpu"),
            ("name=systemd", "/cg/systemd"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect();
        let f = |h, c, p| membership(&mounts, &line(h, c, p)).map(|m| (m.dir.join(m.file), m.root));
        let some = |p: &str, root| Some((PathBuf::from(p), root));
        assert_eq!(
            f(6, "freezer", "/a/b"),
            some("/cg/freezer/a/b/tasks", false)
        );
        assert_eq!(f(6, "freezer", "/"), some("/cg/freezer/tasks", true));
        assert_eq!(f(2, "cpuacct,cpu", "/x"), some("/cg/cpu/x/tasks", false));
        assert_eq!(
            f(9, "name=systemd", "/user.slice"),
            some("/cg/systemd/user.slice/tasks", false)
        );
        assert_eq!(f(0, "", "/s"), some("/cg/unified/s/cgroup.threads", false));
        assert_eq!(f(0, "", "/"), some("/cg/unified/cgroup.threads", true));
        // Not mounted, outside the namespace root, removed, relative.
        assert_eq!(f(3, "memory", "/a"), None);
        assert_eq!(f(9, "name=other", "/a"), None);
        assert_eq!(f(6, "freezer", "/../../a"), None);
        assert_eq!(f(0, "", "/gone (deleted)"), None);
        assert_eq!(f(6, "freezer", "a"), None);
    }

    #[test]
    fn ids_below_a_root_come_from_every_directory_below_it() {
        let top = tempfile::tempdir().unwrap();
        let t = top.path();
        for (dir, ids) in [
            ("", "1\n2\n"),
            ("a", "7\n5\n"),
            ("a/b", "9\n5\n"),
            ("c", ""),
        ] {
            std::fs::create_dir_all(t.join(dir)).unwrap();
            std::fs::write(t.join(dir).join("tasks"), ids).unwrap();
        }
        std::fs::write(t.join("a/cgroup.procs"), "x").unwrap();
        assert_eq!(listed_below(t, "tasks", 3), Some(vec![5, 7, 9]));
        assert_eq!(listed_below(&t.join("a/b"), "tasks", 3), Some(vec![]));
        assert_eq!(
            listed_below(t, "tasks", 2),
            None,
            "more directories than allowed"
        );
        assert_eq!(listed_below(t, "cgroup.threads", 3), None, "no such files");
        std::fs::write(t.join("a/b/tasks"), "9\nz\n").unwrap();
        assert_eq!(listed_below(t, "tasks", 3), None, "unreadable list");
    }

    #[test]
    fn ids_are_parsed_sorted_and_distinct() {
        let p = Path::new("tasks");
        assert_eq!(parse_ids(p, b"30\n7\n12\n7\n").unwrap(), vec![7, 12, 30]);
        assert_eq!(parse_ids(p, b"").unwrap(), Vec::<i32>::new());
        assert_eq!(parse_ids(p, b"5").unwrap(), vec![5]);
        assert!(parse_ids(p, b"5\nx\n").is_err());
        assert!(parse_ids(p, b"-\n").is_err());
    }

    #[test]
    fn only_threads_listed_everywhere_and_below_no_root_stay_shared() {
        let tids = [10, 11, 12, 13];
        let mut same = vec![true; 4];
        keep(&tids, &[1, 10, 11, 12, 13], true, &mut same);
        assert_eq!(same, [true; 4]);
        keep(&tids, &[10, 12, 13], true, &mut same);
        assert_eq!(same, [true, false, true, true]);
        keep(&tids, &[2, 13], false, &mut same);
        assert_eq!(same, [true, false, true, false]);
        keep(&tids, &[11, 12], true, &mut same);
        assert_eq!(same, [false, false, true, false]);
    }

    /// `n` threads of this process parked until the returned sender is dropped; their tids.
    fn park_threads(n: usize) -> (Vec<i32>, mpsc::Sender<()>, Vec<std::thread::JoinHandle<()>>) {
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
        let (tid_tx, tid_rx) = mpsc::channel();
        let handles = (0..n)
            .map(|_| {
                let (tid_tx, stop_rx) = (tid_tx.clone(), stop_rx.clone());
                std::thread::spawn(move || {
                    // SAFETY: gettid has no arguments and cannot fail.
                    let tid = unsafe { libc::gettid() };
                    tid_tx.send(tid).unwrap();
                    // Returns when the sender is dropped.
                    let _ = stop_rx.lock().map(|r| r.recv());
                })
            })
            .collect();
        let tids = (0..n).map(|_| tid_rx.recv().unwrap()).collect();
        (tids, stop_tx, handles)
    }

    fn own_text(tid: i32) -> Vec<u8> {
        std::fs::read(format!("/proc/self/task/{tid}/cgroup")).unwrap()
    }

    #[test]
    fn threads_in_the_leaders_cgroups_share_its_text() {
        let (tids, stop, handles) = park_threads(6);
        let me = std::process::id() as i32;
        let s = shared_with_leader(me, &tids).expect("membership files of this machine");
        assert_eq!(s.text, own_text(me));
        assert_eq!(s.same, vec![true; tids.len()]);
        for &t in &tids {
            assert_eq!(own_text(t), s.text, "thread {t}");
        }
        drop(stop);
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn a_thread_moved_to_another_v1_cgroup_is_not_shared() {
        let root = Path::new("/sys/fs/cgroup/freezer");
        if !root.join("tasks").exists() {
            eprintln!(
                "skipped: no cgroup v1 freezer hierarchy at {}",
                root.display()
            );
            return;
        }
        let me = std::process::id() as i32;
        let home = crate::proc::cgroup::read(me)
            .unwrap()
            .into_iter()
            .find(|l| l.controllers == "freezer")
            .expect("freezer line")
            .path;
        let home = root.join(home.trim_start_matches('/'));
        let other = home.join(format!("stasis-unit-{me}"));
        let _ = std::fs::create_dir(&other);
        let (tids, stop, handles) = park_threads(3);
        std::fs::write(other.join("tasks"), tids[1].to_string()).unwrap();
        let s = shared_with_leader(me, &tids);
        std::fs::write(home.join("tasks"), tids[1].to_string()).unwrap();
        drop(stop);
        handles.into_iter().for_each(|h| h.join().unwrap());
        let _ = std::fs::remove_dir(&other);
        assert_eq!(s.expect("shared").same, [true, false, true]);
    }
}
