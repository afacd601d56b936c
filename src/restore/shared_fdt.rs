//! Descriptor tables shared by a parent and its children (`CLONE_FILES`).
//!
//! The dump writes one `fdinfo-<files_id>.img` per table; a child whose `ids.files_id` is its
//! parent's is forked with `CLONE_FILES`, so both work on one table again. The table's first
//! task (the owner) puts the descriptors in place; the other tasks of the group (members:
//! its descendants linked by `CLONE_FILES`) touch it only where the owner expects it:
//!
//! ```text
//! owner                                     member (forked with CLONE_FILES)
//!   open the group pipes (pre, table,         session, group, file owners (parked fds),
//!   status) and per member a status and       fork its own children
//!   a go descriptor, above every image fd   ─ pre: one byte ─▶
//!   fork children (members: CLONE_FILES)
//!   wait for one pre byte per member
//!   dup2 the image fds, close the rest        (waits)
//!   (keeping what members still need)
//!                                           ◀─ table: one byte ─
//!   locks, ready record, join group           locks, ready record, join group
//!                                             blob: premaps, mappings by the kept fds,
//!   forward one StatusRecord per member  ◀──  READY on its own status fd, waits for go
//!   to the restorer's status pipe
//!   blob: closes everything of the table
//!   but the image fds and the members'
//!   status/go fds, READY, waits for go
//! ```
//!
//! A member closes nothing but its own status and go descriptors (distinct numbers, so that
//! a number a task frees after the release is never closed again by another). The owner
//! lists what to close only once every member is READY: the members' temporary descriptors
//! are closed by then, and everything it lists stays open until it closes it, so no
//! descriptor the program opens after the release can be among them.
//!
//! Only a parent can share its table with a child this way: a table shared by tasks that
//! are not parent and child is refused by the dump and by [`check`].

use std::os::fd::RawFd;
use std::time::Instant;

use nix::errno::Errno;

use super::blob_args::abi::StatusRecord;
use super::error::RestoreError;
use super::model::{Plan, TaskPlan};
use crate::sys::fds::{close_raw, dup_above, read_raw, write_raw};

type StepErr = (&'static str, Errno);

/// One member's own descriptors for its blob: its status record goes to the owner, its go
/// byte comes from the restorer's hold pipe.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub pid: i32,
    pub status_w: RawFd,
    pub go_r: RawFd,
}

/// The pipes of one shared table, made by its owner before it forks the members (they
/// inherit them by sharing the table).
#[derive(Debug, Clone)]
pub struct Group {
    pre_r: RawFd,
    pre_w: RawFd,
    table_r: RawFd,
    table_w: RawFd,
    status_r: RawFd,
    members: Vec<Member>,
}

/// Refuses a table shared by tasks that are not parent and child (only a parent can give a
/// child its table, with `CLONE_FILES`).
pub fn check(plan: &Plan, t: &TaskPlan) -> Result<(), RestoreError> {
    let Some(id) = t.files_id else {
        return Ok(());
    };
    if plan.shares_parent_fds(t) {
        return Ok(());
    }
    let first = plan.tasks.iter().find(|o| o.files_id == Some(id));
    match first {
        Some(o) if o.pid != t.pid => Err(RestoreError::Unsupported(format!(
            "ids-{}.img: task shares its descriptor table with task {}, which is not its \
             parent (CLONE_FILES)",
            t.pid, o.pid
        ))),
        _ => Ok(()),
    }
}

/// The members of the table task `idx` owns: its descendants linked to it by parents that
/// share their table, in tree order.
fn members_of(plan: &Plan, idx: usize) -> Vec<i32> {
    let mut out = Vec::new();
    let mut stack = vec![plan.tasks[idx].pid];
    while let Some(pid) = stack.pop() {
        let Some(t) = plan.index(pid).map(|i| &plan.tasks[i]) else {
            continue;
        };
        for &c in t.children.iter().rev() {
            if plan
                .index(c)
                .is_some_and(|ci| plan.shares_parent_fds(&plan.tasks[ci]))
            {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

fn pipe_above(min: RawFd) -> Result<(RawFd, RawFd), StepErr> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ("pipe", e))?;
    use std::os::fd::AsRawFd;
    let r2 = dup_above(r.as_raw_fd(), min).map_err(|e| ("move a group pipe", e))?;
    let w2 = dup_above(w.as_raw_fd(), min).map_err(|e| ("move a group pipe", e))?;
    Ok((r2, w2))
}

impl Group {
    /// The group of the table task `idx` owns (`None` when no child shares it). Its
    /// descriptors go at `min` or above, clear of every image descriptor number.
    pub fn open(
        plan: &Plan,
        idx: usize,
        hold_r: RawFd,
        min: RawFd,
    ) -> Result<Option<Self>, StepErr> {
        if plan.shares_parent_fds(&plan.tasks[idx]) {
            return Ok(None);
        }
        let pids = members_of(plan, idx);
        if pids.is_empty() {
            return Ok(None);
        }
        let (pre_r, pre_w) = pipe_above(min)?;
        let (table_r, table_w) = pipe_above(min)?;
        let (status_r, status_w) = pipe_above(min)?;
        let mut members = Vec::with_capacity(pids.len());
        for pid in pids {
            members.push(Member {
                pid,
                status_w: dup_above(status_w, min).map_err(|e| ("dup a status pipe", e))?,
                go_r: dup_above(hold_r, min).map_err(|e| ("dup the go pipe", e))?,
            });
        }
        // Only the members' copies write: the owner sees EOF... never (it shares them), so
        // its waits are bounded by the restore's deadline instead.
        close_raw(status_w);
        Ok(Some(Self {
            pre_r,
            pre_w,
            table_r,
            table_w,
            status_r,
            members,
        }))
    }

    /// The descriptors of member `pid`.
    pub fn member(&self, pid: i32) -> Option<Member> {
        self.members.iter().copied().find(|m| m.pid == pid)
    }

    /// What the owner's table must keep when it closes what its image does not have.
    pub fn keep(&self) -> impl Iterator<Item = RawFd> + '_ {
        [self.table_r, self.table_w, self.status_r]
            .into_iter()
            .chain(self.members.iter().flat_map(|m| [m.status_w, m.go_r]))
    }

    /// The members' status and go descriptors, which the owner's blob must not close.
    pub fn members_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.members.iter().flat_map(|m| [m.status_w, m.go_r])
    }

    /// The members' pids.
    pub fn member_pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.members.iter().map(|m| m.pid)
    }

    /// Member: its work on the parked descriptors is done; waits until the owner has put
    /// the table in place.
    pub fn member_wait_table(&self, deadline: Instant) -> Result<(), StepErr> {
        write_raw(self.pre_w, b"p").map_err(|e| ("tell the table's owner", e))?;
        let mut b = [0u8; 1];
        read_until(self.table_r, &mut b, deadline).map_err(|e| ("wait for the shared table", e))
    }

    /// Owner: waits until every member is done with the parked descriptors.
    pub fn owner_wait_members(&self, deadline: Instant) -> Result<(), StepErr> {
        let mut b = vec![0u8; self.members.len()];
        read_until(self.pre_r, &mut b, deadline).map_err(|e| ("wait for the table's members", e))
    }

    /// Owner: the table is in place; the members may go on.
    pub fn owner_table_ready(&self) -> Result<(), StepErr> {
        let b = vec![b't'; self.members.len()];
        let mut off = 0;
        while off < b.len() {
            off += write_raw(self.table_w, &b[off..])
                .map_err(|e| ("release the table's members", e))?;
        }
        Ok(())
    }

    /// Owner: passes one StatusRecord per member on to the restorer (`status_w`) once each
    /// member is READY in its blob (or failed: its record tells the restorer).
    pub fn owner_forward_status(&self, status_w: RawFd, deadline: Instant) -> Result<(), StepErr> {
        let len = std::mem::size_of::<StatusRecord>();
        let mut buf = vec![0u8; len * self.members.len()];
        read_until(self.status_r, &mut buf, deadline)
            .map_err(|e| ("wait for the table's members to be ready", e))?;
        let mut off = 0;
        while off < buf.len() {
            off +=
                write_raw(status_w, &buf[off..]).map_err(|e| ("pass a member's status on", e))?;
        }
        Ok(())
    }
}

/// Reads exactly `buf.len()` bytes from `fd`, giving up at `deadline`.
fn read_until(fd: RawFd, buf: &mut [u8], deadline: Instant) -> Result<(), Errno> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Errno::ETIMEDOUT);
        }
        let ms =
            PollTimeout::try_from(left.as_millis().min(1000) as i32).unwrap_or(PollTimeout::ZERO);
        let mut fds = [PollFd::new(crate::sys::fds::borrow(fd), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        match read_raw(fd, &mut buf[got..]) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => got += n,
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
