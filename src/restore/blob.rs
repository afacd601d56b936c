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
use super::files::Opened;
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

/// Builds the blob's arguments for task `t` and enters the blob; returns only on error.
pub fn enter(
    _plan: &Plan,
    t: &TaskPlan,
    opened: &Opened,
    status_fd: RawFd,
    go_fd: RawFd,
    targets: &[RawFd],
) -> Result<std::convert::Infallible, StepErr> {
    let mm = t.mm.as_ref().ok_or(("no mm image", Errno::EINVAL))?;
    let pages_fd = opened.pages.get(&t.pages.file).copied();
    let image_ranges: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    let mut spec = TaskSpec::new();
    let mut premapper = Premapper::new(&t.pages, pages_fd, PREMAP_BASE);
    let mut image_vdso = ImageVdso::default();
    for v in &mm.vmas {
        let len = v.end - v.start;
        if v.status & vs::VDSO != 0 {
            image_vdso.vdso = (v.start, v.end);
        }
        if v.status & vs::VVAR != 0 {
            image_vdso.vvar = Some((v.start, v.end));
        }
        if v.status & (vs::VDSO | vs::VVAR | vs::VSYSCALL) != 0 {
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
                flags: libc::MAP_SHARED as u32,
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
        let hint = premapper.premap(v, file_fd, &image_ranges)?;
        spec.vmas.push(VmaArgs {
            start: v.start,
            end: v.end,
            premap: hint,
            prot: v.prot,
            flags: v.flags,
            madv: v.madv.unwrap_or(0),
            kind: VMA_PREMAPPED,
            fd: -1,
            ..Default::default()
        });
        spec.keep.push(KeepRange {
            start: hint,
            end: hint + len,
        });
    }
    let rt = RuntimeVdso::current().map_err(|_| ("read the running vdso", Errno::EIO))?;
    let rt_bytes = rt
        .read_bytes()
        .map_err(|_| ("read the running vdso", Errno::EIO))?;
    let free = |a: u64, b: u64| !image_ranges.iter().any(|&r| overlaps(r, (a, b)));
    match vdso::plan(&image_vdso, &rt, &rt_bytes, free, PROXY_AT)
        .map_err(|_| ("plan the vdso", Errno::EINVAL))?
    {
        VdsoPlan::Move { special } => spec.special = special,
        VdsoPlan::Proxy { .. } => {
            return Err((
                "vdso differs from this kernel's (proxy not wired)",
                Errno::ENOTSUP,
            ))
        }
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
    spec.close_fds = close;
    match super::blob_args::enter(&spec) {
        Err(_) => Err(("enter the restorer blob", Errno::EINVAL)),
    }
}
