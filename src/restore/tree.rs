//! Creating the process tree: each task is forked by its parent with its original PID
//! (`clone3` + `set_tid`), sets up its session, group, descriptors, cwd, root and umask, then
//! enters the restorer blob, which reports to the restorer and waits for its go-ahead.
//!
//! ```text
//! restorer ──clone3(pid=root)──▶ root: setsid? setpgid? ──clone3(pid=child)──▶ child ...
//!                                      dup2 fds, chdir, umask, join its group
//!                                      enter the restorer blob (super::blob); errors before
//!                                      that: a record {pid, errno, step} on the ready pipe
//! zombie: forked like the others, exits at once with its recorded status.
//! ```
//! Every task has `PR_SET_PDEATHSIG(SIGKILL)` until the jump into the blob (after its premaps
//! and page fills), so a dying parent takes its half-restored children with it; in the blob,
//! EOF on go_fd (restorer gone) ends it.
//!
//! `--shell-job` (the root's session, maybe its group, were outside the dump): the root stays
//! in the restorer's session (no setsid) and so keeps the restorer's controlling terminal,
//! which replaces the dumped one (`files::tty`); the leader of the group that was in the
//! foreground of the dumped terminal makes its group the foreground one of the new terminal.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use super::memory::TaskMemory;
use super::open_files::{keep_only, Opened};
use super::plan::{Plan, TASK_DEAD};
use super::shared_fdt::Group;
use super::task_fs::fs_dirs;
use crate::sys::clone3::{fork_with_pid, Forked};
use crate::sys::fds::{dup2_raw, write_raw};
use crate::sys::process::{exit_like, exit_now, set_pdeathsig};

/// Size of one record on the ready pipe: pid i32, errno i32, step (NUL padded).
pub const RECORD: usize = 48;

/// The control pipes shared by every task (parked descriptors).
#[derive(Debug, Clone, Copy)]
pub struct Ctl {
    /// A task that fails before entering the blob writes its error record here.
    pub ready_w: RawFd,
    /// Tasks block reading this until released (the blob's `go_fd`).
    pub hold_r: RawFd,
    /// The blob writes its StatusRecord here.
    pub status_w: RawFd,
    /// The restore's bound (`--timeout`): waits in the tasks give up then.
    pub deadline: std::time::Instant,
    /// `--join-ns`: parked namespace descriptors and their CLONE_NEW* flag, entered by the
    /// root task ([`super::join_ns`]).
    pub join_ns: [Option<(RawFd, libc::c_int)>; super::join_ns::MAX],
}

/// Encodes a record.
pub fn record(pid: i32, errno: i32, step: &str) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[0..4].copy_from_slice(&pid.to_le_bytes());
    r[4..8].copy_from_slice(&errno.to_le_bytes());
    let s = step.as_bytes();
    let n = s.len().min(RECORD - 9);
    r[8..8 + n].copy_from_slice(&s[..n]);
    r
}

/// Decodes a record: (pid, errno, step).
pub fn parse_record(r: &[u8; RECORD]) -> (i32, i32, String) {
    let pid = i32::from_le_bytes([r[0], r[1], r[2], r[3]]);
    let errno = i32::from_le_bytes([r[4], r[5], r[6], r[7]]);
    let step = r[8..]
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    (pid, errno, step)
}

/// Forks the task `idx` with its PID; in the parent returns the PID, the child never returns.
pub fn spawn(
    plan: &Plan,
    idx: usize,
    clone_flags: u64,
    opened: &Opened,
    ctl: Ctl,
    group: Option<&Group>,
    parent_mem: Option<&TaskMemory>,
) -> Result<i32, Errno> {
    let pid = plan.tasks[idx].pid;
    // clone3 takes no exit signal with CLONE_PARENT: the child inherits ours, which our
    // parent, now its parent too, expects.
    let exit_signal = if clone_flags & libc::CLONE_PARENT as u64 != 0 {
        0
    } else {
        libc::SIGCHLD as u64
    };
    match fork_with_pid(pid, clone_flags, exit_signal)? {
        Forked::Parent(p) => Ok(p),
        Forked::Child => {
            let code = match run_task(plan, idx, opened, ctl, group, parent_mem) {
                Ok(()) => 0,
                Err((step, e)) => {
                    let _ = write_raw(ctl.ready_w, &record(pid, e as i32, step));
                    1
                }
            };
            exit_now(code)
        }
    }
}

/// Runs in the forked task `idx`. `group`: the shared descriptor table it was forked into
/// with `CLONE_FILES` (it is a member, see [`super::shared_fdt`]). `parent_mem`: the parent's
/// memory, prepared before this task was forked (its premaps are mapped here too).
fn run_task(
    plan: &Plan,
    idx: usize,
    opened: &Opened,
    tree_ctl: Ctl,
    group: Option<&Group>,
    parent_mem: Option<&TaskMemory>,
) -> Result<(), (&'static str, Errno)> {
    let t = &plan.tasks[idx];
    // A member of a shared table has status and go descriptors of its own.
    let member = group.and_then(|g| g.member(t.pid).map(|m| (g, m)));
    let ctl = match member {
        Some((_, m)) => Ctl {
            status_w: m.status_w,
            hold_r: m.go_r,
            ..tree_ctl
        },
        None => tree_ctl,
    };
    set_pdeathsig(libc::SIGKILL).map_err(|e| ("set pdeathsig", e))?;
    if idx == 0 {
        for &(fd, flag) in ctl.join_ns.iter().flatten() {
            // SAFETY: `fd` is a parked descriptor of a namespace file, open in this task.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            nix::sched::setns(fd, nix::sched::CloneFlags::from_bits_retain(flag))
                .map_err(|e| ("setns (--join-ns)", e))?;
        }
    }
    if t.state == TASK_DEAD {
        // Its name, as `ps` shows the zombie (not the restorer's).
        if let Ok(name) = std::ffi::CString::new(t.comm.as_bytes()) {
            let _ = nix::sys::prctl::set_name(&name);
        }
        exit_like(t.exit_code);
    }
    if let Some(adj) = t.oom_score_adj {
        set_oom_score_adj(adj)?;
    }
    if let Some(uid) = t.loginuid {
        set_loginuid(uid)?;
    }
    if idx == 0 {
        // Before any child: they are born in it.
        super::namespaces::root_cgroup_ns(plan)?;
    }
    if t.sid == t.pid {
        nix::unistd::setsid().map_err(|e| ("setsid", e))?;
        // Its terminal, before its children are forked (they inherit it).
        super::ctty::take(&opened.ctty, t)?;
    }
    if t.pgid == t.pid && t.sid != t.pid {
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| ("setpgid", e))?;
    }
    super::ctty::foreground(&opened.ctty, t)?;
    super::open_files::set_owners(opened, t.pid, t.pgid).map_err(|e| ("set a file's owner", e))?;
    // The table this task owns, when children share it.
    let owned = match member {
        Some(_) => None,
        None => Group::open(plan, idx, ctl.hold_r, opened.base)?,
    };
    let children_group = owned.as_ref().or(group);
    // The memory before the children when one of them inherits part of it: they get the
    // filled premaps (copy-on-write). Otherwise after (the children fill theirs meanwhile).
    // A member of a shared table prepares it later, once the table is in place (its
    // temporary descriptors would race with the owner's).
    let mut mem = if member.is_none() && plan.inherits_from(idx) {
        Some(super::memory::prepare(plan, idx, opened, parent_mem)?)
    } else {
        None
    };
    for &child in &t.children {
        let ci = plan.index(child).ok_or(("find child", Errno::ESRCH))?;
        if plan.shares_parent_fds(&plan.tasks[ci]) {
            spawn(
                plan,
                ci,
                libc::CLONE_FILES as u64,
                opened,
                tree_ctl,
                children_group,
                mem.as_ref(),
            )
            .map_err(|e| ("clone3 child sharing the descriptor table", e))?;
        } else {
            spawn(plan, ci, 0, opened, tree_ctl, None, mem.as_ref())
                .map_err(|e| ("clone3 child", e))?;
        }
    }
    // The descriptors this task keeps, when it alone decides them (no shared table).
    let kept = match (member, &owned) {
        // The owner puts the shared table in place.
        (Some((g, _)), _) => {
            g.member_wait_table(ctl.deadline)?;
            None
        }
        (None, Some(g)) => {
            g.owner_wait_members(ctl.deadline)?;
            let mut extra: Vec<RawFd> = g.keep().collect();
            for pid in g.member_pids() {
                if let Some(m) = plan.index(pid).map(|i| &plan.tasks[i]) {
                    extra.extend(
                        fs_dirs(opened, m)
                            .iter()
                            .flat_map(|&(r, c)| [r, c])
                            .flatten(),
                    );
                }
            }
            put_fds(t, opened, ctl, &extra)?;
            g.owner_table_ready()?;
            None
        }
        (None, None) => Some(put_fds(t, opened, ctl, &[])?),
    };
    // A shell job that was the foreground of its terminal is again, on the new one.
    for &(id, pgrp) in &opened.shell_ttys {
        if pgrp == t.pid && t.pgid == t.pid {
            if let Some(fd) = t.fds.iter().find(|f| f.id == id) {
                // Only when the restorer's terminal is its controlling one (then ours too).
                crate::sys::tty::set_foreground(fd.fd as RawFd, pgrp)
                    .map_err(|e| ("make the job the terminal's foreground group", e))?;
            }
        }
    }
    // Its file locks, through its descriptors now in place. After the other descriptors are
    // closed: closing any descriptor of a file drops the task's POSIX locks on it.
    for l in plan.file_locks.iter().filter(|l| l.pid == t.pid) {
        crate::sys::fds::take_lock(l.fd, l.flag, l.r#type as i32, l.start, l.len)
            .map_err(|e| ("take a file lock", e))?;
    }
    if let Some(fs) = &t.fs {
        if let Some(m) = fs.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
        }
    }
    write_raw(ctl.ready_w, &record(t.pid, 0, "ready")).map_err(|e| ("report ready", e))?;
    join_group(plan, t, ctl.deadline)?;
    let mut targets: Vec<RawFd> = t.fds.iter().map(|f| f.fd as RawFd).collect();
    if let Some(g) = &owned {
        // Every member is READY (its temporary descriptors closed) before the owner lists
        // what its blob closes; the members' own status/go descriptors stay theirs.
        g.owner_forward_status(ctl.status_w, ctl.deadline)?;
        targets.extend(g.members_fds());
    }
    // A member closes nothing of the shared table (its owner does).
    let others = match (&kept, member) {
        (Some(keep), _) => super::blob::Others::Known(keep),
        (None, Some(_)) => super::blob::Others::Keep,
        (None, None) => super::blob::Others::Listed,
    };
    let mem = match mem.take() {
        Some(m) => m,
        None => super::memory::prepare(plan, idx, opened, parent_mem)?,
    };
    // The parent death signal stays until the jump into the blob (blob::enter clears it).
    match super::blob::enter(
        plan,
        t,
        opened,
        (ctl.status_w, ctl.hold_r),
        &targets,
        others,
        mem,
    ) {
        Err(e) => Err(e),
    }
}

/// Puts the task's image descriptors in place (`dup2` of the parked descriptions) and
/// closes every other descriptor but the parked ones the task still needs and `extra`;
/// returns the descriptors kept.
fn put_fds(
    t: &super::plan::TaskPlan,
    opened: &Opened,
    ctl: Ctl,
    extra: &[RawFd],
) -> Result<BTreeSet<RawFd>, (&'static str, Errno)> {
    let mut keep: BTreeSet<RawFd> = BTreeSet::new();
    for fd in &t.fds {
        let own = if let Some((path, flags, pos)) = opened.in_task.get(&fd.id) {
            // A /proc file of the tree: this task (or its parent) exists now; or /dev/tty,
            // its session's terminal now.
            let own = nix::fcntl::open(
                path.as_str(),
                OFlag::from_bits_truncate(*flags as i32 & !libc::O_CREAT) | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| ("open a /proc file of the tree", e))?;
            // (`/dev/tty` cannot seek.)
            if *pos != 0 {
                nix::unistd::lseek(&own, *pos as i64, nix::unistd::Whence::SeekSet)
                    .map_err(|e| ("seek a /proc file of the tree", e))?;
            }
            Some(own)
        } else if let Some(&(pid, flags)) = opened.pidfds.get(&fd.id) {
            Some(open_pidfd(pid, flags, ctl.deadline)?)
        } else {
            None
        };
        if let Some(own) = own {
            // Opened right at its number? Then move it away first (dup2 onto itself would
            // leave the close-on-exec flag as it is and the drop would close it).
            let own = if own.as_raw_fd() == fd.fd as RawFd {
                let moved = own
                    .try_clone()
                    .map_err(|_| ("dup a descriptor opened in the task", Errno::EMFILE))?;
                drop(own);
                moved
            } else {
                own
            };
            dup2_raw(own.as_raw_fd(), fd.fd as RawFd, fd.flags & 1 != 0)
                .map_err(|e| ("dup2", e))?;
            keep.insert(fd.fd as RawFd);
            continue;
        }
        let &src = opened.desc.get(&fd.id).ok_or(("find file", Errno::EBADF))?;
        dup2_raw(src, fd.fd as RawFd, fd.flags & 1 != 0).map_err(|e| ("dup2", e))?;
        keep.insert(fd.fd as RawFd);
    }
    keep.extend(opened.maps.values().copied());
    keep.extend(opened.shmem.values().copied());
    keep.extend(opened.pages.values().copied());
    keep.insert(ctl.ready_w);
    keep.insert(ctl.hold_r);
    keep.insert(ctl.status_w);
    keep.extend(extra.iter().copied());
    if let Some(l) = opened.lazy {
        keep.extend([l.sock, l.token_r, l.token_w]);
    }
    let dirs = fs_dirs(opened, t);
    keep.extend(dirs.iter().flat_map(|&(r, c)| [r, c]).flatten());
    keep_only(&keep).map_err(|e| ("close descriptors", e))?;
    Ok(keep)
}

/// A pidfd of task `pid` of the tree, opened once that task exists (every task is forked
/// by its parent before the parent's own descriptors are put in place, so it comes).
fn open_pidfd(
    pid: i32,
    flags: u32,
    deadline: std::time::Instant,
) -> Result<std::os::fd::OwnedFd, (&'static str, Errno)> {
    loop {
        let e = match crate::sys::fdkinds::pidfd_open_flags(pid, flags & libc::O_NONBLOCK as u32) {
            Ok(fd) => return Ok(fd),
            Err(e) => e,
        };
        if e != Errno::ESRCH || std::time::Instant::now() > deadline {
            return Err(("open a pidfd of a task of the tree", e));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Writes `/proc/self/oom_score_adj` (inherited by the children forked after it). Lowering
/// it below what the restorer has needs CAP_SYS_RESOURCE: the error names the value.
fn set_oom_score_adj(adj: i32) -> Result<(), (&'static str, Errno)> {
    std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        if errno == Errno::EACCES {
            (
                "set oom_score_adj below the restorer's (needs CAP_SYS_RESOURCE)",
                errno,
            )
        } else {
            ("set oom_score_adj", errno)
        }
    })
}

/// Writes `/proc/self/loginuid` when it differs from the recorded one (CRIU treats it as
/// critical too); changing a set one needs CAP_AUDIT_CONTROL.
fn set_loginuid(uid: u32) -> Result<(), (&'static str, Errno)> {
    let now = std::fs::read_to_string("/proc/self/loginuid").unwrap_or_default();
    if now.trim().parse::<u32>() == Ok(uid) {
        return Ok(());
    }
    std::fs::write("/proc/self/loginuid", uid.to_string()).map_err(|e| {
        let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
        ("set loginuid (a set one needs CAP_AUDIT_CONTROL)", errno)
    })
}

/// Joins a process group led by another task (waits, until the restore's deadline, for the
/// leader to exist: it may be a task created later in the tree; `checks::groups` made sure
/// it is one).
fn join_group(
    plan: &Plan,
    t: &super::plan::TaskPlan,
    deadline: std::time::Instant,
) -> Result<(), (&'static str, Errno)> {
    let root = &plan.tasks[0];
    let outside = plan.shell_job && root.pgid != root.pid && t.pgid == root.pgid;
    if t.pgid == t.pid || outside || nix::unistd::getpgrp().as_raw() == t.pgid {
        return Ok(());
    }
    loop {
        match nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(t.pgid)) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(("join process group", e))
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    }
}
