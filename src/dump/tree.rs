//! The process tree: who is in it, in CRIU's pstree order (depth-first from the root, children
//! in the order the kernel lists them), with pgid/sid and threads, zombies included.

use serde_json::{json, Value};

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
    let mut stack = vec![(root, 0)];
    while let Some((pid, ppid)) = stack.pop() {
        if out.len() >= MAX_TASKS {
            return Err(DumpError::new("collect-tree", pid, None, "too many tasks"));
        }
        let stat = proc::stat::read(pid).map_err(|e| DumpError::proc("collect-tree", pid, e))?;
        let zombie = stat.state == 'Z';
        let threads = if zombie {
            vec![pid]
        } else {
            proc::tasks::threads(pid).map_err(|e| DumpError::proc("collect-tree", pid, e))?
        };
        let children = if zombie {
            Vec::new()
        } else {
            proc::tasks::children(pid, &threads)
                .map_err(|e| DumpError::proc("collect-tree", pid, e))?
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

/// The pstree.img entry of one process.
pub fn pstree_entry(p: &Process) -> Value {
    json!({
        "pid": p.pid,
        "ppid": p.ppid,
        "pgid": p.pgid,
        "sid": p.sid,
        "threads": p.threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let e = pstree_entry(&t[1]);
        assert_eq!(e["ppid"], pid);
    }
}
