//! The RPC client as a listener of the engine's hook points ([`Notifier`]): CRIU's
//! `notify_scripts`. At each stage a NOTIFY response names it, and the engine waits for the
//! client's NOTIFY request; `notify_success` false (or anything else) stops the engine there.
//!
//! ```text
//!  engine: Action::PostRestore(root) ─► criu_resp{type NOTIFY, success, notify{script
//!          "post-restore", pid root}} ─► client runs its hook ─► criu_req{type NOTIFY,
//!          notify_success true} ─► engine goes on
//! ```
//!
//! As CRIU, only `setup-namespaces` and `post-restore` carry the root's PID.

use std::sync::Arc;

use stasis_images::pb::{CriuNotify, CriuReqType, CriuResp};

use super::wire::Conn;
use crate::action_scripts::{Action, Notifier};

/// Sends the engine's stages to the RPC client and waits for its answer.
#[derive(Debug)]
pub struct RpcNotifier {
    conn: Arc<Conn>,
}

impl RpcNotifier {
    /// Notifications over `conn`.
    pub fn new(conn: Arc<Conn>) -> Self {
        RpcNotifier { conn }
    }
}

impl Notifier for RpcNotifier {
    fn notify(&self, action: Action, pid: Option<i32>) -> Result<(), String> {
        let with_pid = matches!(action, Action::SetupNamespaces | Action::PostRestore);
        let resp = CriuResp {
            r#type: CriuReqType::Notify as i32,
            success: true,
            notify: Some(CriuNotify {
                script: Some(action.name().to_string()),
                pid: pid.filter(|_| with_pid),
            }),
            ..Default::default()
        };
        self.conn.send_resp(&resp).map_err(|e| e.to_string())?;
        let answer = self
            .conn
            .recv_req()
            .map_err(|e| e.to_string())?
            .ok_or("the RPC client closed the connection instead of answering")?;
        if answer.r#type != CriuReqType::Notify as i32 || answer.notify_success != Some(true) {
            return Err("RPC client reported script error".into());
        }
        // CRIU adds the externals a client returns to query-ext-files; the kinds a client
        // would name there (files, ttys, unix sockets) are not built, so they are named in
        // the log and the dump goes on as if absent (what they concern is refused by name).
        for key in answer.opts.iter().flat_map(|o| o.external.iter()) {
            tracing::warn!("{}: external object {key} is ignored", action.name());
        }
        Ok(())
    }
}
