//! inotify: the watches (wd, mask, watched inode by file handle).
//!
//! ```text
//!  fdinfo:  inotify wd:1 ino:3e2 sdev:800001 mask:fce ignored_mask:0 fhandle-bytes:8
//!           fhandle-type:1 f_handle:e2030000d6e3f4a7          (all hex; one line per watch)
//!  image:   file_entry {type INOTIFY, ify {id, flags, fown,
//!            wd [{id, i_ino, mask, ignored_mask, s_dev, wd,
//!                 f_handle {bytes, type, handle: 16 u64 words (handle bytes, LE, zero padded)}}]}}
//! ```
//! Restore opens each inode with `open_by_handle_at` through a mount of device `s_dev`
//! (or the handle's `path` if CRIU recorded one) and watches it through `/proc/self/fd/N`.
//! Watch descriptors are allocated cyclically, so a watch is re-added until it gets its old
//! wd; the `IN_IGNORED` events that leaves behind are drained before the fd is handed out.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, unsupported, At, Result};
use super::{DumpFd, DumpState, KindOps, RestoreCtx, Targets};
use crate::sys::fdkinds;

const KIND: &str = "inotify";

/// Number of u64 words a handle is stored in (`fh_entry_sizes.min_entries`).
pub const FH_WORDS: usize = 16;
/// Most watches we accept on one inotify fd.
pub const MAX_WATCHES: usize = 1 << 16;
/// How many times we re-add a watch to reach its old wd.
pub const MAX_WD_TRIES: u32 = 1 << 16;

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Inotify,
    matches,
    dump,
    restore,
    stage: super::stage0,
};

fn matches(link: &str, _: BorrowedFd<'_>) -> bool {
    matches!(super::anon(link), Some("inotify") | Some("[inotify]"))
}

/// Hex text → handle bytes, packed into [`FH_WORDS`] little-endian u64 words.
pub fn pack_handle(hexstr: &str) -> Option<Vec<u64>> {
    let b = hexstr.as_bytes();
    if b.len() % 2 != 0 || b.len() / 2 > FH_WORDS * 8 {
        return None;
    }
    let mut bytes = [0u8; FH_WORDS * 8];
    for (i, c) in b.chunks(2).enumerate() {
        bytes[i] = u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok()?;
    }
    Some(
        bytes
            .chunks(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
            .collect(),
    )
}

/// Reads one file handle field of an fdinfo mark line (`fhandle-bytes`, `fhandle-type`,
/// `f_handle`, all hex) into `fh`: whether `key` was one of them.
pub(crate) fn handle_field(
    fh: &mut pb::FhEntry,
    key: &str,
    val: &str,
) -> std::result::Result<bool, String> {
    let h = || common::hex(val).map_err(|e| e.to_string());
    match key {
        "fhandle-bytes" => fh.bytes = h()? as u32,
        "fhandle-type" => fh.r#type = h()? as u32,
        "f_handle" => fh.handle = pack_handle(val).ok_or("not a hex handle")?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// The first `n` handle bytes of packed words.
pub fn unpack_handle(words: &[u64], n: usize) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.get(..n).map(|b| b.to_vec())
}

fn wd_line(id: u32, at: At, line: usize, v: &str) -> Result<pb::InotifyWdEntry> {
    let full = format!("wd:{v}");
    let mut w = pb::InotifyWdEntry {
        id,
        ..Default::default()
    };
    let mut fh = pb::FhEntry::default();
    let mut seen = 0u32;
    for (k, val) in common::pairs(&full) {
        let bad = |e: String| common::bad(KIND, at, line, "inotify wd", format!("{k}: {e}"));
        let h = || common::hex(val).map_err(|e| bad(e.to_string()));
        match k {
            "wd" => w.wd = h()? as u32,
            "ino" => w.i_ino = h()?,
            "sdev" => w.s_dev = h()? as u32,
            "mask" => w.mask = h()? as u32,
            "ignored_mask" => w.ignored_mask = h()? as u32,
            _ if handle_field(&mut fh, k, val).map_err(bad)? => {}
            _ => continue,
        }
        seen += 1;
    }
    if seen < 8 {
        return Err(common::bad(
            KIND,
            at,
            line,
            "inotify wd",
            "incomplete watch line (no file handle?)",
        ));
    }
    if fh.bytes as usize > FH_WORDS * 8 {
        return Err(common::bad(KIND, at, line, "fhandle-bytes", "over 128"));
    }
    w.f_handle = fh;
    Ok(w)
}

/// Dumps an inotify instance with its watches.
pub fn dump(d: &DumpFd<'_>, _st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let mut wd = Vec::new();
    for (line, v) in info.lines_with("inotify wd") {
        if wd.len() >= MAX_WATCHES {
            return Err(common::bad(
                KIND,
                at,
                line,
                "inotify wd",
                "too many watches",
            ));
        }
        let mut w = wd_line(d.id, at, line, v)?;
        w.f_handle.path = handle_path((w.s_dev, w.i_ino), &w.f_handle);
        wd.push(w);
    }
    let mut e = super::file_entry(pb::FdTypes::Inotify, d.id);
    e.ify = Some(pb::InotifyFileEntry {
        id: d.id,
        flags: info.flags,
        fown: common::dump_fown(KIND, at, d.file)?,
        wd,
    });
    Ok(e)
}

/// Mount points of the mounts of kernel device `kdev` (`major << 20 | minor`).
fn mounts_of(kdev: u32) -> Vec<String> {
    let (major, minor) = (kdev >> 20, kdev & 0xfffff);
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() > 4 && f[2] == format!("{major}:{minor}") {
            // The root of the mount first, so handles resolve within it.
            let mp = f[4].replace("\\040", " ");
            if f[3] == "/" {
                out.insert(0, mp);
            } else {
                out.push(mp);
            }
        }
    }
    out
}

/// Opens the watched inode of `w` (O_PATH); an inode the handle no longer finds (ESTALE:
/// unlinked) may be a restored unlinked file of `ctx`.
fn open_watched(at: At, w: &pb::InotifyWdEntry, ctx: &RestoreCtx<'_>) -> Result<OwnedFd> {
    let what = format!("wd {}", w.wd);
    open_inode(KIND, at, &what, (w.s_dev, w.i_ino), &w.f_handle, ctx)
}

/// Opens a watched or marked inode, (device, inode) `dev_ino` at dump time, by its file
/// handle `fh` (or the handle's `path`), O_PATH; an inode the handle no longer finds
/// (ESTALE: unlinked) may be a restored unlinked file of `ctx`. `what` names it in errors.
pub(crate) fn open_inode(
    kind: &'static str,
    at: At,
    what: &str,
    dev_ino: (u32, u64),
    fh: &pb::FhEntry,
    ctx: &RestoreCtx<'_>,
) -> Result<OwnedFd> {
    match open_handle(kind, at, what, dev_ino, fh, &ctx.root) {
        Err(e) if e.errno() == Some(libc::ESTALE) || e.errno() == Some(libc::ENOENT) => {
            match ctx.inodes.get(&dev_ino) {
                Some(fd) => fdkinds::open(
                    &format!("/proc/self/fd/{fd}"),
                    libc::O_PATH | libc::O_CLOEXEC,
                )
                .map_err(sys(
                    kind,
                    at,
                    format!("reopen the unlinked file of {what}"),
                )),
                None => Err(e),
            }
        }
        r => r,
    }
}

/// The path of an inode, found through its handle `fh` (the dump's hint, as CRIU records
/// it in `f_handle.path`: its restore opens that path first); `None` when the handle does
/// not open or the inode has no name (unlinked).
pub(crate) fn handle_path(dev_ino: (u32, u64), fh: &pb::FhEntry) -> Option<String> {
    let no_path = pb::FhEntry {
        path: None,
        ..fh.clone()
    };
    let fd = open_handle(KIND, At::Id(0), "", dev_ino, &no_path, Path::new("/")).ok()?;
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let path = std::fs::read_link(&link).ok()?.to_str()?.to_string();
    let same = std::fs::symlink_metadata(&path)
        .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == dev_ino.1);
    (path.starts_with('/') && same).then_some(path)
}

/// Opens an inode by its handle, or its path resolved under `root` (O_PATH).
fn open_handle(
    kind: &'static str,
    at: At,
    what: &str,
    (s_dev, i_ino): (u32, u64),
    fh: &pb::FhEntry,
    root: &Path,
) -> Result<OwnedFd> {
    let bytes = unpack_handle(&fh.handle, fh.bytes as usize).ok_or_else(|| {
        image(
            kind,
            at,
            format!("{what}: handle shorter than {} bytes", fh.bytes),
        )
    })?;
    let mut last = None;
    for mp in mounts_of(s_dev) {
        let Ok(mfd) = fdkinds::open(&mp, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
        else {
            continue;
        };
        match fdkinds::open_by_handle(
            &mfd,
            fh.r#type as i32,
            &bytes,
            libc::O_PATH | libc::O_CLOEXEC,
        ) {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
    }
    if let Some(p) = &fh.path {
        return crate::restore::root::open(root, p, nix::fcntl::OFlag::O_PATH).map_err(sys(
            kind,
            at,
            format!("open {p} under {}", root.display()),
        ));
    }
    match last {
        Some(e) => Err(sys(
            kind,
            at,
            format!("open_by_handle_at of {what} (ino {i_ino})"),
        )(e)),
        None => Err(unsupported(
            kind,
            at,
            format!("{what}: no mount of device {s_dev:#x} here"),
        )),
    }
}

/// Adds the watch of `w` until the kernel hands out its old wd.
fn add_watch(ify: impl AsFd, at: At, w: &pb::InotifyWdEntry, ctx: &RestoreCtx<'_>) -> Result<()> {
    let target = open_watched(at, w, ctx)?;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&target));
    // IN_DONT_FOLLOW would stop at the /proc link itself.
    let mask = w.mask & !(libc::IN_DONT_FOLLOW | libc::IN_MASK_ADD);
    for _ in 0..MAX_WD_TRIES {
        let wd = fdkinds::inotify_add_watch(ify.as_fd(), &path, mask).map_err(sys(
            KIND,
            at,
            format!("inotify_add_watch wd {}", w.wd),
        ))?;
        if wd as u32 == w.wd {
            return Ok(());
        }
        fdkinds::inotify_rm_watch(ify.as_fd(), wd).map_err(sys(KIND, at, "inotify_rm_watch"))?;
        if wd as u32 > w.wd {
            return Err(unsupported(
                KIND,
                at,
                format!("wd {} is already taken (got {wd})", w.wd),
            ));
        }
    }
    Err(unsupported(
        KIND,
        at,
        format!("wd {} not reached after {MAX_WD_TRIES} tries", w.wd),
    ))
}

/// Restores an inotify instance with its watches (same wd numbers).
pub fn restore(e: &pb::FileEntry, ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let ify = e
        .ify
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no ify member"))?;
    let fd = fdkinds::inotify_init(libc::IN_CLOEXEC | libc::IN_NONBLOCK).map_err(sys(
        KIND,
        at,
        "inotify_init1",
    ))?;
    let mut wds: Vec<&pb::InotifyWdEntry> = ify.wd.iter().collect();
    wds.sort_by_key(|w| w.wd);
    for w in wds {
        add_watch(&fd, at, w, ctx)?;
    }
    // Drop the IN_IGNORED events of the watches removed on the way.
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = fdkinds::read(&fd, &mut buf) {
        if n == 0 {
            break;
        }
    }
    let cur = fdkinds::get_fl(&fd).map_err(sys(KIND, at, "F_GETFL"))?;
    fdkinds::set_fl(&fd, cur & !libc::O_NONBLOCK).map_err(sys(KIND, at, "F_SETFL"))?;
    common::restore_params(KIND, e.id, &fd, ify.flags, &ify.fown)?;
    Ok(fd)
}

#[cfg(test)]
mod root_tests {
    use super::*;

    /// A watch whose handle finds nothing falls back to its path, resolved under `--root`.
    #[test]
    fn watch_path_resolves_under_the_root() {
        let root = std::env::temp_dir().join(format!("stasis-ify-root-{}", std::process::id()));
        std::fs::create_dir_all(root.join("x")).unwrap();
        std::fs::write(root.join("x/watched"), b"").unwrap();
        let fh = pb::FhEntry {
            path: Some("/x/watched".into()),
            ..Default::default()
        };
        // A device with no mount here: only the path can find the inode.
        let dev_ino = (u32::MAX, 1);
        let fd = open_handle(KIND, At::Id(1), "wd 1", dev_ino, &fh, &root).unwrap();
        let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        assert_eq!(std::fs::read_link(link).unwrap(), root.join("x/watched"));
        assert!(open_handle(KIND, At::Id(1), "wd 1", dev_ino, &fh, Path::new("/")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
