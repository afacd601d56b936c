//! One RPC connection: CRIU's framing is one protobuf message per SOCK_SEQPACKET packet
//! (no length prefix), requests (`criu_req`) from the client, responses and notifications
//! (`criu_resp`) from us.
//!
//! ```text
//!  recv(MSG_PEEK | MSG_TRUNC) -> packet size (bounded by MAX_MSG) -> recv -> decode criu_req
//!  encode criu_resp -> one send
//! ```

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, sockopt, MsgFlags};
use prost::Message;
use stasis_images::pb::{CriuReq, CriuResp};

use super::RpcError;

/// The largest request accepted (CRIU's requests are a few hundred bytes; options with
/// long lists stay far below this).
pub const MAX_MSG: usize = 1 << 20;

/// A connected SOCK_SEQPACKET socket to an RPC client.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

impl Conn {
    /// Wraps a connected socket.
    pub fn new(fd: OwnedFd) -> Self {
        Conn { fd }
    }

    /// The client's PID (SO_PEERCRED): its descriptors are opened as `/proc/PID/fd/N`.
    pub fn peer_pid(&self) -> Result<i32, RpcError> {
        socket::getsockopt(&self.fd, sockopt::PeerCredentials)
            .map(|c| c.pid())
            .map_err(|e| RpcError::Socket("SO_PEERCRED", e))
    }

    /// The next request; `Ok(None)` when the client closed the connection.
    pub fn recv_req(&self) -> Result<Option<CriuReq>, RpcError> {
        let fd = self.fd.as_raw_fd();
        let len = loop {
            match socket::recv(fd, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.map_err(|e| RpcError::Socket("recv request", e))?,
            }
        };
        if len == 0 {
            // A zero-length packet is read and dropped too; SEQPACKET EOF also reads 0.
            let _ = socket::recv(fd, &mut [], MsgFlags::empty());
            return Ok(None);
        }
        if len > MAX_MSG {
            return Err(RpcError::Protocol(format!(
                "request of {len} bytes (at most {MAX_MSG})"
            )));
        }
        let mut buf = vec![0u8; len];
        let n = socket::recv(fd, &mut buf, MsgFlags::empty())
            .map_err(|e| RpcError::Socket("recv request", e))?;
        CriuReq::decode(&buf[..n])
            .map(Some)
            .map_err(|e| RpcError::Protocol(format!("undecodable request: {e}")))
    }

    /// Sends one response or notification.
    pub fn send_resp(&self, resp: &CriuResp) -> Result<(), RpcError> {
        let buf = resp.encode_to_vec();
        let n = socket::send(self.fd.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL)
            .map_err(|e| RpcError::Socket("send response", e))?;
        if n != buf.len() {
            return Err(RpcError::Protocol(format!(
                "short send of a response: {n} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }
}
