//! The namespaces a tree owns (its root's, when they differ from the dumper's) and their
//! images, as CRIU writes them.
//!
//! ```text
//! tree::check_namespaces   which kinds the root owns (uts ipc net pid cgroup time), every
//!                          task in the root's; user, mnt and nested ones refused by name
//! PidMap                   host pid -> pid inside the tree's pid namespace (NSpid's last);
//!                          images name and hold the inner ones (core-1.img, pstree pid 1)
//! collect (a thread that setns'es into the root's uts/ipc/net/cgroup namespaces):
//!   utsns-ID.img      {nodename, domainname}
//!   ipcns-var-ID.img  kernel/sem, msg*, shm*, fs/mqueue/*, *_next_id   (objects: refused)
//!   netns-ID.img      all/default conf4 + conf6, unix max_dgram_qlen, ping_group_range
//!   netdev-ID.img     lo {LOOPBACK, ifindex, mtu, flags, conf4, conf6} (other links,
//!                     addresses, routes or iptables tables: refused)
//!   timens-ID.img     the namespace's monotonic and boottime clocks now
//!   cgroup            nothing: its root must be the root task's cgroup (else refused)
//! ```
//! ID is CRIU's id of the namespace (the root's `ids-P.img`). On restore the offsets, names,
//! sysctls and loopback state go back before any task of the tree runs its own code.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use stasis_images::magic::ImageKind;
use stasis_images::pb;

use super::error::{DumpError, Result};
use super::images_out::{file_bytes, ImageDir};
use super::tree::Process;

/// Clone flags of the namespace kinds (`<linux/sched.h>`).
pub const CLONE_NEWTIME: u64 = 0x80;
pub const CLONE_NEWNS: u64 = 0x0002_0000;
pub const CLONE_NEWCGROUP: u64 = 0x0200_0000;
pub const CLONE_NEWUTS: u64 = 0x0400_0000;
pub const CLONE_NEWIPC: u64 = 0x0800_0000;
pub const CLONE_NEWUSER: u64 = 0x1000_0000;
pub const CLONE_NEWPID: u64 = 0x2000_0000;
pub const CLONE_NEWNET: u64 = 0x4000_0000;

/// The kinds a tree may own, with their clone flag.
pub const OWNABLE: [(&str, u64); 6] = [
    ("pid", CLONE_NEWPID),
    ("net", CLONE_NEWNET),
    ("ipc", CLONE_NEWIPC),
    ("uts", CLONE_NEWUTS),
    ("cgroup", CLONE_NEWCGROUP),
    ("time", CLONE_NEWTIME),
];

/// Host pid -> pid in the tree's own pid namespace (identity when it has none).
#[derive(Debug, Default)]
pub struct PidMap(Option<HashMap<i32, i32>>);

impl PidMap {
    /// Reads every task's and thread's `NSpid` when the tree owns its pid namespace.
    pub fn of(tree: &[Process], owned: u64) -> Result<Self> {
        if owned & CLONE_NEWPID == 0 {
            return Ok(PidMap(None));
        }
        let mut m = HashMap::new();
        for p in tree {
            for &tid in &p.threads {
                let inner = crate::proc::ns::own_tid(p.pid, tid).ok_or_else(|| {
                    DumpError::new(
                        "collect-tree",
                        p.pid,
                        None,
                        format!("no NSpid in /proc/{}/task/{tid}/status", p.pid),
                    )
                })?;
                m.insert(tid, inner);
            }
        }
        if m.get(&tree[0].pid) != Some(&1) {
            return Err(DumpError::new(
                "collect-tree",
                tree[0].pid,
                Some(libc::EOPNOTSUPP),
                "the tree's root owns a pid namespace but is not its init (PID 1 in it): \
                 dump the namespace's init",
            ));
        }
        Ok(PidMap(Some(m)))
    }

    /// Whether the tree has a pid namespace of its own.
    pub fn owned(&self) -> bool {
        self.0.is_some()
    }

    /// The pid of host task `pid` in the images (0 stays 0).
    pub fn v(&self, pid: i32) -> i32 {
        match &self.0 {
            Some(m) if pid != 0 => m.get(&pid).copied().unwrap_or(pid),
            _ => pid,
        }
    }

    /// A pid the images must hold (a group or session leader, a timer's thread): an error
    /// when it is outside the namespace (it has no number there).
    pub fn inside(&self, what: &str, of: i32, pid: i32) -> Result<i32> {
        match &self.0 {
            Some(m) if pid != 0 => m.get(&pid).copied().ok_or_else(|| {
                DumpError::new(
                    "collect-tree",
                    of,
                    Some(libc::EOPNOTSUPP),
                    format!(
                        "{what} {pid} is outside the tree's pid namespace (it has no pid \
                         there): not dumpable"
                    ),
                )
            }),
            _ => Ok(pid),
        }
    }
}

/// Runs `f` in a thread of its own that entered the namespaces `kinds` of `pid` (setns
/// changes only the calling thread for these kinds).
fn in_ns<T: Send>(pid: i32, kinds: &[&str], f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let files = kinds
        .iter()
        .map(|k| {
            let p = format!("/proc/{pid}/ns/{k}");
            std::fs::File::open(&p).map_err(|e| DumpError::io("namespaces", pid, &p, e))
        })
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            for (f, k) in files.iter().zip(kinds) {
                nix::sched::setns(f, nix::sched::CloneFlags::empty()).map_err(|e| {
                    DumpError::new(
                        "namespaces",
                        pid,
                        Some(e as i32),
                        format!("enter the {k} namespace of the task: {e}"),
                    )
                })?;
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(DumpError::new("namespaces", pid, None, "reader panicked")))
    })
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

fn sysctl_u64(pid: i32, path: &str) -> Result<u64> {
    let s = sysctl(path)
        .ok_or_else(|| DumpError::new("namespaces", pid, None, format!("read /proc/sys/{path}")))?;
    // The *_next_id ones read -1 when unset: CRIU keeps the u32 of it.
    s.trim()
        .parse::<u64>()
        .or_else(|_| s.trim().parse::<i64>().map(|v| v as u32 as u64))
        .map_err(|_| {
            DumpError::new(
                "namespaces",
                pid,
                None,
                format!("/proc/sys/{path}: {s:?} is no number"),
            )
        })
}

/// The per-device sysctls CRIU keeps (`net/ipv4/conf/DEV/*`), in its order.
pub const DEVCONFS4: [&str; 30] = [
    "accept_local",
    "accept_redirects",
    "accept_source_route",
    "arp_accept",
    "arp_announce",
    "arp_filter",
    "arp_ignore",
    "arp_notify",
    "bootp_relay",
    "disable_policy",
    "disable_xfrm",
    "force_igmp_version",
    "forwarding",
    "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval",
    "log_martians",
    "medium_id",
    "promote_secondaries",
    "proxy_arp",
    "proxy_arp_pvlan",
    "route_localnet",
    "rp_filter",
    "secure_redirects",
    "send_redirects",
    "shared_media",
    "src_valid_mark",
    "tag",
    "ignore_routes_with_linkdown",
    "drop_gratuitous_arp",
    "drop_unicast_in_l2_multicast",
];

/// `net/ipv6/conf/DEV/*` as CRIU keeps them (`stable_secret` is a string).
pub const DEVCONFS6: [&str; 42] = [
    "accept_dad",
    "accept_ra",
    "accept_ra_defrtr",
    "accept_ra_from_local",
    "accept_ra_min_hop_limit",
    "accept_ra_mtu",
    "accept_ra_pinfo",
    "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref",
    "accept_redirects",
    "accept_source_route",
    "autoconf",
    "dad_transmits",
    "disable_ipv6",
    "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na",
    "force_mld_version",
    "force_tllao",
    "forwarding",
    "hop_limit",
    "ignore_routes_with_linkdown",
    "keep_addr_on_down",
    "max_addresses",
    "max_desync_factor",
    "mldv1_unsolicited_report_interval",
    "mldv2_unsolicited_report_interval",
    "mtu",
    "ndisc_notify",
    "optimistic_dad",
    "proxy_ndp",
    "regen_max_retry",
    "router_probe_interval",
    "router_solicitation_delay",
    "router_solicitation_interval",
    "router_solicitations",
    "stable_secret",
    "suppress_frag_ndisc",
    "temp_prefered_lft",
    "temp_valid_lft",
    "use_oif_addrs_only",
    "use_optimistic",
    "use_tempaddr",
];

const CTL_STR: i32 = 5;
const CTL_32: i32 = 6;

/// One device's (or all/default's) conf sysctls; an entry without value where the kernel
/// has none (or refuses to read it, like an unset `stable_secret`).
fn devconf(family: &str, dev: &str, names: &[&str]) -> Vec<pb::SysctlEntry> {
    names
        .iter()
        .map(|n| {
            let v = sysctl(&format!("net/{family}/conf/{dev}/{n}"));
            if *n == "stable_secret" {
                pb::SysctlEntry {
                    r#type: CTL_STR,
                    iarg: None,
                    sarg: v,
                }
            } else {
                pb::SysctlEntry {
                    r#type: CTL_32,
                    iarg: v.and_then(|s| s.trim().parse().ok()),
                    sarg: None,
                }
            }
        })
        .collect()
}

/// What a netns of its own holds, read inside it.
fn net_state(pid: i32) -> Result<(pb::NetnsEntry, Vec<pb::NetDeviceEntry>)> {
    let refuse = |what: String| {
        Err(DumpError::new(
            "netns",
            pid,
            Some(libc::EOPNOTSUPP),
            format!("{what}: only a network namespace with just its loopback is dumped yet"),
        ))
    };
    // Links: /proc/thread-self/net is this thread's namespace.
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
        .map_err(|e| DumpError::io("netns", pid, "/proc/thread-self/net/dev", e))?;
    for l in dev.lines().skip(2) {
        let name = l.split(':').next().unwrap_or("").trim();
        if name != "lo" {
            return refuse(format!("the network namespace has link {name:?}"));
        }
    }
    let route = std::fs::read_to_string("/proc/thread-self/net/route").unwrap_or_default();
    if route.lines().count() > 1 {
        return refuse("the network namespace has IPv4 routes of its own".into());
    }
    let tables =
        std::fs::read_to_string("/proc/thread-self/net/ip_tables_names").unwrap_or_default();
    if !tables.trim().is_empty() {
        return refuse(format!(
            "the network namespace has iptables tables ({})",
            tables.trim()
        ));
    }
    let inet6 = std::fs::read_to_string("/proc/thread-self/net/if_inet6").unwrap_or_default();
    for l in inet6.lines() {
        if !l.starts_with("00000000000000000000000000000001 ") {
            return refuse(format!("the network namespace has IPv6 address {l:?}"));
        }
    }
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| DumpError::new("netns", pid, Some(e as i32), "socket in the netns"))?;
    let lo = crate::sys::netdev::link_state(sock.as_raw_fd(), "lo")
        .map_err(|e| DumpError::new("netns", pid, Some(e as i32), "lo's flags and mtu"))?;
    for a in crate::sys::netdev::ipv4_addrs(sock.as_raw_fd())
        .map_err(|e| DumpError::new("netns", pid, Some(e as i32), "SIOCGIFCONF"))?
    {
        if a != ("lo".to_string(), [127, 0, 0, 1]) {
            return refuse(format!("the network namespace has IPv4 address {a:?}"));
        }
    }
    let lo_entry = pb::NetDeviceEntry {
        r#type: pb::NdType::Loopback as i32,
        ifindex: lo.ifindex as u32,
        mtu: lo.mtu as u32,
        flags: lo.flags,
        name: "lo".into(),
        address: Some(vec![0; 6]),
        conf4: devconf("ipv4", "lo", &DEVCONFS4),
        conf6: devconf("ipv6", "lo", &DEVCONFS6),
        ..Default::default()
    };
    let netns = pb::NetnsEntry {
        def_conf4: devconf("ipv4", "default", &DEVCONFS4),
        all_conf4: devconf("ipv4", "all", &DEVCONFS4),
        def_conf6: devconf("ipv6", "default", &DEVCONFS6),
        all_conf6: devconf("ipv6", "all", &DEVCONFS6),
        unix_conf: vec![pb::SysctlEntry {
            r#type: CTL_32,
            iarg: sysctl("net/unix/max_dgram_qlen").and_then(|s| s.trim().parse().ok()),
            sarg: None,
        }],
        ipv4_sysctl: vec![pb::SysctlEntry {
            r#type: CTL_STR,
            iarg: None,
            sarg: sysctl("net/ipv4/ping_group_range"),
        }],
        ..Default::default()
    };
    Ok((netns, vec![lo_entry]))
}

/// The IPC namespace's sysctls (read inside it); its message queues, semaphores and shared
/// memory segments are refused by name (not dumped yet).
fn ipc_state(pid: i32) -> Result<pb::IpcVarEntry> {
    for kind in ["msg", "sem", "shm"] {
        let p = format!("/proc/sysvipc/{kind}");
        let t = std::fs::read_to_string(&p).map_err(|e| DumpError::io("ipcns", pid, &p, e))?;
        let n = t.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
        if n > 0 {
            return Err(DumpError::new(
                "ipcns",
                pid,
                Some(libc::EOPNOTSUPP),
                format!(
                    "the IPC namespace holds {n} System V {kind} object(s): dumping IPC \
                     objects is not built yet"
                ),
            ));
        }
    }
    let u32_of = |p: &str| sysctl_u64(pid, p).map(|v| v as u32);
    let opt = |p: &str| sysctl_u64(pid, p).ok().map(|v| v as u32);
    let sem = sysctl("kernel/sem").unwrap_or_default();
    Ok(pb::IpcVarEntry {
        sem_ctls: sem
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect(),
        msg_ctlmax: u32_of("kernel/msgmax")?,
        msg_ctlmnb: u32_of("kernel/msgmnb")?,
        msg_ctlmni: u32_of("kernel/msgmni")?,
        auto_msgmni: opt("kernel/auto_msgmni").unwrap_or(0),
        shm_ctlmax: sysctl_u64(pid, "kernel/shmmax")?,
        shm_ctlall: sysctl_u64(pid, "kernel/shmall")?,
        shm_ctlmni: u32_of("kernel/shmmni")?,
        shm_rmid_forced: u32_of("kernel/shm_rmid_forced")?,
        mq_queues_max: opt("fs/mqueue/queues_max").unwrap_or(0),
        mq_msg_max: opt("fs/mqueue/msg_max").unwrap_or(0),
        mq_msgsize_max: opt("fs/mqueue/msgsize_max").unwrap_or(0),
        mq_msg_default: opt("fs/mqueue/msg_default"),
        mq_msgsize_default: opt("fs/mqueue/msgsize_default"),
        // -1 (unset) is left out, as CRIU does (writing it back is refused).
        msg_next_id: opt("kernel/msg_next_id").filter(|&v| v != u32::MAX),
        sem_next_id: opt("kernel/sem_next_id").filter(|&v| v != u32::MAX),
        shm_next_id: opt("kernel/shm_next_id").filter(|&v| v != u32::MAX),
    })
}

/// The time namespace's clocks now: the host's plus the namespace's offsets.
fn time_state(pid: i32) -> Result<pb::TimensEntry> {
    use nix::time::{clock_gettime, ClockId};
    let p = format!("/proc/{pid}/timens_offsets");
    let text = std::fs::read_to_string(&p).map_err(|e| DumpError::io("timens", pid, &p, e))?;
    let off = |name: &str| -> (i64, i64) {
        text.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // "monotonic 0 0" (names) or "1 0 0" (clock ids) depending on the kernel.
                let id = if name == "monotonic" { "1" } else { "7" };
                (f.len() == 3 && (f[0] == name || f[0] == id))
                    .then(|| (f[1].parse().unwrap_or(0), f[2].parse().unwrap_or(0)))
            })
            .unwrap_or((0, 0))
    };
    let now = |c: ClockId, (s, ns): (i64, i64)| -> pb::Timespec {
        let t = clock_gettime(c).unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
        let mut sec = t.tv_sec() + s;
        let mut nsec = t.tv_nsec() + ns;
        if nsec >= 1_000_000_000 {
            nsec -= 1_000_000_000;
            sec += 1;
        }
        pb::Timespec {
            tv_sec: sec as u64,
            tv_nsec: nsec as u64,
        }
    };
    Ok(pb::TimensEntry {
        monotonic: now(ClockId::CLOCK_MONOTONIC, off("monotonic")),
        boottime: now(ClockId::CLOCK_BOOTTIME, off("boottime")),
    })
}

/// A cgroup namespace is restored by unsharing it in the root task once in its cgroup: the
/// namespace's root must be that cgroup (the task sees itself at "/" everywhere).
fn check_cgroup_root(pid: i32) -> Result<()> {
    let p = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&p).map_err(|e| DumpError::io("cgroupns", pid, &p, e))?;
    for l in text.lines() {
        let path = l.splitn(3, ':').nth(2).unwrap_or("/");
        if path != "/" {
            return Err(DumpError::new(
                "cgroupns",
                pid,
                Some(libc::EOPNOTSUPP),
                format!(
                    "the task's cgroup namespace is rooted above its cgroup ({l:?} seen from \
                     inside): only a namespace rooted at the task's cgroup is restored"
                ),
            ));
        }
    }
    Ok(())
}

/// Collects the owned namespaces' state (tree frozen) and queues their images; `ids` is the
/// root's `task_kobj_ids_entry` (the namespaces' CRIU ids).
pub fn write(dir: &mut ImageDir, root: i32, owned: u64, ids: &pb::TaskKobjIdsEntry) -> Result<()> {
    let mut kinds: Vec<&str> = Vec::new();
    for (k, f) in [
        ("uts", CLONE_NEWUTS),
        ("ipc", CLONE_NEWIPC),
        ("net", CLONE_NEWNET),
        ("cgroup", CLONE_NEWCGROUP),
    ] {
        if owned & f != 0 {
            kinds.push(k);
        }
    }
    type State = (
        Option<pb::UtsnsEntry>,
        Option<pb::IpcVarEntry>,
        Option<(pb::NetnsEntry, Vec<pb::NetDeviceEntry>)>,
    );
    let state: State = in_ns(root, &kinds, || {
        let uts = (owned & CLONE_NEWUTS != 0).then(|| pb::UtsnsEntry {
            nodename: sysctl("kernel/hostname").unwrap_or_default(),
            domainname: sysctl("kernel/domainname").unwrap_or_default(),
        });
        let ipc = (owned & CLONE_NEWIPC != 0)
            .then(|| ipc_state(root))
            .transpose()?;
        let net = (owned & CLONE_NEWNET != 0)
            .then(|| net_state(root))
            .transpose()?;
        if owned & CLONE_NEWCGROUP != 0 {
            check_cgroup_root(root)?;
        }
        Ok((uts, ipc, net))
    })?;
    let id = |v: Option<u32>, k: &str| {
        v.ok_or_else(|| DumpError::new("namespaces", root, None, format!("no {k} ns id")))
    };
    if let Some(e) = state.0 {
        let n = id(ids.uts_ns_id, "uts")?;
        dir.spool(&format!("utsns-{n}.img"), move || {
            Ok(file_bytes(ImageKind::Utsns, &e))
        });
    }
    if let Some(e) = state.1 {
        let n = id(ids.ipc_ns_id, "ipc")?;
        dir.spool(&format!("ipcns-var-{n}.img"), move || {
            Ok(file_bytes(ImageKind::IpcVar, &e))
        });
    }
    if let Some((netns, devs)) = state.2 {
        let n = id(ids.net_ns_id, "net")?;
        dir.spool(&format!("netns-{n}.img"), move || {
            Ok(file_bytes(ImageKind::Netns, &netns))
        });
        dir.spool(&format!("netdev-{n}.img"), move || {
            Ok(stasis_images::framing::encode_entries(
                ImageKind::Netdev,
                &devs,
            ))
        });
    }
    if owned & CLONE_NEWTIME != 0 {
        let n = id(ids.time_ns_id, "time")?;
        let e = time_state(root)?;
        dir.spool(&format!("timens-{n}.img"), move || {
            Ok(file_bytes(ImageKind::Timens, &e))
        });
    }
    Ok(())
}

/// The dumping thread inside the tree's network namespace (sock_diag answers for the
/// namespace of the socket asking) until dropped, when it is back in its own.
pub struct NetnsVisit {
    home: std::fs::File,
}

impl NetnsVisit {
    pub fn enter(pid: i32) -> Result<Self> {
        let open =
            |p: String| std::fs::File::open(&p).map_err(|e| DumpError::io("netns", pid, &p, e));
        let home = open("/proc/thread-self/ns/net".into())?;
        let theirs = open(format!("/proc/{pid}/ns/net"))?;
        nix::sched::setns(&theirs, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
            DumpError::new(
                "netns",
                pid,
                Some(e as i32),
                "enter the tree's network namespace",
            )
        })?;
        Ok(NetnsVisit { home })
    }
}

impl Drop for NetnsVisit {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET) {
            tracing::error!("back to the dumper's network namespace: {e}");
        }
    }
}

/// The pids the file images hold, in a tree with its own pid namespace: owners (`fown`, read
/// with F_GETOWN_EX in the dumper's namespace) become the tree's numbers; terminals (their
/// session and foreground group are the dumper's numbers too) are refused by name.
pub fn files_in_pidns(
    files: &mut super::collect_files::Files,
    pids: &PidMap,
    root: i32,
) -> Result<()> {
    if !files.kinds.tty.is_empty() {
        return Err(DumpError::new(
            "files",
            root,
            Some(libc::EOPNOTSUPP),
            "a terminal in a tree with its own pid namespace is not dumped yet",
        ));
    }
    for e in &mut files.entries {
        for fown in fowns(e) {
            fown.pid = pids.inside("a file's owner", root, fown.pid as i32)? as u32;
        }
    }
    Ok(())
}

/// The owners (`fown`) an entry holds, of whichever kind it is.
fn fowns(e: &mut stasis_images::pb::FileEntry) -> Vec<&mut stasis_images::pb::FownEntry> {
    let mut out = Vec::new();
    macro_rules! take {
        ($($f:ident),*) => {
            $(if let Some(x) = e.$f.as_mut() {
                out.push(&mut x.fown);
            })*
        };
    }
    take!(
        reg, isk, psk, nlsk, efd, epfd, sgfd, tfd, ify, ffy, ext, usk, pipe, tty, memfd, bpf, pidfd
    );
    out
}
