//! Controlling terminals: a session leader of the tree whose session had a pty of the images
//! as its terminal gets it back, its foreground group too, and `/dev/tty` descriptors are
//! opened by their tasks once the terminal is theirs (CRIU's ctl_tty and TTY_TYPE__CTTY).
//!
//! ```text
//!  restorer (open_files):  ptys restored and parked; for each tty-info with a session `sid`
//!                          led by a task of the tree: [`Ctty`] {sid, a parked slave (or the
//!                          master; an inherited external terminal), foreground group};
//!                          /dev/tty entries -> opened in task
//!  task, after setsid:     sid == its pid -> TIOCSCTTY on the slave (its group is the
//!                          foreground one now)                                  [`take`]
//!  task, after setpgid:    leads the dumped foreground group -> TIOCSPGRP through /dev/tty
//!                          (SIGTTOU blocked)                                   [`foreground`]
//!  task, placing its fds:  /dev/tty opened (its session's terminal, inherited at fork)
//! ```
//! The session leader forks its children after taking the terminal, so they inherit it.
//! `--shell-job` (the session outside the tree) is [`super::tree`]'s: the restorer's terminal.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use stasis_images::pb;

use super::plan::{Plan, TaskPlan};

/// The terminal of a session led by a task of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctty {
    /// The session (its leader's pid).
    pub sid: i32,
    /// A parked descriptor of the terminal: a slave's, or its master's (`via_master`: the
    /// slave is opened through it).
    pub fd: RawFd,
    pub via_master: bool,
    /// The group in the foreground when dumped (0: none recorded).
    pub fg: i32,
}

/// The controlling terminals to give back, from the restored ptys (`desc`: files.img id ->
/// parked descriptor).
pub fn plan(
    plan: &Plan,
    extra: &crate::files::Extra,
    desc: &std::collections::HashMap<u32, RawFd>,
) -> Vec<Ctty> {
    let parked = |info_id: u32| {
        plan.files
            .values()
            .filter(|f| f.tty.as_ref().is_some_and(|t| t.tty_info_id == info_id))
            .find_map(|f| desc.get(&f.id).copied())
    };
    let mut out: Vec<Ctty> = Vec::new();
    for ti in &extra.tty_info {
        let own = [pb::TtyType::Pty as i32, pb::TtyType::ExtTty as i32];
        if !own.contains(&ti.r#type) || ti.sid == 0 {
            continue;
        }
        let sid = ti.sid as i32;
        let leads = plan.tasks.iter().any(|t| t.pid == sid && t.sid == sid);
        if !leads || out.iter().any(|c| c.sid == sid) {
            continue;
        }
        let slave = ti.id & !1;
        let fg = extra
            .tty_info
            .iter()
            .filter(|i| i.id | 1 == ti.id | 1)
            .map(|i| i.pgrp as i32)
            .max()
            .unwrap_or(0);
        let found = match parked(slave) {
            Some(fd) => Some((fd, false)),
            None => parked(slave | 1).map(|fd| (fd, true)),
        };
        if let Some((fd, via_master)) = found {
            out.push(Ctty {
                sid,
                fd,
                via_master,
                fg,
            });
        }
    }
    out
}

/// In task `t` right after its `setsid`: takes its session's terminal.
pub fn take(cttys: &[Ctty], t: &TaskPlan) -> Result<(), (&'static str, Errno)> {
    let Some(c) = cttys.iter().find(|c| c.sid == t.pid) else {
        return Ok(());
    };
    let parked = crate::sys::fds::borrow(c.fd);
    if c.via_master {
        let s = crate::sys::tty::open_peer(parked, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
            .map_err(|e| ("open the slave of the session's terminal", e))?;
        crate::sys::tty::set_ctty(s.as_fd())
    } else {
        crate::sys::tty::set_ctty(parked)
    }
    .map_err(|e| ("TIOCSCTTY: take the session's terminal", e))
}

/// In task `t` once it leads its group: makes the group the foreground one of its session's
/// terminal if it was when dumped.
pub fn foreground(cttys: &[Ctty], t: &TaskPlan) -> Result<(), (&'static str, Errno)> {
    if t.pgid != t.pid || !cttys.iter().any(|c| c.sid == t.sid && c.fg == t.pid) {
        return Ok(());
    }
    let tty =
        crate::sys::fdkinds::open("/dev/tty", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
            .map_err(|e| ("open /dev/tty to set the foreground group", e))?;
    match crate::sys::tty::set_foreground(tty.as_raw_fd(), t.pid) {
        Ok(true) => Ok(()),
        Ok(false) => Err((
            "set the foreground group: not the session's terminal",
            Errno::ENOTTY,
        )),
        Err(e) => Err(("TIOCSPGRP: set the foreground group", e)),
    }
}

/// `/dev/tty` descriptors of the images (CRIU's TTY_TYPE__CTTY): opened by their tasks, as
/// (files.img id, open flags).
pub fn dev_tty_entries<'p>(
    plan: &'p Plan,
    extra: &'p crate::files::Extra,
) -> impl Iterator<Item = (u32, u32)> + 'p {
    plan.files
        .values()
        .filter(|f| crate::files::tty::is_ctty(extra, f))
        .filter_map(|f| f.tty.as_ref().map(|t| (f.id, t.flags)))
}
