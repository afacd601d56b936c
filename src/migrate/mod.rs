//! Live migration: `stasis migrate` (source) and `stasis migrate-receive` (destination), built
//! on the page pipeline (pre-dump chains with dirty tracking, the page-server protocol, the
//! dump and restore engines); nothing here handles pages itself.
//!
//! ```text
//!  source (stasis migrate -t PID --to A:P)          destination (migrate-receive --listen A:P)
//!  connect ─ Hello (version, flags, key proof) ───► check version and key ─► Welcome / Refuse
//!  loop: pre-dump it-N (tree runs, tracker armed)
//!        Iteration ─ page-server session ────────► DIR/it-N/pagemap-*.img, pages-*.img
//!        File × (inventory, stats) ──────────────► DIR/it-N/
//!        IterationDone; convergence::record ─ stop? (budget met / not paying / limit)
//!  final dump (frozen; left stopped, not killed)
//!        Iteration ─ page-server session ────────► DIR/final (parent ../it-N)
//!        File × every image, Final ──────────────► restore DIR/final (--restore)
//!                                  ◄──────────────  Result: running | error
//!  running: SIGKILL the stopped source tree         exit 0 (non-zero with the reason)
//!  anything else: SIGCONT (the source runs on)      a lost source or Abort: DIR emptied
//! ```
//! Exactly one copy runs at every moment: the source is stopped (SIGSTOP, untraced) from the
//! final dump until the destination answers; it is killed only after "running", resumed on
//! any other outcome (refusal, cut connection, failed restore).
//!
//! Modules: [`control`] the framed stream, [`auth`] the key proof, [`convergence`] the stop
//! rule, [`source`] and [`destination`] the two drivers.

pub mod auth;
pub mod control;
pub mod convergence;
pub mod destination;
pub mod source;

/// A failed migration, on either side.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("connect to {peer}: {what}")]
    Connect { peer: String, what: String },
    #[error("the destination refused the migration: {0}")]
    Refused(String),
    #[error("control stream with {peer}: {source}")]
    Control {
        peer: String,
        source: control::ControlError,
    },
    #[error("unexpected control message from {peer}: {what}")]
    Protocol { peer: String, what: String },
    #[error("{step} of pid {pid}: {source}")]
    Dump {
        step: &'static str,
        pid: i32,
        source: Box<crate::dump::error::DumpError>,
    },
    #[error("pages: {0}")]
    Pages(String),
    #[error("restore on the destination: {0}")]
    RemoteRestore(String),
    #[error("restore of {dir}: {source}")]
    Restore {
        dir: std::path::PathBuf,
        source: Box<crate::restore::RestoreError>,
    },
    #[error("the source gave up: {0}")]
    Aborted(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

impl MigrateError {
    fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        MigrateError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, MigrateError>;
