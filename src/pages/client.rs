//! The dump side of CRIU's page-server protocol: a [`PageSink`] that sends pagemaps and pages
//! to `criu page-server` or `stasis page-server` (see [`super::proto`] for the wire format).
//!
//! ```text
//!  connect (TCP, or the socket of --ps-socket FD); --tls: TLS handshake ([`super::tls`])
//!  open(t)     ─► OPEN2 dst_id(t)        ◄─ u8 has_parent
//!  entry(r)    ─► ADD_F flags nr vaddr   (+ pages(bytes) ─► raw page bytes, PE_PRESENT only)
//!  finish()    ─► CLOSE | FORCE_CLOSE    ◄─ i32 status (0: all written)
//! ```

use std::io::{BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;

use super::error::{PagesError, Result};
use super::proto::{self, Header};
use super::tls::{self, Conn, TlsOptions};
use super::{PageSink, Run, SinkReport, Target};

/// Connects to a page server at `address:port` (TCP_NODELAY: commands are small).
pub fn connect_tcp(address: &str, port: u16) -> Result<OwnedFd> {
    let peer = format!("{address}:{port}");
    let wire = |what: String| PagesError::Wire {
        peer: peer.clone(),
        what,
    };
    let addrs: Vec<_> = (address, port)
        .to_socket_addrs()
        .map_err(|e| wire(format!("resolve: {e}")))?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a) {
            Ok(s) => {
                s.set_nodelay(true)
                    .map_err(|e| wire(format!("TCP_NODELAY: {e}")))?;
                return Ok(OwnedFd::from(s));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(wire(match last {
        Some(e) => format!("connect: {e}"),
        None => "the address resolves to nothing".into(),
    }))
}

/// Sends a dump's pages to a page server.
pub struct PageServerSink {
    peer: String,
    w: BufWriter<Conn>,
    /// Socket inherited through --ps-socket: end with FORCE_CLOSE.
    inherited: bool,
    dst_id: Option<u64>,
    /// Page bytes still owed to the last present entry.
    owed: u64,
    /// Page bytes already sent for the last present entry.
    given: u64,
    /// TLS: nothing is buffered, writes are framed as CRIU reads them (see [`Conn::is_tls`]).
    framed: bool,
    report: SinkReport,
    finished: bool,
}

impl PageServerSink {
    /// Connects to `address:port` (over TLS with `tls`).
    pub fn connect(address: &str, port: u16, tls: Option<&TlsOptions>) -> Result<PageServerSink> {
        let peer = format!("{address}:{port}");
        let s = connect_tcp(address, port)?;
        let c = tls::client(s, tls, Some(address), &peer)?;
        Ok(Self::over(c, peer, false))
    }

    /// Uses a connected socket (`--ps-socket FD`, over TLS with `tls`, the server's name
    /// checked against `address` if given); the session ends with FORCE_CLOSE, as the socket
    /// may outlive it.
    pub fn over_socket(
        fd: OwnedFd,
        tls: Option<&TlsOptions>,
        address: Option<&str>,
    ) -> Result<PageServerSink> {
        let peer = "(--ps-socket)";
        let c = tls::client(fd, tls, address, peer)?;
        Ok(Self::over(c, peer.into(), true))
    }

    /// Uses an established connection; `inherited`: end with FORCE_CLOSE.
    pub fn over(conn: Conn, peer: String, inherited: bool) -> PageServerSink {
        PageServerSink {
            peer,
            framed: conn.is_tls(),
            w: BufWriter::with_capacity(1 << 20, conn),
            inherited,
            dst_id: None,
            owed: 0,
            given: 0,
            report: SinkReport::default(),
            finished: false,
        }
    }

    fn wire(&self, what: impl Into<String>) -> PagesError {
        PagesError::Wire {
            peer: self.peer.clone(),
            what: what.into(),
        }
    }

    fn send(&mut self, h: Header) -> Result<()> {
        let w: &mut dyn Write = if self.framed {
            self.w.get_mut()
        } else {
            &mut self.w
        };
        w.write_all(&h.encode())
            .map_err(|e| self.wire(format!("send command {:#x}: {e}", h.command())))?;
        self.report.bytes += proto::HEADER_LEN as u64;
        Ok(())
    }

    fn answer<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        self.w
            .flush()
            .map_err(|e| self.wire(format!("send: {e}")))?;
        let mut b = [0u8; N];
        self.w
            .get_mut()
            .read_exact(&mut b)
            .map_err(|e| self.wire(format!("no answer to {what}: {e}")))?;
        Ok(b)
    }

    fn settle(&self) -> Result<()> {
        if self.owed != 0 {
            return Err(self.wire(format!(
                "{} bytes of pages still owed to the last entry",
                self.owed
            )));
        }
        Ok(())
    }
}

impl PageSink for PageServerSink {
    fn open(&mut self, target: Target) -> Result<bool> {
        self.settle()?;
        let dst_id = target.dst_id();
        self.send(Header::new(proto::PS_IOV_OPEN2, 0, 0, 0, dst_id))?;
        let [has_parent] = self.answer::<1>("PS_IOV_OPEN2")?;
        self.dst_id = Some(dst_id);
        self.report.pagemaps += 1;
        Ok(has_parent != 0)
    }

    #[cfg(test)]
    fn parent_has(&mut self, target: Target) -> Result<bool> {
        self.settle()?;
        self.send(Header::new(proto::PS_IOV_PARENT, 0, 0, 0, target.dst_id()))?;
        Ok(i32::from_le_bytes(self.answer::<4>("PS_IOV_PARENT")?) > 0)
    }

    fn entry(&mut self, run: &Run) -> Result<()> {
        self.settle()?;
        let dst_id = self
            .dst_id
            .ok_or_else(|| self.wire("pagemap entry with no pagemap open"))?;
        if run.flags >> (32 - proto::PS_CMD_BITS) != 0 {
            return Err(self.wire(format!(
                "entry flags {:#x} do not fit the protocol",
                run.flags
            )));
        }
        self.send(Header::new(
            proto::PS_IOV_ADD_F,
            run.flags,
            run.nr_pages,
            run.vaddr,
            dst_id,
        ))?;
        self.owed = run.data_len();
        self.given = 0;
        Ok(())
    }

    fn pages(&mut self, data: &[u8]) -> Result<()> {
        if data.len() as u64 > self.owed {
            return Err(self.wire(format!(
                "{} bytes of pages given, the entry takes {}",
                data.len(),
                self.owed
            )));
        }
        let sent = if self.framed {
            let mut rest = data;
            let mut r = Ok(());
            while !rest.is_empty() && r.is_ok() {
                let room = tls::RECORD - (self.given as usize % tls::RECORD);
                let (now, later) = rest.split_at(room.min(rest.len()));
                r = self.w.get_mut().write_all(now);
                self.given += now.len() as u64;
                rest = later;
            }
            r
        } else {
            self.w.write_all(data)
        };
        sent.map_err(|e| self.wire(format!("send pages: {e}")))?;
        self.owed -= data.len() as u64;
        self.report.bytes += data.len() as u64;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        self.settle()?;
        self.dst_id = None;
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkReport> {
        if self.finished {
            return Ok(std::mem::take(&mut self.report));
        }
        self.close()?;
        let cmd = if self.inherited {
            proto::PS_IOV_FORCE_CLOSE
        } else {
            proto::PS_IOV_CLOSE
        };
        self.send(Header::new(cmd, 0, 0, 0, 0))?;
        let status = i32::from_le_bytes(self.answer::<4>("PS_IOV_CLOSE")?);
        self.finished = true;
        if status != 0 {
            return Err(self.wire(format!("the server ended the session with status {status}")));
        }
        Ok(std::mem::take(&mut self.report))
    }
}
