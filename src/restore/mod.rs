//! The restore engine: recreate a process tree from CRIU-compatible images (written by stasis
//! or by CRIU) with its PIDs, memory, threads, files and signals.
//!
//! ```text
//! plan::load      read + cross-check every image            (nothing created yet)
//! validate        PIDs free, files present and unchanged
//! files::open_all open file descriptions, pipes, memfds, ghost files (parked fds)
//! tree::spawn     clone3(set_tid) the tree; each task: session, group, fds, cwd, umask;
//!                 zombies exit with their status; READY records on a pipe
//! switch          per live task, driven by ptrace: address space, mm, signals, timers,
//!                 threads, rlimits, registers (task stays stopped)
//! release         detach every thread of every task: the tree runs
//! ```
//! Any failure before release kills every task created so far ([`TreeGuard`]).

pub mod blob_args;
pub mod blob_core;
pub mod error;
pub mod files;
pub mod img;
pub mod inject;
pub mod options;
pub mod plan;
pub mod switch;
pub mod tree;
pub mod validate;
pub mod vdso;
pub mod xsave;
pub mod xstate;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use error::RestoreError;
pub use options::RestoreOptions;

use plan::TASK_DEAD;

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
        for &p in &self.pids {
            if p == root || descends_from(p, root, me) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(root), None);
        // Wait (bounded) for the others to be gone, so callers see no leftovers.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && self.pids.iter().any(|&p| {
                std::path::Path::new(&format!("/proc/{p}")).exists()
                    && p != root
                    && descends_from(p, root, me)
            })
        {
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
    let mut plan = plan::load(&opts.images_dir)?;
    plan.shell_job = opts.shell_job;
    let root = &plan.tasks[0];
    if (root.sid != root.pid || root.pgid != root.pid) && !opts.shell_job {
        return Err(RestoreError::Unsupported(format!(
            "pstree.img: root {} is in session {} and group {} of a task outside the images; \
             restore it with --shell-job",
            root.pid, root.sid, root.pgid
        )));
    }
    validate::pids_free(&plan)?;
    validate::files_unchanged(&plan)?;
    tracing::info!(
        tasks = plan.tasks.len(),
        "images read and checked in {:?}",
        t0.elapsed()
    );
    let kinds_opts = crate::files::RestoreOptions {
        tcp_established: opts.tcp_established,
        ext_unix_sk: opts.ext_unix_sk,
        shell_job: opts.shell_job,
    };
    let mut opened = files::open_all(&plan, kinds_opts)?;
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys0("pipe", e))?;
    let (hold_r, hold_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys0("pipe", e))?;
    let ctl = tree::Ctl {
        ready_w: opened.park(ready_w)?,
        hold_r: opened.park(hold_r)?,
    };
    let mut guard = TreeGuard {
        root: None,
        pids: plan.all_ids(),
        armed: true,
    };
    let root = tree::spawn(&plan, 0, &opened, ctl).map_err(|e| {
        RestoreError::sys(format!("clone3 root with pid {}", plan.tasks[0].pid), 0, e)
    })?;
    guard.root = Some(root);
    // Our copies of the task-side ends must go, so EOF means "all tasks gone".
    close_parked(&mut opened, ctl);
    let alive = plan.tasks.iter().filter(|t| t.state != TASK_DEAD).count();
    wait_ready(
        &ready_r,
        alive,
        root,
        opts.timeout.unwrap_or(Duration::from_secs(30)),
    )?;
    tracing::info!("tree created in {:?}", t0.elapsed());

    let mut switched = Vec::new();
    for t in plan.tasks.iter().filter(|t| t.state != TASK_DEAD) {
        switched.push(switch::switch_task(&plan, t, &opened, ctl)?);
    }
    for t in plan.tasks.iter().filter(|t| t.state == TASK_DEAD) {
        let st = std::fs::read_to_string(format!("/proc/{}/stat", t.pid)).unwrap_or_default();
        let state = st
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?");
        if state != "Z" {
            return Err(RestoreError::TaskDied {
                pid: t.pid,
                step: "zombie".into(),
                status: format!("state {state}, expected a zombie"),
            });
        }
    }
    drop(hold_w);
    for s in &switched {
        s.release()?;
    }
    guard.armed = false;
    tracing::info!(root, "restored in {:?}", t0.elapsed());
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{root}")).map_err(|e| RestoreError::Io {
            step: "write pidfile",
            path: p.clone(),
            source: e,
        })?;
    }
    Ok(Restored { root })
}

fn close_parked(opened: &mut files::Opened, ctl: tree::Ctl) {
    // The restorer keeps ready_r and hold_w; ready_w/hold_r stay parked only for the tasks.
    // Closing our copies is safe: they were duplicated into the forked tasks.
    opened.forget(&[ctl.ready_w, ctl.hold_r]);
}

/// Reads `n` READY records (or the first error record) from the tasks.
fn wait_ready(
    ready_r: &OwnedFd,
    n: usize,
    root: i32,
    timeout: Duration,
) -> Result<(), RestoreError> {
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    let mut buf = Vec::new();
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RestoreError::Timeout(format!(
                "tree creation ({got} of {n} tasks ready)"
            )));
        }
        let mut fds = [PollFd::new(ready_r.as_fd(), PollFlags::POLLIN)];
        let ms =
            PollTimeout::try_from(left.as_millis().min(100) as i32).unwrap_or(PollTimeout::ZERO);
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {
                if let Ok(st @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
                    waitpid(Pid::from_raw(root), Some(WaitPidFlag::WNOHANG))
                {
                    // Drain a pending error record first: it explains the exit.
                    let mut rec = [0u8; tree::RECORD];
                    if let Ok(tree::RECORD) = nix::unistd::read(ready_r.as_raw_fd_ref(), &mut rec) {
                        let (pid, errno, step) = tree::parse_record(&rec);
                        if errno != 0 {
                            return Err(RestoreError::sys(
                                step,
                                pid,
                                nix::errno::Errno::from_raw(errno),
                            ));
                        }
                    }
                    return Err(RestoreError::TaskDied {
                        pid: root,
                        step: "tree creation".into(),
                        status: format!("{st:?}"),
                    });
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => return Err(sys0("poll ready pipe", e)),
        }
        let mut chunk = [0u8; tree::RECORD * 8];
        let r = nix::unistd::read(ready_r.as_raw_fd_ref(), &mut chunk)
            .map_err(|e| sys0("read ready pipe", e))?;
        if r == 0 {
            return Err(RestoreError::TaskDied {
                pid: root,
                step: "tree creation".into(),
                status: "all tasks exited".into(),
            });
        }
        buf.extend_from_slice(&chunk[..r]);
        while buf.len() >= tree::RECORD {
            let rec: [u8; tree::RECORD] =
                buf[..tree::RECORD].try_into().unwrap_or([0; tree::RECORD]);
            buf.drain(..tree::RECORD);
            let (pid, errno, step) = tree::parse_record(&rec);
            if errno != 0 {
                return Err(RestoreError::sys(
                    format!("task {pid}: {step}"),
                    pid,
                    nix::errno::Errno::from_raw(errno),
                ));
            }
            got += 1;
        }
    }
    Ok(())
}

/// Helper so `read` gets a borrowed fd.
trait AsRawFdRef {
    fn as_raw_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl AsRawFdRef for OwnedFd {
    fn as_raw_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        let _ = self.as_raw_fd();
        self.as_fd()
    }
}
