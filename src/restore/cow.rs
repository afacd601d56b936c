//! Pages shared copy-on-write between a parent and its children, shared again after restore
//! (what CRIU does in `prepare_cow_vmas` and `restore_priv_vma_content`). Nothing marks them
//! in the images: the same VMA appears in the parent's and the child's `mm.img`, and each
//! process's pages are dumped whole. Sharing is the optimisation; the content of every page
//! stays exactly the child's image.
//!
//! ```text
//! plan    links(plan): child VMA i inherits parent VMA j when both are private (anonymous,
//!         or the same file at the same pgoff), with the same start, end and flags, not
//!         hugetlb nor special, the parent's without MADV_DONTFORK / MADV_WIPEONFORK, and
//!         both tasks run the same executable (as the kernel made them: fork)
//! parent  premaps and fills its private VMAs before it forks its children (tree.rs)
//! child   keeps the parent's premap of VMA j (same address since the fork) and refill()s it:
//!           page in its image      read it; compare with the inherited page; write it only
//!                                  if it differs (the copy-on-write breaks there alone)
//!           page only in parent's  MADV_DONTNEED: zero again (anonymous), or the file's
//!                                  page again (private file mapping), as in a fresh premap
//!           page in neither        already zero / the file's page
//! blob    mremap()s the premap in place: the page tables move, the sharing stays
//! ```
//! The child's premap of an inherited VMA lies where the parent's was: it must not overlap
//! the child's own layout (memory.rs checks; otherwise it premaps anew).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;

use super::img::msg::VmaEntry;
use super::plan::{vma_status as vs, PageRun, Pages, Plan, TASK_DEAD};
use super::premap::{io_errno, read_full, Premapper, StepErr, COPY_BUF};
use crate::images::pagemap::PAGE_SIZE as PAGE;
use crate::sys::mem::{self, AnonBuf};

/// `madvise` advice numbers, as bits of `VmaEntry::madv`.
const MADV_DONTFORK: u64 = 10;
const MADV_WIPEONFORK: u64 = 18;

/// What a refill did, in pages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Pages of the image equal to the inherited ones: left shared.
    pub shared: u64,
    /// Pages of the image that differ: written (private from now on).
    pub written: u64,
    /// Pages of the parent the task has not: dropped.
    pub dropped: u64,
}

/// Per task of `plan` (pstree order), per VMA of its `mm.img`: the index of the VMA of its
/// parent it inherits (empty for the root, zombies and tasks of another executable).
pub fn links(plan: &Plan) -> Vec<Vec<Option<usize>>> {
    let by_pid: HashMap<i32, usize> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.pid, i))
        .collect();
    plan.tasks
        .iter()
        .map(|t| {
            let parent = by_pid.get(&t.ppid).map(|&i| &plan.tasks[i]);
            let (Some(mm), Some(p)) = (&t.mm, parent) else {
                return Vec::new();
            };
            let Some(pmm) = &p.mm else {
                return Vec::new();
            };
            if t.state == TASK_DEAD || p.state == TASK_DEAD || mm.exe_file_id != pmm.exe_file_id {
                return Vec::new();
            }
            let by_start: HashMap<u64, usize> = pmm
                .vmas
                .iter()
                .enumerate()
                .map(|(j, v)| (v.start, j))
                .collect();
            mm.vmas
                .iter()
                .map(|v| {
                    by_start
                        .get(&v.start)
                        .copied()
                        .filter(|&j| inheritable(v, &pmm.vmas[j]))
                })
                .collect()
        })
        .collect()
}

/// Whether the child's VMA `v` may start as the parent's `pv` (same start already).
fn inheritable(v: &VmaEntry, pv: &VmaEntry) -> bool {
    const PRIVATE: u32 = vs::ANON_PRIVATE | vs::FILE_PRIVATE;
    const OTHER: u32 = vs::VDSO
        | vs::VVAR
        | vs::VSYSCALL
        | vs::AIORING
        | vs::SYSVIPC
        | vs::SOCKET
        | vs::UNSUPP
        | vs::ANON_SHARED
        | vs::FILE_SHARED;
    let kind = v.status & PRIVATE;
    let file_ok = kind != vs::FILE_PRIVATE || (v.shmid == pv.shmid && v.pgoff == pv.pgoff);
    let no_fork = (1 << MADV_DONTFORK) | (1 << MADV_WIPEONFORK);
    v.start == pv.start
        && v.end == pv.end
        && (kind == vs::ANON_PRIVATE || kind == vs::FILE_PRIVATE)
        && pv.status & PRIVATE == kind
        && (v.status | pv.status) & OTHER == 0
        && v.flags == pv.flags
        && v.flags as i32 & libc::MAP_HUGETLB == 0
        && file_ok
        && pv.madv.unwrap_or(0) & no_fork == 0
}

/// Makes the inherited premap at `at` (the parent's filled premap of the same VMA `v`) hold
/// exactly this task's pages: writes those that differ, drops those only the parent has.
pub fn refill(
    pm: &mut Premapper,
    v: &VmaEntry,
    parent: &Pages,
    at: u64,
    stats: &mut Stats,
) -> Result<(), StepErr> {
    let here = |a: u64| at + (a - v.start);
    let mine: Vec<(u64, u64, u64)> = pm.pieces(v.start, v.end).collect();
    let theirs = ranges_in(&parent.runs, v.start, v.end);
    for (a, n) in subtract(&theirs, mine.iter().map(|p| (p.0, p.2))) {
        mem::discard(here(a), n).map_err(|e| ("drop a page of the parent (MADV_DONTNEED)", e))?;
        stats.dropped += n / PAGE;
    }
    if mine.is_empty() {
        return Ok(());
    }
    let fd = pm
        .page_files()
        .cloned()
        .ok_or(("read pages", Errno::EBADF))?;
    // Anonymous: a differing run is dropped and created again by UFFDIO_COPY (no copy on
    // write of the parent's page first); otherwise (a private file mapping, no
    // userfaultfd) a forced write through /proc/self/mem.
    let uffd = (v.status & vs::ANON_PRIVATE != 0)
        .then(mem::Userfault::new)
        .and_then(Result::ok);
    let memf = match uffd {
        Some(_) => None,
        None => Some(pm.self_mem()?),
    };
    let write = |addr: u64, data: &[u8]| -> Result<(), StepErr> {
        match (&uffd, memf) {
            (Some(uf), _) => {
                let n = data.len() as u64;
                // Registered only while written: a read of a missing page in a registered
                // range would wait for a fill forever.
                let reg = uf
                    .register(addr, n)
                    .map_err(|e| ("userfaultfd register", e))?;
                mem::discard(addr, n).map_err(|e| ("drop an inherited page", e))?;
                reg.copy(addr, data)
                    .map_err(|e| ("copy pages (UFFDIO_COPY)", e))
            }
            (None, Some(f)) => f
                .write_all_at(data, addr)
                .map_err(|e| ("write a page over an inherited one", io_errno(&e))),
            (None, None) => Err(("write pages", Errno::EBADF)),
        }
    };
    let mut buf = AnonBuf::new(COPY_BUF).map_err(|e| ("map a copy buffer", e))?;
    let img = buf.as_mut_slice();
    let page = PAGE as usize;
    // The parent's pages, to know which of ours can be compared (a page it has not is zero
    // or the file's page: written without comparing).
    let mut ti = 0;
    for (a, off, n) in mine {
        let mut done = 0;
        while done < n {
            let k = (n - done).min(COPY_BUF as u64) as usize;
            let va = a + done;
            let addr = here(va);
            read_full(&fd, &mut img[..k], off + done)?;
            let mut p = 0;
            while p < k {
                let pva = va + p as u64;
                while ti < theirs.len() && theirs[ti].0 + theirs[ti].1 <= pva {
                    ti += 1;
                }
                let in_parent = theirs.get(ti).is_some_and(|&(s, _)| s <= pva);
                // The parent's page is present in the premap: reading it costs no fault.
                let same = |p: usize| mem::same_as_mapped(addr + p as u64, &img[p..p + page]);
                if in_parent && same(p) {
                    stats.shared += 1;
                    p += page;
                    continue;
                }
                // A run of pages to write: until one the parent has and we share.
                let mut q = p + page;
                while q < k {
                    let qva = va + q as u64;
                    while ti < theirs.len() && theirs[ti].0 + theirs[ti].1 <= qva {
                        ti += 1;
                    }
                    let in_parent = theirs.get(ti).is_some_and(|&(s, _)| s <= qva);
                    if in_parent && same(q) {
                        break;
                    }
                    q += page;
                }
                write(addr + p as u64, &img[p..q])?;
                stats.written += ((q - p) / page) as u64;
                p = q;
            }
            done += k as u64;
        }
    }
    Ok(())
}

/// The page ranges (address, length) of `runs` inside `[start, end)`, sorted and merged.
fn ranges_in(runs: &[PageRun], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = runs
        .iter()
        .filter_map(|r| {
            let (a, b) = (r.vaddr.max(start), (r.vaddr + r.nr * PAGE).min(end));
            (a < b).then(|| (a, b - a))
        })
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (a, n) in r {
        match out.last_mut() {
            Some(l) if l.0 + l.1 >= a => l.1 = l.1.max(a + n - l.0),
            _ => out.push((a, n)),
        }
    }
    out
}

/// `a` minus the ranges of `b` (both sorted by address; `a` merged), as (address, length).
fn subtract(a: &[(u64, u64)], b: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let b: Vec<(u64, u64)> = b.collect();
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, n) in a {
        let (mut cur, e) = (s, s + n);
        while j < b.len() && b[j].0 + b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e {
            match b.get(k) {
                Some(&(bs, bn)) if bs < e => {
                    if bs > cur {
                        out.push((cur, bs - cur));
                    }
                    cur = cur.max(bs + bn);
                    k += 1;
                }
                _ => {
                    out.push((cur, e - cur));
                    cur = e;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, status: u32) -> VmaEntry {
        VmaEntry {
            start,
            end,
            status,
            prot: 3,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            ..Default::default()
        }
    }

    #[test]
    fn subtract_keeps_what_the_child_lacks() {
        let a = [(0x1000, 0x4000), (0x10000, 0x1000)];
        let b = [(0x2000, 0x1000), (0x4000, 0x2000), (0x10000, 0x1000)];
        assert_eq!(
            subtract(&a, b.into_iter()),
            vec![(0x1000, 0x1000), (0x3000, 0x1000)]
        );
        assert_eq!(subtract(&a, std::iter::empty()), a.to_vec());
        assert!(subtract(&[], b.into_iter()).is_empty());
    }

    #[test]
    fn ranges_are_clipped_sorted_and_merged() {
        let run = |vaddr, nr| PageRun {
            entry: 0,
            vaddr,
            nr,
            offset: 0,
            lazy: false,
        };
        let runs = [run(0x5000, 2), run(0x0, 3), run(0x3000, 2), run(0x9000, 1)];
        assert_eq!(ranges_in(&runs, 0x1000, 0x6000), vec![(0x1000, 0x5000)]);
    }

    #[test]
    fn only_same_private_vmas_are_inherited() {
        let anon = vma(0x1000, 0x5000, vs::ANON_PRIVATE);
        assert!(inheritable(&anon, &anon));
        assert!(!inheritable(&anon, &vma(0x1000, 0x6000, vs::ANON_PRIVATE)));
        assert!(!inheritable(&anon, &vma(0x1000, 0x5000, vs::FILE_PRIVATE)));
        let mut dontfork = anon;
        dontfork.madv = Some(1 << MADV_DONTFORK);
        assert!(!inheritable(&anon, &dontfork));
        let mut wipe = anon;
        wipe.madv = Some(1 << MADV_WIPEONFORK);
        assert!(!inheritable(&anon, &wipe));
        let shared = vma(0x1000, 0x5000, vs::ANON_SHARED);
        assert!(!inheritable(&shared, &shared));
        let mut file = vma(0x1000, 0x5000, vs::FILE_PRIVATE);
        file.flags = libc::MAP_PRIVATE as u32;
        file.shmid = 7;
        let mut other = file;
        other.pgoff = 0x1000;
        assert!(inheritable(&file, &file));
        assert!(!inheritable(&file, &other));
        other.pgoff = 0;
        other.shmid = 8;
        assert!(!inheritable(&file, &other));
    }
}
