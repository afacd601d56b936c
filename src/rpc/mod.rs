//! CRIU's RPC (`criu swrk FD`, `criu service`): container engines (runc, crun, podman via
//! them, CRIU's libcriu and pycriu) drive checkpoint/restore with protobuf messages
//! (`rpc.proto`, in the images crate) over a SOCK_SEQPACKET socket.
//!
//! ```text
//!  client ── criu_req{DUMP, opts} ──────────────► session::serve
//!                                                   │ opts::to_args: criu_opts ─► CRIU options
//!                                                   │   ─► the CLI's typed options and checks
//!                                                   ▼
//!                                                 dump::run / restore::restore / ...
//!         ◄── criu_resp{NOTIFY "pre-dump"} ──────── hook points (action_scripts::Notifier,
//!         ── criu_req{NOTIFY, notify_success} ──►    notify::RpcNotifier)
//!         ◄── criu_resp{DUMP, success, cr_errmsg} ─ the answer
//! ```
//!
//! Files: [`wire`] (the socket and its framing), [`opts`] (options), [`notify`]
//! (notifications), [`session`] (the request loop and one handler per request type),
//! [`service`] (`criu service`: a listening socket, one forked session per connection).

pub mod notify;
pub mod opts;
pub mod service;
pub mod session;
pub mod wire;

/// Errors of the RPC transport (a request's own failure is answered, not an error here).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// A socket call failed.
    #[error("{0}: {1}")]
    Socket(&'static str, nix::errno::Errno),
    /// The peer sent something that is not a request.
    #[error("protocol: {0}")]
    Protocol(String),
}
