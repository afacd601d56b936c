//! eventfd: the counter and the file flags.
//!
//! ```text
//!  fdinfo:  eventfd-count:                5      (hex)
//!  image:   file_entry {type EVENTFD, efd {id, flags, fown, counter}}
//! ```
//! Like CRIU, `EFD_SEMAPHORE` is not recorded (the image has no field for it).

use std::os::fd::{BorrowedFd, OwnedFd};

use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, At, Result};
use super::{DumpFd, DumpState, KindOps, RestoreCtx, Targets};
use crate::sys::fdkinds;

const KIND: &str = "eventfd";

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Eventfd,
    matches,
    dump,
    restore,
    stage: super::stage0,
};

fn matches(link: &str, _: BorrowedFd<'_>) -> bool {
    super::anon(link) == Some("[eventfd]")
}

/// Dumps an eventfd.
pub fn dump(d: &DumpFd<'_>, _st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let (line, v) = info.first(KIND, at, "eventfd-count")?;
    let counter = common::hex(v).map_err(|e| common::bad(KIND, at, line, "eventfd-count", e))?;
    let mut e = super::file_entry(pb::FdTypes::Eventfd, d.id);
    e.efd = Some(pb::EventfdFileEntry {
        id: d.id,
        flags: info.flags,
        fown: common::dump_fown(KIND, at, d.file)?,
        counter,
    });
    Ok(e)
}

/// Restores an eventfd with its counter.
pub fn restore(e: &pb::FileEntry, _ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let efd = e
        .efd
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no efd member"))?;
    // eventfd(2) takes a 32-bit initial value: write the full 64-bit counter instead.
    let fd = fdkinds::eventfd(0, libc::EFD_CLOEXEC).map_err(sys(KIND, at, "eventfd"))?;
    if efd.counter != 0 {
        fdkinds::write(&fd, &efd.counter.to_ne_bytes()).map_err(sys(KIND, at, "write counter"))?;
    }
    common::restore_params(KIND, e.id, &fd, efd.flags, &efd.fown)?;
    Ok(fd)
}
