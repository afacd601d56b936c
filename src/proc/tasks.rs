//! Thread and child lists: `/proc/PID/task/` and `/proc/PID/task/TID/children`.

use super::{io_err, parse_i64, ProcError};

/// Most threads of one process we accept (kernel `threads-max` is far lower in practice).
pub const MAX_THREADS: usize = 1 << 22;

/// Thread ids of `pid`, sorted ascending (the thread group leader first).
pub fn threads(pid: i32) -> Result<Vec<i32>, ProcError> {
    let p = super::path(pid, "task");
    let mut out = Vec::new();
    for (i, ent) in std::fs::read_dir(&p)
        .map_err(|e| io_err(pid, &p, e))?
        .enumerate()
    {
        let ent = ent.map_err(|e| io_err(pid, &p, e))?;
        if out.len() >= MAX_THREADS {
            return Err(super::ProcError::parse(&p, i, "tid", "too many threads"));
        }
        let name = ent.file_name();
        let s = name.to_string_lossy();
        out.push(parse_i64(&p, i, "tid", &s)? as i32);
    }
    out.sort_unstable();
    if let Some(pos) = out.iter().position(|&t| t == pid) {
        out.remove(pos);
        out.insert(0, pid);
    }
    Ok(out)
}

/// Children of thread `tid` of `pid` (`/proc/PID/task/TID/children`).
pub fn children_of_thread(pid: i32, tid: i32) -> Result<Vec<i32>, ProcError> {
    let p = super::path(pid, &format!("task/{tid}/children"));
    let text = super::read_text(pid, &p)?;
    text.split_whitespace()
        .enumerate()
        .map(|(i, s)| parse_i64(&p, i, "pid", s).map(|x| x as i32))
        .collect()
}

/// Children of every thread of `pid`, in the order the kernel lists them, without duplicates.
pub fn children(pid: i32, tids: &[i32]) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    for &t in tids {
        match children_of_thread(pid, t) {
            Ok(c) => {
                for x in c {
                    if !out.contains(&x) {
                        out.push(x);
                    }
                }
            }
            // A thread that exited meanwhile has no children left to report.
            Err(ProcError::TaskDied { .. }) if t != pid => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_threads_and_children() {
        let me = std::process::id() as i32;
        let t = threads(me).unwrap();
        assert_eq!(t[0], me);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let c = children(me, &t).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(c.contains(&(child.id() as i32)), "{c:?}");
    }

    #[test]
    fn missing_task_is_died() {
        let e = threads(i32::MAX).unwrap_err();
        assert!(matches!(e, ProcError::TaskDied { .. }), "{e}");
    }
}
