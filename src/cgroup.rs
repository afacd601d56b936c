//! cgroup membership for `cgroup.img`, shared by the dump and restore engines.
//!
//! ```text
//!  /proc/PID/cgroup    "4:memory:/a/b"  "1:cpu,cpuacct:/"  "0::/x"      (v2: empty name)
//!        -> cg set = members {name "memory", path "/a/b"} ... sorted by name, then path
//!  sets are numbered from 1 in order of first sight; the dumper's own set comes first, and
//!  a task in it gets its id in core (thread_core.cg_set) but the set is not written
//!
//!  cgroup.img  cgroup_entry {
//!     sets        [cg_set_entry {id, ctls [cg_member_entry {name, path}]}]   (not the dumper's)
//!     controllers [cg_controller_entry {cnames ["cpu","cpuacct"], dirs [cgroup_dir_entry {
//!                    dir_name, dir_perms, properties [{name, value, perms}], children}]}]}
//!  no cgroup.img at all when every task is in the dumper's own set (CRIU does the same)
//! ```
//!
//! Controller directory trees are the subtrees under every path a dumped set uses, with
//! the properties CRIU records (limits of the known controllers as [`props`] lists them, plus
//! the global files);
//! `cgroup.procs` and `tasks` keep only their permissions.
//!
//! Restore ([`restore_tasks`]) is CRIU's soft mode: each task moves into its set's paths; a
//! path that is gone is created first, with the properties the image recorded for each
//! directory created (existing directories keep theirs); a hierarchy not mounted, a
//! directory that cannot be created or a refused move is logged and skipped, never fatal.
//!
//! [`threads`] finds the threads of a process that share its leader's cgroups from the
//! cgroups' own membership files, so the dump reads one /proc file per thread only for the
//! others.

pub mod props;
pub(crate) mod threads;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stasis_images::pb;

/// One hierarchy membership: controller names (as /proc/PID/cgroup shows them; "" for v2)
/// and the path inside the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub name: String,
    pub path: String,
}

/// Why cgroup membership could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("cgroup {path}: more than {max} directories below it")]
    TooBig { path: PathBuf, max: usize },
}

impl CgroupError {
    /// The errno behind the error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            CgroupError::Read { source, .. } => source.raw_os_error(),
            CgroupError::Parse { .. } => Some(libc::EINVAL),
            CgroupError::TooBig { .. } => Some(libc::E2BIG),
        }
    }
}

/// Most directories recorded below one set path of one controller.
pub const MAX_DIRS: usize = 4096;
/// Longest property value kept (CRIU reads at most 1023 bytes).
const MAX_VALUE: usize = 1023;

/// Parses the text of /proc/PID/cgroup into sorted members.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Member>, CgroupError> {
    let lines = crate::proc::cgroup::parse(path, text).map_err(|e| CgroupError::Parse {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let mut out: Vec<Member> = lines
        .into_iter()
        .map(|l| Member {
            name: l.controllers,
            path: l.path,
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The members of task `pid` (`"self"` for the caller).
pub fn read_task(pid: &str) -> Result<Vec<Member>, CgroupError> {
    let p = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let t = std::fs::read_to_string(&p).map_err(|source| CgroupError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&p, &t)
}

/// Where each hierarchy is mounted in our mount namespace, by its /proc/PID/cgroup name.
pub fn mountpoints() -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(mounts) = crate::proc::mountinfo::read(std::process::id() as i32) else {
        return out;
    };
    for m in mounts {
        if m.root != "/" {
            continue;
        }
        let name = match m.fstype.as_str() {
            "cgroup2" => String::new(),
            "cgroup" => {
                let mut c: Vec<&str> = m
                    .super_options
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "noprefix" | "clone_children" | "xattr")
                            && !o.starts_with("release_agent=")
                    })
                    .collect();
                // /proc/PID/cgroup lists named hierarchies as "name=X" after the controllers.
                c.sort_by_key(|o| (o.starts_with("name="), *o));
                c.join(",")
            }
            _ => continue,
        };
        out.entry(name)
            .or_insert_with(|| PathBuf::from(&m.mountpoint));
    }
    out
}

/// Whether hierarchy `name` (from /proc/PID/cgroup) is the one mounted with `mount_name`.
fn same_hierarchy(name: &str, mount_name: &str) -> bool {
    let mut a: Vec<&str> = name.split(',').collect();
    let mut b: Vec<&str> = mount_name.split(',').collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// The mount point of hierarchy `name`.
pub fn mountpoint_of<'m>(mounts: &'m BTreeMap<String, PathBuf>, name: &str) -> Option<&'m Path> {
    mounts
        .iter()
        .find(|(k, _)| same_hierarchy(name, k))
        .map(|(_, v)| v.as_path())
}

fn perms(md: &std::fs::Metadata) -> Option<pb::CgroupPerms> {
    Some(pb::CgroupPerms {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
    })
}

fn read_prop(dir: &Path, name: &str) -> Option<pb::CgroupPropEntry> {
    let p = dir.join(name);
    let md = std::fs::metadata(&p).ok()?;
    let value = if name == "cgroup.procs" || name == "tasks" {
        String::new()
    } else {
        let raw = std::fs::read(&p).ok()?;
        let mut s = String::from_utf8_lossy(&raw[..raw.len().min(MAX_VALUE)]).into_owned();
        if s.ends_with('\n') {
            s.pop();
        }
        if s.trim().parse::<i64>() == Ok(i64::MAX) {
            s = "-1".into();
        }
        if name == "memory.oom_control" {
            // Only the switch can be written back.
            let d = s
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill_disable "))
                .unwrap_or("0");
            s = d.trim().to_string();
        }
        s
    };
    Some(pb::CgroupPropEntry {
        name: name.to_string(),
        value,
        perms: perms(&md),
    })
}

fn dir_entry(
    dir: &Path,
    name: String,
    cnames: &[String],
    table: &props::Props,
    budget: &mut usize,
    top: &Path,
) -> Result<pb::CgroupDirEntry, CgroupError> {
    if *budget == 0 {
        return Err(CgroupError::TooBig {
            path: top.to_path_buf(),
            max: MAX_DIRS,
        });
    }
    *budget -= 1;
    let io = |source| CgroupError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let md = std::fs::metadata(dir).map_err(io)?;
    let mut props: Vec<pb::CgroupPropEntry> = Vec::new();
    let global = if cnames.iter().all(|c| c.is_empty()) {
        props::GLOBAL_V2
    } else {
        props::GLOBAL_V1
    };
    for c in cnames {
        let names = table.of(c).iter().map(String::as_str);
        for p in names.chain(global.iter().copied()) {
            if let Some(v) = read_prop(dir, p) {
                if !props.iter().any(|x| x.name == v.name) {
                    props.push(v);
                }
            }
        }
    }
    let mut kids: Vec<(String, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        if e.file_type().map_err(io)?.is_dir() {
            kids.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    kids.sort();
    let mut children = Vec::new();
    for (n, p) in kids {
        children.push(dir_entry(&p, n, cnames, table, budget, top)?);
    }
    Ok(pb::CgroupDirEntry {
        dir_name: name,
        children,
        properties: props,
        dir_perms: perms(&md),
    })
}

/// Cgroup sets of a dump.
#[derive(Debug, Default)]
pub struct CgSets {
    /// Members by set id (ids from 1).
    sets: Vec<Vec<Member>>,
    /// The dumper's own set id.
    own: u32,
    /// The root task's set id.
    root: Option<u32>,
    /// `--cgroup-dump-controller`: only the hierarchies whose controller field (as
    /// /proc/PID/cgroup spells it: `cpu,cpuacct`, `name=systemd`, empty for v2) is listed;
    /// empty: every hierarchy.
    only: Vec<String>,
    /// The properties recorded per controller (`--cgroup-props`, `--cgroup-props-file`).
    props: props::Props,
}

impl CgSets {
    /// Starts with the dumper's own set (id 1).
    pub fn new() -> Result<Self, CgroupError> {
        let mut s = CgSets::default();
        s.own = s.id_of(read_task("self")?);
        Ok(s)
    }

    /// Records the properties of `table` (CRIU's `--cgroup-props`, `--cgroup-props-file`).
    pub fn with_props(&mut self, table: props::Props) {
        self.props = table;
    }

    /// Keeps only the hierarchies of `controllers` (CRIU's `--cgroup-dump-controller`, each
    /// compared with the whole controller field); none given: every hierarchy.
    pub fn dump_only(&mut self, controllers: &[String]) -> Result<(), CgroupError> {
        if controllers.is_empty() {
            return Ok(());
        }
        self.only = controllers.to_vec();
        self.sets.clear();
        self.root = None;
        self.own = self.id_of(read_task("self")?);
        Ok(())
    }

    fn id_of(&mut self, mut m: Vec<Member>) -> u32 {
        if !self.only.is_empty() {
            m.retain(|x| self.only.contains(&x.name));
        }
        match self.sets.iter().position(|x| *x == m) {
            Some(i) => i as u32 + 1,
            None => {
                self.sets.push(m);
                self.sets.len() as u32
            }
        }
    }

    #[cfg(test)]
    /// The set of thread `tid` of `pid` (the first thread asked about is the root's).
    pub fn task(&mut self, pid: i32, tid: i32) -> Result<u32, CgroupError> {
        let id = self.id_of(read_task(&format!("{pid}/task/{tid}"))?);
        self.root.get_or_insert(id);
        Ok(id)
    }

    /// [`CgSets::task`] with the thread's memberships already read (`read_task`), e.g. by
    /// several threads at once.
    pub fn task_members(&mut self, members: Vec<Member>) -> u32 {
        let id = self.id_of(members);
        self.root.get_or_insert(id);
        id
    }

    /// `inventory.root_cg_set`.
    pub fn root_set(&self) -> u32 {
        self.root.unwrap_or(self.own)
    }

    /// The `cgroup_entry`, or `None` when every task is in the dumper's set.
    pub fn image(&self) -> Result<Option<pb::CgroupEntry>, CgroupError> {
        if self.root_set() == self.own && self.sets.len() == 1 {
            return Ok(None);
        }
        let mut sets = Vec::new();
        for (i, m) in self.sets.iter().enumerate() {
            let id = i as u32 + 1;
            if id == self.own {
                continue;
            }
            let ctls = m
                .iter()
                .map(|c| pb::CgMemberEntry {
                    name: c.name.clone(),
                    path: c.path.clone(),
                    cgns_prefix: None,
                })
                .collect();
            sets.push(pb::CgSetEntry { id, ctls });
        }
        let mounts = mountpoints();
        let own = &self.sets[self.own as usize - 1];
        let mut controllers = Vec::new();
        for h in own {
            let cnames: Vec<String> = h.name.split(',').map(str::to_string).collect();
            let mut dirs = Vec::new();
            let mut done: Vec<String> = Vec::new();
            if let Some(mp) = mountpoint_of(&mounts, &h.name) {
                for (i, m) in self.sets.iter().enumerate() {
                    if i as u32 + 1 == self.own {
                        continue;
                    }
                    for c in m.iter().filter(|c| c.name == h.name) {
                        // A path below one already walked is in that tree already.
                        if done.iter().any(|d| {
                            d == "/" || c.path == *d || c.path.starts_with(&format!("{d}/"))
                        }) {
                            continue;
                        }
                        let full = mp.join(c.path.trim_start_matches('/'));
                        let mut budget = MAX_DIRS;
                        let name = c.path.trim_start_matches('/').to_string();
                        dirs.push(dir_entry(
                            &full,
                            name,
                            &cnames,
                            &self.props,
                            &mut budget,
                            &full,
                        )?);
                        done.push(c.path.clone());
                    }
                }
            }
            controllers.push(pb::CgControllerEntry {
                cnames,
                dirs,
                is_threaded: None,
            });
        }
        Ok(Some(pb::CgroupEntry { sets, controllers }))
    }
}

/// The members of set `id` in a decoded cgroup.img.
fn set_members(img: &stasis_images::pb::CgroupEntry, id: u32) -> Option<Vec<Member>> {
    img.sets.iter().find(|s| s.id == id).map(|s| {
        s.ctls
            .iter()
            .map(|c| Member {
                name: c.name.clone(),
                path: c.path.clone(),
            })
            .collect()
    })
}

/// The recorded directory `path` (from the hierarchy's root) of hierarchy `name`, if the
/// image has it: a top directory names its path from the root, its children their own name.
fn recorded_dir<'a>(
    img: &'a stasis_images::pb::CgroupEntry,
    name: &str,
    path: &str,
) -> Option<&'a stasis_images::pb::CgroupDirEntry> {
    let path = path.trim_matches('/');
    let ctl = img
        .controllers
        .iter()
        .find(|c| c.cnames.join(",") == name)?;
    ctl.dirs.iter().find_map(|top| {
        let t = top.dir_name.trim_matches('/');
        let rest = if t.is_empty() {
            path
        } else if path == t {
            ""
        } else {
            path.strip_prefix(t)?.strip_prefix('/')?
        };
        rest.split('/')
            .filter(|c| !c.is_empty())
            .try_fold(top, |d, comp| {
                d.children.iter().find(|c| c.dir_name == comp)
            })
    })
}

/// CRIU's soft mode for a cgroup that is gone: creates `path` (and any missing parent) under
/// mount point `mp` of hierarchy `name`, and gives each directory it created the properties
/// the image recorded for it (a property the kernel refuses is noted in `notes`, not fatal;
/// existing directories keep theirs).
fn create_recorded(
    img: &stasis_images::pb::CgroupEntry,
    name: &str,
    mp: &Path,
    path: &str,
    notes: &mut Vec<String>,
) -> std::io::Result<()> {
    let mut rel = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(comp);
        let dir = mp.join(&rel);
        if dir.is_dir() {
            continue;
        }
        std::fs::create_dir(&dir)?;
        tracing::info!("created cgroup {}", dir.display());
        let Some(rec) = recorded_dir(img, name, &rel) else {
            continue;
        };
        for prop in &rec.properties {
            // Membership files hold only their permissions; only "threaded" can be written to
            // cgroup.type (a new directory is a domain already).
            if prop.name == "cgroup.procs"
                || prop.name == "tasks"
                || (prop.name == "cgroup.type" && prop.value != "threaded")
            {
                continue;
            }
            if let Err(e) = std::fs::write(dir.join(&prop.name), &prop.value) {
                notes.push(format!(
                    "cgroup {}: cannot restore {} = {:?}: {e}",
                    dir.display(),
                    prop.name,
                    prop.value
                ));
            }
        }
    }
    Ok(())
}

/// Moves restored tasks into their cgroups (soft mode, see the module doc): `tasks` are
/// (pid, cg_set from its core). Returns one line per move that did not happen.
pub fn restore_tasks(img: &stasis_images::pb::CgroupEntry, tasks: &[(i32, u32)]) -> Vec<String> {
    let mounts = mountpoints();
    let mut skipped = Vec::new();
    for &(pid, set) in tasks {
        let Some(members) = set_members(img, set) else {
            // Not in the image: the dumper's own set, tasks stay where they are born.
            continue;
        };
        for m in members {
            let Some(mp) = mountpoint_of(&mounts, &m.name) else {
                skipped.push(format!(
                    "task {pid}: cgroup hierarchy {:?} is not mounted here, {} left as is",
                    m.name, m.path
                ));
                continue;
            };
            let dir = mp.join(m.path.trim_start_matches('/'));
            if !dir.is_dir() {
                if let Err(e) = create_recorded(img, &m.name, mp, &m.path, &mut skipped) {
                    skipped.push(format!(
                        "task {pid}: cgroup {} does not exist and cannot be created ({e}), \
                         task stays in its current cgroup",
                        dir.display()
                    ));
                    continue;
                }
            }
            if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                skipped.push(format!(
                    "task {pid}: cannot move into cgroup {}: {e}",
                    dir.display()
                ));
            }
        }
    }
    skipped
}

/// Restore side: reads `cgroup.img` of `dir` (if any) and moves `tasks` (pid, cg_set of its
/// main thread's core; 0 = none recorded) into their cgroups, logging every move that could
/// not be done. A malformed image is an error; missing cgroups are not.
pub fn restore_dir(
    dir: &Path,
    tasks: &[(i32, u32)],
) -> Result<(), stasis_images::error::ImageError> {
    let p = dir.join("cgroup.img");
    if !p.exists() {
        tracing::info!("no cgroup.img: the tasks stay in the restorer's cgroups");
        return Ok(());
    }
    let entries: Vec<stasis_images::pb::CgroupEntry> = stasis_images::framing::read_entries(&p)?;
    let Some(img) = entries.first() else {
        return Ok(());
    };
    for line in restore_tasks(img, tasks) {
        tracing::warn!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sorts_and_rejects_garbage() {
        let p = Path::new("cgroup");
        let m = parse(p, "9:name=systemd:/\n4:memory:/a/b\n0::/x\n").unwrap();
        assert_eq!(m[0].name, "");
        assert_eq!(m[1].name, "memory");
        assert_eq!(m[1].path, "/a/b");
        assert!(parse(p, "garbage\n").is_err());
    }

    #[test]
    fn own_set_alone_gives_no_image() {
        let mut s = CgSets::new().unwrap();
        let me = std::process::id() as i32;
        assert_eq!(s.task(me, me).unwrap(), 1);
        assert_eq!(s.root_set(), 1);
        assert!(s.image().unwrap().is_none());
    }

    #[test]
    fn hierarchies_match_in_any_order() {
        assert!(same_hierarchy("cpu,cpuacct", "cpuacct,cpu"));
        assert!(!same_hierarchy("cpu", "cpu,cpuacct"));
        assert!(same_hierarchy("", ""));
    }
}
