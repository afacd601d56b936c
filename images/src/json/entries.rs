//! The entries of one image (everything after the magic words) to and from crit's
//! `"entries"` array, with crit's per-image rules for extra payloads.
//!
//! ```text
//!  plain image      len u32 | message            len u32 | message            ...
//!  with extra       len u32 | message | payload  len u32 | message | payload  ...
//!                   payload size comes from a field of the message:
//!                     PIPES_DATA, FIFO_DATA  bytes                 -> "extra": base64
//!                     SK_QUEUES              length                -> "extra": base64
//!                     BPFMAP_DATA            keys_bytes+values_bytes -> "extra": base64
//!                     TCP_STREAM             inq_len, outq_len     -> "extra": {"inq", "outq"}
//!                     IPCNS_SHM              size (padded to 4)    -> "extra": base64
//!                     IPCNS_SEM              nsems u16 (padded 8)  -> "extra": [n, ...]
//!                     IPCNS_MSG              qnum x (len|ipc_msg|data padded 8)
//!                                                                  -> "extra": [msg, base64, ...]
//!  PAGEMAP          pagemap_head, then pagemap_entry ...
//!  GHOST_FILE       ghost_file_entry; chunks=true: ghost_chunk_entry + `len` bytes ...
//!                   otherwise the rest of the file is the first entry's "extra"
//! ```

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use serde_json::{Map, Value as Json};

use super::error::JsonError;
use super::message::{from_json, to_json, Path};
use super::{b64, Codec};

/// How the entries of an image are laid out (crit's handler for the image).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Plain,
    Pagemap,
    Ghost,
    /// A base64 payload whose size is the sum of these integer fields.
    Blob(&'static [&'static str]),
    TcpStream,
    IpcShm,
    IpcSem,
    IpcMsg,
}

fn layout(magic_name: &str) -> Layout {
    match magic_name {
        "PAGEMAP" => Layout::Pagemap,
        "GHOST_FILE" => Layout::Ghost,
        "PIPES_DATA" | "FIFO_DATA" => Layout::Blob(&["bytes"]),
        "SK_QUEUES" => Layout::Blob(&["length"]),
        "BPFMAP_DATA" => Layout::Blob(&["keys_bytes", "values_bytes"]),
        "TCP_STREAM" => Layout::TcpStream,
        "IPCNS_SHM" => Layout::IpcShm,
        "IPCNS_SEM" => Layout::IpcSem,
        "IPCNS_MSG" => Layout::IpcMsg,
        _ => Layout::Plain,
    }
}

/// Cap on one protobuf entry (CRIU's own entries are far smaller).
const MAX_ENTRY: usize = 64 << 20;

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.data.len() - self.pos
    }

    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn take(&mut self, n: usize, entry: usize, what: &'static str) -> Result<&'a [u8], JsonError> {
        if n > self.left() {
            return Err(JsonError::Truncated {
                entry,
                what,
                need: n,
                have: self.left(),
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u32(&mut self, entry: usize, what: &'static str) -> Result<u32, JsonError> {
        let b = self.take(4, entry, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// An unsigned integer field of a decoded message (0 when unset), for payload sizes.
fn size_field(msg: &DynamicMessage, name: &str, entry: usize) -> Result<usize, JsonError> {
    let value = msg
        .get_field_by_name(name)
        .ok_or_else(|| JsonError::Field {
            entry,
            path: format!("{}.{name}", msg.descriptor().name()),
            reason: "payload size field missing from the message definition".into(),
        })?;
    let v: Option<u64> = match &*value {
        Value::U32(v) => Some(*v as u64),
        Value::U64(v) => Some(*v),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    };
    v.and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| JsonError::Field {
            entry,
            path: format!("{}.{name}", msg.descriptor().name()),
            reason: "not a valid payload size".into(),
        })
}

impl Codec {
    fn message(&self, name: &str) -> Result<MessageDescriptor, JsonError> {
        let full = if name.contains('.') {
            name.to_string()
        } else {
            format!("criu.{name}")
        };
        self.pool
            .get_message_by_name(&full)
            .ok_or_else(|| JsonError::NoSuchMessage(name.to_string()))
    }

    fn read_message(
        &self,
        r: &mut Reader<'_>,
        desc: &MessageDescriptor,
        entry: usize,
    ) -> Result<DynamicMessage, JsonError> {
        let len = r.u32(entry, "entry size")? as usize;
        if len > MAX_ENTRY {
            return Err(JsonError::Field {
                entry,
                path: desc.name().to_string(),
                reason: format!("entry size {len} is over the {MAX_ENTRY} byte limit"),
            });
        }
        let bytes = r.take(len, entry, "entry")?;
        DynamicMessage::decode(desc.clone(), bytes).map_err(|source| JsonError::Protobuf {
            entry,
            message: desc.name().to_string(),
            source,
        })
    }

    fn msg_json(
        &self,
        msg: &DynamicMessage,
        pretty: bool,
        entry: usize,
    ) -> Result<Map<String, Json>, JsonError> {
        let desc = msg.descriptor();
        let root = Path::Root(desc.name());
        match to_json(&self.opts, msg, pretty, false, &root) {
            Ok(Json::Object(map)) => Ok(map),
            Ok(_) => Err(JsonError::Shape(
                "message did not convert to an object".into(),
            )),
            Err(e) => Err(e.at(entry)),
        }
    }

    /// Decodes the entries of an image whose crit magic name is `magic_name` and whose
    /// entry message is `message` (e.g. `"mm_entry"`); `body` is the file after the magic.
    pub fn decode_entries(
        &self,
        magic_name: &str,
        message: &str,
        body: &[u8],
        pretty: bool,
    ) -> Result<Vec<Json>, JsonError> {
        let mut r = Reader { data: body, pos: 0 };
        let mut out = Vec::new();
        match layout(magic_name) {
            Layout::Pagemap => {
                let head = self.message("pagemap_head")?;
                let ent = self.message("pagemap_entry")?;
                while !r.at_end() {
                    let desc = if out.is_empty() { &head } else { &ent };
                    let msg = self.read_message(&mut r, desc, out.len())?;
                    out.push(Json::Object(self.msg_json(&msg, pretty, out.len())?));
                }
            }
            Layout::Ghost => {
                let file = self.message("ghost_file_entry")?;
                let msg = self.read_message(&mut r, &file, 0)?;
                let mut first = self.msg_json(&msg, pretty, 0)?;
                let chunks = msg
                    .get_field_by_name("chunks")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                if chunks {
                    out.push(Json::Object(first));
                    let chunk = self.message("ghost_chunk_entry")?;
                    while !r.at_end() {
                        let entry = out.len();
                        let msg = self.read_message(&mut r, &chunk, entry)?;
                        let mut obj = self.msg_json(&msg, pretty, entry)?;
                        let len = size_field(&msg, "len", entry)?;
                        let data = r.take(len, entry, "ghost chunk data")?;
                        obj.insert("extra".into(), Json::String(b64::encodebytes(data)));
                        out.push(Json::Object(obj));
                    }
                } else {
                    let data = r.rest();
                    first.insert("extra".into(), Json::String(b64::encodebytes(data)));
                    out.push(Json::Object(first));
                }
            }
            lay => {
                let desc = self.message(message)?;
                while !r.at_end() {
                    let entry = out.len();
                    let msg = self.read_message(&mut r, &desc, entry)?;
                    let mut obj = self.msg_json(&msg, pretty, entry)?;
                    if let Some(extra) = self.read_extra(lay, &msg, &mut r, entry)? {
                        obj.insert("extra".into(), extra);
                    }
                    out.push(Json::Object(obj));
                }
            }
        }
        Ok(out)
    }

    fn read_extra(
        &self,
        lay: Layout,
        msg: &DynamicMessage,
        r: &mut Reader<'_>,
        entry: usize,
    ) -> Result<Option<Json>, JsonError> {
        Ok(Some(match lay {
            Layout::Plain | Layout::Pagemap | Layout::Ghost => return Ok(None),
            Layout::Blob(fields) => {
                let mut len = 0usize;
                for f in fields {
                    len = len.saturating_add(size_field(msg, f, entry)?);
                }
                Json::String(b64::encodebytes(r.take(len, entry, "extra payload")?))
            }
            Layout::TcpStream => {
                let inq = size_field(msg, "inq_len", entry)?;
                let outq = size_field(msg, "outq_len", entry)?;
                let mut m = Map::new();
                let inq = r.take(inq, entry, "tcp input queue")?;
                m.insert("inq".into(), Json::String(b64::encodebytes(inq)));
                let outq = r.take(outq, entry, "tcp output queue")?;
                m.insert("outq".into(), Json::String(b64::encodebytes(outq)));
                Json::Object(m)
            }
            Layout::IpcShm => {
                let size = size_field(msg, "size", entry)?;
                let data = r.take(size, entry, "shm contents")?;
                r.take(round_up(size, 4) - size, entry, "shm padding")?;
                Json::String(b64::encodebytes(data))
            }
            Layout::IpcSem => {
                let n = size_field(msg, "nsems", entry)?;
                let size = n.saturating_mul(2);
                let data = r.take(size, entry, "semaphore values")?;
                r.take(round_up(size, 8) - size, entry, "semaphore padding")?;
                Json::Array(
                    data.chunks(2)
                        .map(|c| Json::from(u16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                )
            }
            Layout::IpcMsg => {
                let qnum = size_field(msg, "qnum", entry)?;
                let desc = self.message("ipc_msg")?;
                let mut list = Vec::new();
                for _ in 0..qnum {
                    if r.at_end() {
                        break;
                    }
                    let m = self.read_message(r, &desc, entry)?;
                    let msize = size_field(&m, "msize", entry)?;
                    let data = r.take(msize, entry, "message queue data")?;
                    r.take(round_up(msize, 8) - msize, entry, "message queue padding")?;
                    list.push(Json::Object(self.msg_json(&m, false, entry)?));
                    list.push(Json::String(b64::encodebytes(data)));
                }
                Json::Array(list)
            }
        }))
    }

    fn build_message(
        &self,
        desc: &MessageDescriptor,
        obj: &Map<String, Json>,
        entry: usize,
    ) -> Result<DynamicMessage, JsonError> {
        let root = Path::Root(desc.name());
        from_json(&self.opts, desc, &Json::Object(obj.clone()), &root).map_err(|e| e.at(entry))
    }

    fn write_message(out: &mut Vec<u8>, msg: &DynamicMessage) {
        let bytes = msg.encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }

    /// Encodes crit's `"entries"` array of an image back into the bytes after the magic.
    pub fn encode_entries(
        &self,
        magic_name: &str,
        message: &str,
        entries: &[Json],
    ) -> Result<Vec<u8>, JsonError> {
        let lay = layout(magic_name);
        let mut out = Vec::new();
        let objects: Vec<&Map<String, Json>> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.as_object()
                    .ok_or_else(|| JsonError::Shape(format!("entry {i}: not a JSON object")))
            })
            .collect::<Result<_, _>>()?;
        if lay == Layout::Ghost {
            return self.encode_ghost(&objects);
        }
        for (i, obj) in objects.into_iter().enumerate() {
            let mut fields = obj.clone();
            let extra = fields.shift_remove("extra");
            let desc = match lay {
                Layout::Pagemap if i == 0 => self.message("pagemap_head")?,
                Layout::Pagemap => self.message("pagemap_entry")?,
                _ => self.message(message)?,
            };
            let msg = self.build_message(&desc, &fields, i)?;
            Self::write_message(&mut out, &msg);
            if let Some(extra) = extra {
                self.write_extra(lay, &msg, &extra, &mut out, i)?;
            }
        }
        Ok(out)
    }

    fn encode_ghost(&self, objects: &[&Map<String, Json>]) -> Result<Vec<u8>, JsonError> {
        let mut out = Vec::new();
        let Some(first) = objects.first() else {
            return Ok(out);
        };
        let data = |obj: &Map<String, Json>, entry: usize| -> Result<Vec<u8>, JsonError> {
            let field = |reason: String| JsonError::Field {
                entry,
                path: "extra".into(),
                reason,
            };
            let text = obj
                .get("extra")
                .ok_or_else(|| field("ghost file data is missing".into()))?
                .as_str()
                .ok_or_else(|| field("expected a base64 string".into()))?;
            b64::decodebytes(text).map_err(field)
        };
        let mut fields = (*first).clone();
        fields.shift_remove("extra");
        let msg = self.build_message(&self.message("ghost_file_entry")?, &fields, 0)?;
        Self::write_message(&mut out, &msg);
        let chunks = msg
            .get_field_by_name("chunks")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if !chunks {
            out.extend_from_slice(&data(first, 0)?);
            return Ok(out);
        }
        let chunk = self.message("ghost_chunk_entry")?;
        for (i, obj) in objects.iter().enumerate().skip(1) {
            let mut fields = (*obj).clone();
            fields.shift_remove("extra");
            let msg = self.build_message(&chunk, &fields, i)?;
            Self::write_message(&mut out, &msg);
            out.extend_from_slice(&data(obj, i)?);
        }
        Ok(out)
    }

    fn write_extra(
        &self,
        lay: Layout,
        msg: &DynamicMessage,
        extra: &Json,
        out: &mut Vec<u8>,
        entry: usize,
    ) -> Result<(), JsonError> {
        let shape = |what: &str| JsonError::Field {
            entry,
            path: "extra".into(),
            reason: format!("expected {what}"),
        };
        let blob = |v: &Json, path: &str| -> Result<Vec<u8>, JsonError> {
            let text = v.as_str().ok_or_else(|| JsonError::Field {
                entry,
                path: path.into(),
                reason: "expected a base64 string".into(),
            })?;
            b64::decodebytes(text).map_err(|reason| JsonError::Field {
                entry,
                path: path.into(),
                reason,
            })
        };
        match lay {
            Layout::Plain | Layout::Pagemap | Layout::Ghost => {}
            Layout::Blob(fields) => {
                let data = blob(extra, "extra")?;
                let mut want = 0usize;
                for f in fields {
                    want = want.saturating_add(size_field(msg, f, entry)?);
                }
                if data.len() != want {
                    return Err(shape(&format!(
                        "{want} bytes of payload ({}), got {}",
                        fields.join(" + "),
                        data.len()
                    )));
                }
                out.extend_from_slice(&data);
            }
            Layout::TcpStream => {
                let obj = extra
                    .as_object()
                    .ok_or_else(|| shape("an object with inq and outq"))?;
                let inq = obj.get("inq").ok_or_else(|| shape("an object with inq"))?;
                let outq = obj
                    .get("outq")
                    .ok_or_else(|| shape("an object with outq"))?;
                for (v, path, len_field) in [
                    (inq, "extra.inq", "inq_len"),
                    (outq, "extra.outq", "outq_len"),
                ] {
                    let data = blob(v, path)?;
                    let want = size_field(msg, len_field, entry)?;
                    if data.len() != want {
                        return Err(JsonError::Field {
                            entry,
                            path: path.into(),
                            reason: format!(
                                "expected {want} bytes ({len_field}), got {}",
                                data.len()
                            ),
                        });
                    }
                    out.extend_from_slice(&data);
                }
            }
            Layout::IpcShm => {
                let size = size_field(msg, "size", entry)?;
                let mut data = blob(extra, "extra")?;
                data.resize(size, 0);
                data.resize(round_up(size, 4), 0);
                out.extend_from_slice(&data);
            }
            Layout::IpcSem => {
                let n = size_field(msg, "nsems", entry)?;
                let list = extra
                    .as_array()
                    .ok_or_else(|| shape("an array of semaphore values"))?;
                if list.len() != n {
                    return Err(shape(&format!("{n} semaphore values, got {}", list.len())));
                }
                let start = out.len();
                for v in list {
                    let v = v
                        .as_u64()
                        .and_then(|v| u16::try_from(v).ok())
                        .ok_or_else(|| shape("semaphore values in 0..=65535"))?;
                    out.extend_from_slice(&v.to_le_bytes());
                }
                let size = out.len() - start;
                out.resize(start + round_up(size, 8), 0);
            }
            Layout::IpcMsg => {
                let list = extra
                    .as_array()
                    .ok_or_else(|| shape("an array of messages"))?;
                let desc = self.message("ipc_msg")?;
                for pair in list.chunks(2) {
                    let obj = pair[0]
                        .as_object()
                        .ok_or_else(|| shape("a message object"))?;
                    let m = self.build_message(&desc, obj, entry)?;
                    Self::write_message(out, &m);
                    let msize = size_field(&m, "msize", entry)?;
                    let mut data = match pair.get(1) {
                        Some(v) => blob(v, "extra")?,
                        None => Vec::new(),
                    };
                    data.resize(msize, 0);
                    data.resize(round_up(msize, 8), 0);
                    out.extend_from_slice(&data);
                }
            }
        }
        Ok(())
    }
}
