//! Errors of the crit JSON codec.
//!
//! Every variant names where the problem is: the entry index inside the image and, for
//! message-level problems, the dotted field path (`mm_entry.vmas[3].prot`).

use thiserror::Error;

/// A failure converting between an image and crit's JSON.
#[derive(Debug, Error)]
pub enum JsonError {
    /// The compiled descriptor set could not be loaded.
    #[error("loading message descriptors: {0}")]
    Descriptors(String),
    /// A message name (from the magic table) is not in the descriptor set.
    #[error("no message definition named {0}")]
    NoSuchMessage(String),
    /// The image starts with a magic number that is not in the magic table.
    #[error("unknown magic {magic:#x}, maybe this is an image with raw data (i.e. pages.img)")]
    UnknownMagic {
        /// The magic read from the file.
        magic: u32,
    },
    /// A magic name in the JSON is not in the magic table.
    #[error("unknown magic name {0:?}")]
    UnknownMagicName(String),
    /// The image kind is known but crit has no entry format for it (e.g. raw pages).
    #[error("image {0} has no entries crit can decode")]
    NoHandler(String),
    /// The file ends inside an entry, its size word, its magic or its extra payload.
    #[error("entry {entry}: truncated {what}: need {need} bytes, {have} left")]
    Truncated {
        /// Index of the entry being read.
        entry: usize,
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes left in the file.
        have: usize,
    },
    /// A protobuf entry does not decode as its message.
    #[error("entry {entry}: decoding {message}: {source}")]
    Protobuf {
        /// Index of the entry.
        entry: usize,
        /// Message name.
        message: String,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// A field value cannot be converted (to or from JSON).
    #[error("entry {entry}: field {path}: {reason}")]
    Field {
        /// Index of the entry.
        entry: usize,
        /// Dotted path of the field.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The JSON document does not have crit's shape.
    #[error("{0}")]
    Shape(String),
    /// The JSON text does not parse.
    #[error("parsing JSON: {0}")]
    Syntax(#[from] serde_json::Error),
}

/// A field-level failure before the entry index is known; [`FieldError::at`] adds it.
#[derive(Debug)]
pub(crate) struct FieldError {
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(path: &str, reason: impl Into<String>) -> Self {
        FieldError {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn at(self, entry: usize) -> JsonError {
        JsonError::Field {
            entry,
            path: self.path,
            reason: self.reason,
        }
    }
}
