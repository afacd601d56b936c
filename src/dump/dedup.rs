//! `--auto-dedup` (CRIU's meaning): after a dump or pre-dump on top of a parent
//! (`--prev-images-dir`), the pages this dump wrote again are punched out of every ancestor's
//! pages image (`fallocate(PUNCH_HOLE | KEEP_SIZE)`): the chain restores from the newest copy,
//! and the old copies stop taking disk space.
//!
//! ```text
//!  images_dir/pagemap-P.img     runs written here (present, not in the parent) = covered
//!  parent/pagemap-P.img         present runs ∩ covered  →  punched in parent/pages-N.img
//!  parent/parent/...            the same, up to MAX_PARENT_DEPTH (a loop stops the walk)
//! ```
//! Only the runs of pagemaps this directory has are touched, each at the offset its pagemap
//! gives (the pages file keeps its size: the offsets of the other runs stay valid). A parent
//! without that pagemap ends that pagemap's walk.

use std::path::{Path, PathBuf};

use nix::fcntl::{fallocate, FallocateFlags};
use stasis_images::pagemap::{PageRun, Pagemap, MAX_PARENT_DEPTH, PAGE_SIZE};

/// What the dedup did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dedup {
    /// Bytes punched out of ancestors' pages images.
    pub punched: u64,
    /// Holes punched.
    pub holes: u64,
}

/// Sorted, merged address ranges `[start, end)` of the runs written in `pm`.
fn covered(pm: &Pagemap) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = pm
        .runs
        .iter()
        .filter(|r| r.is_present() && !r.in_parent())
        .map(|r| (r.vaddr, r.end()))
        .collect();
    v.sort();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The byte ranges of the pages file of `runs` that lie in `cover` (both by address).
fn punch_ranges(runs: &[PageRun], cover: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for r in runs.iter().filter(|r| r.is_present() && !r.in_parent()) {
        let (rs, re) = (r.vaddr, r.end());
        // First cover range that may overlap.
        let i = cover.partition_point(|&(_, e)| e <= rs);
        for &(cs, ce) in cover[i..].iter().take_while(|&&(s, _)| s < re) {
            let (s, e) = (rs.max(cs), re.min(ce));
            if s < e {
                out.push((r.offset + (s - rs), e - s));
            }
        }
    }
    out
}

/// Punches, in every ancestor of `images_dir`, the pages the pagemaps of `images_dir` wrote.
pub fn punch_parents(images_dir: &Path) -> Result<Dedup, String> {
    let mut done = Dedup::default();
    let mut names: Vec<String> = std::fs::read_dir(images_dir)
        .map_err(|e| format!("auto-dedup: read {}: {e}", images_dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pagemap-") && n.ends_with(".img"))
        .collect();
    names.sort();
    for name in names {
        let pm = Pagemap::read_file(images_dir.join(&name))
            .map_err(|e| format!("auto-dedup: {name}: {e}"))?;
        let cover = covered(&pm);
        if cover.is_empty() {
            continue;
        }
        let mut seen: Vec<PathBuf> = vec![canonical(images_dir)?];
        let mut dir = images_dir.join("parent");
        for _ in 0..MAX_PARENT_DEPTH {
            if std::fs::symlink_metadata(&dir).is_err() {
                break;
            }
            let canon = canonical(&dir)?;
            if seen.contains(&canon) {
                break;
            }
            seen.push(canon);
            let Ok(parent) = Pagemap::read_file(dir.join(&name)) else {
                break;
            };
            let pages = dir.join(format!("pages-{}.img", parent.pages_id));
            let ranges = punch_ranges(&parent.runs, &cover);
            if !ranges.is_empty() {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&pages)
                    .map_err(|e| format!("auto-dedup: open {}: {e}", pages.display()))?;
                for (off, len) in ranges {
                    fallocate(
                        &f,
                        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                        off as i64,
                        len as i64,
                    )
                    .map_err(|e| {
                        format!(
                            "auto-dedup: punch {}+{len} in {}: {e}",
                            off,
                            pages.display()
                        )
                    })?;
                    done.punched += len;
                    done.holes += 1;
                }
            }
            dir = dir.join("parent");
        }
    }
    debug_assert!(done.punched % PAGE_SIZE == 0);
    Ok(done)
}

fn canonical(p: &Path) -> Result<PathBuf, String> {
    std::fs::canonicalize(p).map_err(|e| format!("auto-dedup: {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_images::pagemap::{PE_PARENT, PE_PRESENT};

    const P: u64 = PAGE_SIZE;

    #[test]
    fn only_pages_written_again_are_punched_at_their_offsets() {
        // The new dump wrote pages 2..4 and 10; pages 4..10 are in the parent.
        let new = Pagemap::new(
            1,
            [
                (2 * P, 2, PE_PRESENT),
                (4 * P, 6, PE_PARENT),
                (10 * P, 1, PE_PRESENT),
            ],
        );
        let cover = covered(&new);
        assert_eq!(cover, vec![(2 * P, 4 * P), (10 * P, 11 * P)]);
        // The parent has pages 0..6 (offsets 0..6 pages) and 9..12 (offsets 6..9 pages).
        let parent = Pagemap::new(1, [(0, 6, PE_PRESENT), (9 * P, 3, PE_PRESENT)]);
        assert_eq!(
            punch_ranges(&parent.runs, &cover),
            vec![(2 * P, 2 * P), (7 * P, P)]
        );
        // Nothing written: nothing punched.
        assert!(punch_ranges(&parent.runs, &[]).is_empty());
    }
}
