//! The namespaces the tree owns, rebuilt before any of its tasks runs its own code.
//!
//! ```text
//! plan      root_ns_mask = kinds where the root's ids-P.img differs from inventory's
//!           root_ids (CRIU's rule); user and mnt refused, a task in another namespace
//!           than the root's refused (nested), images read: utsns-ID, ipcns-var-ID,
//!           netns-ID + netdev-ID (loopback only; addresses, routes, rules, iptables,
//!           IPC objects refused by name), timens-ID
//! enter     in the restorer, before any file is opened: unshare(uts|ipc|net), hostname
//!           and domain name, IPC sysctls, netns sysctls, lo's flags/MTU/conf (so sockets
//!           bind inside); unshare(time) and its offsets (before any task enters it)
//! spawn     the root: clone3(CLONE_NEWPID, set_tid = [1]) and it inherits the rest;
//!           cgroup: the root moves into its cgroup and unshares (its namespace's root)
//! leave     the restorer back in its own namespaces once the root exists
//! ```

use std::os::fd::AsRawFd;
use std::path::Path;

use stasis_images::pb;

use super::error::RestoreError;
use super::img::{self, ImageFile};
use super::plan::{Plan, TASK_DEAD};

pub use crate::dump::namespaces::{
    CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME,
    CLONE_NEWUSER, CLONE_NEWUTS,
};

/// What the images say of the tree's own namespaces.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    /// Clone flags of the kinds the root owns (CRIU's `root_ns_mask`).
    pub mask: u64,
    pub uts: Option<pb::UtsnsEntry>,
    pub ipc: Option<pb::IpcVarEntry>,
    pub net: Option<(pb::NetnsEntry, Vec<pb::NetDeviceEntry>)>,
    pub time: Option<pb::TimensEntry>,
    /// The id of the mount namespace the root owns: rebuilt by `super::mounts`, not cloned.
    pub mnt: Option<u32>,
}

fn unsupported(what: String) -> RestoreError {
    RestoreError::Unsupported(what)
}

/// The ns ids of one kind, as (name, flag, value).
fn kinds(ids: &pb::TaskKobjIdsEntry) -> [(&'static str, u64, Option<u32>); 8] {
    [
        ("pid", CLONE_NEWPID, ids.pid_ns_id),
        ("net", CLONE_NEWNET, ids.net_ns_id),
        ("ipc", CLONE_NEWIPC, ids.ipc_ns_id),
        ("uts", CLONE_NEWUTS, ids.uts_ns_id),
        ("mnt", CLONE_NEWNS, ids.mnt_ns_id),
        ("user", CLONE_NEWUSER, ids.user_ns_id),
        ("cgroup", CLONE_NEWCGROUP, ids.cgroup_ns_id),
        ("time", CLONE_NEWTIME, ids.time_ns_id),
    ]
}

fn task_ids(dir: &Path, pid: i32) -> Result<Option<pb::TaskKobjIdsEntry>, RestoreError> {
    match ImageFile::open_opt(dir, &format!("ids-{pid}.img"))? {
        Some(mut f) => f.next_msg(),
        None => Ok(img::one::<pb::CoreEntry>(dir, &format!("core-{pid}.img"))?.ids),
    }
}

/// An image of raw bytes (ip tool dumps): whether it holds anything.
fn nonempty(dir: &Path, name: &str) -> bool {
    std::fs::metadata(dir.join(name)).is_ok_and(|m| m.len() > 0)
}

/// Reads and checks the namespaces of the images (nothing is created).
pub fn plan(plan: &Plan) -> Result<Namespaces, RestoreError> {
    let dir = &plan.dir;
    let Some(mut inv) = ImageFile::open_opt(dir, "inventory.img")? else {
        return Ok(Namespaces::default());
    };
    let Some(root_ids) = inv
        .next_msg::<pb::InventoryEntry>()?
        .and_then(|i| i.root_ids)
    else {
        return Ok(Namespaces::default());
    };
    let Some(root) = plan.tasks.first() else {
        return Ok(Namespaces::default());
    };
    let Some(ids) = task_ids(dir, root.pid)? else {
        return Ok(Namespaces::default());
    };
    let mut ns = Namespaces::default();
    for ((kind, flag, theirs), (_, _, ours)) in kinds(&ids).into_iter().zip(kinds(&root_ids)) {
        if theirs.is_none() || ours.is_none() || theirs == ours {
            continue;
        }
        if flag == CLONE_NEWNS {
            // Rebuilt by `super::mounts` (see below for proc in a new pid namespace).
            ns.mnt = theirs;
            continue;
        }
        if flag == CLONE_NEWUSER {
            return Err(unsupported(format!(
                "the tree's root owns a {kind} namespace: restoring {kind} namespaces is \
                 not built yet"
            )));
        }
        ns.mask |= flag;
    }
    for t in plan.tasks.iter().skip(1).filter(|t| t.state != TASK_DEAD) {
        let Some(tids) = task_ids(dir, t.pid)? else {
            continue;
        };
        for ((kind, _, theirs), (_, _, roots)) in kinds(&tids).into_iter().zip(kinds(&ids)) {
            if theirs.is_some() && theirs != roots {
                return Err(unsupported(format!(
                    "task {} is in {kind} namespace {theirs:?}, the root in {roots:?}: nested \
                     {kind} namespaces are not restored yet",
                    t.pid
                )));
            }
        }
    }
    if ns.mask & CLONE_NEWPID != 0 && root.pid != 1 {
        return Err(unsupported(format!(
            "the root owns a pid namespace but has pid {} in it (not its init)",
            root.pid
        )));
    }
    // A proc mount is made by the restorer, in its own pid namespace: in a tree that owns a
    // pid namespace it would show the restorer's pids.
    if let Some(id) = ns.mnt.filter(|_| ns.mask & CLONE_NEWPID != 0) {
        let name = format!("mountpoints-{id}.img");
        if let Some(mut f) = ImageFile::open_opt(dir, &name)? {
            let mounts: Vec<pb::MntEntry> = f.all()?;
            if let Some(m) = mounts.iter().find(|m| m.fstype == 1) {
                return Err(unsupported(format!(
                    "{name}: proc at {} in a tree owning both its pid and mount namespaces is \
                     not restored yet",
                    m.mountpoint
                )));
            }
        }
    }
    if let Some(id) = ids.uts_ns_id.filter(|_| ns.mask & CLONE_NEWUTS != 0) {
        ns.uts = Some(img::one(dir, &format!("utsns-{id}.img"))?);
    }
    if let Some(id) = ids.ipc_ns_id.filter(|_| ns.mask & CLONE_NEWIPC != 0) {
        for kind in ["shm", "msg", "sem"] {
            let name = format!("ipcns-{kind}-{id}.img");
            // Anything past the two magics is an object.
            if std::fs::metadata(dir.join(&name)).is_ok_and(|m| m.len() > 8) {
                return Err(unsupported(format!(
                    "{name}: System V IPC objects are not restored yet"
                )));
            }
        }
        ns.ipc = Some(img::one(dir, &format!("ipcns-var-{id}.img"))?);
    }
    if let Some(id) = ids.net_ns_id.filter(|_| ns.mask & CLONE_NEWNET != 0) {
        let netns: pb::NetnsEntry = img::one(dir, &format!("netns-{id}.img"))?;
        if netns.ext_key.is_some() {
            return Err(unsupported(format!(
                "netns-{id}.img: an external network namespace is not restored yet"
            )));
        }
        let devs: Vec<pb::NetDeviceEntry> =
            match ImageFile::open_opt(dir, &format!("netdev-{id}.img"))? {
                Some(mut f) => f.all()?,
                None => Vec::new(),
            };
        if let Some(d) = devs
            .iter()
            .find(|d| d.r#type != pb::NdType::Loopback as i32)
        {
            return Err(unsupported(format!(
                "netdev-{id}.img: link {:?} (type {}): only the loopback of a network \
                 namespace is restored yet",
                d.name, d.r#type
            )));
        }
        let lo = devs.first().map_or(1, |d| d.ifindex);
        for kind in [
            "ifaddr",
            "route",
            "route6",
            "rule",
            "iptables",
            "ip6tables",
            "nftables",
            "netnf-ct",
            "netnf-exp",
        ] {
            let name = format!("{kind}-{id}.img");
            if !nonempty(dir, &name) {
                continue;
            }
            let data = std::fs::read(dir.join(&name)).map_err(|e| RestoreError::Io {
                step: "read image",
                path: dir.join(&name),
                source: e,
            })?;
            // What a fresh namespace with its loopback up has anyway needs nothing.
            use super::ip_dump as ip;
            let same = match kind {
                "ifaddr" => ip::addrs_default(&data, lo),
                "route" | "route6" => ip::routes_default(&data),
                "rule" => ip::rules_default(&data),
                "iptables" | "ip6tables" => ip::iptables_default(&String::from_utf8_lossy(&data)),
                _ => Err("not empty".into()),
            };
            if let Err(what) = same {
                return Err(unsupported(format!(
                    "{name}: {what}: addresses, routes, rules and firewall state of a network \
                     namespace beyond its loopback are not restored yet"
                )));
            }
        }
        ns.net = Some((netns, devs));
    }
    if ns.mask & CLONE_NEWCGROUP != 0 {
        check_cgns_prefix(plan)?;
    }
    if let Some(id) = ids.time_ns_id.filter(|_| ns.mask & CLONE_NEWTIME != 0) {
        ns.time = Some(img::one(dir, &format!("timens-{id}.img"))?);
    }
    Ok(ns)
}

fn sys(step: &str, e: nix::errno::Errno) -> RestoreError {
    RestoreError::sys(step.to_string(), 0, e)
}

/// Writes `/proc/sys/PATH` (of the calling thread's namespaces) when it differs.
fn write_sysctl(path: &str, value: &str) -> Result<(), RestoreError> {
    let full = format!("/proc/sys/{path}");
    let now = std::fs::read_to_string(&full).unwrap_or_default();
    if now.trim_end_matches('\n') == value {
        return Ok(());
    }
    std::fs::write(&full, value).map_err(|e| RestoreError::Io {
        step: "write a namespace's sysctl",
        path: full.into(),
        source: e,
    })
}

fn write_conf(
    family: &str,
    dev: &str,
    names: &[&str],
    vals: &[pb::SysctlEntry],
) -> Result<(), RestoreError> {
    for (name, v) in names.iter().zip(vals) {
        let path = format!("net/{family}/conf/{dev}/{name}");
        // Read-only ones (tag, medium_id...) are skipped when the value is already right.
        let value = match (v.iarg, &v.sarg) {
            (Some(i), _) => i.to_string(),
            (None, Some(s)) => s.clone(),
            (None, None) => continue,
        };
        if !Path::new("/proc/sys").join(&path).exists() {
            continue;
        }
        write_sysctl(&path, &value)?;
    }
    Ok(())
}

/// The restorer inside the tree's new uts/ipc/net/time namespaces until [`Entered::leave`].
pub struct Entered {
    /// (flag, the restorer's own namespace) to go back to.
    home: Vec<(nix::sched::CloneFlags, std::fs::File)>,
}

impl Entered {
    /// Goes back to the restorer's own namespaces (the tasks keep the new ones).
    pub fn leave(mut self) -> Result<(), RestoreError> {
        self.back()
    }

    fn back(&mut self) -> Result<(), RestoreError> {
        for (flag, f) in self.home.drain(..) {
            match nix::sched::setns(&f, flag) {
                Ok(()) => {}
                // A time namespace is entered only by a single-threaded process: then only
                // the restorer's later children (action scripts) would be born in the
                // tree's, which does not touch the tree.
                Err(e) if flag.bits() == CLONE_NEWTIME as i32 => {
                    tracing::warn!("the restorer stays with the tree's time namespace: {e}")
                }
                Err(e) => return Err(sys("back to the restorer's namespace", e)),
            }
        }
        Ok(())
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = self.back() {
            tracing::error!("{e}");
        }
    }
}

/// Creates the tree's uts, ipc, net and time namespaces for the restorer (whose next
/// children are born in them) and puts their state back.
pub fn enter(ns: &Namespaces) -> Result<Entered, RestoreError> {
    use nix::sched::CloneFlags as F;
    let mut entered = Entered { home: Vec::new() };
    let mut flags = F::empty();
    for (f, name, set) in [
        (F::CLONE_NEWUTS, "uts", ns.uts.is_some()),
        (F::CLONE_NEWIPC, "ipc", ns.ipc.is_some()),
        (F::CLONE_NEWNET, "net", ns.net.is_some()),
    ] {
        if set {
            let p = format!("/proc/thread-self/ns/{name}");
            let file = std::fs::File::open(&p).map_err(|e| RestoreError::Io {
                step: "open the restorer's namespace",
                path: p.into(),
                source: e,
            })?;
            entered.home.push((f, file));
            flags |= f;
        }
    }
    if !flags.is_empty() {
        nix::sched::unshare(flags).map_err(|e| sys("unshare the tree's namespaces", e))?;
    }
    if let Some(u) = &ns.uts {
        write_sysctl("kernel/hostname", &u.nodename)?;
        write_sysctl("kernel/domainname", &u.domainname)?;
    }
    if let Some(v) = &ns.ipc {
        restore_ipc(v)?;
    }
    if let Some((netns, devs)) = &ns.net {
        restore_net(netns, devs)?;
    }
    if let Some(t) = &ns.time {
        let p = "/proc/self/ns/time";
        let file = std::fs::File::open(p).map_err(|e| RestoreError::Io {
            step: "open the restorer's namespace",
            path: p.into(),
            source: e,
        })?;
        nix::sched::unshare(F::from_bits_retain(CLONE_NEWTIME as i32))
            .map_err(|e| sys("unshare a time namespace", e))?;
        entered
            .home
            .push((F::from_bits_retain(CLONE_NEWTIME as i32), file));
        write_time_offsets(t)?;
    }
    Ok(entered)
}

fn restore_ipc(v: &pb::IpcVarEntry) -> Result<(), RestoreError> {
    if !v.sem_ctls.is_empty() {
        let s: Vec<String> = v.sem_ctls.iter().map(|x| x.to_string()).collect();
        write_sysctl("kernel/sem", &s.join("\t"))?;
    }
    for (path, val) in [
        ("kernel/msgmax", v.msg_ctlmax as u64),
        ("kernel/msgmnb", v.msg_ctlmnb as u64),
        ("kernel/msgmni", v.msg_ctlmni as u64),
        ("kernel/shmmax", v.shm_ctlmax),
        ("kernel/shmall", v.shm_ctlall),
        ("kernel/shmmni", v.shm_ctlmni as u64),
        ("kernel/shm_rmid_forced", v.shm_rmid_forced as u64),
    ] {
        write_sysctl(path, &val.to_string())?;
    }
    if Path::new("/proc/sys/fs/mqueue").exists() {
        for (path, val) in [
            ("fs/mqueue/queues_max", Some(v.mq_queues_max)),
            ("fs/mqueue/msg_max", Some(v.mq_msg_max)),
            ("fs/mqueue/msgsize_max", Some(v.mq_msgsize_max)),
            ("fs/mqueue/msg_default", v.mq_msg_default),
            ("fs/mqueue/msgsize_default", v.mq_msgsize_default),
        ] {
            if let Some(val) = val {
                write_sysctl(path, &val.to_string())?;
            }
        }
    }
    // -1 (unset) is kept as its u32.
    for (path, val) in [
        ("kernel/msg_next_id", v.msg_next_id),
        ("kernel/sem_next_id", v.sem_next_id),
        ("kernel/shm_next_id", v.shm_next_id),
    ] {
        if let Some(val) = val {
            write_sysctl(path, &(val as i32).to_string())?;
        }
    }
    Ok(())
}

fn restore_net(netns: &pb::NetnsEntry, devs: &[pb::NetDeviceEntry]) -> Result<(), RestoreError> {
    use crate::dump::namespaces::{DEVCONFS4, DEVCONFS6};
    write_conf("ipv4", "all", &DEVCONFS4, &netns.all_conf4)?;
    write_conf("ipv4", "default", &DEVCONFS4, &netns.def_conf4)?;
    write_conf("ipv6", "all", &DEVCONFS6, &netns.all_conf6)?;
    write_conf("ipv6", "default", &DEVCONFS6, &netns.def_conf6)?;
    if let Some(q) = netns.unix_conf.first().and_then(|e| e.iarg) {
        write_sysctl("net/unix/max_dgram_qlen", &q.to_string())?;
    }
    if let Some(r) = netns.ipv4_sysctl.first().and_then(|e| e.sarg.as_ref()) {
        write_sysctl("net/ipv4/ping_group_range", r)?;
    }
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| sys("socket in the new network namespace", e))?;
    for d in devs {
        let fd = sock.as_raw_fd();
        let now = crate::sys::netdev::link_state(fd, &d.name)
            .map_err(|e| sys("read the loopback's state", e))?;
        if now.mtu != d.mtu as i32 {
            crate::sys::netdev::set_mtu(fd, &d.name, d.mtu as i32)
                .map_err(|e| sys("set the loopback's MTU", e))?;
        }
        write_conf("ipv4", &d.name, &DEVCONFS4, &d.conf4)?;
        write_conf("ipv6", &d.name, &DEVCONFS6, &d.conf6)?;
        // The settable flags (up, ...); RUNNING and LOWER_UP follow from up.
        const SETTABLE: u32 = (libc::IFF_UP
            | libc::IFF_DEBUG
            | libc::IFF_NOARP
            | libc::IFF_PROMISC
            | libc::IFF_ALLMULTI
            | libc::IFF_MULTICAST) as u32;
        if now.flags & SETTABLE != d.flags & SETTABLE {
            crate::sys::netdev::set_flags(
                fd,
                &d.name,
                (now.flags & !SETTABLE) | (d.flags & SETTABLE),
            )
            .map_err(|e| sys("set the loopback's flags", e))?;
        }
    }
    Ok(())
}

/// `/proc/self/timens_offsets` of the new (not yet entered) time namespace: its clocks go on
/// from the images' values.
fn write_time_offsets(t: &pb::TimensEntry) -> Result<(), RestoreError> {
    use nix::time::{clock_gettime, ClockId};
    let offset = |c: ClockId, want: &pb::Timespec| -> Result<(i64, i64), RestoreError> {
        let now = clock_gettime(c).map_err(|e| sys("clock_gettime", e))?;
        let mut ns = (want.tv_sec as i64 - now.tv_sec()) * 1_000_000_000 + want.tv_nsec as i64
            - now.tv_nsec();
        let mut sec = ns.div_euclid(1_000_000_000);
        ns = ns.rem_euclid(1_000_000_000);
        if sec == i64::MIN {
            sec = 0;
        }
        Ok((sec, ns))
    };
    let (ms, mn) = offset(ClockId::CLOCK_MONOTONIC, &t.monotonic)?;
    let (bs, bn) = offset(ClockId::CLOCK_BOOTTIME, &t.boottime)?;
    let text = format!(
        "{} {ms} {mn}\n{} {bs} {bn}\n",
        libc::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME
    );
    std::fs::write("/proc/self/timens_offsets", text).map_err(|e| RestoreError::Io {
        step: "write the time namespace's offsets",
        path: "/proc/self/timens_offsets".into(),
        source: e,
    })
}

/// The root's cgroup set in the images, from its main thread's core.
fn root_cg_set(plan: &Plan) -> Option<u32> {
    let c = &plan.tasks.first()?.threads.first()?.core;
    c.thread_core
        .as_ref()
        .and_then(|x| x.cg_set)
        .or(c.tc.as_ref().and_then(|x| x.cg_set))
}

/// The root's cgroup namespace is restored rooted at its cgroup: CRIU's `cgns_prefix` (the
/// length of the part of a member's path that is the namespace's root) must then be the
/// whole path; a namespace rooted above the task's cgroup is refused by name. A member
/// without one (stasis writes none) is taken as rooted at the task's cgroup, which is what
/// stasis's dump checks.
fn check_cgns_prefix(plan: &Plan) -> Result<(), RestoreError> {
    let Some(set) = root_cg_set(plan) else {
        return Ok(());
    };
    let Some(mut f) = ImageFile::open_opt(&plan.dir, "cgroup.img")? else {
        return Ok(());
    };
    let Some(cg) = f.next_msg::<pb::CgroupEntry>()? else {
        return Ok(());
    };
    for s in cg.sets.iter().filter(|s| s.id == set) {
        for m in &s.ctls {
            let whole = m.path.trim_end_matches('/').len();
            if let Some(p) = m.cgns_prefix.filter(|&p| p as usize != whole) {
                return Err(unsupported(format!(
                    "cgroup.img: the root's cgroup namespace on {:?} is rooted at {:?}, above \
                     its cgroup {:?}: not restored yet",
                    m.name,
                    m.path.get(..p as usize).unwrap_or(&m.path),
                    m.path
                )));
            }
        }
    }
    Ok(())
}

/// In the root task, before it forks: its cgroup namespace, rooted at the cgroup it is in
/// once moved there (`cg_set` of its core).
pub fn root_cgroup_ns(plan: &Plan) -> Result<(), (&'static str, nix::errno::Errno)> {
    if plan.ns.mask & CLONE_NEWCGROUP == 0 {
        return Ok(());
    }
    if let Some(set) = root_cg_set(plan) {
        // "0": the writer itself. A move that cannot be done is logged by restore_dir.
        crate::cgroup::restore_dir(&plan.dir, &[(0, set)]).map_err(|_| {
            (
                "read cgroup.img for the cgroup namespace",
                nix::errno::Errno::EINVAL,
            )
        })?;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| ("unshare the cgroup namespace", e))
}

/// Image PID -> the restorer's PID of every restored task and thread (the same numbers
/// unless the tree has a pid namespace of its own; then read from `NSpid` under the root).
pub struct HostPids(Option<std::collections::HashMap<i32, i32>>);

impl HostPids {
    /// Walks the restored tree from `root` (the restorer's PID of it) once every task is
    /// ready.
    pub fn of(plan: &Plan, root: i32) -> Result<Self, RestoreError> {
        if plan.ns.mask & CLONE_NEWPID == 0 {
            return Ok(HostPids(None));
        }
        let mut m = std::collections::HashMap::new();
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            if m.len() > 1 << 22 {
                break;
            }
            let tasks =
                std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| RestoreError::Io {
                    step: "list a restored task's threads",
                    path: format!("/proc/{pid}/task").into(),
                    source: e,
                })?;
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                if let Some(inner) = crate::proc::ns::own_tid(pid, tid) {
                    m.insert(inner, tid);
                }
                let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
                    .unwrap_or_default();
                stack.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<i32>().ok()),
                );
            }
        }
        Ok(HostPids(Some(m)))
    }

    /// The restorer's PID of image PID `pid`; one no task has (`i32::MAX`: signals and
    /// waits on it fail with ESRCH) when the walk did not find it, never another number.
    pub fn get(&self, pid: i32) -> i32 {
        match &self.0 {
            Some(m) => m.get(&pid).copied().unwrap_or(i32::MAX),
            None => pid,
        }
    }
}
