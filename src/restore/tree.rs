//! Creating the process tree: each task is forked by its parent with its original PID
//! (`clone3` + `set_tid`), sets up its session, group, descriptors, cwd, root and umask, then
//! reports to the restorer and waits to be seized.
//!
//! ```text
//! restorer ──clone3(pid=root)──▶ root: setsid? setpgid? ──clone3(pid=child)──▶ child ...
//!                                      dup2 fds, chdir, umask
//!                                      write READY{pid, errno=0} ──▶ ready pipe ──▶ restorer
//!                                      read(hold pipe) (blocks; EOF = restorer gone: exit)
//! zombie: forked like the others, exits at once with its recorded status.
//! ```
//! Every task has `PR_SET_PDEATHSIG(SIGKILL)` until the switch, so a dying parent takes its
//! half-restored children with it.

use std::collections::BTreeSet;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::files::{keep_only, Opened};
use super::plan::{Plan, TASK_DEAD};
use crate::sys::clone3::{fork_with_pid, Forked};
use crate::sys::fds::{dup2_raw, read_raw, write_raw};
use crate::sys::tracee::{exit_now, set_pdeathsig};

/// Size of one record on the ready pipe: pid i32, errno i32, step (NUL padded).
pub const RECORD: usize = 48;

/// The control pipes shared by every task (parked descriptors).
#[derive(Debug, Clone, Copy)]
pub struct Ctl {
    /// Tasks write their READY/error record here.
    pub ready_w: RawFd,
    /// Tasks block reading this until seized.
    pub hold_r: RawFd,
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
pub fn spawn(plan: &Plan, idx: usize, opened: &Opened, ctl: Ctl) -> Result<i32, Errno> {
    let pid = plan.tasks[idx].pid;
    match fork_with_pid(pid, 0, libc::SIGCHLD as u64)? {
        Forked::Parent(p) => Ok(p),
        Forked::Child => {
            let code = match run_task(plan, idx, opened, ctl) {
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

fn run_task(
    plan: &Plan,
    idx: usize,
    opened: &Opened,
    ctl: Ctl,
) -> Result<(), (&'static str, Errno)> {
    let t = &plan.tasks[idx];
    set_pdeathsig(libc::SIGKILL).map_err(|e| ("set pdeathsig", e))?;
    if t.state == TASK_DEAD {
        let sig = (t.exit_code & 0x7f) as i32;
        if sig != 0 {
            let _ =
                nix::sys::signal::kill(Pid::this(), nix::sys::signal::Signal::try_from(sig).ok());
        }
        exit_now(((t.exit_code >> 8) & 0xff) as i32);
    }
    if t.sid == t.pid {
        nix::unistd::setsid().map_err(|e| ("setsid", e))?;
    }
    if t.pgid == t.pid && t.sid != t.pid {
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(|e| ("setpgid", e))?;
    }
    for &child in &t.children {
        let ci = plan.index(child).ok_or(("find child", Errno::ESRCH))?;
        spawn(plan, ci, opened, ctl).map_err(|e| ("clone3 child", e))?;
    }
    // Descriptors.
    let mut keep: BTreeSet<RawFd> = BTreeSet::new();
    for fd in &t.fds {
        let &src = opened.desc.get(&fd.id).ok_or(("find file", Errno::EBADF))?;
        dup2_raw(src, fd.fd as RawFd, fd.flags & 1 != 0).map_err(|e| ("dup2", e))?;
        keep.insert(fd.fd as RawFd);
    }
    keep.extend(opened.maps.values().copied());
    keep.extend(opened.shmem.values().copied());
    keep.extend(opened.pages.values().copied());
    keep.insert(ctl.ready_w);
    keep.insert(ctl.hold_r);
    keep_only(&keep).map_err(|e| ("close descriptors", e))?;
    if let Some(fs) = &t.fs {
        let name = |id: u32| {
            plan.files
                .get(&id)
                .and_then(|f| f.reg.as_ref())
                .map(|r| r.name.clone())
        };
        if let Some(root) = name(fs.root_id) {
            if root != "/" {
                nix::unistd::chroot(root.as_str()).map_err(|e| ("chroot", e))?;
            }
        }
        if let Some(cwd) = name(fs.cwd_id) {
            nix::unistd::chdir(cwd.as_str()).map_err(|e| ("chdir", e))?;
        }
        if let Some(m) = fs.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
        }
    }
    write_raw(ctl.ready_w, &record(t.pid, 0, "ready")).map_err(|e| ("report ready", e))?;
    let mut b = [0u8; 1];
    loop {
        match read_raw(ctl.hold_r, &mut b) {
            Err(Errno::EINTR) => continue,
            _ => exit_now(1),
        }
    }
}
