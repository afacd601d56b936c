//! Reading and writing image files: magics, length-prefixed entries, extra payloads.
//!
//! ```text
//!  offset 0        4            8        12            12+len
//!  +---------------+------------+--------+-------------+-------------+--------+----
//!  | head magic    | image magic| len u32| entry (len) | extra (opt) | len u32| ...
//!  +---------------+------------+--------+-------------+-------------+--------+----
//!  inventory.img: no head magic (its own magic is the first word)
//!  all integers little-endian; the file ends right after the last entry (or its extra)
//! ```
//!
//! Two APIs:
//! - streaming: [`ImageReader`] over any `Read`, [`ImageWriter`] over any `Write`;
//! - in memory: [`Image`] (`kind` + `entries`), parsed from bytes, written back byte-identically
//!   (entries and extras are kept exactly as they were read), with typed helpers
//!   ([`Image::decode`], [`read_entries`], [`write_entries`]).
//!
//! Hostile input never panics nor makes us allocate more than the input holds: an entry
//! length over [`MAX_ENTRY_LEN`] is refused before reading, and every read is bounded by
//! what is actually left (slices) or grows only as data arrives (streams).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::error::{FileName, ImageError, Result};
use crate::limits::{self, MAX_IMAGE_FILE};
use crate::magic::{HeadMagic, ImageKind, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};
use crate::payload::{self, ExtraLen};
use crate::wire;

/// Largest entry (encoded message) accepted: CRIU's largest entries are a few KiB.
pub const MAX_ENTRY_LEN: u64 = 64 << 20;

/// One entry: the encoded message and the raw extra payload that followed it, if the kind
/// has one for this entry (`Some(vec![])` when the announced size is 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub bytes: Vec<u8>,
    pub extra: Option<Vec<u8>>,
}

impl Entry {
    /// An entry without extra payload.
    pub fn new(bytes: Vec<u8>) -> Self {
        Entry { bytes, extra: None }
    }

    /// Encodes `msg` as an entry.
    pub fn from_message<M: prost::Message>(msg: &M) -> Self {
        Entry::new(msg.encode_to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// Input sources

trait Input {
    fn offset(&self) -> u64;
    fn at_eof(&mut self) -> io::Result<bool>;
    /// Reads up to `n` bytes; fewer only at end of input.
    fn take(&mut self, n: u64) -> io::Result<Vec<u8>>;
    fn take_rest(&mut self) -> io::Result<Vec<u8>>;
}

struct SliceInput<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Input for SliceInput<'_> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }
    fn at_eof(&mut self) -> io::Result<bool> {
        Ok(self.pos >= self.buf.len())
    }
    fn take(&mut self, n: u64) -> io::Result<Vec<u8>> {
        let left = self.buf.len() - self.pos;
        let n = usize::try_from(n).unwrap_or(usize::MAX).min(left);
        let v = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(v)
    }
    fn take_rest(&mut self) -> io::Result<Vec<u8>> {
        let v = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        Ok(v)
    }
}

struct ReadInput<R> {
    r: R,
    off: u64,
}

impl<R: BufRead> Input for ReadInput<R> {
    fn offset(&self) -> u64 {
        self.off
    }
    fn at_eof(&mut self) -> io::Result<bool> {
        Ok(self.r.fill_buf()?.is_empty())
    }
    fn take(&mut self, n: u64) -> io::Result<Vec<u8>> {
        // Grows with the data actually read: an absurd `n` costs nothing on a short stream.
        let mut v = Vec::with_capacity(n.min(64 * 1024) as usize);
        (&mut self.r).take(n).read_to_end(&mut v)?;
        self.off += v.len() as u64;
        Ok(v)
    }
    fn take_rest(&mut self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.r.read_to_end(&mut v)?;
        self.off += v.len() as u64;
        Ok(v)
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

// ---------------------------------------------------------------------------------------------
// Parser shared by streams and slices

struct Parser<I> {
    input: I,
    file: FileName,
    kind: ImageKind,
    index: usize,
    done: bool,
}

impl<I: Input> Parser<I> {
    fn io(&self, e: io::Error) -> ImageError {
        ImageError::io(&self.file, "read", e)
    }

    /// Reads exactly `n` bytes or fails with `Truncated`.
    fn exact(&mut self, n: u64, what: &'static str, index: Option<usize>) -> Result<Vec<u8>> {
        let offset = self.input.offset();
        let v = self.input.take(n).map_err(|e| self.io(e))?;
        if (v.len() as u64) < n {
            return Err(ImageError::Truncated {
                file: self.file.clone(),
                index,
                what,
                offset,
                needed: n,
                available: v.len() as u64,
            });
        }
        Ok(v)
    }

    /// Reads the magic word(s) and returns the kind they announce.
    fn read_head(input: I, file: FileName) -> Result<Self> {
        let mut p = Parser {
            input,
            file,
            kind: ImageKind::Inventory,
            index: 0,
            done: false,
        };
        let head = le32(&p.exact(4, "head magic", None)?);
        if ImageKind::from_magic(head) == Some(ImageKind::Inventory) {
            return Ok(p);
        }
        if head != IMG_COMMON_MAGIC && head != IMG_SERVICE_MAGIC {
            return Err(ImageError::BadHeadMagic {
                file: p.file,
                found: head,
            });
        }
        let magic = le32(&p.exact(4, "image magic", None)?);
        let kind = ImageKind::from_magic(magic).ok_or_else(|| ImageError::UnknownMagic {
            file: p.file.clone(),
            found: magic,
            offset: 4,
        })?;
        if kind.info().head.value() != Some(head) {
            return Err(ImageError::BadHeadMagic {
                file: p.file,
                found: head,
            });
        }
        p.kind = kind;
        Ok(p)
    }

    /// Parser for entries of `kind` starting right at the input (no magic).
    fn body(input: I, file: FileName, kind: ImageKind) -> Result<Self> {
        if kind.is_raw() {
            return Err(ImageError::RawImage {
                file,
                kind: kind.name(),
            });
        }
        Ok(Parser {
            input,
            file,
            kind,
            index: 0,
            done: false,
        })
    }

    fn message_name(&self) -> &'static str {
        self.kind.info().message_for(self.index).unwrap_or("?")
    }

    fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        if self.input.at_eof().map_err(|e| self.io(e))? {
            self.done = true;
            return Ok(None);
        }
        // Any error leaves the parser finished: no garbage after a failure.
        self.done = true;
        let index = self.index;
        let offset = self.input.offset();
        let len = u64::from(le32(&self.exact(4, "entry length", Some(index))?));
        if len > MAX_ENTRY_LEN {
            return Err(ImageError::EntryTooLarge {
                file: self.file.clone(),
                index,
                offset,
                len,
                cap: MAX_ENTRY_LEN,
            });
        }
        let bytes = self.exact(len, "entry", Some(index))?;
        let message = self.message_name();
        wire::validate(&bytes).map_err(|e| ImageError::Malformed {
            file: self.file.clone(),
            index,
            message,
            at: e.at,
            detail: e.detail,
        })?;
        let rule = payload::extra_len(self.kind.info().payload, index, &bytes).map_err(|e| {
            ImageError::BadPayloadField {
                file: self.file.clone(),
                index,
                message,
                field: e.field,
                detail: e.detail,
            }
        })?;
        let mut at_end = false;
        let extra = match rule {
            ExtraLen::None => None,
            ExtraLen::Exact(n) => Some(self.exact(n, "extra payload", Some(index))?),
            ExtraLen::RestOfFile => {
                at_end = true;
                Some(self.input.take_rest().map_err(|e| self.io(e))?)
            }
            ExtraLen::IpcMsgs { count } => Some(self.ipc_msgs(index, count)?),
        };
        self.index += 1;
        self.done = at_end;
        Ok(Some(Entry { bytes, extra }))
    }

    fn ipc_msgs(&mut self, index: usize, count: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..count {
            let lenb = self.exact(4, "ipc_msg length", Some(index))?;
            let len = u64::from(le32(&lenb));
            if len > MAX_ENTRY_LEN {
                return Err(ImageError::EntryTooLarge {
                    file: self.file.clone(),
                    index,
                    offset: self.input.offset() - 4,
                    len,
                    cap: MAX_ENTRY_LEN,
                });
            }
            let msg = self.exact(len, "ipc_msg", Some(index))?;
            let data_len =
                payload::ipc_msg_data_len(&msg).map_err(|e| ImageError::BadPayloadField {
                    file: self.file.clone(),
                    index,
                    message: "criu.ipc_msg",
                    field: e.field,
                    detail: e.detail,
                })?;
            let data = self.exact(data_len, "ipc_msg data", Some(index))?;
            out.extend_from_slice(&lenb);
            out.extend_from_slice(&msg);
            out.extend_from_slice(&data);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming reader

/// Reads an image entry by entry from any `Read` (buffered internally).
pub struct ImageReader<R: Read> {
    p: Parser<ReadInput<BufReader<R>>>,
}

impl<R: Read> ImageReader<R> {
    /// Reads the magic(s); `file` names the source in errors.
    pub fn new(r: R, file: FileName) -> Result<Self> {
        let input = ReadInput {
            r: BufReader::new(r),
            off: 0,
        };
        Ok(ImageReader {
            p: Parser::read_head(input, file)?,
        })
    }

    /// The kind announced by the magic.
    pub fn kind(&self) -> ImageKind {
        self.p.kind
    }

    /// The next entry, or `None` at the end of the file.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        self.p.next_entry()
    }

    /// The next entry decoded as `M`.
    pub fn next_message<M: prost::Message + Default>(&mut self) -> Result<Option<M>> {
        let index = self.p.index;
        let offset = self.p.input.offset();
        match self.next_entry()? {
            None => Ok(None),
            Some(e) => decode_bytes(&e.bytes, &self.p.file, index, offset).map(Some),
        }
    }
}

impl ImageReader<io::Take<File>> {
    /// Opens `path` (a regular file of at most [`MAX_IMAGE_FILE`] bytes, see
    /// [`crate::limits`]) and reads its magic(s); nothing more is read until asked for.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (f, _) = limits::open_regular(path, MAX_IMAGE_FILE)?;
        ImageReader::new(f.take(MAX_IMAGE_FILE), FileName::path(path))
    }
}

impl<R: Read> Iterator for ImageReader<R> {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

fn decode_bytes<M: prost::Message + Default>(
    bytes: &[u8],
    file: &FileName,
    index: usize,
    offset: u64,
) -> Result<M> {
    M::decode(bytes).map_err(|e| ImageError::Decode {
        file: file.clone(),
        index,
        offset,
        message: std::any::type_name::<M>()
            .rsplit("::")
            .next()
            .unwrap_or("?")
            .to_string(),
        detail: e.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming writer

/// Writes an image entry by entry; checks each extra payload against the size its entry
/// announces, so what it writes always reads back.
pub struct ImageWriter<W: Write> {
    w: W,
    kind: ImageKind,
    file: FileName,
    index: usize,
    closed: bool,
}

/// The magic words that start a file of `kind` (empty for raw kinds).
pub fn head_bytes(kind: ImageKind) -> Vec<u8> {
    let info = kind.info();
    let mut out = Vec::with_capacity(8);
    if info.head == HeadMagic::Raw {
        return out;
    }
    if let Some(h) = info.head.value() {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out.extend_from_slice(&info.magic.to_le_bytes());
    out
}

impl<W: Write> ImageWriter<W> {
    /// Writes the magic(s) of `kind`; `file` names the destination in errors.
    pub fn new(mut w: W, kind: ImageKind, file: FileName) -> Result<Self> {
        if kind.is_raw() {
            return Err(ImageError::RawImage {
                file,
                kind: kind.name(),
            });
        }
        w.write_all(&head_bytes(kind))
            .map_err(|e| ImageError::io(&file, "write", e))?;
        Ok(ImageWriter {
            w,
            kind,
            file,
            index: 0,
            closed: false,
        })
    }

    /// Appends one entry (encoded message) and its extra payload.
    pub fn write_entry(&mut self, bytes: &[u8], extra: Option<&[u8]>) -> Result<()> {
        let index = self.index;
        let mismatch = |expected: String, actual: usize| ImageError::PayloadMismatch {
            file: self.file.clone(),
            index,
            expected,
            actual,
        };
        if self.closed {
            return Err(mismatch(
                "no entry after the rest-of-file payload".into(),
                0,
            ));
        }
        if bytes.len() as u64 > MAX_ENTRY_LEN {
            return Err(ImageError::EntryTooLarge {
                file: self.file.clone(),
                index,
                offset: 0,
                len: bytes.len() as u64,
                cap: MAX_ENTRY_LEN,
            });
        }
        let info = self.kind.info();
        let message = info.message_for(index).unwrap_or("?");
        let rule = payload::extra_len(info.payload, index, bytes).map_err(|e| {
            ImageError::BadPayloadField {
                file: self.file.clone(),
                index,
                message,
                field: e.field,
                detail: e.detail,
            }
        })?;
        let got = extra.map_or(0, <[u8]>::len);
        match rule {
            ExtraLen::None if got != 0 => return Err(mismatch("no extra payload".into(), got)),
            ExtraLen::Exact(n) if n != got as u64 => return Err(mismatch(n.to_string(), got)),
            ExtraLen::RestOfFile => self.closed = true,
            ExtraLen::IpcMsgs { count } => {
                let n = payload::ipc_msgs(extra.unwrap_or(&[]))
                    .map_err(|e| mismatch(format!("{count} ipc messages ({e})"), got))?
                    .len();
                if n as u64 != count {
                    return Err(mismatch(format!("{count} ipc messages"), got));
                }
            }
            _ => {}
        }
        let io = |e| ImageError::io(&self.file, "write", e);
        self.w
            .write_all(&(bytes.len() as u32).to_le_bytes())
            .map_err(io)?;
        self.w.write_all(bytes).map_err(io)?;
        if let Some(x) = extra {
            self.w.write_all(x).map_err(io)?;
        }
        self.index += 1;
        Ok(())
    }

    /// Appends `msg` (for kinds without extra payload, or with an empty one).
    pub fn write_message<M: prost::Message>(&mut self, msg: &M) -> Result<()> {
        self.write_entry(&msg.encode_to_vec(), None)
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> Result<W> {
        self.w
            .flush()
            .map_err(|e| ImageError::io(&self.file, "flush", e))?;
        Ok(self.w)
    }
}

impl ImageWriter<io::BufWriter<File>> {
    /// Creates (truncates) `path` and writes the magic(s) of `kind`.
    pub fn create(path: impl AsRef<Path>, kind: ImageKind) -> Result<Self> {
        let path = path.as_ref();
        let file = FileName::path(path);
        let f = File::create(path).map_err(|e| ImageError::io(&file, "create", e))?;
        ImageWriter::new(io::BufWriter::new(f), kind, file)
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory image

/// A whole image in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub kind: ImageKind,
    pub entries: Vec<Entry>,
}

impl Image {
    /// An empty image of `kind`.
    pub fn new(kind: ImageKind) -> Self {
        Image {
            kind,
            entries: Vec::new(),
        }
    }

    /// An image of `kind` holding `msgs` (no extra payloads).
    pub fn from_messages<M: prost::Message>(kind: ImageKind, msgs: &[M]) -> Self {
        Image {
            kind,
            entries: msgs.iter().map(Entry::from_message).collect(),
        }
    }

    /// Parses a whole image file (the magic decides the kind).
    pub fn parse(bytes: &[u8]) -> Result<Image> {
        Self::parse_named(bytes, FileName::default())
    }

    /// Like [`Image::parse`], naming `file` in errors.
    pub fn parse_named(bytes: &[u8], file: FileName) -> Result<Image> {
        let p = Parser::read_head(SliceInput { buf: bytes, pos: 0 }, file)?;
        Self::collect(p)
    }

    /// Parses a whole image file that must be of `kind`.
    pub fn parse_as(kind: ImageKind, bytes: &[u8]) -> Result<Image> {
        let img = Self::parse(bytes)?;
        if img.kind != kind {
            return Err(ImageError::WrongKind {
                file: FileName::default(),
                found: img.kind.name().into(),
                expected: kind.name().into(),
            });
        }
        Ok(img)
    }

    /// Parses `body` (an image without its magic words) as entries of `kind`.
    pub fn parse_body(kind: ImageKind, body: &[u8]) -> Result<Image> {
        let p = Parser::body(SliceInput { buf: body, pos: 0 }, FileName::default(), kind)?;
        Self::collect(p)
    }

    fn collect<I: Input>(mut p: Parser<I>) -> Result<Image> {
        let mut entries = Vec::new();
        while let Some(e) = p.next_entry()? {
            entries.push(e);
        }
        Ok(Image {
            kind: p.kind,
            entries,
        })
    }

    /// Reads and parses the file at `path` (a regular file within [`crate::limits`]; its
    /// magic is checked before the rest is read).
    pub fn read_file(path: impl AsRef<Path>) -> Result<Image> {
        let r = ImageReader::open(path)?;
        Self::collect(r.p)
    }

    /// The file bytes: magic(s), then every entry and extra exactly as held.
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self
            .entries
            .iter()
            .map(|e| 4 + e.bytes.len() + e.extra.as_ref().map_or(0, Vec::len))
            .sum();
        let mut out = head_bytes(self.kind);
        out.reserve(size);
        for e in &self.entries {
            out.extend_from_slice(&(e.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.bytes);
            if let Some(x) = &e.extra {
                out.extend_from_slice(x);
            }
        }
        out
    }

    /// Writes the image through an [`ImageWriter`] (extras are checked against their entries).
    pub fn write_to<W: Write>(&self, w: W, file: FileName) -> Result<W> {
        let mut iw = ImageWriter::new(w, self.kind, file)?;
        for e in &self.entries {
            iw.write_entry(&e.bytes, e.extra.as_deref())?;
        }
        iw.finish()
    }

    /// Writes the image to `path` (created or truncated).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let file = FileName::path(path);
        let f = File::create(path).map_err(|e| ImageError::io(&file, "create", e))?;
        self.write_to(io::BufWriter::new(f), file)?;
        Ok(())
    }

    /// Byte offset of entry `index`'s length word in the file (for error messages).
    fn entry_offset(&self, index: usize) -> u64 {
        let head = head_bytes(self.kind).len() as u64;
        head + self.entries[..index]
            .iter()
            .map(|e| 4 + e.bytes.len() as u64 + e.extra.as_ref().map_or(0, |x| x.len() as u64))
            .sum::<u64>()
    }

    /// Entry `index` decoded as `M`.
    pub fn decode_entry<M: prost::Message + Default>(&self, index: usize) -> Result<M> {
        let e = self
            .entries
            .get(index)
            .ok_or_else(|| ImageError::Truncated {
                file: FileName::default(),
                index: Some(index),
                what: "entry",
                offset: self.entry_offset(self.entries.len()),
                needed: 1,
                available: 0,
            })?;
        // The offset (O(index) to compute) is only needed on failure.
        M::decode(e.bytes.as_slice()).or_else(|_| {
            decode_bytes(
                &e.bytes,
                &FileName::default(),
                index,
                self.entry_offset(index),
            )
        })
    }

    /// Every entry decoded as `M`.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<Vec<M>> {
        let mut off = head_bytes(self.kind).len() as u64;
        let mut out = Vec::with_capacity(self.entries.len());
        for (i, e) in self.entries.iter().enumerate() {
            out.push(decode_bytes(&e.bytes, &FileName::default(), i, off)?);
            off += 4 + e.bytes.len() as u64 + e.extra.as_ref().map_or(0, |x| x.len() as u64);
        }
        Ok(out)
    }

    /// The only entry, decoded as `M` (core, mm, inventory ... hold exactly one).
    pub fn single<M: prost::Message + Default>(&self) -> Result<M> {
        if self.entries.len() != 1 {
            return Err(ImageError::Decode {
                file: FileName::default(),
                index: self.entries.len().min(1),
                offset: head_bytes(self.kind).len() as u64,
                message: self.kind.info().message.unwrap_or("?").to_string(),
                detail: format!("expected exactly one entry, found {}", self.entries.len()),
            });
        }
        self.decode_entry(0)
    }

    /// Appends `msg` without extra payload.
    pub fn push<M: prost::Message>(&mut self, msg: &M) {
        self.entries.push(Entry::from_message(msg));
    }

    /// Checks that every entry decodes as the message type its kind declares, using the
    /// compiled descriptors ([`crate::DESCRIPTOR_SET`]) and reflection.
    pub fn check_messages(&self) -> Result<()> {
        let info = self.kind.info();
        let mut off = head_bytes(self.kind).len() as u64;
        for (i, e) in self.entries.iter().enumerate() {
            let name = info.message_for(i).unwrap_or("?");
            let fail = |detail: String| ImageError::Decode {
                file: FileName::default(),
                index: i,
                offset: off,
                message: name.to_string(),
                detail,
            };
            let desc = crate::schema::message(name)
                .ok_or_else(|| fail("message type is not defined in proto/".into()))?;
            prost_reflect::DynamicMessage::decode(desc, e.bytes.as_slice())
                .map_err(|err| fail(err.to_string()))?;
            off += 4 + e.bytes.len() as u64 + e.extra.as_ref().map_or(0, |x| x.len() as u64);
        }
        Ok(())
    }
}

/// Reads every entry of the image at `path` as `M`.
pub fn read_entries<M: prost::Message + Default>(path: impl AsRef<Path>) -> Result<Vec<M>> {
    let path = path.as_ref();
    Image::read_file(path)?
        .decode()
        .map_err(|e| e.with_file(path))
}

/// Reads the single entry of the image at `path` (core-N, mm-N, inventory ...) as `M`.
pub fn read_single<M: prost::Message + Default>(path: impl AsRef<Path>) -> Result<M> {
    let path = path.as_ref();
    Image::read_file(path)?
        .single()
        .map_err(|e| e.with_file(path))
}

/// Writes `msgs` as an image of `kind` at `path` (kinds without extra payloads).
pub fn write_entries<M: prost::Message>(
    path: impl AsRef<Path>,
    kind: ImageKind,
    msgs: &[M],
) -> Result<()> {
    let mut w = ImageWriter::create(path, kind)?;
    for m in msgs {
        w.write_message(m)?;
    }
    w.finish()?;
    Ok(())
}

/// Encodes `msgs` as the bytes of an image of `kind`.
pub fn encode_entries<M: prost::Message>(kind: ImageKind, msgs: &[M]) -> Vec<u8> {
    Image::from_messages(kind, msgs).to_bytes()
}
