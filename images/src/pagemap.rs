//! Pagemap images and page lookup.
//!
//! ```text
//!  pagemap-PID.img / pagemap-shmem-ID.img        pages-<pages_id>.img (raw, 4096-byte pages)
//!  entry 0  pagemap_head { pages_id }   ----->   +---------+---------+---------+-----
//!  entry 1  { vaddr A, nr_pages 2, PRESENT } --> | A       | A+4K    | C       | ...
//!  entry 2  { vaddr B, nr_pages 3, PARENT }      +---------+---------+---------+-----
//!  entry 3  { vaddr C, nr_pages 1, LAZY|PRESENT } -----------------------^
//! ```
//! Present runs (flag `PE_PRESENT`) are stored back to back in the pages file, in pagemap
//! order: a run's offset is the running sum of the present pages before it. Runs with
//! `PE_PARENT` live in the previous (pre-dump) image directory, reached through the `parent`
//! symlink, in the pagemap of the same name there (and maybe further up the chain).
//!
//! Old images: the page count is `nr_pages` (field 5) when present, else `compat_nr_pages`
//! (field 2, 32-bit); without `flags` a run is `PE_PRESENT`, or `PE_PARENT` when the old
//! `in_parent` bool is set (CRIU 4.2's `init_compat_pagemap_entry`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{FileName, ImageError, Result};
use crate::framing::{Entry, Image};
use crate::magic::ImageKind;
use crate::pb::{PagemapEntry, PagemapHead};

/// Size of a page in pages-N.img (x86-64).
pub const PAGE_SIZE: u64 = 4096;
/// Pages are in the parent image directory.
pub const PE_PARENT: u32 = 1;
/// Pages may be restored lazily (userfaultfd).
pub const PE_LAZY: u32 = 2;
/// Pages are stored in this directory's pages file.
pub const PE_PRESENT: u32 = 4;

/// Longest `parent` chain followed.
pub const MAX_PARENT_DEPTH: usize = 64;

/// One run of pages of a pagemap, with CRIU's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: u32,
    /// Byte offset of the run's first page in pages-N.img (for present runs; for others the
    /// offset the next present run starts at).
    pub offset: u64,
}

impl PageRun {
    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }
    pub fn in_parent(&self) -> bool {
        self.flags & PE_PARENT != 0
    }
    pub fn is_lazy(&self) -> bool {
        self.flags & PE_LAZY != 0
    }
    /// First address after the run.
    pub fn end(&self) -> u64 {
        self.vaddr
            .saturating_add(self.nr_pages.saturating_mul(PAGE_SIZE))
    }
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.vaddr && addr < self.end()
    }
}

/// Flags of an entry with CRIU's defaults for images written before `flags` existed.
pub fn effective_flags(e: &PagemapEntry) -> u32 {
    if e.in_parent == Some(true) {
        e.flags.unwrap_or(0) | PE_PARENT
    } else {
        e.flags.unwrap_or(PE_PRESENT)
    }
}

/// Page count of an entry: `nr_pages` when present, else the old `compat_nr_pages`.
pub fn effective_nr_pages(e: &PagemapEntry) -> u64 {
    e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages))
}

/// A decoded pagemap: the pages file it points at and its runs, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagemap {
    pub pages_id: u32,
    pub runs: Vec<PageRun>,
    /// Runs sorted by address and not overlapping (lookups can binary-search).
    sorted: bool,
}

impl Pagemap {
    /// Decodes a PAGEMAP image.
    pub fn from_image(img: &Image) -> Result<Pagemap> {
        let bad = |detail: String| ImageError::Pagemap {
            file: FileName::default(),
            detail,
        };
        if img.kind != ImageKind::Pagemap {
            return Err(ImageError::WrongKind {
                file: FileName::default(),
                found: img.kind.name().into(),
                expected: "PAGEMAP".into(),
            });
        }
        if img.entries.is_empty() {
            return Err(bad("pagemap has no pagemap_head".into()));
        }
        let head: PagemapHead = img.decode_entry(0)?;
        let mut runs = Vec::with_capacity(img.entries.len() - 1);
        let mut offset: u64 = 0;
        for i in 1..img.entries.len() {
            let e: PagemapEntry = img.decode_entry(i)?;
            let nr = effective_nr_pages(&e);
            let flags = effective_flags(&e);
            let len = nr
                .checked_mul(PAGE_SIZE)
                .filter(|l| e.vaddr.checked_add(*l).is_some())
                .ok_or_else(|| {
                    bad(format!(
                        "entry {i}: {nr} pages at {:#x} run past the address space",
                        e.vaddr
                    ))
                })?;
            if e.vaddr % PAGE_SIZE != 0 {
                return Err(bad(format!(
                    "entry {i}: vaddr {:#x} is not page aligned",
                    e.vaddr
                )));
            }
            runs.push(PageRun {
                vaddr: e.vaddr,
                nr_pages: nr,
                flags,
                offset,
            });
            if flags & PE_PRESENT != 0 {
                offset = offset
                    .checked_add(len)
                    .ok_or_else(|| bad(format!("entry {i}: pages file offset overflows")))?;
            }
        }
        let sorted = runs.windows(2).all(|w| w[0].end() <= w[1].vaddr);
        Ok(Pagemap {
            pages_id: head.pages_id,
            runs,
            sorted,
        })
    }

    /// Reads and decodes the pagemap at `path`.
    pub fn read_file(path: impl AsRef<Path>) -> Result<Pagemap> {
        let path = path.as_ref();
        let img = Image::read_file(path)?;
        Self::from_image(&img).map_err(|e| e.with_file(path))
    }

    /// A new pagemap (for writers): runs get their offsets from their order.
    pub fn new(pages_id: u32, runs: impl IntoIterator<Item = (u64, u64, u32)>) -> Pagemap {
        let mut offset = 0;
        let runs: Vec<PageRun> = runs
            .into_iter()
            .map(|(vaddr, nr_pages, flags)| {
                let r = PageRun {
                    vaddr,
                    nr_pages,
                    flags,
                    offset,
                };
                if flags & PE_PRESENT != 0 {
                    offset = offset.saturating_add(nr_pages.saturating_mul(PAGE_SIZE));
                }
                r
            })
            .collect();
        let sorted = runs.windows(2).all(|w| w[0].end() <= w[1].vaddr);
        Pagemap {
            pages_id,
            runs,
            sorted,
        }
    }

    /// The image CRIU 4.2 would write: head, then per run `vaddr`, `compat_nr_pages` 0,
    /// `flags`, `nr_pages`.
    pub fn to_image(&self) -> Image {
        let mut img = Image::new(ImageKind::Pagemap);
        img.push(&PagemapHead {
            pages_id: self.pages_id,
        });
        for r in &self.runs {
            img.entries.push(Entry::from_message(&PagemapEntry {
                vaddr: r.vaddr,
                compat_nr_pages: 0,
                in_parent: None,
                flags: Some(r.flags),
                nr_pages: Some(r.nr_pages),
            }));
        }
        img
    }

    /// Number of pages stored in this directory's pages file.
    pub fn present_pages(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.is_present())
            .map(|r| r.nr_pages)
            .sum()
    }

    /// The run containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&PageRun> {
        if self.sorted {
            let i = self.runs.partition_point(|r| r.end() <= addr);
            self.runs.get(i).filter(|r| r.contains(addr))
        } else {
            self.runs.iter().find(|r| r.contains(addr))
        }
    }
}

/// Where a page's data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStatus {
    /// Read from the pages file of the image directory at this depth (0 = this one).
    Read { depth: usize },
    /// No run covers the address: the page was not dumped (restore leaves it zero / as is).
    NotDumped,
    /// The run is lazy and not present: the data is served by a lazy-pages daemon.
    Lazy,
}

/// Page lookup over an image directory and its `parent` chain, for one pagemap
/// (`pagemap-PID.img` or `pagemap-shmem-ID.img`).
pub struct PageSource {
    dir: PathBuf,
    name: String,
    pagemap: Pagemap,
    pages: File,
    pages_path: PathBuf,
    depth: usize,
    /// Canonical paths of this directory and its descendants (loop detection).
    chain: Vec<PathBuf>,
    parent: std::cell::OnceCell<Option<Box<PageSource>>>,
}

impl std::fmt::Debug for PageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSource")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .field("depth", &self.depth)
            .finish()
    }
}

impl PageSource {
    /// Opens the pagemap `name` (e.g. `"pagemap-30100.img"`) of image directory `dir`
    /// and its pages file; checks the pages file holds every present page.
    pub fn open(dir: impl AsRef<Path>, name: &str) -> Result<PageSource> {
        Self::open_at(dir.as_ref(), name, Vec::new())
    }

    /// `pagemap-<pid>.img` of `dir`.
    pub fn open_pid(dir: impl AsRef<Path>, pid: u32) -> Result<PageSource> {
        Self::open(dir, &format!("pagemap-{pid}.img"))
    }

    /// `pagemap-shmem-<shmid>.img` of `dir`.
    pub fn open_shmem(dir: impl AsRef<Path>, shmid: u64) -> Result<PageSource> {
        Self::open(dir, &format!("pagemap-shmem-{shmid}.img"))
    }

    fn open_at(dir: &Path, name: &str, mut chain: Vec<PathBuf>) -> Result<PageSource> {
        let depth = chain.len();
        let canon = std::fs::canonicalize(dir)
            .map_err(|e| ImageError::io(&FileName::path(dir), "canonicalize", e))?;
        if chain.contains(&canon) {
            return Err(ImageError::Pagemap {
                file: FileName::path(dir),
                detail: format!("parent chain loops back to {}", canon.display()),
            });
        }
        chain.push(canon);
        let pm_path = dir.join(name);
        let pagemap = Pagemap::read_file(&pm_path)?;
        let pages_path = dir.join(format!("pages-{}.img", pagemap.pages_id));
        let file = FileName::path(&pages_path);
        let pages = File::open(&pages_path).map_err(|e| ImageError::io(&file, "open", e))?;
        let size = pages
            .metadata()
            .map_err(|e| ImageError::io(&file, "stat", e))?
            .len();
        let need = pagemap.present_pages().saturating_mul(PAGE_SIZE);
        if need > size {
            return Err(ImageError::Pagemap {
                file: FileName::path(&pm_path),
                detail: format!(
                    "present pages need {need} bytes but {} has {size}",
                    pages_path.display()
                ),
            });
        }
        Ok(PageSource {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            pagemap,
            pages,
            pages_path,
            depth,
            chain,
            parent: std::cell::OnceCell::new(),
        })
    }

    /// The decoded pagemap of this directory.
    pub fn pagemap(&self) -> &Pagemap {
        &self.pagemap
    }

    /// The source of the parent directory (`parent` symlink), if there is one.
    pub fn parent(&self) -> Result<Option<&PageSource>> {
        if let Some(p) = self.parent.get() {
            return Ok(p.as_deref());
        }
        let link = self.dir.join("parent");
        let p = if std::fs::symlink_metadata(&link).is_err() {
            None
        } else {
            if self.depth + 1 >= MAX_PARENT_DEPTH {
                return Err(ImageError::Pagemap {
                    file: FileName::path(&link),
                    detail: format!("parent chain longer than {MAX_PARENT_DEPTH} (a loop?)"),
                });
            }
            // Resolve now so paths stay short and loops are seen as such.
            let target = std::fs::canonicalize(&link)
                .map_err(|e| ImageError::io(&FileName::path(&link), "resolve parent link", e))?;
            Some(Box::new(Self::open_at(
                &target,
                &self.name,
                self.chain.clone(),
            )?))
        };
        Ok(self.parent.get_or_init(|| p).as_deref())
    }

    /// Fills `buf` (one page) with the data of the page at `addr` (page aligned).
    pub fn read_page(&self, addr: u64, buf: &mut [u8]) -> Result<PageStatus> {
        let err = |detail: String| ImageError::Pagemap {
            file: FileName::path(self.dir.join(&self.name)),
            detail,
        };
        if buf.len() as u64 != PAGE_SIZE || addr % PAGE_SIZE != 0 {
            return Err(err(format!(
                "read_page({addr:#x}) needs an aligned address and a {PAGE_SIZE}-byte buffer"
            )));
        }
        let Some(run) = self.pagemap.find(addr) else {
            return Ok(PageStatus::NotDumped);
        };
        if run.is_present() {
            let off = run.offset + (addr - run.vaddr);
            self.pages
                .read_exact_at(buf, off)
                .map_err(|e| ImageError::io(&FileName::path(&self.pages_path), "read", e))?;
            return Ok(PageStatus::Read { depth: self.depth });
        }
        if run.in_parent() {
            let parent = self.parent()?.ok_or_else(|| {
                err(format!(
                    "page {addr:#x} is in the parent image, but there is no parent link"
                ))
            })?;
            return match parent.read_page(addr, buf)? {
                PageStatus::NotDumped => Err(err(format!(
                    "page {addr:#x} is marked in parent, but the parent has no such page"
                ))),
                s => Ok(s),
            };
        }
        if run.is_lazy() {
            return Ok(PageStatus::Lazy);
        }
        Err(err(format!(
            "page {addr:#x}: run has neither PRESENT, PARENT nor LAZY (flags {:#x})",
            run.flags
        )))
    }

    /// Fills `buf` (a whole number of pages) from `addr` on; every page must be readable
    /// here or up the parent chain.
    pub fn read_pages(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        for (i, page) in buf.chunks_mut(PAGE_SIZE as usize).enumerate() {
            let a = addr + i as u64 * PAGE_SIZE;
            match self.read_page(a, page)? {
                PageStatus::Read { .. } => {}
                other => {
                    return Err(ImageError::Pagemap {
                        file: FileName::path(self.dir.join(&self.name)),
                        detail: format!("page {a:#x} has no data in the images ({other:?})"),
                    })
                }
            }
        }
        Ok(())
    }
}
