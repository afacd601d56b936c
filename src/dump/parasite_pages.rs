//! Private pages through the dump parasite: `vmsplice` in the task, `splice` into the pages
//! image, no copy through the dumper.
//!
//! ```text
//!  regions (in pagemap entry order) ─► split at VMA boundaries into readable / not readable
//!  readable pieces  ─► Parasite::dump_pages (batched)  ─► out at its file position
//!  PROT_NONE pieces ─► /proc/PID/mem (FOLL_FORCE)       ─► out at its file position
//! ```
//! If the parasite fails (anything but the task dying), the file is cut back to where it
//! started and everything is copied through `/proc/PID/mem` instead (logged as a warning).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use super::error::{DumpError, Result};
use crate::parasite::proto::RemoteIov;
use crate::parasite::Parasite;
use crate::proc;

/// Bytes copied per `/proc/PID/mem` read for pages the task cannot read itself.
const COPY: u64 = 1 << 20;

fn perr(pid: i32, e: crate::parasite::Error) -> DumpError {
    let errno = e.is_task_died().then_some(libc::ESRCH);
    DumpError::new("pages", pid, errno, e.to_string())
}

/// Writes `regions` (address, length; page aligned) of process `pid`, whose leader runs
/// `parasite`, to `out` at its file position; `readable`: the readable mappings (start, end;
/// sorted, from the smaps the engine read). Returns the bytes written.
pub fn dump(
    parasite: &mut Parasite<'_>,
    pid: i32,
    regions: &[(u64, u64)],
    readable: &[(u64, u64)],
    out: &mut File,
) -> Result<Option<u64>> {
    let io = |what: &str, e| DumpError::io("pages", pid, what, e);
    let start = out
        .stream_position()
        .map_err(|e| io("position of the pages image", e))?;
    match through_parasite(parasite, pid, regions, readable, out) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.errno == Some(libc::ESRCH) => Err(e),
        Err(e) => {
            tracing::warn!("pages of {pid} through /proc/PID/mem: {e}");
            out.set_len(start)
                .and_then(|_| out.seek(SeekFrom::Start(start)))
                .map_err(|e| io("cut back the pages image", e))?;
            let mut total = 0;
            for &(base, len) in regions {
                total += copy_proc_mem(pid, base, len, out)?;
            }
            Ok(Some(total))
        }
    }
}

fn through_parasite(
    parasite: &mut Parasite<'_>,
    pid: i32,
    regions: &[(u64, u64)],
    readable: &[(u64, u64)],
    out: &mut File,
) -> Result<u64> {
    let mut total = 0u64;
    let mut batch: Vec<RemoteIov> = Vec::new();
    for &(start, len) in regions {
        for (base, len, ok) in split(start, start + len, readable) {
            if ok {
                batch.push(RemoteIov { base, len });
                continue;
            }
            total += flush(parasite, &mut batch, out, pid)?;
            total += copy_proc_mem(pid, base, len, out)?;
        }
    }
    total += flush(parasite, &mut batch, out, pid)?;
    Ok(total)
}

fn flush(p: &mut Parasite<'_>, batch: &mut Vec<RemoteIov>, out: &File, pid: i32) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let n = p.dump_pages(batch, out.as_fd()).map_err(|e| perr(pid, e))?;
    batch.clear();
    Ok(n)
}

/// Copies [base, base + len) of `pid`'s memory through `/proc/PID/mem` to `out`.
pub fn copy_proc_mem(pid: i32, base: u64, len: u64, out: &mut File) -> Result<u64> {
    let mem = File::open(proc::path(pid, "mem"))
        .map_err(|e| DumpError::io("pages", pid, "open /proc/PID/mem", e))?;
    let mut buf = vec![0u8; len.min(COPY) as usize];
    let mut done = 0;
    while done < len {
        let b = &mut buf[..(len - done).min(COPY) as usize];
        mem.read_exact_at(b, base + done).map_err(|e| {
            DumpError::io(
                "pages",
                pid,
                &format!("read memory at {:#x}", base + done),
                e,
            )
        })?;
        out.write_all(b)
            .map_err(|e| DumpError::io("pages", pid, "write pages image", e))?;
        done += b.len() as u64;
    }
    Ok(len)
}

/// Splits [start, end) into pieces inside and outside the sorted `readable` ranges, in order.
pub fn split(start: u64, end: u64, readable: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut at = start;
    // First range that ends after `start` (the ranges are sorted and disjoint).
    let mut i = readable.partition_point(|&(_, e)| e <= start);
    while at < end {
        while i < readable.len() && readable[i].1 <= at {
            i += 1;
        }
        let inside = readable.get(i).filter(|&&(s, _)| s <= at);
        let next = match inside {
            Some(&(_, e)) => e.min(end),
            None => readable.get(i).map_or(end, |&(s, _)| s.min(end)),
        };
        match out.last_mut() {
            Some((_, l, ok)) if *ok == inside.is_some() => *l += next - at,
            _ => out.push((at, next - at, inside.is_some())),
        }
        at = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_follows_readable_ranges() {
        let r = [(0x1000, 0x3000), (0x3000, 0x4000), (0x6000, 0x8000)];
        assert_eq!(
            split(0x2000, 0x7000, &r),
            vec![
                (0x2000, 0x2000, true),
                (0x4000, 0x2000, false),
                (0x6000, 0x1000, true)
            ]
        );
        assert_eq!(split(0x9000, 0xa000, &r), vec![(0x9000, 0x1000, false)]);
        assert!(split(0x1000, 0x1000, &r).is_empty());
        assert_eq!(
            split(0x0, 0x1800, &r),
            vec![(0, 0x1000, false), (0x1000, 0x800, true)]
        );
    }
}
