//! The final step of a task through the restorer blob, run in the forked task itself.
//!
//! ```text
//! forked task (its fds, session, cwd already set by tree.rs)
//!   premap every private VMA at a free address and fill it with its pages (premap.rs),
//!   note file/memfd/shared mappings as mmap-by-fd, vdso plan,
//!   core/mm -> TaskSpec (blob_core), status_fd / go_fd
//!   blob_args::enter(&spec) ──▶ blob: unmap the restorer, move premaps, mm, threads,
//!                               signals, timers, creds ... StatusRecord(READY) on status_fd,
//!                               read one byte from go_fd, rt_sigreturn into the image
//! restorer: reads one StatusRecord per task, then writes one byte per task to go_fd
//! ```

use std::os::fd::RawFd;

use nix::errno::Errno;

use super::blob_args::abi::*;
use super::blob_args::TaskSpec;
use super::blob_core::{mm_from_pb, task_from_core};
use super::open_files::Opened;
use super::plan::{vma_status as vs, Plan, TaskPlan};
use super::premap::Premapper;
use super::vdso::{self, ImageVdso, RuntimeVdso, VdsoPlan};

/// Where premaps start (far above the images' usual layouts, below the stack area).
const PREMAP_BASE: u64 = 0x5000_0000_0000;
/// Where a vdso proxy would go.
const PROXY_AT: u64 = 0x5800_0000_0000;

pub use super::premap::StepErr;

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
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

/// Which descriptors, besides the image's own, the blob closes (see [`enter`]).
pub enum Others<'a> {
    /// The task keeps exactly these ([`super::open_files::keep_only`] closes the rest first).
    Known(&'a std::collections::BTreeSet<RawFd>),
    /// Every open descriptor but the targets, found by listing `/proc/self/fd`.
    Listed,
    /// None.
    Keep,
}

/// Builds the blob's arguments for task `t` and enters the blob; returns only on error.
/// `others`: the descriptors it closes besides the image's own.
pub fn enter(
    plan: &Plan,
    t: &TaskPlan,
    opened: &Opened,
    status_fd: RawFd,
    go_fd: RawFd,
    targets: &[RawFd],
    others: Others<'_>,
) -> Result<std::convert::Infallible, StepErr> {
    let mm = t.mm.as_ref().ok_or(("no mm image", Errno::EINVAL))?;
    let pages_fd = opened.pages.get(&t.pages.file).copied();
    // Every pages file of the chain (one without incremental dumps).
    let layers: Option<Vec<(u64, RawFd)>> = t
        .pages
        .layers()
        .iter()
        .map(|l| opened.pages.get(&l.file).map(|&fd| (l.base, fd)))
        .collect();
    let page_files = layers.map(super::premap::PageFiles::new);
    let image_ranges: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    let mut spec = TaskSpec::new();
    let mut premapper = Premapper::new(&t.pages, page_files, PREMAP_BASE);
    // --lazy-pages: the userfaultfd goes to the daemon now; the blob registers the lazy VMAs
    // on it once they are in place, then closes it with the engine's other descriptors.
    if let Some(h) = opened.lazy {
        spec.task.uffd = super::lazy::hand_over(h, t.pid)?;
    }
    let vdso = plan_vdso(mm, t, pages_fd, &image_ranges)?;
    let special = vdso
        .plan
        .as_ref()
        .map_or(vdso::MOVED_SPECIAL, VdsoPlan::skipped_status);
    // Premaps stay clear of the image's layout and of the proxy's place.
    let mut avoid = image_ranges.clone();
    avoid.push(vdso.proxy_block);
    for v in &mm.vmas {
        let len = v.end - v.start;
        // With a proxy, the image's vdso and vvar are premapped like private memory.
        if v.status & special != 0 {
            spec.vmas.push(VmaArgs {
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
            spec.vmas.push(VmaArgs {
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
        let lazy = opened.lazy.is_some() && super::lazy::can_be_lazy(v);
        let hint = premapper.premap(v, file_fd, &avoid, lazy)?;
        spec.vmas.push(VmaArgs {
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
        spec.keep.push(KeepRange {
            start: hint,
            end: hint + len,
        });
    }
    // Its userfaultfd and /proc/self/mem go now, not in the blob's close list.
    drop(premapper);
    // No vdso in the image: the running one is unmapped with everything else.
    if let Some(plan) = vdso.plan {
        plan.apply(&mut spec);
    }
    let exe = *opened
        .maps
        .get(&mm.exe_file_id)
        .ok_or(("find exe file", Errno::EBADF))?;
    mm_from_pb(&mut spec, mm, exe as u32);
    spec.threads.reserve(t.threads.len());
    for (i, th) in t.threads.iter().enumerate() {
        spec.threads.push(th.spec.clone());
        if i == 0 {
            task_from_core(&mut spec, th.tid as u32, &th.core)
                .map_err(|_| ("convert task core", Errno::EINVAL))?;
        }
    }
    // A periodic itimer caught right at expiry has value 0: setitimer would disarm it.
    for it in spec.task.itimers.iter_mut() {
        let armed = it.interval.sec != 0 || it.interval.usec != 0;
        if armed && it.value.sec == 0 && it.value.usec == 0 {
            it.value.usec = 1;
        }
    }
    spec.task.umask = t.fs.as_ref().and_then(|f| f.umask).unwrap_or(0o022);
    spec.task.status_fd = status_fd;
    spec.task.go_fd = go_fd;
    spec.task.cur_rseq = crate::sys::restorer::current_rseq();
    // Everything but the image's own descriptors and the two the blob closes itself.
    spec.close_fds = match others {
        // Only `open` (and the lazy-pages userfaultfd, opened since) can be open: whatever
        // else the steps above left is closed now.
        Others::Known(open) => {
            let mut open = open.clone();
            if spec.task.uffd >= 0 {
                open.insert(spec.task.uffd);
            }
            super::open_files::keep_only(&open).map_err(|e| ("close descriptors", e))?;
            open.iter()
                .filter(|&&n| n >= 0 && !targets.contains(&n) && n != status_fd && n != go_fd)
                .map(|&n| n as u32)
                .collect()
        }
        // The owner of a shared table: what its members left is known only by listing.
        Others::Listed => {
            let mut close: Vec<u32> = Vec::new();
            for e in std::fs::read_dir("/proc/self/fd")
                .map_err(|_| ("list fds", Errno::EIO))?
                .flatten()
            {
                if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) {
                    if !targets.contains(&n) && n != status_fd && n != go_fd {
                        close.push(n as u32);
                    }
                }
            }
            close
        }
        // A member of a shared table closes nothing of it (its owner does; see `shared_fdt`).
        Others::Keep => Vec::new(),
    };
    // Until here (premaps, page fills) a vanished restorer kills the task (parent death
    // signal): nothing above may outlive it. The blob itself ends on EOF of go_fd, and the
    // death signal must not outlive the restore (with -d the restorer exits right away).
    crate::sys::process::set_pdeathsig(0).map_err(|e| ("clear pdeathsig", e))?;
    // The root and cwd last: what comes before reads /proc (the blob closes their fds).
    match super::blob_args::enter_after(&spec, || super::task_fs::enter_fs(plan, t, opened)) {
        Err(super::blob_args::EnterError::Last(step, e)) => Err((step, e)),
        Err(_) => Err(("enter the restorer blob", Errno::EINVAL)),
    }
}
