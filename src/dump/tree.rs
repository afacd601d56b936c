//! The process tree: who is in it, in CRIU's pstree order (depth-first from the root, children
//! in the order the kernel lists them), with pgid/sid and threads, zombies included.
//!
//! A process's children are the union of its threads' `children` files (leader first), one
//! file per thread. When a process has many threads, one pass over `/proc` (each process's
//! parent) first tells which processes have children at all; the threads of the others are
//! not read (8000 files become ~100). The tree is frozen, so the pass holds for all of it.
//! A live process's stat is its leader's (`task/PID/stat`), which does not sum over threads.

use std::collections::HashSet;

use stasis_images::pb;

use super::error::{DumpError, Result};
use crate::proc;

/// Most processes in one tree.
pub const MAX_TASKS: usize = 1 << 20;

/// One process of the tree.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: i32,
    /// 0 for the root.
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Thread ids, leader first.
    pub threads: Vec<i32>,
    pub zombie: bool,
    /// Wait status of a zombie (exit code << 8 | signal).
    pub exit_code: i32,
    pub stat: proc::stat::Stat,
}

/// Walks the tree rooted at `root` (tasks must already be frozen).
pub fn collect(root: i32) -> Result<Vec<Process>> {
    let mut out: Vec<Process> = Vec::new();
    let mut parents = Parents::default();
    let mut stack = vec![(root, 0)];
    while let Some((pid, ppid)) = stack.pop() {
        if out.len() >= MAX_TASKS {
            return Err(DumpError::new("collect-tree", pid, None, "too many tasks"));
        }
        let stat = read_stat(pid).map_err(|e| DumpError::proc("collect-tree", pid, e))?;
        let zombie = stat.state == 'Z';
        let threads = if zombie {
            vec![pid]
        } else {
            proc::tasks::threads(pid).map_err(|e| DumpError::proc("collect-tree", pid, e))?
        };
        let children = if zombie || parents.childless(pid, threads.len()) {
            Vec::new()
        } else {
            children(pid, &threads).map_err(|e| DumpError::proc("collect-tree", pid, e))?
        };
        out.push(Process {
            pid,
            ppid,
            pgid: stat.pgid,
            sid: stat.sid,
            threads,
            zombie,
            exit_code: stat.exit_code,
            stat,
        });
        for c in children.into_iter().rev() {
            stack.push((c, pid));
        }
    }
    Ok(out)
}

/// The stat of process `pid`: its leader's `task/PID/stat`, which for a live process has the
/// same fields as `PID/stat` (those differing are fault counts, CPU times and a stopped
/// group's exit code, none used here) without summing over every thread (1-5 ms for 8000
/// threads); a zombie's is read whole, its exit code is the group's.
fn read_stat(pid: i32) -> std::result::Result<proc::stat::Stat, proc::ProcError> {
    let stat = proc::stat::read_thread(pid, pid)?;
    if stat.state == 'Z' {
        return proc::stat::read(pid);
    }
    Ok(stat)
}

/// Which processes have children, learnt from one pass over `/proc` the first time a process
/// has enough threads for the pass to cost less than reading their `children` files.
#[derive(Default)]
struct Parents {
    known: Option<HashSet<i32>>,
}

impl Parents {
    /// True when `pid` (a live process with `threads` threads) surely has no child; false
    /// when it has one or when the pass was not worth it (or failed): then read its threads.
    fn childless(&mut self, pid: i32, threads: usize) -> bool {
        use crate::sys::proc_tasks;
        if self.known.is_none() && threads >= proc_tasks::SCAN_MIN_THREADS {
            match proc_tasks::with_children(threads) {
                Ok(known) => self.known = known,
                Err(e) => tracing::debug!("listing the parents in /proc: {e}"),
            }
        }
        self.known.as_ref().is_some_and(|k| !k.contains(&pid))
    }
}

/// Children of every thread of `pid` (kernel order, no duplicates): one `children` file per
/// thread, read by a few threads at once when there are many (about 5 us each).
fn children(pid: i32, tids: &[i32]) -> std::result::Result<Vec<i32>, proc::ProcError> {
    const PER_WORKER: usize = 512;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    if tids.len() < 2 * PER_WORKER || workers < 2 {
        return proc::tasks::children(pid, tids);
    }
    let chunk = tids.len().div_ceil(workers);
    let parts: Vec<std::result::Result<Vec<i32>, proc::ProcError>> = std::thread::scope(|s| {
        let handles: Vec<_> = tids
            .chunks(chunk)
            .map(|c| s.spawn(move || proc::tasks::children(pid, c)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())))
            .collect()
    });
    let mut out = Vec::new();
    for part in parts {
        for c in part? {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// The namespaces of the tree: those of its root that differ from the dumper's are the
/// tree's own (returned as clone flags) when stasis dumps that kind
/// ([`super::namespaces::OWNABLE`]); every task must be in the root's (no nested ones).
/// Anything else would come back in the restorer's namespaces, with its PIDs, mounts,
/// network or host name silently wrong: refused by name (the kinds CRIU's `ns_mask` covers).
pub fn check_namespaces(tree: &[Process]) -> Result<u64> {
    const KINDS: [&str; 8] = ["pid", "mnt", "net", "ipc", "uts", "user", "cgroup", "time"];
    let ino = |pid: &str, ns: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let refuse = |pid: i32, why: String| {
        Err(DumpError::new(
            "collect-tree",
            pid,
            Some(libc::EOPNOTSUPP),
            why,
        ))
    };
    let Some(root) = tree.first() else {
        return Ok(0);
    };
    let mut owned = 0;
    for ns in KINDS {
        // A kernel without this kind of namespace has nothing to compare.
        let Some(ours) = ino("self", ns) else {
            continue;
        };
        // A tree in its own mount namespace: `super::mounts` dumps it or refuses.
        if ns == "mnt" {
            continue;
        }
        let Some(roots) = ino(&root.pid.to_string(), ns) else {
            continue;
        };
        if roots != ours {
            match super::namespaces::OWNABLE.iter().find(|(k, _)| *k == ns) {
                Some((_, flag)) => owned |= flag,
                None => {
                    return refuse(
                        root.pid,
                        format!(
                            "the task is in its own {ns} namespace ({ns}:[{roots}], the dumper \
                             is in {ns}:[{ours}]): dumping {ns} namespaces is not built yet"
                        ),
                    )
                }
            }
        }
        for p in tree {
            let pid = p.pid.to_string();
            // pid and time: a task that unshared one gives its children another.
            let children = format!("{ns}_for_children");
            for (link, theirs) in [
                (ns, ino(&pid, ns)),
                (children.as_str(), ino(&pid, &children)),
            ] {
                match theirs {
                    Some(theirs) if theirs != roots => {
                        return refuse(
                            p.pid,
                            format!(
                                "the task's {link} is {ns}:[{theirs}], the tree's root is in \
                                 {ns}:[{roots}]: nested {ns} namespaces are not dumped yet"
                            ),
                        )
                    }
                    // Gone meanwhile: the tree walk reports it.
                    _ => {}
                }
            }
        }
    }
    Ok(owned)
}

/// Refuses sessions and process groups led from outside the tree unless `--shell-job`
/// (like CRIU: restoring them would need the outside leader).
pub fn check_external(tree: &[Process], shell_job: bool) -> Result<()> {
    if shell_job {
        return Ok(());
    }
    let inside = |pid: i32| tree.iter().any(|p| p.pid == pid);
    for p in tree {
        if p.sid != 0 && !inside(p.sid) {
            return Err(DumpError::new(
                "collect-tree",
                p.pid,
                Some(libc::EPERM),
                format!(
                    "session {} is led from outside the tree (a shell job: use --shell-job)",
                    p.sid
                ),
            ));
        }
        if p.pgid != 0 && !inside(p.pgid) {
            return Err(DumpError::new(
                "collect-tree",
                p.pid,
                Some(libc::EPERM),
                format!(
                    "process group {} is led from outside the tree (a shell job: use --shell-job)",
                    p.pgid
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses trees holding POSIX or flock locks (`/proc/locks`): they are not dumped yet.
pub fn check_file_locks(tree: &[Process]) -> Result<()> {
    let text = proc::read_text(0, std::path::Path::new("/proc/locks"))
        .map_err(|e| DumpError::proc("collect-tree", 0, e))?;
    for line in text.lines() {
        // "1: POSIX  ADVISORY  WRITE 8163 fe:00:6004852 0 EOF" ("->" marks blocked waiters).
        let f: Vec<&str> = line.split_whitespace().filter(|w| *w != "->").collect();
        let Some(pid) = f.get(4).and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(p) = tree.iter().find(|p| p.pid == pid) {
            return Err(DumpError::new(
                "collect-tree",
                p.pid,
                Some(libc::ENOTSUP),
                format!("task holds a file lock ({}): dump with --file-locks", f[1]),
            ));
        }
    }
    Ok(())
}

/// The pstree.img entry of one process, its pids as its pid namespace numbers them.
pub fn pstree_entry(p: &Process, pids: &super::namespaces::PidMap) -> Result<pb::PstreeEntry> {
    // Ids read from /proc are never negative: `unsigned_abs` is the same number.
    Ok(pb::PstreeEntry {
        pid: pids.v(p.pid).unsigned_abs(),
        ppid: pids.v(p.ppid).unsigned_abs(),
        pgid: pids.inside("process group", p.pid, p.pgid)?.unsigned_abs(),
        sid: pids.inside("session", p.pid, p.sid)?.unsigned_abs(),
        threads: p
            .threads
            .iter()
            .map(|&t| pids.v(t).unsigned_abs())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(pid: i32, pgid: i32, sid: i32) -> Process {
        Process {
            pid,
            ppid: 0,
            pgid,
            sid,
            threads: vec![pid],
            zombie: false,
            exit_code: 0,
            stat: Default::default(),
        }
    }

    #[test]
    fn external_session_needs_shell_job() {
        let t = vec![fake(10, 10, 10), fake(11, 10, 10)];
        assert!(check_external(&t, false).is_ok());
        let t = vec![fake(10, 10, 5), fake(11, 10, 5)];
        let e = check_external(&t, false).unwrap_err();
        assert!(e.to_string().contains("--shell-job"), "{e}");
        assert!(check_external(&t, true).is_ok());
        let t = vec![fake(10, 7, 10)];
        assert!(check_external(&t, false)
            .unwrap_err()
            .to_string()
            .contains("process group 7"));
    }

    #[test]
    fn file_locks_refused() {
        let f = tempfile::tempfile().unwrap();
        let guard = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        let me = std::process::id() as i32;
        let e = check_file_locks(&[fake(me, me, me)]).unwrap_err();
        assert!(e.to_string().contains("file lock"), "{e}");
        drop(guard);
    }

    #[test]
    fn tree_of_a_shell_with_children() {
        let mut ch = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5 & wait"])
            .spawn()
            .unwrap();
        let pid = ch.id() as i32;
        let mut t = Vec::new();
        for _ in 0..200 {
            t = collect(pid).unwrap();
            if t.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = ch.kill();
        let _ = ch.wait();
        assert_eq!(t.len(), 3, "{t:?}");
        assert_eq!(t[0].pid, pid);
        assert_eq!(t[0].ppid, 0);
        assert!(t[1..]
            .iter()
            .all(|c| c.ppid == pid && c.threads == vec![c.pid]));
        let e = pstree_entry(&t[1], &Default::default()).unwrap();
        assert_eq!(e.ppid, pid as u32);
    }

    #[test]
    fn leader_stat_is_the_whole_process_stat() {
        // `true` exits and `sleep` (exec'd in place of sh) never reaps it: a zombie child.
        let mut ch = std::process::Command::new("sh")
            .args(["-c", "true & exec sleep 5"])
            .spawn()
            .unwrap();
        let sleeper = ch.id() as i32;
        let mut zombie = None;
        for _ in 0..500 {
            let kids = proc::tasks::children_of_thread(sleeper, sleeper).unwrap_or_default();
            let asleep =
                proc::stat::read(sleeper).is_ok_and(|s| s.comm == "sleep" && s.state == 'S');
            if let ([z], true) = (&kids[..], asleep) {
                let z = *z;
                if proc::stat::read(z).is_ok_and(|s| s.state == 'Z') {
                    zombie = Some(z);
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let me = std::process::id() as i32;
        let mut got = Vec::new();
        for pid in [Some(sleeper), zombie, Some(me)].into_iter().flatten() {
            got.push((pid, read_stat(pid).unwrap(), proc::stat::read(pid).unwrap()));
        }
        let _ = ch.kill();
        let _ = ch.wait();
        assert!(zombie.is_some(), "no zombie child appeared");
        for (pid, leader, whole) in got {
            if pid == me {
                // Running threads: only the fields that cannot change meanwhile.
                assert_eq!(
                    (leader.ppid, leader.pgid, leader.sid, leader.start_brk),
                    (whole.ppid, whole.pgid, whole.sid, whole.start_brk)
                );
            } else {
                assert_eq!(leader, whole, "stat of {pid}");
            }
        }
    }
}
