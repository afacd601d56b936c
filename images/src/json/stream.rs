//! crit's document streamed entry by entry, so memory follows the valid entries and the text,
//! never a tree of the whole file (a file of empty entries or a JSON array of empty objects
//! costs what its text costs, not a map per entry).
//!
//! ```text
//!  decode: image bytes ─► for_each_entry ─► one entry Value ─► text appended ─► String
//!  encode: JSON text ─► serde visitor: "magic", then each element of "entries" ─► image bytes
//! ```

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use super::error::JsonError;
use super::image::{head_magic_for, split_magic, MagicEntry, MagicTable};
use super::text::{write_nested, write_string};
use super::Codec;

/// Decodes a whole image into crit's text (plain or `--pretty`), as `to_text(decode_image)`
/// would print it; `edit` sees each entry (with the kind's name) before it is written.
pub fn decode_to_text(
    codec: &Codec,
    table: &dyn MagicTable,
    bytes: &[u8],
    pretty: bool,
    edit: &mut dyn FnMut(&str, &mut Json),
) -> Result<String, JsonError> {
    let (kind, body) = split_magic(table, bytes)?;
    let indent = pretty.then_some(4);
    let mut out = String::new();
    let sep = |out: &mut String, level: usize| match indent {
        Some(n) => {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
        None => {}
    };
    out.push('{');
    sep(&mut out, 1);
    out.push_str("\"magic\": ");
    write_string(&mut out, &kind.name);
    out.push(',');
    if indent.is_none() {
        out.push(' ');
    }
    sep(&mut out, 1);
    out.push_str("\"entries\": [");
    let n = codec.for_each_entry(&kind, body, pretty, &mut |mut e| {
        if out.ends_with('[') {
            sep(&mut out, 2);
        } else {
            out.push(',');
            if indent.is_none() {
                out.push(' ');
            }
            sep(&mut out, 2);
        }
        edit(&kind.name, &mut e);
        write_nested(&mut out, &e, indent, 2);
        Ok(())
    })?;
    if n > 0 {
        sep(&mut out, 1);
    }
    out.push(']');
    sep(&mut out, 0);
    out.push('}');
    Ok(out)
}

/// The kind's crit name and its number of entries, without keeping any.
pub fn count_entries(
    codec: &Codec,
    table: &dyn MagicTable,
    bytes: &[u8],
) -> Result<(String, usize), JsonError> {
    let (kind, body) = split_magic(table, bytes)?;
    let n = codec.for_each_entry(&kind, body, false, &mut |_| Ok(()))?;
    Ok((kind.name, n))
}

/// Why JSON text did not encode: not JSON at all, or JSON that is not a valid image.
#[derive(Debug, thiserror::Error)]
pub enum EncodeTextError {
    /// The text is not JSON.
    #[error("{0}")]
    Syntax(serde_json::Error),
    /// The JSON does not describe a valid image.
    #[error(transparent)]
    Image(JsonError),
}

/// Encodes crit JSON text into image bytes, element by element of `"entries"` (which must
/// follow `"magic"`, as crit writes them; if it comes first, it is held until `"magic"`).
pub fn encode_text(
    codec: &Codec,
    table: &dyn MagicTable,
    text: &str,
) -> Result<Vec<u8>, EncodeTextError> {
    let doc = Doc {
        codec,
        table,
        failure: RefCell::new(None),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let res = (&doc)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|_| v));
    if let Some(e) = doc.failure.into_inner() {
        return Err(EncodeTextError::Image(e));
    }
    res.map_err(EncodeTextError::Syntax)
}

struct Doc<'c> {
    codec: &'c Codec,
    table: &'c dyn MagicTable,
    /// The image error that stopped the walk (serde only carries text).
    failure: RefCell<Option<JsonError>>,
}

impl Doc<'_> {
    fn fail<E: de::Error>(&self, e: JsonError) -> E {
        let msg = e.to_string();
        *self.failure.borrow_mut() = Some(e);
        E::custom(msg)
    }

    fn kind<E: de::Error>(&self, name: &str) -> Result<(MagicEntry, Vec<u8>), E> {
        let kind = self
            .table
            .by_name(name)
            .ok_or_else(|| self.fail(JsonError::UnknownMagicName(name.to_string())))?;
        if kind.message.is_none() {
            return Err(self.fail(JsonError::NoHandler(kind.name.clone())));
        }
        let mut out = Vec::new();
        if let Some(head) = head_magic_for(&kind.name) {
            out.extend_from_slice(&head.to_le_bytes());
        }
        out.extend_from_slice(&kind.magic.to_le_bytes());
        Ok((kind, out))
    }
}

impl<'de> DeserializeSeed<'de> for &Doc<'_> {
    type Value = Vec<u8>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &Doc<'_> {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an image object {\"magic\": ..., \"entries\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<u8>, A::Error> {
        let mut kind: Option<(MagicEntry, Vec<u8>)> = None;
        let mut early: Option<Vec<Json>> = None;
        let mut done = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "magic" => {
                    let name = map.next_value::<Json>()?;
                    let name = name.as_str().ok_or_else(|| {
                        self.fail(JsonError::Shape(
                            "the image JSON has no \"magic\" string".into(),
                        ))
                    })?;
                    kind = Some(self.kind(name)?);
                }
                "entries" => match &mut kind {
                    Some((k, out)) => {
                        map.next_value_seed(Entries {
                            doc: self,
                            kind: k,
                            out,
                        })?;
                        done = true;
                    }
                    None => early = Some(map.next_value()?),
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let Some((k, mut out)) = kind else {
            return Err(self.fail(JsonError::Shape(
                "the image JSON has no \"magic\" string".into(),
            )));
        };
        if let Some(list) = early {
            for (i, e) in list.iter().enumerate() {
                self.codec
                    .encode_entry(&k, i, e, &mut out)
                    .map_err(|e| self.fail(e))?;
            }
        } else if !done {
            return Err(self.fail(JsonError::Shape(
                "the image JSON has no \"entries\" array".into(),
            )));
        }
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Vec<u8>, A::Error> {
        Err(self.fail(JsonError::Shape("the image JSON is not an object".into())))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Vec<u8>, E> {
        Err(self.fail(JsonError::Shape("the image JSON is not an object".into())))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Vec<u8>, E> {
        Err(self.fail(JsonError::Shape("the image JSON is not an object".into())))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Vec<u8>, E> {
        Err(self.fail(JsonError::Shape("the image JSON is not an object".into())))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Vec<u8>, E> {
        Err(self.fail(JsonError::Shape("the image JSON is not an object".into())))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Vec<u8>, E> {
        Err(self.fail(JsonError::Shape("the image JSON is not an object".into())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Vec<u8>, E> {
        Err(self.fail(JsonError::Shape("the image JSON is not an object".into())))
    }
}

/// The `"entries"` array, encoded element by element into `out`.
struct Entries<'a, 'c> {
    doc: &'a Doc<'c>,
    kind: &'a MagicEntry,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Entries<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(e) = seq.next_element::<Json>()? {
            self.doc
                .codec
                .encode_entry(self.kind, i, &e, self.out)
                .map_err(|e| self.doc.fail(e))?;
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.doc.fail(JsonError::Shape(
            "the image JSON has no \"entries\" array".into(),
        )))
    }
}
