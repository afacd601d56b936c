//! The tracker process (`stasis dirty-tracker --socket NAME`): holds the tracking handles of
//! every process between dump commands and answers the dumper over a unix socket.
//!
//! ```text
//!  socket   abstract unix stream socket; only a peer of the tracker's uid (or root) is served
//!  frame    u32 little-endian length + JSON object
//!  request                                   answer
//!  {"op":"adopt","pid","id","method"} [+fd]  {"ok":true} | {"ok":false,"error"}
//!  {"op":"collect","pid","id","parent":GEN|null,"vmas":[[s,e]..]}
//!                                            {"ok":true,"known":false}   (never adopted, or
//!                                                                         its identity changed)
//!                                            {"ok":true,"known":true,"dirt":[null|[[s,e]..]..]}
//!                                            (null: the VMA counts as entirely dirty)
//!                                            (relative to commit GEN, see track::Tracked)
//!  {"op":"commit","gen","pids":[..]}         {"ok":true}   (those collects are saved)
//!  {"op":"forget","pid"}                     {"ok":true}   (its handle closes)
//!  {"op":"status"}                           {"ok":true,"pids":[..],"tracker":PID}
//!  {"op":"stop"}                             {"ok":true}, then the tracker exits
//! ```
//! One client at a time (dump commands of one tree run one after the other). The tracker exits
//! when every process it tracks is gone (checked every second), or when nothing was adopted
//! within a minute of its start.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::track::{Handle, Identity, Tracked};
use super::Dirt;

/// Largest frame accepted (a collect answer for a badly fragmented 1 TiB space stays far
/// below).
pub const MAX_FRAME: u32 = 256 << 20;

/// Reads one frame; `Ok(None)` at end of stream.
pub fn read_frame(s: &mut UnixStream) -> std::io::Result<Option<Value>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    frame_body(s, len).map(Some)
}

/// The JSON body of a frame whose 4-byte length was read (bounded by [`MAX_FRAME`]).
fn frame_body(s: &mut UnixStream, len: [u8; 4]) -> std::io::Result<Value> {
    let n = u32::from_le_bytes(len);
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes"),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    s.read_exact(&mut buf)?;
    serde_json::from_slice(&buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes one frame.
pub fn write_frame(s: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(v)?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    s.write_all(&out)
}

/// Binds the abstract socket `name` (without the leading NUL).
pub fn bind(name: &str) -> std::io::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    UnixListener::bind_addr(&addr)
}

/// Connects to the abstract socket `name`.
pub fn connect(name: &str) -> std::io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    UnixStream::connect_addr(&addr)
}

/// The tracker's state.
#[derive(Default)]
struct State {
    procs: BTreeMap<i32, Tracked>,
    adopted_once: bool,
    stop: bool,
}

fn alive(t: &Tracked) -> bool {
    Identity::read(t.pid).is_ok_and(|id| id.start_ticks == t.id.start_ticks)
}

/// Serves `listener` until stopped or until nothing is left to track.
pub fn serve(listener: UnixListener) -> std::io::Result<()> {
    let started = Instant::now();
    let mut st = State::default();
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let ready = crate::sys::channel::poll_readable(listener.as_fd(), 1000)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if ready {
            let (mut conn, _) = listener.accept()?;
            let peer =
                nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
                    .map(|c| c.uid())
                    .unwrap_or(u32::MAX);
            if peer != me && peer != 0 {
                tracing::warn!("tracker: refused a peer of uid {peer}");
                continue;
            }
            conn.set_read_timeout(Some(Duration::from_secs(600)))?;
            if let Err(e) = serve_conn(&mut conn, &mut st) {
                tracing::warn!("tracker: connection: {e}");
            }
        }
        st.procs.retain(|_, t| alive(t));
        if st.stop
            || (st.adopted_once && st.procs.is_empty())
            || (!st.adopted_once && started.elapsed() > Duration::from_secs(60))
        {
            return Ok(());
        }
    }
}

fn ok() -> Value {
    json!({"ok": true})
}

fn fail(e: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

fn serve_conn(conn: &mut UnixStream, st: &mut State) -> std::io::Result<()> {
    loop {
        // An adopt carries a descriptor on its first byte: take it with the length.
        let (req, fd) = match read_frame_with_fd(conn)? {
            Some(x) => x,
            None => return Ok(()),
        };
        let ans = handle(&req, fd, st);
        write_frame(conn, &ans)?;
        if st.stop {
            return Ok(());
        }
    }
}

/// A frame whose first bytes may carry SCM_RIGHTS.
fn read_frame_with_fd(conn: &mut UnixStream) -> std::io::Result<Option<(Value, Option<OwnedFd>)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut len = [0u8; 4];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut fd = None;
    let got = {
        let mut iov = [std::io::IoSliceMut::new(&mut len)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_WAITALL,
        )
        .map_err(std::io::Error::from)?;
        for c in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for (i, f) in fds.into_iter().enumerate() {
                    // SAFETY: the kernel installed f in our table for us; nobody else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(f) };
                    if i == 0 {
                        fd = Some(owned);
                    }
                }
            }
        }
        msg.bytes
    };
    if got == 0 {
        return Ok(None);
    }
    if got < 4 {
        conn.read_exact(&mut len[got..])?;
    }
    Ok(Some((frame_body(conn, len)?, fd)))
}

fn handle(req: &Value, fd: Option<OwnedFd>, st: &mut State) -> Value {
    let pid = req["pid"].as_i64().unwrap_or(0) as i32;
    match req["op"].as_str().unwrap_or("") {
        "adopt" => {
            let Some(id) = Identity::from_json(&req["id"]) else {
                return fail("adopt without identity");
            };
            let handle = match (req["method"].as_str(), fd) {
                (Some("uffd-wp-async"), Some(fd)) => Handle::Uffd(fd),
                (Some("soft-dirty"), _) => Handle::SoftDirty,
                _ => return fail("adopt: no handle"),
            };
            match Tracked::new(pid, id, handle) {
                Ok(t) => {
                    st.procs.insert(pid, t);
                    st.adopted_once = true;
                    ok()
                }
                Err(e) => fail(format!("adopt {pid}: {e}")),
            }
        }
        "collect" => {
            let vmas: Vec<(u64, u64)> = req["vmas"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|r| Some((r[0].as_u64()?, r[1].as_u64()?)))
                        .filter(|(s, e)| s < e)
                        .collect()
                })
                .unwrap_or_default();
            let id = Identity::from_json(&req["id"]);
            let parent = req["parent"].as_u64();
            let known = match st.procs.get_mut(&pid) {
                Some(t) if Some(t.id) == id => t.collect(&vmas, parent),
                _ => None,
            };
            match known {
                None => {
                    st.procs.remove(&pid);
                    json!({"ok": true, "known": false})
                }
                Some(dirt) => {
                    let d: Vec<Value> = dirt
                        .into_iter()
                        .map(|d| match d {
                            Dirt::All => Value::Null,
                            Dirt::Written(w) => {
                                json!(w.iter().map(|r| [r.0, r.1]).collect::<Vec<_>>())
                            }
                        })
                        .collect();
                    json!({"ok": true, "known": true, "dirt": d})
                }
            }
        }
        "commit" => {
            let Some(generation) = req["gen"].as_u64() else {
                return fail("commit without gen");
            };
            for p in req["pids"].as_array().into_iter().flatten() {
                if let Some(t) = p.as_i64().and_then(|p| st.procs.get_mut(&(p as i32))) {
                    t.commit(generation);
                }
            }
            ok()
        }
        "forget" => {
            st.procs.remove(&pid);
            ok()
        }
        "status" => json!({"ok": true, "pids": st.procs.keys().collect::<Vec<_>>(),
                           "tracker": std::process::id()}),
        "stop" => {
            st.stop = true;
            ok()
        }
        other => fail(format!("unknown op {other:?}")),
    }
}
