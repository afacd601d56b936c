//! `stasis swrk FD` and `stasis service`: CRIU's RPC ([`crate::rpc`]).
//!
//! `swrk FD` serves one session on the SOCK_SEQPACKET socket FD its parent (the client:
//! runc, crun, libcriu) passed it, then exits; `service` listens at `--address` (default
//! `./criu_service.socket`) and serves each connection in a forked session. Sessions write
//! their logs where each request says (`log_file` in the work directory, `criu.log` by
//! default), so the service itself logs only to standard error (or `-o FILE` with `-d`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::common::{self, CommonArgs};
use crate::rpc;

/// `stasis swrk FD`: one RPC session on an inherited socket.
pub fn run_swrk(args: Vec<OsString>) -> i32 {
    let fd = match args.get(2).and_then(|a| a.to_str()?.parse::<i32>().ok()) {
        Some(fd) if args.len() == 3 => fd,
        _ => {
            eprintln!("Usage: criu swrk <fd>");
            return 1;
        }
    };
    let sk = match crate::sys::fds::inherited(fd) {
        Ok(sk) => sk,
        Err(e) => {
            eprintln!("Error: swrk {fd}: not an open descriptor: {e}");
            return 1;
        }
    };
    rpc::session::serve(rpc::wire::Conn::new(sk), true)
}

/// `stasis service` arguments.
#[derive(Debug, Parser)]
#[command(name = "service", about = "serve CRIU's RPC on a unix socket")]
struct ServiceArgs {
    /// Options shared by every verb; of them: `--address PATH` (the socket), `-d`/`--daemon`
    /// (background once listening), `--pidfile`, `--status-fd`.
    #[command(flatten)]
    common: CommonArgs,
}

impl common::VerbArgs for ServiceArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// `stasis service [--address PATH] [-d] [--pidfile FILE]`.
pub fn run_service(args: Vec<OsString>) -> i32 {
    let a: ServiceArgs = match common::parse_verb(&args) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let c = &a.common.criu;
    let fail = |e: String| {
        eprintln!("Error (service): {e}");
        1
    };
    let path = PathBuf::from(
        c.address
            .clone()
            .unwrap_or_else(|| rpc::service::DEFAULT_ADDRESS.into()),
    );
    let status_fd = match c.take_status_fd() {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    let listener = match rpc::service::listen(&path) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if c.restore_detached {
        match crate::sys::daemon::daemonize() {
            Ok(Some(_)) => return 0,
            Ok(None) => {}
            Err(e) => return fail(format!("go to the background: {e}")),
        }
    }
    if let Some(p) = &a.common.pidfile {
        if let Err(e) = std::fs::write(p, format!("{}", std::process::id())) {
            return fail(format!("write pidfile {}: {e}", p.display()));
        }
    }
    if let Err(e) = crate::action_scripts::status_ready(&Default::default(), status_fd) {
        return fail(e);
    }
    fail(rpc::service::accept_loop(&listener))
}
