//! The restore engine: recreate a process tree from CRIU-compatible images (written by stasis
//! or by CRIU) with its PIDs, memory, threads, files and signals.
//!
//! ```text
//! plan::prepare   read + cross-check every image (checks.rs)  (nothing created yet)
//! validate        PIDs free, files present and unchanged
//! open_files::open_all open file descriptions, pipes, memfds, ghost files (parked fds)
//! tree::spawn     clone3(set_tid) the tree; each task: session, group, fds, cwd, umask;
//!                 zombies exit with their status; READY records on a pipe
//! blob            per live task, in the task: premap + fill memory, build the restorer
//!                 blob's arguments, enter it; it reports READY and waits for go
//! release         one byte per task on go_fd: every blob rt_sigreturns, the tree runs
//! ```
//! Any failure before release kills every task created so far ([`TreeGuard`]).

pub(crate) mod blob;
pub(crate) mod blob_args;
pub(crate) mod blob_core;
#[cfg(test)]
mod blob_tests;
pub(crate) mod checks;
pub(crate) mod cow;
pub(crate) mod ctty;
pub(crate) mod error;
pub mod fuzzing;
pub(crate) mod img;
pub mod inherit;
pub(crate) mod ip_dump;
pub mod join_ns;
pub mod lazy;
pub(crate) mod memory;
pub(crate) mod model;
pub mod mounts;
pub(crate) mod namespaces;
pub(crate) mod open_files;
pub(crate) mod options;
pub mod plan;
pub(crate) mod premap;
pub(crate) mod root;
pub mod shared_fdt;
pub(crate) mod task_fs;
pub(crate) mod tree;
pub(crate) mod validate;
pub mod vdso;
pub(crate) mod xsave;

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use error::RestoreError;
pub use options::RestoreOptions;

use crate::action_scripts::Action;
use crate::sys::proc_tasks::alive;
use plan::TASK_DEAD;

/// The bound of a restore without `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A restored, running tree.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    /// PID of the root task (a child of the calling process).
    pub root: i32,
}

/// Kills the tasks of a failed restore (root is our child; the rest are found by ancestry).
struct TreeGuard {
    root: Option<i32>,
    pids: Vec<i32>,
    armed: bool,
}

impl TreeGuard {
    fn kill_all(&mut self) {
        let me = std::process::id() as i32;
        let Some(root) = self.root else { return };
        // Kill the descendants while the root still holds the tree together (once it is gone
        // they are reparented and no longer recognisable), until no new one shows up.
        let mut victims: Vec<i32> = Vec::new();
        for _ in 0..50 {
            let found: Vec<i32> = self
                .pids
                .iter()
                .copied()
                .filter(|&p| p != root && alive(p) && descends_from(p, root, me))
                .collect();
            if found.is_empty() {
                break;
            }
            for p in found {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                if !victims.contains(&p) {
                    victims.push(p);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(root), None);
        // Wait (bounded) until they are gone, so callers see no leftovers.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && victims.iter().any(|&p| alive(p)) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if self.armed {
            self.kill_all();
        }
    }
}

/// Whether `pid` is traced by `me` or has `root` among its ancestors.
fn descends_from(pid: i32, root: i32, me: i32) -> bool {
    let status = |p: i32, key: &str| -> Option<i32> {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()?
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].trim().parse().ok())
    };
    if status(pid, "TracerPid:") == Some(me) {
        return true;
    }
    let mut p = pid;
    for _ in 0..64 {
        match status(p, "PPid:") {
            Some(pp) if pp == root => return true,
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

fn sys0(step: &str, e: nix::errno::Errno) -> RestoreError {
    RestoreError::sys(step.to_string(), 0, e)
}

/// Restores the tree in `opts.images_dir`; returns once every task runs.
///
/// The caller must be single-threaded (tasks are forked from it).
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    opts.scripts
        .run(Action::PreRestore, None)
        .map_err(|e| RestoreError::Script(e.to_string()))?;
    check_tcp_close(&opts.images_dir, opts.tcp_close)?;
    // --lazy-pages: no daemon, no restore (before anything is read or started).
    let lazy_sock = opts.lazy_pages.as_deref().map(lazy::connect).transpose()?;
    // One bound for every step that waits (tasks ready, zombies, group joins in the tasks).
    let deadline = t0 + opts.timeout.unwrap_or(DEFAULT_TIMEOUT);
    // Packed pages are decoded and checked completely before the plan, so that a damaged
    // stream or a wrong key stops the restore before any task exists.
    let view = crate::pages::convert::PlainView::of(&opts.images_dir, opts.encrypt_key.as_deref())?;
    let mut plan = plan::prepare(
        view.dir(),
        opts.shell_job,
        opts.root.as_deref().unwrap_or(std::path::Path::new("/")),
    )?;
    // The root's own mount namespace, rebuilt before any file is checked or opened: from
    // here the restorer (and the tasks it forks) are in it, and paths resolve in its tree.
    let mnt_ns = match plan.ns.mnt {
        Some(id) => {
            let ns = mounts::build(view.dir(), id, opts.root.as_deref(), &opts.mounts)?;
            plan.root = ns.root();
            Some(ns)
        }
        None => None,
    };
    if lazy_sock.is_none() {
        if let Some(t) = plan.tasks.iter().find(|t| t.pages.lazy_only > 0) {
            return Err(RestoreError::Unsupported(format!(
                "task {}: {} pages were dumped with --lazy-pages (they are served by the dump, \
                 not in the images): restore with --lazy-pages and a lazy-pages daemon \
                 connected to the dump's page server",
                t.pid, t.pages.lazy_only
            )));
        }
    }
    // A pid namespace of the tree's own is new: its PIDs are free.
    let own_pidns = plan.ns.mask & namespaces::CLONE_NEWPID != 0;
    if !own_pidns {
        validate::pids_free(&plan)?;
    }
    validate::files_unchanged_except(&plan, &inherit::inherited_ids(&plan, &opts.inherit_fds))?;
    tracing::info!(
        tasks = plan.tasks.len(),
        "images read and checked in {:?}",
        t0.elapsed()
    );
    let kinds_opts = crate::files::RestoreOptions {
        tcp_established: opts.tcp_established,
        ext_unix_sk: opts.ext_unix_sk,
        shell_job: opts.shell_job,
        tcp_close: opts.tcp_close,
    };
    // The tree's uts/ipc/net/time namespaces, entered before any socket is made.
    let entered = namespaces::enter(&plan.ns)?;
    let mut opened = open_files::open_all(&plan, kinds_opts, &opts.inherit_fds)?;
    if let Some(s) = &lazy_sock {
        lazy::prepare(s, &plan, &mut opened)?;
    }
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys0("pipe", e))?;
    let (hold_r, hold_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys0("pipe", e))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys0("pipe", e))?;
    // --join-ns: the root task enters these namespaces before anything else.
    let mut join_ns = [None; join_ns::MAX];
    for (slot, j) in join_ns.iter_mut().zip(&opts.join_ns) {
        let fd = j.open().map_err(|e| {
            RestoreError::sys(format!("open --join-ns {}:{}", j.kind, j.path), 0, e)
        })?;
        *slot = Some((opened.park(fd)?, j.flag.bits()));
    }
    let ctl = tree::Ctl {
        ready_w: opened.park(ready_w)?,
        hold_r: opened.park(hold_r)?,
        status_w: opened.park(status_w)?,
        deadline,
        join_ns,
    };
    let mut guard = TreeGuard {
        root: None,
        // In a pid namespace of its own, killing the root (its init) kills every task.
        pids: if own_pidns {
            Vec::new()
        } else {
            plan.all_ids()
        },
        armed: true,
    };
    // --restore-sibling: the root becomes a child of our parent (CLONE_PARENT).
    let mut root_flags = if opts.sibling {
        libc::CLONE_PARENT as u64
    } else {
        0
    };
    if own_pidns {
        root_flags |= namespaces::CLONE_NEWPID;
    }
    let root = tree::spawn(&plan, 0, root_flags, &opened, ctl, None, None).map_err(|e| {
        RestoreError::sys(format!("clone3 root with pid {}", plan.tasks[0].pid), 0, e)
    })?;
    guard.root = Some(root);
    entered.leave()?;
    // Our copies of the task-side ends must go, so EOF means "all tasks gone".
    opened.forget(&[ctl.ready_w, ctl.hold_r, ctl.status_w]);
    let alive = plan.tasks.iter().filter(|t| t.state != TASK_DEAD).count();
    wait_tasks(&ready_r, &status_r, alive, root, deadline)?;
    // The tasks' PIDs as the restorer sees them (other numbers in their own pid namespace).
    let host = namespaces::HostPids::of(&plan, root)?;
    open_files::set_thread_owners(&opened, &plan, &|p| host.get(p))?;
    tracing::info!(
        "every task is in its restorer blob, ready, after {:?}",
        t0.elapsed()
    );
    // cgroup.img (CRIU's soft mode): into the recorded cgroups where they exist.
    let cg_sets: Vec<(i32, u32)> = plan
        .tasks
        .iter()
        .filter_map(|t| {
            let c = &t.threads.first()?.core;
            let set = c.thread_core.as_ref().and_then(|x| x.cg_set);
            Some((
                host.get(t.pid),
                set.or(c.tc.as_ref().and_then(|x| x.cg_set))?,
            ))
        })
        .collect();
    if !opts.cgroups_ignore {
        crate::cgroup::restore_dir(&plan.dir, &cg_sets).map_err(|e| RestoreError::Image {
            path: plan.dir.join("cgroup.img"),
            index: 0,
            what: e.to_string(),
        })?;
    }
    for t in plan.tasks.iter().filter(|t| t.state == TASK_DEAD) {
        wait_zombie(host.get(t.pid), deadline)?;
    }
    // CRIU: a failing post-restore script kills the tree; pre-resume's failure is logged.
    opts.scripts
        .run(Action::PostRestore, Some(root))
        .map_err(|e| RestoreError::Script(e.to_string()))?;
    let _ = opts.scripts.run(Action::PreResume, Some(root));
    // The pidfile before the release: failing to write it is a failure of the restore,
    // which then kills the tree (guard) instead of leaving it running unaccounted for.
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{root}")).map_err(|e| RestoreError::Io {
            step: "write pidfile",
            path: p.clone(),
            source: e,
        })?;
    }
    if opts.leave_stopped {
        // Queued while each task waits in its blob: it stops before its own code runs.
        for t in plan.tasks.iter().filter(|t| t.state != TASK_DEAD) {
            kill(Pid::from_raw(host.get(t.pid)), Signal::SIGSTOP)
                .map_err(|e| sys0("leave stopped", e))?;
        }
    }
    if let Some(ns) = &mnt_ns {
        ns.detach_host()?;
    }
    // Release: one byte per task on go_fd.
    let go = vec![b'g'; alive];
    let mut off = 0;
    while off < go.len() {
        off += nix::unistd::write(&hold_w, &go[off..]).map_err(|e| sys0("release tasks", e))?;
    }
    drop(hold_w);
    // Back in the host's mount namespace (the tasks stay in theirs).
    drop(mnt_ns);
    for t in plan.tasks.iter().filter(|t| t.state == plan::TASK_STOPPED) {
        let _ = kill(Pid::from_raw(host.get(t.pid)), Signal::SIGSTOP);
    }
    guard.armed = false;
    if let Some(s) = &lazy_sock {
        // The tree runs (its faults are served already); a daemon gone now is the daemon's
        // failure, reported by it.
        if let Err(e) = lazy::finish(s) {
            tracing::warn!("{e}");
        }
    }
    tracing::info!(root, "restored in {:?}", t0.elapsed());
    let _ = opts.scripts.run(Action::PostResume, Some(root));
    Ok(Restored { root })
}

/// CRIU refuses to restore a `--tcp-close` dump (marked in `inventory.img`) without
/// `--tcp-close`: its connections have no state to restore.
fn check_tcp_close(dir: &std::path::Path, tcp_close: bool) -> Result<(), RestoreError> {
    if tcp_close {
        return Ok(());
    }
    let Some(mut f) = img::ImageFile::open_opt(dir, "inventory.img")? else {
        return Ok(());
    };
    let inv = f.next_msg::<stasis_images::pb::InventoryEntry>()?;
    if inv.and_then(|i| i.tcp_close) == Some(true) {
        return Err(RestoreError::Unsupported(
            "the images were dumped with --tcp-close: restore them with --tcp-close".into(),
        ));
    }
    Ok(())
}

/// Waits until the image's dead task `pid` is a zombie. It exits as soon as it is forked, but
/// on a loaded machine it may not be through its exit yet (state R or D) when every live task
/// is ready; gone (reaped) or not a zombie by `deadline` is an error.
fn wait_zombie(pid: i32, deadline: Instant) -> Result<(), RestoreError> {
    loop {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = st
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?");
        if state == "Z" {
            return Ok(());
        }
        if matches!(state, "?" | "X") || Instant::now() >= deadline {
            return Err(RestoreError::TaskDied {
                pid,
                step: "zombie".into(),
                status: format!("state {state}, expected a zombie"),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `n` tasks report READY from their restorer blob (StatusRecord on `status_r`),
/// failing on the first error record of a task (`ready_r`) or of a blob, or if the root dies.
fn wait_tasks(
    ready_r: &OwnedFd,
    status_r: &OwnedFd,
    n: usize,
    root: i32,
    deadline: Instant,
) -> Result<(), RestoreError> {
    use blob_args::abi::{StatusRecord, STAGE_READY};
    let mut got = 0;
    let mut sbuf: Vec<u8> = Vec::new();
    let rec_len = std::mem::size_of::<StatusRecord>();
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RestoreError::Timeout(format!(
                "restore of the tasks ({got} of {n} ready)"
            )));
        }
        let mut fds = [
            PollFd::new(ready_r.as_fd(), PollFlags::POLLIN),
            PollFd::new(status_r.as_fd(), PollFlags::POLLIN),
        ];
        let ms =
            PollTimeout::try_from(left.as_millis().min(100) as i32).unwrap_or(PollTimeout::ZERO);
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {
                if let Ok(st @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
                    waitpid(Pid::from_raw(root), Some(WaitPidFlag::WNOHANG))
                {
                    check_task_records(ready_r)?;
                    return Err(RestoreError::TaskDied {
                        pid: root,
                        step: "restore".into(),
                        status: format!("{st:?}"),
                    });
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => return Err(sys0("poll", e)),
        }
        let ready_ev = fds[0].revents().unwrap_or(PollFlags::empty());
        let status_ev = fds[1].revents().unwrap_or(PollFlags::empty());
        if ready_ev.intersects(PollFlags::POLLIN) {
            check_task_records(ready_r)?;
        }
        if status_ev.intersects(PollFlags::POLLIN) {
            let mut chunk = [0u8; 24 * 16];
            let r = nix::unistd::read(status_r.as_fd(), &mut chunk)
                .map_err(|e| sys0("read status pipe", e))?;
            sbuf.extend_from_slice(&chunk[..r]);
            while sbuf.len() >= rec_len {
                let rec: StatusRecord = crate::sys::pod::read_pod(&sbuf[..rec_len])
                    .ok_or_else(|| sys0("decode a status record", nix::errno::Errno::EINVAL))?;
                sbuf.drain(..rec_len);
                if rec.stage != STAGE_READY {
                    return Err(RestoreError::Sys {
                        step: format!(
                            "restorer blob: {} (entry {})",
                            blob_step_name(rec.step),
                            rec.index
                        ),
                        pid: rec.pid as i32,
                        errno: nix::errno::Errno::from_raw(rec.code),
                    });
                }
                if rec.code as u32 & blob_args::abi::STATUS_AREA_KEPT != 0 {
                    tracing::warn!(pid = rec.pid, "the restorer area stays mapped in the task");
                }
                got += 1;
            }
        } else if status_ev.intersects(PollFlags::POLLHUP)
            && !ready_ev.intersects(PollFlags::POLLIN)
        {
            check_task_records(ready_r)?;
            return Err(RestoreError::TaskDied {
                pid: root,
                step: "restore".into(),
                status: "every task exited".into(),
            });
        }
    }
    Ok(())
}

/// The name of a blob step (`abi::step::*`) for messages.
fn blob_step_name(s: u32) -> &'static str {
    use blob_args::abi::step::*;
    match s {
        BAD_ARGS => "check arguments",
        UNMAP => "unmap the restorer",
        SPECIAL_REMAP => "move vdso/vvar",
        VMA_MOVE => "move a premapped vma",
        VMA_MMAP => "mmap a vma",
        VMA_MADVISE => "madvise",
        VMA_PROTECT => "mprotect",
        VDSO_PATCH => "patch the vdso",
        MM_MAP => "prctl(PR_SET_MM_MAP)",
        SIGACTION => "sigaction",
        RLIMIT => "setrlimit",
        PRCTL => "prctl",
        CLONE_THREAD => "clone3 a thread",
        RSEQ => "register rseq",
        THREAD_STATE => "thread state",
        CREDS => "creds",
        SIGQUEUE => "queue a pending signal",
        POSIX_TIMER => "posix timer",
        ITIMER => "itimer",
        GO => "wait for the go-ahead",
        FRAME => "sigreturn frame",
        SIGMASK => "signal mask",
        RSEQ_DROP => "drop the inherited rseq",
        SECCOMP => "seccomp",
        VMA_MLOCK => "mlock a locked vma",
        MEMBARRIER => "membarrier registration",
        MLOCKALL => "mlockall for future mappings",
        UFFD_REGISTER => "register a lazy vma with the userfaultfd",
        _ => "unknown step",
    }
}

/// Reads pending error records of tasks (written before they enter the blob).
fn check_task_records(ready_r: &OwnedFd) -> Result<(), RestoreError> {
    let mut fds = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
    if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1)) {
        return Ok(());
    }
    let mut rec = [0u8; tree::RECORD];
    if let Ok(tree::RECORD) = nix::unistd::read(ready_r.as_fd(), &mut rec) {
        let (pid, errno, step) = tree::parse_record(&rec);
        if errno != 0 {
            return Err(RestoreError::sys(
                format!("task {pid}: {step}"),
                pid,
                nix::errno::Errno::from_raw(errno),
            ));
        }
    }
    Ok(())
}
