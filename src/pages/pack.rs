//! Packed page streams: stasis's own extension of CRIU's images for compressed
//! (`--compress zstd[:LEVEL]`) and authenticated-encrypted (`--encrypt-key FILE`) pages.
//!
//! A packed directory keeps CRIU's pagemaps as they are; only the pages file changes name and
//! form: `pages-N.img` (raw pages) becomes `pages-N.pack.img`:
//!
//! ```text
//!  header, 64 bytes
//!   0  magic "STASISPK"          8   a reader tells a packed file by it (and by its name)
//!   8  version u16 = 1
//!  10  flags u16                     1: zstd chunks may occur, 2: sealed (XChaCha20-Poly1305)
//!  12  chunk_pages u32               most pages in one data record (256: 1 MiB)
//!  16  file_id [16]                  random, new for every file
//!  32  pages_id u32                  N of the file name pages-N.pack.img
//!  36  zstd level i32                (informational)
//!  40  reserved [8] = 0
//!  48  header tag [16]               sealed: AEAD tag over bytes 0..48 (empty message); else 0
//!  records, back to back, each a 16-byte head and `stored` bytes
//!   0  kind u8                       1 ZERO (no data) 2 RAW 3 ZSTD (zstd frame, checksummed)
//!                                    0x7f END (last record)
//!   1  reserved [3] = 0
//!   4  index u32                     0, 1, 2, ... in file order
//!   8  pages u32                     pages of plain data this record stands for (END: 0)
//!  12  stored u32                    bytes that follow (sealed: the 16-byte tag included)
//!  16  payload                       ZERO: nothing; RAW: pages; ZSTD: a frame;
//!                                    END: u64 total pages, u64 number of records before it
//! ```
//! The plain pages are the records' data in order, exactly what `pages-N.img` would hold. A
//! run of zero pages is one ZERO record, whatever its length (no data; 16 bytes and, sealed,
//! a 16-byte tag). A chunk that does not shrink under zstd is stored RAW.
//!
//! Sealed files encrypt every payload (ZERO and END too: their tags authenticate them) with
//! XChaCha20-Poly1305 under the 32-byte key of `--encrypt-key`:
//! nonce = file_id ‖ index (u64 LE) (24 bytes, never reused: the file id is random), associated
//! data = header bytes 0..48 ‖ the record's 16-byte head. So a flipped byte anywhere, a record
//! moved within the file or into another file (other file id, other pages id), a renamed file
//! and a wrong key all fail authentication; a truncated file lacks its END record. The header
//! tag (nonce index 2^64-1) tells a wrong key apart from a damaged record. Errors name the
//! file and the byte offset of the header or record concerned. Pagemaps stay readable (the
//! addresses of dumped pages are not secret here; their contents are).
//!
//! A directory written by a packing dump also marks its `inventory.img`: `img_version` is
//! [`INVENTORY_MARK`] instead of CRIU's 2, which CRIU 4.2 refuses cleanly ("Not supported
//! images version") rather than looking for pages it cannot read. `stasis convert` writes
//! plain CRIU images back (version 2); `stasis restore` and `stasis crit` read packed
//! directories directly.
//!
//! Writing is parallel: data chunks are compressed and sealed by worker threads and written in
//! order ([`PackWriter`]); reading is sequential ([`decode_to`]) and writes zero runs as holes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use super::error::{PagesError, Result};

/// First bytes of a packed pages file.
pub const MAGIC: [u8; 8] = *b"STASISPK";
/// Format version.
pub const VERSION: u16 = 1;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 64;
/// Bytes of a record head.
pub const RECORD_LEN: usize = 16;
/// Bytes of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// `img_version` of the inventory of a directory with packed pages.
pub const INVENTORY_MARK: u32 = 0x5354_5031;
/// CRIU's `img_version` (CRTOOLS_IMAGES_V1_1), written back by conversion.
pub const CRIU_IMG_VERSION: u32 = 2;
/// Default pages per data record (1 MiB).
pub const DEFAULT_CHUNK_PAGES: u32 = 256;
/// Largest chunk accepted from a file (16 MiB).
const MAX_CHUNK_PAGES: u32 = 4096;
const PAGE: usize = crate::images::pagemap::PAGE_SIZE as usize;

const FLAG_ZSTD: u16 = 1;
const FLAG_SEALED: u16 = 2;

/// Record kinds.
pub const KIND_ZERO: u8 = 1;
pub const KIND_RAW: u8 = 2;
pub const KIND_ZSTD: u8 = 3;
pub const KIND_END: u8 = 0x7f;

/// Name of the packed pages file of pages id `id`.
pub fn file_name(id: u32) -> String {
    format!("pages-{id}.pack.img")
}

/// The pages id of a packed file name (`pages-N.pack.img`).
pub fn parse_file_name(name: &str) -> Option<u32> {
    name.strip_prefix("pages-")?
        .strip_suffix(".pack.img")?
        .parse()
        .ok()
}

/// A 32-byte key (never printed: `Debug` shows nothing of it; zeroed on drop).
pub struct PackKey([u8; 32]);

impl std::fmt::Debug for PackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PackKey(..)")
    }
}

impl Drop for PackKey {
    fn drop(&mut self) {
        self.0.fill(0);
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl PackKey {
    /// Reads a key file: 32 raw bytes, or 64 hexadecimal digits (surrounding white space
    /// ignored).
    pub fn load(path: &Path) -> Result<PackKey> {
        let bad = |what: &str| PagesError::Key {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        let mut raw = std::fs::read(path).map_err(|e| PagesError::io("read", path, e))?;
        let mut key = [0u8; 32];
        let result = if raw.len() == 32 {
            key.copy_from_slice(&raw);
            Ok(PackKey(key))
        } else {
            let text = raw.trim_ascii();
            if text.len() != 64 || !text.iter().all(u8::is_ascii_hexdigit) {
                Err(bad(
                    "a key file holds 32 raw bytes or 64 hexadecimal digits",
                ))
            } else {
                for (i, pair) in text.chunks(2).enumerate() {
                    let s = std::str::from_utf8(pair).unwrap_or("00");
                    key[i] = u8::from_str_radix(s, 16).unwrap_or(0);
                }
                Ok(PackKey(key))
            }
        };
        raw.fill(0);
        key.fill(0);
        result
    }

    /// A key from bytes (tests, callers holding a key already).
    pub fn from_bytes(b: [u8; 32]) -> PackKey {
        PackKey(b)
    }

    pub(crate) fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

/// How pages are packed.
#[derive(Debug, Clone, Default)]
pub struct PackParams {
    /// zstd level, or no compression.
    pub zstd: Option<i32>,
    /// Seal with this key.
    pub key: Option<Arc<PackKey>>,
    /// Pages per data record (0: [`DEFAULT_CHUNK_PAGES`]).
    pub chunk_pages: u32,
    /// Worker threads (0: one per CPU, at most 8).
    pub threads: usize,
}

impl PackParams {
    /// True when pages are packed at all (else they go to plain `pages-N.img`).
    pub fn active(&self) -> bool {
        self.zstd.is_some() || self.key.is_some()
    }

    /// Parses `--compress` (`zstd` or `zstd:LEVEL`, LEVEL from -7 to 22; default 3).
    pub fn parse_compress(s: &str) -> Result<i32> {
        let bad = || {
            PagesError::Usage(format!(
                "--compress {s:?}: expected zstd or zstd:LEVEL (LEVEL from -7 to 22)"
            ))
        };
        let mut it = s.splitn(2, ':');
        if it.next() != Some("zstd") {
            return Err(bad());
        }
        match it.next() {
            None => Ok(3),
            Some(l) => match l.parse::<i32>() {
                Ok(v) if (-7..=22).contains(&v) && v != 0 => Ok(v),
                _ => Err(bad()),
            },
        }
    }

    fn chunk(&self) -> u32 {
        match self.chunk_pages {
            0 => DEFAULT_CHUNK_PAGES,
            n => n.min(MAX_CHUNK_PAGES),
        }
    }
}

/// Everything a record encoder needs (shared by the workers).
struct Codec {
    head: [u8; HEADER_LEN],
    file_id: [u8; 16],
    cipher: Option<XChaCha20Poly1305>,
}

fn nonce(file_id: &[u8; 16], index: u64) -> [u8; 24] {
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(file_id);
    n[16..].copy_from_slice(&index.to_le_bytes());
    n
}

fn record_head(kind: u8, index: u32, pages: u32, stored: u32) -> [u8; RECORD_LEN] {
    let mut h = [0u8; RECORD_LEN];
    h[0] = kind;
    h[4..8].copy_from_slice(&index.to_le_bytes());
    h[8..12].copy_from_slice(&pages.to_le_bytes());
    h[12..16].copy_from_slice(&stored.to_le_bytes());
    h
}

fn aad(file_head: &[u8; HEADER_LEN], rec: &[u8; RECORD_LEN]) -> [u8; 48 + RECORD_LEN] {
    let mut a = [0u8; 48 + RECORD_LEN];
    a[..48].copy_from_slice(&file_head[..48]);
    a[48..].copy_from_slice(rec);
    a
}

impl Codec {
    /// The bytes of one record (head and payload) holding `payload` as `kind`.
    fn record(&self, kind: u8, index: u32, pages: u32, payload: &[u8]) -> Vec<u8> {
        let extra = if self.cipher.is_some() { TAG_LEN } else { 0 };
        let stored = (payload.len() + extra) as u32;
        let head = record_head(kind, index, pages, stored);
        let mut out = Vec::with_capacity(RECORD_LEN + stored as usize);
        out.extend_from_slice(&head);
        match &self.cipher {
            Some(c) => {
                let ad = aad(&self.head, &head);
                let n = nonce(&self.file_id, u64::from(index));
                // Encryption fails only for messages beyond the cipher's limit (256 GiB).
                let sealed = c
                    .encrypt(
                        XNonce::from_slice(&n),
                        Payload {
                            msg: payload,
                            aad: &ad,
                        },
                    )
                    .unwrap_or_default();
                out.extend_from_slice(&sealed);
            }
            None => out.extend_from_slice(payload),
        }
        out
    }
}

/// Work for an encoder.
enum Job {
    Zero(u32),
    Data(Vec<u8>),
}

/// Compresses and seals one job into record bytes.
fn encode(
    codec: &Codec,
    zstd: &mut Option<zstd::bulk::Compressor<'static>>,
    index: u32,
    job: Job,
) -> std::io::Result<Vec<u8>> {
    match job {
        Job::Zero(n) => Ok(codec.record(KIND_ZERO, index, n, &[])),
        Job::Data(plain) => {
            let pages = (plain.len() / PAGE) as u32;
            if let Some(z) = zstd.as_mut() {
                let packed = z.compress(&plain)?;
                if packed.len() < plain.len() {
                    return Ok(codec.record(KIND_ZSTD, index, pages, &packed));
                }
            }
            Ok(codec.record(KIND_RAW, index, pages, &plain))
        }
    }
}

fn compressor(level: Option<i32>) -> std::io::Result<Option<zstd::bulk::Compressor<'static>>> {
    level
        .map(|l| {
            let mut c = zstd::bulk::Compressor::new(l)?;
            c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
            Ok(c)
        })
        .transpose()
}

/// Encoder threads: jobs in, records out (the writer puts them back in order).
struct Pool {
    tx: Option<crossbeam::channel::Sender<(u32, Job)>>,
    rx: crossbeam::channel::Receiver<(u32, std::io::Result<Vec<u8>>)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    in_flight: usize,
    limit: usize,
}

impl Pool {
    fn new(codec: Arc<Codec>, level: Option<i32>, n: usize) -> Pool {
        let (tx, jobs) = crossbeam::channel::bounded::<(u32, Job)>(n * 2);
        let (done, rx) = crossbeam::channel::unbounded();
        let threads = (0..n)
            .map(|_| {
                let jobs = jobs.clone();
                let done = done.clone();
                let codec = codec.clone();
                std::thread::spawn(move || {
                    let mut z = match compressor(level) {
                        Ok(z) => z,
                        Err(e) => {
                            let _ = done.send((u32::MAX, Err(e)));
                            return;
                        }
                    };
                    for (i, job) in jobs {
                        let r = encode(&codec, &mut z, i, job);
                        if done.send((i, r)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Pool {
            tx: Some(tx),
            rx,
            threads,
            in_flight: 0,
            limit: n * 3,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Writes one packed pages file from plain page bytes.
pub struct PackWriter {
    path: PathBuf,
    out: BufWriter<File>,
    codec: Arc<Codec>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    pool: Option<Pool>,
    done: BTreeMap<u32, Vec<u8>>,
    chunk_pages: u32,
    /// Data pages of the chunk being filled.
    data: Vec<u8>,
    /// A partial page carried over between writes.
    tail: Vec<u8>,
    zero_run: u32,
    next_index: u32,
    next_write: u32,
    pages: u64,
    bytes: u64,
}

impl PackWriter {
    /// Creates `dir/pages-<pages_id>.pack.img`.
    pub fn create(dir: &Path, pages_id: u32, p: &PackParams) -> Result<PackWriter> {
        let path = dir.join(file_name(pages_id));
        let f = File::create(&path).map_err(|e| PagesError::io("create", &path, e))?;
        let mut file_id = [0u8; 16];
        getrandom::fill(&mut file_id).map_err(|e| {
            PagesError::io(
                "random file id for",
                &path,
                std::io::Error::other(e.to_string()),
            )
        })?;
        let mut head = [0u8; HEADER_LEN];
        head[..8].copy_from_slice(&MAGIC);
        head[8..10].copy_from_slice(&VERSION.to_le_bytes());
        let mut flags = 0u16;
        if p.zstd.is_some() {
            flags |= FLAG_ZSTD;
        }
        if p.key.is_some() {
            flags |= FLAG_SEALED;
        }
        head[10..12].copy_from_slice(&flags.to_le_bytes());
        head[12..16].copy_from_slice(&p.chunk().to_le_bytes());
        head[16..32].copy_from_slice(&file_id);
        head[32..36].copy_from_slice(&pages_id.to_le_bytes());
        head[36..40].copy_from_slice(&p.zstd.unwrap_or(0).to_le_bytes());
        let cipher = p.key.as_ref().map(|k| k.cipher());
        if let Some(c) = &cipher {
            let tag = c
                .encrypt(
                    XNonce::from_slice(&nonce(&file_id, u64::MAX)),
                    Payload {
                        msg: &[],
                        aad: &head[..48],
                    },
                )
                .unwrap_or_default();
            head[48..64].copy_from_slice(&tag);
        }
        let codec = Arc::new(Codec {
            head,
            file_id,
            cipher,
        });
        let threads = match p.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            n => n,
        };
        let pool = (threads > 1).then(|| Pool::new(codec.clone(), p.zstd, threads));
        let zstd = compressor(p.zstd).map_err(|e| PagesError::io("zstd for", &path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&head)
            .map_err(|e| PagesError::io("write", &path, e))?;
        Ok(PackWriter {
            path,
            out,
            codec,
            zstd,
            pool,
            done: BTreeMap::new(),
            chunk_pages: p.chunk(),
            data: Vec::new(),
            tail: Vec::new(),
            zero_run: 0,
            next_index: 0,
            next_write: 0,
            pages: 0,
            bytes: HEADER_LEN as u64,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends plain page bytes (any length; pages may span calls).
    pub fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if !self.tail.is_empty() {
            let need = PAGE - self.tail.len();
            let take = need.min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() < PAGE {
                return Ok(());
            }
            let page = std::mem::take(&mut self.tail);
            self.page(&page)?;
        }
        let whole = data.len() / PAGE * PAGE;
        for page in data[..whole].chunks_exact(PAGE) {
            self.page(page)?;
        }
        self.tail.extend_from_slice(&data[whole..]);
        Ok(())
    }

    fn page(&mut self, page: &[u8]) -> Result<()> {
        self.pages += 1;
        if is_zero(page) {
            if !self.data.is_empty() {
                self.flush_data()?;
            }
            self.zero_run += 1;
            if self.zero_run == u32::MAX {
                self.flush_zero()?;
            }
            return Ok(());
        }
        if self.zero_run > 0 {
            self.flush_zero()?;
        }
        if self.data.capacity() == 0 {
            self.data.reserve_exact(self.chunk_pages as usize * PAGE);
        }
        self.data.extend_from_slice(page);
        if self.data.len() >= self.chunk_pages as usize * PAGE {
            self.flush_data()?;
        }
        Ok(())
    }

    fn flush_zero(&mut self) -> Result<()> {
        let n = std::mem::take(&mut self.zero_run);
        self.submit(Job::Zero(n))
    }

    fn flush_data(&mut self) -> Result<()> {
        let d = std::mem::take(&mut self.data);
        self.submit(Job::Data(d))
    }

    fn submit(&mut self, job: Job) -> Result<()> {
        let index = self.next_index;
        self.next_index = self
            .next_index
            .checked_add(1)
            .ok_or_else(|| PagesError::pack(&self.path, self.bytes, "too many records"))?;
        match self.pool.as_mut() {
            None => {
                let r = encode(&self.codec, &mut self.zstd, index, job)
                    .map_err(|e| PagesError::io("compress for", &self.path, e))?;
                self.done.insert(index, r);
            }
            Some(pool) => {
                let tx = pool.tx.as_ref().ok_or_else(|| {
                    PagesError::pack(&self.path, self.bytes, "encoder threads are gone")
                })?;
                tx.send((index, job)).map_err(|_| {
                    PagesError::pack(&self.path, self.bytes, "encoder threads are gone")
                })?;
                pool.in_flight += 1;
                while self.pool.as_ref().is_some_and(|p| p.in_flight > p.limit) {
                    self.receive()?;
                }
            }
        }
        self.drain()
    }

    /// Takes one finished record from the workers.
    fn receive(&mut self) -> Result<()> {
        let Some(pool) = self.pool.as_mut() else {
            return Ok(());
        };
        let (i, r) = pool
            .rx
            .recv()
            .map_err(|_| PagesError::pack(&self.path, self.bytes, "encoder threads are gone"))?;
        pool.in_flight -= 1;
        let r = r.map_err(|e| PagesError::io("compress for", &self.path, e))?;
        self.done.insert(i, r);
        Ok(())
    }

    /// Writes the finished records that are next in order.
    fn drain(&mut self) -> Result<()> {
        while let Some(r) = self.done.remove(&self.next_write) {
            self.out
                .write_all(&r)
                .map_err(|e| PagesError::io("write", &self.path, e))?;
            self.bytes += r.len() as u64;
            self.next_write += 1;
        }
        Ok(())
    }

    /// Writes the last records and the END record; returns the file size.
    pub fn finish(mut self) -> Result<u64> {
        if !self.tail.is_empty() {
            return Err(PagesError::pack(
                &self.path,
                self.bytes,
                format!("{} bytes of a partial page at the end", self.tail.len()),
            ));
        }
        if self.zero_run > 0 {
            self.flush_zero()?;
        }
        if !self.data.is_empty() {
            self.flush_data()?;
        }
        while self.pool.as_ref().is_some_and(|p| p.in_flight > 0) {
            self.receive()?;
            self.drain()?;
        }
        let mut end = [0u8; 16];
        end[..8].copy_from_slice(&self.pages.to_le_bytes());
        end[8..].copy_from_slice(&u64::from(self.next_index).to_le_bytes());
        let r = self.codec.record(KIND_END, self.next_index, 0, &end);
        self.out
            .write_all(&r)
            .map_err(|e| PagesError::io("write", &self.path, e))?;
        self.bytes += r.len() as u64;
        self.out
            .flush()
            .map_err(|e| PagesError::io("write", &self.path, e))?;
        Ok(self.bytes)
    }
}

fn is_zero(page: &[u8]) -> bool {
    // Blocks of 64 bytes OR-ed together (vectorized), stopping at the first non-zero block.
    page.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

/// What the header of a packed file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackInfo {
    pub version: u16,
    pub zstd: bool,
    pub sealed: bool,
    pub chunk_pages: u32,
    pub file_id: [u8; 16],
    pub pages_id: u32,
    pub level: i32,
}

/// One record as found in a file (its head, not its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    pub offset: u64,
    pub kind: u8,
    pub index: u32,
    pub pages: u32,
    pub stored: u32,
}

impl RecordInfo {
    /// The kind's name.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            KIND_ZERO => "ZERO",
            KIND_RAW => "RAW",
            KIND_ZSTD => "ZSTD",
            KIND_END => "END",
            _ => "?",
        }
    }
}

/// Reads records of one file in order, checking their framing.
struct Reader<R: Read> {
    path: PathBuf,
    r: R,
    head: [u8; HEADER_LEN],
    info: PackInfo,
    offset: u64,
    index: u32,
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl<R: Read> Reader<R> {
    fn new(path: &Path, mut r: R) -> Result<Self> {
        let mut head = [0u8; HEADER_LEN];
        let got = read_full(&mut r, &mut head).map_err(|e| PagesError::io("read", path, e))?;
        if got >= 8 && head[..8] != MAGIC {
            return Err(PagesError::pack(
                path,
                0,
                "not a stasis packed pages file (bad magic)",
            ));
        }
        if got < HEADER_LEN {
            return Err(PagesError::pack(
                path,
                got as u64,
                "truncated: the file ends inside its header",
            ));
        }
        let version = u16::from_le_bytes([head[8], head[9]]);
        if version != VERSION {
            return Err(PagesError::pack(
                path,
                8,
                format!("packed pages format version {version}, this stasis reads {VERSION}"),
            ));
        }
        let flags = u16::from_le_bytes([head[10], head[11]]);
        let chunk_pages = u32::from_le_bytes(head[12..16].try_into().unwrap_or_default());
        if chunk_pages == 0
            || chunk_pages > MAX_CHUNK_PAGES
            || flags & !(FLAG_ZSTD | FLAG_SEALED) != 0
        {
            return Err(PagesError::pack(path, 10, "bad header flags or chunk size"));
        }
        let info = PackInfo {
            version,
            zstd: flags & FLAG_ZSTD != 0,
            sealed: flags & FLAG_SEALED != 0,
            chunk_pages,
            file_id: head[16..32].try_into().unwrap_or_default(),
            pages_id: u32::from_le_bytes(head[32..36].try_into().unwrap_or_default()),
            level: i32::from_le_bytes(head[36..40].try_into().unwrap_or_default()),
        };
        Ok(Reader {
            path: path.to_path_buf(),
            r,
            head,
            info,
            offset: HEADER_LEN as u64,
            index: 0,
        })
    }

    fn err(&self, offset: u64, what: impl Into<String>) -> PagesError {
        PagesError::pack(&self.path, offset, what)
    }

    /// The next record and its stored bytes (None at a clean end of file).
    fn next(&mut self, payload: &mut Vec<u8>) -> Result<Option<RecordInfo>> {
        let at = self.offset;
        let mut h = [0u8; RECORD_LEN];
        let got =
            read_full(&mut self.r, &mut h).map_err(|e| PagesError::io("read", &self.path, e))?;
        if got == 0 {
            return Ok(None);
        }
        if got < RECORD_LEN {
            return Err(self.err(at, format!("truncated: record {} is cut short", self.index)));
        }
        let rec = RecordInfo {
            offset: at,
            kind: h[0],
            index: u32::from_le_bytes(h[4..8].try_into().unwrap_or_default()),
            pages: u32::from_le_bytes(h[8..12].try_into().unwrap_or_default()),
            stored: u32::from_le_bytes(h[12..16].try_into().unwrap_or_default()),
        };
        if !matches!(rec.kind, KIND_ZERO | KIND_RAW | KIND_ZSTD | KIND_END) || h[1..4] != [0; 3] {
            return Err(self.err(
                at,
                format!("record {}: unknown kind {:#x}", self.index, rec.kind),
            ));
        }
        if rec.index != self.index {
            return Err(self.err(
                at,
                format!(
                    "record {} found where record {} belongs (records reordered, removed or moved from another file)",
                    rec.index, self.index
                ),
            ));
        }
        let tag = if self.info.sealed { TAG_LEN as u64 } else { 0 };
        let max_plain = u64::from(self.info.chunk_pages) * PAGE as u64;
        let limit = match rec.kind {
            KIND_ZERO => tag,
            KIND_END => 16 + tag,
            _ => max_plain + max_plain / 8 + 1024 + tag,
        };
        let data_pages_ok = match rec.kind {
            KIND_RAW | KIND_ZSTD => rec.pages >= 1 && rec.pages <= self.info.chunk_pages,
            KIND_END => rec.pages == 0,
            _ => rec.pages >= 1,
        };
        if u64::from(rec.stored) > limit || !data_pages_ok {
            return Err(self.err(
                at,
                format!(
                    "record {}: {} pages in {} stored bytes do not fit a {} record",
                    rec.index,
                    rec.pages,
                    rec.stored,
                    rec.kind_name()
                ),
            ));
        }
        payload.clear();
        payload.resize(rec.stored as usize, 0);
        let got =
            read_full(&mut self.r, payload).map_err(|e| PagesError::io("read", &self.path, e))?;
        if got < payload.len() {
            return Err(self.err(
                at,
                format!(
                    "truncated: record {} needs {} bytes, the file ends at offset {}",
                    rec.index,
                    rec.stored,
                    at + RECORD_LEN as u64 + got as u64
                ),
            ));
        }
        self.offset += RECORD_LEN as u64 + u64::from(rec.stored);
        self.index += 1;
        Ok(Some(rec))
    }
}

#[cfg(test)]
/// Reads the header and the record heads of a packed file (no key needed: data is not
/// decoded or authenticated).
pub fn list(path: &Path) -> Result<(PackInfo, Vec<RecordInfo>)> {
    let f = File::open(path).map_err(|e| PagesError::io("open", path, e))?;
    list_from(path, BufReader::with_capacity(1 << 20, f))
}

/// [`list`] of a file's bytes from any reader (`path` names it in errors).
pub fn list_from<R: Read>(path: &Path, r: R) -> Result<(PackInfo, Vec<RecordInfo>)> {
    let mut r = Reader::new(path, r)?;
    let mut recs = Vec::new();
    let mut buf = Vec::new();
    while let Some(rec) = r.next(&mut buf)? {
        recs.push(rec);
    }
    Ok((r.info.clone(), recs))
}

/// Decodes packed file `path` into `out` (from offset 0; zero runs become holes), checking
/// every record; `pages_id`: the id its name gives (the header must agree). Returns the
/// number of plain pages.
pub fn decode_to(
    path: &Path,
    pages_id: Option<u32>,
    key: Option<&PackKey>,
    out: &File,
    out_path: &Path,
) -> Result<u64> {
    let f = File::open(path).map_err(|e| PagesError::io("open", path, e))?;
    let mut r = Reader::new(path, BufReader::with_capacity(1 << 20, f))?;
    if let Some(id) = pages_id {
        if r.info.pages_id != id {
            return Err(r.err(
                32,
                format!(
                    "this is the stream of pages-{}, found as pages-{id} (file renamed or moved)",
                    r.info.pages_id
                ),
            ));
        }
    }
    let cipher = match (r.info.sealed, key) {
        (false, _) => None,
        (true, None) => {
            return Err(PagesError::MissingKey {
                path: path.to_path_buf(),
            })
        }
        (true, Some(k)) => {
            let c = k.cipher();
            let n = nonce(&r.info.file_id, u64::MAX);
            let ok = c
                .decrypt(
                    XNonce::from_slice(&n),
                    Payload {
                        msg: &r.head[48..64],
                        aad: &r.head[..48],
                    },
                )
                .is_ok();
            if !ok {
                return Err(r.err(
                    48,
                    "wrong key: the header does not authenticate under it (or the header was altered)",
                ));
            }
            Some(c)
        }
    };
    let mut z = zstd::bulk::Decompressor::new().map_err(|e| PagesError::io("zstd for", path, e))?;
    let mut stored = Vec::new();
    let mut plain = vec![0u8; r.info.chunk_pages as usize * PAGE];
    let mut pos = 0u64;
    let mut pages = 0u64;
    loop {
        let Some(rec) = r.next(&mut stored)? else {
            return Err(r.err(
                r.offset,
                format!(
                    "truncated: the file ends after record {} without its end record",
                    r.index
                ),
            ));
        };
        let opened: &[u8] = match &cipher {
            None => &stored,
            Some(c) => {
                let head = record_head(rec.kind, rec.index, rec.pages, rec.stored);
                let ad = aad(&r.head, &head);
                let n = nonce(&r.info.file_id, u64::from(rec.index));
                let msg = c
                    .decrypt(
                        XNonce::from_slice(&n),
                        Payload {
                            msg: &stored,
                            aad: &ad,
                        },
                    )
                    .map_err(|_| {
                        r.err(
                            rec.offset,
                            format!(
                                "record {} fails authentication: tampered, reordered or moved from another file",
                                rec.index
                            ),
                        )
                    })?;
                stored = msg;
                &stored
            }
        };
        let want = rec.pages as usize * PAGE;
        let write = |data: &[u8], pos: u64| {
            out.write_all_at(data, pos)
                .map_err(|e| PagesError::io("write", out_path, e))
        };
        match rec.kind {
            KIND_ZERO => {}
            KIND_RAW => {
                if opened.len() != want {
                    return Err(r.err(
                        rec.offset,
                        format!(
                            "record {}: {} bytes for {} pages",
                            rec.index,
                            opened.len(),
                            rec.pages
                        ),
                    ));
                }
                write(opened, pos)?;
            }
            KIND_ZSTD => {
                let n = z
                    .decompress_to_buffer(opened, &mut plain[..want])
                    .map_err(|e| {
                        r.err(
                            rec.offset,
                            format!("record {} does not decompress: {e}", rec.index),
                        )
                    })?;
                if n != want {
                    return Err(r.err(
                        rec.offset,
                        format!(
                            "record {}: decompressed to {n} bytes, not {want}",
                            rec.index
                        ),
                    ));
                }
                write(&plain[..want], pos)?;
            }
            _ => {
                // END: the totals, then nothing more.
                let total = u64::from_le_bytes(
                    opened
                        .get(..8)
                        .and_then(|s| s.try_into().ok())
                        .unwrap_or_default(),
                );
                let count = u64::from_le_bytes(
                    opened
                        .get(8..16)
                        .and_then(|s| s.try_into().ok())
                        .unwrap_or_default(),
                );
                if opened.len() != 16 || total != pages || count != u64::from(rec.index) {
                    return Err(r.err(
                        rec.offset,
                        format!(
                            "end record says {total} pages in {count} records, found {pages} in {}",
                            rec.index
                        ),
                    ));
                }
                let mut more = [0u8; 1];
                if read_full(&mut r.r, &mut more).map_err(|e| PagesError::io("read", path, e))? != 0
                {
                    return Err(r.err(r.offset, "data after the end record"));
                }
                out.set_len(pos)
                    .map_err(|e| PagesError::io("size", out_path, e))?;
                return Ok(pages);
            }
        }
        pos += want as u64;
        pages += u64::from(rec.pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(zstd: bool, key: bool, threads: usize) -> PackParams {
        PackParams {
            zstd: zstd.then_some(3),
            key: key.then(|| Arc::new(PackKey::from_bytes([7; 32]))),
            chunk_pages: 4,
            threads,
        }
    }

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        for p in 0..23u32 {
            let mut page = vec![0u8; PAGE];
            if p % 5 != 3 && !(10..14).contains(&p) {
                for (i, b) in page.iter_mut().enumerate() {
                    *b = (i as u32 * 7 + p * 13) as u8 ^ (i / 64) as u8;
                }
            }
            v.extend_from_slice(&page);
        }
        v
    }

    fn round(p: &PackParams, key: Option<&PackKey>) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(d.path(), 5, p).unwrap();
        let s = sample();
        // Odd-sized writes: pages span calls.
        for c in s.chunks(3000) {
            w.write(c).unwrap();
        }
        w.finish().unwrap();
        let path = d.path().join(file_name(5));
        let out_path = d.path().join("plain");
        let out = File::create(&out_path).unwrap();
        assert_eq!(decode_to(&path, Some(5), key, &out, &out_path).unwrap(), 23);
        assert_eq!(std::fs::read(&out_path).unwrap(), s);
        (d, path)
    }

    #[test]
    fn round_trips_every_mode() {
        let k = PackKey::from_bytes([7; 32]);
        for threads in [1, 3] {
            round(&params(true, false, threads), None);
            round(&params(false, true, threads), Some(&k));
            round(&params(true, true, threads), Some(&k));
        }
        let (_d, path) = round(&params(true, true, 2), Some(&k));
        let (info, recs) = list(&path).unwrap();
        assert!(info.sealed && info.zstd && info.pages_id == 5);
        assert_eq!(recs.last().unwrap().kind, KIND_END);
        assert!(recs.iter().any(|r| r.kind == KIND_ZERO && r.pages == 4));
    }

    fn decode_err(path: &Path, key: Option<&PackKey>) -> String {
        let out_path = path.with_extension("out");
        let out = File::create(&out_path).unwrap();
        decode_to(path, Some(5), key, &out, &out_path)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn tampering_is_caught_with_the_offset() {
        let k = PackKey::from_bytes([7; 32]);
        let (_d, path) = round(&params(true, true, 2), Some(&k));
        let good = std::fs::read(&path).unwrap();
        let (_, recs) = list(&path).unwrap();
        // A flipped byte in the second record's payload.
        let mut b = good.clone();
        let at = recs[1].offset as usize + RECORD_LEN + 2;
        b[at] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let e = decode_err(&path, Some(&k));
        assert!(
            e.contains(&format!("offset {}", recs[1].offset)) && e.contains("authentication"),
            "{e}"
        );
        // Truncated.
        std::fs::write(&path, &good[..good.len() - 40]).unwrap();
        let e = decode_err(&path, Some(&k));
        assert!(e.contains("truncated"), "{e}");
        // Cut at a record boundary: no END record.
        let end = recs.last().unwrap().offset as usize;
        std::fs::write(&path, &good[..end]).unwrap();
        let e = decode_err(&path, Some(&k));
        assert!(
            e.contains("without its end record") && e.contains(&format!("offset {end}")),
            "{e}"
        );
        // Two records swapped.
        let (a, c) = (recs[0], recs[1]);
        let r0 = &good[a.offset as usize..c.offset as usize];
        let r1 = &good[c.offset as usize..recs[2].offset as usize];
        let mut b = good[..a.offset as usize].to_vec();
        b.extend_from_slice(r1);
        b.extend_from_slice(r0);
        b.extend_from_slice(&good[recs[2].offset as usize..]);
        std::fs::write(&path, &b).unwrap();
        let e = decode_err(&path, Some(&k));
        assert!(e.contains("offset 64") && e.contains("reordered"), "{e}");
        // Swapped with fixed-up indexes: authentication still fails.
        let mut b2 = b.clone();
        b2[64 + 4..64 + 8].copy_from_slice(&0u32.to_le_bytes());
        let second = 64 + r1.len();
        b2[second + 4..second + 8].copy_from_slice(&1u32.to_le_bytes());
        std::fs::write(&path, &b2).unwrap();
        let e = decode_err(&path, Some(&k));
        assert!(
            e.contains("offset 64") && e.contains("authentication"),
            "{e}"
        );
        // Wrong key, missing key.
        std::fs::write(&path, &good).unwrap();
        let e = decode_err(&path, Some(&PackKey::from_bytes([8; 32])));
        assert!(e.contains("wrong key") && e.contains("offset 48"), "{e}");
        let e = decode_err(&path, None);
        assert!(
            e.contains("encrypted") && e.contains("--encrypt-key"),
            "{e}"
        );
        // Moved to another name.
        let out_path = path.with_extension("out");
        let out = File::create(&out_path).unwrap();
        let e = decode_to(&path, Some(6), Some(&k), &out, &out_path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pages-5") && e.contains("offset 32"), "{e}");
    }

    #[test]
    fn zero_runs_cost_a_record() {
        let d = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(d.path(), 1, &params(true, false, 1)).unwrap();
        w.write(&vec![0u8; 1 << 24]).unwrap();
        let n = w.finish().unwrap();
        assert_eq!(n, (HEADER_LEN + RECORD_LEN + RECORD_LEN + 16) as u64);
    }

    #[test]
    fn key_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, [1u8; 32]).unwrap();
        assert!(PackKey::load(&p).is_ok());
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        let k = PackKey::load(&p).unwrap();
        assert_eq!(k.0, [0xab; 32]);
        assert_eq!(format!("{k:?}"), "PackKey(..)");
        std::fs::write(&p, "short").unwrap();
        assert!(PackKey::load(&p)
            .unwrap_err()
            .to_string()
            .contains("64 hexadecimal"));
        assert_eq!(PackParams::parse_compress("zstd").unwrap(), 3);
        assert_eq!(PackParams::parse_compress("zstd:19").unwrap(), 19);
        assert!(PackParams::parse_compress("gzip").is_err());
        assert!(PackParams::parse_compress("zstd:99").is_err());
        assert_eq!(parse_file_name("pages-12.pack.img"), Some(12));
    }
}
