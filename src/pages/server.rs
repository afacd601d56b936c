//! The receiving side of CRIU's page-server protocol (`stasis page-server`): one session on
//! one connection, pagemaps and pages written into an image directory through a
//! [`LocalSink`] (plain `pages-N.img`, or packed with `--compress` / `--encrypt-key`).
//!
//! ```text
//!  OPEN2 dst_id      close the open pagemap; open pagemap-ID.img + pages-N.img  ─► u8 has_parent
//!  OPEN dst_id       the same, no answer (older CRIUs)
//!  PARENT dst_id     ─► i32: parent/pagemap-ID.img exists
//!  ADD_F / ADD / HOLE  an entry (to a pagemap opened implicitly if dst_id differs);
//!                    PE_PRESENT: nr_pages * 4096 bytes follow, copied to the pages file
//!  CLOSE / FORCE_CLOSE  close, flush, sync the directory  ─► i32 0 (or -1 if that failed)
//!  GET               refused here; [`serve_lazy`] serves it (a post-copy restore's daemon
//!                    asking a `dump --lazy-pages` for pages)
//! ```
//! The connection closing before CLOSE is an error ("the data were not flushed"); after the
//! answer to CLOSE the server waits for the peer to close first (no TIME_WAIT on its side),
//! except on a socket given with `--ps-socket`. Pages ids start at 0x10001, like CRIU's page
//! server, so that a dump and a page server can share one directory.
//! The connection is a [`Conn`]: the accepted socket, or a TLS session over it (`--tls`,
//! see [`super::tls`]).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use super::error::{PagesError, Result};
use super::lazy_source::LazySource;
use super::pack::PackParams;
use super::proto::{self, Header, Target};
use super::sink::{self, LocalSink};
use super::tls::Conn;
use super::{PageSink, Run, SinkReport, PAGE_SIZE, PE_PARENT, PE_PRESENT};

/// First pages id of a page server's files (CRIU's `up_page_ids_base`).
pub const FIRST_PAGES_ID: u32 = 0x10001;

/// What a page server writes and how.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Where pagemaps and pages go (must exist).
    pub images_dir: PathBuf,
    /// `--prev-images-dir`: made the `parent` link of the images directory.
    pub prev_images_dir: Option<PathBuf>,
    /// Packing of the pages files.
    pub pack: PackParams,
}

/// Checks the images directory and links its parent (as CRIU: a `parent` symlink holding
/// the given path, which must be readable from the images directory).
pub fn prepare_dir(o: &ServerOptions) -> Result<()> {
    let d = &o.images_dir;
    if !d.is_dir() {
        return Err(PagesError::io(
            "images directory",
            d,
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ));
    }
    if let Some(p) = &o.prev_images_dir {
        let target = if p.is_absolute() {
            p.clone()
        } else {
            d.join(p)
        };
        if !target.is_dir() {
            return Err(PagesError::io(
                "previous images directory",
                target,
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        let link = d.join("parent");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(p, &link).map_err(|e| PagesError::io("link", &link, e))?;
    }
    Ok(())
}

/// Binds and listens (address: IPv4 or IPv6 literal; none: every IPv4 address, as CRIU).
pub fn listen(address: Option<&str>, port: u16) -> Result<TcpListener> {
    let a = address.unwrap_or("0.0.0.0");
    let ip: std::net::IpAddr = a.parse().map_err(|_| {
        PagesError::Usage(format!(
            "invalid server address {a:?}: the address must be in IPv4 or IPv6 format"
        ))
    })?;
    TcpListener::bind((ip, port)).map_err(|e| PagesError::Wire {
        peer: format!("{a}:{port}"),
        what: format!("bind: {e}"),
    })
}

/// What one session received.
#[derive(Debug, Clone, Default)]
pub struct ServeReport {
    pub sink: SinkReport,
    pub entries: u64,
    pub pages: u64,
}

struct Session<'a> {
    peer: String,
    r: BufReader<Conn>,
    dir: &'a Path,
    sink: LocalSink,
    open: Option<u64>,
    report: ServeReport,
}

impl Session<'_> {
    fn wire(&self, what: impl Into<String>) -> PagesError {
        PagesError::Wire {
            peer: self.peer.clone(),
            what: what.into(),
        }
    }

    fn reply(&mut self, b: &[u8]) -> Result<()> {
        let w = self.r.get_mut();
        w.write_all(b)
            .and_then(|()| w.flush())
            .map_err(|e| self.wire(format!("send answer: {e}")))
    }

    fn target(&self, h: &Header) -> Result<Target> {
        Target::from_dst_id(h.dst_id)
            .ok_or_else(|| self.wire(format!("unknown pagemap type in dst_id {:#x}", h.dst_id)))
    }

    fn open(&mut self, h: &Header, answer: bool) -> Result<()> {
        let t = self.target(h)?;
        tracing::info!("page server: opening {}", t.pagemap_name());
        let has_parent = self.sink.open(t)?;
        self.open = Some(h.dst_id);
        if answer {
            self.reply(&[u8::from(has_parent)])?;
        }
        Ok(())
    }

    fn add(&mut self, h: &Header, flags: u32) -> Result<()> {
        if self.open != Some(h.dst_id) {
            tracing::warn!("page server: entry without open (old client)");
            self.open(h, false)?;
        }
        let run = Run {
            vaddr: h.vaddr,
            nr_pages: h.nr_pages,
            flags,
        };
        self.sink.entry(&run)?;
        self.report.entries += 1;
        if flags & PE_PRESENT == 0 {
            return Ok(());
        }
        let mut left = h
            .nr_pages
            .checked_mul(4096)
            .ok_or_else(|| self.wire(format!("entry of {} pages", h.nr_pages)))?;
        let mut buf = vec![0u8; (1 << 20).min(left as usize)];
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            self.r.read_exact(&mut buf[..n]).map_err(|e| {
                self.wire(format!(
                    "pages of entry {:#x} ({} pages): {e}",
                    h.vaddr, h.nr_pages
                ))
            })?;
            self.sink.pages(&buf[..n])?;
            left -= n as u64;
        }
        self.report.pages += h.nr_pages;
        Ok(())
    }

    /// Flushes everything and syncs the directory.
    fn flush(&mut self) -> Result<()> {
        self.report.sink = self.sink.finish()?;
        let d = File::open(self.dir).map_err(|e| PagesError::io("open", self.dir, e))?;
        nix::unistd::syncfs(&d)
            .map_err(|e| PagesError::io("sync", self.dir, std::io::Error::from(e)))?;
        Ok(())
    }
}

/// Serves one session on connection `sock` (`peer` names it in errors); `inherited`: the
/// socket came from `--ps-socket` (no wait for the peer to close).
pub fn serve(sock: Conn, peer: &str, o: &ServerOptions, inherited: bool) -> Result<ServeReport> {
    let mut s = Session {
        peer: peer.to_string(),
        r: BufReader::with_capacity(1 << 20, sock),
        dir: &o.images_dir,
        sink: LocalSink::new(&o.images_dir, FIRST_PAGES_ID, o.pack.clone()),
        open: None,
        report: ServeReport::default(),
    };
    loop {
        let Some(h) = read_header(&mut s.r, &s.peer)? else {
            return Err(
                s.wire("the connection closed before PS_IOV_CLOSE: the data were not flushed")
            );
        };
        match h.command() {
            proto::PS_IOV_OPEN => s.open(&h, false)?,
            proto::PS_IOV_OPEN2 => s.open(&h, true)?,
            proto::PS_IOV_PARENT => {
                let t = s.target(&h)?;
                let has = i32::from(sink::parent_has(&o.images_dir, t));
                s.reply(&has.to_le_bytes())?;
            }
            proto::PS_IOV_ADD_F => s.add(&h, h.flags())?,
            proto::PS_IOV_ADD => s.add(&h, PE_PRESENT)?,
            proto::PS_IOV_HOLE => s.add(&h, PE_PARENT)?,
            proto::PS_IOV_CLOSE | proto::PS_IOV_FORCE_CLOSE => {
                let r = s.flush();
                let status: i32 = if r.is_ok() { 0 } else { -1 };
                let sent = s.reply(&status.to_le_bytes());
                r?;
                sent?;
                break;
            }
            proto::PS_IOV_GET => {
                return Err(s.wire(
                    "PS_IOV_GET: this page server receives a dump (serving lazy pages is \
                     `dump --lazy-pages`)",
                ))
            }
            c => return Err(s.wire(format!("unknown command {c:#x}"))),
        }
    }
    if !inherited {
        wait_peer_close(s.r.get_mut(), &s.peer)?;
    }
    tracing::info!("page server: session over");
    Ok(s.report)
}

/// Lets the peer close first (no TIME_WAIT on the server's side).
fn wait_peer_close(f: &mut Conn, peer: &str) -> Result<()> {
    let mut c = [0u8; 1];
    match f.read(&mut c) {
        Ok(0) => {}
        Ok(_) => {
            return Err(PagesError::Wire {
                peer: peer.into(),
                what: "unexpected data after PS_IOV_CLOSE".into(),
            })
        }
        Err(e) => tracing::warn!("page server: waiting for the peer to close: {e}"),
    }
    Ok(())
}

/// Reads one command; None when the connection closed before it.
fn read_header(r: &mut impl Read, peer: &str) -> Result<Option<Header>> {
    let mut b = [0u8; proto::HEADER_LEN];
    let mut got = 0;
    let wire = |what: String| PagesError::Wire {
        peer: peer.into(),
        what,
    };
    while got < b.len() {
        match r.read(&mut b[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(wire(format!("receive: {e}"))),
        }
    }
    if got == 0 {
        return Ok(None);
    }
    if got < b.len() {
        return Err(wire(format!(
            "the connection closed inside a command ({got} of 32 bytes)"
        )));
    }
    Ok(Some(Header::decode(&b)))
}

/// Most pages sent for one `PS_IOV_GET`.
const MAX_GET_PAGES: u64 = 1024;

/// What one lazy session served.
#[derive(Debug, Clone, Copy, Default)]
pub struct LazyReport {
    pub requests: u64,
    pub pages: u64,
}

/// Serves a post-copy restore's `PS_IOV_GET`s from `source` until `PS_IOV_CLOSE` (CRIU's
/// page server in lazy mode): each answer is `ADD_F` with `PE_PRESENT`, the number of pages
/// sent (at most those asked) and the pages. A page the source does not have ends the session
/// with an error, as CRIU's does.
pub fn serve_lazy(
    sock: Conn,
    peer: &str,
    source: &mut dyn LazySource,
    inherited: bool,
) -> Result<LazyReport> {
    // Requests and answers alternate: what the reader holds is never past a request.
    let mut r = BufReader::with_capacity(1 << 16, sock);
    let wire = |what: String| PagesError::Wire {
        peer: peer.into(),
        what,
    };
    let mut report = LazyReport::default();
    // One write per answer (header + pages): no Nagle stall between the two.
    let hl = proto::HEADER_LEN;
    let mut buf = vec![0u8; hl + (MAX_GET_PAGES * PAGE_SIZE) as usize];
    loop {
        let Some(h) = read_header(&mut r, peer)? else {
            return Err(wire(
                "the connection closed before PS_IOV_CLOSE: pages may be missing on the \
                 restored side"
                    .into(),
            ));
        };
        match h.command() {
            proto::PS_IOV_GET => {
                let nr = h.nr_pages.clamp(1, MAX_GET_PAGES);
                let pid = i32::try_from(h.dst_id)
                    .map_err(|_| wire(format!("PS_IOV_GET: bad task id {:#x}", h.dst_id)))?;
                let n = source.get(pid, h.vaddr, &mut buf[hl..hl + (nr * PAGE_SIZE) as usize])?;
                let a = Header::new(proto::PS_IOV_ADD_F, PE_PRESENT, n, h.vaddr, h.dst_id);
                buf[..hl].copy_from_slice(&a.encode());
                let f = r.get_mut();
                f.write_all(&buf[..hl + (n * PAGE_SIZE) as usize])
                    .and_then(|()| f.flush())
                    .map_err(|e| wire(format!("send pages: {e}")))?;
                report.requests += 1;
                report.pages += n;
            }
            proto::PS_IOV_CLOSE | proto::PS_IOV_FORCE_CLOSE => {
                let f = r.get_mut();
                f.write_all(&0i32.to_le_bytes())
                    .and_then(|()| f.flush())
                    .map_err(|e| wire(format!("send answer: {e}")))?;
                break;
            }
            c => {
                return Err(wire(format!(
                    "command {c:#x} in a lazy-pages session (only PS_IOV_GET and PS_IOV_CLOSE)"
                )))
            }
        }
    }
    if !inherited {
        wait_peer_close(r.get_mut(), peer)?;
    }
    tracing::info!(
        "lazy pages: {} pages served in {} requests",
        report.pages,
        report.requests
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::client::PageServerSink;
    use stasis_images::pagemap::Pagemap;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    fn session(
        pack: PackParams,
        f: impl FnOnce(&mut PageServerSink),
    ) -> (tempfile::TempDir, Result<ServeReport>) {
        let dir = tempfile::tempdir().unwrap();
        let o = ServerOptions {
            images_dir: dir.path().to_path_buf(),
            prev_images_dir: None,
            pack,
        };
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve(Conn::from(OwnedFd::from(b)), "test", &o, true));
        let mut c = PageServerSink::over_socket(OwnedFd::from(a), None, None).unwrap();
        f(&mut c);
        drop(c);
        (dir, t.join().unwrap())
    }

    #[test]
    fn client_and_server_agree() {
        let (dir, r) = session(PackParams::default(), |c| {
            assert!(!c.open(Target::Process(7)).unwrap());
            c.entry(&Run {
                vaddr: 0x1000,
                nr_pages: 2,
                flags: PE_PRESENT,
            })
            .unwrap();
            c.pages(&[1u8; 4096]).unwrap();
            c.pages(&[2u8; 4096]).unwrap();
            c.entry(&Run {
                vaddr: 0x5000,
                nr_pages: 3,
                flags: PE_PARENT,
            })
            .unwrap();
            assert!(!c.parent_has(Target::Process(7)).unwrap());
            assert!(!c.open(Target::Shmem(9)).unwrap());
            c.entry(&Run {
                vaddr: 0,
                nr_pages: 1,
                flags: PE_PRESENT | 2,
            })
            .unwrap();
            // Too many bytes for the entry are refused on the client side.
            assert!(c.pages(&[3u8; 8192]).is_err());
            c.pages(&[3u8; 4096]).unwrap();
            c.finish().unwrap();
        });
        let r = r.unwrap();
        assert_eq!((r.entries, r.pages, r.sink.pagemaps), (3, 3, 2));
        let pm = Pagemap::read_file(dir.path().join("pagemap-7.img")).unwrap();
        assert_eq!(pm.pages_id, FIRST_PAGES_ID);
        assert_eq!(pm.runs.len(), 2);
        assert_eq!(
            (pm.runs[1].vaddr, pm.runs[1].nr_pages, pm.runs[1].flags),
            (0x5000, 3, PE_PARENT)
        );
        let pages = std::fs::read(dir.path().join("pages-65537.img")).unwrap();
        assert_eq!(pages.len(), 8192);
        assert!(pages[..4096].iter().all(|&b| b == 1) && pages[4096..].iter().all(|&b| b == 2));
        let pm = Pagemap::read_file(dir.path().join("pagemap-shmem-9.img")).unwrap();
        assert_eq!(
            (pm.pages_id, pm.runs[0].flags),
            (FIRST_PAGES_ID + 1, PE_PRESENT | 2)
        );
        assert_eq!(
            std::fs::read(dir.path().join("pages-65538.img")).unwrap(),
            vec![3u8; 4096]
        );
    }

    #[test]
    fn packed_on_the_server_side() {
        let pack = PackParams {
            zstd: Some(1),
            ..Default::default()
        };
        let (dir, r) = session(pack, |c| {
            c.open(Target::Process(1)).unwrap();
            c.entry(&Run {
                vaddr: 0x1000,
                nr_pages: 4,
                flags: PE_PRESENT,
            })
            .unwrap();
            c.pages(&[0u8; 8192]).unwrap();
            c.pages(&[9u8; 8192]).unwrap();
            c.finish().unwrap();
        });
        r.unwrap();
        let p = dir
            .path()
            .join(crate::pages::pack::file_name(FIRST_PAGES_ID));
        let out_path = dir.path().join("plain");
        let out = File::create(&out_path).unwrap();
        assert_eq!(
            crate::pages::pack::decode_to(&p, Some(FIRST_PAGES_ID), None, &out, &out_path).unwrap(),
            4
        );
        let b = std::fs::read(&out_path).unwrap();
        assert!(b[..8192].iter().all(|&x| x == 0) && b[8192..].iter().all(|&x| x == 9));
    }

    #[test]
    fn a_session_cut_short_is_an_error() {
        let (_dir, r) = session(PackParams::default(), |c| {
            c.open(Target::Process(1)).unwrap();
            c.entry(&Run {
                vaddr: 0x1000,
                nr_pages: 1,
                flags: PE_PRESENT,
            })
            .unwrap();
            c.pages(&[1u8; 100]).unwrap();
            // Dropped without the rest of the page and without CLOSE.
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("pages of entry"), "{e}");
        let (_dir, r) = session(PackParams::default(), |c| {
            c.open(Target::Process(1)).unwrap();
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("not flushed"), "{e}");
    }
}

#[cfg(test)]
mod parent_tests {
    use super::*;
    use crate::pages::client::PageServerSink;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    /// `--prev-images-dir` becomes the `parent` link; OPEN2 and PARENT answer whether the
    /// parent has the pagemap.
    #[test]
    fn parent_link_and_answers() {
        let top = tempfile::tempdir().unwrap();
        let prev = top.path().join("prev");
        let cur = top.path().join("cur");
        std::fs::create_dir_all(&prev).unwrap();
        std::fs::create_dir_all(&cur).unwrap();
        std::fs::write(prev.join("pagemap-7.img"), b"").unwrap();
        let o = ServerOptions {
            images_dir: cur.clone(),
            prev_images_dir: Some(PathBuf::from("../prev")),
            pack: PackParams::default(),
        };
        prepare_dir(&o).unwrap();
        assert_eq!(
            std::fs::read_link(cur.join("parent")).unwrap(),
            PathBuf::from("../prev")
        );
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve(Conn::from(OwnedFd::from(b)), "test", &o, true));
        let mut c = PageServerSink::over_socket(OwnedFd::from(a), None, None).unwrap();
        assert!(c.parent_has(Target::Process(7)).unwrap());
        assert!(!c.parent_has(Target::Process(8)).unwrap());
        assert!(c.open(Target::Process(7)).unwrap());
        assert!(!c.open(Target::Shmem(7)).unwrap());
        c.finish().unwrap();
        t.join().unwrap().unwrap();
        let bad = ServerOptions {
            images_dir: cur,
            prev_images_dir: Some(PathBuf::from("../missing")),
            pack: PackParams::default(),
        };
        assert!(prepare_dir(&bad).is_err());
    }
}

#[cfg(test)]
mod lazy_tests {
    use super::*;
    use crate::pages::lazy_source::RemotePages;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    /// Pages of task 7 only, at most 3 per request, each filled with its page number.
    struct Fake;

    impl LazySource for Fake {
        fn get(&mut self, pid: i32, vaddr: u64, buf: &mut [u8]) -> Result<u64> {
            if pid != 7 {
                return Err(PagesError::Usage(format!("no task {pid}")));
            }
            let n = (buf.len() as u64 / PAGE_SIZE).min(3);
            for i in 0..n {
                let at = (i * PAGE_SIZE) as usize;
                buf[at..at + PAGE_SIZE as usize].fill((vaddr / PAGE_SIZE + i) as u8);
            }
            Ok(n)
        }
    }

    #[test]
    fn get_answers_fewer_pages_and_close_ends() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_lazy(Conn::from(OwnedFd::from(b)), "test", &mut Fake, true)
        });
        let mut c = RemotePages::over(Conn::from(OwnedFd::from(a)), "test".into());
        let mut buf = vec![0u8; 8 * PAGE_SIZE as usize];
        assert_eq!(c.get(7, 0x5000, &mut buf).unwrap(), 3);
        assert!(buf[..4096].iter().all(|&x| x == 5));
        assert!(buf[2 * 4096..3 * 4096].iter().all(|&x| x == 7));
        assert_eq!(c.get(7, 0x9000, &mut buf[..4096]).unwrap(), 1);
        assert!(buf[..4096].iter().all(|&x| x == 9));
        c.finish().unwrap();
        let r = t.join().unwrap().unwrap();
        assert_eq!((r.requests, r.pages), (2, 4));
    }

    #[test]
    fn a_page_the_source_lacks_ends_the_session() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_lazy(Conn::from(OwnedFd::from(b)), "test", &mut Fake, true)
        });
        let mut c = RemotePages::over(Conn::from(OwnedFd::from(a)), "test".into());
        let mut buf = vec![0u8; 4096];
        let e = c.get(8, 0x1000, &mut buf).unwrap_err().to_string();
        assert!(e.contains("no answer to PS_IOV_GET of task 8"), "{e}");
        assert!(t
            .join()
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("no task 8"));
    }
}
