//! Established TCP connections (`--tcp-established`) through TCP_REPAIR.
//!
//! ```text
//!  dump (socket frozen with its task):
//!    TCP_REPAIR 1; SIOCINQ/SIOCOUTQ/SIOCOUTQNSD -> inq_len, outq_len, unsq_len
//!    TCP_REPAIR_QUEUE RECV: TCP_QUEUE_SEQ -> inq_seq (rcv_nxt); recv(MSG_PEEK) -> receive queue
//!    TCP_REPAIR_QUEUE SEND: TCP_QUEUE_SEQ -> outq_seq (write_seq); recv(MSG_PEEK) -> send queue
//!    TCP_INFO -> opt_mask (tcpi_options), snd/rcv wscale; TCP_MAXSEG -> mss_clamp;
//!    TCP_TIMESTAMP; TCP_REPAIR_WINDOW -> snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup
//!    tcp-stream-<ino>.img: tcp_stream_entry + receive queue + send queue
//!    the socket stays in repair mode (held in DumpState) until the engine either resumes the
//!    tree (DumpState::release_tcp_repair) or kills it (DumpState::close_tcp_in_repair: the
//!    connection then disappears without FIN or RST, the peer notices nothing)
//!  restore: TCP_REPAIR 1; bind; queue seqs = seq - len; connect (no SYN in repair mode);
//!    TCP_REPAIR_OPTIONS (MSS, window scale, SACK, timestamps); TCP_TIMESTAMP;
//!    receive queue and the sent part of the send queue written in repair mode;
//!    TCP_REPAIR_WINDOW; then, in RestoreCtx::finish once every connection exists:
//!    TCP_REPAIR 0 and the unsent tail of the send queue is sent normally
//! ```

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use stasis_images::pb;

use super::error::{image, sys, At, Result};
use super::side_images::MAX_QUEUE;
use super::{DumpFd, DumpState, RestoreCtx};
use crate::sys::socket as so;

const KIND: &str = "tcp";

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

/// `tcpi_options` bits, as `opt_mask` records them.
pub const TCPI_OPT_TIMESTAMPS: u32 = 1;
pub const TCPI_OPT_SACK: u32 = 2;
pub const TCPI_OPT_WSCALE: u32 = 4;

fn set(at: At, f: BorrowedFd<'_>, opt: i32, v: i32, what: &'static str) -> Result<()> {
    so::setsockopt_int(f, libc::IPPROTO_TCP, opt, v).map_err(sys(KIND, at, what))
}

fn get(at: At, f: BorrowedFd<'_>, opt: i32, what: &'static str) -> Result<i32> {
    so::getsockopt_int(f, libc::IPPROTO_TCP, opt).map_err(sys(KIND, at, what))
}

/// Puts a socket into repair mode.
pub fn repair_on(at: At, f: BorrowedFd<'_>) -> Result<()> {
    set(at, f, TCP_REPAIR, 1, "TCP_REPAIR on")
}

/// Leaves repair mode.
pub fn repair_off(f: BorrowedFd<'_>) -> std::result::Result<(), Errno> {
    so::setsockopt_int(f, libc::IPPROTO_TCP, TCP_REPAIR, 0)
}

fn peek(at: At, f: BorrowedFd<'_>, len: usize, what: &'static str) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; len];
    let n =
        so::recv(f, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT).map_err(sys(KIND, at, what))?;
    if n != len {
        return Err(image(
            KIND,
            at,
            format!("{what}: peeked {n} of {len} bytes"),
        ));
    }
    Ok(buf)
}

fn read_state(at: At, f: BorrowedFd<'_>) -> Result<(pb::TcpStreamEntry, Vec<u8>, Vec<u8>)> {
    let q = |req, what| so::ioctl_int(f, req).map_err(sys(KIND, at, what));
    let inq_len = q(libc::FIONREAD, "SIOCINQ")? as usize;
    let outq_len = q(libc::TIOCOUTQ, "SIOCOUTQ")? as usize;
    let unsq_len = q(so::SIOCOUTQNSD, "SIOCOUTQNSD")? as u32;
    if inq_len + outq_len > super::side_images::MAX_QUEUE {
        return Err(image(
            KIND,
            at,
            format!(
                "queues of {} bytes over the cap {MAX_QUEUE}",
                inq_len + outq_len
            ),
        ));
    }
    set(
        at,
        f,
        TCP_REPAIR_QUEUE,
        TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE recv",
    )?;
    let inq_seq = get(at, f, TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ recv")? as u32;
    let inq = peek(at, f, inq_len, "peek receive queue")?;
    set(
        at,
        f,
        TCP_REPAIR_QUEUE,
        TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE send",
    )?;
    let outq_seq = get(at, f, TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ send")? as u32;
    let outq = peek(at, f, outq_len, "peek send queue")?;
    let ti = super::sockopts::tcp_info(f).map_err(sys(KIND, at, "TCP_INFO"))?;
    let opt_mask = u32::from(*ti.get(5).unwrap_or(&0));
    let ws = *ti.get(6).unwrap_or(&0);
    let mut t = pb::TcpStreamEntry {
        inq_len: inq_len as u32,
        inq_seq,
        outq_len: outq_len as u32,
        outq_seq,
        opt_mask,
        snd_wscale: u32::from(ws & 0xf),
        mss_clamp: get(at, f, libc::TCP_MAXSEG, "TCP_MAXSEG")? as u32,
        rcv_wscale: (opt_mask & TCPI_OPT_WSCALE != 0).then_some(u32::from(ws >> 4)),
        unsq_len: Some(unsq_len),
        ..Default::default()
    };
    if opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        t.timestamp = Some(get(at, f, TCP_TIMESTAMP, "TCP_TIMESTAMP")? as u32);
    }
    let w = so::getsockopt_bytes(f, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20).map_err(sys(
        KIND,
        at,
        "TCP_REPAIR_WINDOW",
    ))?;
    if w.len() == 20 {
        let word = |i: usize| u32::from_ne_bytes(w[i * 4..i * 4 + 4].try_into().unwrap_or([0; 4]));
        t.snd_wl1 = Some(word(0));
        t.snd_wnd = Some(word(1));
        t.max_window = Some(word(2));
        t.rcv_wnd = Some(word(3));
        t.rcv_wup = Some(word(4));
    }
    Ok((t, inq, outq))
}

/// Dumps the connection state of an established TCP socket into `st.extra.tcp_streams`
/// and keeps the socket in repair mode (see the module doc).
pub fn dump(d: &DumpFd<'_>, st: &mut DumpState, ino: u32) -> Result<()> {
    let at = d.at();
    let held = d.file.try_clone_to_owned().map_err(|e| {
        sys(KIND, at, "dup")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    repair_on(at, held.as_fd())?;
    match read_state(at, held.as_fd()) {
        Ok(state) => {
            st.extra.tcp_streams.insert(ino, state);
            st.tcp_repair.push(held);
            Ok(())
        }
        Err(e) => {
            let _ = repair_off(held.as_fd());
            Err(e)
        }
    }
}

fn send_all(at: At, f: BorrowedFd<'_>, data: &[u8], what: &'static str) -> Result<()> {
    let mut off = 0;
    while off < data.len() {
        off += so::send(f, &data[off..], libc::MSG_NOSIGNAL).map_err(sys(KIND, at, what))?;
    }
    Ok(())
}

/// Rebuilds the connection on a socket already in repair mode and bound to its address;
/// leaves repair mode at the end.
pub fn restore(
    at: At,
    f: BorrowedFd<'_>,
    s: &pb::InetSkEntry,
    ctx: &mut RestoreCtx<'_>,
) -> Result<()> {
    let (t, inq, outq) = ctx.extra.tcp_streams.get(&s.ino).ok_or_else(|| {
        image(
            KIND,
            at,
            format!("no tcp-stream image for socket {:#x}", s.ino),
        )
    })?;
    if inq.len() != t.inq_len as usize || outq.len() != t.outq_len as usize {
        return Err(image(KIND, at, "queue lengths differ from the entry"));
    }
    set(
        at,
        f,
        TCP_REPAIR_QUEUE,
        TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE recv",
    )?;
    set(
        at,
        f,
        TCP_QUEUE_SEQ,
        t.inq_seq.wrapping_sub(t.inq_len) as i32,
        "TCP_QUEUE_SEQ recv",
    )?;
    set(
        at,
        f,
        TCP_REPAIR_QUEUE,
        TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE send",
    )?;
    set(
        at,
        f,
        TCP_QUEUE_SEQ,
        t.outq_seq.wrapping_sub(t.outq_len) as i32,
        "TCP_QUEUE_SEQ send",
    )?;
    let dst = super::sockopts::make_addr(s.family as i32, &s.dst_addr, s.dst_port);
    so::connect(f, &dst).map_err(sys(
        KIND,
        at,
        format!("repair connect to port {}", s.dst_port),
    ))?;

    let mut opts: Vec<u8> = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(TCPOPT_MSS, t.mss_clamp);
    if t.opt_mask & TCPI_OPT_WSCALE != 0 {
        opt(
            TCPOPT_WINDOW,
            t.snd_wscale | (t.rcv_wscale.unwrap_or(0) << 16),
        );
    }
    if t.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        opt(TCPOPT_TIMESTAMP, 0);
    }
    if t.opt_mask & TCPI_OPT_SACK != 0 {
        opt(TCPOPT_SACK_PERM, 0);
    }
    so::setsockopt_bytes(f, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &opts).map_err(sys(
        KIND,
        at,
        "TCP_REPAIR_OPTIONS",
    ))?;
    if let Some(ts) = t
        .timestamp
        .filter(|_| t.opt_mask & TCPI_OPT_TIMESTAMPS != 0)
    {
        set(at, f, TCP_TIMESTAMP, ts as i32, "TCP_TIMESTAMP")?;
    }
    set(
        at,
        f,
        TCP_REPAIR_QUEUE,
        TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE recv",
    )?;
    send_all(at, f, inq, "fill receive queue")?;
    let unsent = (t.unsq_len.unwrap_or(0) as usize).min(outq.len());
    let (sent, tail) = outq.split_at(outq.len() - unsent);
    set(
        at,
        f,
        TCP_REPAIR_QUEUE,
        TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE send",
    )?;
    send_all(at, f, sent, "fill send queue")?;
    if let (Some(a), Some(b), Some(c), Some(d), Some(e)) =
        (t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup)
    {
        let w: Vec<u8> = [a, b, c, d, e]
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .collect();
        so::setsockopt_bytes(f, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &w).map_err(sys(
            KIND,
            at,
            "TCP_REPAIR_WINDOW",
        ))?;
    }
    // Repair mode ends in RestoreCtx::finish, once every connection exists: leaving it now
    // would send a window probe to a peer that may not be restored yet (on loopback the
    // peer's listener answers with a reset).
    let held = f.try_clone_to_owned().map_err(|e| {
        sys(KIND, at, "dup")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })?;
    ctx.tcp_pending.push((e_id(at), held, tail.to_vec()));
    Ok(())
}

fn e_id(at: At) -> u32 {
    match at {
        At::Id(id) => id,
        At::Fd { .. } => 0,
    }
}

/// Takes restored connections out of repair mode and sends their unsent data.
pub(crate) fn finish(pending: Vec<(u32, OwnedFd, Vec<u8>)>) -> Result<()> {
    for (id, fd, tail) in pending {
        let at = At::Id(id);
        repair_off(fd.as_fd()).map_err(sys(KIND, at, "TCP_REPAIR off"))?;
        send_all(at, fd.as_fd(), &tail, "send unsent data")?;
    }
    Ok(())
}

/// Dumped connections held in repair mode; dropping the holder takes them out of repair
/// mode again (a dump that did not finish leaves the connections as they were).
#[derive(Debug, Default)]
pub struct RepairHold(Vec<OwnedFd>);

impl RepairHold {
    fn push(&mut self, fd: OwnedFd) {
        self.0.push(fd);
    }

    fn release(&mut self) {
        for fd in self.0.drain(..) {
            let _ = repair_off(fd.as_fd());
        }
    }
}

impl Drop for RepairHold {
    fn drop(&mut self) {
        self.release();
    }
}

impl DumpState {
    /// Takes the dumped TCP connections out of repair mode (the tree keeps running).
    pub fn release_tcp_repair(&mut self) {
        self.tcp_repair.release();
    }

    /// Closes our handles on the dumped TCP connections while still in repair mode: once the
    /// tasks are killed, the connections vanish without sending anything to their peers.
    pub fn close_tcp_in_repair(&mut self) {
        self.tcp_repair.0.clear();
    }
}
