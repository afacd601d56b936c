//! crit-compatible JSON: image files to and from the JSON that CRIU's `crit decode` /
//! `crit encode` use, by reflection over the compiled message descriptors
//! ([`crate::DESCRIPTOR_SET`]) and our field options (`proto/opts.proto`).
//!
//! ```text
//!  image bytes ──decode_image──► {"magic": "MM", "entries": [ {...}, ... ]} ──to_text──► text
//!       ▲                                                                                 │
//!       └──────────encode_image◄──── serde_json::Value ◄────────────parse_text────────────┘
//! ```
//!
//! * `message`: message-level rules (presence, field order, bytes, enums, `--pretty` forms) follow
//!   crit's `pb2dict`/`dict2pb`;
//! * `entries`: handles the per-image layouts (extra payloads, pagemap, ghost files);
//! * `text`: writes the text exactly like Python's `json.dump` (plain or `indent=4`).
//!
//! Encoding accepts both plain and `--pretty` JSON: integers may be numbers or strings
//! (`"0x.."`, flag names, `"major:minor"`, dictionary names, address text).

pub mod b64;
mod criu_magic;
mod entries;
mod error;
pub mod explore;
mod image;
mod ipaddr;
mod message;
mod number;
mod opts;
pub mod qp;
mod stream;
mod tables;
mod text;

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

pub use criu_magic::CriuMagic;
pub use error::JsonError;
pub use image::{
    head_magic_for, split_magic, MagicEntry, MagicTable, HEAD_COMMON, HEAD_SERVICE, INVENTORY_MAGIC,
};
pub use opts::FieldOpts;
pub use stream::EncodeTextError;
pub use text::to_python_json;

/// Converter between images and crit JSON for one descriptor pool.
#[derive(Debug)]
pub struct Codec {
    pool: DescriptorPool,
    opts: opts::OptsTable,
}

impl Codec {
    /// A codec over `pool` (which must contain `criu.*` messages and, for `--pretty`
    /// rendering, the `criu.hex`... extensions of `opts.proto`).
    pub fn new(pool: DescriptorPool) -> Self {
        let opts = opts::OptsTable::build(&pool);
        Codec { pool, opts }
    }

    /// The codec over this crate's own message definitions (built once).
    pub fn criu() -> Result<&'static Codec, JsonError> {
        static CODEC: OnceLock<Result<Codec, String>> = OnceLock::new();
        CODEC
            .get_or_init(|| {
                DescriptorPool::decode(crate::DESCRIPTOR_SET)
                    .map(Codec::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| JsonError::Descriptors(e.clone()))
    }

    /// The descriptor pool.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// The crit options of a field, by its full name (`criu.vma_entry.prot`).
    pub fn field_opts(&self, full_field_name: &str) -> Option<FieldOpts> {
        let (msg, field) = full_field_name.rsplit_once('.')?;
        let field = self
            .pool
            .get_message_by_name(msg)?
            .get_field_by_name(field)?;
        Some(self.opts.get(&field).clone())
    }
}

/// Decodes a whole image file (CRIU's magic table) into crit's document.
pub fn decode_image(
    codec: &Codec,
    bytes: &[u8],
    pretty: bool,
) -> Result<serde_json::Value, JsonError> {
    codec.decode_image_with(&CriuMagic, bytes, pretty)
}

/// Encodes crit's document (plain or pretty) back into image bytes.
pub fn encode_image(codec: &Codec, doc: &serde_json::Value) -> Result<Vec<u8>, JsonError> {
    codec.encode_image_with(&CriuMagic, doc)
}

/// crit's `info`: `{"magic": NAME, "count": N}`, N being the number of entries (for
/// PAGEMAP, not counting the head entry, as crit does). Entries are counted, not kept.
pub fn info(codec: &Codec, bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let (name, mut count) = stream::count_entries(codec, &CriuMagic, bytes)?;
    if name == "PAGEMAP" {
        count = count.saturating_sub(1);
    }
    let mut out = serde_json::Map::new();
    out.insert("magic".into(), serde_json::Value::String(name));
    out.insert("count".into(), count.into());
    Ok(serde_json::Value::Object(out))
}

/// `to_text(decode_image(..))` streamed: the text of the image's document, each entry
/// shown to `edit` (with the kind's name) before it is written; memory is the text.
pub fn decode_to_text(
    codec: &Codec,
    bytes: &[u8],
    pretty: bool,
    edit: &mut dyn FnMut(&str, &mut serde_json::Value),
) -> Result<String, JsonError> {
    stream::decode_to_text(codec, &CriuMagic, bytes, pretty, edit)
}

/// `encode_image(parse_text(text))` streamed: each entry is encoded as it is parsed.
pub fn encode_text(codec: &Codec, text: &str) -> Result<Vec<u8>, EncodeTextError> {
    stream::encode_text(codec, &CriuMagic, text)
}

/// Serialises a crit JSON document the way crit prints it: `json.dump` with `indent=4` for
/// `pretty`, single-line otherwise (no trailing newline).
pub fn to_text(doc: &serde_json::Value, pretty: bool) -> String {
    to_python_json(doc, if pretty { Some(4) } else { None })
}

/// Parses JSON text (plain or pretty), keeping key order.
pub fn parse_text(text: &str) -> Result<serde_json::Value, JsonError> {
    Ok(serde_json::from_str(text)?)
}
