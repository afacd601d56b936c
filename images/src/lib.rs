//! CRIU-compatible checkpoint image format.
//!
//! This crate knows nothing of the engine: it reads and writes image files, exposes every
//! message as a typed prost struct ([`pb`]), and converts images to and from crit's JSON.
//!
//! ```text
//!  image file (all integers little-endian)
//!  +-----------------+-----------------+--------+-------------+-------+--------+-----
//!  | head magic u32  | image magic u32 | len u32| entry bytes | extra | len u32| ...
//!  +-----------------+-----------------+--------+-------------+-------+--------+-----
//!  head magic: 0x54564319 (common) or 0x55105940 (service: stats-*, ...);
//!  inventory.img has only its own magic; pages-N.img is raw page data.
//! ```

/// Generated message types (one Rust struct per message of `proto/`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/criu.rs"));
}

/// The compiled message descriptors, for reflection (crit JSON).
pub static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub mod error;
pub mod framing;
pub mod fuzzing;
pub mod json;
pub mod limits;
pub mod magic;
pub mod pagemap;
pub mod payload;
pub mod schema;
pub mod wire;
