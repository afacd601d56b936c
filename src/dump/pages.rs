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
//! the vDSO — every present page; vvar, vsyscall and MADV_DONTDUMP areas — none. Adjacent
//! pages with equal flags share one entry, across VMA boundaries.

use serde_json::json;

use super::error::{DumpError, Result};
use super::files::Shmem;
use super::images_out::{self, ImageDir};
use super::mm::{PageClass, VmaOut};
use super::probe::ProcessAccess;
use crate::proc::pagemap::{PagemapReader, PAGE_SIZE, PM_FILE, PM_PRESENT, PM_SWAP};

pub const PE_PARENT: u32 = 1;
pub const PE_LAZY: u32 = 2;
pub const PE_PRESENT: u32 = 4;

/// Pages copied per read of task memory.
const COPY_PAGES: usize = 256;

/// Page counters for `stats-dump`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageStats {
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    pub shpages_scanned: u64,
    pub shpages_written: u64,
}

/// One run of pages to dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: u32,
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
                PageClass::Vdso => e & PM_PRESENT != 0,
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

/// The pagemap entry of one run.
pub fn pagemap_entry(r: &Run) -> stasis_images::pb::PagemapEntry {
    stasis_images::pb::PagemapEntry {
        vaddr: r.vaddr,
        compat_nr_pages: 0,
        flags: Some(r.flags),
        nr_pages: Some(r.nr_pages),
        ..Default::default()
    }
}

/// Writes `pagemap-PID.img` and `pages-<pages_id>.img` for one process.
pub fn write_private(
    dir: &mut ImageDir,
    probe: &mut dyn ProcessAccess,
    pid: i32,
    pages_id: u32,
    runs: &[Run],
    readable: &[(u64, u64)],
    stats: &mut PageStats,
) -> Result<()> {
    let img = |e| DumpError::image("pages", pid, e);
    let mut pm = dir
        .create(&format!("pagemap-{pid}.img"), images_out::PAGEMAP)
        .map_err(img)?;
    pm.entry_as("pagemap_head", &json!({"pages_id": pages_id}))
        .map_err(img)?;
    let mut pages = dir
        .create_raw(&format!("pages-{pages_id}.img"))
        .map_err(img)?;
    let regions: Vec<(u64, u64)> = runs
        .iter()
        .filter(|r| r.flags & PE_PRESENT != 0)
        .map(|r| (r.vaddr, r.nr_pages * PAGE_SIZE))
        .collect();
    let expected: u64 = regions.iter().map(|r| r.1).sum();
    let spliced = if expected == 0 {
        None
    } else {
        probe.dump_pages(&regions, readable, pages.file().map_err(img)?)?
    };
    if let Some(n) = spliced {
        if n != expected {
            return Err(DumpError::new(
                "pages",
                pid,
                None,
                format!("the parasite wrote {n} bytes of {expected}"),
            ));
        }
        pages.account(n);
    }
    let mut buf = vec![0u8; COPY_PAGES * PAGE_SIZE as usize];
    for r in runs {
        pm.entry_msg(&pagemap_entry(r)).map_err(img)?;
        if r.flags & PE_PRESENT == 0 {
            continue;
        }
        let mut done = if spliced.is_some() { r.nr_pages } else { 0 };
        while done < r.nr_pages {
            let n = (r.nr_pages - done).min(COPY_PAGES as u64);
            let b = &mut buf[..(n * PAGE_SIZE) as usize];
            probe.read_memory(r.vaddr + done * PAGE_SIZE, b)?;
            pages.write(b).map_err(img)?;
            done += n;
        }
        stats.pages_written += r.nr_pages;
        if r.flags & PE_LAZY != 0 {
            stats.pages_lazy += r.nr_pages;
        }
    }
    let a = pm.finish().map_err(img)?;
    let b = pages.finish().map_err(img)?;
    dir.add_bytes(a + b);
    Ok(())
}

/// Writes `pagemap-shmem-SHMID.img` and `pages-<pages_id>.img` for one shared memory object:
/// its data pages (holes skipped), addressed by offset in the object, copied 1 MiB at a time.
pub fn write_shmem(
    dir: &mut ImageDir,
    pid: i32,
    shm: &Shmem,
    pages_id: u32,
    stats: &mut PageStats,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let img = |e| DumpError::image("pages", pid, e);
    let io = |what: &str, e: std::io::Error| {
        DumpError::io(
            "pages",
            pid,
            &format!("{what} shmem {}", shm.path.display()),
            e,
        )
    };
    let f = std::fs::File::open(&shm.path).map_err(|e| io("open", e))?;
    let segs = super::files::data_segments(&f, shm.size).map_err(|e| io("scan", e))?;
    let mut pm = dir
        .create(
            &format!("pagemap-shmem-{}.img", shm.shmid),
            images_out::PAGEMAP,
        )
        .map_err(img)?;
    pm.entry_as("pagemap_head", &json!({"pages_id": pages_id}))
        .map_err(img)?;
    let mut pages = dir
        .create_raw(&format!("pages-{pages_id}.img"))
        .map_err(img)?;
    stats.shpages_scanned += shm.size.div_ceil(PAGE_SIZE);
    let mut buf = vec![0u8; COPY_PAGES * PAGE_SIZE as usize];
    for (start, end) in segs {
        // Whole pages: the partial last page reads short and is padded with zeroes.
        let first = start / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE);
        pm.entry(&json!({"vaddr": first * PAGE_SIZE, "compat_nr_pages": 0,
                         "flags": PE_PRESENT, "nr_pages": last - first}))
            .map_err(img)?;
        let mut page = first;
        while page < last {
            let n = (last - page).min(COPY_PAGES as u64);
            let b = &mut buf[..(n * PAGE_SIZE) as usize];
            b.fill(0);
            let mut got = 0usize;
            while got < b.len() {
                let k = f
                    .read_at(&mut b[got..], page * PAGE_SIZE + got as u64)
                    .map_err(|e| io("read", e))?;
                if k == 0 {
                    break;
                }
                got += k;
            }
            pages.write(b).map_err(img)?;
            page += n;
        }
        stats.shpages_written += last - first;
    }
    let a = pm.finish().map_err(img)?;
    let b = pages.finish().map_err(img)?;
    dir.add_bytes(a + b);
    Ok(())
}
