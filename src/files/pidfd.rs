//! pidfds (`pidfd_open(2)`, `CLONE_PIDFD`) of tasks of the dumped tree.
//!
//! ```text
//!  link:    anon_inode:[pidfd]
//!  fdinfo:  Pid: 4242   NSpid: 4242 (the innermost: the pid in the task's namespace;
//!                                     -1 once the target has exited and been reaped)
//!  image:   file_entry {type PIDFD, pidfd {id, ino, flags, nspid, fown}}
//!  restore: live target  the task opens it itself once the target exists
//!                        (restore::tree, pidfd_open(nspid, flags & O_NONBLOCK))
//!           exited       a helper child is forked, opened with CLONE_PIDFD and reaped:
//!                        a pidfd of a process that is gone (poll says readable)
//! ```
//! A pidfd of a task outside the tree is refused (its pid means nothing after a restore),
//! and so is one of a thread (`PIDFD_THREAD`), as CRIU does.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, unsupported, At, Result};
use super::{DumpFd, DumpState, KindOps, RestoreCtx, Targets};

const KIND: &str = "pidfd";

/// `PIDFD_THREAD` (= `O_EXCL`): a pidfd of one thread.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Pidfd,
    matches,
    dump,
    restore,
    stage: super::stage0,
};

fn matches(link: &str, _: BorrowedFd<'_>) -> bool {
    super::anon(link) == Some("[pidfd]") || link.starts_with("pidfd:")
}

/// Dumps a pidfd.
pub fn dump(d: &DumpFd<'_>, st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    if info.flags & PIDFD_THREAD != 0 {
        return Err(unsupported(KIND, at, "a pidfd of a thread (PIDFD_THREAD)"));
    }
    let (line, v) = info.first(KIND, at, "NSpid")?;
    let nspid: i32 = v
        .split_whitespace()
        .last()
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| common::bad(KIND, at, line, "NSpid", v))?;
    let (line, v) = info.first(KIND, at, "Pid")?;
    let pid: i32 = v
        .trim()
        .parse()
        .map_err(|e| common::bad(KIND, at, line, "Pid", e))?;
    if pid > 0 && !st.tree_pids.contains(&pid) {
        return Err(unsupported(
            KIND,
            at,
            format!("a pidfd of task {pid}, which is not in the dumped tree"),
        ));
    }
    let ino = std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&d.file.as_fd())
    ))
    .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
    .unwrap_or(0);
    let mut e = super::file_entry(pb::FdTypes::Pidfd, d.id);
    e.pidfd = Some(pb::PidfdEntry {
        id: d.id,
        ino,
        // Like CRIU: the access mode is implied.
        flags: info.flags & !(libc::O_RDWR as u32),
        nspid: if pid > 0 { nspid } else { -1 },
        fown: common::dump_fown(KIND, at, d.file)?,
    });
    Ok(e)
}

/// The (pid, flags) of a pidfd entry whose target is a task of the tree: the task that has
/// it opens it itself once the target exists.
pub fn in_task(e: &pb::FileEntry) -> Option<(i32, u32)> {
    let p = e.pidfd.as_ref()?;
    (p.nspid > 0).then_some((p.nspid, p.flags))
}

/// Restores a pidfd of a process that had exited: one of a helper child that is gone.
pub fn restore(e: &pb::FileEntry, _ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let p = e
        .pidfd
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no pidfd member"))?;
    if p.nspid > 0 {
        return Err(image(
            KIND,
            at,
            "a pidfd of a live task is opened by its task",
        ));
    }
    let fd = crate::sys::clone3::exited_child_pidfd().map_err(sys(
        KIND,
        at,
        "pidfd of an exited helper",
    ))?;
    common::restore_params(KIND, e.id, &fd, p.flags, &p.fown)?;
    Ok(fd)
}
