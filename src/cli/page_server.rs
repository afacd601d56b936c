//! `stasis page-server`: receive a dump's pagemaps and pages over CRIU 4.2's page-server
//! protocol (from `criu dump --page-server` or `stasis dump --page-server`) into an image
//! directory, plain or packed (`--compress`, `--encrypt-key`).
//!
//! ```text
//!  prepare -D (parent link of --prev-images-dir) ─► listen ADDR:PORT (or take --ps-socket FD)
//!  ─► [--daemon: fork; the parent writes --pidfile and exits 0]
//!  ─► --status-fd: one '\0' byte, then closed (ready: connections are accepted)
//!  ─► accept one connection ─► [--tls: TLS handshake] ─► serve the session ─► exit 0
//!  (1 on any error)
//! ```

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::common::{self, CommonArgs, Verb};
use crate::pages::pack::{PackKey, PackParams};
use crate::pages::server::{self, ServerOptions};

/// `stasis page-server` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "page-server",
    about = "receive pages from a dump over the network (CRIU's page-server protocol)"
)]
pub struct PageServerArgs {
    /// Options shared by every verb; of them: `--prev-images-dir` (linked as `parent`),
    /// `-d`/`--daemon` (background once listening: the parent writes `--pidfile` and
    /// exits), `--status-fd` (one zero byte once connections are accepted).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Compress the pages files: zstd or zstd:LEVEL (stasis extension).
    #[arg(long = "compress", value_name = "zstd[:LEVEL]")]
    pub compress: Option<String>,
    /// Encrypt and authenticate the pages files with the key in FILE (stasis extension).
    #[arg(long = "encrypt-key", value_name = "FILE")]
    pub encrypt_key: Option<PathBuf>,
}

impl common::VerbArgs for PageServerArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

fn fail(e: impl std::fmt::Display) -> i32 {
    tracing::error!("{e}");
    eprintln!("Error (page-server): {e}");
    1
}

/// `stasis page-server ...`; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let a: PageServerArgs = match common::start(&args, Verb::PageServer) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let mut pack = PackParams::default();
    if let Some(c) = &a.compress {
        match PackParams::parse_compress(c) {
            Ok(l) => pack.zstd = Some(l),
            Err(e) => return fail(e),
        }
    }
    if let Some(k) = &a.encrypt_key {
        match PackKey::load(k) {
            Ok(k) => pack.key = Some(std::sync::Arc::new(k)),
            Err(e) => return fail(e),
        }
    }
    let o = ServerOptions {
        images_dir: a.common.images_dir(),
        prev_images_dir: a.common.criu.incremental.prev_images_dir.clone(),
        pack,
    };
    if let Err(e) = server::prepare_dir(&o) {
        return fail(e);
    }
    let status = match a
        .common
        .criu
        .status_fd
        .map(crate::sys::fds::inherited)
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return fail(format!("--status-fd: {e}")),
    };
    let (listener, inherited) = match a.common.criu.ps_socket {
        Some(fd) => match crate::sys::fds::inherited(fd) {
            Ok(s) => (None, Some(s)),
            Err(e) => return fail(format!("--ps-socket {fd}: {e}")),
        },
        None => {
            let Some(port) = a.common.criu.port else {
                return fail("--port is required (or --ps-socket)");
            };
            match server::listen(a.common.criu.address.as_deref(), port) {
                Ok(l) => (Some(l), None),
                Err(e) => return fail(e),
            }
        }
    };
    if let Some(l) = &listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!("page server listening on {addr}");
        }
    }
    if let Some(exit) = common::ready_to_serve(&a.common, status, &|e| fail(e)) {
        return exit;
    }
    let (sock, peer, from_ps_socket) = match (listener, inherited) {
        (_, Some(s)) => (s, "(--ps-socket)".to_string(), true),
        (Some(l), None) => match l.accept() {
            Ok((s, addr)) => {
                tracing::info!("accepted connection from {addr}");
                (std::os::fd::OwnedFd::from(s), addr.to_string(), false)
            }
            Err(e) => return fail(format!("accept: {e}")),
        },
        (None, None) => return fail("no socket"),
    };
    let address = a.common.criu.address.as_deref();
    let tls = a.common.criu.tls.options();
    let conn = match crate::pages::tls::server(sock, tls.as_ref(), address, &peer) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match server::serve(conn, &peer, &o, from_ps_socket) {
        Ok(r) => {
            tracing::info!(
                "page server: {} pagemaps, {} entries, {} pages, {} bytes written",
                r.sink.pagemaps,
                r.entries,
                r.pages,
                r.sink.bytes
            );
            0
        }
        Err(e) => fail(e),
    }
}
