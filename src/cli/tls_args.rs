//! CRIU's page-server TLS options (`--tls`, `--tls-cacert`, `--tls-cacrl`, `--tls-cert`,
//! `--tls-key`, `--tls-no-cn-verify`), accepted by every verb as CRIU does and used by the
//! page-server connections of `dump`, `pre-dump`, `page-server` and `lazy-pages` (see
//! [`crate::pages::tls`]).

use std::path::PathBuf;

use clap::Args;

use crate::pages::tls::TlsOptions;

/// The TLS options (flattened into [`super::criu_args::CriuArgs`]).
#[derive(Debug, Clone, Args, Default)]
pub struct TlsArgs {
    /// Page-server connections use TLS with X.509 certificates on both sides
    #[arg(long = "tls")]
    pub tls: bool,
    /// Trusted CA certificates (PEM; default /etc/pki/CA/cacert.pem and the system's CAs)
    #[arg(long = "tls-cacert", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Certificate revocation list (PEM; default /etc/pki/CA/cacrl.pem when readable)
    #[arg(long = "tls-cacrl", value_name = "FILE")]
    pub cacrl: Option<PathBuf>,
    /// This side's certificate (PEM; default /etc/pki/criu/cert.pem)
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This side's private key (PEM; default /etc/pki/criu/private/key.pem)
    #[arg(long = "tls-key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Do not check the peer certificate's name against --address
    #[arg(long = "tls-no-cn-verify")]
    pub no_cn_verify: bool,
}

impl TlsArgs {
    /// The TLS options of the page-server connection; None without `--tls` (the other
    /// options then change nothing, as in CRIU).
    pub fn options(&self) -> Option<TlsOptions> {
        self.tls.then(|| TlsOptions {
            cacert: self.cacert.clone(),
            cacrl: self.cacrl.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            no_cn_verify: self.no_cn_verify,
        })
    }
}
