//! The dump itself: freeze, collect, write, then kill or release.
//!
//! ```text
//!  freeze (Backend) ─► collect-tree ─► per process: collect-task, mm, files, pages plan
//!        │                                            (all while frozen)
//!        │           ─► images: pstree, core-*, mm-*, pagemap-*/pages-*, fdinfo-*, fs-*,
//!        │              ids-*, files, memfd, remap-fpath, ghost-file-*, pipes-data,
//!        │              pagemap-shmem-*, seccomp, timens-0, inventory, stats-dump
//!        │           ─► wait for the spooled core images, one syncfs of the directory
//!        └─► success: kill (unless --leave-running), release   failure: release only
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use stasis_images::pb;

use super::collect_files::{self, Files};
use super::core_image::{self, Creds, ProcessFacts, ThreadFacts};
use super::error::{DumpError, Result};
use super::fault;
use super::freeze::{Backend, FrozenTree};
use super::images_out::{self as out, ImageDir};
use super::misc_images::{self, DumpStats, IdAllocator};
use super::mm::{self, MmFields};
use super::namespaces::{self, PidMap};
use super::options::DumpOptions;
use super::page_writers::{DeferredSource, PageWriters};
use super::pages;
use super::profile::Profile;
use super::seccomp::ThreadSeccomp;
use super::tree::{self, Process};
use crate::action_scripts::Action;
use crate::pages::Target;
use crate::proc;

/// What a finished dump produced.
#[derive(Debug)]
pub struct DumpReport {
    /// Every file written, in order.
    pub images: Vec<PathBuf>,
    pub bytes: u64,
    pub stats: DumpStats,
    pub profile: Profile,
    /// Pids of the tree, root first.
    pub pids: Vec<i32>,
}

/// Everything collected from one live process (its core and page images are written
/// already).
struct Collected {
    pid: i32,
    fdinfo: Vec<pb::FdinfoEntry>,
    fs: pb::FsEntry,
    ids: pb::TaskKobjIdsEntry,
    /// The `fdinfo-<id>.img` this task writes (None: its table is its parent's).
    fdinfo_id: Option<u32>,
}

fn creds(st: &proc::status::Status, pid: i32) -> Result<Creds> {
    let e = |x| DumpError::proc("collect-task", pid, x);
    let u = st.uids().map_err(e)?;
    let g = st.gids().map_err(e)?;
    Ok(Creds {
        uid: [u.real, u.effective, u.saved, u.fs],
        gid: [g.real, g.effective, g.saved, g.fs],
        groups: st.groups().map_err(e)?,
        cap_inh: st.cap_inh().map_err(e)?,
        cap_prm: st.cap_prm().map_err(e)?,
        cap_eff: st.cap_eff().map_err(e)?,
        cap_bnd: st.cap_bnd().map_err(e)?,
        cap_amb: st.cap_amb().unwrap_or(0),
        secbits: 0,
        no_new_privs: st.no_new_privs().unwrap_or(false),
    })
}

/// Thread facts from /proc, for probes that do not read them inside the thread.
fn thread_facts_from_proc(pid: i32, tid: i32) -> Result<ThreadFacts> {
    let pe = |x| DumpError::proc("collect-task", pid, x);
    let tstat = proc::stat::read_thread(pid, tid).map_err(pe)?;
    let tstatus = proc::status::read_thread(pid, tid).map_err(pe)?;
    Ok(ThreadFacts {
        tid,
        comm: proc::misc::read_comm(pid, tid).map_err(pe)?,
        blk_sigset: tstatus.sig_blk().map_err(pe)?,
        sched_policy: tstat.policy,
        sched_nice: tstat.nice as i32,
        sched_prio: tstat.rt_priority,
        creds: creds(&tstatus, tid)?,
    })
}

/// What the engine keeps while collecting.
struct Ctx<'a> {
    dir: &'a mut ImageDir,
    files: &'a mut Files,
    ids: &'a mut IdAllocator,
    stats: &'a mut DumpStats,
    prof: &'a mut Profile,
    sink: &'a mut dyn crate::pages::PageSink,
    extras: &'a mut super::extras::Extras,
    /// Dirty tracking and the parent image (incremental dumps).
    tracking: &'a mut super::dirty::session::Session,
    /// `--lazy-pages`: private anonymous pages are left out (PE_LAZY entries).
    lazy: bool,
    /// Threads writing pinned pages while the next process is dumped.
    writers: &'a mut PageWriters,
    /// The pids the images hold (inside the tree's pid namespace).
    pids: &'a PidMap,
}

/// `/proc/PID/task/TID/cgroup` of every thread (raw text): the leader's text for the threads
/// its cgroups' membership files list ([`crate::cgroup::threads`]), the thread's own file for
/// the others, a few threads at once when there are many. Threads of a process nearly always
/// share one text, parsed once.
fn read_cgroups_parallel(pid: i32, tids: &[i32]) -> Result<Vec<Arc<Vec<u8>>>> {
    let shared = crate::cgroup::threads::shared_with_leader(pid, tids)
        .inspect_err(|e| tracing::debug!("cgroups of {pid}: every thread's own file: {e}"))
        .ok();
    let same = |i: usize| shared.as_ref().is_some_and(|s| s.same[i]);
    let rest: Vec<i32> = (0..tids.len())
        .filter(|&i| !same(i))
        .map(|i| tids[i])
        .collect();
    let mut own = read_cgroups_each(pid, &rest)?.into_iter().map(Arc::new);
    // The threads sharing the leader's text share one copy of it.
    let leader_text = shared.as_ref().map(|s| Arc::new(s.text.clone()));
    (0..tids.len())
        .map(|i| match (&shared, &leader_text) {
            (Some(s), Some(text)) if s.same[i] => Ok(Arc::clone(text)),
            _ => own
                .next()
                .ok_or_else(|| DumpError::new("cgroup", pid, None, "a thread's text is missing")),
        })
        .collect()
}

/// Each thread's own `/proc/PID/task/TID/cgroup`, in order.
fn read_cgroups_each(pid: i32, tids: &[i32]) -> Result<Vec<Vec<u8>>> {
    const PER_WORKER: usize = 256;
    let read = |tid: i32| {
        let p = proc::path(pid, &format!("task/{tid}/cgroup"));
        std::fs::read(&p).map_err(|e| DumpError::io("cgroup", pid, &p.display().to_string(), e))
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    if tids.len() < 2 * PER_WORKER || workers < 2 {
        return tids.iter().map(|&t| read(t)).collect();
    }
    let chunk = tids.len().div_ceil(workers);
    let parts: Vec<Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = tids
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(|&t| read(t)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(DumpError::new("cgroup", pid, None, "reader panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(tids.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// The thread_core fields of the extras: seccomp mode/filter and cgroup set.
fn apply_extras(tc: &mut pb::ThreadCoreEntry, seccomp: Option<ThreadSeccomp>, cg_set: u32) {
    if let Some(f) = seccomp {
        f.apply(tc);
    }
    tc.cg_set = Some(cg_set);
}

/// What the image writers need to build one thread's core image.
struct CoreJob {
    facts: ThreadFacts,
    probe: super::probe::ThreadProbe,
    /// The process part, for the leader.
    process: Option<(ProcessFacts, super::probe::ProcessProbe)>,
    seccomp: Option<ThreadSeccomp>,
    cg_set: u32,
}

/// The cgroup files of every thread of a process (raw text; see [`read_cgroups_parallel`]).
type CgroupTexts = Vec<Arc<Vec<u8>>>;

/// Reads `/proc` for what the collection of one process needs in the background while its
/// threads are probed (each read once, taken by the step that needs it).
struct Background {
    /// smaps, the slowest /proc file (the kernel walks every VMA's page tables).
    smaps:
        Option<std::thread::JoinHandle<std::result::Result<Vec<proc::maps::Vma>, proc::ProcError>>>,
    /// `/proc/PID/task/TID/cgroup` of every thread.
    cgroups: Option<std::thread::JoinHandle<Result<CgroupTexts>>>,
    /// The leader's seccomp state, read before the parasite runs in it.
    leader_seccomp: Option<ThreadSeccomp>,
    exe_file_id: u32,
    auxv: Vec<u64>,
}

/// The per-process facts of `p` from /proc (and its group stop from the freezer), with its
/// `status` file.
fn process_facts(
    p: &Process,
    frozen: &mut dyn FrozenTree,
    pids: &PidMap,
) -> Result<(ProcessFacts, proc::status::Status)> {
    let pid = p.pid;
    let pe = |x| DumpError::proc("collect-task", pid, x);
    let status = proc::status::read(pid).map_err(pe)?;
    let pf = ProcessFacts {
        state: if p.stat.state == 'T' || frozen.group_stopped(pid) {
            core_image::TASK_STOPPED
        } else {
            core_image::TASK_ALIVE
        },
        exit_code: 0,
        personality: proc::misc::read_personality(pid).map_err(pe)?,
        flags: p.stat.flags,
        comm: p.stat.comm.clone(),
        blk_sigset: status.sig_blk().map_err(pe)?,
        rlimits: proc::misc::read_limits(pid).map_err(pe)?,
        loginuid: proc::misc::read_loginuid(pid).map_err(pe)?,
        oom_score_adj: proc::misc::read_oom_score_adj(pid).map_err(pe)?,
        posix_timers: {
            let mut timers = proc::timers::read(pid).map_err(pe)?;
            for t in &mut timers {
                if t.notify & libc::SIGEV_THREAD_ID != 0 {
                    t.notify_pid = pids.inside("a timer's thread", pid, t.notify_pid)?;
                }
            }
            timers
        },
        seccomp_mode: status.seccomp().map_err(pe)?,
    };
    Ok((pf, status))
}

/// Starts the background reads of `p` and reads what must come before the parasite runs.
fn start_background(p: &Process, cx: &mut Ctx<'_>, seccomp_mode: u32) -> Result<Background> {
    let pid = p.pid;
    // smaps in the background while the threads are probed; the parasite's area is taken
    // out later.
    let smaps = Some(std::thread::spawn(move || proc::maps::read_smaps(pid)));
    let exe_file_id = cx.files.exe(pid)?;
    let auxv = proc::misc::read_auxv(pid).map_err(|x| DumpError::proc("mm", pid, x))?;
    // Cgroup sets of every thread: /proc files read in the background; the leader's seccomp
    // filters now (PTRACE_SECCOMP_GET_FILTER needs it stopped, and the parasite will run in
    // it); the other threads' seccomp modes come with their state.
    let tids = p.threads.clone();
    let cgroups = Some(std::thread::spawn(move || {
        read_cgroups_parallel(pid, &tids)
    }));
    let leader_seccomp = cx.extras.seccomp.thread(pid, pid, seccomp_mode)?;
    Ok(Background {
        smaps,
        cgroups,
        leader_seccomp,
        exe_file_id,
        auxv,
    })
}

/// The seccomp state of thread `tid`: the leader's was read before the parasite ran; the
/// others' mode comes with their probe (or /proc).
fn thread_seccomp(
    pid: i32,
    tid: i32,
    tp: &super::probe::ThreadProbe,
    leader: &mut Option<Option<ThreadSeccomp>>,
    cx: &mut Ctx<'_>,
) -> Result<Option<ThreadSeccomp>> {
    if tid == pid {
        if let Some(f) = leader.take() {
            return Ok(f);
        }
    }
    let mode = match tp.seccomp_mode {
        Some(m) => m,
        None => proc::status::read_thread(pid, tid)
            .and_then(|s| s.seccomp())
            .map_err(|e| DumpError::proc("seccomp", pid, e))?,
    };
    cx.extras.seccomp.thread(pid, tid, mode)
}

/// Cgroup set ids by the text of a thread's cgroup file (threads nearly always share one).
#[derive(Default)]
struct CgSetCache {
    sets: std::collections::HashMap<Arc<Vec<u8>>, u32>,
    last: Option<(Arc<Vec<u8>>, u32)>,
}

impl CgSetCache {
    /// The set id of thread `tid`, whose cgroup file reads `text`.
    fn set_of(&mut self, pid: i32, tid: i32, text: Arc<Vec<u8>>, cx: &mut Ctx<'_>) -> Result<u32> {
        let id = match self.last.as_ref() {
            // Nearly every thread shares the previous one's text (the same copy).
            Some((prev, id)) if Arc::ptr_eq(prev, &text) => *id,
            _ => match self.sets.get(&text) {
                Some(&id) => id,
                None => {
                    let path = proc::path(pid, &format!("task/{tid}/cgroup"));
                    let members = crate::cgroup::parse(&path, &String::from_utf8_lossy(&text))
                        .map_err(|e| DumpError::new("cgroup", pid, e.errno(), e.to_string()))?;
                    let id = cx.extras.cgroups.task_members(members);
                    self.sets.insert(Arc::clone(&text), id);
                    id
                }
            },
        };
        self.last = Some((text, id));
        Ok(id)
    }
}

/// Probes every thread of `p` and hands their core images to the image writers.
fn spool_cores(
    p: &Process,
    acc: &mut dyn super::probe::ProcessAccess,
    cx: &mut Ctx<'_>,
    pf: &ProcessFacts,
    pprobe: &super::probe::ProcessProbe,
    bg: &mut Background,
) -> Result<()> {
    let pid = p.pid;
    let t1 = cx.prof.now_us();
    let tprobes = acc.threads()?;
    cx.prof
        .record(&format!("threads {pid}"), "threads", pid, t1);
    let t1 = cx.prof.now_us();
    let raw = bg
        .cgroups
        .take()
        .ok_or_else(|| DumpError::new("cgroup", pid, None, "cgroups read twice"))?
        .join()
        .map_err(|_| DumpError::new("cgroup", pid, None, "cgroup reader panicked"))??;
    cx.prof
        .record(&format!("cgroup-join {pid}"), "cores", pid, t1);
    let mut leader_part = Some((pf.clone(), pprobe.clone()));
    let mut leader_seccomp = Some(bg.leader_seccomp);
    let mut cg_sets = CgSetCache::default();
    // Per thread: the cheap bookkeeping here, the core image built and written by the
    // image writers (handed over in chunks).
    let mut cores = Vec::with_capacity(tprobes.len());
    for ((&tid, mut tp), text) in p.threads.iter().zip(tprobes).zip(raw) {
        let t = cx.prof.now_us();
        let facts = match tp.facts.take() {
            Some(f) => f,
            None => thread_facts_from_proc(pid, tid)?,
        };
        let seccomp = thread_seccomp(pid, tid, &tp, &mut leader_seccomp, cx)?;
        let cg_set = cg_sets.set_of(pid, tid, text, cx)?;
        // The leader's blocked mask as its thread state says (PTRACE_GETSIGMASK, the
        // parasite): /proc shows the temporary mask of a sigsuspend/ppoll/pselect it
        // sits in, which must not become its own mask after the restore.
        let process = if tid == pid {
            leader_part.take().map(|(mut f, p)| {
                f.blk_sigset = facts.blk_sigset;
                (f, p)
            })
        } else {
            None
        };
        let core = CoreJob {
            facts,
            probe: tp,
            process,
            seccomp,
            cg_set,
        };
        cores.push((format!("core-{}.img", cx.pids.v(tid)), core));
        cx.prof.record(&format!("thread {tid}"), "thread", tid, t);
    }
    cx.dir.spool_each(cores, |c: CoreJob| {
        let process = c.process.as_ref().map(|(f, p)| (f, p));
        let mut entry = core_image::core_entry(&c.facts, &c.probe, process);
        if let Some(tc) = entry.thread_core.as_mut() {
            apply_extras(tc, c.seccomp, c.cg_set);
        }
        Ok(core_image::core_file(&entry))
    });
    cx.prof.record(&format!("cores {pid}"), "cores", pid, t1);
    Ok(())
}

/// The memory of one process: its VMAs (the probe's own areas left out), the readable
/// ranges, and the fields of its mm image.
struct MmCollected {
    vmas: Vec<mm::VmaOut>,
    readable: Vec<(u64, u64)>,
    fields: MmFields,
}

/// Collects the memory layout of `p` (smaps from the background read).
fn collect_mm(
    p: &Process,
    acc: &mut dyn super::probe::ProcessAccess,
    cx: &mut Ctx<'_>,
    pprobe: &super::probe::ProcessProbe,
    bg: &mut Background,
) -> Result<MmCollected> {
    let pid = p.pid;
    let t2 = cx.prof.now_us();
    let hidden = acc.hidden_areas();
    let maps: Vec<proc::maps::Vma> = bg
        .smaps
        .take()
        .ok_or_else(|| DumpError::new("mm", pid, None, "smaps read twice"))?
        .join()
        .map_err(|_| DumpError::new("mm", pid, None, "smaps reader panicked"))?
        .map_err(|x| DumpError::proc("mm", pid, x))?
        .into_iter()
        .filter(|v| !hidden.iter().any(|&(s, e)| v.start < e && s < v.end))
        .collect();
    cx.prof.record(&format!("maps {pid}"), "mm", pid, t2);
    let t2 = cx.prof.now_us();
    let vmas = mm::vmas(pid, &maps, cx.files)?;
    let readable = mm::readable_ranges(&maps);
    let fields = MmFields {
        stat: p.stat.clone(),
        brk: if pprobe.brk != 0 {
            pprobe.brk
        } else {
            mm::brk_from_maps(&maps, p.stat.start_brk)
        },
        auxv: bg.auxv.clone(),
        exe_file_id: bg.exe_file_id,
        // 0 is a value (PR_SET_DUMPABLE 0), not "unknown".
        dumpable: pprobe.dumpable,
        thp_disabled: pprobe.thp_disabled,
        mlockall: pprobe.mlockall,
    };
    cx.prof.record(&format!("mm {pid}"), "mm", pid, t2);
    Ok(MmCollected {
        vmas,
        readable,
        fields,
    })
}

/// Spools the mm image of process `pid` and sends its pages (only those changed since the
/// parent image, when there is one) to the page sink.
fn dump_memory(
    pid: i32,
    acc: &mut dyn super::probe::ProcessAccess,
    cx: &mut Ctx<'_>,
    m: MmCollected,
) -> Result<()> {
    let t3 = cx.prof.now_us();
    let runs = pages::plan(pid, &m.vmas, &mut cx.stats.pages, cx.lazy)?;
    let runs = cx.tracking.source(acc, pid, &m.vmas, runs)?;
    let (fields, vmas) = (m.fields, m.vmas);
    let vpid = cx.pids.v(pid);
    cx.dir.spool(&format!("mm-{vpid}.img"), move || {
        Ok(mm::mm_file(&mm::mm_entry(&fields, &vmas)))
    });
    let mut src = DeferredSource {
        probe: acc,
        readable: &m.readable,
        writers: &mut *cx.writers,
        pid,
        unpinnable: false,
    };
    pages::send(cx.sink, Target::Process(vpid as u64), &runs, &mut src, pid)?;
    pages::count_written(&runs, &mut cx.stats.pages);
    cx.prof.record(&format!("pages {pid}"), "pages", pid, t3);
    Ok(())
}

/// The descriptors (unless its table is its parent's), cwd, root and ids of process `p`.
fn collect_files_and_ids(
    p: &Process,
    cx: &mut Ctx<'_>,
    status: &proc::status::Status,
) -> Result<Collected> {
    let pid = p.pid;
    fault::check("files", pid)?;
    let t3 = cx.prof.now_us();
    let obj = cx.ids.object();
    // A table shared with the parent (CLONE_FILES) is the parent's: its fds are dumped once.
    let shared_table = cx.files.fd_table(pid, p.ppid, obj)?;
    let mut fdinfo = Vec::new();
    if shared_table.is_none() {
        let fds = proc::fd::list_fds(pid).map_err(|x| DumpError::proc("files", pid, x))?;
        fdinfo.reserve(fds.len());
        for fd in fds {
            fdinfo.push(collect_files::fdinfo_entry(&cx.files.fd(pid, fd)?));
        }
    }
    let cwd = cx.files.fs_dir(pid, "cwd")?;
    let root = cx.files.fs_dir(pid, "root")?;
    let umask = status
        .umask()
        .map_err(|x| DumpError::proc("collect-task", pid, x))?;
    let fs = misc_images::fs_entry(cwd, root, umask);
    cx.prof.record(&format!("files {pid}"), "files", pid, t3);

    let ns = proc::ns::read(pid).map_err(|x| DumpError::proc("collect-task", pid, x))?;
    let files_id = shared_table.unwrap_or(obj);
    let ids_entry = cx.ids.ids_entry(&ns, [obj, files_id, obj, obj]);
    Ok(Collected {
        pid: cx.pids.v(pid),
        fdinfo,
        fs,
        ids: ids_entry,
        // The shared table's fdinfo image is written by its first task.
        fdinfo_id: shared_table.is_none().then_some(obj),
    })
}

/// Collects one live process: its cores, mm and pages while the probe holds it, then its
/// files and ids.
fn collect_process(
    p: &Process,
    frozen: &mut dyn FrozenTree,
    cx: &mut Ctx<'_>,
) -> Result<Collected> {
    let pid = p.pid;
    fault::check("collect-task", pid)?;
    let t0 = cx.prof.now_us();
    let (pf, status) = process_facts(p, frozen, cx.pids)?;
    let mut bg = start_background(p, cx, pf.seccomp_mode)?;
    frozen.with_process(pid, &p.threads, &mut |acc| {
        let pprobe = acc.process()?;
        fault::check("core", pid)?;
        spool_cores(p, acc, cx, &pf, &pprobe, &mut bg)?;
        fault::check("mm", pid)?;
        let m = collect_mm(p, acc, cx, &pprobe, &mut bg)?;
        fault::check("pages", pid)?;
        dump_memory(pid, acc, cx, m)
    })?;
    cx.prof.record(&format!("task {pid}"), "task", pid, t0);
    collect_files_and_ids(p, cx, &status)
}

/// Everything collected from the frozen tree, ready to be written.
struct Collection {
    tree: Vec<Process>,
    collected: Vec<Collected>,
    files: Files,
    root_ids: pb::TaskKobjIdsEntry,
    extras: super::extras::Extras,
    /// Clone flags of the namespaces the tree owns.
    owned_ns: u64,
    pids: PidMap,
    mounts: Option<super::mounts::MountTree>,
}

/// The error of writing an image of process `pid`.
fn img(pid: i32) -> impl Fn(out::ImageError) -> DumpError {
    move |e| DumpError::image("images", pid, e)
}

/// Writes every image: the tree's, then (after the last pages) the files', the extras' and
/// the inventory.
fn write_images(
    dir: &mut ImageDir,
    opts: &DumpOptions,
    c: &Collection,
    sink: &mut dyn crate::pages::PageSink,
    stats: &mut DumpStats,
    prof: &mut Profile,
) -> Result<()> {
    let root = opts.pid;
    fault::check("images", root)?;
    let pstree = c
        .tree
        .iter()
        .map(|p| tree::pstree_entry(p, &c.pids))
        .collect::<Result<Vec<_>>>()?;
    dir.write_all("pstree.img", out::PSTREE, &pstree)
        .map_err(img(root))?;
    if let Some(first) = c.collected.first() {
        namespaces::write(dir, root, c.owned_ns, &first.ids)?;
    }
    if let Some(m) = &c.mounts {
        m.write(dir)?;
    }
    let t_mem = prof.now_us();
    for shm in &c.files.shmem {
        pages::write_shmem(sink, root, shm, &mut stats.pages)?;
    }
    write_task_images(dir, &c.tree, &c.collected, &c.pids)?;
    // The last pagemap, then the end of the stream (a page server answers once all is
    // written): only then may the tree be killed.
    let sent = sink
        .finish()
        .map_err(|e| DumpError::new("pages", root, e.errno(), e.to_string()))?;
    dir.adopt(&sent.files, sent.bytes);
    stats.memwrite_time = prof.now_us() - t_mem;
    stats.page_pipes = sent.pagemaps;
    write_file_images(dir, &c.files, root)?;
    c.extras.write(dir, root)?;
    let inventory = inventory(opts, c);
    // A time namespace of the tree's own has its clocks in timens-ID.img (CRIU's way).
    if c.owned_ns & namespaces::CLONE_NEWTIME == 0 {
        dir.write_all("timens-0.img", out::TIMENS, &[misc_images::timens()])
            .map_err(img(root))?;
    }
    dir.write_all("inventory.img", out::INVENTORY, &[inventory])
        .map_err(img(root))?;
    Ok(())
}

/// The per-task images: zombies' cores, and the fdinfo, fs and ids of every live process.
fn write_task_images(
    dir: &mut ImageDir,
    tree: &[Process],
    collected: &[Collected],
    pids: &PidMap,
) -> Result<()> {
    for p in tree.iter().filter(|p| p.zombie) {
        let entry = core_image::zombie_core(&p.stat.comm, p.exit_code);
        dir.spool(&format!("core-{}.img", pids.v(p.pid)), move || {
            Ok(core_image::core_file(&entry))
        });
    }
    for c in collected {
        let pid = c.pid;
        if let Some(id) = c.fdinfo_id {
            dir.write_all(&format!("fdinfo-{id}.img"), out::FDINFO, &c.fdinfo)
                .map_err(img(pid))?;
        }
        dir.write_all(
            &format!("fs-{pid}.img"),
            out::FS,
            std::slice::from_ref(&c.fs),
        )
        .map_err(img(pid))?;
        dir.write_all(
            &format!("ids-{pid}.img"),
            out::IDS,
            std::slice::from_ref(&c.ids),
        )
        .map_err(img(pid))?;
    }
    Ok(())
}

/// The images of the tree's files: files.img, memfd, remap-fpath, ghost files, file locks,
/// pipe and FIFO data, and the side images of the shared fd kinds.
fn write_file_images(dir: &mut ImageDir, files: &Files, root: i32) -> Result<()> {
    dir.write_all("files.img", out::FILES, &files.entries)
        .map_err(img(root))?;
    if !files.memfd_inodes.is_empty() {
        dir.write_all("memfd.img", out::MEMFD_INODE, &files.memfd_inodes)
            .map_err(img(root))?;
    }
    if !files.remaps.is_empty() {
        dir.write_all("remap-fpath.img", out::REMAP_FPATH, &files.remaps)
            .map_err(img(root))?;
    }
    for g in &files.ghosts {
        write_ghost(dir, g, root)?;
    }
    if !files.file_locks.is_empty() {
        dir.write_all("filelocks.img", out::FILE_LOCKS, &files.file_locks)
            .map_err(img(root))?;
    }
    for (name, magic, queued) in [
        ("pipes-data.img", out::PIPES_DATA, &files.pipes_data),
        ("fifo-data.img", out::FIFO_DATA, &files.fifo_data),
    ] {
        if queued.is_empty() {
            continue;
        }
        let mut f = dir.create(name, magic).map_err(img(root))?;
        for (e, data) in queued {
            f.entry_with_payload(e, data).map_err(img(root))?;
        }
        let n = f.finish().map_err(img(root))?;
        dir.add_bytes(n);
    }
    files
        .kinds
        .extra
        .write_dir(dir.path())
        .map_err(|e| DumpError::new("images", root, e.errno(), e.to_string()))
}

/// `ghost-file-<id>.img`: the header, then the file's data in chunks (holes skipped).
fn write_ghost(dir: &mut ImageDir, g: &collect_files::Ghost, root: i32) -> Result<()> {
    let mut f = dir
        .create(&format!("ghost-file-{}.img", g.id), out::GHOST_FILE)
        .map_err(img(root))?;
    f.entry(&g.header).map_err(img(root))?;
    // Only a regular file has data (size 0 otherwise): a device node, a symlink or a
    // directory is never opened for reading here.
    let chunks = if g.size == 0 {
        Vec::new()
    } else {
        collect_files::data_chunks(&g.path, g.size).map_err(|e| {
            DumpError::io(
                "images",
                root,
                &format!("read ghost {}", g.path.display()),
                e,
            )
        })?
    };
    for (off, data) in chunks {
        let chunk = pb::GhostChunkEntry {
            len: data.len() as u64,
            off,
        };
        f.entry_with_payload(&chunk, &data).map_err(img(root))?;
    }
    let n = f.finish().map_err(img(root))?;
    dir.add_bytes(n);
    Ok(())
}

/// The `inventory_entry` of this dump.
fn inventory(opts: &DumpOptions, c: &Collection) -> pb::InventoryEntry {
    let mut inventory = tcp_close_mark(
        misc_images::inventory(c.root_ids, c.extras.root_cg_set()),
        opts.tcp_close,
    );
    if opts.track_mem {
        // A later incremental dump tells its processes from newer ones with the same pid.
        inventory.dump_uptime = Some(super::dirty::uptime_us());
    }
    if opts.pack.active() {
        // Packed pages: CRIU must refuse this directory rather than look for pages-N.img.
        inventory.img_version = crate::pages::pack::INVENTORY_MARK;
    }
    inventory
}

/// CRIU marks `inventory.img` of a `--tcp-close` dump: its restore needs `--tcp-close` too.
fn tcp_close_mark(mut inventory: pb::InventoryEntry, tcp_close: bool) -> pb::InventoryEntry {
    if tcp_close {
        inventory.tcp_close = Some(true);
    }
    inventory
}

/// The step of a failed post-dump script: the tree was resumed and the exit status is 255,
/// as CRIU's.
pub const POST_DUMP_STEP: &str = "post-dump";

/// What can be told before seizing: `-D` is a directory, and `-t` names a process (a
/// thread-group leader), each with a message saying what is wrong.
pub(super) fn check_target(opts: &DumpOptions) -> Result<()> {
    let dir = &opts.images_dir;
    match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(DumpError::new(
                "images",
                opts.pid,
                Some(libc::ENOTDIR),
                format!("images directory {} is not a directory", dir.display()),
            ))
        }
        Err(_) => {
            return Err(DumpError::new(
                "images",
                opts.pid,
                Some(libc::ENOENT),
                format!("images directory {} does not exist", dir.display()),
            ))
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", opts.pid)).unwrap_or_default();
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<i32>().ok());
    match tgid {
        Some(tgid) if tgid != opts.pid => Err(DumpError::new(
            "seize",
            opts.pid,
            Some(libc::EINVAL),
            format!(
                "{} is a thread of process {tgid}, not a process: dump -t {tgid}",
                opts.pid
            ),
        )),
        _ => Ok(()),
    }
}

/// Runs a dump of `opts.pid` with `backend`.
pub fn run(opts: &DumpOptions, backend: &mut dyn Backend) -> Result<DumpReport> {
    let mut prof = Profile::new();
    check_target(opts)?;
    let _session = fault::Session::begin(opts.fault.clone());
    opts.scripts
        .run(Action::PreDump, Some(opts.pid))
        .map_err(|e| DumpError::new("pre-dump", opts.pid, None, e.to_string()))?;
    // Before freezing: the parent link and the dirty tracker (a new one is a process start).
    let mut tracking = if opts.track_mem || opts.prev_images_dir.is_some() {
        super::dirty::link_parent(opts)?;
        super::dirty::session::Session::open(opts, opts.track_mem)?
    } else {
        super::dirty::session::Session::none()
    };
    // Before anything is frozen: an unreachable page server fails the dump at once.
    let mut sink = super::page_out::open_sink(opts)?;
    // --lazy-pages: the port is taken before anything is frozen, too.
    let lazy_listener = opts
        .lazy_pages
        .as_ref()
        .map(|l| super::lazy::bind(l, opts.pid))
        .transpose()?;
    fault::check("seize", opts.pid)?;
    let t_freeze = prof.now_us();
    let mut frozen = backend.freeze(opts)?;
    let mut stats = DumpStats {
        freezing_time: prof.now_us() - t_freeze,
        ..Default::default()
    };
    prof.record("freeze", "phase", 0, t_freeze);
    let t_frozen = prof.now_us();
    let result = dump_frozen(
        opts,
        frozen.as_mut(),
        sink.as_mut(),
        &mut stats,
        &mut prof,
        &mut tracking,
    )
    .and_then(|r| {
        // CRIU: a failing post-dump script resumes the tree, whatever -R says.
        opts.scripts
            .run(Action::PostDump, Some(opts.pid))
            .map_err(|e| DumpError::new(POST_DUMP_STEP, opts.pid, None, e.to_string()))?;
        // Post-copy: the images are complete; the lazy pages go from the frozen tree to the
        // restored one before the tree may die (CRIU's cr_lazy_mem_dump).
        if let Some(l) = lazy_listener {
            if let Some(serve) = &opts.lazy_pages {
                super::lazy::serve(l, serve, &opts.images_dir, opts.pid)?;
            }
        }
        Ok(r)
    });
    match result {
        Ok((dir, pids)) => {
            let t = prof.now_us();
            let kill = if opts.leave_stopped {
                frozen.stop(&pids)
            } else if opts.leave_running {
                Ok(())
            } else {
                fault::check("kill", opts.pid).and_then(|_| frozen.kill(&pids))
            };
            if !opts.leave_running {
                prof.record("kill", "phase", 0, t);
            }
            stats.frozen_time = prof.now_us() - t_frozen;
            let t = prof.now_us();
            let rel = frozen.release();
            prof.record("release", "phase", 0, t);
            kill?;
            rel?;
            prof.record("frozen", "phase", 0, t_frozen);
            let mut dir = dir;
            if opts.leave_running {
                // The tree runs again: the spooled images and the sync need it no more.
                finish_images(&mut dir, opts, &mut prof)?;
            }
            stats.parent_pages = tracking.stats.parent_pages;
            tracking.finish(&opts.images_dir);
            let mut st = ImageDir::new(&opts.images_dir);
            st.write_all("stats-dump", out::STATS, &[misc_images::stats(&stats)])
                .map_err(|e| DumpError::image("fsync", opts.pid, e))?;
            st.finish()
                .map_err(|e| DumpError::image("fsync", opts.pid, e))?;
            dir.add_bytes(st.bytes());
            let mut images = dir.files().to_vec();
            images.extend(st.files().iter().cloned());
            Ok(DumpReport {
                images,
                bytes: dir.bytes(),
                stats,
                profile: prof,
                pids,
            })
        }
        Err(e) => {
            if let Err(r) = frozen.release() {
                tracing::error!("release after failed dump: {r}");
            }
            Err(e)
        }
    }
}

/// The spooled image files written, then everything synced (`syncfs`).
fn finish_images(dir: &mut ImageDir, opts: &DumpOptions, prof: &mut Profile) -> Result<()> {
    fault::check("fsync", opts.pid)?;
    let t = prof.now_us();
    dir.finish()
        .map_err(|e| DumpError::image("fsync", opts.pid, e))?;
    prof.record("finish", "phase", 0, t);
    Ok(())
}

fn dump_frozen(
    opts: &DumpOptions,
    frozen: &mut dyn FrozenTree,
    sink: &mut dyn crate::pages::PageSink,
    stats: &mut DumpStats,
    prof: &mut Profile,
    tracking: &mut super::dirty::session::Session,
) -> Result<(ImageDir, Vec<i32>)> {
    fault::check("collect-tree", opts.pid)?;
    let t = prof.now_us();
    let tree = tree::collect(opts.pid)?;
    let owned_ns = tree::check_namespaces(&tree)?;
    let pids = PidMap::of(&tree, owned_ns)?;
    if pids.owned() && (opts.prev_images_dir.is_some() || opts.track_mem) {
        return Err(DumpError::new(
            "collect-tree",
            opts.pid,
            Some(libc::EOPNOTSUPP),
            "incremental dumps (--prev-images-dir, --track-mem) of a tree with its own pid \
             namespace are not built yet",
        ));
    }
    tree::check_external(&tree, opts.shell_job)?;
    // Zombies have no namespaces left to compare.
    let alive: Vec<i32> = tree.iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
    let own_mnt_ns = super::mounts::check_tree(&alive)?;
    if !opts.file_locks {
        tree::check_file_locks(&tree)?;
    }
    prof.record("collect-tree", "phase", 0, t);
    // CRIU asks an RPC client for more external resources once the tree is frozen.
    opts.scripts
        .run(Action::QueryExtFiles, Some(opts.pid))
        .map_err(|e| DumpError::new("query-ext-files", opts.pid, None, e.to_string()))?;
    let mut files = Files::new();
    files.ghost_limit = opts.ghost_limit;
    files.link_remap = opts.link_remap;
    files.file_locks_allowed = opts.file_locks;
    files.kinds.opts = crate::files::DumpOptions {
        tcp_established: opts.tcp_established,
        ext_unix_sk: opts.ext_unix_sk,
        shell_job: opts.shell_job,
        tcp_close: opts.tcp_close,
        skip_in_flight: opts.skip_in_flight,
    };
    files.kinds.tree_pids = tree.iter().map(|p| p.pid).collect();
    files.kinds.ext_ttys = opts.external_ttys.clone();
    let mut ids = IdAllocator::new();
    let me = std::process::id() as i32;
    let my_ns = proc::ns::read(me).map_err(|e| DumpError::proc("collect-tree", me, e))?;
    let root_ids = ids.ids_entry(&my_ns, [1; 4]);
    files.net_ns_id = root_ids.net_ns_id;
    // Sockets of a network namespace of the tree's own are looked up from inside it.
    let _netns = if owned_ns & namespaces::CLONE_NEWNET != 0 {
        let tree_ns =
            proc::ns::read(opts.pid).map_err(|e| DumpError::proc("collect-tree", opts.pid, e))?;
        files.net_ns_id = ids.ids_entry(&tree_ns, [1; 4]).net_ns_id;
        Some(namespaces::NetnsVisit::enter(opts.pid)?)
    } else {
        None
    };
    let mut extras = super::extras::Extras::new(opts.pid)?;
    extras
        .cgroups
        .dump_only(&opts.cgroup_dump_controllers)
        .map_err(|e| DumpError::new("cgroup", opts.pid, e.errno(), e.to_string()))?;
    extras.cgroups.with_props(opts.cgroup_props.clone());
    let mut dir = ImageDir::new(&opts.images_dir);
    let t = prof.now_us();
    let mut collected = Vec::new();
    let mut writers = PageWriters::new();
    {
        let mut cx = Ctx {
            dir: &mut dir,
            files: &mut files,
            ids: &mut ids,
            stats,
            prof,
            sink: &mut *sink,
            extras: &mut extras,
            tracking,
            lazy: opts.lazy_pages.is_some(),
            writers: &mut writers,
            pids: &pids,
        };
        for p in tree.iter().filter(|p| !p.zombie) {
            collected.push(collect_process(p, frozen, &mut cx)?);
        }
    }
    files.finish_kinds(opts.pid)?;
    if pids.owned() {
        namespaces::files_in_pidns(&mut files, &pids, opts.pid)?;
    }
    // The root's own mount namespace: its tree, classified while the tasks are frozen.
    let mounts = match (own_mnt_ns, collected.first()) {
        (Some(_), Some(c)) => {
            let ns_id = c.ids.mnt_ns_id.unwrap_or(0);
            let m = super::mounts::collect(opts.pid, ns_id, &opts.mounts)?;
            super::mounts::check_files(&alive, &m)?;
            if owned_ns & namespaces::CLONE_NEWPID != 0 {
                if let Some((p, _)) = m.mounts.iter().find(|(p, _)| p.fstype == "proc") {
                    return Err(DumpError::new(
                        "mounts",
                        opts.pid,
                        Some(libc::EOPNOTSUPP),
                        format!(
                            "proc at {} in a tree owning both its pid and mount namespaces: \
                             restoring it is not built yet (it would show the restorer's pids)",
                            p.mountpoint
                        ),
                    ));
                }
            }
            Some(m)
        }
        _ => None,
    };
    stats.memdump_time = prof.now_us() - t;
    prof.record("collect", "phase", 0, t);
    let t = prof.now_us();
    let mut c = Collection {
        tree,
        collected,
        files,
        root_ids,
        extras,
        owned_ns,
        pids,
        mounts,
    };
    write_images(&mut dir, opts, &c, sink, stats, prof)?;
    if !opts.leave_running {
        // Dumped TCP connections stay in repair mode: killing the tree closes them silently.
        c.files.kinds.close_tcp_in_repair();
    }
    prof.record("write", "phase", 0, t);
    // Every pinned page in its image before the sync (and before the kill or release).
    let t = prof.now_us();
    writers.finish()?;
    prof.record("page-writers", "phase", 0, t);
    if !opts.leave_running {
        // Everything on disk before the tree is killed.
        finish_images(&mut dir, opts, prof)?;
    }
    Ok((dir, c.tree.iter().map(|p| p.pid).collect()))
}
