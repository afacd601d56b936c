//! Terminals: pty masters (`/dev/ptmx`), slaves (`/dev/pts/N`) and `/dev/tty` (the
//! controlling terminal of the task, CRIU's TTY_TYPE__CTTY), with their state in
//! `tty-info.img` and the data queued in a pair in `tty-data.img`; `--shell-job` for a slave
//! whose master is outside.
//!
//! ```text
//!  image:  file_entry {type TTY, tty {id, tty_info_id, flags, fown, regf_id}}
//!          file_entry {type REG, reg {id = regf_id, name "/dev/ptmx" | "/dev/pts/N" |
//!                      "/dev/tty", flags, fown, mode}}          (CRIU opens ttys by this path)
//!          tty-info.img {id = index << 1 | is_master, type PTY, locked, exclusive,
//!                        packet_mode, sid, pgrp, rdev, termios (c_cc packed as CRIU's, speeds 0),
//!                        termios_locked, winsize, pty {index}, dev, uid, gid}  one per side
//!                       {id = 1006 << 1, type CTTY, sid, pgrp, rdev 5:0, termios, ...}
//!          tty-data.img {tty_id = the side that would have read it, data}   (pairs only)
//!  dump:   index: TIOCGPTN (master) or the /dev/pts number; termios/winsize/exclusive from
//!          the fd; lock and packet mode from the master; the session and foreground group
//!          of the terminal: TIOCGSID/TIOCGPGRP through a master, /proc/PID/stat of the task
//!          when it is its controlling terminal (a slave, /dev/tty)
//!  finish: (tree frozen, after the last task) for each pair with both sides dumped, what
//!          each side has ready to read is read out and written back at once through the
//!          other side (tty_queue; like CRIU: the kernel has no peek for tty queues);
//!          the REG entries of the paths, and regf_id in the TTY entries
//!  restore (master stage 0, slave stage 1):
//!          master: /dev/ptmx opened until the kernel hands out the old index; unlocked;
//!                  termios, winsize, packet mode; kept in the context for its slaves
//!          slave:  TIOCGPTPEER on the restored master; termios, winsize; the first slave
//!                  of a pair writes the queued data back (master's through the slave,
//!                  slave's through the master)
//!          slave without master in the image: --shell-job reuses the restorer's own terminal
//!          (its fd 0) with the dumped termios and window size, like CRIU; otherwise an error
//!          /dev/tty: opened by its task once the session has its terminal (`restore::ctty`)
//!          ctx.finish(): masters that were locked are locked again
//! ```
//! Making a terminal the controlling one (TIOCSCTTY, TIOCSPGRP with `sid`/`pgrp` of its
//! tty_info) happens in the restored tasks and is the engine's part (`restore::ctty`).
//! Refused by name: consoles, virtual consoles, serial lines and other tty drivers (CRIU
//! reopens those by path; not built here), `--external tty[...]`.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, unsupported, At, Result};
use super::{DumpFd, DumpState, KindOps, RestoreCtx, Targets};
use crate::sys::{fdkinds, tty as t};

const KIND: &str = "tty";

/// `/dev/ptmx` is character device 5:2; slaves are majors 136..=143.
const PTMX: (u64, u64) = (5, 2);
const PTS_MAJORS: std::ops::RangeInclusive<u64> = 136..=143;
/// `/dev/tty` (the caller's controlling terminal) is 5:0.
const CTTY: (u64, u64) = (5, 0);
/// CRIU's index of `/dev/tty` (its tty_info id is `CTTY_INDEX << 1`).
pub const CTTY_INDEX: u32 = 1006;
/// CRIU's indexes of external terminals: `ETTY_INDEX + n`, n from 1, up to `ETTY_INDEX_MAX`.
pub const ETTY_INDEX: u32 = 1012;
pub const ETTY_INDEX_MAX: u32 = 1076;
/// How many masters we open at most to get the old pty index back.
pub const MAX_INDEX_TRIES: usize = 4096;

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Tty,
    matches,
    dump,
    restore,
    stage,
};

/// The ttys of a dump: a descriptor of each pty side (for the queued data) and the entries
/// that get their path entry (`regf_id`) at the end.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// tty_info ids already written.
    infos: HashSet<u32>,
    /// One descriptor (the dumper's copy) per pty side, by tty_info id.
    sides: BTreeMap<u32, (OwnedFd, bool)>,
    /// TTY entries and the path and mode of their REG entry.
    entries: Vec<(pb::FileEntry, String, u32)>,
    /// External terminals so far (`--external tty[...]`).
    ext_count: u32,
}

impl Seen {
    /// No terminal was seen in the dump.
    pub(crate) fn is_empty(&self) -> bool {
        self.infos.is_empty() && self.entries.is_empty() && self.ext_count == 0
    }
}

fn rdev(fd: BorrowedFd<'_>) -> Option<(u64, u64, u64)> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return None;
    }
    let r = st.st_rdev;
    Some((libc::major(r) as u64, libc::minor(r) as u64, r))
}

fn matches(link: &str, fd: BorrowedFd<'_>) -> bool {
    match rdev(fd) {
        Some((ma, mi, _)) if link == "/dev/tty" => (ma, mi) == CTTY,
        Some((ma, mi, _)) if link.starts_with("/dev/pts/") || link == "/dev/ptmx" => {
            (ma, mi) == PTMX || PTS_MAJORS.contains(&ma)
        }
        _ => false,
    }
}

/// What a terminal device that is not a pty or `/dev/tty` is, for the refusal naming it.
pub fn other_tty_kind(major: u64, minor: u64) -> Option<&'static str> {
    match (major, minor) {
        (5, 1) => Some("the system console"),
        (4, 0..=63) => Some("a virtual console (VT)"),
        (4, _) => Some("a serial line"),
        (204, _) | (188, _) | (166, _) => Some("a serial line"),
        (5, 0) | (5, 2) => None,
        (ma, _) if PTS_MAJORS.contains(&ma) => None,
        (2 | 3, _) => Some("a BSD pty"),
        _ => None,
    }
}

fn stage(e: &pb::FileEntry) -> u8 {
    match &e.tty {
        Some(f) if f.tty_info_id & 1 == 0 => 1,
        _ => 0,
    }
}

/// Words of `c_cc` in an image (CRIU's TERMIOS_NCC; its restore refuses fewer).
const CC_WORDS: usize = 19;
/// Bytes of glibc's `c_cc`, which CRIU copies into the first words of the image's `c_cc`.
const CC_PACKED: usize = 32;

/// The image's termios. `c_cc` as CRIU writes it (a `memcpy` of glibc's 32-byte `c_cc` into
/// the repeated u32 field): the control characters packed four to a word, little-endian, in
/// the first 8 words; the other words 0.
fn termios_entry(x: t::Termios) -> pb::TermiosEntry {
    let mut bytes = [0u8; CC_PACKED];
    bytes[..t::NCCS].copy_from_slice(&x.cc);
    let mut c_cc: Vec<u32> = bytes
        .chunks(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect();
    c_cc.resize(CC_WORDS, 0);
    pb::TermiosEntry {
        c_iflag: x.iflag,
        c_oflag: x.oflag,
        c_cflag: x.cflag,
        c_lflag: x.lflag,
        c_line: u32::from(x.line),
        c_ispeed: 0,
        c_ospeed: 0,
        c_cc,
    }
}

/// The kernel termios of an image entry. `c_cc` packed as CRIU writes it (see
/// [`termios_entry`]); images of older stasis versions had one character per word, told
/// apart by no word being above 0xff (a packed `c_cc` has VINTR..VKILL in its first word).
fn termios_of(e: &pb::TermiosEntry) -> t::Termios {
    let mut cc = [0u8; t::NCCS];
    if e.c_cc.iter().any(|w| *w > 0xff) {
        let bytes = e
            .c_cc
            .iter()
            .take(CC_PACKED / 4)
            .flat_map(|w| w.to_le_bytes());
        for (d, s) in cc.iter_mut().zip(bytes) {
            *d = s;
        }
    } else {
        for (d, s) in cc.iter_mut().zip(&e.c_cc) {
            *d = *s as u8;
        }
    }
    t::Termios {
        iflag: e.c_iflag,
        oflag: e.c_oflag,
        cflag: e.c_cflag,
        lflag: e.c_lflag,
        line: e.c_line as u8,
        cc,
    }
}

/// (session, foreground group) of `pid`'s controlling terminal if it is device `rdev`
/// (any terminal when `rdev` is None: `/dev/tty`).
fn ctty_of(pid: i32, rdev: Option<u64>) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split(' ').collect();
    // After "comm": state ppid pgrp session tty_nr tpgid ...
    let (session, tty_nr, tpgid): (u32, u64, i64) = (
        f.get(3)?.parse().ok()?,
        f.get(4)?.parse().ok()?,
        f.get(5)?.parse().ok()?,
    );
    let same = match rdev {
        Some(rdev) => {
            let (ma, mi) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
            tty_nr == (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12)
        }
        None => tty_nr != 0,
    };
    same.then_some((session, tpgid.max(0) as u32))
}

/// Dumps a pty end or a `/dev/tty` descriptor.
pub fn dump(d: &DumpFd<'_>, st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let f = d.file;
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let (ma, mi, raw) = rdev(f).ok_or_else(|| unsupported(KIND, at, "not a character device"))?;
    let md = nix::sys::stat::fstat(f).map_err(sys(KIND, at, "fstat"))?;
    let ctty = (ma, mi) == CTTY;
    // `--external tty[RDEV:DEV]`: each description its own index, as CRIU.
    let ext = !ctty && st.ext_ttys.contains(&(raw as u32, md.st_dev as u32));
    let master = (ma, mi) == PTMX && !ext;
    let index = if ctty {
        CTTY_INDEX
    } else if ext {
        st.tty.ext_count += 1;
        if st.tty.ext_count > ETTY_INDEX_MAX - ETTY_INDEX {
            return Err(unsupported(KIND, at, "too many external terminals"));
        }
        ETTY_INDEX + st.tty.ext_count
    } else if master {
        t::get_int(f, t::TIOCGPTN).map_err(sys(KIND, at, "TIOCGPTN"))? as u32
    } else {
        ((ma - PTS_MAJORS.start()) * 256 + mi) as u32
    };
    let info_id = (index << 1) | u32::from(master);
    if st.tty.infos.insert(info_id) {
        let term = t::get_termios(f, t::TCGETS).map_err(sys(KIND, at, "TCGETS"))?;
        let locked_t =
            t::get_termios(f, t::TIOCGLCKTRMIOS).map_err(sys(KIND, at, "TIOCGLCKTRMIOS"))?;
        let ws = t::get_winsize(f).map_err(sys(KIND, at, "TIOCGWINSZ"))?;
        let flag = |req, what| {
            t::get_int(f, req)
                .map(|v| v != 0)
                .map_err(sys(KIND, at, what))
        };
        let (sid, pgrp) = if master {
            (
                t::get_int(f, t::TIOCGSID).unwrap_or(0) as u32,
                t::get_int(f, t::TIOCGPGRP).unwrap_or(0) as u32,
            )
        } else {
            ctty_of(d.pid, (!ctty).then_some(raw)).unwrap_or((0, 0))
        };
        let ty = match (ctty, ext) {
            (true, _) => pb::TtyType::Ctty,
            (_, true) => pb::TtyType::ExtTty,
            _ => pb::TtyType::Pty,
        };
        let packet_mode = master && flag(t::TIOCGPKT, "TIOCGPKT")?;
        let ti = pb::TtyInfoEntry {
            id: info_id,
            r#type: ty as i32,
            locked: master && flag(t::TIOCGPTLCK, "TIOCGPTLCK")?,
            exclusive: flag(t::TIOCGEXCL, "TIOCGEXCL")?,
            packet_mode,
            sid,
            pgrp,
            rdev: raw as u32,
            termios: Some(termios_entry(term)),
            termios_locked: Some(termios_entry(locked_t)),
            winsize: Some(pb::WinsizeEntry {
                ws_row: u32::from(ws[0]),
                ws_col: u32::from(ws[1]),
                ws_xpixel: u32::from(ws[2]),
                ws_ypixel: u32::from(ws[3]),
            }),
            pty: (ty == pb::TtyType::Pty).then_some(pb::TtyPtyEntry { index }),
            dev: Some(md.st_dev as u32),
            uid: Some(md.st_uid),
            gid: Some(md.st_gid),
        };
        st.extra.tty_info.push(ti);
        if ty == pb::TtyType::Pty {
            let copy = f.try_clone_to_owned().map_err(|e| {
                sys(KIND, at, "dup")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            })?;
            st.tty.sides.insert(info_id, (copy, packet_mode));
        }
    }
    let mut e = super::file_entry(pb::FdTypes::Tty, d.id);
    e.tty = Some(pb::TtyFileEntry {
        id: d.id,
        tty_info_id: info_id,
        flags: info.flags,
        fown: common::dump_fown(KIND, at, f)?,
        regf_id: None,
    });
    // An external terminal has no path entry (CRIU's neither): it is inherited.
    if !ext {
        st.tty
            .entries
            .push((e.clone(), d.link.to_string(), md.st_mode));
    }
    Ok(e)
}

/// After the last task (the tree frozen): the data queued in each pair with both sides in the
/// dump goes to `tty-data.img` (read out, and written back at once: see [`super::tty_queue`]);
/// every TTY entry gets the REG entry of its path (`regf_id`), as CRIU's restore needs.
pub fn finish(st: &mut DumpState, next_id: &mut dyn FnMut() -> u32) -> Result<Vec<pb::FileEntry>> {
    let sides = std::mem::take(&mut st.tty.sides);
    st.extra.tty_data.extend(super::tty_queue::dump(&sides)?);
    let mut out = Vec::new();
    for (mut e, path, mode) in std::mem::take(&mut st.tty.entries) {
        let Some(tf) = e.tty.as_mut() else { continue };
        let rid = next_id();
        tf.regf_id = Some(rid);
        let mut r = super::file_entry(pb::FdTypes::Reg, rid);
        r.reg = Some(pb::RegFileEntry {
            id: rid,
            flags: tf.flags,
            pos: 0,
            fown: tf.fown,
            name: path,
            mode: Some(mode),
            ..Default::default()
        });
        out.push(r);
        out.push(e);
    }
    Ok(out)
}

/// Opens /dev/ptmx until the kernel hands out `index`.
fn open_master(at: At, index: u32) -> Result<OwnedFd> {
    let mut spare = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..MAX_INDEX_TRIES {
        let m = fdkinds::open("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
            .map_err(sys(KIND, at, "open /dev/ptmx"))?;
        let got = t::get_int(&m, t::TIOCGPTN).map_err(sys(KIND, at, "TIOCGPTN"))? as u32;
        if got == index {
            return Ok(m);
        }
        if got > index || !seen.insert(got) {
            break;
        }
        spare.push(m);
    }
    Err(unsupported(
        KIND,
        at,
        format!("pty index {index} is in use"),
    ))
}

fn apply(at: At, f: BorrowedFd<'_>, ti: &pb::TtyInfoEntry) -> Result<()> {
    if let Some(x) = &ti.termios_locked {
        t::set_termios(f, t::TIOCSLCKTRMIOS, termios_of(x)).map_err(sys(
            KIND,
            at,
            "TIOCSLCKTRMIOS",
        ))?;
    }
    if let Some(x) = &ti.termios {
        t::set_termios(f, t::TCSETS, termios_of(x)).map_err(sys(KIND, at, "TCSETS"))?;
    }
    if let Some(w) = &ti.winsize {
        let ws = [
            w.ws_row as u16,
            w.ws_col as u16,
            w.ws_xpixel as u16,
            w.ws_ypixel as u16,
        ];
        t::set_winsize(f, ws).map_err(sys(KIND, at, "TIOCSWINSZ"))?;
    }
    if ti.exclusive {
        t::no_arg(f, t::TIOCEXCL).map_err(sys(KIND, at, "TIOCEXCL"))?;
    }
    Ok(())
}

/// The tty-info entry of a TTY file entry.
pub fn info_of<'e>(extra: &'e super::Extra, e: &pb::FileEntry) -> Option<&'e pb::TtyInfoEntry> {
    let id = e.tty.as_ref()?.tty_info_id;
    extra.tty_info.iter().find(|i| i.id == id)
}

/// How CRIU names a terminal (`--external`, `--inherit-fd`): `tty[RDEV:DEV]` in hex.
pub fn ext_key(ti: &pb::TtyInfoEntry) -> String {
    format!("tty[{:x}:{:x}]", ti.rdev, ti.dev.unwrap_or(0))
}

/// Whether a TTY entry is a `/dev/tty` descriptor (opened by its task: `restore::ctty`).
pub fn is_ctty(extra: &super::Extra, e: &pb::FileEntry) -> bool {
    info_of(extra, e).is_some_and(|i| i.r#type == pb::TtyType::Ctty as i32)
}

/// Restores a pty end.
pub fn restore(e: &pb::FileEntry, ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let tf = e
        .tty
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no tty member"))?;
    let ti = info_of(ctx.extra, e)
        .ok_or_else(|| image(KIND, at, format!("no tty-info entry {}", tf.tty_info_id)))?
        .clone();
    if ti.r#type != pb::TtyType::Pty as i32 {
        let what = match pb::TtyType::try_from(ti.r#type) {
            Ok(pb::TtyType::Console) => "the system console".to_string(),
            Ok(pb::TtyType::Vt) => "a virtual console (VT)".to_string(),
            Ok(pb::TtyType::Serial) => "a serial line".to_string(),
            Ok(pb::TtyType::ExtTty) => format!(
                "external terminal {} without --inherit-fd fd[N]:{}",
                ext_key(&ti),
                ext_key(&ti)
            ),
            Ok(pb::TtyType::Ctty) => "/dev/tty outside its task".to_string(),
            _ => format!("tty type {}", ti.r#type),
        };
        return Err(unsupported(KIND, at, format!("{what} is not restored")));
    }
    let index = ti.pty.as_ref().map_or(tf.tty_info_id >> 1, |p| p.index);
    let master = tf.tty_info_id & 1 == 1;
    let fd =
        if master {
            let m = match ctx.pty_masters.get(&index) {
                Some(m) => fdkinds::reopen(m, libc::O_RDWR | libc::O_NOCTTY).map_err(sys(
                    KIND,
                    at,
                    "reopen master",
                ))?,
                None => {
                    let m = open_master(at, index)?;
                    t::set_int(&m, t::TIOCSPTLCK, 0).map_err(sys(KIND, at, "TIOCSPTLCK"))?;
                    let keep = m.try_clone().map_err(|e| {
                        sys(KIND, at, "dup")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                    })?;
                    ctx.pty_masters.insert(index, keep);
                    if ti.locked {
                        ctx.pty_relock.push(index);
                    }
                    m
                }
            };
            if ti.packet_mode {
                t::set_int(&m, t::TIOCPKT, 1).map_err(sys(KIND, at, "TIOCPKT"))?;
            }
            apply(at, m.as_fd(), &ti)?;
            m
        } else if let Some(m) = ctx.pty_masters.get(&index) {
            let s = t::open_peer(m, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
                .map_err(sys(KIND, at, format!("TIOCGPTPEER of pty {index}")))?;
            apply(at, s.as_fd(), &ti)?;
            if ctx.pty_refilled.insert(index) {
                super::tty_queue::restore(at, ctx.extra, index, m.as_fd(), s.as_fd())?;
            }
            s
        } else if ctx.opts.shell_job {
            // The master belongs to the shell that started us: use our own terminal.
            let stdin = std::io::stdin();
            let zero = stdin.as_fd();
            if !t::is_tty(zero) {
                return Err(unsupported(
                    KIND,
                    at,
                    "--shell-job restore needs a terminal on fd 0",
                ));
            }
            let fd = zero.try_clone_to_owned().map_err(|e| {
                sys(KIND, at, "dup fd 0")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            })?;
            // The job's terminal settings (raw mode, window size) move with it, as in CRIU.
            apply(at, fd.as_fd(), &ti)?;
            fd
        } else {
            return Err(unsupported(
                KIND,
                at,
                format!("pty {index} has no master in the image (--shell-job)"),
            ));
        };
    common::restore_params(KIND, e.id, &fd, tf.flags, &tf.fown)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `c_cc` as CRIU 4.2 writes it (taken from a CRIU dump of a raw-mode pty: VINTR 7,
    /// VMIN 1), read back, and written again the same way.
    #[test]
    fn c_cc_packed_like_criu() {
        let mut x = t::Termios::default();
        x.cc[libc::VINTR] = 7;
        x.cc[libc::VQUIT] = 0x1c;
        x.cc[libc::VMIN] = 1;
        x.cc[libc::VEOL2] = 0x42;
        let e = termios_entry(x);
        assert_eq!(e.c_cc.len(), CC_WORDS);
        assert_eq!(e.c_cc[0], 0x0000_1c07);
        assert_eq!(e.c_cc[1], 0x0001_0000, "VMIN is byte 6: word 1, third byte");
        assert!(e.c_cc[8..].iter().all(|w| *w == 0));
        assert_eq!(termios_of(&e), x);
        // One character per word (older stasis images) still reads.
        let mut old = e.clone();
        old.c_cc = x.cc.iter().map(|c| u32::from(*c)).collect();
        assert_eq!(termios_of(&old), x);
    }
}
