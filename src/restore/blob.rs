//! The final step of a task through the restorer blob, run in the forked task itself.
//!
//! ```text
//! forked task (its fds, session, cwd already set by tree.rs; its memory prepared by
//!   memory.rs: premaps filled or inherited, mmap-by-fd entries, vdso plan)
//!   core/mm -> TaskSpec (blob_core), status_fd / go_fd
//!   blob_args::enter(&spec) ──▶ blob: unmap the restorer, move premaps, mm, threads,
//!                               signals, timers, creds ... StatusRecord(READY) on status_fd,
//!                               read one byte from go_fd, rt_sigreturn into the image
//! restorer: reads one StatusRecord per task, then writes one byte per task to go_fd
//! ```

use std::os::fd::RawFd;

use nix::errno::Errno;

use super::blob_args::TaskSpec;
use super::blob_core::{mm_from_pb, task_from_core};
use super::memory::TaskMemory;
use super::open_files::Opened;
use super::plan::{Plan, TaskPlan};

pub use super::premap::StepErr;

/// Which descriptors, besides the image's own, the blob closes (see [`enter`]).
pub enum Others<'a> {
    /// The task keeps exactly these ([`super::open_files::keep_only`] closes the rest first).
    Known(&'a std::collections::BTreeSet<RawFd>),
    /// Every open descriptor but the targets, found by listing `/proc/self/fd`.
    Listed,
    /// None.
    Keep,
}

/// Builds the blob's arguments for task `t` and enters the blob; returns only on error.
/// `others`: the descriptors it closes besides the image's own; `mem`: its memory, prepared
/// (`memory::prepare`).
pub fn enter(
    plan: &Plan,
    t: &TaskPlan,
    opened: &Opened,
    (status_fd, go_fd): (RawFd, RawFd),
    targets: &[RawFd],
    others: Others<'_>,
    mem: TaskMemory,
) -> Result<std::convert::Infallible, StepErr> {
    let mm = t.mm.as_ref().ok_or(("no mm image", Errno::EINVAL))?;
    let mut spec = TaskSpec::new();
    // --lazy-pages: the userfaultfd goes to the daemon now; the blob registers the lazy VMAs
    // on it once they are in place, then closes it with the engine's other descriptors.
    if let Some(h) = opened.lazy {
        spec.task.uffd = super::lazy::hand_over(h, t.pid)?;
    }
    spec.vmas = mem.vmas;
    spec.keep = mem.keep;
    // No vdso in the image: the running one is unmapped with everything else.
    if let Some(plan) = mem.vdso {
        plan.apply(&mut spec);
    }
    let exe = *opened
        .maps
        .get(&mm.exe_file_id)
        .ok_or(("find exe file", Errno::EBADF))?;
    mm_from_pb(&mut spec, mm, exe as u32);
    spec.threads.reserve(t.threads.len());
    for (i, th) in t.threads.iter().enumerate() {
        spec.threads.push(th.spec.clone());
        if i == 0 {
            task_from_core(&mut spec, th.tid as u32, &th.core)
                .map_err(|_| ("convert task core", Errno::EINVAL))?;
        }
    }
    // A periodic itimer caught right at expiry has value 0: setitimer would disarm it.
    for it in spec.task.itimers.iter_mut() {
        let armed = it.interval.sec != 0 || it.interval.usec != 0;
        if armed && it.value.sec == 0 && it.value.usec == 0 {
            it.value.usec = 1;
        }
    }
    spec.task.umask = t.fs.as_ref().and_then(|f| f.umask).unwrap_or(0o022);
    spec.task.status_fd = status_fd;
    spec.task.go_fd = go_fd;
    spec.task.cur_rseq = crate::sys::restorer::current_rseq();
    // Everything but the image's own descriptors and the two the blob closes itself.
    spec.close_fds = match others {
        // Only `open` (and the lazy-pages userfaultfd, opened since) can be open: whatever
        // else the steps above left is closed now.
        Others::Known(open) => {
            let mut open = open.clone();
            if spec.task.uffd >= 0 {
                open.insert(spec.task.uffd);
            }
            super::open_files::keep_only(&open).map_err(|e| ("close descriptors", e))?;
            open.iter()
                .filter(|&&n| n >= 0 && !targets.contains(&n) && n != status_fd && n != go_fd)
                .map(|&n| n as u32)
                .collect()
        }
        // The owner of a shared table: what its members left is known only by listing.
        Others::Listed => {
            let mut close: Vec<u32> = Vec::new();
            for e in std::fs::read_dir("/proc/self/fd")
                .map_err(|_| ("list fds", Errno::EIO))?
                .flatten()
            {
                if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) {
                    if !targets.contains(&n) && n != status_fd && n != go_fd {
                        close.push(n as u32);
                    }
                }
            }
            close
        }
        // A member of a shared table closes nothing of it (its owner does; see `shared_fdt`).
        Others::Keep => Vec::new(),
    };
    // Until here (premaps, page fills) a vanished restorer kills the task (parent death
    // signal): nothing above may outlive it. The blob itself ends on EOF of go_fd, and the
    // death signal must not outlive the restore (with -d the restorer exits right away).
    crate::sys::process::set_pdeathsig(0).map_err(|e| ("clear pdeathsig", e))?;
    // The root and cwd last: what comes before reads /proc (the blob closes their fds).
    match super::blob_args::enter_after(&spec, || super::task_fs::enter_fs(plan, t, opened)) {
        Err(super::blob_args::EnterError::Last(step, e)) => Err((step, e)),
        Err(_) => Err(("enter the restorer blob", Errno::EINVAL)),
    }
}
