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

pub const PAGE_SIZE: u64 = 4096;
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;
pub const PM_EXCLUSIVE: u64 = 1 << 56;
pub const PM_SOFT_DIRTY: u64 = 1 << 55;

/// Pages read per `pread` (16 KiB of entries).
const CHUNK: u64 = 2048;

/// An open pagemap of one task.
pub struct PagemapReader {
    pid: i32,
    path: PathBuf,
    file: File,
}

impl PagemapReader {
    /// Opens `/proc/PID/pagemap`.
    pub fn open(pid: i32) -> Result<Self, ProcError> {
        let path = super::path(pid, "pagemap");
        let file = File::open(&path).map_err(|e| io_err(pid, &path, e))?;
        Ok(PagemapReader { pid, path, file })
    }

    /// Calls `f(vaddr, entry)` for every page of `[start, end)`.
    pub fn for_each(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, u64),
    ) -> Result<(), ProcError> {
        let mut buf = vec![0u8; (CHUNK * 8) as usize];
        let mut page = start / PAGE_SIZE;
        let last = end.div_ceil(PAGE_SIZE);
        while page < last {
            let n = (last - page).min(CHUNK);
            let want = (n * 8) as usize;
            let got = self
                .file
                .read_at(&mut buf[..want], page * 8)
                .map_err(|e| io_err(self.pid, &self.path, e))?;
            if got < 8 {
                return Err(ProcError::parse(
                    &self.path,
                    page as usize,
                    "entry",
                    "short read",
                ));
            }
            let got_pages = (got / 8) as u64;
            for i in 0..got_pages {
                let o = (i * 8) as usize;
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[o..o + 8]);
                f((page + i) * PAGE_SIZE, u64::from_le_bytes(b));
            }
            page += got_pages;
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
}
