//! The restore plan: every image of a dump directory read and cross-checked up front, so that
//! nothing is created before we know the images are complete and consistent.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::error::RestoreError;
use super::img::{self, msg, ImageFile};

// The plan's types live in `model` (the checks use them too); re-exported where they were.
pub(crate) use super::model::{pe, vma_status};
pub use super::model::{
    Ghost, Layer, PageRun, Pages, Plan, TaskPlan, ThreadPlan, PAGE, TASK_ALIVE, TASK_DEAD,
    TASK_STOPPED,
};

fn bad(path: &Path, index: usize, what: impl Into<String>) -> RestoreError {
    RestoreError::Image {
        path: path.to_path_buf(),
        index,
        what: what.into(),
    }
}

/// Reads a pagemap image and lays out where each present run's data is (no parent pages).
pub fn read_pages(dir: &Path, name: &str) -> Result<Pages, RestoreError> {
    let (pages, parent) = read_layer(dir, name)?;
    if let Some(&(vaddr, _)) = parent.first() {
        return Err(RestoreError::Unsupported(format!(
            "{}: pages at {vaddr:#x} in a parent image (only private memory has chains)",
            dir.join(name).display()
        )));
    }
    Ok(pages)
}

/// Parent images followed at most.
const MAX_CHAIN: usize = 4096;

/// Reads a process's pagemap and, for its `PE_PARENT` entries, the pagemaps of the same name
/// in `parent/`, `parent/parent/`, ... until every page is found (see [`Pages`]).
pub fn read_chain_pages(dir: &Path, name: &str) -> Result<Pages, RestoreError> {
    let (mut pages, mut need) = read_layer(dir, name)?;
    if need.is_empty() {
        return Ok(pages);
    }
    let mut layers = vec![Layer {
        file: pages.file.clone(),
        base: 0,
    }];
    let mut base = file_size(&pages.file)?;
    let mut at = dir.to_path_buf();
    for _ in 0..MAX_CHAIN {
        if need.is_empty() {
            break;
        }
        at = at.join("parent");
        if !at.join(name).exists() {
            return Err(bad(
                &at.join(name),
                0,
                format!(
                    "{} pages at {:#x} are in a parent image that is missing",
                    need.iter().map(|r| r.1).sum::<u64>(),
                    need[0].0
                ),
            ));
        }
        let (layer, parent) = read_layer(&at, name)?;
        let mut next = Vec::new();
        for &(vaddr, nr) in &need {
            let end = vaddr + nr * 4096;
            let mut covered = 0;
            // Present runs of this layer inside the range.
            let i = layer
                .runs
                .partition_point(|r| r.vaddr + r.nr * 4096 <= vaddr);
            for r in layer.runs[i..].iter().take_while(|r| r.vaddr < end) {
                let (a, b) = (r.vaddr.max(vaddr), (r.vaddr + r.nr * 4096).min(end));
                pages.runs.push(PageRun {
                    entry: r.entry,
                    vaddr: a,
                    nr: (b - a) / 4096,
                    offset: base + r.offset + (a - r.vaddr),
                    lazy: r.lazy,
                });
                covered += (b - a) / 4096;
            }
            let j = parent.partition_point(|p| p.0 + p.1 * 4096 <= vaddr);
            for &(pv, pn) in parent[j..].iter().take_while(|p| p.0 < end) {
                let (a, b) = (pv.max(vaddr), (pv + pn * 4096).min(end));
                next.push((a, (b - a) / 4096));
                covered += (b - a) / 4096;
            }
            if covered != nr {
                return Err(bad(
                    &at.join(name),
                    0,
                    format!("the parent image lacks pages of {vaddr:#x}+{nr} pages"),
                ));
            }
        }
        layers.push(Layer {
            file: layer.file.clone(),
            base,
        });
        base += file_size(&layer.file)?;
        need = next;
    }
    if !need.is_empty() {
        return Err(RestoreError::Unsupported(format!(
            "{}: a chain of more than {MAX_CHAIN} parent images",
            dir.join(name).display()
        )));
    }
    pages.runs.sort_unstable_by_key(|r| r.vaddr);
    pages.layers = layers;
    Ok(pages)
}

fn file_size(file: &Path) -> Result<u64, RestoreError> {
    Ok(std::fs::metadata(file)
        .map_err(|e| RestoreError::Io {
            step: "stat pages image",
            path: file.to_path_buf(),
            source: e,
        })?
        .len())
}

/// One pagemap: its present runs (offsets in its own pages file, sorted by address) and its
/// `PE_PARENT` ranges (address, pages; sorted).
#[allow(clippy::type_complexity)]
fn read_layer(dir: &Path, name: &str) -> Result<(Pages, Vec<(u64, u64)>), RestoreError> {
    let mut f = ImageFile::open(dir, name)?;
    let head: msg::PagemapHead = f
        .next_msg()?
        .ok_or_else(|| bad(&f.path, 0, "no pagemap head"))?;
    let file = dir.join(format!("pages-{}.img", head.pages_id));
    let meta = std::fs::metadata(&file).map_err(|e| RestoreError::Io {
        step: "stat pages image",
        path: file.clone(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(bad(&file, 0, "not a regular file"));
    }
    let size = meta.len();
    let mut runs = Vec::new();
    let mut parent = Vec::new();
    let mut lazy_only = 0u64;
    let mut offset = 0u64;
    let mut index = 1;
    // The end of the previous entry: entries ascend and do not overlap.
    let mut prev_end = 0u64;
    while let Some(e) = f.next_msg::<msg::PagemapEntry>()? {
        let nr = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
        let flags = e.flags.unwrap_or(if e.in_parent == Some(true) {
            pe::PARENT
        } else {
            pe::PRESENT
        });
        let end = nr
            .checked_mul(PAGE)
            .and_then(|n| e.vaddr.checked_add(n))
            .filter(|_| nr <= (1 << 36));
        let what = |w: &str| {
            bad(
                &f.path,
                index,
                format!("vaddr {:#x} nr_pages {nr}: {w}", e.vaddr),
            )
        };
        if e.vaddr % PAGE != 0 {
            return Err(what("vaddr not page-aligned"));
        }
        if nr == 0 {
            return Err(what("no pages"));
        }
        let Some(end) = end else {
            return Err(what("run past the end of the address space"));
        };
        if flags & !(pe::PARENT | pe::LAZY | pe::PRESENT) != 0 {
            return Err(what(&format!("unknown flags {flags:#x}")));
        }
        if e.vaddr < prev_end {
            return Err(what(&format!(
                "out of order: starts below the previous entry's end {prev_end:#x}"
            )));
        }
        prev_end = end;
        if flags & pe::PARENT != 0 {
            parent.push((e.vaddr, nr));
        } else if flags & pe::PRESENT != 0 {
            runs.push(PageRun {
                entry: index,
                vaddr: e.vaddr,
                nr,
                offset,
                lazy: flags & pe::LAZY != 0,
            });
            offset += nr * PAGE;
        } else if flags & pe::LAZY != 0 {
            lazy_only += nr;
        }
        index += 1;
    }
    if offset > size {
        return Err(bad(
            &file,
            0,
            format!("truncated: pagemap {name} needs {offset} bytes, file has {size}"),
        ));
    }
    runs.sort_unstable_by_key(|r| r.vaddr);
    parent.sort_unstable();
    Ok((
        Pages {
            file,
            runs,
            layers: Vec::new(),
            lazy_only,
        },
        parent,
    ))
}

/// Reads `pipes-data.img` or `fifo-data.img`: (pipe size, queued bytes) by pipe_id.
fn read_pipe_data(dir: &Path, name: &str) -> Result<HashMap<u32, (u32, Vec<u8>)>, RestoreError> {
    let mut out = HashMap::new();
    if let Some(mut f) = ImageFile::open_opt(dir, name)? {
        while let Some(e) = f.next_msg::<msg::PipeDataEntry>()? {
            let data = f.payload(u64::from(e.bytes))?.to_vec();
            out.insert(e.pipe_id, (e.size.unwrap_or(0), data));
        }
    }
    Ok(out)
}

/// Reads and checks the whole image directory.
pub fn load(dir: &Path) -> Result<Plan, RestoreError> {
    let inv = dir.join("inventory.img");
    if !inv.exists() {
        return Err(RestoreError::Io {
            step: "open inventory",
            path: inv,
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
    }
    super::checks::inventory(dir)?;
    let (pstree, entries) = read_pstree(dir)?;
    let seccomp = match ImageFile::open_opt(dir, "seccomp.img")? {
        Some(mut f) => f.next_msg::<stasis_images::pb::SeccompEntry>()?,
        None => None,
    };
    let mut tasks = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        tasks.push(load_task(dir, &pstree, i, e, seccomp.as_ref())?);
    }
    link_children(&mut tasks, &pstree)?;
    let files = read_files(dir)?;
    let memfd_inodes = read_memfd_inodes(dir)?;
    let pipe_data = read_pipe_data(dir, "pipes-data.img")?;
    let fifo_data = read_pipe_data(dir, "fifo-data.img")?;
    let ghosts = read_ghosts(dir)?;
    let file_locks = match ImageFile::open_opt(dir, "filelocks.img")? {
        Some(mut f) => f.all()?,
        None => Vec::new(),
    };
    let mut plan = Plan {
        cow: Vec::new(),
        file_locks,
        seccomp,
        shell_job: false,
        fifo_data,
        dir: dir.to_path_buf(),
        tasks,
        files,
        memfd_inodes,
        pipe_data,
        ghosts,
        root: PathBuf::from("/"),
        ns: Default::default(),
    };
    check_references(&plan)?;
    super::checks::file_paths(&plan)?;
    plan.cow = super::cow::links(&plan);
    Ok(plan)
}

/// `pstree.img`: its path and entries, checked as read (a file of bad entries fails at the
/// first, before more are kept).
fn read_pstree(dir: &Path) -> Result<(PathBuf, Vec<msg::PstreeEntry>), RestoreError> {
    let mut pst = ImageFile::open(dir, "pstree.img")?;
    let mut seen = std::collections::HashSet::new();
    let entries: Vec<msg::PstreeEntry> = pst.all_checked(|_, e: &msg::PstreeEntry| {
        if e.pid == 0 || i32::try_from(e.pid).is_err() {
            return Err(format!("pid {} out of range", e.pid));
        }
        if !seen.insert(e.pid) {
            return Err(format!("pid {} listed twice", e.pid));
        }
        Ok(())
    })?;
    if entries.is_empty() {
        return Err(bad(&pst.path, 0, "no tasks"));
    }
    Ok((pst.path, entries))
}

/// Task `i` of pstree.img (`e`), from its core image, and for a live task its threads, ids,
/// mm, pages, fs and fdinfo images.
fn load_task(
    dir: &Path,
    pstree: &Path,
    i: usize,
    e: &msg::PstreeEntry,
    seccomp: Option<&stasis_images::pb::SeccompEntry>,
) -> Result<TaskPlan, RestoreError> {
    let pid = i32::try_from(e.pid).map_err(|_| bad(pstree, i, "pid out of range"))?;
    if pid <= 0 {
        return Err(bad(pstree, i, "pid 0"));
    }
    if i == 0 && e.ppid != 0 {
        return Err(bad(pstree, i, "root has a parent"));
    }
    let core_name = format!("core-{pid}.img");
    let core: msg::CoreEntry = img::one(dir, &core_name)?;
    let tc = core
        .tc
        .clone()
        .ok_or_else(|| bad(&dir.join(&core_name), 0, "no task core (tc)"))?;
    if core.mtype != 1 {
        return Err(RestoreError::Unsupported(format!(
            "{core_name}: architecture {}",
            core.mtype
        )));
    }
    let mut t = TaskPlan {
        pid,
        ppid: e.ppid as i32,
        pgid: e.pgid as i32,
        sid: e.sid as i32,
        state: tc.task_state,
        exit_code: tc.exit_code,
        comm: tc.comm.clone(),
        oom_score_adj: tc.oom_score_adj,
        loginuid: tc.loginuid,
        threads: Vec::new(),
        mm: None,
        pages: Pages::default(),
        fds: Vec::new(),
        fs: None,
        children: Vec::new(),
        vm_id: None,
        files_id: None,
    };
    match tc.task_state {
        TASK_DEAD => {}
        TASK_ALIVE | TASK_STOPPED => load_live_task(dir, pstree, i, e, &core, seccomp, &mut t)?,
        s => {
            return Err(RestoreError::Unsupported(format!(
                "{core_name}: task state {s}"
            )));
        }
    }
    Ok(t)
}

/// The images of live task `t` (entry `i` of pstree.img): threads, ids, mm, pages, fs and
/// descriptors.
fn load_live_task(
    dir: &Path,
    pstree: &Path,
    i: usize,
    e: &msg::PstreeEntry,
    core: &msg::CoreEntry,
    seccomp: Option<&stasis_images::pb::SeccompEntry>,
    t: &mut TaskPlan,
) -> Result<(), RestoreError> {
    let pid = t.pid;
    if e.threads.first().copied() != Some(e.pid) {
        return Err(bad(pstree, i, "main thread is not the first thread"));
    }
    let mut tids = Vec::with_capacity(e.threads.len());
    for (k, &tid) in e.threads.iter().enumerate() {
        let tid = i32::try_from(tid)
            .ok()
            .filter(|&t| t > 0)
            .ok_or_else(|| bad(pstree, i, format!("thread {k}: bad tid")))?;
        tids.push(tid);
    }
    t.threads = load_threads(dir, &tids, core, seccomp)?;
    let ids = match ImageFile::open_opt(dir, &format!("ids-{pid}.img"))? {
        Some(mut f) => f.next_msg::<msg::TaskKobjIds>()?,
        None => None,
    };
    let ids = ids.or(core.ids).ok_or_else(|| {
        bad(
            &dir.join(format!("ids-{pid}.img")),
            0,
            "no ids (neither ids image nor core.ids)",
        )
    })?;
    t.vm_id = Some(ids.vm_id);
    t.files_id = Some(ids.files_id);
    let mm: msg::MmEntry = img::one(dir, &format!("mm-{pid}.img"))?;
    super::checks::vmas(&dir.join(format!("mm-{pid}.img")), &mm)?;
    let pagemap = format!("pagemap-{pid}.img");
    t.pages = read_chain_pages(dir, &pagemap)?;
    super::checks::runs_in_vmas(&dir.join(&pagemap), &t.pages, &mm)?;
    t.mm = Some(mm);
    t.fs = Some(img::one(dir, &format!("fs-{pid}.img"))?);
    t.fds = ImageFile::open(dir, &format!("fdinfo-{}.img", ids.files_id))?.all()?;
    Ok(())
}

/// Fills every task's children from the parent links (a parent is listed before its
/// children).
fn link_children(tasks: &mut [TaskPlan], pstree: &Path) -> Result<(), RestoreError> {
    let pids: Vec<i32> = tasks.iter().map(|t| t.pid).collect();
    for i in 1..tasks.len() {
        let ppid = tasks[i].ppid;
        let pi = pids
            .iter()
            .position(|&p| p == ppid)
            .ok_or_else(|| bad(pstree, i, format!("parent {ppid} is not in the tree")))?;
        if pi >= i {
            return Err(bad(pstree, i, "parent listed after child"));
        }
        let pid = tasks[i].pid;
        tasks[pi].children.push(pid);
    }
    Ok(())
}

/// `files.img` by id.
fn read_files(dir: &Path) -> Result<BTreeMap<u32, msg::FileEntry>, RestoreError> {
    let mut files = BTreeMap::new();
    if let Some(mut f) = ImageFile::open_opt(dir, "files.img")? {
        for e in f.all::<msg::FileEntry>()? {
            // CRIU writes a terminal twice under one id: its path (REG) and the TTY entry.
            if files
                .get(&e.id)
                .is_some_and(|o: &msg::FileEntry| o.tty.is_some() && e.tty.is_none())
            {
                continue;
            }
            files.insert(e.id, e);
        }
    }
    Ok(files)
}

/// `memfd.img` by inode id, with each inode's pages.
#[allow(clippy::type_complexity)]
fn read_memfd_inodes(
    dir: &Path,
) -> Result<BTreeMap<u64, (msg::MemfdInodeEntry, Pages)>, RestoreError> {
    let mut memfd_inodes = BTreeMap::new();
    if let Some(mut f) = ImageFile::open_opt(dir, "memfd.img")? {
        for e in f.all::<msg::MemfdInodeEntry>()? {
            let name = format!("pagemap-shmem-{}.img", e.shmid);
            let pages = if dir.join(&name).exists() {
                read_pages(dir, &name)?
            } else {
                Pages::default()
            };
            memfd_inodes.insert(e.inode_id, (e, pages));
        }
    }
    Ok(memfd_inodes)
}

/// Ghost files by the id of the file they stand for (`remap-fpath.img` and
/// `ghost-file-N.img`).
fn read_ghosts(dir: &Path) -> Result<HashMap<u32, Ghost>, RestoreError> {
    let mut ghosts = HashMap::new();
    if let Some(mut f) = ImageFile::open_opt(dir, "remap-fpath.img")? {
        for (i, e) in f.all::<msg::RemapFilePathEntry>()?.into_iter().enumerate() {
            if e.remap_type.unwrap_or(0) != 1 {
                return Err(RestoreError::Unsupported(format!(
                    "remap-fpath.img: entry {i}: remap type {} (only ghost files)",
                    e.remap_type.unwrap_or(0)
                )));
            }
            let mut g = ImageFile::open(dir, &format!("ghost-file-{}.img", e.remap_id))?;
            let mut head: msg::GhostFileEntry = g
                .next_msg()?
                .ok_or_else(|| bad(&g.path, 0, "no ghost file entry"))?;
            let mut chunks = Vec::new();
            if head.chunks == Some(true) {
                while let Some(c) = g.next_msg::<msg::GhostChunkEntry>()? {
                    chunks.push((c.off, g.payload(c.len)?.to_vec()));
                }
            } else {
                // CRIU copies a small file whole, to the end of the image.
                let data = g.payload_rest().to_vec();
                if head.size.is_none() {
                    head.size = Some(data.len() as u64);
                }
                chunks.push((0, data));
            }
            ghosts.insert(e.orig_id, (head, chunks));
        }
    }
    Ok(ghosts)
}

/// Everything checked before a restore creates anything: [`load`], then what depends on
/// the options (groups and sessions with `shell_job`, the `root` paths resolve under).
pub fn prepare(dir: &Path, shell_job: bool, root: &Path) -> Result<Plan, RestoreError> {
    let mut plan = load(dir)?;
    plan.shell_job = shell_job;
    super::checks::groups(&plan, shell_job)?;
    plan.root = root.to_path_buf();
    plan.ns = super::namespaces::plan(&plan)?;
    Ok(plan)
}

/// Threads from this many on are read by several workers.
const PARALLEL_THREADS: usize = 64;

/// Reads `core-TID.img` of every thread of a task (`tids[0]` is the leader, whose `core` is
/// already read) and converts each to the blob's arguments (seccomp filter chains, strict
/// seccomp, registers, FPU ...), on up to 4 worker threads for many threads (a core image
/// costs about 15 µs to read, decode and convert).
fn load_threads(
    dir: &Path,
    tids: &[i32],
    leader: &msg::CoreEntry,
    seccomp: Option<&stasis_images::pb::SeccompEntry>,
) -> Result<Vec<ThreadPlan>, RestoreError> {
    let one = |k: usize, tid: i32| -> Result<ThreadPlan, RestoreError> {
        let name = format!("core-{tid}.img");
        let core = if k == 0 {
            leader.clone()
        } else {
            img::one(dir, &name)?
        };
        if core.thread_info.is_none() {
            return Err(bad(&dir.join(&name), 0, "no registers"));
        }
        let spec = super::blob_core::thread_from_core(tid as u32, &core, k == 0, seccomp)
            .map_err(|e| bad(&dir.join(&name), 0, e.to_string()))?;
        Ok(ThreadPlan { tid, core, spec })
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if tids.len() < PARALLEL_THREADS || workers < 2 {
        return tids.iter().enumerate().map(|(k, &t)| one(k, t)).collect();
    }
    let per = tids.len().div_ceil(workers);
    std::thread::scope(|sc| {
        let handles: Vec<_> = tids
            .chunks(per)
            .enumerate()
            .map(|(c, chunk)| {
                let one = &one;
                sc.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(j, &t)| one(c * per + j, t))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tids.len());
        for h in handles {
            let part = h.join().map_err(|_| {
                RestoreError::Unsupported("a worker reading core images panicked".into())
            })??;
            out.extend(part);
        }
        Ok(out)
    })
}

/// Every id an image refers to must exist; features we do not restore are refused here.
fn check_references(plan: &Plan) -> Result<(), RestoreError> {
    let mut vm_ids: HashMap<u32, i32> = HashMap::new();
    for t in &plan.tasks {
        // The task part of the blob's argument conversion, run up front so a bad core fails
        // before any task exists (the threads' part ran in load_threads).
        for (i, th) in t.threads.iter().enumerate() {
            let core_path = plan.dir.join(format!("core-{}.img", th.tid));
            let conv = |e: &dyn std::fmt::Display| RestoreError::Image {
                path: core_path.clone(),
                index: 0,
                what: e.to_string(),
            };
            if i == 0 {
                let mut spec = super::blob_args::TaskSpec::new();
                super::blob_core::task_from_core(&mut spec, th.tid as u32, &th.core)
                    .map_err(|e| conv(&e))?;
            }
            let old = th
                .core
                .tc
                .as_ref()
                .and_then(|c| c.old_seccomp_mode)
                .unwrap_or(0);
            if old != 0 {
                return Err(RestoreError::Unsupported(format!(
                    "core-{}.img: old-style seccomp mode {old}",
                    th.tid
                )));
            }
        }
        if let Some(vm) = t.vm_id {
            if let Some(other) = vm_ids.insert(vm, t.pid) {
                return Err(RestoreError::Unsupported(format!(
                    "ids-{}.img: task shares its address space with task {other} (CLONE_VM)",
                    t.pid
                )));
            }
        }
        super::shared_fdt::check(plan, t)?;
        if t.pid != plan.tasks[0].pid && t.sid != t.pid {
            let parent = plan.tasks.iter().find(|p| p.pid == t.ppid);
            if parent.is_some_and(|p| p.sid != t.sid) {
                return Err(RestoreError::Unsupported(format!(
                    "pstree.img: task {} is in session {} but its parent is not (helper tasks are not implemented)",
                    t.pid, t.sid
                )));
            }
        }
        for (i, fd) in t.fds.iter().enumerate() {
            if !plan.files.contains_key(&fd.id) {
                return Err(bad(
                    &plan.dir.join("files.img"),
                    i,
                    format!(
                        "task {}: fd {} refers to missing file id {}",
                        t.pid, fd.fd, fd.id
                    ),
                ));
            }
        }
        if let Some(fs) = &t.fs {
            for id in [fs.cwd_id, fs.root_id] {
                if plan.files.get(&id).is_none_or(|f| f.reg.is_none()) {
                    return Err(bad(
                        &plan.dir.join(format!("fs-{}.img", t.pid)),
                        0,
                        format!("cwd/root refers to missing file id {id}"),
                    ));
                }
            }
        }
        if let Some(mm) = &t.mm {
            for (i, v) in mm.vmas.iter().enumerate() {
                let mmpath = plan.dir.join(format!("mm-{}.img", t.pid));
                let st = v.status;
                if st & (vma_status::FILE_PRIVATE | vma_status::FILE_SHARED) != 0
                    && !plan.files.contains_key(&(v.shmid as u32))
                {
                    return Err(bad(
                        &mmpath,
                        0,
                        format!("vma {i}: missing file id {}", v.shmid),
                    ));
                }
                if st
                    & (vma_status::SYSVIPC
                        | vma_status::SOCKET
                        | vma_status::AIORING
                        | vma_status::UNSUPP)
                    != 0
                {
                    return Err(RestoreError::Unsupported(format!(
                        "mm-{}.img: vma {i} at {:#x}: status {st:#x}",
                        t.pid, v.start
                    )));
                }
            }
        }
    }
    Ok(())
}
