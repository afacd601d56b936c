//! Errors of the page pipeline: every variant names the file or peer and, for stream
//! damage, the byte offset.

use std::path::PathBuf;

/// A failed step of the page pipeline (pack streams, page server, conversion).
#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    /// An I/O error on a file.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A packed page stream is damaged, tampered with, or read with the wrong key.
    #[error("{path}: at offset {offset}: {what}")]
    Pack {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// A packed page stream is encrypted and no key was given.
    #[error("{path}: the pages are encrypted; give the key with --encrypt-key FILE")]
    MissingKey { path: PathBuf },
    /// The key file cannot be used.
    #[error("key file {path}: {what}")]
    Key { path: PathBuf, what: String },
    /// The page-server connection failed or the peer broke the protocol.
    #[error("page server {peer}: {what}")]
    Wire { peer: String, what: String },
    /// A pagemap or an image could not be written or read.
    #[error("{path}: {what}")]
    Image { path: PathBuf, what: String },
    /// A bad option value.
    #[error("{0}")]
    Usage(String),
}

impl PagesError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PagesError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pack(path: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> Self {
        PagesError::Pack {
            path: path.into(),
            offset,
            what: what.into(),
        }
    }

    pub(crate) fn image(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        PagesError::Image {
            path: path.into(),
            what: e.to_string(),
        }
    }

    pub(crate) fn io_errno(what: &str, e: nix::errno::Errno) -> Self {
        PagesError::Usage(format!("{what}: {e}"))
    }

    /// The errno behind the failure, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PagesError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result of the page pipeline.
pub type Result<T> = std::result::Result<T, PagesError>;
