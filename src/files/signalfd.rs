//! signalfd: the signal mask and the file flags.
//!
//! ```text
//!  fdinfo:  sigmask:  0000000000000200     (hex, bit n-1 = signal n)
//!  image:   file_entry {type SIGNALFD, sgfd {id, flags, fown, sigmask}}
//! ```

use std::os::fd::{BorrowedFd, OwnedFd};

use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, At, Result};
use super::{DumpFd, DumpState, KindOps, RestoreCtx, Targets};
use crate::sys::fdkinds;

const KIND: &str = "signalfd";

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Signalfd,
    matches,
    dump,
    restore,
    stage: super::stage0,
};

fn matches(link: &str, _: BorrowedFd<'_>) -> bool {
    super::anon(link) == Some("[signalfd]")
}

/// Dumps a signalfd.
pub fn dump(d: &DumpFd<'_>, _st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let (line, v) = info.first(KIND, at, "sigmask")?;
    let sigmask = common::hex(v).map_err(|e| common::bad(KIND, at, line, "sigmask", e))?;
    let mut e = super::file_entry(pb::FdTypes::Signalfd, d.id);
    e.sgfd = Some(pb::SignalfdEntry {
        id: d.id,
        flags: info.flags,
        fown: common::dump_fown(KIND, at, d.file)?,
        sigmask,
    });
    Ok(e)
}

/// Restores a signalfd.
pub fn restore(e: &pb::FileEntry, _ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let s = e
        .sgfd
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no sgfd member"))?;
    let fd = fdkinds::signalfd(s.sigmask, libc::SFD_CLOEXEC).map_err(sys(KIND, at, "signalfd"))?;
    common::restore_params(KIND, e.id, &fd, s.flags, &s.fown)?;
    Ok(fd)
}
