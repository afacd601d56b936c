//! The page source "dirty since the parent": the parent image's pagemap, and the stage that
//! turns clean pages the parent has into `PE_PARENT` runs.
//!
//! ```text
//!  plan (present pages) ──► since_parent(runs, dirty, parent) ──► runs: PE_PRESENT (copied)
//!                                                                      PE_PARENT  (not)
//!  a page is PE_PARENT iff the tracker proves it clean AND the parent's pagemap covers it
//!  a clean page the parent lacks is left out (a hole): it was not populated when the parent
//!  was dumped (the parent has every page present then) and nothing wrote it since, so it
//!  reads as zero (or from its file). These are the pages userfaultfd WP_UNPOPULATED marks
//!  when it arms (PTE markers, which PAGEMAP_SCAN reports as swapped): without this rule a
//!  second pre-dump copied every unpopulated page of every tracked VMA as zeros.
//!  Only when the parent's pagemap is complete (no lazy-only entries).
//! ```

use std::path::Path;

use stasis_images::framing::ImageReader;
use stasis_images::pb;

use super::DirtyMap;
use crate::dump::pages::{Run, PE_PARENT, PE_PRESENT};

use crate::images::pagemap::PAGE_SIZE as PAGE;

/// Address ranges (start, end; sorted, merged) one process's pagemap covers in the parent.
#[derive(Debug, Clone, Default)]
pub struct ParentPages {
    ranges: Vec<(u64, u64)>,
    /// Every entry of the parent's pagemap holds pages (present or parent): a page it lacks
    /// was not populated then.
    complete: bool,
}

impl ParentPages {
    /// Reads `parent/pagemap-PID.img` (or, when the parent's pages went to a page server,
    /// the record of what it sent: `parent/sent-pagemap-PID.img`); `None` when absent or
    /// unreadable (no parent pages).
    pub fn read(parent: &Path, pid: i32) -> Option<Self> {
        let target = crate::pages::Target::Process(pid as u64);
        let path = [
            target.pagemap_name(),
            crate::pages::record::sent_name(target),
        ]
        .into_iter()
        .map(|n| parent.join(n))
        .find(|p| p.exists())?;
        let mut r = ImageReader::open(&path).ok()?;
        r.next_message::<pb::PagemapHead>().ok()??;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut complete = true;
        while let Some(e) = r.next_message::<pb::PagemapEntry>().ok()? {
            let nr = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
            let flags = e.flags.unwrap_or(PE_PRESENT);
            if flags & (PE_PRESENT | PE_PARENT) == 0 || nr == 0 || nr > 1 << 36 {
                complete = false;
                continue;
            }
            let (s, end) = (e.vaddr, e.vaddr.checked_add(nr * PAGE)?);
            ranges.push((s, end));
        }
        let merged = super::merge_ranges(ranges);
        Some(ParentPages {
            ranges: merged,
            complete,
        })
    }

    /// The parts of `[s, e)` covered.
    fn covered(&self, s: u64, e: u64) -> Vec<(u64, u64)> {
        let i = self.ranges.partition_point(|r| r.1 <= s);
        self.ranges[i..]
            .iter()
            .take_while(|r| r.0 < e)
            .map(|r| (r.0.max(s), r.1.min(e)))
            .collect()
    }
}

/// Splits `runs` into pages to copy (`PE_PRESENT`, flags kept) and pages left to the parent
/// (`PE_PARENT`): those `dirty` proves clean and `parent` has; clean pages a complete parent
/// lacks are left out (never populated, see the module docs). Runs stay in address order.
pub fn since_parent(runs: &[Run], dirty: &DirtyMap, parent: &ParentPages) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::with_capacity(runs.len());
    let mut push = |vaddr: u64, end: u64, flags: u32| {
        if end <= vaddr {
            return;
        }
        match out.last_mut() {
            Some(r) if r.flags == flags && r.vaddr + r.nr_pages * PAGE == vaddr => {
                r.nr_pages += (end - vaddr) / PAGE
            }
            _ => out.push(Run {
                vaddr,
                nr_pages: (end - vaddr) / PAGE,
                flags,
            }),
        }
    };
    for r in runs {
        let end = r.vaddr + r.nr_pages * PAGE;
        let mut at = r.vaddr;
        for (cs, ce) in dirty.clean_in(r.vaddr, end) {
            if parent.complete {
                push(at, cs, r.flags);
                at = cs;
            }
            for (ps, pe) in parent.covered(cs, ce) {
                if !parent.complete {
                    push(at, ps, r.flags);
                }
                push(ps, pe, PE_PARENT);
                at = pe;
            }
            if parent.complete {
                at = ce;
            }
        }
        push(at, end, r.flags);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Dirt, DirtyMap};
    use super::*;

    fn run(v: u64, n: u64, f: u32) -> Run {
        Run {
            vaddr: v * PAGE,
            nr_pages: n,
            flags: f,
        }
    }

    #[test]
    fn clean_pages_the_parent_has_become_parent_entries() {
        let p = PE_PRESENT;
        // VMA 0..10 tracked, pages 2..4 written; VMA 10..20 untracked.
        let dirty = DirtyMap::new(
            &[(0, 10 * PAGE), (10 * PAGE, 20 * PAGE)],
            vec![Dirt::Written(vec![(2 * PAGE, 4 * PAGE)]), Dirt::All],
        );
        // The parent has 0..8 and 12..20.
        let mut parent = ParentPages {
            ranges: vec![(0, 8 * PAGE), (12 * PAGE, 20 * PAGE)],
            complete: false,
        };
        let out = since_parent(&[run(0, 20, p)], &dirty, &parent);
        assert_eq!(
            out,
            vec![
                run(0, 2, PE_PARENT),
                run(2, 2, p),
                run(4, 4, PE_PARENT),
                run(8, 12, p),
            ]
        );
        // A complete parent: the clean pages 8..10 it lacks were never populated (holes).
        parent.complete = true;
        assert_eq!(
            since_parent(&[run(0, 20, p)], &dirty, &parent),
            vec![
                run(0, 2, PE_PARENT),
                run(2, 2, p),
                run(4, 4, PE_PARENT),
                run(10, 10, p),
            ]
        );
        // Everything dirty: unchanged.
        assert_eq!(
            since_parent(&[run(0, 20, p)], &DirtyMap::all(), &parent),
            vec![run(0, 20, p)]
        );
    }
}
