//! Page-server TLS (`--tls`): the transport under the page-server protocol, as CRIU 4.2's
//! `criu/tls.c` means it — X.509 certificates on both sides (mutual authentication), each side
//! checking the peer's chain against its CAs (and CRL) and, unless `--tls-no-cn-verify`, the
//! peer's name against `--address`.
//!
//! ```text
//!  socket (TCP or --ps-socket) ──► Conn::Plain(File)                       (no --tls)
//!                              ──► client(): handshake ──► Conn::Client     dump, pre-dump,
//!                                                                          lazy-pages daemon
//!                              ──► server(): handshake ──► Conn::Server     page-server,
//!                                                                          dump --lazy-pages
//!  Conn: Read + Write; the protocol code (client.rs, server.rs, lazy_source.rs) only sees it.
//! ```
//!
//! Credentials (CRIU's defaults when a path is not given):
//! ```text
//!  --tls-cacert  /etc/pki/CA/cacert.pem        trusted CAs (without the option: also the
//!                                              system's CAs, and a missing file is no error)
//!  --tls-cacrl   /etc/pki/CA/cacrl.pem         revoked certificates (used when readable;
//!                                              given explicitly it must be readable)
//!  --tls-cert    /etc/pki/criu/cert.pem        this side's certificate chain
//!  --tls-key     /etc/pki/criu/private/key.pem its private key
//! ```
//! The name check follows RFC 6125 as rustls' webpki does: the address must match a
//! subjectAltName (an IP address or a DNS name) of the peer's certificate. The client checks
//! the server against the address it connects to; the server checks the client against its
//! own `--address` when one is given (CRIU passes `opts.addr` on both sides). A certificate
//! that names its host only in the subject's CN needs `--tls-no-cn-verify`.
//! Ending a session sends TLS close_notify (CRIU: `gnutls_bye`). CRIU's peers need the page
//! data framed in records of their own ([`Conn::is_tls`]).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme, StreamOwned,
};

use super::error::{PagesError, Result};

/// CRIU's default paths (its SYSCONFDIR is /etc).
pub const DEFAULT_CACERT: &str = "/etc/pki/CA/cacert.pem";
pub const DEFAULT_CACRL: &str = "/etc/pki/CA/cacrl.pem";
pub const DEFAULT_CERT: &str = "/etc/pki/criu/cert.pem";
pub const DEFAULT_KEY: &str = "/etc/pki/criu/private/key.pem";

/// The TLS options of a page-server connection (given: `--tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub cacert: Option<PathBuf>,
    pub cacrl: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Do not check the peer's name against the address.
    pub no_cn_verify: bool,
}

fn usage(what: String) -> PagesError {
    PagesError::Usage(format!("tls: {what}"))
}

fn pem_err(what: &str, path: &Path, e: impl std::fmt::Display) -> PagesError {
    usage(format!("{what} {}: {e}", path.display()))
}

/// The ring provider (see Cargo.toml). rustls deprecates it for lacking post-quantum key
/// exchange; the peers here (CRIU's gnutls 3.7, stasis) negotiate classical groups anyway,
/// and aws-lc-rs would add a large C build.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This side's credentials and the peer checks, loaded once per connection.
struct Creds {
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl TlsOptions {
    fn load(&self) -> Result<Creds> {
        let mut roots = RootCertStore::empty();
        let cacert = self.cacert.as_deref().unwrap_or(Path::new(DEFAULT_CACERT));
        if self.cacert.is_none() {
            // As CRIU: without --tls-cacert the system's CAs are trusted too.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
        let cas: Vec<_> = match CertificateDer::pem_file_iter(cacert) {
            Ok(it) => it
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| pem_err("CA certificates", cacert, e))?,
            Err(_) if self.cacert.is_none() => Vec::new(),
            Err(e) => return Err(pem_err("CA certificates", cacert, e)),
        };
        let (added, _) = roots.add_parsable_certificates(cas);
        if added == 0 && self.cacert.is_some() {
            return Err(usage(format!(
                "no trusted CA certificates added ({})",
                cacert.display()
            )));
        }
        if roots.is_empty() {
            return Err(usage(format!(
                "no trusted CA certificates (none in {} nor in the system's store)",
                cacert.display()
            )));
        }
        let cacrl = self.cacrl.as_deref().unwrap_or(Path::new(DEFAULT_CACRL));
        let crls = if self.cacrl.is_some() || cacrl.exists() {
            CertificateRevocationListDer::pem_file_iter(cacrl)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| pem_err("certificate revocation list", cacrl, e))?
        } else {
            Vec::new()
        };
        let cert = self.cert.as_deref().unwrap_or(Path::new(DEFAULT_CERT));
        let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<std::result::Result<_, _>>())
            .map_err(|e| pem_err("certificate", cert, e))?;
        if chain.is_empty() {
            return Err(usage(format!("no certificate in {}", cert.display())));
        }
        let keyp = self.key.as_deref().unwrap_or(Path::new(DEFAULT_KEY));
        let key =
            PrivateKeyDer::from_pem_file(keyp).map_err(|e| pem_err("private key", keyp, e))?;
        Ok(Creds {
            roots: Arc::new(roots),
            crls,
            chain,
            key,
        })
    }

    /// The peer name to check, if any: `address` unless `--tls-no-cn-verify`.
    fn name(&self, address: Option<&str>) -> Result<Option<ServerName<'static>>> {
        match address {
            Some(a) if !self.no_cn_verify => ServerName::try_from(a.to_string())
                .map(Some)
                .map_err(|e| usage(format!("address {a:?} cannot be checked as a name: {e}"))),
            _ => Ok(None),
        }
    }
}

fn setup(what: &str, e: impl std::fmt::Display) -> PagesError {
    usage(format!("{what}: {e}"))
}

/// The handshake signature checks of a verifier wrapper: those of its `inner` verifier.
macro_rules! signatures_by_inner {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// The server's certificate chain is checked always, its name unless `--tls-no-cn-verify`
/// (the webpki verifier checks the name last, so only a name mismatch is forgiven).
#[derive(Debug)]
struct ServerCheck {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    signatures_by_inner!();
}

/// The client's certificate is required and its chain checked; its name too when the server
/// was given `--address` (CRIU checks `opts.addr` on both sides).
#[derive(Debug)]
struct ClientCheck {
    inner: Arc<dyn ClientCertVerifier>,
    name: Option<ServerName<'static>>,
}

impl ClientCertVerifier for ClientCheck {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // As CRIU: the trusted CAs are not advertised to the client.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(n) = &self.name {
            rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, n)?;
        }
        Ok(ok)
    }

    signatures_by_inner!();
}

/// A page-server connection: a plain socket or a TLS session over it.
pub enum Conn {
    Plain(File),
    Client(Box<StreamOwned<ClientConnection, File>>),
    Server(Box<StreamOwned<ServerConnection, File>>),
}

/// Largest plaintext of one TLS record: page data is sent in writes that never cross a
/// multiple of it (counted from the entry's first byte), see [`Conn::is_tls`].
pub const RECORD: usize = 16 << 10;

impl Conn {
    /// Whether this is a TLS session. Then writes must follow CRIU's record framing: CRIU's
    /// TLS page server reads a command with one record read, and an entry's pages in
    /// records counted against 64 KiB pipe chunks (`tls_recv_data_to_fd`), so a header is
    /// one write and page data never shares a record with a header nor crosses a multiple
    /// of [`RECORD`] (rustls makes one or more records of each write, never merging writes).
    pub fn is_tls(&self) -> bool {
        !matches!(self, Conn::Plain(_))
    }
}

impl From<OwnedFd> for Conn {
    fn from(fd: OwnedFd) -> Conn {
        Conn::Plain(File::from(fd))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(f) => f.read(buf),
            Conn::Client(s) => s.read(buf),
            Conn::Server(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(f) => f.write(buf),
            Conn::Client(s) => s.write(buf),
            Conn::Server(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(f) => f.flush(),
            Conn::Client(s) => s.flush(),
            Conn::Server(s) => s.flush(),
        }
    }
}

impl Drop for Conn {
    /// Ends a TLS session as gnutls_bye(SHUT_RDWR) does: close_notify sent, then the peer's
    /// read (for at most [`BYE_WAIT`]), so that the socket closes with nothing unread (a
    /// close with unread data resets the connection, which CRIU's page server, waiting for
    /// end of file after its own close_notify, reports as an error). Best effort: the
    /// session is over either way.
    fn drop(&mut self) {
        match self {
            Conn::Plain(_) => {}
            Conn::Client(s) => {
                s.conn.send_close_notify();
                if s.flush().is_ok() && read_timeout(&s.sock) {
                    drain(s.as_mut());
                }
            }
            Conn::Server(s) => {
                s.conn.send_close_notify();
                if s.flush().is_ok() && read_timeout(&s.sock) {
                    drain(s.as_mut());
                }
            }
        }
    }
}

/// How long a closing session waits for the peer's close_notify.
const BYE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Bounds the reads of a closing session by [`BYE_WAIT`].
fn read_timeout(sock: &File) -> bool {
    let tv = nix::sys::time::TimeVal::new(BYE_WAIT.as_secs() as _, 0);
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv).is_ok()
}

/// Reads what the peer still sends until its close_notify or end of file.
fn drain(r: &mut dyn Read) {
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn handshake_err(peer: &str, e: std::io::Error) -> PagesError {
    PagesError::Wire {
        peer: peer.to_string(),
        what: format!("TLS handshake: {e}"),
    }
}

/// The connection for `sock`: plain without `tls`, else a TLS client session, handshaken
/// before returning, that checks the server's name against `address` when one is given.
pub fn client(
    sock: OwnedFd,
    tls: Option<&TlsOptions>,
    address: Option<&str>,
    peer: &str,
) -> Result<Conn> {
    let Some(o) = tls else {
        return Ok(Conn::from(sock));
    };
    let c = o.load()?;
    let p = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(c.roots, p.clone())
        .with_crls(c.crls)
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| setup("server verifier", e))?;
    let checked = o.name(address)?;
    let config = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup("protocol versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerCheck {
            inner,
            check_name: checked.is_some(),
        }))
        .with_client_auth_cert(c.chain, c.key)
        .map_err(|e| setup("certificate/private key pair", e))?;
    // Unchecked: any valid name will do for the session (an IP address sends no SNI).
    let name = match checked {
        Some(n) => n,
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    let conn =
        ClientConnection::new(Arc::new(config), name).map_err(|e| setup("client session", e))?;
    let mut s = StreamOwned::new(conn, File::from(sock));
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| handshake_err(peer, e))?;
    }
    tracing::info!("tls: handshake with {peer} completed");
    Ok(Conn::Client(Box::new(s)))
}

/// The connection for accepted `sock`: plain without `tls`, else a TLS server session that
/// requires the client's certificate (checked against `address`, the server's own, if any).
pub fn server(
    sock: OwnedFd,
    tls: Option<&TlsOptions>,
    address: Option<&str>,
    peer: &str,
) -> Result<Conn> {
    let Some(o) = tls else {
        return Ok(Conn::from(sock));
    };
    let c = o.load()?;
    let p = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(c.roots, p.clone())
        .with_crls(c.crls)
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| setup("client verifier", e))?;
    let verifier = Arc::new(ClientCheck {
        inner,
        name: o.name(address)?,
    });
    let config = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(c.chain, c.key)
        .map_err(|e| setup("certificate/private key pair", e))?;
    // No session tickets: CRIU's gnutls client reads a post-handshake ticket as EAGAIN where
    // it waits for an answer (and nothing here resumes sessions).
    let mut config = config;
    config.send_tls13_tickets = 0;
    let conn = ServerConnection::new(Arc::new(config)).map_err(|e| setup("server session", e))?;
    let mut s = StreamOwned::new(conn, File::from(sock));
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| handshake_err(peer, e))?;
    }
    tracing::info!("tls: handshake with {peer} completed");
    Ok(Conn::Server(Box::new(s)))
}

#[cfg(test)]
#[path = "../../tests/common/pki.rs"]
mod pki;

#[cfg(test)]
mod tests {
    use super::pki::{Ca, Leaf};
    use super::*;
    use crate::pages::client::PageServerSink;
    use crate::pages::server::{serve, ServerOptions};
    use crate::pages::{PageSink, Run, Target, PE_PRESENT};
    use std::os::unix::net::UnixStream;

    fn opts(ca: &Path, me: &Leaf) -> TlsOptions {
        TlsOptions {
            cacert: Some(ca.to_path_buf()),
            cacrl: None,
            cert: Some(me.cert.clone()),
            key: Some(me.key.clone()),
            no_cn_verify: false,
        }
    }

    /// One page-server session over TLS on a socket pair: the client connects to
    /// `client_addr`, the server checks the client against `server_addr`. Returns both
    /// sides' results (the client's as the text of its error).
    fn session(
        client: TlsOptions,
        client_addr: &str,
        server: TlsOptions,
        server_addr: Option<&'static str>,
    ) -> (
        std::result::Result<(), String>,
        std::result::Result<u64, String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let o = ServerOptions {
            images_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let c = super::server(OwnedFd::from(b), Some(&server), server_addr, "client")
                .map_err(|e| e.to_string())?;
            serve(c, "client", &o, true)
                .map(|r| r.pages)
                .map_err(|e| e.to_string())
        });
        let c = (|| {
            let conn = super::client(OwnedFd::from(a), Some(&client), Some(client_addr), "srv")?;
            let mut s = PageServerSink::over(conn, "srv".into(), true);
            s.open(Target::Process(7))?;
            s.entry(&Run {
                vaddr: 0x1000,
                nr_pages: 3,
                flags: PE_PRESENT,
            })?;
            s.pages(&[7u8; 3 * 4096])?;
            s.finish().map(|_| ())
        })()
        .map_err(|e| e.to_string());
        (c, t.join().unwrap())
    }

    #[test]
    fn mutual_auth_and_name_checks() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::new(d.path(), "good");
        let srv = ca.leaf("server", &["127.0.0.1"], 10);
        let cli = ca.leaf("client", &["127.0.0.1", "client.test"], 11);
        let (c, s) = session(
            opts(&ca.cert, &cli),
            "127.0.0.1",
            opts(&ca.cert, &srv),
            Some("127.0.0.1"),
        );
        assert_eq!((c, s), (Ok(()), Ok(3)));

        // The server's certificate does not name the address: refused by the client, with
        // the peer named; --tls-no-cn-verify lets it through.
        let (c, s) = session(opts(&ca.cert, &cli), "10.1.2.3", opts(&ca.cert, &srv), None);
        let e = c.unwrap_err();
        assert!(
            e.contains("page server srv: TLS handshake") && e.contains("name"),
            "{e}"
        );
        assert!(s.is_err());
        let mut lax = opts(&ca.cert, &cli);
        lax.no_cn_verify = true;
        assert_eq!(
            session(lax, "10.1.2.3", opts(&ca.cert, &srv), None),
            (Ok(()), Ok(3))
        );

        // The server checks the client against its own --address.
        let (_, s) = session(
            opts(&ca.cert, &cli),
            "127.0.0.1",
            opts(&ca.cert, &srv),
            Some("10.1.2.3"),
        );
        let e = s.unwrap_err();
        assert!(e.contains("page server client: TLS handshake"), "{e}");

        // Another CA on either side.
        let other = Ca::new(d.path(), "other");
        let stranger = other.leaf("stranger", &["127.0.0.1"], 12);
        let (c, _) = session(
            opts(&ca.cert, &cli),
            "127.0.0.1",
            opts(&other.cert, &stranger),
            None,
        );
        let e = c.unwrap_err();
        assert!(e.contains("srv") && e.contains("UnknownIssuer"), "{e}");
        let (_, s) = session(
            opts(&ca.cert, &stranger),
            "127.0.0.1",
            opts(&ca.cert, &srv),
            None,
        );
        let e = s.unwrap_err();
        assert!(e.contains("client") && e.contains("UnknownIssuer"), "{e}");
    }

    #[test]
    fn revoked_certificate_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::new(d.path(), "ca");
        let srv = ca.leaf("server", &["127.0.0.1"], 20);
        let cli = ca.leaf("client", &["127.0.0.1"], 21);
        let crl = ca.crl(&[21]);
        let mut so = opts(&ca.cert, &srv);
        so.cacrl = Some(crl.clone());
        let (_, s) = session(opts(&ca.cert, &cli), "127.0.0.1", so.clone(), None);
        let e = s.unwrap_err();
        assert!(e.contains("Revoked"), "{e}");
        let ok = ca.leaf("client2", &["127.0.0.1"], 22);
        assert_eq!(
            session(opts(&ca.cert, &ok), "127.0.0.1", so, None),
            (Ok(()), Ok(3))
        );

        // Missing files are named.
        let mut bad = opts(&ca.cert, &cli);
        bad.key = Some(d.path().join("nokey.pem"));
        let e = bad.load().err().unwrap().to_string();
        assert!(e.contains("private key") && e.contains("nokey.pem"), "{e}");
        let mut bad = opts(&d.path().join("noca.pem"), &cli);
        bad.cacrl = None;
        let e = bad.load().err().unwrap().to_string();
        assert!(e.contains("noca.pem"), "{e}");
        let mut bad = opts(&ca.cert, &cli);
        bad.cacrl = Some(d.path().join("nocrl.pem"));
        let e = bad.load().err().unwrap().to_string();
        assert!(
            e.contains("revocation list") && e.contains("nocrl.pem"),
            "{e}"
        );
    }
}
