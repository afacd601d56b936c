//! Glue for the dump engine: dump an fd of another task by number.
//!
//! ```text
//!  dump_task_fd(pid, fd, next_id, state)
//!    readlink /proc/PID/fd/FD, read /proc/PID/fdinfo/FD
//!    kind_of(link)?  no -> Ok(None)   (the engine's own kinds, or unsupported)
//!    pidfd_open(pid) + pidfd_getfd(FD) -> our copy of the descriptor (same open file)
//!    dump_fd(..) -> (file_entry, "EVENTFD" | "UNIXSK" | ...)
//! ```

use std::os::fd::AsFd;

use stasis_images::pb;

use super::error::{sys, At, Result};
use super::{DumpFd, DumpState};
use crate::sys::fdkinds;

fn io_errno(e: std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Dumps fd `fd` of task `pid` if it is of a kind of [`super::KINDS`]; `Ok(None)` otherwise
/// (no id is taken then). Returns the entry and its fd type name for fdinfo-N.img.
pub fn dump_task_fd(
    pid: i32,
    fd: i32,
    next_id: &mut dyn FnMut() -> u32,
    st: &mut DumpState,
) -> Result<Option<(pb::FileEntry, &'static str)>> {
    let at = At::Fd { pid, fd };
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|e| sys("file", at, "readlink")(io_errno(e)))?;
    let link = link.to_string_lossy().into_owned();
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .map_err(|e| sys("file", at, "read fdinfo")(io_errno(e)))?;
    let pidfd = fdkinds::pidfd_open(pid).map_err(sys("file", at, "pidfd_open"))?;
    let file = fdkinds::pidfd_getfd(&pidfd, fd).map_err(sys("file", at, "pidfd_getfd"))?;
    let Some(kind) = super::kind_of(&link, file.as_fd()) else {
        return Ok(None);
    };
    let d = DumpFd {
        pid,
        fd,
        file: file.as_fd(),
        link: &link,
        fdinfo: &fdinfo,
        id: next_id(),
    };
    let e = (kind.dump)(&d, st)?;
    Ok(Some((e, kind.fd_type.as_str_name())))
}
