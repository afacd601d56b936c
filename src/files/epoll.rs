//! epoll: the watched targets with their event masks and user data.
//!
//! ```text
//!  fdinfo:  tfd:        5 events:       19 data:                5  pos:0 ino:41 sdev:f
//!           (tfd decimal, events/data/ino/sdev hex, pos decimal; one line per target)
//!  image:   file_entry {type EVENTPOLL, epfd {id, flags, fown,
//!                       tfd [{id (the epoll's), tfd, events, data, dev, inode, pos}]}}
//! ```
//! Targets are recorded by fd number in the owning task, so an epoll is restored after every
//! other file (stage 2): the engine resolves each `tfd` to the restored descriptor.

use std::os::fd::{BorrowedFd, OwnedFd};

use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, At, Result};
use super::{DumpFd, DumpState, KindOps, RestoreCtx, Targets};
use crate::sys::fdkinds;

const KIND: &str = "epoll";

/// Most targets we accept on one epoll.
pub const MAX_TARGETS: usize = 1 << 16;

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Eventpoll,
    matches,
    dump,
    restore,
    stage: |_| 2,
};

fn matches(link: &str, _: BorrowedFd<'_>) -> bool {
    super::anon(link) == Some("[eventpoll]")
}

fn tfd_line(id: u32, at: At, line: usize, v: &str) -> Result<pb::EventpollTfdEntry> {
    let full = format!("tfd: {v}");
    let mut t = pb::EventpollTfdEntry {
        id,
        ..Default::default()
    };
    let mut seen = 0;
    for (k, val) in common::pairs(&full) {
        let bad =
            |e: std::num::ParseIntError| common::bad(KIND, at, line, "tfd", format!("{k}: {e}"));
        match k {
            "tfd" => {
                t.tfd = val.parse().map_err(bad)?;
                seen |= 1;
            }
            "events" => {
                t.events = common::hex(val).map_err(bad)? as u32;
                seen |= 2;
            }
            "data" => {
                t.data = common::hex(val).map_err(bad)?;
                seen |= 4;
            }
            "pos" => t.pos = Some(val.parse().map_err(bad)?),
            "ino" => t.inode = Some(common::hex(val).map_err(bad)?),
            "sdev" => t.dev = Some(common::hex(val).map_err(bad)? as u32),
            _ => {}
        }
    }
    if seen != 7 {
        return Err(common::bad(
            KIND,
            at,
            line,
            "tfd",
            "needs tfd, events and data",
        ));
    }
    Ok(t)
}

/// Dumps an epoll instance with its targets.
pub fn dump(d: &DumpFd<'_>, _st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let mut tfd = Vec::new();
    for (line, v) in info.lines_with("tfd") {
        if tfd.len() >= MAX_TARGETS {
            return Err(common::bad(KIND, at, line, "tfd", "too many targets"));
        }
        tfd.push(tfd_line(d.id, at, line, v)?);
    }
    let mut e = super::file_entry(pb::FdTypes::Eventpoll, d.id);
    e.epfd = Some(pb::EventpollFileEntry {
        id: d.id,
        flags: info.flags,
        fown: common::dump_fown(KIND, at, d.file)?,
        tfd,
    });
    Ok(e)
}

/// Restores an epoll and re-adds its targets (which must be restored already).
pub fn restore(
    e: &pb::FileEntry,
    _ctx: &mut RestoreCtx<'_>,
    targets: Targets<'_>,
) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let ep = e
        .epfd
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no epfd member"))?;
    let fd = fdkinds::epoll_create(libc::EPOLL_CLOEXEC).map_err(sys(KIND, at, "epoll_create1"))?;
    common::restore_params(KIND, e.id, &fd, ep.flags, &ep.fown)?;
    for t in &ep.tfd {
        let target = targets(t.tfd)
            .ok_or_else(|| image(KIND, at, format!("target fd {} was not restored", t.tfd)))?;
        fdkinds::epoll_add_raw(&fd, target, t.events, t.data).map_err(sys(
            KIND,
            at,
            format!("EPOLL_CTL_ADD target fd {}", t.tfd),
        ))?;
    }
    Ok(fd)
}
