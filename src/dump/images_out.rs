//! Writing image files: the only place in the dump engine that knows the on-disk framing.
//!
//! Entries are built as JSON-like trees keyed by the proto field names (the same keys crit
//! shows), then encoded with the message descriptors of the images crate
//! (`stasis_images::DESCRIPTOR_SET`) through prost-reflect. This keeps the collectors
//! independent of generated struct layouts and lets the tests compare entries with crit's JSON
//! of CRIU's own images key by key.
//!
//! ```text
//!  IMG:  u32 0x54564319 | u32 image magic | { u32 len | entry bytes [| raw payload] }*
//!  inventory.img: u32 inventory magic | entries (no common head)
//!  stats-dump:    u32 0x55105940 (service) | u32 stats magic | entries
//!  pages-N.img:   raw pages, 4096 bytes each, in pagemap order
//! ```
//! Files are not fsynced one by one: [`ImageDir::finish`] waits for the spooled files (core
//! images are built and written by worker threads while the tracer keeps working) and then
//! runs one `syncfs` on the images directory, which flushes every file and the directory
//! itself. A dump reports success only after that.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, Value as PValue,
};
use serde_json::Value;

/// Head magic of ordinary images.
pub const HEAD_IMG: u32 = 0x5456_4319;
/// Head magic of service images (stats).
pub const HEAD_SERVICE: u32 = 0x5510_5940;

/// One kind of image file: its magic, message and how its name is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageKind {
    pub magic: u32,
    pub head: Option<u32>,
    pub message: &'static str,
}

macro_rules! kinds {
    ($($name:ident = $magic:expr, $head:expr, $msg:expr;)*) => {
        $(#[allow(missing_docs)] pub const $name: ImageKind = ImageKind { magic: $magic, head: $head, message: $msg };)*
    };
}

// Magic numbers are format facts (the second u32 of CRIU's files of each kind).
kinds! {
    INVENTORY = 0x5831_3116, None, "inventory_entry";
    PSTREE = 0x5027_3030, Some(HEAD_IMG), "pstree_entry";
    CORE = 0x5505_3847, Some(HEAD_IMG), "core_entry";
    MM = 0x5749_2820, Some(HEAD_IMG), "mm_entry";
    PAGEMAP = 0x5608_4025, Some(HEAD_IMG), "pagemap_entry";
    FILES = 0x5630_3138, Some(HEAD_IMG), "file_entry";
    FDINFO = 0x5621_3732, Some(HEAD_IMG), "fdinfo_entry";
    FS = 0x5140_3912, Some(HEAD_IMG), "fs_entry";
    IDS = 0x5443_2030, Some(HEAD_IMG), "task_kobj_ids_entry";
    REMAP_FPATH = 0x5913_3954, Some(HEAD_IMG), "remap_file_path_entry";
    GHOST_FILE = 0x5258_3605, Some(HEAD_IMG), "ghost_file_entry";
    MEMFD_INODE = 0x4845_3499, Some(HEAD_IMG), "memfd_inode_entry";
    PIPES_DATA = 0x5645_3709, Some(HEAD_IMG), "pipe_data_entry";
    FIFO_DATA = 0x5933_3054, Some(HEAD_IMG), "pipe_data_entry";
    FILE_LOCKS = 0x5432_3616, Some(HEAD_IMG), "file_lock_entry";
    SECCOMP = 0x6441_3049, Some(HEAD_IMG), "seccomp_entry";
    CGROUP = 0x5938_3330, Some(HEAD_IMG), "cgroup_entry";
    TIMENS = 0x4311_4433, Some(HEAD_IMG), "timens_entry";
    STATS = 0x5709_3306, Some(HEAD_SERVICE), "stats_entry";
}

/// Errors of image writing.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encode {message} for {path}: {why}")]
    Encode {
        message: String,
        path: PathBuf,
        why: String,
    },
}

impl ImageError {
    /// The errno behind the failure, if it was an I/O error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ImageError::Io { source, .. } => source.raw_os_error(),
            ImageError::Encode { .. } => None,
        }
    }
}

fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: std::sync::OnceLock<Result<DescriptorPool, String>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(stasis_images::DESCRIPTOR_SET).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| e.clone())
}

/// The descriptor of message `name` (package `criu`).
pub fn descriptor(name: &str) -> Result<MessageDescriptor, String> {
    pool()?
        .get_message_by_name(&format!("criu.{name}"))
        .ok_or_else(|| format!("message criu.{name} is not defined by the images crate"))
}

fn num_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_i64().map(|x| x as u64))
}

fn num_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_u64().map(|x| x as i64))
}

fn scalar(kind: &Kind, v: &Value, field: &str) -> Result<PValue, String> {
    let bad = || format!("field {field}: value {v} does not fit {kind:?}");
    Ok(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            PValue::I32(num_i64(v).ok_or_else(bad)? as i32)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(num_i64(v).ok_or_else(bad)?),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(num_u64(v).ok_or_else(bad)? as u32),
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(num_u64(v).ok_or_else(bad)?),
        Kind::Bool => PValue::Bool(v.as_bool().ok_or_else(bad)?),
        Kind::Float => PValue::F32(v.as_f64().ok_or_else(bad)? as f32),
        Kind::Double => PValue::F64(v.as_f64().ok_or_else(bad)?),
        Kind::String => PValue::String(v.as_str().ok_or_else(bad)?.to_string()),
        Kind::Bytes => match v {
            Value::Array(a) => PValue::Bytes(
                a.iter()
                    .map(|b| b.as_u64().unwrap_or(0) as u8)
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            Value::String(s) => {
                use base64::Engine as _;
                PValue::Bytes(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| format!("field {field}: {e}"))?
                        .into(),
                )
            }
            _ => return Err(bad()),
        },
        Kind::Enum(e) => match v {
            Value::String(s) => {
                PValue::EnumNumber(e.get_value_by_name(s).ok_or_else(bad)?.number())
            }
            _ => PValue::EnumNumber(num_i64(v).ok_or_else(bad)? as i32),
        },
        Kind::Message(m) => PValue::Message(to_dynamic(m, v)?),
    })
}

/// Builds a dynamic message of type `desc` from a tree keyed by field names.
pub fn to_dynamic(desc: &MessageDescriptor, v: &Value) -> Result<DynamicMessage, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{}: expected an object", desc.name()))?;
    let mut msg = DynamicMessage::new(desc.clone());
    for (k, val) in obj {
        let field = desc
            .get_field_by_name(k)
            .ok_or_else(|| format!("{}: no field {k}", desc.name()))?;
        let kind = field.kind();
        let pv = if field.is_list() {
            let arr = val
                .as_array()
                .ok_or_else(|| format!("{}.{k}: expected an array", desc.name()))?;
            PValue::List(
                arr.iter()
                    .map(|x| scalar(&kind, x, k))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            scalar(&kind, val, k)?
        };
        msg.try_set_field(&field, pv)
            .map_err(|e| format!("{}.{k}: {e}", desc.name()))?;
    }
    Ok(msg)
}

/// Encodes one entry of message `name`.
pub fn encode(name: &str, v: &Value) -> Result<Vec<u8>, String> {
    let d = descriptor(name)?;
    let m = to_dynamic(&d, v)?;
    debug_assert_eq!(m.descriptor().name(), name);
    Ok(m.encode_to_vec())
}

/// Work for a writer thread: builds and writes one or more files, returns the bytes
/// written.
type Job = Box<dyn FnOnce() -> Result<u64, ImageError> + Send>;
/// Files per batch sent to the workers (one wake-up per batch, not per file).
const SPOOL_BATCH: usize = 64;

/// Writes `data` as the whole file `path`.
fn write_whole(path: PathBuf, data: &[u8]) -> Result<u64, ImageError> {
    std::fs::write(&path, data)
        .map(|_| data.len() as u64)
        .map_err(|source| ImageError::Io { path, source })
}

/// Worker threads writing whole files ([`ImageDir::spool`]).
struct Spool {
    tx: Option<crossbeam::channel::Sender<Vec<Job>>>,
    workers: Vec<std::thread::JoinHandle<Result<u64, ImageError>>>,
}

impl Spool {
    fn new(workers: usize) -> Self {
        let (tx, rx) = crossbeam::channel::bounded::<Vec<Job>>(4096);
        let workers = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut bytes = 0u64;
                    let mut first: Option<ImageError> = None;
                    for job in rx.into_iter().flatten() {
                        if first.is_some() {
                            continue;
                        }
                        match job() {
                            Ok(n) => bytes += n,
                            Err(e) => first = Some(e),
                        }
                    }
                    first.map_or(Ok(bytes), Err)
                })
            })
            .collect();
        Spool {
            tx: Some(tx),
            workers,
        }
    }

    /// Waits for every job; the bytes written, or the first failure.
    fn join(&mut self) -> Result<u64, ImageError> {
        self.tx = None;
        let mut bytes = 0;
        let mut first = None;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(Ok(n)) => bytes += n,
                Ok(Err(e)) => {
                    first.get_or_insert(e);
                }
                Err(_) => {
                    first.get_or_insert(ImageError::Io {
                        path: PathBuf::new(),
                        source: std::io::Error::other("image writer thread panicked"),
                    });
                }
            }
        }
        first.map_or(Ok(bytes), Err)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// The bytes of a whole image file of `kind` with `entries` (for [`ImageDir::spool`]).
pub fn file_bytes(kind: ImageKind, entries: &[Value]) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    if let Some(h) = kind.head {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out.extend_from_slice(&kind.magic.to_le_bytes());
    for e in entries {
        let bytes = encode(kind.message, e).map_err(|why| ImageError::Encode {
            message: kind.message.to_string(),
            path: PathBuf::new(),
            why,
        })?;
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// The bytes of a one-entry image file of `kind` holding `entry`, a typed (prost) message,
/// framed like [`file_bytes`]: for the images built as `pb` structs (core, mm).
pub fn typed_file_bytes(kind: ImageKind, entry: &impl prost::Message) -> Vec<u8> {
    let len = entry.encoded_len();
    let mut out = Vec::with_capacity(12 + len);
    if let Some(h) = kind.head {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out.extend_from_slice(&kind.magic.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    entry.encode_raw(&mut out);
    out
}

/// An image directory being written: remembers every file; [`ImageDir::finish`] waits for
/// the spooled ones and syncs the file system once.
pub struct ImageDir {
    dir: PathBuf,
    written: Vec<PathBuf>,
    bytes: u64,
    spool: Option<Spool>,
    /// Spooled jobs not yet handed to the workers.
    batch: Vec<Job>,
}

impl ImageDir {
    pub fn new(dir: &Path) -> Self {
        ImageDir {
            dir: dir.to_path_buf(),
            written: Vec::new(),
            bytes: 0,
            spool: None,
            batch: Vec::new(),
        }
    }

    /// Writes file `name` in a worker thread with the bytes `build` returns (built there
    /// too); failures are reported by [`ImageDir::finish`].
    pub fn spool(
        &mut self,
        name: &str,
        build: impl FnOnce() -> Result<Vec<u8>, ImageError> + Send + 'static,
    ) {
        let path = self.dir.join(name);
        self.written.push(path.clone());
        self.batch
            .push(Box::new(move || write_whole(path, &build()?)));
        if self.batch.len() >= SPOOL_BATCH {
            self.flush_batch();
        }
    }

    /// [`ImageDir::spool`] for many files at once: file `name` of each item gets the bytes
    /// `build` makes of its value, in a worker thread. The items travel in chunks (one
    /// allocation per chunk, not per file), so the caller hands over thousands of files
    /// (a core image per thread) in a few microseconds.
    pub fn spool_each<T: Send + 'static>(
        &mut self,
        items: Vec<(String, T)>,
        build: impl Fn(T) -> Result<Vec<u8>, ImageError> + Send + Sync + 'static,
    ) {
        let build = std::sync::Arc::new(build);
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let chunk: Vec<(PathBuf, T)> = items
                .by_ref()
                .take(SPOOL_BATCH)
                .map(|(name, t)| (self.dir.join(name), t))
                .collect();
            self.written.extend(chunk.iter().map(|(p, _)| p.clone()));
            let build = build.clone();
            self.batch.push(Box::new(move || {
                let mut n = 0;
                for (path, t) in chunk {
                    n += write_whole(path, &build(t)?)?;
                }
                Ok(n)
            }));
            self.flush_batch();
        }
    }

    /// Hands the spooled files gathered so far to the workers.
    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let spool = self.spool.get_or_insert_with(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            Spool::new(n.clamp(1, 2))
        });
        if let Some(tx) = &spool.tx {
            // The workers only stop when the sender is dropped: send cannot fail here.
            let _ = tx.send(batch);
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Names of the files written so far.
    pub fn files(&self) -> &[PathBuf] {
        &self.written
    }

    /// Total bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// `dir/name` for a plain file name (no '/', not `.` or `..`): whatever the names are
    /// made of, an image is never written outside the images directory.
    fn path_of(&self, name: &str) -> Result<PathBuf, ImageError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(ImageError::Io {
                path: self.dir.join(name),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an image name must be a plain file name",
                ),
            });
        }
        Ok(self.dir.join(name))
    }

    /// Creates `name` and writes its magic(s).
    pub fn create(&mut self, name: &str, kind: ImageKind) -> Result<ImageFile, ImageError> {
        let path = self.path_of(name)?;
        let f = File::create(&path).map_err(Self::io(&path))?;
        let mut w = BufWriter::with_capacity(1 << 16, f);
        if let Some(h) = kind.head {
            w.write_all(&h.to_le_bytes()).map_err(Self::io(&path))?;
        }
        w.write_all(&kind.magic.to_le_bytes())
            .map_err(Self::io(&path))?;
        self.written.push(path.clone());
        Ok(ImageFile {
            path,
            w,
            kind,
            bytes: 8,
        })
    }

    /// Writes a whole image with the given entries.
    pub fn write_all(
        &mut self,
        name: &str,
        kind: ImageKind,
        entries: &[Value],
    ) -> Result<(), ImageError> {
        let mut f = self.create(name, kind)?;
        for e in entries {
            f.entry(e)?;
        }
        self.bytes += f.finish()?;
        Ok(())
    }

    /// Creates a raw file (pages-N.img).
    pub fn create_raw(&mut self, name: &str) -> Result<RawFile, ImageError> {
        let path = self.path_of(name)?;
        let f = File::create(&path).map_err(Self::io(&path))?;
        self.written.push(path.clone());
        Ok(RawFile {
            path,
            w: BufWriter::with_capacity(1 << 20, f),
            bytes: 0,
        })
    }

    /// Accounts files written outside this `ImageDir` into its directory (the page sink's).
    pub fn adopt(&mut self, files: &[PathBuf], bytes: u64) {
        self.written.extend(files.iter().cloned());
        self.bytes += bytes;
    }

    /// Accounts bytes of a finished file.
    pub fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
    }

    /// Waits for the spooled files, then `syncfs` on the directory: every file written
    /// through this `ImageDir` (and the directory) is on stable storage when this returns Ok.
    pub fn finish(&mut self) -> Result<(), ImageError> {
        self.flush_batch();
        if let Some(mut s) = self.spool.take() {
            self.bytes += s.join()?;
        }
        let d = File::open(&self.dir).map_err(Self::io(&self.dir))?;
        nix::unistd::syncfs(&d)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
            .map_err(Self::io(&self.dir))
    }
}

/// One framed image file being written.
pub struct ImageFile {
    path: PathBuf,
    w: BufWriter<File>,
    kind: ImageKind,
    bytes: u64,
}

impl ImageFile {
    /// Appends an entry of this file's message type.
    pub fn entry(&mut self, v: &Value) -> Result<(), ImageError> {
        self.entry_as(self.kind.message, v)
    }

    /// Appends an entry of another message type (pagemap head, ghost chunks).
    pub fn entry_as(&mut self, message: &str, v: &Value) -> Result<(), ImageError> {
        let bytes = encode(message, v).map_err(|why| ImageError::Encode {
            message: message.to_string(),
            path: self.path.clone(),
            why,
        })?;
        let len = u32::try_from(bytes.len()).map_err(|_| ImageError::Encode {
            message: message.to_string(),
            path: self.path.clone(),
            why: "entry larger than 4 GiB".into(),
        })?;
        self.w
            .write_all(&len.to_le_bytes())
            .map_err(self.io_owned())?;
        self.w.write_all(&bytes).map_err(self.io_owned())?;
        self.bytes += 4 + bytes.len() as u64;
        Ok(())
    }

    fn io_owned(&self) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = self.path.clone();
        move |source| ImageError::Io { path, source }
    }

    /// Appends raw payload bytes after the last entry (ghost chunk data, pipe data).
    pub fn payload(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.w.write_all(data).map_err(self.io_owned())?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Flushes and closes (synced by [`ImageDir::finish`]); returns the file size.
    pub fn finish(self) -> Result<u64, ImageError> {
        let path = self.path.clone();
        self.w.into_inner().map_err(|e2| ImageError::Io {
            path,
            source: e2.into_error(),
        })?;
        Ok(self.bytes)
    }
}

/// A raw (unframed) file such as `pages-N.img`.
pub struct RawFile {
    path: PathBuf,
    w: BufWriter<File>,
    bytes: u64,
}

impl RawFile {
    pub fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.w.write_all(data).map_err(|source| ImageError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The underlying file, for splicing into it (flushes buffered data first).
    pub fn file(&mut self) -> Result<&mut File, ImageError> {
        self.w.flush().map_err(|source| ImageError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.w.get_mut())
    }

    /// Adds bytes written directly to [`RawFile::file`].
    pub fn account(&mut self, n: u64) {
        self.bytes += n;
    }

    /// Flushes and closes (synced by [`ImageDir::finish`]); returns the size.
    pub fn finish(self) -> Result<u64, ImageError> {
        let path = self.path.clone();
        self.w.into_inner().map_err(|e| ImageError::Io {
            path,
            source: e.into_error(),
        })?;
        Ok(self.bytes)
    }
}
