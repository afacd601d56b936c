//! inet/inet6 sockets: TCP listeners, UDP sockets (bound or connected), unconnected TCP
//! sockets, and established TCP connections with `--tcp-established` ([`super::tcp`]).
//!
//! ```text
//!  dump:    family/type/proto from SO_DOMAIN/SO_TYPE/SO_PROTOCOL; state: TCP_INFO byte 0 for
//!           TCP, connected-or-not for UDP; backlog of a listener: TCP_INFO tcpi_sacked;
//!           addresses from getsockname/getpeername
//!  image:   file_entry {type INETSK, isk {id, ino, family, type, proto, state, src_port,
//!             dst_port, flags, backlog, src_addr [u32 words of the address bytes], dst_addr,
//!             fown, opts, v6only?, ip_opts {freebind?}?, tcp_opts?, shutdown?}}
//!           established TCP also: tcp-stream-<ino>.img
//!  restore: socket; SO_REUSEADDR while binding; IPV6_V6ONLY, IP_FREEBIND; bind(src);
//!           listen(backlog) | connect(dst) (UDP) | TCP_REPAIR connect (TCP); options
//! ```
//! Not handled: TCP sockets in transient states (SYN_SENT, FIN_WAIT*, CLOSE_WAIT, ...),
//! raw sockets, link-local IPv6 binds that need the interface name, IP_TOS/IP_TTL.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, unsupported, At, Result};
use super::{sockopts, tcp, DumpFd, DumpState, KindOps, RestoreCtx, Targets};
use crate::sys::socket as so;

const KIND: &str = "inet";

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LISTEN: u32 = 10;

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Inetsk,
    matches,
    dump,
    restore,
    stage: super::stage0,
};

fn matches(link: &str, fd: BorrowedFd<'_>) -> bool {
    super::unix::socket_ino(link).is_some()
        && matches!(
            so::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN),
            Ok(libc::AF_INET) | Ok(libc::AF_INET6)
        )
}

/// (address words, port) of raw sockaddr_in/sockaddr_in6 bytes.
pub fn split_addr(family: i32, a: &[u8]) -> Option<(Vec<u32>, u32)> {
    let port = u32::from(u16::from_be_bytes(a.get(2..4)?.try_into().ok()?));
    let bytes = match family {
        libc::AF_INET => a.get(4..8)?,
        _ => a.get(8..24)?,
    };
    let words = bytes
        .chunks(4)
        .map(|c| u32::from_ne_bytes(c.try_into().unwrap_or([0; 4])))
        .collect();
    Some((words, port))
}

pub use super::sockopts::{make_addr, tcp_info};

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_ne_bytes(s.try_into().unwrap_or([0; 4])))
}

fn tcp_opts_dump(at: At, fd: BorrowedFd<'_>, keepalive: bool) -> Result<pb::TcpOptsEntry> {
    let int = |o: i32, w: &'static str| {
        so::getsockopt_int(fd, libc::IPPROTO_TCP, o).map_err(sys(KIND, at, w))
    };
    let mut t = pb::TcpOptsEntry {
        nodelay: Some(int(libc::TCP_NODELAY, "TCP_NODELAY")? != 0).filter(|v| *v),
        cork: Some(int(libc::TCP_CORK, "TCP_CORK")? != 0).filter(|v| *v),
        ..Default::default()
    };
    if keepalive {
        t.keepcnt = Some(int(libc::TCP_KEEPCNT, "TCP_KEEPCNT")? as u32);
        t.keepidle = Some(int(libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")? as u32);
        t.keepintvl = Some(int(libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")? as u32);
    }
    Ok(t)
}

/// Dumps an inet socket.
pub fn dump(d: &DumpFd<'_>, st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let f = d.file;
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let ino = super::unix::socket_ino(d.link).unwrap_or(0);
    let int =
        |l: i32, o: i32, w: &'static str| so::getsockopt_int(f, l, o).map_err(sys(KIND, at, w));
    let family = int(libc::SOL_SOCKET, libc::SO_DOMAIN, "SO_DOMAIN")?;
    let ty = int(libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let proto = int(libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    if ty != libc::SOCK_STREAM && ty != libc::SOCK_DGRAM
        || !matches!(proto, libc::IPPROTO_TCP | libc::IPPROTO_UDP)
    {
        return Err(unsupported(
            KIND,
            at,
            format!("socket type {ty} protocol {proto}"),
        ));
    }
    let tcp = proto == libc::IPPROTO_TCP;
    let local = so::getsockname(f).map_err(sys(KIND, at, "getsockname"))?;
    let peer = so::getpeername(f).ok();
    let (state, backlog) = if tcp {
        let ti = tcp_info(f).map_err(sys(KIND, at, "TCP_INFO"))?;
        let state = u32::from(*ti.first().unwrap_or(&0));
        // A listener's tcpi_unacked is its accept queue: connections in flight.
        if state == TCP_LISTEN && u32_at(&ti, 24) != 0 {
            let queued = u32_at(&ti, 24);
            if !st.opts.skip_in_flight {
                return Err(unsupported(
                    KIND,
                    at,
                    format!(
                        "listening socket with {queued} in-flight connection(s) not yet \
                         accepted (--skip-in-flight drops them)"
                    ),
                ));
            }
            tracing::info!("skipping {queued} in-flight connection(s) of {at}");
        }
        (
            state,
            if state == TCP_LISTEN {
                u32_at(&ti, 28)
            } else {
                0
            },
        )
    } else {
        (
            if peer.is_some() {
                TCP_ESTABLISHED
            } else {
                TCP_CLOSE
            },
            0,
        )
    };
    if ![TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN].contains(&state) {
        return Err(unsupported(
            KIND,
            at,
            format!("TCP socket in state {}", tcp_state_name(state)),
        ));
    }
    let (src_addr, src_port) =
        split_addr(family, &local).ok_or_else(|| image(KIND, at, "short local address"))?;
    let (dst_addr, dst_port) = match &peer {
        Some(p) => split_addr(family, p).ok_or_else(|| image(KIND, at, "short peer address"))?,
        None => (vec![0; if family == libc::AF_INET { 1 } else { 4 }], 0),
    };
    let opts = sockopts::dump(KIND, at, f)?;
    let keepalive = opts.so_keepalive == Some(true);
    let mut s = pb::InetSkEntry {
        id: d.id,
        ino,
        family: family as u32,
        r#type: ty as u32,
        proto: proto as u32,
        state,
        src_port,
        dst_port,
        flags: info.flags,
        backlog,
        src_addr,
        dst_addr,
        fown: common::dump_fown(KIND, at, f)?,
        opts,
        ..Default::default()
    };
    if family == libc::AF_INET6 {
        s.v6only = Some(int(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY")? != 0);
    }
    if int(libc::IPPROTO_IP, libc::IP_FREEBIND, "IP_FREEBIND")? != 0 {
        s.ip_opts = Some(pb::IpOptsEntry {
            freebind: Some(true),
            ..Default::default()
        });
    }
    if tcp {
        s.tcp_opts = Some(tcp_opts_dump(at, f, keepalive)?);
    }
    if proto == libc::IPPROTO_UDP {
        // Shut down directions (a UDP socket keeps them, connected or not).
        // A socket never bound is in no table inet_diag lists (ENOENT): nothing shut down.
        match crate::sys::sock_diag::inet_by_ino(family, proto, ino) {
            Ok(diag) => s.shutdown = super::unix::shutdown_of(diag.shutdown),
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(sys(KIND, at, "inet_diag")(e)),
        }
    }
    if tcp && state == TCP_ESTABLISHED && st.opts.tcp_close {
        // CRIU's --tcp-close: no repair, no tcp-stream image; the restore makes it closed.
    } else if tcp && state == TCP_ESTABLISHED {
        if !st.opts.tcp_established {
            return Err(unsupported(
                KIND,
                at,
                "established TCP connection (--tcp-established allows it)",
            ));
        }
        tcp::dump(d, st, ino)?;
    }
    let mut e = super::file_entry(pb::FdTypes::Inetsk, d.id);
    e.isk = Some(s);
    Ok(e)
}

fn tcp_opts_restore(at: At, fd: BorrowedFd<'_>, t: &pb::TcpOptsEntry) -> Result<()> {
    let set = |o: i32, v: u32, w: &'static str| {
        so::setsockopt_int(fd, libc::IPPROTO_TCP, o, v as i32).map_err(sys(KIND, at, w))
    };
    if t.nodelay == Some(true) {
        set(libc::TCP_NODELAY, 1, "TCP_NODELAY")?;
    }
    if t.cork == Some(true) {
        set(libc::TCP_CORK, 1, "TCP_CORK")?;
    }
    for (v, o, w) in [
        (t.keepcnt, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
        (t.keepidle, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
        (t.keepintvl, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
    ] {
        if let Some(v) = v.filter(|v| *v != 0) {
            set(o, v, w)?;
        }
    }
    Ok(())
}

/// A TCP state for error messages: half-closed and handshaking connections are not dumped.
fn tcp_state_name(state: u32) -> String {
    let name = match state {
        2 => "SYN_SENT (connecting)",
        3 => "SYN_RECV (handshaking)",
        4 => "FIN_WAIT1 (half-closed by this side)",
        5 => "FIN_WAIT2 (half-closed by this side)",
        6 => "TIME_WAIT",
        8 => "CLOSE_WAIT (half-closed by the peer, not yet closed by the task)",
        9 => "LAST_ACK (closing)",
        11 => "CLOSING",
        _ => return state.to_string(),
    };
    format!("{state} {name}")
}

/// Restores an inet socket.
pub fn restore(e: &pb::FileEntry, ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let s = e
        .isk
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no isk member"))?;
    let family = s.family as i32;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return Err(image(KIND, at, format!("family {family}")));
    }
    let ty = s.r#type as i32;
    let fd = so::socket(family, ty | libc::SOCK_CLOEXEC, s.proto as i32)
        .map_err(sys(KIND, at, "socket"))?;
    let f = fd.as_fd();
    let established_tcp = s.proto == libc::IPPROTO_TCP as u32 && s.state == TCP_ESTABLISHED;
    // --tcp-close: the connection comes back as a closed socket (bound, not connected).
    let closed_tcp = established_tcp && ctx.opts.tcp_close;
    let established_tcp = established_tcp && !closed_tcp;
    if established_tcp {
        if !ctx.opts.tcp_established {
            return Err(unsupported(
                KIND,
                at,
                "established TCP connection (--tcp-established allows it)",
            ));
        }
        tcp::repair_on(at, f)?;
    }
    if let Some(v6only) = s.v6only {
        so::setsockopt_int(f, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, i32::from(v6only))
            .map_err(sys(KIND, at, "IPV6_V6ONLY"))?;
    }
    if s.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true) {
        so::setsockopt_int(f, libc::IPPROTO_IP, libc::IP_FREEBIND, 1).map_err(sys(
            KIND,
            at,
            "IP_FREEBIND",
        ))?;
    }
    let bound = !closed_tcp && (s.src_port != 0 || s.src_addr.iter().any(|w| *w != 0));
    // A socket in repair mode may share its port with anything (the kernel's SK_FORCE_REUSE,
    // e.g. an accepted connection next to its listener); SO_REUSEADDR would replace that.
    let tweak_reuse = bound && !established_tcp;
    if tweak_reuse {
        // Like CRIU: the old socket's port may linger (TIME_WAIT); reuse it while binding.
        so::setsockopt_int(f, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).map_err(sys(
            KIND,
            at,
            "SO_REUSEADDR",
        ))?;
    }
    if bound && s.opts.so_reuseport == Some(true) {
        // Before the bind: listeners sharing a port with SO_REUSEPORT bind it one by one.
        so::setsockopt_int(f, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(sys(
            KIND,
            at,
            "SO_REUSEPORT",
        ))?;
    }
    if bound {
        let a = make_addr(family, &s.src_addr, s.src_port);
        so::bind(f, &a).map_err(sys(KIND, at, format!("bind port {}", s.src_port)))?;
    }
    if tweak_reuse && s.opts.reuseaddr != Some(true) {
        so::setsockopt_int(f, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0).map_err(sys(
            KIND,
            at,
            "SO_REUSEADDR",
        ))?;
    }
    sockopts::restore(KIND, at, f, &s.opts)?;
    if let Some(t) = &s.tcp_opts {
        tcp_opts_restore(at, f, t)?;
    }
    match (s.proto as i32, s.state) {
        (libc::IPPROTO_TCP, TCP_LISTEN) => {
            so::listen(f, s.backlog as i32).map_err(sys(KIND, at, "listen"))?
        }
        (libc::IPPROTO_TCP, TCP_ESTABLISHED) if closed_tcp => {}
        (libc::IPPROTO_TCP, TCP_ESTABLISHED) => tcp::restore(at, f, s, ctx)?,
        (libc::IPPROTO_UDP, TCP_ESTABLISHED) => {
            let a = make_addr(family, &s.dst_addr, s.dst_port);
            so::connect(f, &a).map_err(sys(KIND, at, format!("connect port {}", s.dst_port)))?;
        }
        (_, TCP_CLOSE) => {}
        (p, st) => return Err(unsupported(KIND, at, format!("protocol {p} state {st}"))),
    }
    if s.proto == libc::IPPROTO_UDP as u32 {
        if let Some(how) = s.shutdown.and_then(super::unix::shut_how) {
            // An unconnected socket says ENOTCONN but keeps the state, as at dump time.
            match so::shutdown(f, how) {
                Ok(()) | Err(nix::errno::Errno::ENOTCONN) => {}
                Err(e) => return Err(sys(KIND, at, "shutdown")(e)),
            }
        }
    }
    common::restore_params(KIND, e.id, f, s.flags, &s.fown)?;
    Ok(fd)
}
