//! The entries of one image (everything after the magic words) to and from crit's
//! `"entries"` array. Which message each entry is and which extra payload follows it come
//! from the image kind ([`MagicEntry`]: `crate::magic`'s table), and the payload rules from
//! [`crate::payload`], the one place that knows them; this module only shows the parts as
//! crit does.
//!
//! ```text
//!  plain image      len u32 | message            len u32 | message            ...
//!  first_message    len u32 | first message      len u32 | message ...   (PAGEMAP, GHOST_FILE)
//!  with extra       len u32 | message | payload  len u32 | message | payload  ...
//!                   payload (payload::extra_len)              "extra" in JSON
//!                     PIPE_DATA, SK_QUEUE, BPFMAP_DATA, ghost chunk   base64
//!                     ghost file without chunks: the rest of the file  base64
//!                     TCP_STREAM  in-queue then out-queue               {"inq": b64, "outq": b64}
//!                     IPCNS_SHM   size bytes (padded to 4)              base64
//!                     IPCNS_SEM   nsems u16 (padded to 8)               [n, ...]
//!                     IPCNS_MSG   qnum x (len | ipc_msg | data padded 8) [msg, base64, ...]
//! ```
//!
//! Unlike crit, an `ipc_shm_entry` with `in_pagemaps` set has no extra (its pages are in
//! pagemap-shmem, as CRIU writes them).

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage};
use serde_json::{Map, Value as Json};

use super::error::JsonError;
use super::image::MagicEntry;
use super::message::{from_json, to_json, Path};
use super::{b64, Codec};
use crate::payload::{self, ExtraLen, PayloadKind};

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

/// A payload rule's field error as a JSON error of entry `entry` (message `desc`).
fn payload_err(
    desc: &MessageDescriptor,
    entry: usize,
) -> impl Fn(payload::FieldError) -> JsonError + '_ {
    move |e| JsonError::Field {
        entry,
        path: format!("{}.{}", desc.name(), e.field),
        reason: e.detail,
    }
}

/// A payload size as a length to read (too large: the read reports truncation).
fn len(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
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

    /// The message of entry 0 and the message of the others of image kind `kind`.
    fn entry_messages(
        &self,
        kind: &MagicEntry,
    ) -> Result<(MessageDescriptor, MessageDescriptor), JsonError> {
        let rest = kind
            .message
            .as_deref()
            .ok_or_else(|| JsonError::NoHandler(kind.name.clone()))?;
        let rest = self.message(rest)?;
        let first = match &kind.first_message {
            Some(first) => self.message(first)?,
            None => rest.clone(),
        };
        Ok((first, rest))
    }

    /// Reads one `len u32 | message` record: its bytes and the decoded message.
    fn read_message<'a>(
        &self,
        r: &mut Reader<'a>,
        desc: &MessageDescriptor,
        entry: usize,
    ) -> Result<(&'a [u8], DynamicMessage), JsonError> {
        let len = r.u32(entry, "entry size")? as usize;
        if len > MAX_ENTRY {
            return Err(JsonError::Field {
                entry,
                path: desc.name().to_string(),
                reason: format!("entry size {len} is over the {MAX_ENTRY} byte limit"),
            });
        }
        let bytes = r.take(len, entry, "entry")?;
        let msg =
            DynamicMessage::decode(desc.clone(), bytes).map_err(|source| JsonError::Protobuf {
                entry,
                message: desc.name().to_string(),
                source,
            })?;
        Ok((bytes, msg))
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

    /// Decodes the entries of an image of kind `kind`; `body` is the file after the magic.
    pub fn decode_entries(
        &self,
        kind: &MagicEntry,
        body: &[u8],
        pretty: bool,
    ) -> Result<Vec<Json>, JsonError> {
        let mut out = Vec::new();
        self.for_each_entry(kind, body, pretty, &mut |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// Decodes the entries of an image of kind `kind` one at a time, handing each to `f`
    /// (nothing is kept: memory follows one entry, not the file's count of entries).
    pub fn for_each_entry(
        &self,
        kind: &MagicEntry,
        body: &[u8],
        pretty: bool,
        f: &mut dyn FnMut(Json) -> Result<(), JsonError>,
    ) -> Result<usize, JsonError> {
        let (first, rest) = self.entry_messages(kind)?;
        let mut r = Reader { data: body, pos: 0 };
        let mut entry = 0;
        while !r.at_end() {
            let desc = if entry == 0 { &first } else { &rest };
            let (bytes, msg) = self.read_message(&mut r, desc, entry)?;
            let mut obj = self.msg_json(&msg, pretty, entry)?;
            if let Some(extra) = self.read_extra(kind.payload, desc, bytes, &mut r, entry)? {
                obj.insert("extra".into(), extra);
            }
            f(Json::Object(obj))?;
            entry += 1;
        }
        Ok(entry)
    }

    /// Encodes one entry of `"entries"` (index `i`) of an image of kind `kind`, appending
    /// `len | message | extra` to `out`.
    pub fn encode_entry(
        &self,
        kind: &MagicEntry,
        i: usize,
        e: &Json,
        out: &mut Vec<u8>,
    ) -> Result<(), JsonError> {
        let (first, rest) = self.entry_messages(kind)?;
        let obj = e
            .as_object()
            .ok_or_else(|| JsonError::Shape(format!("entry {i}: not a JSON object")))?;
        let mut fields = obj.clone();
        let extra = fields.shift_remove("extra");
        let desc = if i == 0 { &first } else { &rest };
        let msg = self.build_message(desc, &fields, i)?;
        let bytes = Self::write_message(out, &msg);
        self.write_extra(kind.payload, desc, &bytes, extra.as_ref(), out, i)
    }

    /// Reads the extra payload after entry `entry` (`bytes`, a `desc`) as crit shows it.
    fn read_extra(
        &self,
        rule: PayloadKind,
        desc: &MessageDescriptor,
        bytes: &[u8],
        r: &mut Reader<'_>,
        entry: usize,
    ) -> Result<Option<Json>, JsonError> {
        let err = payload_err(desc, entry);
        let b64 = |data: &[u8]| Json::String(b64::encodebytes(data));
        Ok(Some(
            match payload::extra_len(rule, entry, bytes).map_err(&err)? {
                ExtraLen::None => return Ok(None),
                ExtraLen::RestOfFile => b64(r.rest()),
                ExtraLen::Exact(n) => {
                    let extra = r.take(len(n), entry, "extra payload")?;
                    match rule {
                        PayloadKind::TcpStream => {
                            let (inq, outq) =
                                payload::tcp_stream_queues(bytes, extra).map_err(&err)?;
                            let mut m = Map::new();
                            m.insert("inq".into(), b64(inq));
                            m.insert("outq".into(), b64(outq));
                            Json::Object(m)
                        }
                        PayloadKind::IpcShm => {
                            b64(payload::ipc_shm_data(bytes, extra).map_err(&err)?)
                        }
                        PayloadKind::IpcSem => Json::Array(
                            payload::ipc_sem_values(bytes, extra)
                                .map_err(&err)?
                                .into_iter()
                                .map(Json::from)
                                .collect(),
                        ),
                        _ => b64(extra),
                    }
                }
                ExtraLen::IpcMsgs { count } => {
                    let desc = self.message("ipc_msg")?;
                    let err = payload_err(&desc, entry);
                    let mut list = Vec::new();
                    for _ in 0..count {
                        if r.at_end() {
                            break;
                        }
                        let (msg_bytes, m) = self.read_message(r, &desc, entry)?;
                        let padded = payload::ipc_msg_data_len(msg_bytes).map_err(&err)?;
                        let data = r.take(len(padded), entry, "message queue data")?;
                        let msize = payload::ipc_msg_size(msg_bytes).map_err(&err)?;
                        list.push(Json::Object(self.msg_json(&m, false, entry)?));
                        list.push(b64(&data[..len(msize)]));
                    }
                    Json::Array(list)
                }
            },
        ))
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

    /// Appends `len u32 | message` and returns the message's bytes.
    fn write_message(out: &mut Vec<u8>, msg: &DynamicMessage) -> Vec<u8> {
        let bytes = msg.encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
        bytes
    }

    /// Encodes crit's `"entries"` array of an image of kind `kind` back into the bytes after
    /// the magic.
    pub fn encode_entries(
        &self,
        kind: &MagicEntry,
        entries: &[Json],
    ) -> Result<Vec<u8>, JsonError> {
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            self.encode_entry(kind, i, e, &mut out)?;
        }
        Ok(out)
    }

    /// Appends the extra payload of entry `entry` (`bytes`, a `desc`) from its JSON `extra`
    /// (missing: empty), checked against the sizes the entry announces.
    fn write_extra(
        &self,
        rule: PayloadKind,
        desc: &MessageDescriptor,
        bytes: &[u8],
        extra: Option<&Json>,
        out: &mut Vec<u8>,
        entry: usize,
    ) -> Result<(), JsonError> {
        let err = payload_err(desc, entry);
        let bad = |path: &str, reason: String| JsonError::Field {
            entry,
            path: path.into(),
            reason,
        };
        let blob = |v: Option<&Json>, path: &str| -> Result<Vec<u8>, JsonError> {
            match v {
                None => Ok(Vec::new()),
                Some(v) => {
                    let text = v
                        .as_str()
                        .ok_or_else(|| bad(path, "expected a base64 string".into()))?;
                    b64::decodebytes(text).map_err(|reason| bad(path, reason))
                }
            }
        };
        let size_mismatch = |path: &str, want: usize, got: usize| {
            bad(
                path,
                format!("expected {want} bytes ({}), got {got}", desc.name()),
            )
        };
        let data = match payload::extra_len(rule, entry, bytes).map_err(&err)? {
            ExtraLen::None => return Ok(()),
            ExtraLen::RestOfFile => blob(extra, "extra")?,
            ExtraLen::IpcMsgs { .. } => {
                let empty = Vec::new();
                let list = match extra {
                    None => &empty,
                    Some(v) => v
                        .as_array()
                        .ok_or_else(|| bad("extra", "expected an array of messages".into()))?,
                };
                let msg_desc = self.message("ipc_msg")?;
                let mut records = Vec::new();
                for pair in list.chunks(2) {
                    let obj = pair[0]
                        .as_object()
                        .ok_or_else(|| bad("extra", "expected a message object".into()))?;
                    let m = self.build_message(&msg_desc, obj, entry)?;
                    let data = blob(pair.get(1), "extra")?;
                    let msize = payload::ipc_msg_size(&m.encode_to_vec())
                        .map_err(payload_err(&msg_desc, entry))?;
                    if data.len() as u64 != msize {
                        return Err(size_mismatch("extra", len(msize), data.len()));
                    }
                    records.push((m.encode_to_vec(), data));
                }
                let refs: Vec<(&[u8], &[u8])> = records
                    .iter()
                    .map(|(m, d)| (m.as_slice(), d.as_slice()))
                    .collect();
                payload::ipc_msg_extra(&refs)
            }
            ExtraLen::Exact(want) => {
                let data = match rule {
                    PayloadKind::TcpStream => {
                        let obj = extra.and_then(Json::as_object);
                        let inq = blob(obj.and_then(|o| o.get("inq")), "extra.inq")?;
                        let outq = blob(obj.and_then(|o| o.get("outq")), "extra.outq")?;
                        let data = [inq.as_slice(), outq.as_slice()].concat();
                        let (want_inq, _) =
                            payload::tcp_stream_queues(bytes, &data).map_err(&err)?;
                        if want_inq.len() != inq.len() {
                            return Err(size_mismatch("extra.inq", want_inq.len(), inq.len()));
                        }
                        data
                    }
                    PayloadKind::IpcShm => {
                        let data = blob(extra, "extra")?;
                        let want = payload::ipc_shm_data(bytes, &data).map_err(&err)?.len();
                        if want != data.len() {
                            return Err(size_mismatch("extra", want, data.len()));
                        }
                        payload::ipc_shm_extra(&data)
                    }
                    PayloadKind::IpcSem => {
                        let empty = Vec::new();
                        let list = match extra {
                            None => &empty,
                            Some(v) => v.as_array().ok_or_else(|| {
                                bad("extra", "expected an array of semaphore values".into())
                            })?,
                        };
                        let values = list
                            .iter()
                            .map(|v| v.as_u64().and_then(|v| u16::try_from(v).ok()))
                            .collect::<Option<Vec<u16>>>()
                            .ok_or_else(|| {
                                bad("extra", "expected semaphore values in 0..=65535".into())
                            })?;
                        let data = payload::ipc_sem_extra(&values);
                        let shown = payload::ipc_sem_values(bytes, &data).map_err(&err)?;
                        if shown != values {
                            return Err(bad(
                                "extra",
                                format!(
                                    "expected {} semaphore values, got {}",
                                    shown.len(),
                                    values.len()
                                ),
                            ));
                        }
                        data
                    }
                    _ => blob(extra, "extra")?,
                };
                if data.len() as u64 != want {
                    return Err(size_mismatch("extra", len(want), data.len()));
                }
                data
            }
        };
        out.extend_from_slice(&data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::json::{decode_image, encode_image, Codec};

    /// pipes-data.img: one pipe_data_entry {pipe_id 1, bytes 3} followed by "abc".
    fn pipes_data() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&crate::magic::IMG_COMMON_MAGIC.to_le_bytes());
        b.extend_from_slice(&0x5645_3709u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&[0x08, 0x01, 0x10, 0x03]);
        b.extend_from_slice(b"abc");
        b
    }

    #[test]
    fn payload_rules_come_from_the_payload_module() {
        let codec = Codec::criu().unwrap();
        let bytes = pipes_data();
        let mut doc = decode_image(codec, &bytes, false).unwrap();
        assert_eq!(doc["entries"][0]["extra"], "YWJj\n");
        assert_eq!(encode_image(codec, &doc).unwrap(), bytes);
        // An extra that does not match `bytes` is refused, naming the sizes.
        doc["entries"][0]["extra"] = "YWI=\n".into();
        let err = encode_image(codec, &doc).unwrap_err().to_string();
        assert!(
            err.contains("expected 3 bytes") && err.contains("got 2"),
            "{err}"
        );
        // A truncated payload is refused on decode.
        let err = decode_image(codec, &bytes[..bytes.len() - 1], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated extra payload"), "{err}");
    }
}
