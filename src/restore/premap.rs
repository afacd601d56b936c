//! Private memory of a task, prepared in the forked task before it enters the restorer blob:
//! every private VMA is mapped at a free address (its premap) and filled with its pages; the
//! blob then moves it in place with `mremap` and sets its final protection and advice.
//!
//! ```text
//! image VMA   start..end, prot, flags, madv
//! premap      hint..hint+len, hint = start (mod 2 MiB, mod 1 GiB from 1 GiB on): mremap
//!             moves whole page tables
//!             prot  RW if the VMA is writable or MAP_NORESERVE, else R: a read-only VMA
//!                   never had VM_ACCOUNT, so smaps "ac"/"nr" stay as dumped
//!             flags PRIVATE [| ANONYMOUS] [| NORESERVE as dumped] [| GROWSDOWN]
//! fill        anonymous     UFFDIO_COPY from a read-only view of pages-N.img: the kernel
//!                           allocates each page and copies into it (no fault, no zeroing)
//!             THP possible  MADV_HUGEPAGE (as recorded) + pread: huge-page faults
//!             file-backed   pread (writable premap) or a forced write via /proc/self/mem
//!             fallbacks     no userfaultfd: pread / forced write; no forced write:
//!                           mprotect RW + pread
//! ```
//! Page runs are found by binary search (sorted by address), so the cost is linear in VMAs
//! plus runs. Offsets are in the task's [`PageFiles`]: the pages files of an incremental
//! chain seen as one (a piece never spans two files).

use std::os::fd::RawFd;

use nix::errno::Errno;

use super::img::msg::VmaEntry;
use super::plan::{vma_status as vs, PageRun, Pages};
use crate::sys::fds::pread_raw;
use crate::sys::mem::{self, AnonBuf, Userfault};

/// Page data to put in place: (address, offset in the pages image, length).
type Piece = (u64, u64, u64);

/// A failed step of the task: what, errno.
pub type StepErr = (&'static str, Errno);

use crate::images::pagemap::PAGE_SIZE as PAGE;
const GIB: u64 = 1 << 30;
const PMD: u64 = 2 << 20;
/// `madvise` advice numbers, as bits of `VmaEntry::madv`.
const MADV_HUGEPAGE: u64 = 14;
const MADV_NOHUGEPAGE: u64 = 15;

/// How one premap gets its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// UFFDIO_COPY from the pages view.
    Copy,
    /// pread into the (writable) premap.
    Read,
    /// Forced write through /proc/self/mem (read-only premap).
    Force,
}

/// Premaps and fills the private VMAs of one task.
pub struct Premapper<'a> {
    runs: std::borrow::Cow<'a, [PageRun]>,
    fd: Option<PageFiles>,
    parallel: bool,
    /// Created at the first anonymous fill (its error kept: the fallbacks take over).
    uffd: Option<Result<Userfault, Errno>>,
    mem: Option<std::fs::File>,
    thp_always: bool,
    /// Bounce buffers of the UFFDIO_COPY fills (one, two for a fill split over threads).
    bufs: Vec<AnonBuf>,
    next: u64,
    /// The VMA being premapped is restored lazily (post-copy): its `PE_LAZY` pages are left
    /// missing, for the lazy-pages daemon.
    lazy_vma: bool,
    /// Fills done per method (copy, read, force), for the log.
    pub stats: [u64; 3],
}

impl<'a> Premapper<'a> {
    /// `pages` of the task, read through `fd` (None: no pages image); premaps go at `base`
    /// and above.
    pub fn new(pages: &'a Pages, fd: Option<PageFiles>, base: u64) -> Self {
        let mut runs = std::borrow::Cow::Borrowed(&pages.runs[..]);
        if runs.windows(2).any(|w| w[0].vaddr > w[1].vaddr) {
            runs.to_mut().sort_unstable_by_key(|r| r.vaddr);
        }
        let parallel = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        let thp_always = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| s.contains("[always]"));
        Self {
            runs,
            fd,
            parallel,
            uffd: None,
            mem: None,
            thp_always,
            bufs: Vec::new(),
            next: base,
            lazy_vma: false,
            stats: [0; 3],
        }
    }

    /// Where the next premap may go: above every premap made so far.
    pub fn next_free(&self) -> u64 {
        self.next
    }

    /// The task's page files (`None`: no pages image).
    pub(super) fn page_files(&self) -> Option<&PageFiles> {
        self.fd.as_ref()
    }

    /// `/proc/self/mem`, opened read-write at the first use.
    pub(super) fn self_mem(&mut self) -> Result<&std::fs::File, StepErr> {
        if self.mem.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/proc/self/mem")
                .map_err(|e| ("open /proc/self/mem", io_errno(&e)))?;
            self.mem = Some(f);
        }
        self.mem
            .as_ref()
            .ok_or(("open /proc/self/mem", Errno::EBADF))
    }

    /// The pieces of page data inside `[start, end)`: (address, file offset, length); without
    /// the `PE_LAZY` runs when the VMA is restored lazily.
    pub(super) fn pieces(&self, start: u64, end: u64) -> impl Iterator<Item = Piece> + '_ {
        let first = self
            .runs
            .partition_point(|r| r.vaddr + r.nr * PAGE <= start);
        let skip_lazy = self.lazy_vma;
        self.runs[first..]
            .iter()
            .take_while(move |r| r.vaddr < end)
            .filter(move |r| !(skip_lazy && r.lazy))
            .filter_map(move |r| {
                let (lo, hi) = (r.vaddr, r.vaddr + r.nr * PAGE);
                let (a, b) = (lo.max(start), hi.min(end));
                (a < b).then(|| (a, r.offset + (a - lo), b - a))
            })
    }

    /// Maps private VMA `v` (anonymous or file `fd`) at a free address outside `busy`, fills
    /// it (`lazy`: all but its `PE_LAZY` pages) and returns the premap address.
    pub fn premap(
        &mut self,
        v: &VmaEntry,
        file_fd: Option<RawFd>,
        busy: &[(u64, u64)],
        lazy: bool,
    ) -> Result<u64, StepErr> {
        self.lazy_vma = lazy;
        let len = v.end.saturating_sub(v.start);
        let no_room = ("find room for a premap", Errno::ENOMEM);
        let mut hint = self.next;
        // Each step moves past one busy range (upwards only): bounded, and overflow is an error.
        for step in 0..=busy.len() {
            // Same offset in a 2 MiB (1 GiB for large VMAs) frame as the target: mremap then
            // moves whole page tables.
            let frame = if len >= GIB { GIB } else { PMD };
            hint = hint
                .checked_add((v.start % frame + frame - hint % frame) % frame)
                .ok_or(no_room)?;
            let end = hint.checked_add(len).ok_or(no_room)?;
            match busy.iter().find(|&&(s, e)| s < end && hint < e) {
                Some(&(_, e)) if step < busy.len() => hint = e,
                Some(_) => return Err(no_room),
                None => break,
            }
        }
        let dflags = v.flags as i32;
        let noreserve = dflags & libc::MAP_NORESERVE != 0;
        let writable = v.prot & libc::PROT_WRITE as u32 != 0;
        let prot = if writable || noreserve {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        let mut flags = libc::MAP_PRIVATE | (dflags & (libc::MAP_GROWSDOWN | libc::MAP_NORESERVE));
        if file_fd.is_none() {
            flags |= libc::MAP_ANONYMOUS;
        }
        let got = mem::map_noreplace(hint, len, prot, flags, file_fd.unwrap_or(-1), v.pgoff)
            .map_err(|e| ("premap", e))?;
        if got != hint {
            return Err(("premap at the chosen address", Errno::EEXIST));
        }
        self.next = hint + len + (1 << 20);
        if self.fd.is_none() || self.pieces(v.start, v.end).next().is_none() {
            return Ok(hint);
        }
        let madv = v.madv.unwrap_or(0);
        let thp = file_fd.is_none()
            && v.status & vs::ANON_PRIVATE != 0
            && (madv & (1 << MADV_HUGEPAGE) != 0
                || (self.thp_always && madv & (1 << MADV_NOHUGEPAGE) == 0));
        if thp && madv & (1 << MADV_HUGEPAGE) != 0 {
            mem::advise_hugepage(hint, len).map_err(|e| ("madvise(MADV_HUGEPAGE) a premap", e))?;
        }
        let fallback = if prot & libc::PROT_WRITE != 0 {
            How::Read
        } else {
            How::Force
        };
        let how = if file_fd.is_none() && !(thp && fallback == How::Read) {
            How::Copy
        } else {
            fallback
        };
        self.fill(v, hint, how)
            .or_else(|e| match e {
                // The fast path is unavailable (no userfaultfd, odd pages file): the slow one.
                (_, Errno::ENOSYS | Errno::EPERM | Errno::EINVAL | Errno::ENODEV)
                    if how == How::Copy =>
                {
                    self.fill(v, hint, fallback)
                }
                e => Err(e),
            })
            .or_else(|e| match e {
                // /proc/self/mem refuses forced writes here: make the premap writable.
                (_, Errno::EPERM | Errno::EACCES | Errno::EIO) if fallback == How::Force => {
                    mem::protect(hint, len, libc::PROT_READ | libc::PROT_WRITE)
                        .map_err(|e| ("mprotect a premap", e))?;
                    self.fill(v, hint, How::Read)
                }
                e => Err(e),
            })?;
        Ok(hint)
    }

    fn fill(&mut self, v: &VmaEntry, hint: u64, how: How) -> Result<(), StepErr> {
        let fd = self.fd.clone().ok_or(("read pages", Errno::EBADF))?;
        let fd = &fd;
        let len = v.end - v.start;
        match how {
            How::Copy => {
                let pieces: Vec<_> = self.pieces(v.start, v.end).collect();
                let total: u64 = pieces.iter().map(|p| p.2).sum();
                let split = self.parallel && total >= PARALLEL_MIN;
                // The task's bounce buffers, made once (fresh pages: no copy-on-write of the
                // restorer's heap, no zeroing by an allocator) and kept for its next fills.
                let mut bufs = std::mem::take(&mut self.bufs);
                while bufs.len() < 1 + split as usize {
                    bufs.push(AnonBuf::new(COPY_BUF).map_err(|e| ("map a copy buffer", e))?);
                }
                if self.uffd.is_none() {
                    self.uffd = Some(Userfault::new());
                }
                let uf = match self.uffd.as_ref() {
                    Some(Ok(uf)) => uf,
                    Some(Err(e)) => return Err(("userfaultfd", *e)),
                    None => return Err(("userfaultfd", Errno::EBADF)),
                };
                let uffd = uf
                    .register(hint, len)
                    .map_err(|e| ("userfaultfd register", e))?;
                // pread into a small buffer that stays in cache, UFFDIO_COPY from it: one
                // pass over memory, no page-table work for a source mapping.
                let copy = |list: &[Piece], buf: &mut AnonBuf| -> Result<(), StepErr> {
                    let buf = buf.as_mut_slice();
                    for &(a, off, n) in list {
                        let mut done = 0;
                        while done < n {
                            let k = (n - done).min(COPY_BUF as u64) as usize;
                            read_full(fd, &mut buf[..k], off + done)?;
                            uffd.copy(hint + (a - v.start) + done, &buf[..k])
                                .map_err(|e| ("copy pages (UFFDIO_COPY)", e))?;
                            done += k as u64;
                        }
                    }
                    Ok(())
                };
                let copied = match &mut bufs[..] {
                    [b0, b1, ..] if split => {
                        // Two halves by bytes, the second on a helper thread.
                        let (first, second) = halves(&pieces, total);
                        std::thread::scope(|sc| {
                            let h = sc.spawn(|| copy(&second, b1));
                            let r1 = copy(&first, b0);
                            let r2 = h
                                .join()
                                .unwrap_or(Err(("copy pages: helper thread", Errno::EIO)));
                            r1.and(r2)
                        })
                    }
                    [b0, ..] => copy(&pieces, b0),
                    [] => Err(("map a copy buffer", Errno::ENOMEM)),
                };
                drop(uffd);
                self.bufs = bufs;
                copied?;
                self.stats[0] += 1;
            }
            How::Read => {
                let pieces: Vec<_> = self.pieces(v.start, v.end).collect();
                for (a, off, n) in pieces {
                    let mut done = 0;
                    while done < n {
                        let (file, at) = fd.locate(off + done)?;
                        let r = pread_raw(file, hint + (a - v.start) + done, n - done, at)
                            .map_err(|e| ("read pages", e))?;
                        if r == 0 {
                            return Err(("read pages: short image", Errno::EIO));
                        }
                        done += r as u64;
                    }
                }
                self.stats[1] += 1;
            }
            How::Force => {
                self.self_mem()?;
                if self.bufs.is_empty() {
                    self.bufs
                        .push(AnonBuf::new(COPY_BUF).map_err(|e| ("map a copy buffer", e))?);
                }
                let mut bufs = std::mem::take(&mut self.bufs);
                let buf = bufs[0].as_mut_slice();
                let pieces: Vec<_> = self.pieces(v.start, v.end).collect();
                let r = self.force_fill(v, hint, fd, &pieces, buf);
                self.bufs = bufs;
                r?;
                self.stats[2] += 1;
            }
        }
        Ok(())
    }

    /// Writes `pieces` into the read-only premap at `hint` through /proc/self/mem.
    fn force_fill(
        &self,
        v: &VmaEntry,
        hint: u64,
        fd: &PageFiles,
        pieces: &[Piece],
        buf: &mut [u8],
    ) -> Result<(), StepErr> {
        let memf = self
            .mem
            .as_ref()
            .ok_or(("open /proc/self/mem", Errno::EBADF))?;
        for &(a, off, n) in pieces {
            let mut done = 0;
            while done < n {
                let k = (n - done).min(buf.len() as u64) as usize;
                let (file, at) = fd.locate(off + done)?;
                let r = mem::pread_buf(file, &mut buf[..k], at).map_err(|e| ("read pages", e))?;
                if r == 0 {
                    return Err(("read pages: short image", Errno::EIO));
                }
                mem::force_write_self(memf, hint + (a - v.start) + done, &buf[..r])
                    .map_err(|e| ("write pages via /proc/self/mem", io_errno(&e)))?;
                done += r as u64;
            }
        }
        Ok(())
    }
}

/// The page data of one task: the open pages files of its chain, each at its virtual base
/// (`plan::Pages::layers`).
#[derive(Debug, Clone, Default)]
pub struct PageFiles {
    /// (virtual base, descriptor), sorted by base.
    layers: Vec<(u64, RawFd)>,
}

impl PageFiles {
    /// From (virtual base, descriptor) pairs.
    pub fn new(mut layers: Vec<(u64, RawFd)>) -> Self {
        layers.sort_unstable_by_key(|l| l.0);
        PageFiles { layers }
    }

    /// The file holding virtual offset `off`, and the offset in it.
    pub fn locate(&self, off: u64) -> Result<(RawFd, u64), StepErr> {
        let i = self.layers.partition_point(|l| l.0 <= off);
        let (base, fd) = *i
            .checked_sub(1)
            .and_then(|i| self.layers.get(i))
            .ok_or(("read pages: no such pages file", Errno::EINVAL))?;
        Ok((fd, off - base))
    }
}

/// Bounce buffer of a copy (fits in L2 with room to spare).
pub(super) const COPY_BUF: usize = 256 << 10;

/// Reads exactly `buf.len()` bytes at `off` of `fd`.
pub(super) fn read_full(fd: &PageFiles, buf: &mut [u8], off: u64) -> Result<(), StepErr> {
    let mut got = 0;
    while got < buf.len() {
        let (file, at) = fd.locate(off + got as u64)?;
        let r = mem::pread_buf(file, &mut buf[got..], at).map_err(|e| ("read pages", e))?;
        if r == 0 {
            return Err(("read pages: short image", Errno::EIO));
        }
        got += r;
    }
    Ok(())
}

/// Fills of at least this many bytes are split over two threads.
const PARALLEL_MIN: u64 = 64 << 20;

/// Splits `pieces` (address, offset, length) into two lists of about `total / 2` bytes each,
/// cutting a piece at a page boundary if needed.
fn halves(pieces: &[Piece], total: u64) -> (Vec<Piece>, Vec<Piece>) {
    let mut left = (total / 2) & !(PAGE - 1);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &(addr, off, n) in pieces {
        if left >= n {
            a.push((addr, off, n));
            left -= n;
        } else if left > 0 {
            a.push((addr, off, left));
            b.push((addr + left, off + left, n - left));
            left = 0;
        } else {
            b.push((addr, off, n));
        }
    }
    (a, b)
}

pub(super) fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(runs: &[(u64, u64)]) -> Pages {
        let mut off = 0;
        Pages {
            file: Default::default(),
            runs: runs
                .iter()
                .map(|&(vaddr, nr)| {
                    let r = PageRun {
                        entry: 0,
                        vaddr,
                        nr,
                        offset: off,
                        lazy: false,
                    };
                    off += nr * PAGE;
                    r
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn pieces_clip_runs_to_the_vma() {
        let p = pages(&[(0x1000, 2), (0x4000, 4), (0x10000, 1)]);
        let m = Premapper::new(&p, None, 0x5000_0000_0000);
        let got: Vec<_> = m.pieces(0x2000, 0x6000).collect();
        assert_eq!(
            got,
            vec![(0x2000, 0x1000, 0x1000), (0x4000, 0x2000, 0x2000)]
        );
        assert_eq!(m.pieces(0x8000, 0x10000).count(), 0);
        let all: Vec<_> = m.pieces(0, 0x20000).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], (0x10000, 0x6000, 0x1000));
    }

    #[test]
    fn unsorted_runs_are_sorted() {
        let p = pages(&[(0x10000, 1), (0x1000, 1)]);
        let m = Premapper::new(&p, None, 0x5000_0000_0000);
        let got: Vec<_> = m.pieces(0, 0x20000).collect();
        assert_eq!(got, vec![(0x1000, 0x1000, 0x1000), (0x10000, 0, 0x1000)]);
    }

    #[test]
    fn halves_split_bytes_at_a_page() {
        let pieces = vec![(0x1000, 0, 3 * PAGE), (0x10000, 3 * PAGE, 2 * PAGE)];
        let (a, b) = halves(&pieces, 5 * PAGE);
        assert_eq!(a, vec![(0x1000, 0, 2 * PAGE)]);
        assert_eq!(
            b,
            vec![(0x3000, 2 * PAGE, PAGE), (0x10000, 3 * PAGE, 2 * PAGE)]
        );
        let sum = |v: &[Piece]| v.iter().map(|p| p.2).sum::<u64>();
        assert_eq!(sum(&a) + sum(&b), 5 * PAGE);
    }
}
