//! `dump --lazy-pages`: the dump's half of post-copy migration (CRIU's `cr_lazy_mem_dump`).
//!
//! ```text
//!  before freezing: bind ADDR:PORT (a busy port fails the dump before anything is frozen)
//!  dump as usual, but private anonymous pages are entries with PE_LAZY and no data
//!  images written ─► "lazy pages: serving on ADDR:PORT" ─► accept the lazy-pages daemon
//!  serve its PS_IOV_GETs from the frozen tree's memory (FrozenMemory, /proc/PID/mem), only
//!  pages of PE_LAZY entries, until PS_IOV_CLOSE ─► kill the tree (or resume it with -R)
//! ```
//! A session that fails (the daemon goes away before PS_IOV_CLOSE) fails the dump: the tree
//! is resumed, as after any failed dump (CRIU resumes it too).

use std::collections::HashMap;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use stasis_images::pagemap::Pagemap;

use super::error::{DumpError, Result};
use crate::pages::lazy_source::{read_pagemap, run_at, LazySource};
use crate::pages::{PagesError, PAGE_SIZE, PE_LAZY};

/// Where a lazy dump serves its pages (`--lazy-pages [--address A] --port N`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyServe {
    /// None: every IPv4 address, as CRIU.
    pub address: Option<String>,
    pub port: u16,
    /// `--tls`: the session runs over TLS (see [`crate::pages::tls`]).
    pub tls: Option<crate::pages::tls::TlsOptions>,
}

/// Binds the lazy page server's port.
pub fn bind(l: &LazyServe, pid: i32) -> Result<TcpListener> {
    crate::pages::server::listen(l.address.as_deref(), l.port)
        .map_err(|e| DumpError::new("lazy-pages", pid, None, e.to_string()))
}

/// Pages of the frozen tree, read from its memory: only those of `PE_LAZY` entries of the
/// images just written.
pub struct FrozenMemory {
    dir: PathBuf,
    tasks: HashMap<i32, (Pagemap, File)>,
}

impl FrozenMemory {
    pub fn new(dir: &Path) -> FrozenMemory {
        FrozenMemory {
            dir: dir.to_path_buf(),
            tasks: HashMap::new(),
        }
    }
}

impl LazySource for FrozenMemory {
    fn get(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> crate::pages::Result<u64> {
        if !self.tasks.contains_key(&pid) {
            let pm = read_pagemap(&self.dir, pid)?;
            let p = format!("/proc/{pid}/mem");
            let f = File::open(&p).map_err(|e| PagesError::io("open", &p, e))?;
            self.tasks.insert(pid, (pm, f));
        }
        let Some((pm, f)) = self.tasks.get(&pid) else {
            return Err(PagesError::Usage(format!("task {pid}: no pagemap")));
        };
        let r = run_at(pm, vaddr, PE_LAZY).ok_or_else(|| {
            PagesError::Usage(format!(
                "PS_IOV_GET of task {pid} at {vaddr:#x}: not a lazy page of the dump"
            ))
        })?;
        let n = ((r.end() - vaddr) / PAGE_SIZE).min(buf.len() as u64 / PAGE_SIZE);
        let len = (n * PAGE_SIZE) as usize;
        f.read_exact_at(&mut buf[..len], vaddr)
            .map_err(|e| PagesError::io("read", format!("/proc/{pid}/mem"), e))?;
        Ok(n)
    }
}

/// Serves the lazy pages of the dump in `dir` to one lazy-pages daemon.
pub fn serve(listener: TcpListener, l: &LazyServe, dir: &Path, pid: i32) -> Result<()> {
    let err = |e: String| DumpError::new("lazy-pages", pid, None, e);
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!("lazy pages: serving on {addr}");
    let (sock, peer) = listener
        .accept()
        .map_err(|e| err(format!("accept on {addr}: {e}")))?;
    // Answers are latency-bound (a restored thread waits for each fault's pages).
    let _ = sock.set_nodelay(true);
    let peer = peer.to_string();
    let conn = crate::pages::tls::server(sock.into(), l.tls.as_ref(), l.address.as_deref(), &peer)
        .map_err(|e| err(e.to_string()))?;
    let mut src = FrozenMemory::new(dir);
    let r = crate::pages::server::serve_lazy(conn, &peer, &mut src, false)
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(
        "lazy pages transfer finished: {} pages in {} requests",
        r.pages,
        r.requests
    );
    Ok(())
}
