//! Namespace identities: the inode numbers behind `/proc/PID/ns/*` (`net:[4026531833]`).

use super::ProcError;

/// Inode of each namespace of a task (`None` where the kernel has no such namespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NsIds {
    pub pid: Option<u64>,
    pub net: Option<u64>,
    pub ipc: Option<u64>,
    pub uts: Option<u64>,
    pub mnt: Option<u64>,
    pub user: Option<u64>,
    pub cgroup: Option<u64>,
    pub time: Option<u64>,
}

/// Reads the inode of one namespace link.
pub fn read_one(pid: i32, kind: &str) -> Result<Option<u64>, ProcError> {
    let p = super::path(pid, &format!("ns/{kind}"));
    match std::fs::read_link(&p) {
        Ok(t) => {
            let s = t.to_string_lossy();
            let ino = s
                .rsplit_once('[')
                .and_then(|(_, r)| r.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| ProcError::parse(&p, 0, "ns", s.to_string()))?;
            Ok(Some(ino))
        }
        // A kernel without this namespace kind: the link does not exist but the task does.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && super::path(pid, "").exists() => {
            Ok(None)
        }
        Err(e) => Err(super::io_err(pid, &p, e)),
    }
}

/// The pid of thread `tid` of process `pid` in its own pid namespace: the last number of
/// `NSpid` in `/proc/PID/task/TID/status` (the same as `tid` when it is in ours).
pub fn own_tid(pid: i32, tid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Reads all namespace ids of `pid`.
pub fn read(pid: i32) -> Result<NsIds, ProcError> {
    Ok(NsIds {
        pid: read_one(pid, "pid")?,
        net: read_one(pid, "net")?,
        ipc: read_one(pid, "ipc")?,
        uts: read_one(pid, "uts")?,
        mnt: read_one(pid, "mnt")?,
        user: read_one(pid, "user")?,
        cgroup: read_one(pid, "cgroup")?,
        time: read_one(pid, "time")?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_ns() {
        let n = super::read(std::process::id() as i32).unwrap();
        assert!(n.pid.is_some() && n.net.is_some() && n.mnt.is_some());
        assert!(super::read(i32::MAX).is_err());
        let me = std::process::id() as i32;
        assert!(super::own_tid(me, me).is_some());
    }
}
