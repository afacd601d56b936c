//! Where the pages of a post-copy restore come from: one [`LazySource`] interface, three
//! sources.
//!
//! ```text
//!  LocalPages    pagemap-PID.img + pages-N.img of an image directory (lazy-pages daemon
//!                without --page-server; `page-server --lazy-pages`)
//!  RemotePages   a page server, CRIU's PS_IOV_GET (lazy-pages daemon with --page-server;
//!                over TLS with --tls, see super::tls):
//!                  ─► GET nr vaddr dst_id=PID
//!                  ◄─ ADD_F(PE_PRESENT) n<=nr vaddr dst_id + n*4096 bytes
//!                  ─► CLOSE  ◄─ i32 0                       (at the end)
//!  (dump)        the frozen tree's memory (`dump --lazy-pages`, in `crate::dump::lazy`)
//! ```
//! Addresses are the images' (the dumped task's); a source may return fewer pages than asked
//! (never none: a page it does not have is an error, as in CRIU).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use stasis_images::pagemap::{PageRun, Pagemap};

use super::error::{PagesError, Result};
use super::proto::{self, Header};
use super::tls::{self, Conn, TlsOptions};
use super::{PAGE_SIZE, PE_PRESENT};

/// A source of lazy pages.
pub trait LazySource: Send {
    /// Reads pages of task `pid` from image address `vaddr` into `buf` (whole pages, at least
    /// one); returns the number of pages read (at least 1, at most `buf.len() / 4096`).
    fn get(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<u64>;
    /// Ends the session (a page server: `PS_IOV_CLOSE`).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The run of `pm` holding `vaddr` and having all of `flags`.
pub fn run_at(pm: &Pagemap, vaddr: u64, flags: u32) -> Option<&PageRun> {
    let i = pm.runs.partition_point(|r| r.end() <= vaddr);
    pm.runs
        .get(i)
        .filter(|r| r.contains(vaddr) && r.flags & flags == flags)
}

/// Reads `pagemap-PID.img` of `dir` (runs sorted by address).
pub fn read_pagemap(dir: &Path, pid: i32) -> Result<Pagemap> {
    let p = dir.join(format!("pagemap-{pid}.img"));
    let mut pm = Pagemap::read_file(&p).map_err(|e| PagesError::image(&p, e))?;
    pm.runs.sort_unstable_by_key(|r| r.vaddr);
    Ok(pm)
}

/// Pages from an image directory (plain pages files).
pub struct LocalPages {
    dir: PathBuf,
    tasks: HashMap<i32, (Pagemap, File, PathBuf)>,
}

impl LocalPages {
    pub fn new(dir: &Path) -> LocalPages {
        LocalPages {
            dir: dir.to_path_buf(),
            tasks: HashMap::new(),
        }
    }
}

impl LazySource for LocalPages {
    fn get(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<u64> {
        if !self.tasks.contains_key(&pid) {
            let pm = read_pagemap(&self.dir, pid)?;
            let p = self.dir.join(format!("pages-{}.img", pm.pages_id));
            let f = File::open(&p).map_err(|e| PagesError::io("open", &p, e))?;
            self.tasks.insert(pid, (pm, f, p));
        }
        let Some((pm, f, path)) = self.tasks.get(&pid) else {
            return Err(PagesError::Usage(format!("task {pid}: no pagemap")));
        };
        let r = run_at(pm, vaddr, PE_PRESENT).ok_or_else(|| {
            PagesError::image(
                self.dir.join(format!("pagemap-{pid}.img")),
                format!("no page data at {vaddr:#x} (a lazy page must be in the images here)"),
            )
        })?;
        let n = ((r.end() - vaddr) / PAGE_SIZE).min(buf.len() as u64 / PAGE_SIZE);
        let len = (n * PAGE_SIZE) as usize;
        f.read_exact_at(&mut buf[..len], r.offset + (vaddr - r.vaddr))
            .map_err(|e| PagesError::io("read", path, e))?;
        Ok(n)
    }
}

/// Pages asked from a page server with `PS_IOV_GET` (a `dump --lazy-pages`, or CRIU's).
pub struct RemotePages {
    peer: String,
    sock: Conn,
    closed: bool,
}

impl RemotePages {
    /// Connects to `address:port` (over TLS with `tls`), retrying for up to `wait` while
    /// nobody listens (the dump may still be writing its images).
    pub fn connect(
        address: &str,
        port: u16,
        tls: Option<&TlsOptions>,
        wait: std::time::Duration,
    ) -> Result<RemotePages> {
        let until = std::time::Instant::now() + wait;
        let peer = format!("{address}:{port}");
        loop {
            match super::client::connect_tcp(address, port) {
                Ok(s) => return Ok(Self::over(tls::client(s, tls, Some(address), &peer)?, peer)),
                Err(e) if std::time::Instant::now() >= until => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }

    /// Uses an established connection.
    pub fn over(sock: Conn, peer: String) -> RemotePages {
        RemotePages {
            peer,
            sock,
            closed: false,
        }
    }

    fn wire(&self, what: impl Into<String>) -> PagesError {
        PagesError::Wire {
            peer: self.peer.clone(),
            what: what.into(),
        }
    }
}

impl LazySource for RemotePages {
    fn get(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<u64> {
        let nr = buf.len() as u64 / PAGE_SIZE;
        // CRIU's GET names the task by its plain pid (no pagemap type bits).
        let h = Header::new(proto::PS_IOV_GET, 0, nr, vaddr, pid as u64);
        self.sock
            .write_all(&h.encode())
            .and_then(|()| self.sock.flush())
            .map_err(|e| self.wire(format!("send PS_IOV_GET: {e}")))?;
        let mut b = [0u8; proto::HEADER_LEN];
        self.sock.read_exact(&mut b).map_err(|e| {
            self.wire(format!(
                "no answer to PS_IOV_GET of task {pid} at {vaddr:#x}: {e}"
            ))
        })?;
        let a = Header::decode(&b);
        if a.command() != proto::PS_IOV_ADD_F
            || a.vaddr != vaddr
            || a.nr_pages == 0
            || a.nr_pages > nr
        {
            return Err(self.wire(format!(
                "bad answer to PS_IOV_GET of task {pid} at {vaddr:#x} ({nr} pages): command \
                 {:#x}, {} pages at {:#x}",
                a.command(),
                a.nr_pages,
                a.vaddr
            )));
        }
        let len = (a.nr_pages * PAGE_SIZE) as usize;
        self.sock
            .read_exact(&mut buf[..len])
            .map_err(|e| self.wire(format!("pages of task {pid} at {vaddr:#x}: {e}")))?;
        Ok(a.nr_pages)
    }

    fn finish(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.sock
            .write_all(&Header::new(proto::PS_IOV_CLOSE, 0, 0, 0, 0).encode())
            .and_then(|()| self.sock.flush())
            .map_err(|e| self.wire(format!("send PS_IOV_CLOSE: {e}")))?;
        let mut st = [0u8; 4];
        self.sock
            .read_exact(&mut st)
            .map_err(|e| self.wire(format!("no answer to PS_IOV_CLOSE: {e}")))?;
        match i32::from_le_bytes(st) {
            0 => Ok(()),
            s => Err(self.wire(format!("the server ended the session with status {s}"))),
        }
    }
}
