//! A whole image file to and from crit's document `{"magic": NAME, "entries": [...]}`.
//!
//! ```text
//!  [head magic u32] image magic u32 | entries ...
//!  head magic: IMG_COMMON 0x54564319, or IMG_SERVICE 0x55105940 (STATS, IRMAP_CACHE);
//!  inventory.img has no head magic (its first word is its own magic 0x58313116).
//! ```
//!
//! The magic numbers, crit names and entry message names come from a [`MagicTable`].

use serde_json::{Map, Value as Json};

use super::error::JsonError;
use super::Codec;
use crate::payload::PayloadKind;

/// Head magic of ordinary images.
pub const HEAD_COMMON: u32 = crate::magic::IMG_COMMON_MAGIC;
/// Head magic of service images (stats, irmap cache).
pub const HEAD_SERVICE: u32 = crate::magic::IMG_SERVICE_MAGIC;
/// Magic of inventory.img (written without a head magic).
pub const INVENTORY_MAGIC: u32 = 0x5831_3116;

/// One kind of image: its magic number, crit's name for it and its entry message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MagicEntry {
    /// crit's magic name (`"MM"`, `"PAGEMAP"`, ...).
    pub name: String,
    /// The image magic (second word of the file).
    pub magic: u32,
    /// Entry message name (`"mm_entry"` or `"criu.mm_entry"`); `None` for raw images. For
    /// PAGEMAP and GHOST_FILE the message of entries 1.. .
    pub message: Option<String>,
    /// Message of entry 0 when it differs (`pagemap_head`, `ghost_file_entry`).
    pub first_message: Option<String>,
    /// The extra payload rule of the kind ([`crate::payload`]).
    pub payload: PayloadKind,
}

/// Lookup of image kinds by magic number and by crit name.
pub trait MagicTable {
    /// The kind whose image magic is `magic`.
    fn by_magic(&self, magic: u32) -> Option<MagicEntry>;
    /// The kind crit calls `name`.
    fn by_name(&self, name: &str) -> Option<MagicEntry>;
}

fn word(bytes: &[u8], at: usize) -> Result<u32, JsonError> {
    match bytes.get(at..at + 4) {
        Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(JsonError::Truncated {
            entry: 0,
            what: "magic",
            need: 4,
            have: bytes.len().saturating_sub(at),
        }),
    }
}

/// Splits the magic words off an image: its kind and the entry bytes.
pub fn split_magic<'a>(
    table: &dyn MagicTable,
    bytes: &'a [u8],
) -> Result<(MagicEntry, &'a [u8]), JsonError> {
    let mut at = 0;
    let mut magic = word(bytes, at)?;
    at += 4;
    if magic == HEAD_COMMON || magic == HEAD_SERVICE {
        magic = word(bytes, at)?;
        at += 4;
    }
    let kind = table
        .by_magic(magic)
        .ok_or(JsonError::UnknownMagic { magic })?;
    Ok((kind, &bytes[at..]))
}

/// The head magic crit writes before the image magic of `name` (none for INVENTORY).
/// From `crate::magic`'s table; a name it does not know gets the common head.
pub fn head_magic_for(name: &str) -> Option<u32> {
    match crate::magic::ImageKind::from_name(name) {
        Some(kind) => kind.info().head.value(),
        None => Some(HEAD_COMMON),
    }
}

impl Codec {
    /// Decodes a whole image file into crit's document.
    pub fn decode_image_with(
        &self,
        table: &dyn MagicTable,
        bytes: &[u8],
        pretty: bool,
    ) -> Result<Json, JsonError> {
        let (kind, body) = split_magic(table, bytes)?;
        let entries = self.decode_entries(&kind, body, pretty)?;
        let mut doc = Map::new();
        doc.insert("magic".into(), Json::String(kind.name));
        doc.insert("entries".into(), Json::Array(entries));
        Ok(Json::Object(doc))
    }

    /// Encodes crit's document back into image bytes.
    pub fn encode_image_with(
        &self,
        table: &dyn MagicTable,
        doc: &Json,
    ) -> Result<Vec<u8>, JsonError> {
        let obj = doc
            .as_object()
            .ok_or_else(|| JsonError::Shape("the image JSON is not an object".into()))?;
        let name = obj
            .get("magic")
            .and_then(Json::as_str)
            .ok_or_else(|| JsonError::Shape("the image JSON has no \"magic\" string".into()))?;
        let entries = obj
            .get("entries")
            .and_then(Json::as_array)
            .ok_or_else(|| JsonError::Shape("the image JSON has no \"entries\" array".into()))?;
        let kind = table
            .by_name(name)
            .ok_or_else(|| JsonError::UnknownMagicName(name.to_string()))?;
        if kind.message.is_none() {
            return Err(JsonError::NoHandler(kind.name.clone()));
        }
        let mut out = Vec::new();
        if let Some(head) = head_magic_for(&kind.name) {
            out.extend_from_slice(&head.to_le_bytes());
        }
        out.extend_from_slice(&kind.magic.to_le_bytes());
        out.extend_from_slice(&self.encode_entries(&kind, entries)?);
        Ok(out)
    }
}
