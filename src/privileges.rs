//! What the caller's privileges allow: `stasis dump`/`restore` run as root, or as the tasks'
//! own user with CAP_CHECKPOINT_RESTORE (CRIU's `--unprivileged` mode, always on here: each
//! privilege is checked where it is needed and its absence is named).
//!
//! ```text
//!  kernel check                                   privilege             where it is checked
//!  ptrace a task of another uid                   CAP_SYS_PTRACE        the task's user ns
//!  /proc/PID/map_files (file mappings at dump)    CAP_CHECKPOINT_RESTORE the initial user ns
//!  clone3 set_tid (restored pids)                 CAP_CHECKPOINT_RESTORE the pid ns's user ns
//!  PTRACE_O_SUSPEND_SECCOMP, SECCOMP_GET_FILTER   CAP_SYS_ADMIN         the initial user ns
//!  creds of another user at restore               CAP_SETUID/CAP_SETGID the task's user ns
//!  capabilities, bounding set at restore          CAP_SETPCAP           the task's user ns
//!  TCP_REPAIR (TCP connections)                   CAP_NET_ADMIN         the net ns's user ns
//!  prctl PR_SET_MM fields (auxv, exe link...)     CAP_SYS_RESOURCE      (PR_SET_MM_MAP is used)
//! ```
//! CAP_SYS_ADMIN stands in for CAP_CHECKPOINT_RESTORE wherever the kernel takes either.
//!
//! [`Privileges::current`] reads the caller's effective set and whether it runs in the initial
//! user namespace (its uid_map maps every id); [`Privileges::features`] says what works;
//! [`Privileges::require`] is the check a dump or a restore makes before it starts.

use caps::{CapSet, Capability};

/// The caller's privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Effective uid.
    pub euid: u32,
    /// Effective capabilities.
    pub effective: caps::CapsHashSet,
    /// The caller runs in the initial user namespace.
    pub init_userns: bool,
}

/// What a verb needs before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `dump` and `pre-dump`: file mappings are read through /proc/PID/map_files.
    Dump,
    /// `restore`: tasks are created at their recorded pids with clone3 set_tid.
    Restore,
}

/// One thing the privileges allow or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// Short name (`stasis check --all` prints it).
    pub name: &'static str,
    /// None: allowed; Some: why not (the privilege named).
    pub missing: Option<String>,
}

/// The initial user namespace's uid_map: every id mapped to itself.
const INIT_UID_MAP: &str = "0 0 4294967295";

impl Privileges {
    /// The calling thread's privileges.
    pub fn current() -> Self {
        let init_userns = std::fs::read_to_string("/proc/self/uid_map")
            .map(|m| m.split_whitespace().collect::<Vec<_>>().join(" ") == INIT_UID_MAP)
            .unwrap_or(false);
        Privileges {
            euid: nix::unistd::geteuid().as_raw(),
            effective: caps::read(None, CapSet::Effective).unwrap_or_default(),
            init_userns,
        }
    }

    /// The capability is in the effective set.
    pub fn has(&self, cap: Capability) -> bool {
        self.effective.contains(&cap)
    }

    /// CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (the kernel takes either).
    fn checkpoint_restore(&self) -> bool {
        self.has(Capability::CAP_CHECKPOINT_RESTORE) || self.has(Capability::CAP_SYS_ADMIN)
    }

    /// None when `cap` (or CAP_SYS_ADMIN for CAP_CHECKPOINT_RESTORE) is effective and, if
    /// `init_ns`, the caller is in the initial user namespace; else why not.
    fn lacks(&self, cap: Capability, init_ns: bool, for_what: &str) -> Option<String> {
        let held = match cap {
            Capability::CAP_CHECKPOINT_RESTORE => self.checkpoint_restore(),
            c => self.has(c),
        };
        if !held {
            let alt = if cap == Capability::CAP_CHECKPOINT_RESTORE {
                " (or CAP_SYS_ADMIN)"
            } else {
                ""
            };
            Some(format!(
                "{for_what} needs {cap}{alt}, which the caller lacks"
            ))
        } else if init_ns && !self.init_userns {
            Some(format!(
                "{for_what} needs {cap} in the initial user namespace; the caller runs in \
                 another user namespace"
            ))
        } else {
            None
        }
    }

    /// Everything the privileges decide, in the order of the module doc.
    pub fn features(&self) -> Vec<Feature> {
        use Capability::*;
        let f = |name, missing| Feature { name, missing };
        vec![
            f(
                "ptrace_other_users",
                self.lacks(CAP_SYS_PTRACE, false, "dumping tasks of other users"),
            ),
            f(
                "map_files",
                self.lacks(
                    CAP_CHECKPOINT_RESTORE,
                    true,
                    "dumping file mappings (/proc/PID/map_files)",
                ),
            ),
            f(
                "restore_pids",
                self.lacks(
                    CAP_CHECKPOINT_RESTORE,
                    false,
                    "restoring tasks at their pids (clone3 set_tid)",
                ),
            ),
            f(
                "suspend_seccomp",
                self.lacks(
                    CAP_SYS_ADMIN,
                    true,
                    "dumping tasks under seccomp (PTRACE_O_SUSPEND_SECCOMP)",
                ),
            ),
            f(
                "restore_other_users",
                self.lacks(CAP_SETUID, false, "restoring tasks of other users")
                    .or_else(|| self.lacks(CAP_SETGID, false, "restoring tasks of other users")),
            ),
            f(
                "restore_capabilities",
                self.lacks(
                    CAP_SETPCAP,
                    false,
                    "restoring tasks with capabilities or bounding sets the caller lacks",
                ),
            ),
            f(
                "tcp_repair",
                self.lacks(CAP_NET_ADMIN, false, "TCP connections (TCP_REPAIR)"),
            ),
        ]
    }

    /// Err naming the missing privilege when `verb` cannot work at all with these privileges.
    pub fn require(&self, verb: Verb) -> Result<(), String> {
        let (name, what) = match verb {
            Verb::Dump => ("map_files", "dump"),
            Verb::Restore => ("restore_pids", "restore"),
        };
        match self.features().into_iter().find(|f| f.name == name) {
            Some(Feature {
                missing: Some(why), ..
            }) => Err(format!(
                "{what} refused: {why} (as uid {}, effective capabilities: {})",
                self.euid,
                self.effective_list()
            )),
            _ => Ok(()),
        }
    }

    /// The effective set, spelled as `CAP_A,CAP_B` (or `none`).
    pub fn effective_list(&self) -> String {
        let mut v: Vec<String> = self.effective.iter().map(|c| c.to_string()).collect();
        v.sort();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(caps: &[Capability], init_userns: bool) -> Privileges {
        Privileges {
            euid: 1000,
            effective: caps.iter().copied().collect(),
            init_userns,
        }
    }

    fn missing(p: &Privileges, name: &str) -> Option<String> {
        p.features()
            .into_iter()
            .find(|f| f.name == name)
            .unwrap()
            .missing
    }

    #[test]
    fn checkpoint_restore_alone_allows_dump_and_restore_of_own_tasks() {
        let p = with(&[Capability::CAP_CHECKPOINT_RESTORE], true);
        assert_eq!(p.require(Verb::Dump), Ok(()));
        assert_eq!(p.require(Verb::Restore), Ok(()));
        let seccomp = missing(&p, "suspend_seccomp").unwrap();
        assert!(seccomp.contains("CAP_SYS_ADMIN"), "{seccomp}");
        assert!(missing(&p, "ptrace_other_users").is_some());
    }

    #[test]
    fn nothing_names_the_missing_capability() {
        let p = with(&[], true);
        let e = p.require(Verb::Dump).unwrap_err();
        assert!(
            e.contains("CAP_CHECKPOINT_RESTORE") && e.contains("map_files"),
            "{e}"
        );
        let e = p.require(Verb::Restore).unwrap_err();
        assert!(
            e.contains("CAP_CHECKPOINT_RESTORE") && e.contains("set_tid"),
            "{e}"
        );
        assert!(e.contains("capabilities: none"), "{e}");
    }

    #[test]
    fn a_user_namespace_cannot_read_map_files() {
        let p = with(&[Capability::CAP_CHECKPOINT_RESTORE], false);
        let e = p.require(Verb::Dump).unwrap_err();
        assert!(e.contains("initial user namespace"), "{e}");
        assert_eq!(p.require(Verb::Restore), Ok(()));
    }

    #[test]
    fn sys_admin_stands_in_for_checkpoint_restore() {
        let p = with(&[Capability::CAP_SYS_ADMIN], true);
        assert_eq!(p.require(Verb::Dump), Ok(()));
        assert_eq!(missing(&p, "suspend_seccomp"), None);
    }
}
