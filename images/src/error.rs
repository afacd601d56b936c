//! Errors of the image layer.
//!
//! Every variant names the file (when it is known: in-memory parses of anonymous bytes show
//! `<image>`), and, where it applies, the index of the entry and the byte offset at which the
//! problem was found, so a hostile or damaged image is reported precisely instead of panicking.

use std::fmt;
use std::path::{Path, PathBuf};

/// The file an error is about; displays as `<image>` when the bytes came from nowhere known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileName(pub Option<PathBuf>);

impl FileName {
    /// A known file.
    pub fn path(p: impl AsRef<Path>) -> Self {
        FileName(Some(p.as_ref().to_path_buf()))
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("<image>"),
        }
    }
}

/// What an image read or write can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An I/O call failed (open, read, write, readlink ...).
    #[error("{file}: {op} failed: {source}")]
    Io {
        file: FileName,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The file ends before a field it must contain.
    #[error("{file}: truncated: {what} at offset {offset} needs {needed} bytes, only {available} left{}", entry_suffix(*.index))]
    Truncated {
        file: FileName,
        /// Entry index, when the truncated part belongs to an entry.
        index: Option<usize>,
        what: &'static str,
        offset: u64,
        needed: u64,
        available: u64,
    },

    /// The first word is neither the common nor the service head magic (nor inventory's own).
    #[error("{file}: bad head magic {found:#010x} at offset 0")]
    BadHeadMagic { file: FileName, found: u32 },

    /// The image magic is not one CRIU 4.2 knows.
    #[error("{file}: unknown image magic {found:#010x} at offset {offset}")]
    UnknownMagic {
        file: FileName,
        found: u32,
        offset: u64,
    },

    /// The image is of another kind than the caller asked for, or has the wrong head magic.
    #[error("{file}: image is {found}, expected {expected}")]
    WrongKind {
        file: FileName,
        found: String,
        expected: String,
    },

    /// The kind has no framed entries (pages-N.img and other raw images).
    #[error("{file}: {kind} is a raw image without entries")]
    RawImage { file: FileName, kind: &'static str },

    /// An entry length is larger than the cap or than what is left of the file.
    #[error(
        "{file}: entry {index} at offset {offset}: length {len} exceeds the cap of {cap} bytes"
    )]
    EntryTooLarge {
        file: FileName,
        index: usize,
        offset: u64,
        len: u64,
        cap: u64,
    },

    /// An entry is not well-formed protobuf wire data.
    #[error("{file}: entry {index} ({message}): malformed at byte {at} of the entry: {detail}")]
    Malformed {
        file: FileName,
        index: usize,
        message: &'static str,
        at: usize,
        detail: &'static str,
    },

    /// An entry does not decode as its message type.
    #[error("{file}: entry {index} at offset {offset}: {message} does not decode: {detail}")]
    Decode {
        file: FileName,
        index: usize,
        offset: u64,
        message: String,
        detail: String,
    },

    /// A field that sizes an extra payload is missing or out of range.
    #[error("{file}: entry {index} ({message}): payload field {field}: {detail}")]
    BadPayloadField {
        file: FileName,
        index: usize,
        message: &'static str,
        field: &'static str,
        detail: String,
    },

    /// An extra payload given to a writer does not have the size the entry announces.
    #[error(
        "{file}: entry {index}: extra payload is {actual} bytes, the entry announces {expected}"
    )]
    PayloadMismatch {
        file: FileName,
        index: usize,
        expected: String,
        actual: usize,
    },

    /// Semantic problem in pagemap/page data (bad count, missing page, parent loop...).
    #[error("{file}: {detail}")]
    Pagemap { file: FileName, detail: String },

    /// The path is not a regular file (a device, FIFO, directory ...): images are files.
    #[error("{file}: is {what}, not a regular image file")]
    NotRegular { file: FileName, what: &'static str },

    /// The file is larger than the cap for its kind ([`crate::limits`]).
    #[error("{file}: {size} bytes or more, over the cap of {cap} bytes")]
    TooLarge { file: FileName, size: u64, cap: u64 },
}

fn entry_suffix(index: Option<usize>) -> String {
    match index {
        Some(i) => format!(" (entry {i})"),
        None => String::new(),
    }
}

impl ImageError {
    /// Replaces an unknown file name (errors from in-memory parsing) by `path`.
    pub fn with_file(mut self, path: &Path) -> Self {
        let slot = match &mut self {
            ImageError::Io { file, .. }
            | ImageError::Truncated { file, .. }
            | ImageError::BadHeadMagic { file, .. }
            | ImageError::UnknownMagic { file, .. }
            | ImageError::WrongKind { file, .. }
            | ImageError::RawImage { file, .. }
            | ImageError::EntryTooLarge { file, .. }
            | ImageError::Malformed { file, .. }
            | ImageError::Decode { file, .. }
            | ImageError::BadPayloadField { file, .. }
            | ImageError::PayloadMismatch { file, .. }
            | ImageError::Pagemap { file, .. }
            | ImageError::NotRegular { file, .. }
            | ImageError::TooLarge { file, .. } => file,
        };
        if slot.0.is_none() {
            *slot = FileName::path(path);
        }
        self
    }

    /// The entry index the error is about, if any.
    pub fn entry_index(&self) -> Option<usize> {
        match self {
            ImageError::Truncated { index, .. } => *index,
            ImageError::EntryTooLarge { index, .. }
            | ImageError::Malformed { index, .. }
            | ImageError::Decode { index, .. }
            | ImageError::BadPayloadField { index, .. }
            | ImageError::PayloadMismatch { index, .. } => Some(*index),
            _ => None,
        }
    }

    pub(crate) fn io(file: &FileName, op: &'static str, source: std::io::Error) -> Self {
        ImageError::Io {
            file: file.clone(),
            op,
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
