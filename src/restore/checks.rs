//! Checks of the images that need more than one entry at a time, run by [`super::plan`]
//! before anything is created: a hostile or damaged image set fails here, naming the file
//! and the entry, instead of hanging, dying later or being silently half-restored.
//!
//! ```text
//!  inventory.img  one inventory entry, image version 1 or 2, fdinfo per id
//!  mm-P.img       VMAs page-aligned, non-empty, ascending, non-overlapping, below the top of
//!                 the user address space ([vsyscall] excepted)
//!  pagemap-P.img  every run inside the task's VMAs (runs themselves: plan::read_pages)
//!  pstree.img     every group joined is led by a task of the tree in the same session
//!                 (the root's group and session: theirs, or the caller's with --shell-job)
//!  files.img      paths of regular files are absolute (opened under --root)
//! ```

use std::path::Path;

use super::error::RestoreError;
use super::img::{self, msg};
use super::model::{vma_status, Pages, Plan, TaskPlan, PAGE};

/// The end of the x86-64 user address space with 5-level page tables (with 4 levels it is
/// lower; the kernel refuses mappings past it, which the restore then reports).
pub const USER_SPACE_END: u64 = (1 << 56) - PAGE;

fn bad(path: &Path, index: usize, what: impl Into<String>) -> RestoreError {
    RestoreError::Image {
        path: path.to_path_buf(),
        index,
        what: what.into(),
    }
}

/// inventory.img: one entry of a supported version (as CRIU's `check_img_inventory`).
pub fn inventory(dir: &Path) -> Result<stasis_images::pb::InventoryEntry, RestoreError> {
    let path = dir.join("inventory.img");
    let mut f = img::ImageFile::open(dir, "inventory.img")?;
    let inv: stasis_images::pb::InventoryEntry = f
        .next_msg()?
        .ok_or_else(|| bad(&path, 0, "no inventory entry"))?;
    if f.next_msg::<stasis_images::pb::InventoryEntry>()?.is_some() {
        return Err(bad(&path, 1, "more than one inventory entry"));
    }
    if !matches!(inv.img_version, 1 | 2) {
        return Err(bad(
            &path,
            0,
            format!("image version {} (1 and 2 are known)", inv.img_version),
        ));
    }
    if inv.fdinfo_per_id != Some(true) {
        return Err(bad(&path, 0, "fdinfo_per_id is not set (too old an image)"));
    }
    if inv.root_cg_set == Some(0) {
        return Err(bad(&path, 0, "root cgroup set 0"));
    }
    Ok(inv)
}

/// The VMAs of `mm-P.img`: each a non-empty, page-aligned range below [`USER_SPACE_END`]
/// (`[vsyscall]`, at a fixed kernel address, excepted), in ascending order without overlap.
pub fn vmas(path: &Path, mm: &msg::MmEntry) -> Result<(), RestoreError> {
    let mut prev_end = 0u64;
    for (i, v) in mm.vmas.iter().enumerate() {
        let what = |w: &str| {
            bad(
                path,
                0,
                format!("vma {i} [{:#x}, {:#x}): {w}", v.start, v.end),
            )
        };
        if v.start % PAGE != 0 || v.end % PAGE != 0 {
            return Err(what("not page-aligned"));
        }
        if v.end <= v.start {
            return Err(what("empty or reversed"));
        }
        if v.status & vma_status::VSYSCALL == 0 && v.end > USER_SPACE_END {
            return Err(what(&format!(
                "beyond the user address space (ends at most at {USER_SPACE_END:#x})"
            )));
        }
        if v.start < prev_end {
            return Err(what("overlaps or precedes the previous vma"));
        }
        prev_end = v.end;
    }
    Ok(())
}

/// Every page run of a task lies inside one of its VMAs (a run spanning adjacent VMAs is
/// fine); `pagemap` names the file for errors.
pub fn runs_in_vmas(pagemap: &Path, pages: &Pages, mm: &msg::MmEntry) -> Result<(), RestoreError> {
    for (k, r) in pages.runs.iter().enumerate() {
        let end = r.vaddr + r.nr * PAGE;
        let mut at = r.vaddr;
        for v in mm.vmas.iter().filter(|v| v.end > r.vaddr && v.start < end) {
            if v.start > at {
                break;
            }
            at = at.max(v.end);
        }
        if at < end {
            return Err(bad(
                pagemap,
                r.entry,
                format!(
                    "page run {k} [{:#x}, {end:#x}): page {at:#x} is in no vma of the task",
                    r.vaddr
                ),
            ));
        }
    }
    Ok(())
}

/// Process groups and sessions: what each task joins must exist in the tree (or be the
/// caller's, for the root with `shell_job`), so it is known before anything starts.
pub fn groups(plan: &Plan, shell_job: bool) -> Result<(), RestoreError> {
    let pstree = plan.dir.join("pstree.img");
    let root = &plan.tasks[0];
    if (root.sid != root.pid || root.pgid != root.pid) && !shell_job {
        return Err(RestoreError::Unsupported(format!(
            "pstree.img: root {} is in session {} and group {} of a task outside the images; \
             restore it with --shell-job",
            root.pid, root.sid, root.pgid
        )));
    }
    let find = |pid: i32| plan.tasks.iter().find(|t| t.pid == pid);
    for (i, t) in plan.tasks.iter().enumerate() {
        let outside_ok = shell_job && i > 0 && t.pgid == root.pgid && root.pgid != root.pid;
        if t.pgid == t.pid || outside_ok || (i == 0 && shell_job) {
            continue;
        }
        let leader: &TaskPlan = find(t.pgid).ok_or_else(|| {
            bad(
                &pstree,
                i,
                format!(
                    "task {} is in process group {}, which no task of the tree leads",
                    t.pid, t.pgid
                ),
            )
        })?;
        if leader.pgid != leader.pid {
            return Err(bad(
                &pstree,
                i,
                format!(
                    "task {} is in process group {} whose leader moved to group {}",
                    t.pid, t.pgid, leader.pgid
                ),
            ));
        }
        if leader.sid != t.sid {
            return Err(bad(
                &pstree,
                i,
                format!(
                    "task {} (session {}) is in process group {} of session {}",
                    t.pid, t.sid, t.pgid, leader.sid
                ),
            ));
        }
    }
    for (i, t) in plan.tasks.iter().enumerate().skip(1) {
        if t.sid != t.pid && !(shell_job && t.sid == root.sid) && find(t.sid).is_none() {
            return Err(bad(
                &pstree,
                i,
                format!(
                    "task {} is in session {}, which no task of the tree leads",
                    t.pid, t.sid
                ),
            ));
        }
    }
    Ok(())
}

/// Regular files are named by absolute paths (they are opened under `--root`).
pub fn file_paths(plan: &Plan) -> Result<(), RestoreError> {
    for (i, (id, f)) in plan.files.iter().enumerate() {
        let Some(reg) = &f.reg else { continue };
        if !reg.name.starts_with('/') {
            return Err(bad(
                &plan.dir.join("files.img"),
                i,
                format!("file id {id}: path {:?} is not absolute", reg.name),
            ));
        }
        if reg.name.contains('\0') {
            return Err(bad(
                &plan.dir.join("files.img"),
                i,
                format!("file id {id}: path {:?} holds a NUL byte", reg.name),
            ));
        }
    }
    Ok(())
}
