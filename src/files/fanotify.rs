//! fanotify: the group's flags and its marks on inodes (by file handle) and mounts.
//!
//! ```text
//!  fdinfo:  fanotify flags:4 event-flags:8000                              (the group)
//!           fanotify ino:3c4a7 sdev:fe00000 mflags:0 mask:28 ignored_mask:0
//!                    fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000 (inode mark)
//!           fanotify mnt_id:1b mflags:0 mask:20 ignored_mask:0              (mount mark)
//!           (all hex)
//!  image:   file_entry {type FANOTIFY, ffy {id, flags, fown, faflags, evflags,
//!            mark [{id, type INODE|MOUNT, mflags, mask, ignored_mask, s_dev,
//!                   ie {i_ino, f_handle} | me {mnt_id, path}}]}}
//!  restore: fanotify_init(faflags, evflags); per mark fanotify_mark(ADD | mflags
//!           [| MOUNT], mask) and (ADD | IGNORED_MASK) for the ignored mask, on the
//!           inode opened by its handle or the mount point, through /proc/self/fd/N
//! ```
//! Marks of a whole filesystem (`FAN_MARK_FILESYSTEM`) are refused, as CRIU does; events
//! queued but not yet read are not kept (CRIU does not keep them either).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, unsupported, At, Result};
use super::inotify::{FH_WORDS, MAX_WATCHES};
use super::{DumpFd, DumpState, KindOps, RestoreCtx, Targets};
use crate::sys::fdkinds;

const KIND: &str = "fanotify";

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Fanotify,
    matches,
    dump,
    restore,
    stage: super::stage0,
};

fn matches(link: &str, _: BorrowedFd<'_>) -> bool {
    super::anon(link) == Some("[fanotify]")
}

/// The mount point of mount `mnt_id` of task `pid`.
fn mount_point(pid: i32, mnt_id: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 4 && f[0].parse::<u32>().ok() == Some(mnt_id))
            .then(|| f[4].replace("\\040", " "))
    })
}

fn mark_line(d: &DumpFd<'_>, line: usize, v: &str) -> Result<pb::FanotifyMarkEntry> {
    let at = d.at();
    let full = v;
    let mut m = pb::FanotifyMarkEntry {
        id: d.id,
        ..Default::default()
    };
    let mut fh = pb::FhEntry::default();
    let (mut ino, mut mnt) = (None, None);
    for (k, val) in common::pairs(full) {
        let bad = |e: String| common::bad(KIND, at, line, "fanotify mark", format!("{k}: {e}"));
        let h = || common::hex(val).map_err(|e| bad(e.to_string()));
        match k {
            "ino" => ino = Some(h()?),
            "mnt_id" => mnt = Some(h()? as u32),
            "sdev" => m.s_dev = h()? as u32,
            "mflags" => m.mflags = h()? as u32,
            "mask" => m.mask = h()? as u32,
            "ignored_mask" => m.ignored_mask = h()? as u32,
            _ => {
                super::inotify::handle_field(&mut fh, k, val).map_err(bad)?;
            }
        }
    }
    match (ino, mnt) {
        (Some(i_ino), None) => {
            if fh.handle.is_empty() || fh.bytes as usize > FH_WORDS * 8 {
                return Err(common::bad(
                    KIND,
                    at,
                    line,
                    "fanotify mark",
                    "no file handle",
                ));
            }
            m.r#type = pb::MarkType::Inode as i32;
            fh.path = super::inotify::handle_path((m.s_dev, i_ino), &fh);
            m.ie = Some(pb::FanotifyInodeMarkEntry {
                i_ino,
                f_handle: fh,
            });
        }
        (None, Some(mnt_id)) => {
            let path = mount_point(d.pid, mnt_id).ok_or_else(|| {
                unsupported(
                    KIND,
                    at,
                    format!("mount {mnt_id:#x} of a mark is not in mountinfo"),
                )
            })?;
            m.r#type = pb::MarkType::Mount as i32;
            m.me = Some(pb::FanotifyMountMarkEntry {
                mnt_id,
                path: Some(path),
            });
        }
        _ => {
            return Err(unsupported(
                KIND,
                at,
                "a mark of a whole filesystem (FAN_MARK_FILESYSTEM)",
            ))
        }
    }
    Ok(m)
}

/// Dumps a fanotify group with its marks.
pub fn dump(d: &DumpFd<'_>, _st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let mut f = pb::FanotifyFileEntry {
        id: d.id,
        flags: info.flags,
        fown: common::dump_fown(KIND, at, d.file)?,
        ..Default::default()
    };
    let (line, v) = info.first(KIND, at, "fanotify flags")?;
    let full = format!("flags:{v}");
    for (k, val) in common::pairs(&full) {
        let h = || common::hex(val).map_err(|e| common::bad(KIND, at, line, "fanotify flags", e));
        match k {
            "flags" => f.faflags = h()? as u32,
            "event-flags" => f.evflags = h()? as u32,
            _ => {}
        }
    }
    if let Some((line, _)) = info.lines_with("fanotify sdev").next() {
        return Err(common::bad(
            KIND,
            at,
            line,
            "fanotify mark",
            "a mark of a whole filesystem (FAN_MARK_FILESYSTEM) is not supported",
        ));
    }
    let marks = info
        .lines_with("fanotify ino")
        .map(|(l, v)| (l, format!("ino:{v}")))
        .chain(
            info.lines_with("fanotify mnt_id")
                .map(|(l, v)| (l, format!("mnt_id:{v}"))),
        );
    for (line, v) in marks {
        if f.mark.len() >= MAX_WATCHES {
            return Err(common::bad(
                KIND,
                at,
                line,
                "fanotify mark",
                "too many marks",
            ));
        }
        f.mark.push(mark_line(d, line, &v)?);
    }
    let mut e = super::file_entry(pb::FdTypes::Fanotify, d.id);
    e.ffy = Some(f);
    Ok(e)
}

/// Adds mark `m` to group `fd`.
fn add_mark(
    fd: BorrowedFd<'_>,
    at: At,
    m: &pb::FanotifyMarkEntry,
    ctx: &RestoreCtx<'_>,
) -> Result<()> {
    let mut flags = FAN_MARK_ADD | m.mflags;
    let target = if let Some(ie) = &m.ie {
        let what = format!("mark of inode {}", ie.i_ino);
        super::inotify::open_inode(KIND, at, &what, (m.s_dev, ie.i_ino), &ie.f_handle, ctx)?
    } else if let Some(me) = &m.me {
        let p = me.path.as_deref().ok_or_else(|| {
            image(
                KIND,
                at,
                format!("mount mark {:#x} without a path", me.mnt_id),
            )
        })?;
        flags |= FAN_MARK_MOUNT;
        fdkinds::open(p, libc::O_PATH | libc::O_CLOEXEC).map_err(sys(
            KIND,
            at,
            format!("open {p}"),
        ))?
    } else {
        return Err(image(KIND, at, "a mark of neither an inode nor a mount"));
    };
    let path = format!("/proc/self/fd/{}", target.as_raw_fd());
    if m.mask != 0 {
        fdkinds::fanotify_mark(fd, flags, u64::from(m.mask), &path).map_err(sys(
            KIND,
            at,
            format!("fanotify_mark {:#x}", m.mask),
        ))?;
    }
    if m.ignored_mask != 0 {
        fdkinds::fanotify_mark(
            fd,
            flags | FAN_MARK_IGNORED_MASK,
            u64::from(m.ignored_mask),
            &path,
        )
        .map_err(sys(
            KIND,
            at,
            format!("fanotify_mark ignored {:#x}", m.ignored_mask),
        ))?;
    }
    Ok(())
}

/// Restores a fanotify group with its marks.
pub fn restore(e: &pb::FileEntry, ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let f = e
        .ffy
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no ffy member"))?;
    let fd = fdkinds::fanotify_init(f.faflags | libc::FAN_CLOEXEC, f.evflags).map_err(sys(
        KIND,
        at,
        format!("fanotify_init {:#x}", f.faflags),
    ))?;
    for m in &f.mark {
        add_mark(fd.as_fd(), at, m, ctx)?;
    }
    common::restore_params(KIND, e.id, &fd, f.flags, &f.fown)?;
    Ok(fd)
}
