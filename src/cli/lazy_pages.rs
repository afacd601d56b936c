//! `stasis lazy-pages`: the daemon of a post-copy restore (CRIU's `criu lazy-pages`).
//!
//! ```text
//!  listen WORKDIR/lazy-pages.socket ─► [--daemon: fork; the parent writes --pidfile, exits 0]
//!  ─► --status-fd: one '\0' byte (ready: `restore --lazy-pages` may start)
//!  ─► serve one restore (crate::pages::lazy) with pages from the images (-D), or from the
//!     page server of `dump --lazy-pages` (--page-server --address A --port N)
//!  ─► exit 0 once every lazy page is in place (1 on any error)
//! ```

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;

use super::common::{self, CommonArgs, Verb};
use crate::pages::lazy;
use crate::pages::lazy_source::{LazySource, LocalPages, RemotePages};

/// `stasis lazy-pages` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "lazy-pages",
    about = "serve the page faults of a post-copy restore (CRIU's lazy-pages daemon)"
)]
pub struct LazyPagesArgs {
    /// Options shared by every verb; of them: `-D`, `-W` (where the socket is),
    /// `--page-server --address A --port N`, `-d`/`--daemon`, `--pidfile`, `--status-fd`.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl common::VerbArgs for LazyPagesArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

fn fail(e: impl std::fmt::Display) -> i32 {
    tracing::error!("{e}");
    eprintln!("Error (lazy-pages): {e}");
    1
}

/// How long the daemon retries connecting to the page server (the dump may still be
/// writing its images).
const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// `stasis lazy-pages ...`; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let a: LazyPagesArgs = match common::start(&args, Verb::LazyPages) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let c = &a.common.criu;
    let images_dir = a.common.images_dir();
    let page_server = if c.page_server {
        let (Some(addr), Some(port)) = (c.address.clone(), c.port) else {
            return fail("--page-server needs --address and --port");
        };
        Some((addr, port))
    } else {
        None
    };
    let status = match c.status_fd.map(crate::sys::fds::inherited).transpose() {
        Ok(s) => s,
        Err(e) => return fail(format!("--status-fd: {e}")),
    };
    let listener = match lazy::listen(&a.common.work_dir()) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if let Some(exit) = common::ready_to_serve(&a.common, status, &|e| fail(e)) {
        return exit;
    }
    // The source is opened lazily: a remote one once the restore is connected.
    let mut source = Deferred {
        dir: images_dir.clone(),
        page_server,
        tls: c.tls.options(),
        inner: None,
    };
    match lazy::run(listener, &images_dir, &mut source) {
        Ok(r) => {
            tracing::info!(
                "lazy pages: {} tasks, {} faults ({} zero), {} pages on fault, {} in the \
                 background",
                r.tasks,
                r.faults,
                r.zero_faults,
                r.pages_on_fault,
                r.pages_background
            );
            0
        }
        Err(e) => fail(e),
    }
}

/// The page source, opened at the first request (CRIU connects to the page server once the
/// restore has handed over its tasks).
struct Deferred {
    dir: std::path::PathBuf,
    page_server: Option<(String, u16)>,
    tls: Option<crate::pages::tls::TlsOptions>,
    inner: Option<Box<dyn LazySource>>,
}

impl Deferred {
    fn open(&mut self) -> crate::pages::Result<&mut Box<dyn LazySource>> {
        if self.inner.is_none() {
            let s: Box<dyn LazySource> = match &self.page_server {
                Some((a, p)) => Box::new(RemotePages::connect(
                    a,
                    *p,
                    self.tls.as_ref(),
                    CONNECT_WAIT,
                )?),
                None => Box::new(LocalPages::new(&self.dir)),
            };
            self.inner = Some(s);
        }
        self.inner
            .as_mut()
            .ok_or_else(|| crate::pages::PagesError::Usage("no page source".into()))
    }
}

impl LazySource for Deferred {
    fn get(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> crate::pages::Result<u64> {
        self.open()?.get(pid, vaddr, buf)
    }

    fn finish(&mut self) -> crate::pages::Result<()> {
        // A page server is told the session is over even when no page was asked.
        if self.page_server.is_some() {
            self.open()?.finish()
        } else {
            Ok(())
        }
    }
}
