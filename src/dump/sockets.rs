//! Inet sockets (TCP and UDP, IPv4 and IPv6) from the kernel's sock_diag netlink interface.
//!
//! ```text
//!  request  nlmsghdr{len, SOCK_DIAG_BY_FAMILY=20, NLM_F_REQUEST|NLM_F_DUMP}
//!           inet_diag_req_v2{family u8, protocol u8, ext u8 (1<<(SKMEMINFO-1)), pad u8,
//!                            states u32, sockid (48 bytes, zero)}
//!  reply    nlmsghdr + inet_diag_msg{family, state, timer, retrans u8;
//!             sockid{sport be16, dport be16, src [4]be32, dst [4]be32, if u32, cookie [2]u32};
//!             expires, rqueue, wqueue, uid, inode u32}  + rtattrs {len u16, type u16, data}
//!           ... until NLMSG_DONE (3)
//!  LISTEN: wqueue is the backlog; attrs SKMEMINFO (u32[]: rcvbuf @1, sndbuf @3),
//!          SKV6ONLY (u8, IPv6 listening/closed sockets)
//! ```
//! The dumper must be in the task's network namespace (checked by the caller).

use std::collections::HashMap;
use std::os::fd::AsFd;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

/// One inet socket as sock_diag describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InetSock {
    pub family: u32,
    pub proto: u32,
    pub state: u32,
    pub src_port: u32,
    pub dst_port: u32,
    pub src_addr: Vec<u32>,
    pub dst_addr: Vec<u32>,
    pub rqueue: u32,
    pub wqueue: u32,
    pub inode: u32,
    pub rcvbuf: u32,
    pub sndbuf: u32,
    pub v6only: Option<bool>,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SKMEMINFO: u16 = 7;
const INET_DIAG_SKV6ONLY: u16 = 11;
/// Largest reply buffer we read at once.
const BUF: usize = 1 << 16;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn be16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

/// Parses one `inet_diag_msg` with its attributes.
pub fn parse_msg(m: &[u8]) -> Option<InetSock> {
    let family = *m.first()? as u32;
    let state = *m.get(1)? as u32;
    let id = 4;
    let words = if family == libc::AF_INET6 as u32 {
        4
    } else {
        1
    };
    let addr = |base: usize| -> Option<Vec<u32>> {
        (0..words)
            .map(|i| {
                m.get(base + 4 * i..base + 4 * i + 4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            })
            .collect()
    };
    let mut s = InetSock {
        family,
        state,
        src_port: be16_at(m, id)? as u32,
        dst_port: be16_at(m, id + 2)? as u32,
        src_addr: addr(id + 4)?,
        dst_addr: addr(id + 20)?,
        rqueue: u32_at(m, 56)?,
        wqueue: u32_at(m, 60)?,
        inode: u32_at(m, 68)?,
        ..Default::default()
    };
    let mut o = 72;
    while o + 4 <= m.len() {
        let len = u16_at(m, o)? as usize;
        let ty = u16_at(m, o + 2)?;
        if len < 4 || o + len > m.len() {
            break;
        }
        let data = &m[o + 4..o + len];
        match ty {
            INET_DIAG_SKMEMINFO => {
                s.rcvbuf = u32_at(data, 4).unwrap_or(0);
                s.sndbuf = u32_at(data, 12).unwrap_or(0);
            }
            INET_DIAG_SKV6ONLY => s.v6only = data.first().map(|&b| b != 0),
            _ => {}
        }
        o += (len + 3) & !3;
    }
    Some(s)
}

/// Every socket of `family`/`proto` in the dumper's network namespace, by inode.
pub fn dump_family(family: u8, proto: u8) -> std::io::Result<HashMap<u32, InetSock>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(std::io::Error::from)?;
    let mut req = Vec::with_capacity(72);
    let len: u32 = 16 + 56;
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.push(family);
    req.push(proto);
    req.push(1 << (INET_DIAG_SKMEMINFO - 1));
    req.push(0);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&[0u8; 48]);
    let sent = nix::unistd::write(fd.as_fd(), &req).map_err(std::io::Error::from)?;
    if sent != req.len() {
        return Err(std::io::Error::other("short netlink write"));
    }
    let mut out = HashMap::new();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = nix::unistd::read(fd.as_fd(), &mut buf).map_err(std::io::Error::from)?;
        if n == 0 {
            return Err(std::io::Error::other("netlink closed before NLMSG_DONE"));
        }
        let mut o = 0;
        while o + 16 <= n {
            let mlen = u32_at(&buf, o).unwrap_or(0) as usize;
            let ty = u16_at(&buf, o + 4).unwrap_or(0);
            if mlen < 16 || o + mlen > n {
                return Err(std::io::Error::other("malformed netlink message"));
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = u32_at(&buf, o + 16).unwrap_or(0) as i32;
                    return Err(std::io::Error::from_raw_os_error(-e));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(mut s) = parse_msg(&buf[o + 16..o + mlen]) {
                        s.proto = proto as u32;
                        out.insert(s.inode, s);
                    }
                }
                _ => {}
            }
            o += (mlen + 3) & !3;
        }
    }
}

/// All TCP and UDP sockets, IPv4 and IPv6, by inode.
pub fn all_inet() -> std::io::Result<HashMap<u32, InetSock>> {
    let mut all = HashMap::new();
    for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for proto in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            all.extend(dump_family(fam, proto)?);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ino_of(fd: &impl std::os::fd::AsRawFd) -> u32 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino() as u32
    }

    #[test]
    fn finds_own_listeners() {
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l4.local_addr().unwrap().port() as u32;
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let all = all_inet().unwrap();
        let s = &all[&ino_of(&l4)];
        assert_eq!(
            (s.family, s.proto, s.state, s.src_port),
            (libc::AF_INET as u32, 6, 10, port)
        );
        assert_eq!(s.src_addr, vec![u32::from_ne_bytes([127, 0, 0, 1])]);
        assert_eq!(s.wqueue, 128, "backlog of std's listen");
        assert!(s.sndbuf > 0 && s.rcvbuf > 0);
        let us = &all[&ino_of(&u)];
        assert_eq!(us.proto, 17);
    }

    #[test]
    fn garbage_messages_do_not_panic() {
        assert!(parse_msg(&[]).is_none());
        assert!(parse_msg(&[10, 10, 0, 0]).is_none());
        let mut m = vec![2u8; 72];
        m.extend_from_slice(&[200, 0, 7, 0]);
        assert!(parse_msg(&m).is_some());
    }
}
