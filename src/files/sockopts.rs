//! Socket-level options every socket kind records (`sk_opts_entry`) and puts back.
//!
//! Buffer sizes are stored as the kernel reports them (doubled) and restored halved with
//! the `*FORCE` variants, like CRIU. Booleans are recorded only when set.

use std::os::fd::BorrowedFd;

use stasis_images::pb;

use super::error::{sys, At, Result};
use crate::sys::socket as so;

const SOL: i32 = libc::SOL_SOCKET;

fn tv(b: &[u8]) -> (u64, u64) {
    let word = |i: usize| {
        b.get(i * 8..i * 8 + 8)
            .map_or(0, |s| i64::from_ne_bytes(s.try_into().unwrap_or([0; 8])))
    };
    (word(0).max(0) as u64, word(1).max(0) as u64)
}

fn tv_bytes(sec: u64, usec: u64) -> Vec<u8> {
    let mut v = (sec.min(i64::MAX as u64) as i64).to_ne_bytes().to_vec();
    v.extend_from_slice(&(usec.min(999_999) as i64).to_ne_bytes());
    v
}

/// Reads the generic options of a socket.
pub fn dump(kind: &'static str, at: At, fd: BorrowedFd<'_>) -> Result<pb::SkOptsEntry> {
    let int = |name: i32, what: &'static str| {
        so::getsockopt_int(fd, SOL, name).map_err(sys(kind, at, what))
    };
    // Options a socket family does not have (SO_PASSCRED on inet sockets) are "not set".
    let flag = |name: i32, what: &'static str| -> Result<Option<bool>> {
        match so::getsockopt_int(fd, SOL, name) {
            Ok(v) => Ok((v != 0).then_some(true)),
            Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOPROTOOPT) => Ok(None),
            Err(e) => Err(sys(kind, at, what)(e)),
        }
    };
    let snd = tv(
        &so::getsockopt_bytes(fd, SOL, libc::SO_SNDTIMEO, 16).map_err(sys(
            kind,
            at,
            "SO_SNDTIMEO",
        ))?,
    );
    let rcv = tv(
        &so::getsockopt_bytes(fd, SOL, libc::SO_RCVTIMEO, 16).map_err(sys(
            kind,
            at,
            "SO_RCVTIMEO",
        ))?,
    );
    let mut o = pb::SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF, "SO_SNDBUF")? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF, "SO_RCVBUF")? as u32,
        so_snd_tmo_sec: snd.0,
        so_snd_tmo_usec: snd.1,
        so_rcv_tmo_sec: rcv.0,
        so_rcv_tmo_usec: rcv.1,
        reuseaddr: flag(libc::SO_REUSEADDR, "SO_REUSEADDR")?,
        so_priority: Some(int(libc::SO_PRIORITY, "SO_PRIORITY")? as u32),
        so_rcvlowat: Some(int(libc::SO_RCVLOWAT, "SO_RCVLOWAT")? as u32),
        so_mark: Some(int(libc::SO_MARK, "SO_MARK")? as u32),
        so_passcred: flag(libc::SO_PASSCRED, "SO_PASSCRED")?,
        so_passsec: flag(libc::SO_PASSSEC, "SO_PASSSEC")?,
        so_dontroute: flag(libc::SO_DONTROUTE, "SO_DONTROUTE")?,
        so_no_check: flag(libc::SO_NO_CHECK, "SO_NO_CHECK")?,
        so_reuseport: flag(libc::SO_REUSEPORT, "SO_REUSEPORT")?,
        so_broadcast: flag(libc::SO_BROADCAST, "SO_BROADCAST")?,
        so_keepalive: flag(libc::SO_KEEPALIVE, "SO_KEEPALIVE")?,
        so_oobinline: Some(int(libc::SO_OOBINLINE, "SO_OOBINLINE")? as u32).filter(|v| *v != 0),
        ..Default::default()
    };
    let linger =
        so::getsockopt_bytes(fd, SOL, libc::SO_LINGER, 8).map_err(sys(kind, at, "SO_LINGER"))?;
    if linger.len() == 8 && linger[..4] != [0; 4] {
        o.so_linger = Some(i32::from_ne_bytes(linger[4..8].try_into().unwrap_or([0; 4])) as u32);
    }
    let dev = so::getsockopt_bytes(fd, SOL, libc::SO_BINDTODEVICE, 16).map_err(sys(
        kind,
        at,
        "SO_BINDTODEVICE",
    ))?;
    let dev: Vec<u8> = dev.into_iter().take_while(|b| *b != 0).collect();
    if !dev.is_empty() {
        o.so_bound_dev = Some(String::from_utf8_lossy(&dev).into_owned());
    }
    o.so_filter = so::get_filter(fd).map_err(sys(kind, at, "SO_GET_FILTER"))?;
    // SO_BUF_LOCK (72): which buffer sizes the user fixed.
    if let Ok(v) = so::getsockopt_int(fd, SOL, 72) {
        if v != 0 {
            o.so_buf_lock = Some(v as u32);
        }
    }
    Ok(o)
}

/// Puts the generic options back on a new socket.
pub fn restore(kind: &'static str, at: At, fd: BorrowedFd<'_>, o: &pb::SkOptsEntry) -> Result<()> {
    let set = |name: i32, v: i32, what: &'static str| {
        so::setsockopt_int(fd, SOL, name, v).map_err(sys(kind, at, what))
    };
    set(
        libc::SO_SNDBUFFORCE,
        (o.so_sndbuf / 2) as i32,
        "SO_SNDBUFFORCE",
    )?;
    set(
        libc::SO_RCVBUFFORCE,
        (o.so_rcvbuf / 2) as i32,
        "SO_RCVBUFFORCE",
    )?;
    so::setsockopt_bytes(
        fd,
        SOL,
        libc::SO_SNDTIMEO,
        &tv_bytes(o.so_snd_tmo_sec, o.so_snd_tmo_usec),
    )
    .map_err(sys(kind, at, "SO_SNDTIMEO"))?;
    so::setsockopt_bytes(
        fd,
        SOL,
        libc::SO_RCVTIMEO,
        &tv_bytes(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec),
    )
    .map_err(sys(kind, at, "SO_RCVTIMEO"))?;
    for (v, name, what) in [
        (o.reuseaddr, libc::SO_REUSEADDR, "SO_REUSEADDR"),
        (o.so_passcred, libc::SO_PASSCRED, "SO_PASSCRED"),
        (o.so_passsec, libc::SO_PASSSEC, "SO_PASSSEC"),
        (o.so_dontroute, libc::SO_DONTROUTE, "SO_DONTROUTE"),
        (o.so_no_check, libc::SO_NO_CHECK, "SO_NO_CHECK"),
        (o.so_reuseport, libc::SO_REUSEPORT, "SO_REUSEPORT"),
        (o.so_broadcast, libc::SO_BROADCAST, "SO_BROADCAST"),
        (o.so_keepalive, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
    ] {
        if v == Some(true) {
            set(name, 1, what)?;
        }
    }
    if let Some(p) = o.so_priority.filter(|p| *p != 0) {
        set(libc::SO_PRIORITY, p as i32, "SO_PRIORITY")?;
    }
    if let Some(v) = o.so_rcvlowat.filter(|v| *v > 1) {
        set(libc::SO_RCVLOWAT, v as i32, "SO_RCVLOWAT")?;
    }
    if let Some(v) = o.so_mark.filter(|v| *v != 0) {
        set(libc::SO_MARK, v as i32, "SO_MARK")?;
    }
    if let Some(v) = o.so_oobinline.filter(|v| *v != 0) {
        set(libc::SO_OOBINLINE, v as i32, "SO_OOBINLINE")?;
    }
    if let Some(secs) = o.so_linger {
        let mut l = 1i32.to_ne_bytes().to_vec();
        l.extend_from_slice(&(secs as i32).to_ne_bytes());
        so::setsockopt_bytes(fd, SOL, libc::SO_LINGER, &l).map_err(sys(kind, at, "SO_LINGER"))?;
    }
    if let Some(dev) = o.so_bound_dev.as_deref().filter(|d| !d.is_empty()) {
        so::setsockopt_bytes(fd, SOL, libc::SO_BINDTODEVICE, dev.as_bytes()).map_err(sys(
            kind,
            at,
            "SO_BINDTODEVICE",
        ))?;
    }
    if !o.so_filter.is_empty() {
        so::attach_filter(fd, &o.so_filter).map_err(sys(kind, at, "SO_ATTACH_FILTER"))?;
    }
    // The FORCE calls above locked both sizes: put the recorded lock back.
    set(72, o.so_buf_lock.unwrap_or(0) as i32, "SO_BUF_LOCK")?;
    Ok(())
}

/// Raw sockaddr bytes of an address (words as recorded) and port.
pub fn make_addr(family: i32, words: &[u32], port: u32) -> Vec<u8> {
    let mut a = (family as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(&(port as u16).to_be_bytes());
    let n = if family == libc::AF_INET { 1 } else { 4 };
    let mut addr: Vec<u8> = words.iter().take(n).flat_map(|w| w.to_ne_bytes()).collect();
    addr.resize(n * 4, 0);
    if family == libc::AF_INET {
        a.extend_from_slice(&addr);
        a.resize(16, 0);
    } else {
        a.extend_from_slice(&0u32.to_ne_bytes()); // flowinfo
        a.extend_from_slice(&addr);
        a.extend_from_slice(&0u32.to_ne_bytes()); // scope id
    }
    a
}

/// `TCP_INFO` (the first 32 bytes are enough: state, options, wscale, sacked).
pub fn tcp_info(fd: BorrowedFd<'_>) -> std::result::Result<Vec<u8>, nix::errno::Errno> {
    so::getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 104)
}
