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

    /// [`PageSource::copy_to`] into the sink's own pages file (a local plain sink), which
    /// nothing reads back during the dump: a source may leave the bytes to writer threads
    /// ([`super::page_writers`]) that finish before the dump ends, and move the file position
    /// past them now.
    fn copy_to_file(&mut self, regions: &[(u64, u64)], out: &mut File) -> Result<u64> {
        self.copy_to(regions, out)
    }
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
            let n = src.copy_to_file(&regions, file)?;
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

/// Decides which pages of these VMAs are dumped, from their pagemap entries. `lazy_dump`
/// (`dump --lazy-pages`): private anonymous pages become `PE_LAZY` entries without data.
pub fn plan(pid: i32, vmas: &[VmaOut], stats: &mut PageStats, lazy_dump: bool) -> Result<Vec<Run>> {
    let t = std::time::Instant::now();
    let runs = match plan_by_scan(pid, vmas, stats, lazy_dump) {
        Some(runs) => runs,
        None => plan_runs(pid, vmas, stats, lazy_dump)?,
    };
    tracing::debug!(
        "process {pid}: page plan of {} runs in {:?}",
        runs.len(),
        t.elapsed()
    );
    Ok(runs)
}

/// [`plan`] by `PAGEMAP_SCAN`: the kernel answers ranges of wanted pages (a fully populated
/// 1 GiB VMA is one range) instead of 8 bytes per page to read and test. `None` when the
/// kernel cannot (no PAGEMAP_SCAN): the caller reads the pagemap instead.
fn plan_by_scan(
    pid: i32,
    vmas: &[VmaOut],
    stats: &mut PageStats,
    lazy_dump: bool,
) -> Option<Vec<Run>> {
    use crate::sys::dirty::{self as kd, ScanFilter};
    use std::os::fd::AsFd;
    let pm = File::open(crate::proc::path(pid, "pagemap")).ok()?;
    let any = kd::PAGE_IS_PRESENT | kd::PAGE_IS_SWAPPED;
    let mut runs: Vec<Run> = Vec::new();
    let mut scanned = 0;
    for v in vmas {
        let (lazy, filter) = match v.class {
            PageClass::Skip | PageClass::Shared => continue,
            PageClass::AnonPrivate => (
                PE_LAZY,
                ScanFilter {
                    inverted: 0,
                    all: 0,
                    any,
                },
            ),
            // Private copies only: a page still the file's is not dumped.
            PageClass::FilePrivate => (
                0,
                ScanFilter {
                    inverted: kd::PAGE_IS_FILE,
                    all: kd::PAGE_IS_FILE,
                    any,
                },
            ),
            PageClass::Vdso => (
                0,
                ScanFilter {
                    inverted: 0,
                    all: 0,
                    any: 0,
                },
            ),
        };
        scanned += (v.end - v.start) / PAGE_SIZE;
        let ranges = if v.class == PageClass::Vdso {
            vec![(v.start, v.end)]
        } else {
            match kd::scan_ranges(pm.as_fd(), v.start, v.end, filter) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("PAGEMAP_SCAN of {pid}: {e}: reading the pagemap");
                    return None;
                }
            }
        };
        // Left to the lazy-pages daemon: no data here.
        let lazy_only = lazy_dump && crate::pages::lazy::can_be_lazy(&v.entry);
        let flags = if lazy_only {
            PE_LAZY
        } else {
            PE_PRESENT | lazy
        };
        for (s, e) in ranges {
            push_run(&mut runs, s, (e - s) / PAGE_SIZE, flags);
        }
    }
    stats.pages_scanned += scanned;
    Some(runs)
}

fn plan_runs(
    pid: i32,
    vmas: &[VmaOut],
    stats: &mut PageStats,
    lazy_dump: bool,
) -> Result<Vec<Run>> {
    let pm = PagemapReader::open(pid).map_err(|e| DumpError::proc("pages", pid, e))?;
    let mut runs: Vec<Run> = Vec::new();
    for v in vmas {
        let lazy = match v.class {
            PageClass::Skip | PageClass::Shared => continue,
            PageClass::AnonPrivate => PE_LAZY,
            PageClass::FilePrivate | PageClass::Vdso => 0,
        };
        let class = v.class;
        // Left to the lazy-pages daemon: no data here.
        let lazy_only = lazy_dump && crate::pages::lazy::can_be_lazy(&v.entry);
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
            let flags = if lazy_only {
                PE_LAZY
            } else {
                PE_PRESENT | lazy
            };
            push_run(&mut runs, addr, 1, flags);
        })
        .map_err(|e| DumpError::proc("pages", pid, e))?;
    }
    Ok(runs)
}

/// Appends `nr_pages` pages at `vaddr` to `runs`, extending the last run when they follow it
/// with the same flags.
fn push_run(runs: &mut Vec<Run>, vaddr: u64, nr_pages: u64, flags: u32) {
    match runs.last_mut() {
        Some(r) if r.flags == flags && r.vaddr + r.nr_pages * PAGE_SIZE == vaddr => {
            r.nr_pages += nr_pages
        }
        _ => runs.push(Run {
            vaddr,
            nr_pages,
            flags,
        }),
    }
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
    let t = std::time::Instant::now();
    let mut src = FrozenSource { probe, readable };
    send(sink, Target::Process(pid as u64), runs, &mut src, pid)?;
    tracing::debug!(
        "process {pid}: {} runs of pages sent in {:?}",
        runs.len(),
        t.elapsed()
    );
    count_written(runs, stats);
    Ok(())
}

/// Counts the pages of `runs` in `stats` (PE_PARENT runs carry no data: not written here).
pub fn count_written(runs: &[Run], stats: &mut PageStats) {
    for r in runs.iter().filter(|r| r.flags & PE_PRESENT != 0) {
        stats.pages_written += r.nr_pages;
    }
    for r in runs.iter().filter(|r| r.flags & PE_LAZY != 0) {
        stats.pages_lazy += r.nr_pages;
    }
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

#[cfg(test)]
mod plan_tests {
    use super::*;

    /// The PAGEMAP_SCAN planner answers what the pagemap reader answers: anonymous pages
    /// touched here and there, a private file mapping with pages only read (not dumped) and
    /// pages written (private copies, dumped).
    #[test]
    fn scan_plan_matches_the_pagemap_plan() {
        use std::io::Write;
        let pid = std::process::id() as i32;
        let len = 64 * PAGE_SIZE as usize;
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(&vec![7u8; len]).unwrap();
        // SAFETY: fresh private mappings of our own, unmapped below; nothing else uses them.
        let (anon, file) = unsafe {
            let a = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as *mut u8;
            let f = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&tmp),
                0,
            ) as *mut u8;
            for i in [0usize, 1, 2, 10, 40, 63] {
                a.add(i * PAGE_SIZE as usize).write_volatile(1);
            }
            for i in 0..64usize {
                if i % 3 == 0 {
                    f.add(i * PAGE_SIZE as usize).write_volatile(2);
                } else {
                    std::ptr::read_volatile(f.add(i * PAGE_SIZE as usize));
                }
            }
            (a as u64, f as u64)
        };
        let vma = |start: u64, class| VmaOut {
            start,
            end: start + len as u64,
            class,
            entry: Default::default(),
        };
        let mut vmas = vec![
            vma(anon, PageClass::AnonPrivate),
            vma(file, PageClass::FilePrivate),
        ];
        vmas.sort_by_key(|v| v.start);
        let (mut s1, mut s2) = (PageStats::default(), PageStats::default());
        let by_scan = plan_by_scan(pid, &vmas, &mut s1, false).expect("PAGEMAP_SCAN works here");
        let by_read = plan_runs(pid, &vmas, &mut s2, false).unwrap();
        // SAFETY: the mappings made above, no longer used.
        unsafe {
            libc::munmap(anon as *mut _, len);
            libc::munmap(file as *mut _, len);
        }
        assert_eq!(by_scan, by_read);
        assert_eq!(s1.pages_scanned, s2.pages_scanned);
        let pages: u64 = by_scan.iter().map(|r| r.nr_pages).sum();
        assert_eq!(pages, 6 + 22, "{by_scan:?}");
    }
}
