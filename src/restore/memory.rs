//! The memory of one task, prepared in the forked task before the restorer blob: the vdso
//! decision, then every VMA either premapped and filled (private), inherited from the parent's
//! premap (copy-on-write, see `cow.rs`), or noted for the blob to map by descriptor (shared).
//!
//! ```text
//! tree.rs   task forked ─▶ memory::prepare (before its children are forked when one of them
//!                          inherits a VMA, so they get its filled premaps; otherwise after)
//!                          ─▶ fork children (each gets &TaskMemory of its parent: the same
//!                          addresses, mapped copy-on-write) ─▶ ... ─▶ blob::enter(TaskMemory)
//! VMA kinds  vdso/vvar moved by `special`     VMA_SKIP
//!            shared anon / shared file        VMA_MMAP by fd
//!            private, inherited (plan.cow)    VMA_PREMAPPED at the parent's premap, refilled
//!                                             with the differences only (cow::refill)
//!            private, other                   VMA_PREMAPPED at a new premap (premap.rs)
//! ```
//! Premaps of a task lie above every premap of its ancestors (`next` passed down), so those it
//! inherits and does not use stay where they are until the blob unmaps them.

use std::os::fd::RawFd;

use nix::errno::Errno;

use super::blob_args::abi::*;
use super::open_files::Opened;
use super::plan::{vma_status as vs, Plan, TaskPlan};
use super::premap::{PageFiles, Premapper, StepErr};
use super::vdso::{self, ImageVdso, RuntimeVdso, VdsoPlan};

/// Where premaps start (far above the images' usual layouts, below the stack area).
const PREMAP_BASE: u64 = 0x5000_0000_0000;
/// Where a vdso proxy would go.
const PROXY_AT: u64 = 0x5800_0000_0000;

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The memory part of a task's blob arguments, ready before the blob is entered.
#[derive(Debug, Default)]
pub struct TaskMemory {
    /// One entry per image VMA, in image order.
    pub vmas: Vec<VmaArgs>,
    /// The premapped ranges the blob keeps.
    pub keep: Vec<KeepRange>,
    /// The vdso moves or proxy (`None`: no vdso in the image).
    pub vdso: Option<VdsoPlan>,
    /// Per image VMA: the address of its filled premap (what the children inherit).
    pub premaps: Vec<Option<u64>>,
    /// Above every premap of this task and of its ancestors.
    pub next: u64,
    /// Inherited VMAs: pages kept shared, pages written, pages dropped.
    pub cow: super::cow::Stats,
}

/// The vdso decision of one task: the plan (`None` when the image has no vdso) and the block
/// a proxy's running vdso/vvar would occupy.
struct VdsoChoice {
    plan: Option<VdsoPlan>,
    proxy_block: (u64, u64),
}

/// Compares the image's vdso (its VMAs and dumped pages) with the running kernel's and
/// decides between moving the running one in place and proxying (see `restore::vdso`).
fn plan_vdso(
    mm: &stasis_images::pb::MmEntry,
    t: &TaskPlan,
    pages_fd: Option<RawFd>,
    image_ranges: &[(u64, u64)],
) -> Result<VdsoChoice, StepErr> {
    let rt = RuntimeVdso::current().map_err(|_| ("read the running vdso", Errno::EIO))?;
    let proxy_at = vdso::free_block(image_ranges, PROXY_AT, rt.span())
        .ok_or(("find room for the vdso proxy", Errno::ENOMEM))?;
    let proxy_block = (proxy_at, proxy_at + rt.span());
    let Some(mut image) = ImageVdso::from_vmas(&mm.vmas) else {
        return Ok(VdsoChoice {
            plan: None,
            proxy_block,
        });
    };
    // Through the open pages image (the task may have changed its cwd or root already).
    let pages = pages_fd.map(|fd| std::fs::File::open(format!("/proc/self/fd/{fd}")));
    if let Some(Ok(f)) = pages {
        use std::os::unix::fs::FileExt;
        let runs = t.pages.runs.iter().map(|r| (r.vaddr, r.nr, r.offset));
        image.bytes = vdso::image_bytes(image.vdso, runs, |buf, off| {
            f.read_exact_at(buf, off).is_ok()
        });
    }
    let rt_bytes = rt
        .read_bytes()
        .map_err(|_| ("read the running vdso", Errno::EIO))?;
    let free = |a: u64, b: u64| !image_ranges.iter().any(|&r| overlaps(r, (a, b)));
    let plan = vdso::plan(&image, &rt, &rt_bytes, free, proxy_at).map_err(|e| match e {
        vdso::VdsoError::NoImageBytes => (
            "vdso differs from this kernel's and its pages are not in the image",
            Errno::ENOTSUP,
        ),
        _ => ("plan the vdso", Errno::EINVAL),
    })?;
    Ok(VdsoChoice {
        plan: Some(plan),
        proxy_block,
    })
}

/// Prepares the memory of task `idx` in the task itself: premaps and fills its private VMAs,
/// reusing those it inherits from `parent` (its parent's [`TaskMemory`], mapped in this task
/// since the fork).
pub fn prepare(
    plan: &Plan,
    idx: usize,
    opened: &Opened,
    parent: Option<&TaskMemory>,
) -> Result<TaskMemory, StepErr> {
    let t = &plan.tasks[idx];
    let mm = t.mm.as_ref().ok_or(("no mm image", Errno::EINVAL))?;
    let pages_fd = opened.pages.get(&t.pages.file).copied();
    // Every pages file of the chain (one without incremental dumps).
    let layers: Option<Vec<(u64, RawFd)>> = t
        .pages
        .layers()
        .iter()
        .map(|l| opened.pages.get(&l.file).map(|&fd| (l.base, fd)))
        .collect();
    let page_files = layers.map(PageFiles::new);
    let image_ranges: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    let base = parent.map_or(PREMAP_BASE, |p| p.next.max(PREMAP_BASE));
    let mut premapper = Premapper::new(&t.pages, page_files, base);
    let vdso = plan_vdso(mm, t, pages_fd, &image_ranges)?;
    let special = vdso
        .plan
        .as_ref()
        .map_or(vdso::MOVED_SPECIAL, VdsoPlan::skipped_status);
    // Premaps stay clear of the image's layout and of the proxy's place.
    let mut avoid = image_ranges.clone();
    avoid.push(vdso.proxy_block);
    // What this task may inherit: its links in the plan, when its parent premapped early
    // (a post-copy restore leaves lazy pages missing: nothing is inherited then).
    let links = match parent {
        Some(_) if opened.lazy.is_none() => plan.cow.get(idx).map(Vec::as_slice),
        _ => None,
    };
    let parent_plan = plan.index(t.ppid).map(|i| &plan.tasks[i]);
    let mut out = TaskMemory {
        premaps: vec![None; mm.vmas.len()],
        ..Default::default()
    };
    for (i, v) in mm.vmas.iter().enumerate() {
        let len = v.end - v.start;
        // With a proxy, the image's vdso and vvar are premapped like private memory.
        if v.status & special != 0 {
            out.vmas.push(VmaArgs {
                start: v.start,
                end: v.end,
                prot: v.prot,
                kind: VMA_SKIP,
                fd: -1,
                ..Default::default()
            });
            continue;
        }
        let shared_fd = if v.status & vs::ANON_SHARED != 0 {
            opened.shmem.get(&v.shmid).copied()
        } else if v.status & vs::FILE_SHARED != 0 {
            opened.maps.get(&(v.shmid as u32)).copied()
        } else {
            None
        };
        if v.status & (vs::ANON_SHARED | vs::FILE_SHARED) != 0 {
            let fd = shared_fd.ok_or(("find shared mapping fd", Errno::EBADF))?;
            out.vmas.push(VmaArgs {
                start: v.start,
                end: v.end,
                pgoff: v.pgoff,
                prot: v.prot,
                flags: (libc::MAP_SHARED | (v.flags as i32 & libc::MAP_LOCKED)) as u32,
                madv: v.madv.unwrap_or(0),
                kind: VMA_MMAP,
                fd,
                ..Default::default()
            });
            continue;
        }
        let lazy = opened.lazy.is_some() && super::lazy::can_be_lazy(v);
        // The parent's filled premap of the same VMA, if it may be used here.
        let inherited = links
            .and_then(|l| l.get(i).copied().flatten())
            .zip(parent)
            .zip(parent_plan)
            .and_then(|((j, pm), pt)| {
                let at = pm.premaps.get(j).copied().flatten()?;
                let clear = !avoid.iter().any(|&r| overlaps(r, (at, at + len)));
                clear.then_some((at, pt))
            });
        let hint = match inherited {
            Some((at, pt)) => {
                super::cow::refill(&mut premapper, v, &pt.pages, at, &mut out.cow)?;
                at
            }
            None => {
                let file_fd = if v.status & vs::FILE_PRIVATE != 0 {
                    Some(
                        *opened
                            .maps
                            .get(&(v.shmid as u32))
                            .ok_or(("find mapped file", Errno::EBADF))?,
                    )
                } else {
                    None
                };
                premapper.premap(v, file_fd, &avoid, lazy)?
            }
        };
        out.premaps[i] = Some(hint);
        out.vmas.push(VmaArgs {
            start: v.start,
            end: v.end,
            premap: hint,
            prot: v.prot,
            flags: v.flags,
            madv: v.madv.unwrap_or(0),
            kind: if lazy {
                VMA_PREMAPPED_LAZY
            } else {
                VMA_PREMAPPED
            },
            fd: -1,
            ..Default::default()
        });
        out.keep.push(KeepRange {
            start: hint,
            end: hint + len,
        });
    }
    if out.cow != super::cow::Stats::default() {
        tracing::info!(
            pid = t.pid,
            shared = out.cow.shared,
            written = out.cow.written,
            dropped = out.cow.dropped,
            "pages inherited from the parent (copy-on-write)"
        );
    }
    out.next = premapper.next_free().max(base);
    out.vdso = vdso.plan;
    // Its userfaultfd and /proc/self/mem go now (before children are forked, before the
    // blob's close list is made).
    drop(premapper);
    Ok(out)
}
