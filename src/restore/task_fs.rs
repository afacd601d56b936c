//! A task's root and cwd, entered last before the restorer blob (by [`super::blob`], called
//! from the task [`super::tree`] forked): everything before needs /proc, which a new root may
//! not have.
//!
//! ```text
//!  open_files: root/cwd opened and parked (Opened::fs_dirs, by file id)
//!  blob::enter ─ enter_after(spec, ‖ enter_fs) ─▶ fchdir(root) + chroot(".")  (unless "/")
//!                                                 fchdir(cwd)
//! ```

use std::os::fd::RawFd;

use nix::errno::Errno;

use super::model::{Plan, TaskPlan};
use super::open_files::Opened;

/// The parked descriptors of a task's root and cwd (see [`Opened::fs_dirs`]).
pub(crate) fn fs_dirs(opened: &Opened, t: &TaskPlan) -> Option<(Option<RawFd>, Option<RawFd>)> {
    t.fs.as_ref().map(|fs| {
        let dir = |id: u32| opened.fs_dirs.get(&id).copied();
        (dir(fs.root_id), dir(fs.cwd_id))
    })
}

/// Enters the task's root and cwd, by the descriptors the restorer opened (deleted ones were
/// recreated for the moment). Done last before the blob: everything before needs /proc,
/// which a new root may not have.
pub fn enter_fs(plan: &Plan, t: &TaskPlan, opened: &Opened) -> Result<(), (&'static str, Errno)> {
    let (Some(fs), Some((root, cwd))) = (&t.fs, fs_dirs(opened, t)) else {
        return Ok(());
    };
    if let Some(root) = root {
        let is_slash = plan
            .files
            .get(&fs.root_id)
            .and_then(|f| f.reg.as_ref())
            .is_some_and(|r| r.name == "/")
            && plan.root == std::path::Path::new("/");
        if !is_slash {
            nix::unistd::fchdir(crate::sys::fds::borrow(root))
                .map_err(|e| ("enter the root", e))?;
            nix::unistd::chroot(".").map_err(|e| ("chroot", e))?;
        }
    }
    if let Some(cwd) = cwd {
        nix::unistd::fchdir(crate::sys::fds::borrow(cwd)).map_err(|e| ("chdir", e))?;
    }
    Ok(())
}
