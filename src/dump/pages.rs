//! Memory contents: `pagemap-PID.img` + `pages-N.img` for private memory, and
//! `pagemap-shmem-SHMID.img` + `pages-N.img` for shared memory objects.
//!
//! ```text
//!  pagemap-PID.img: pagemap_head {pages_id N}
//!                   pagemap_entry {vaddr, nr_pages, flags PE_PRESENT[|PE_LAZY] | PE_PARENT} ...
//!  pages-N.img:     the pages of every PE_PRESENT entry, in entry order, 4096 bytes each
//!                   (PE_PARENT: the pages are in the parent image, see `dirty::parent`)
//! ```
//! Which pages: anonymous private VMAs — present or swapped pages (PE_LAZY: a lazy restore may
//! fault them in later); file private VMAs — only pages that stopped being file pages (COW);
//! the vDSO — every page, present or not (CRIU's restore parses the vDSO's ELF from the
//! pages, so a vDSO the task never touched must be there whole); vvar, vsyscall and
//! MADV_DONTDUMP areas — none. Adjacent pages with equal flags share one entry, across VMA boundaries.
//!
//! The dump's end of the page pipeline ([`crate::pages`]):
//!
//! ```text
//!  plan(pid, vmas) ─► runs ─┐
//!                           ├─► send(sink, target, runs, source)
//!  PageSource ──────────────┘     sink offers a file (local plain): every entry, then one
//!   FrozenSource (parasite          copy_to(all present regions, file)  (splice, no copy)
//!    vmsplice / read_memory)      else: present regions in batches of 16 MiB
//!   ShmemSource (object file)       copy_to(batch, memfd) ─► per run: entry, pages(bytes)
//! ```
//! Another source (pages dirtied since a parent, `process_vm_readv` after the tree runs
//! again) implements [`PageSource`]; runs with `PE_PARENT` (or without `PE_PRESENT`) go out as
//! entries without data.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::collect_files::Shmem;
use super::error::{DumpError, Result};
use super::mm::{PageClass, VmaOut};
use super::probe::ProcessAccess;
use crate::pages::{PageSink, PagesError, Target};
use crate::proc::pagemap::{PagemapReader, PAGE_SIZE, PM_FILE, PM_PRESENT, PM_SWAP};

pub use crate::pages::{Run, PE_LAZY, PE_PARENT, PE_PRESENT};

/// Pages copied per read of task memory.
const COPY_PAGES: usize = 256;
/// Most bytes staged per batch when the sink takes bytes rather than a splice.
const STAGE_BYTES: u64 = 16 << 20;

/// Page counters for `stats-dump`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageStats {
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    pub shpages_scanned: u64,
    pub shpages_written: u64,
}

/// Where the pages of one pagemap come from: the head of the page pipeline
/// ([`crate::pages`]). A source copies pages, it does not choose them: the runs it is asked
/// for come from [`plan`] (or, for an incremental dump, from a dirty-page tracker).
pub trait PageSource {
    /// Writes the pages of `regions` (address, length; page aligned; in order) to `out` at its
    /// file position; returns the bytes written (the sum of the lengths).
    fn copy_to(&mut self, regions: &[(u64, u64)], out: &mut File) -> Result<u64>;
}

/// The frozen process: the parasite's vmsplice when the probe has one, else reads of its
/// memory.
pub struct FrozenSource<'a> {
    pub probe: &'a mut dyn ProcessAccess,
    /// Readable mappings (start, end; sorted).
    pub readable: &'a [(u64, u64)],
}

impl PageSource for FrozenSource<'_> {
    fn copy_to(&mut self, regions: &[(u64, u64)], out: &mut File) -> Result<u64> {
        if let Some(n) = self.probe.dump_pages(regions, self.readable, out)? {
            return Ok(n);
        }
        let mut buf = vec![0u8; COPY_PAGES * PAGE_SIZE as usize];
        let mut total = 0;
        for &(base, len) in regions {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                self.probe.read_memory(base + done, &mut buf[..n])?;
                std::io::Write::write_all(out, &buf[..n])
                    .map_err(|e| DumpError::io("pages", 0, "stage pages", e))?;
                done += n as u64;
            }
            total += len;
        }
        Ok(total)
    }
}

/// A shared memory object's file: regions are offsets in the object; the partial last page
/// reads short and is padded with zeroes.
pub struct ShmemSource<'a> {
    pub file: &'a File,
    pub path: &'a std::path::Path,
}

impl PageSource for ShmemSource<'_> {
    fn copy_to(&mut self, regions: &[(u64, u64)], out: &mut File) -> Result<u64> {
        let io = |e| {
            DumpError::io(
                "pages",
                0,
                &format!("read shmem {}", self.path.display()),
                e,
            )
        };
        let mut buf = vec![0u8; COPY_PAGES * PAGE_SIZE as usize];
        let mut total = 0;
        for &(base, len) in regions {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                let b = &mut buf[..n];
                b.fill(0);
                let mut got = 0usize;
                while got < n {
                    let k = self
                        .file
                        .read_at(&mut b[got..], base + done + got as u64)
                        .map_err(io)?;
                    if k == 0 {
                        break;
                    }
                    got += k;
                }
                std::io::Write::write_all(out, b)
                    .map_err(|e| DumpError::io("pages", 0, "stage pages", e))?;
                done += n as u64;
            }
            total += len;
        }
        Ok(total)
    }
}

fn sink_err(pid: i32) -> impl Fn(PagesError) -> DumpError {
    move |e| DumpError::new("pages", pid, e.errno(), e.to_string())
}

/// Sends the pagemap of `target` with entries `runs` through `sink`, the pages of the
/// present runs from `src`: by one splice into the sink's file when it offers one (every
/// entry first), else staged through a memfd at most [`STAGE_BYTES`] at a time, each entry
/// followed by its pages. `pid` names the task in errors. Returns the page bytes sent.
pub fn send(
    sink: &mut dyn PageSink,
    target: Target,
    runs: &[Run],
    src: &mut dyn PageSource,
    pid: i32,
) -> Result<u64> {
    let se = sink_err(pid);
    sink.open(target).map_err(&se)?;
    let expected: u64 = runs.iter().map(Run::data_len).sum();
    if sink.splice_file().map_err(&se)?.is_some() {
        for r in runs {
            sink.entry(r).map_err(&se)?;
        }
        let regions: Vec<(u64, u64)> = runs
            .iter()
            .filter(|r| r.data_len() > 0)
            .map(|r| (r.vaddr, r.data_len()))
            .collect();
        if expected > 0 {
            let file = sink
                .splice_file()
                .map_err(&se)?
                .ok_or_else(|| DumpError::new("pages", pid, None, "the sink's file went away"))?;
            let n = src.copy_to(&regions, file)?;
            copied_all(n, expected, pid)?;
            sink.spliced(n);
        }
    } else {
        staged(sink, runs, src, pid)?;
    }
    sink.close().map_err(&se)?;
    Ok(expected)
}

fn copied_all(n: u64, want: u64, pid: i32) -> Result<()> {
    if n != want {
        return Err(DumpError::new(
            "pages",
            pid,
            None,
            format!("the page source wrote {n} bytes of {want}"),
        ));
    }
    Ok(())
}

/// One piece of a present run: run index, address, length.
type Piece = (usize, u64, u64);

fn staged(sink: &mut dyn PageSink, runs: &[Run], src: &mut dyn PageSource, pid: i32) -> Result<()> {
    let se = sink_err(pid);
    let io = |what: &str, e| DumpError::io("pages", pid, what, e);
    let mut stage: Option<File> = None;
    let mut buf = vec![0u8; 1 << 20];
    // Entries already sent (runs before `next` are done).
    let mut next = 0usize;
    let mut batch: Vec<Piece> = Vec::new();
    let mut batch_len = 0u64;
    let mut flush =
        |batch: &mut Vec<Piece>, next: &mut usize, sink: &mut dyn PageSink| -> Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            let f = match stage.as_mut() {
                Some(f) => f,
                None => {
                    let fd = nix::sys::memfd::memfd_create(
                        c"stasis-pages",
                        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
                    )
                    .map_err(|e| {
                        DumpError::new("pages", pid, Some(e as i32), "memfd for staged pages")
                    })?;
                    stage.insert(File::from(fd))
                }
            };
            f.set_len(0).map_err(|e| io("reset staged pages", e))?;
            std::io::Seek::rewind(f).map_err(|e| io("reset staged pages", e))?;
            let regions: Vec<(u64, u64)> = batch.iter().map(|p| (p.1, p.2)).collect();
            let want: u64 = regions.iter().map(|r| r.1).sum();
            copied_all(src.copy_to(&regions, f)?, want, pid)?;
            let mut at = 0u64;
            for &(ri, _, len) in batch.iter() {
                // Entries up to this run (holes in between too), once each.
                while *next <= ri {
                    sink.entry(&runs[*next]).map_err(&se)?;
                    *next += 1;
                }
                let mut done = 0;
                while done < len {
                    let k = (len - done).min(buf.len() as u64) as usize;
                    f.read_exact_at(&mut buf[..k], at)
                        .map_err(|e| io("read staged pages", e))?;
                    sink.pages(&buf[..k]).map_err(&se)?;
                    done += k as u64;
                    at += k as u64;
                }
            }
            batch.clear();
            Ok(())
        };
    for (i, r) in runs.iter().enumerate() {
        let mut off = 0;
        let len = r.data_len();
        while off < len {
            let k = (len - off).min(STAGE_BYTES - batch_len);
            batch.push((i, r.vaddr + off, k));
            batch_len += k;
            off += k;
            if batch_len == STAGE_BYTES {
                flush(&mut batch, &mut next, sink)?;
                batch_len = 0;
            }
        }
    }
    flush(&mut batch, &mut next, sink)?;
    for r in &runs[next..] {
        sink.entry(r).map_err(&se)?;
    }
    Ok(())
}

/// Decides which pages of these VMAs are dumped, from their pagemap entries.
pub fn plan(pid: i32, vmas: &[VmaOut], stats: &mut PageStats) -> Result<Vec<Run>> {
    let pm = PagemapReader::open(pid).map_err(|e| DumpError::proc("pages", pid, e))?;
    let mut runs: Vec<Run> = Vec::new();
    for v in vmas {
        let lazy = match v.class {
            PageClass::Skip | PageClass::Shared => continue,
            PageClass::AnonPrivate => PE_LAZY,
            PageClass::FilePrivate | PageClass::Vdso => 0,
        };
        let class = v.class;
        pm.for_each(v.start, v.end, |addr, e| {
            stats.pages_scanned += 1;
            let want = match class {
                PageClass::AnonPrivate => e & (PM_PRESENT | PM_SWAP) != 0,
                PageClass::FilePrivate => e & (PM_PRESENT | PM_SWAP) != 0 && e & PM_FILE == 0,
                PageClass::Vdso => true,
                _ => false,
            };
            if !want {
                return;
            }
            let flags = PE_PRESENT | lazy;
            match runs.last_mut() {
                Some(r) if r.flags == flags && r.vaddr + r.nr_pages * PAGE_SIZE == addr => {
                    r.nr_pages += 1
                }
                _ => runs.push(Run {
                    vaddr: addr,
                    nr_pages: 1,
                    flags,
                }),
            }
        })
        .map_err(|e| DumpError::proc("pages", pid, e))?;
    }
    Ok(runs)
}

/// Sends the private pages of process `pid` (runs from [`plan`]) through `sink`.
pub fn write_private(
    sink: &mut dyn PageSink,
    probe: &mut dyn ProcessAccess,
    pid: i32,
    runs: &[Run],
    readable: &[(u64, u64)],
    stats: &mut PageStats,
) -> Result<()> {
    let mut src = FrozenSource { probe, readable };
    send(sink, Target::Process(pid as u64), runs, &mut src, pid)?;
    // PE_PARENT runs carry no data: they are not written here.
    for r in runs.iter().filter(|r| r.flags & PE_PRESENT != 0) {
        stats.pages_written += r.nr_pages;
        if r.flags & PE_LAZY != 0 {
            stats.pages_lazy += r.nr_pages;
        }
    }
    Ok(())
}

/// Sends the data pages of one shared memory object (holes skipped), addressed by offset in
/// the object, through `sink` as `pagemap-shmem-SHMID`.
pub fn write_shmem(
    sink: &mut dyn PageSink,
    pid: i32,
    shm: &Shmem,
    stats: &mut PageStats,
) -> Result<()> {
    let io = |what: &str, e: std::io::Error| {
        DumpError::io(
            "pages",
            pid,
            &format!("{what} shmem {}", shm.path.display()),
            e,
        )
    };
    let f = File::open(&shm.path).map_err(|e| io("open", e))?;
    let segs = super::collect_files::data_segments(&f, shm.size).map_err(|e| io("scan", e))?;
    stats.shpages_scanned += shm.size.div_ceil(PAGE_SIZE);
    let runs: Vec<Run> = segs
        .iter()
        .map(|&(start, end)| {
            let first = start / PAGE_SIZE;
            let last = end.div_ceil(PAGE_SIZE);
            Run {
                vaddr: first * PAGE_SIZE,
                nr_pages: last - first,
                flags: PE_PRESENT,
            }
        })
        .collect();
    let mut src = ShmemSource {
        file: &f,
        path: &shm.path,
    };
    send(sink, Target::Shmem(shm.shmid), &runs, &mut src, pid)?;
    stats.shpages_written += runs.iter().map(|r| r.nr_pages).sum::<u64>();
    Ok(())
}
