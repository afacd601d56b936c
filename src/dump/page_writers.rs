//! Page writers: the private pages of a process are pinned into pipes while it is open
//! (the parasite vmsplices them: references, no copy), and writer threads splice them into
//! the pages image while the dumper cures that process and goes on with the next one. The
//! copy into the image, most of a dump's time, runs beside the per-process ptrace work and
//! on every core, instead of between one process's parasite commands.
//!
//! ```text
//!  dumper (the tracer thread)                         writers (one per core, up to 4)
//!  per process, per chunk of CHUNK bytes:
//!    reserve(chunk)   waits while IN_FLIGHT bytes are pinned
//!    pin_pages        parasite: SET_PIPE + DUMP_PAGES_TO per 1 MiB pipe
//!    submit(job) ───────────────────────────────────────► splice pipe → file at its offset
//!  PROT_NONE pieces: /proc/PID/mem, written at their offset now    release(chunk)
//!  cure, next process
//!  finish()  ◄──────────────────────────── every job written; the first error
//! ```
//! Offsets: the sink's pages file gets every piece at its place (splice with an explicit
//! output offset), and its file position moves past the process's pages at once, so the
//! engine sees the same file it would have after a synchronous copy.
//!
//! The tree stays frozen until [`PageWriters::finish`] returns (the engine calls it before
//! the kill or release). Kill safety is unchanged: a pipe only holds references to pages of
//! a process whose parasite is cured already, and a dumper that dies closes its pipes with
//! its descriptors. On a failure the writers drop their remaining jobs (unwritten pipes are
//! closed) and the dump fails with the first error.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use super::error::{DumpError, Result};
use super::pages::{FrozenSource, PageSource};
use super::parasite_pages::split;
use super::probe::ProcessAccess;

/// Bytes pinned per `pin_pages` request (one job).
const CHUNK: u64 = 32 << 20;
/// Most bytes pinned and not yet written (each MiB is one pipe descriptor held).
const IN_FLIGHT: u64 = 256 << 20;
/// Bytes copied per `/proc/PID/mem` read for pieces the process cannot read itself.
const COPY: usize = 1 << 20;

/// One chunk of pinned pages: pipes in order, and where their bytes go.
struct Job {
    pid: i32,
    /// The pages image (a duplicate of the sink's descriptor).
    file: File,
    pipes: Vec<OwnedFd>,
    /// (pipe index, file offset, length), in pipe order.
    segments: Vec<(usize, u64, u64)>,
    bytes: u64,
}

#[derive(Default)]
struct State {
    in_flight: u64,
    first_err: Option<DumpError>,
    /// Set on a failure or a drop: the remaining jobs are dropped unwritten.
    abort: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A writer that panicked left nothing half-updated under the lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer threads of one dump (started at the first job).
pub struct PageWriters {
    tx: Option<crossbeam::channel::Sender<Job>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    threads: usize,
}

impl Default for PageWriters {
    fn default() -> Self {
        Self::new()
    }
}

impl PageWriters {
    /// Writers for this machine: one per core, 1 to 4.
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        PageWriters {
            tx: None,
            workers: Vec::new(),
            shared: Arc::default(),
            threads,
        }
    }

    /// The first writer error, if any (the dump stops at once).
    fn failed(&self) -> Result<()> {
        match &self.shared.lock().first_err {
            Some(e) => Err(DumpError::new("pages", e.pid, e.errno, e.detail.clone())),
            None => Ok(()),
        }
    }

    /// Waits until `bytes` more may be pinned.
    fn reserve(&self, bytes: u64) -> Result<()> {
        let mut st = self.shared.lock();
        while st.first_err.is_none() && st.in_flight > 0 && st.in_flight + bytes > IN_FLIGHT {
            st = self.shared.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.first_err.is_none() {
            st.in_flight += bytes;
        }
        drop(st);
        self.failed()
    }

    /// Gives back a reservation whose pages were not pinned.
    fn unreserve(&self, bytes: u64) {
        let mut st = self.shared.lock();
        st.in_flight = st.in_flight.saturating_sub(bytes);
        self.shared.done.notify_all();
    }

    fn submit(&mut self, job: Job) -> Result<()> {
        if self.tx.is_none() {
            let (tx, rx) = crossbeam::channel::unbounded::<Job>();
            for _ in 0..self.threads {
                let rx = rx.clone();
                let shared = Arc::clone(&self.shared);
                self.workers
                    .push(std::thread::spawn(move || write_jobs(&rx, &shared)));
            }
            self.tx = Some(tx);
        }
        if let Some(tx) = &self.tx {
            // The workers only stop when the sender is dropped: send cannot fail here.
            let _ = tx.send(job);
        }
        self.failed()
    }

    /// Waits for every job; the first error. Called before the tree is killed or released.
    pub fn finish(&mut self) -> Result<()> {
        self.tx = None;
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                let mut st = self.shared.lock();
                st.first_err.get_or_insert_with(|| {
                    DumpError::new("pages", 0, None, "page writer panicked")
                });
            }
        }
        self.failed()
    }
}

impl Drop for PageWriters {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.shared.lock().abort = true;
            self.tx = None;
            for w in self.workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

fn write_jobs(rx: &crossbeam::channel::Receiver<Job>, shared: &Shared) {
    for job in rx.iter() {
        let skip = {
            let st = shared.lock();
            st.abort || st.first_err.is_some()
        };
        let r = if skip { Ok(()) } else { write_job(&job) };
        let mut st = shared.lock();
        st.in_flight = st.in_flight.saturating_sub(job.bytes);
        if let Err(e) = r {
            st.first_err.get_or_insert(e);
        }
        shared.done.notify_all();
    }
}

fn write_job(job: &Job) -> Result<()> {
    for &(pipe, off, len) in &job.segments {
        crate::sys::channel::splice_exact_at(
            job.pipes[pipe].as_fd(),
            job.file.as_fd(),
            len as usize,
            off,
        )
        .map_err(|e| DumpError::sys("pages", job.pid, e))?;
    }
    Ok(())
}

/// The frozen process as a page source whose pages go to the writers when the sink offers
/// its file (else, or when the probe cannot pin, a plain [`FrozenSource`]).
pub struct DeferredSource<'a> {
    pub probe: &'a mut dyn ProcessAccess,
    /// Readable mappings (start, end; sorted).
    pub readable: &'a [(u64, u64)],
    pub writers: &'a mut PageWriters,
    pub pid: i32,
    /// Set once pinning failed or the probe cannot pin: the rest is copied at once.
    pub unpinnable: bool,
}

impl DeferredSource<'_> {
    fn sync(&mut self) -> FrozenSource<'_> {
        FrozenSource {
            probe: &mut *self.probe,
            readable: self.readable,
        }
    }

    /// Copies the readable `pieces` (address, length, file offset) now, through the parasite
    /// (the probe could not pin them).
    fn copy_now(&mut self, pieces: &[(u64, u64, u64)], out: &mut File) -> Result<()> {
        for &(base, len, off) in pieces {
            out.seek(SeekFrom::Start(off))
                .map_err(|e| DumpError::io("pages", self.pid, "seek pages image", e))?;
            self.sync().copy_to(&[(base, len)], out)?;
        }
        Ok(())
    }

    /// Pins `pieces` (address, length, file offset; readable, in order) and hands them to
    /// the writers.
    fn pin(&mut self, pieces: &[(u64, u64, u64)], out: &mut File) -> Result<()> {
        let bytes: u64 = pieces.iter().map(|p| p.1).sum();
        if bytes == 0 {
            return Ok(());
        }
        self.writers.reserve(bytes)?;
        let iovs: Vec<(u64, u64)> = pieces.iter().map(|p| (p.0, p.1)).collect();
        let pinned = if self.unpinnable {
            Ok(None)
        } else {
            self.probe.pin_pages(&iovs)
        };
        let pipes = match pinned {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.writers.unreserve(bytes);
                self.unpinnable = true;
                return self.copy_now(pieces, out);
            }
            Err(e) if e.errno != Some(libc::ESRCH) => {
                // The copy through the parasite (or /proc/PID/mem) takes over.
                tracing::warn!("pinning pages of {}: {e}; copying them now", self.pid);
                self.writers.unreserve(bytes);
                self.unpinnable = true;
                return self.copy_now(pieces, out);
            }
            Err(e) => {
                self.writers.unreserve(bytes);
                return Err(e);
            }
        };
        let job = match job(self.pid, pieces, pipes, out) {
            Ok(j) => j,
            Err(e) => {
                self.writers.unreserve(bytes);
                return Err(e);
            }
        };
        self.writers.submit(job)
    }
}

/// The job writing `pipes` (each with its bytes, in order) as `pieces`.
fn job(
    pid: i32,
    pieces: &[(u64, u64, u64)],
    pipes: Vec<(OwnedFd, u64)>,
    out: &File,
) -> Result<Job> {
    let mut segments = Vec::new();
    let mut it = pieces.iter().map(|&(_, len, off)| (len, off));
    let mut cur = it.next();
    for (i, &(_, mut left)) in pipes.iter().enumerate() {
        while left > 0 {
            let Some((len, off)) = cur.as_mut() else {
                return Err(DumpError::new(
                    "pages",
                    pid,
                    None,
                    "more pinned bytes than asked",
                ));
            };
            let n = (*len).min(left);
            segments.push((i, *off, n));
            *len -= n;
            *off += n;
            left -= n;
            if *len == 0 {
                cur = it.next();
            }
        }
    }
    if cur.is_some() {
        return Err(DumpError::new(
            "pages",
            pid,
            None,
            "fewer pinned bytes than asked",
        ));
    }
    let bytes = pieces.iter().map(|p| p.1).sum();
    let file = out
        .try_clone()
        .map_err(|e| DumpError::io("pages", pid, "duplicate the pages image", e))?;
    Ok(Job {
        pid,
        file,
        pipes: pipes.into_iter().map(|p| p.0).collect(),
        segments,
        bytes,
    })
}

impl PageSource for DeferredSource<'_> {
    fn copy_to(&mut self, regions: &[(u64, u64)], out: &mut File) -> Result<u64> {
        self.sync().copy_to(regions, out)
    }

    fn copy_to_file(&mut self, regions: &[(u64, u64)], out: &mut File) -> Result<u64> {
        let pid = self.pid;
        let io = |what: &str, e| DumpError::io("pages", pid, what, e);
        let start = out
            .stream_position()
            .map_err(|e| io("position of the pages image", e))?;
        let mut at = start;
        // Readable pieces waiting to be pinned: address, length, file offset.
        let mut chunk: Vec<(u64, u64, u64)> = Vec::new();
        let mut chunk_bytes = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        for &(rstart, rlen) in regions {
            for (base, len, readable) in split(rstart, rstart + rlen, self.readable) {
                if !readable {
                    // Not readable by the process itself: read through /proc/PID/mem now.
                    buf.resize(COPY.min(len as usize), 0);
                    let mut done = 0u64;
                    while done < len {
                        let n = (len - done).min(buf.len() as u64) as usize;
                        self.probe.read_memory(base + done, &mut buf[..n])?;
                        out.write_all_at(&buf[..n], at + done)
                            .map_err(|e| io("write pages image", e))?;
                        done += n as u64;
                    }
                    at += len;
                    continue;
                }
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(CHUNK - chunk_bytes);
                    chunk.push((base + done, n, at + done));
                    chunk_bytes += n;
                    done += n;
                    if chunk_bytes == CHUNK {
                        self.pin(&chunk, out)?;
                        chunk.clear();
                        chunk_bytes = 0;
                    }
                }
                at += len;
            }
        }
        self.pin(&chunk, out)?;
        out.seek(SeekFrom::Start(at))
            .map_err(|e| io("position of the pages image", e))?;
        Ok(at - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_map_onto_pieces_in_order() {
        let pieces = [(0x1000, 0x3000, 0), (0x8000, 0x1000, 0x4000)];
        let f = File::open("/dev/null").unwrap();
        let pair = || crate::sys::channel::pipe().unwrap().0;
        let pipes = vec![(pair(), 0x2000), (pair(), 0x2000)];
        let j = job(1, &pieces, pipes, &f).unwrap();
        assert_eq!(
            j.segments,
            vec![(0, 0, 0x2000), (1, 0x2000, 0x1000), (1, 0x4000, 0x1000)]
        );
        assert_eq!(j.bytes, 0x4000);
        let short = vec![(pair(), 0x1000)];
        assert!(job(1, &pieces, short, &f).is_err());
    }
}
