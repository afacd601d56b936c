//! `--join-ns NS:PID|PATH[,OPTIONS]`: the restored tree joins existing namespaces instead of
//! staying in the restorer's (CRIU's `join_namespaces`).
//!
//! ```text
//!  parse       "net:1234" / "uts:/run/netns/x"        (CRIU's kinds; pid refused as CRIU does)
//!  restorer    open /proc/PID/ns/NAME or PATH, park the descriptor (Ctl::join_ns)
//!  root task   right after clone3, before setsid and its children: setns(fd, CLONE_NEW*)
//!              ─► every task of the tree is forked inside (children inherit namespaces)
//! ```
//! Supported: net, uts, ipc, time, mnt, cgroup. `user` (CRIU's `user:PID,UID,GID` with its
//! credentials switch) is refused by name: not built yet.

use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

/// One `--join-ns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinNs {
    /// CRIU's name: net, uts, ipc, time, mnt, cgroup.
    pub kind: &'static str,
    pub flag: CloneFlags,
    /// `/proc/PID/ns/KIND` or the file given.
    pub path: String,
}

const KINDS: &[(&str, CloneFlags)] = &[
    ("net", CloneFlags::CLONE_NEWNET),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
];

/// The most `--join-ns` a restore takes (one per kind).
pub const MAX: usize = KINDS.len();

impl JoinNs {
    /// Parses `NS:PID|PATH[,OPTIONS]` (as CRIU: a number is a pid, else a path).
    pub fn parse(arg: &str) -> Result<JoinNs, String> {
        let bad = |why: String| format!("--join-ns {arg}: {why}");
        let (kind, rest) = arg
            .split_once(':')
            .ok_or_else(|| bad("expected NS:PID|PATH[,OPTIONS]".into()))?;
        let (target, extra) = match rest.split_once(',') {
            Some((t, e)) => (t, Some(e)),
            None => (rest, None),
        };
        match kind {
            "pid" => return Err(bad("join-ns pid namespace not supported (as CRIU)".into())),
            "user" => {
                return Err(bad(
                    "joining a user namespace is not built yet (CRIU's uid/gid switch)".into(),
                ))
            }
            _ => {}
        }
        let &(kind, flag) = KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .ok_or_else(|| bad(format!("invalid namespace type {kind:?}")))?;
        if let Some(e) = extra {
            return Err(bad(format!("options {e:?} apply to user namespaces only")));
        }
        let path = match target.parse::<i64>() {
            Ok(pid) if pid > 0 => format!("/proc/{pid}/ns/{kind}"),
            Ok(_) => return Err(bad(format!("invalid pid {target}"))),
            Err(_) if target.is_empty() => return Err(bad("no PID or PATH".into())),
            Err(_) => target.to_string(),
        };
        Ok(JoinNs { kind, flag, path })
    }

    /// Opens the namespace file.
    pub fn open(&self) -> Result<OwnedFd, nix::errno::Errno> {
        nix::fcntl::open(
            self.path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }
}

/// Checks that no kind is given twice.
pub fn check(all: &[JoinNs]) -> Result<(), String> {
    for (i, j) in all.iter().enumerate() {
        if all[..i].iter().any(|o| o.kind == j.kind) {
            return Err(format!("--join-ns {}: given twice", j.kind));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_syntax() {
        let j = JoinNs::parse("net:1234").unwrap();
        assert_eq!((j.kind, j.path.as_str()), ("net", "/proc/1234/ns/net"));
        assert_eq!(j.flag, CloneFlags::CLONE_NEWNET);
        let j = JoinNs::parse("uts:/run/utsns/a").unwrap();
        assert_eq!(j.path, "/run/utsns/a");
        assert!(JoinNs::parse("pid:1")
            .unwrap_err()
            .contains("not supported"));
        assert!(JoinNs::parse("user:1,0,0")
            .unwrap_err()
            .contains("not built yet"));
        assert!(JoinNs::parse("net").is_err());
        assert!(JoinNs::parse("bogus:1")
            .unwrap_err()
            .contains("invalid namespace type"));
        assert!(JoinNs::parse("net:0").is_err());
        assert!(JoinNs::parse("net:1,x").is_err());
        let two = [
            JoinNs::parse("net:1").unwrap(),
            JoinNs::parse("net:2").unwrap(),
        ];
        assert!(check(&two).is_err());
    }
}
