//! Unix sockets: type, state, bound name (path or abstract), listen backlog, peers, options,
//! shutdown state, and the receive queue (peeked, never consumed) into `sk-queues.img`.
//!
//! ```text
//!  dump:    ino from "socket:[ino]"; unix_diag(ino) -> state, peer ino, name, vfs ino,
//!           (rqueue, wqueue = backlog of a listener), shutdown
//!           receive queue: SO_PEEK_OFF 0 + recv(MSG_PEEK) packet by packet, then the old
//!           peek offset is put back
//!  image:   file_entry {type UNIXSK, usk {id, ino, type, state, flags, uflags, backlog, peer,
//!                       fown, opts, name, shutdown?, file_perms?, name_dir?, deleted?}}
//!           sk-queues.img {id_for = id, length} + bytes, one per packet
//!  restore (stage 0: peer == 0; stage 1: connected):
//!    unconnected   socket + bind(name) [+ listen(backlog)]; queued datagrams resent to the name
//!    pair          both entries name each other: socketpair; each end's queue is written
//!                  through the other end; the second end waits in the context for its entry
//!    to a name     peer entry does not name us back (dgram to a bound socket, or an external
//!                  peer kept as a USK_EXTERN entry): socket [+ bind] + connect(peer name)
//!    peer gone     stream ESTABLISHED with peer 0: socketpair, queue written, other end
//!                  closed (reads give the data, then EOF)
//! ```
//! Peers outside the dumped tree need `--ext-unix-sk` ([`finish`]): a named one becomes an
//! extra entry with `uflags` USK_EXTERN (restore reconnects by name), an unnamed one marks
//! the socket itself USK_EXTERN (restored with a closed peer).
//!
//! A client whose connection still waits in a dumped listener's accept queue gets the
//! listener as `peer` ([`finish`]) and connects to it again on restore (no data may be
//! queued on such a connection).
//!
//! Descriptors in flight (SCM_RIGHTS) travel with their packets: see [`super::scm`].
//! Not handled: credentials of queued messages (data only), data sent on a
//! connection not accepted yet, the names of accepted sockets (restored as a pair).

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use nix::errno::Errno;
use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, unsupported, At, Result};
use super::side_images::MAX_QUEUE;
use super::{scm, sockopts, DumpFd, DumpState, KindOps, RestoreCtx, Targets, UnixSeen};
use crate::sys::{sock_diag, socket as so};

const KIND: &str = "unix";

/// `uflags`: the socket (or peer entry) lives outside the dumped tree.
pub const USK_EXTERN: u32 = 1;

/// Kernel socket states (TCP numbering).
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LISTEN: u32 = 10;

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Unixsk,
    matches,
    dump,
    restore,
    stage,
};

/// The inode of a `socket:[N]` link.
pub fn socket_ino(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn matches(link: &str, fd: BorrowedFd<'_>) -> bool {
    socket_ino(link).is_some()
        && so::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == Ok(libc::AF_UNIX)
}

fn stage(e: &pb::FileEntry) -> u8 {
    match &e.usk {
        Some(u) if u.peer != 0 => 1,
        _ => 0,
    }
}

/// One queued packet: its bytes and copies of the descriptors passed with it.
pub type Peeked = (Vec<u8>, Vec<OwnedFd>);

/// Reads the receive queue packet by packet without consuming it (descriptors in flight come
/// as copies installed in the caller).
pub fn peek_queue(fd: BorrowedFd<'_>) -> std::result::Result<Vec<Peeked>, Errno> {
    let old = so::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    so::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let res = (|| {
        let snd = so::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
        let rcv = so::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        let cap = (snd.max(rcv).max(4096) as usize).min(MAX_QUEUE);
        let mut buf = vec![0u8; cap];
        let mut out = Vec::new();
        let mut total = 0usize;
        loop {
            match so::recv_with_rights(fd, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
                // End of stream, or a zero-length datagram (which would not advance the
                // offset); a packet of descriptors only has one byte at least on a stream.
                Ok((0, fds)) if fds.is_empty() => break,
                Ok((n, fds)) => {
                    let n = n.min(cap);
                    total += n;
                    if total > MAX_QUEUE {
                        return Err(Errno::E2BIG);
                    }
                    out.push((buf[..n].to_vec(), fds));
                    if n == 0 {
                        // A zero-length datagram with descriptors: the offset stays.
                        break;
                    }
                }
                Err(Errno::EAGAIN) => break,
                // An unconnected stream (EINVAL) or seqpacket (ENOTCONN) socket has no queue.
                Err(Errno::EINVAL | Errno::ENOTCONN) if out.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })();
    so::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)?;
    res
}

/// Path names come with the terminating NUL the kernel keeps; abstract names are kept
/// exactly (they may end in NUL bytes that belong to them).
fn trim_path(name: &[u8]) -> Vec<u8> {
    if name.first().is_some_and(|c| *c != 0) {
        let end = name.iter().position(|c| *c == 0).unwrap_or(name.len());
        name[..end].to_vec()
    } else {
        name.to_vec()
    }
}

/// The image's shutdown value of the kernel's `sk_shutdown` bits.
pub(crate) fn shutdown_of(bits: u8) -> Option<i32> {
    match bits & 3 {
        0 => None,
        1 => Some(pb::SkShutdown::Read as i32),
        2 => Some(pb::SkShutdown::Write as i32),
        _ => Some(pb::SkShutdown::Both as i32),
    }
}

/// The `shutdown(2)` argument of an image's shutdown value.
pub(crate) fn shut_how(v: i32) -> Option<i32> {
    match v {
        1 => Some(libc::SHUT_RD),
        2 => Some(libc::SHUT_WR),
        3 => Some(libc::SHUT_RDWR),
        _ => None,
    }
}

/// Dumps a unix socket.
pub fn dump(d: &DumpFd<'_>, st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let ino = socket_ino(d.link)
        .ok_or_else(|| unsupported(KIND, at, format!("not a socket link {:?}", d.link)))?;
    let diag =
        sock_diag::unix_by_ino(ino).map_err(sys(KIND, at, format!("unix_diag of ino {ino}")))?;
    let ty = so::getsockopt_int(d.file, libc::SOL_SOCKET, libc::SO_TYPE)
        .map_err(sys(KIND, at, "SO_TYPE"))?;
    let mut u = pb::UnixSkEntry {
        id: d.id,
        ino,
        r#type: ty as u32,
        state: u32::from(diag.state),
        flags: info.flags,
        uflags: 0,
        backlog: diag.rqlen.map_or(0, |r| r.1),
        peer: diag.peer,
        fown: common::dump_fown(KIND, at, d.file)?,
        opts: sockopts::dump(KIND, at, d.file)?,
        name: trim_path(&diag.name),
        shutdown: shutdown_of(diag.shutdown),
        ..Default::default()
    };
    if !u.name.is_empty() && u.name[0] != 0 {
        let name = String::from_utf8_lossy(&u.name).into_owned();
        let full = if name.starts_with('/') {
            name
        } else {
            let cwd = std::fs::read_link(format!("/proc/{}/cwd", d.pid)).map_err(|e| {
                sys(KIND, at, "readlink cwd")(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            })?;
            let dir = cwd.to_string_lossy().into_owned();
            let full = format!("{dir}/{name}");
            u.name_dir = Some(dir);
            full
        };
        // Like CRIU: the socket's own file (SIOCUNIXFILE) gives the permissions, also when
        // the name was unlinked (then `deleted`); older kernels: stat the name.
        match so::unix_file(d.file) {
            Ok(f) => {
                let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
                if let Ok(md) = std::fs::metadata(&p) {
                    u.file_perms = Some(pb::FilePermsEntry {
                        mode: md.mode(),
                        uid: md.uid(),
                        gid: md.gid(),
                    });
                }
                let gone = std::fs::read_link(&p)
                    .map(|l| l.to_string_lossy().ends_with(" (deleted)"))
                    .unwrap_or(true);
                if gone {
                    u.deleted = Some(true);
                }
            }
            Err(_) => match std::fs::symlink_metadata(&full) {
                Ok(md)
                    if md.file_type().is_socket()
                        && diag
                            .vfs
                            .is_some_and(|(vino, _)| u64::from(vino) == md.ino()) =>
                {
                    u.file_perms = Some(pb::FilePermsEntry {
                        mode: md.mode(),
                        uid: md.uid(),
                        gid: md.gid(),
                    });
                }
                _ => u.deleted = Some(true),
            },
        }
    }
    if u.state != TCP_LISTEN {
        let q = peek_queue(d.file).map_err(sys(KIND, at, "peek receive queue"))?;
        for (p, fds) in q {
            if !fds.is_empty() {
                // Dumped as files once the tasks' fds are (see `scm`).
                st.in_flight.push(super::scm::InFlight {
                    index: st.extra.sk_queues.len(),
                    fds,
                });
            }
            st.extra.sk_queues.push((
                pb::SkPacketEntry {
                    id_for: d.id,
                    length: p.len() as u32,
                    scm: vec![],
                },
                p,
            ));
        }
    }
    st.unix.push(UnixSeen {
        id: d.id,
        ino,
        peer: diag.peer,
        pid: d.pid,
        fd: d.fd,
        icons: diag.icons.clone(),
    });
    st.unix_entries.insert(d.id, u.clone());
    let mut e = super::file_entry(pb::FdTypes::Unixsk, d.id);
    e.usk = Some(u);
    Ok(e)
}

/// The whole-tree check: peers outside the dump need `--ext-unix-sk`. Returns entries to
/// add to files.img (external named peers) or to replace (sockets marked USK_EXTERN).
pub fn finish(st: &mut DumpState, next_id: &mut dyn FnMut() -> u32) -> Result<Vec<pb::FileEntry>> {
    let inos: HashSet<u32> = st.unix.iter().map(|u| u.ino).collect();
    // Clients whose connection waits in a dumped listener's accept queue (unix_diag lists
    // them in the listener's ICONS; their own peer, the not yet accepted end, has no inode).
    let waiting: std::collections::HashMap<u32, u32> = st
        .unix
        .iter()
        .flat_map(|l| l.icons.iter().map(move |i| (*i, l.ino)))
        .collect();
    let mut out = Vec::new();
    let mut ext_done = HashSet::new();
    for seen in st.unix.clone() {
        let at = At::Fd {
            pid: seen.pid,
            fd: seen.fd,
        };
        if let Some(&listener) = waiting.get(&seen.ino) {
            // Restored by connecting to the listener again; data already sent would be lost.
            let sent = sock_diag::unix_by_ino(seen.ino)
                .ok()
                .and_then(|d| d.rqlen)
                .map_or(0, |r| r.1);
            if sent != 0 {
                return Err(unsupported(
                    KIND,
                    at,
                    format!("{sent} bytes sent on a connection not accepted yet"),
                ));
            }
            if let Some(u) = st.unix_entries.get_mut(&seen.id) {
                u.peer = listener;
                let mut e = super::file_entry(pb::FdTypes::Unixsk, seen.id);
                e.usk = Some(u.clone());
                out.push(e);
            }
            continue;
        }
        if seen.peer == 0 || inos.contains(&seen.peer) {
            continue;
        }
        if !st.opts.ext_unix_sk {
            return Err(unsupported(
                KIND,
                at,
                format!(
                    "peer socket {} is outside the dumped tree (--ext-unix-sk allows it)",
                    seen.peer
                ),
            ));
        }
        let peer = sock_diag::unix_by_ino(seen.peer).ok();
        match peer.filter(|p| !p.name.is_empty()) {
            Some(p) => {
                if ext_done.insert(p.ino) {
                    let id = next_id();
                    let mut e = super::file_entry(pb::FdTypes::Unixsk, id);
                    e.usk = Some(pb::UnixSkEntry {
                        id,
                        ino: p.ino,
                        r#type: u32::from(p.ty),
                        state: u32::from(p.state),
                        uflags: USK_EXTERN,
                        name: trim_path(&p.name),
                        ..Default::default()
                    });
                    out.push(e);
                }
            }
            None => {
                if let Some(u) = st.unix_entries.get_mut(&seen.id) {
                    u.uflags |= USK_EXTERN;
                    let mut e = super::file_entry(pb::FdTypes::Unixsk, seen.id);
                    e.usk = Some(u.clone());
                    out.push(e);
                }
            }
        }
    }
    Ok(out)
}

/// `struct sockaddr_un` bytes for a recorded name (relative names resolved in `name_dir`).
pub fn sockaddr(u: &pb::UnixSkEntry) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    match (&u.name_dir, u.name.first()) {
        (Some(dir), Some(&c)) if c != 0 && c != b'/' => {
            a.extend_from_slice(dir.as_bytes());
            a.push(b'/');
            a.extend_from_slice(&u.name);
        }
        _ => a.extend_from_slice(&u.name),
    }
    a
}

fn path_of(u: &pb::UnixSkEntry) -> Option<String> {
    let a = sockaddr(u);
    let p = &a[2..];
    (!p.is_empty() && p[0] != 0).then(|| {
        String::from_utf8_lossy(p)
            .trim_end_matches('\0')
            .to_string()
    })
}

fn bind_name(
    at: At,
    fd: BorrowedFd<'_>,
    u: &pb::UnixSkEntry,
    ctx: &mut RestoreCtx<'_>,
) -> Result<()> {
    if u.name.is_empty() {
        return Ok(());
    }
    // A path name is made and looked up under --root ([`so::in_root`]); its file is reached
    // from here by its host path.
    let path = path_of(u);
    let host = path
        .as_deref()
        .map(|p| crate::restore::root::host_path(&ctx.root, p));
    if let Some(p) = &host {
        // The dead task's socket file is still there: a new bind needs the name free.
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(p);
        }
    }
    if let (Some(p), Some(true)) = (&host, u.deleted) {
        let missing: Vec<&std::path::Path> = p
            .ancestors()
            .skip(1)
            .take_while(|a| !a.as_os_str().is_empty() && std::fs::symlink_metadata(a).is_err())
            .collect();
        for dir in missing.iter().rev() {
            if std::fs::create_dir(dir).is_ok() {
                ctx.remove_later.push(dir.to_path_buf());
            }
        }
    }
    let addr = sockaddr(u);
    so::in_root(&ctx.root, || so::bind(fd, &addr)).map_err(sys(
        KIND,
        at,
        format!("bind {:?}", String::from_utf8_lossy(&u.name)),
    ))?;
    if let (Some(p), Some(true)) = (&host, u.deleted) {
        ctx.remove_later.push(p.clone());
    }
    if let Some(host) = host.as_ref().filter(|_| u.deleted != Some(true)) {
        let p = host.display();
        if let Some(perm) = &u.file_perms {
            let c = |e: std::io::Error| {
                sys(KIND, at, format!("chmod/chown {p}"))(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            };
            std::fs::set_permissions(
                host,
                std::os::unix::fs::PermissionsExt::from_mode(perm.mode & 0o7777),
            )
            .map_err(c)?;
            std::os::unix::fs::chown(host, Some(perm.uid), Some(perm.gid)).map_err(|e| {
                sys(KIND, at, format!("chown {p}"))(Errno::from_raw(
                    e.raw_os_error().unwrap_or(libc::EIO),
                ))
            })?;
        }
    }
    Ok(())
}

fn finish_fd(e: &pb::FileEntry, u: &pb::UnixSkEntry, fd: &OwnedFd) -> Result<()> {
    let at = At::Id(e.id);
    if let Some(h) = u.shutdown.and_then(shut_how) {
        so::shutdown(fd, h).map_err(sys(KIND, at, "shutdown"))?;
    }
    sockopts::restore(KIND, at, fd.as_fd(), &u.opts)?;
    common::restore_params(KIND, e.id, fd, u.flags, &u.fown)
}

fn sock_type(u: &pb::UnixSkEntry) -> i32 {
    u.r#type as i32 | libc::SOCK_CLOEXEC
}

/// Restores a unix socket.
pub fn restore(e: &pb::FileEntry, ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let u = e
        .usk
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no usk member"))?;
    if let Some(fd) = ctx.pending.remove(&u.ino) {
        finish_fd(e, u, &fd)?;
        return Ok(fd);
    }
    let mine = scm::packets_for(ctx, KIND, e.id)?;
    let peer = (u.peer != 0)
        .then(|| ctx.unix.get(&u.peer).cloned())
        .flatten();
    // A datagram socket others connected to is ESTABLISHED too, without a peer of its own.
    let dgram = u.r#type == libc::SOCK_DGRAM as u32;
    let fd = if u.peer == 0 && (u.state != TCP_ESTABLISHED || dgram) {
        // Unconnected: bound or not, maybe listening.
        let fd = so::socket(libc::AF_UNIX, sock_type(u), 0).map_err(sys(KIND, at, "socket"))?;
        bind_name(at, fd.as_fd(), u, ctx)?;
        if u.state == TCP_LISTEN {
            so::listen(&fd, u.backlog as i32).map_err(sys(KIND, at, "listen"))?;
        } else if !mine.is_empty() {
            if u.name.is_empty() {
                return Err(unsupported(
                    KIND,
                    at,
                    "queued data on an unbound, unconnected socket",
                ));
            }
            let tmp =
                so::socket(libc::AF_UNIX, sock_type(u), 0).map_err(sys(KIND, at, "socket"))?;
            let addr = sockaddr(u);
            so::in_root(&ctx.root, || so::connect(&tmp, &addr)).map_err(sys(
                KIND,
                at,
                "connect to requeue",
            ))?;
            scm::fill(KIND, at, tmp.as_fd(), mine, ctx)?;
        }
        fd
    } else if let Some(p) = peer
        .as_ref()
        .filter(|p| p.peer == u.ino && p.uflags & USK_EXTERN == 0)
    {
        // Both ends in the image: a pair.
        let (a, b) = so::socketpair(sock_type(u)).map_err(sys(KIND, at, "socketpair"))?;
        scm::fill(KIND, at, b.as_fd(), mine, ctx)?;
        let theirs = match ctx.unix_ids.get(&p.ino).copied() {
            Some(id) => scm::packets_for(ctx, KIND, id)?,
            None => Vec::new(),
        };
        scm::fill(KIND, at, a.as_fd(), theirs, ctx)?;
        ctx.pending.insert(p.ino, b);
        a
    } else if let Some(p) = peer {
        // Connected to a named socket (restored before us, or external).
        if p.name.is_empty() {
            return Err(image(
                KIND,
                at,
                format!("peer {} has no name to connect to", p.ino),
            ));
        }
        let fd = so::socket(libc::AF_UNIX, sock_type(u), 0).map_err(sys(KIND, at, "socket"))?;
        bind_name(at, fd.as_fd(), u, ctx)?;
        let addr = sockaddr(&p);
        so::in_root(&ctx.root, || so::connect(&fd, &addr)).map_err(sys(
            KIND,
            at,
            format!("connect to {:?}", String::from_utf8_lossy(&p.name)),
        ))?;
        if !mine.is_empty() {
            return Err(unsupported(
                KIND,
                at,
                "queued data on a socket connected to a named peer",
            ));
        }
        fd
    } else {
        // The peer is gone (closed, or outside the tree and unnamed).
        if u.peer != 0 && u.uflags & USK_EXTERN != 0 && !ctx.opts.ext_unix_sk {
            return Err(unsupported(KIND, at, "external peer needs --ext-unix-sk"));
        }
        if u.peer != 0 && u.uflags & USK_EXTERN == 0 {
            return Err(image(
                KIND,
                at,
                format!("peer {} is not in the image", u.peer),
            ));
        }
        let (a, b) = so::socketpair(sock_type(u)).map_err(sys(KIND, at, "socketpair"))?;
        scm::fill(KIND, at, b.as_fd(), mine, ctx)?;
        drop(b);
        a
    };
    finish_fd(e, u, &fd)?;
    Ok(fd)
}
