//! Writing image files: the only place in the dump engine that knows the on-disk framing.
//!
//! Entries are the images crate's typed messages ([`stasis_images::pb`]), framed by its
//! writer ([`stasis_images::framing::ImageWriter`]), which also checks every raw payload
//! against the size its entry announces.
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

use prost::Message;

pub use stasis_images::magic::ImageKind;

// The kinds the dump writes, by short name (magics, heads and messages are the images
// crate's table).
pub const INVENTORY: ImageKind = ImageKind::Inventory;
pub const PSTREE: ImageKind = ImageKind::Pstree;
pub const CORE: ImageKind = ImageKind::Core;
pub const MM: ImageKind = ImageKind::Mm;
pub const FILES: ImageKind = ImageKind::Files;
pub const FDINFO: ImageKind = ImageKind::Fdinfo;
pub const FS: ImageKind = ImageKind::Fs;
pub const IDS: ImageKind = ImageKind::Ids;
pub const REMAP_FPATH: ImageKind = ImageKind::RemapFpath;
pub const GHOST_FILE: ImageKind = ImageKind::GhostFile;
pub const MEMFD_INODE: ImageKind = ImageKind::MemfdInode;
pub const PIPES_DATA: ImageKind = ImageKind::PipesData;
pub const FIFO_DATA: ImageKind = ImageKind::FifoData;
pub const FILE_LOCKS: ImageKind = ImageKind::FileLocks;
pub const SECCOMP: ImageKind = ImageKind::Seccomp;
pub const CGROUP: ImageKind = ImageKind::Cgroup;
pub const TIMENS: ImageKind = ImageKind::Timens;
pub const STATS: ImageKind = ImageKind::Stats;

/// Errors of image writing.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] stasis_images::error::ImageError),
}

impl ImageError {
    /// The errno behind the failure, if it was an I/O error.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ImageError::Io { source, .. } => source.raw_os_error(),
            ImageError::Write(stasis_images::error::ImageError::Io { source, .. }) => {
                source.raw_os_error()
            }
            ImageError::Write(_) => None,
        }
    }
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

/// The bytes of a one-entry image file of `kind` holding `entry` (for [`ImageDir::spool`]:
/// core, mm).
pub fn file_bytes<M: Message>(kind: ImageKind, entry: &M) -> Vec<u8> {
    stasis_images::framing::encode_entries(kind, std::slice::from_ref(entry))
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
        let w = BufWriter::with_capacity(1 << 16, f);
        let file = stasis_images::error::FileName::path(&path);
        let w = stasis_images::framing::ImageWriter::new(w, kind, file)?;
        self.written.push(path.clone());
        Ok(ImageFile {
            path,
            w,
            bytes: stasis_images::framing::head_bytes(kind).len() as u64,
        })
    }

    /// Writes a whole image with the given entries.
    pub fn write_all<M: Message>(
        &mut self,
        name: &str,
        kind: ImageKind,
        entries: &[M],
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

/// One framed image file being written (through the images crate's writer, which checks
/// each payload against its entry).
pub struct ImageFile {
    path: PathBuf,
    w: stasis_images::framing::ImageWriter<BufWriter<File>>,
    bytes: u64,
}

impl ImageFile {
    /// Appends the next entry (its message is the kind's for that position: e.g. a ghost
    /// file's header, then its chunks).
    pub fn entry<M: Message>(&mut self, entry: &M) -> Result<(), ImageError> {
        self.write(entry, None)
    }

    /// Appends the next entry with the raw payload it announces (ghost chunk data, pipe data).
    pub fn entry_with_payload<M: Message>(
        &mut self,
        entry: &M,
        data: &[u8],
    ) -> Result<(), ImageError> {
        self.write(entry, Some(data))
    }

    fn write<M: Message>(&mut self, entry: &M, extra: Option<&[u8]>) -> Result<(), ImageError> {
        let bytes = entry.encode_to_vec();
        self.w.write_entry(&bytes, extra)?;
        self.bytes += 4 + bytes.len() as u64 + extra.map_or(0, |x| x.len() as u64);
        Ok(())
    }

    /// Flushes and closes (synced by [`ImageDir::finish`]); returns the file size.
    pub fn finish(self) -> Result<u64, ImageError> {
        let w = self.w.finish()?;
        w.into_inner().map_err(|e| ImageError::Io {
            path: self.path,
            source: e.into_error(),
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
