//! `/proc/PID/pagemap`: one little-endian u64 per virtual page.
//!
//! ```text
//!  bit 63 present | 62 swapped | 61 file-page or shared-anon | 56 exclusively mapped
//!  bit 55 soft-dirty | 0-54 PFN (zero without CAP_SYS_ADMIN)
//!  entry of page at vaddr V is at file offset (V / PAGE_SIZE) * 8
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::{io_err, ProcError};

pub use crate::images::pagemap::PAGE_SIZE;
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;
pub const PM_SOFT_DIRTY: u64 = 1 << 55;

/// Pages read per `pread` (16 KiB of entries).
const CHUNK: u64 = 2048;

/// An open pagemap of one task. Entries are read ahead [`CHUNK`] pages at a time and kept:
/// consecutive small VMAs (thread stacks and their guard pages, 17 pages each) share one
/// `pread` instead of one each. A page already read is answered from the window: open a new
/// reader to see later changes of a running task.
pub struct PagemapReader {
    pid: i32,
    path: PathBuf,
    file: File,
    /// First page and entries of the last read.
    window: std::cell::RefCell<(u64, Vec<u64>)>,
}

impl PagemapReader {
    /// Opens `/proc/PID/pagemap`.
    pub fn open(pid: i32) -> Result<Self, ProcError> {
        let path = super::path(pid, "pagemap");
        let file = File::open(&path).map_err(|e| io_err(pid, &path, e))?;
        Ok(PagemapReader {
            pid,
            path,
            file,
            window: std::cell::RefCell::new((0, Vec::new())),
        })
    }

    /// Reads the entries of up to [`CHUNK`] pages from `page` into the window.
    fn fill(&self, page: u64) -> Result<(), ProcError> {
        let mut buf = [0u8; (CHUNK * 8) as usize];
        let got = self
            .file
            .read_at(&mut buf, page * 8)
            .map_err(|e| io_err(self.pid, &self.path, e))?;
        if got < 8 {
            return Err(ProcError::parse(
                &self.path,
                page as usize,
                "entry",
                "short read",
            ));
        }
        let mut w = self.window.borrow_mut();
        w.0 = page;
        w.1.clear();
        w.1.extend(
            buf[..got - got % 8]
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))),
        );
        Ok(())
    }

    /// Calls `f(vaddr, entry)` for every page of `[start, end)`.
    pub fn for_each(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, u64),
    ) -> Result<(), ProcError> {
        let mut page = start / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE);
        while page < last {
            let in_window = {
                let w = self.window.borrow();
                page >= w.0 && page < w.0 + w.1.len() as u64
            };
            if !in_window {
                self.fill(page)?;
            }
            let w = self.window.borrow();
            let from = (page - w.0) as usize;
            let n = ((last - page) as usize).min(w.1.len() - from);
            for (i, &e) in w.1[from..from + n].iter().enumerate() {
                f((page + i as u64) * PAGE_SIZE, e);
            }
            page += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stack_is_present() {
        let x = [7u8; 64];
        let addr = x.as_ptr() as u64;
        let r = PagemapReader::open(std::process::id() as i32).unwrap();
        let mut seen = Vec::new();
        r.for_each(
            addr & !(PAGE_SIZE - 1),
            (addr & !(PAGE_SIZE - 1)) + PAGE_SIZE,
            |v, e| seen.push((v, e)),
        )
        .unwrap();
        assert_eq!(seen.len(), 1);
        assert_ne!(seen[0].1 & PM_PRESENT, 0);
        assert_eq!(seen[0].1 & PM_FILE, 0);
        std::hint::black_box(&x);
    }

    /// Ranges answered from the read-ahead window equal ranges read on their own, across
    /// window ends, for a mapping with every other page touched.
    #[test]
    fn windowed_reads_match_single_reads() {
        let pages = 3 * CHUNK as usize + 5;
        let mut v = vec![0u8; pages * PAGE_SIZE as usize];
        for p in (0..pages).step_by(2) {
            v[p * PAGE_SIZE as usize] = 1;
        }
        let base = (v.as_ptr() as u64).next_multiple_of(PAGE_SIZE);
        let end = base + (pages as u64 - 1) * PAGE_SIZE;
        let pid = std::process::id() as i32;
        let shared = PagemapReader::open(pid).unwrap();
        let mut windowed = Vec::new();
        let mut single = Vec::new();
        let mut a = base;
        while a < end {
            let b = (a + 7 * PAGE_SIZE).min(end);
            shared
                .for_each(a, b, |x, e| windowed.push((x, e & PM_PRESENT)))
                .unwrap();
            PagemapReader::open(pid)
                .unwrap()
                .for_each(a, b, |x, e| single.push((x, e & PM_PRESENT)))
                .unwrap();
            a = b;
        }
        assert_eq!(windowed.len(), pages - 1);
        assert_eq!(windowed, single);
        assert!(windowed.iter().any(|&(_, p)| p != 0));
        std::hint::black_box(&v);
    }
}
