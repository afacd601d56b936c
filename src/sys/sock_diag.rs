//! `NETLINK_SOCK_DIAG` queries for unix sockets (unix_diag): what `/proc` does not show
//! (peer inode, listen backlog and pending connections, bound name, shutdown state); and for
//! inet sockets (inet_diag) their shutdown state.
//!
//! ```text
//!  request:  nlmsghdr {len, type 20 SOCK_DIAG_BY_FAMILY, flags REQUEST[|DUMP], seq, pid}
//!            unix_diag_req {family u8 = AF_UNIX, proto u8, pad u16, states u32, ino u32,
//!                           show u32, cookie [u32; 2]}
//!  reply:    nlmsghdr {type 20 | NLMSG_ERROR 2 | NLMSG_DONE 3}
//!            unix_diag_msg {family u8, type u8, state u8, pad u8, ino u32, cookie [u32; 2]}
//!            rtattr* {len u16, type u16, payload, padded to 4}:
//!              0 NAME bytes | 1 VFS {ino u32, dev u32} | 2 PEER u32 | 3 ICONS [u32]
//!              4 RQLEN {rqueue u32, wqueue u32} | 6 SHUTDOWN u8
//! ```
//! All parsing is bounds-checked: a short or lying reply is an `EBADMSG`, never a panic.

use nix::errno::Errno;

use super::socket;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// Most pending connections we accept in one ICONS attribute.
const MAX_ICONS: usize = 1 << 16;

/// One unix socket as unix_diag reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    pub ino: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
    pub ty: u8,
    /// TCP-style state: 1 ESTABLISHED, 7 CLOSE, 10 LISTEN.
    pub state: u8,
    /// Bound name as stored in `sun_path` (abstract names start with NUL); empty if unbound.
    pub name: Vec<u8>,
    /// Inode and (kernel) device of the bound socket file.
    pub vfs: Option<(u32, u32)>,
    /// Peer socket inode (0: none).
    pub peer: u32,
    /// Inodes of connections waiting to be accepted (listeners).
    pub icons: Vec<u32>,
    /// (rqueue, wqueue): bytes queued for others, or (pending, max backlog) for listeners.
    pub rqlen: Option<(u32, u32)>,
    /// `RCV_SHUTDOWN` 1 | `SEND_SHUTDOWN` 2.
    pub shutdown: u8,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, Errno> {
    let s = b.get(off..off + 4).ok_or(Errno::EBADMSG)?;
    Ok(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, Errno> {
    let s = b.get(off..off + 2).ok_or(Errno::EBADMSG)?;
    Ok(u16::from_ne_bytes([s[0], s[1]]))
}

fn request(ino: u32, dump: bool, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(&40u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(libc::AF_UNIX as u8);
    m.push(0);
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&ino.to_ne_bytes());
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    m.extend_from_slice(&show.to_ne_bytes());
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m
}

/// Parses one `unix_diag_msg` with its attributes (the payload after the nlmsghdr).
pub fn parse_unix(p: &[u8]) -> Result<UnixDiag, Errno> {
    if p.len() < 16 {
        return Err(Errno::EBADMSG);
    }
    let mut d = UnixDiag {
        ty: p[1],
        state: p[2],
        ino: u32_at(p, 4)?,
        ..Default::default()
    };
    for (ty, a) in attrs(p, 16)? {
        match ty {
            UNIX_DIAG_NAME => d.name = a.to_vec(),
            UNIX_DIAG_VFS => d.vfs = Some((u32_at(a, 0)?, u32_at(a, 4)?)),
            UNIX_DIAG_PEER => d.peer = u32_at(a, 0)?,
            UNIX_DIAG_ICONS => {
                let n = a.len() / 4;
                if n > MAX_ICONS {
                    return Err(Errno::EBADMSG);
                }
                d.icons = (0..n).map(|i| u32_at(a, i * 4)).collect::<Result<_, _>>()?;
            }
            UNIX_DIAG_RQLEN => d.rqlen = Some((u32_at(a, 0)?, u32_at(a, 4)?)),
            UNIX_DIAG_SHUTDOWN => d.shutdown = *a.first().ok_or(Errno::EBADMSG)?,
            _ => {}
        }
    }
    Ok(d)
}

/// The rtattrs of a message from `off` on: (type, payload).
fn attrs(p: &[u8], mut off: usize) -> Result<Vec<(u16, &[u8])>, Errno> {
    let mut out = Vec::new();
    while off + 4 <= p.len() {
        let len = u16_at(p, off)? as usize;
        let ty = u16_at(p, off + 2)?;
        if len < 4 || off + len > p.len() {
            return Err(Errno::EBADMSG);
        }
        out.push((ty, &p[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    Ok(out)
}

fn query(ino: u32, dump: bool) -> Result<Vec<UnixDiag>, Errno> {
    ask(&request(ino, dump, 1), dump, parse_unix)
}

/// Sends one sock_diag request and parses the replies with `parse`.
fn ask<T>(req: &[u8], dump: bool, parse: fn(&[u8]) -> Result<T, Errno>) -> Result<Vec<T>, Errno> {
    let nl = socket::socket(
        libc::AF_NETLINK,
        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
        libc::NETLINK_SOCK_DIAG,
    )?;
    let mut addr = vec![0u8; 12];
    addr[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    socket::connect(&nl, &addr)?;
    socket::send(&nl, req, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = socket::recv(&nl, &mut buf, 0)?.min(buf.len());
        if n == 0 {
            return Err(Errno::EBADMSG);
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(&buf, off)? as usize;
            let ty = u16_at(&buf, off + 4)?;
            if len < 16 || off + len > n {
                return Err(Errno::EBADMSG);
            }
            let payload = &buf[off + 16..off + len];
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = u32_at(payload, 0)? as i32;
                    return if e == 0 {
                        Ok(out)
                    } else {
                        Err(Errno::from_raw(-e))
                    };
                }
                SOCK_DIAG_BY_FAMILY => out.push(parse(payload)?),
                _ => {}
            }
            off += (len + 3) & !3;
        }
        if !dump && !out.is_empty() {
            return Ok(out);
        }
    }
}

/// The unix socket with inode `ino` (`ENOENT` if there is none).
pub fn unix_by_ino(ino: u32) -> Result<UnixDiag, Errno> {
    query(ino, false)?
        .into_iter()
        .find(|d| d.ino == ino)
        .ok_or(Errno::ENOENT)
}

/// What inet_diag tells of an inet socket that getsockopt does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InetDiag {
    pub ino: u32,
    /// `RCV_SHUTDOWN` 1 | `SEND_SHUTDOWN` 2.
    pub shutdown: u8,
}

/// `INET_DIAG_SHUTDOWN` (u8), sent with every `inet_diag_msg`.
const INET_DIAG_SHUTDOWN: u16 = 8;
/// Size of `inet_diag_msg`: family, state, timer, retrans u8, `inet_diag_sockid` (48 bytes),
/// expires, rqueue, wqueue, uid, inode u32.
const INET_DIAG_MSG: usize = 72;

/// Parses one `inet_diag_msg` with its attributes.
pub fn parse_inet(p: &[u8]) -> Result<InetDiag, Errno> {
    if p.len() < INET_DIAG_MSG {
        return Err(Errno::EBADMSG);
    }
    let mut d = InetDiag {
        ino: u32_at(p, INET_DIAG_MSG - 4)?,
        shutdown: 0,
    };
    for (ty, a) in attrs(p, INET_DIAG_MSG)? {
        if ty == INET_DIAG_SHUTDOWN {
            d.shutdown = *a.first().ok_or(Errno::EBADMSG)?;
        }
    }
    Ok(d)
}

/// The inet socket of `family` and `proto` with inode `ino`, among every one of this network
/// namespace (`inet_diag_req_v2` dump: nlmsghdr + family, protocol, ext, pad u8, states u32,
/// a zero `inet_diag_sockid`).
pub fn inet_by_ino(family: i32, proto: i32, ino: u32) -> Result<InetDiag, Errno> {
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family as u8, proto as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&[0u8; 48]);
    ask(&m, true, parse_inet)?
        .into_iter()
        .find(|d| d.ino == ino)
        .ok_or(Errno::ENOENT)
}

/// Every unix socket of this network namespace.
pub fn unix_all() -> Result<Vec<UnixDiag>, Errno> {
    query(0, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ino(fd: &std::os::fd::OwnedFd) -> u32 {
        use std::os::fd::AsRawFd;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino() as u32
    }

    #[test]
    fn pair_peers_and_listener() {
        let (a, b) = socket::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        let da = unix_by_ino(ino(&a)).unwrap();
        assert_eq!(da.peer, ino(&b));
        assert_eq!(da.state, 1);
        let l = socket::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        let mut addr = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        addr.extend_from_slice(b"\0stasis-diag-test");
        socket::bind(&l, &addr).unwrap();
        socket::listen(&l, 7).unwrap();
        let dl = unix_by_ino(ino(&l)).unwrap();
        assert_eq!(dl.state, 10);
        assert_eq!(dl.name, b"\0stasis-diag-test");
        assert_eq!(dl.rqlen, Some((0, 7)));
        assert!(unix_all().unwrap().iter().any(|d| d.ino == ino(&l)));
    }

    #[test]
    fn udp_shutdown_state() {
        let s = socket::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        let mut a = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&[0, 0, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        socket::bind(&s, &a).unwrap();
        let d = inet_by_ino(libc::AF_INET, libc::IPPROTO_UDP, ino(&s)).unwrap();
        assert_eq!(d.shutdown, 0);
        let _ = socket::shutdown(&s, libc::SHUT_WR);
        let d = inet_by_ino(libc::AF_INET, libc::IPPROTO_UDP, ino(&s)).unwrap();
        assert_eq!(d.shutdown, 2);
    }

    #[test]
    fn rejects_bad_attrs() {
        let mut p = vec![0u8; 16];
        p.extend_from_slice(&100u16.to_ne_bytes());
        p.extend_from_slice(&0u16.to_ne_bytes());
        assert_eq!(parse_unix(&p).unwrap_err(), Errno::EBADMSG);
        assert_eq!(parse_unix(&[0u8; 3]).unwrap_err(), Errno::EBADMSG);
    }
}
