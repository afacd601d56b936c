//! The dump itself: freeze, collect, write, then kill or release.
//!
//! ```text
//!  freeze (Backend) ─► collect-tree ─► per process: collect-task, mm, files, pages plan
//!        │                                            (all while frozen)
//!        │           ─► images: pstree, core-*, mm-*, pagemap-*/pages-*, fdinfo-*, fs-*,
//!        │              ids-*, files, memfd, remap-fpath, ghost-file-*, pipes-data,
//!        │              pagemap-shmem-*, seccomp, timens-0, inventory, stats-dump
//!        │           ─► fsync (every file, then the directory)
//!        └─► success: kill (unless --leave-running), release   failure: release only
//! ```

use std::path::PathBuf;

use serde_json::Value;

use super::core::{self, Creds, ProcessFacts, ThreadFacts};
use super::error::{DumpError, Result};
use super::fault;
use super::files::{self, Files};
use super::freeze::{Backend, FrozenTree};
use super::images_out::{self as out, ImageDir};
use super::misc_images::{self, DumpStats, IdAllocator};
use super::mm::{self, MmFields};
use super::options::DumpOptions;
use super::pages::{self, PageStats, Run};
use super::profile::Profile;
use super::tree::{self, Process};
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

/// Everything collected from one live process.
struct Collected {
    pid: i32,
    cores: Vec<(i32, Value)>,
    mm: Value,
    runs: Vec<Run>,
    fdinfo: Vec<Value>,
    fs: Value,
    ids: Value,
    obj_id: u32,
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

fn collect_process(
    p: &Process,
    frozen: &mut dyn FrozenTree,
    files: &mut Files,
    ids: &mut IdAllocator,
    stats: &mut PageStats,
    prof: &mut Profile,
    extras: &mut super::extras::Extras,
) -> Result<Collected> {
    let pid = p.pid;
    let pe = |x| DumpError::proc("collect-task", pid, x);
    fault::check("collect-task", pid)?;
    let t0 = prof.now_us();
    let status = proc::status::read(pid).map_err(pe)?;
    let pprobe = frozen.process(pid)?;
    let pf = ProcessFacts {
        state: if p.stat.state == 'T' {
            core::TASK_STOPPED
        } else {
            core::TASK_ALIVE
        },
        exit_code: 0,
        personality: proc::misc::read_personality(pid).map_err(pe)?,
        flags: p.stat.flags,
        comm: p.stat.comm.clone(),
        blk_sigset: status.sig_blk().map_err(pe)?,
        rlimits: proc::misc::read_limits(pid).map_err(pe)?,
        loginuid: proc::misc::read_loginuid(pid).map_err(pe)?,
        oom_score_adj: proc::misc::read_oom_score_adj(pid).map_err(pe)?,
        posix_timers: proc::timers::read(pid).map_err(pe)?,
        seccomp_mode: status.seccomp().map_err(pe)?,
    };
    let mut cores = Vec::with_capacity(p.threads.len());
    for &tid in &p.threads {
        let t1 = prof.now_us();
        let tstat = proc::stat::read_thread(pid, tid).map_err(pe)?;
        let tstatus = proc::status::read_thread(pid, tid).map_err(pe)?;
        let mut facts = ThreadFacts {
            tid,
            comm: proc::misc::read_comm(pid, tid).map_err(pe)?,
            blk_sigset: tstatus.sig_blk().map_err(pe)?,
            sched_policy: tstat.policy,
            sched_nice: tstat.nice as i32,
            sched_prio: tstat.rt_priority,
            creds: creds(&tstatus, tid)?,
        };
        fault::check("core", tid)?;
        let tprobe = frozen.thread(pid, tid)?;
        facts.creds.secbits = tprobe.secbits;
        let proc_part = if tid == pid {
            Some((&pf, &pprobe))
        } else {
            None
        };
        let mut core = core::core_entry(&facts, &tprobe, proc_part);
        extras.thread(pid, tid, &mut core)?;
        cores.push((tid, core));
        prof.record(&format!("thread {tid}"), "thread", tid, t1);
    }
    prof.record(&format!("task {pid}"), "task", pid, t0);

    fault::check("mm", pid)?;
    let t2 = prof.now_us();
    let maps = proc::maps::read_smaps(pid).map_err(|x| DumpError::proc("mm", pid, x))?;
    let exe_file_id = files.exe(pid)?;
    let vmas = mm::vmas(pid, &maps, files)?;
    let mm_fields = MmFields {
        stat: p.stat.clone(),
        brk: if pprobe.brk != 0 {
            pprobe.brk
        } else {
            mm::brk_from_maps(&maps, p.stat.start_brk)
        },
        auxv: proc::misc::read_auxv(pid).map_err(|x| DumpError::proc("mm", pid, x))?,
        exe_file_id,
        dumpable: if pprobe.dumpable != 0 {
            pprobe.dumpable
        } else {
            1
        },
        thp_disabled: pprobe.thp_disabled,
    };
    let mm_entry = mm::mm_entry(&mm_fields, &vmas);
    prof.record(&format!("mm {pid}"), "mm", pid, t2);

    fault::check("pages", pid)?;
    let runs = pages::plan(pid, &vmas, stats)?;

    fault::check("files", pid)?;
    let t3 = prof.now_us();
    let fds = proc::fd::list_fds(pid).map_err(|x| DumpError::proc("files", pid, x))?;
    let mut fdinfo = Vec::with_capacity(fds.len());
    for fd in fds {
        fdinfo.push(files::fdinfo_entry(&files.fd(pid, fd)?));
    }
    let cwd = files.fs_dir(pid, "cwd")?;
    let root = files.fs_dir(pid, "root")?;
    let fs = misc_images::fs_entry(cwd, root, status.umask().map_err(pe)?);
    prof.record(&format!("files {pid}"), "files", pid, t3);

    let ns = proc::ns::read(pid).map_err(pe)?;
    let obj = ids.object();
    let ids_entry = ids.ids_entry(&ns, [obj; 4]);
    Ok(Collected {
        pid,
        cores,
        mm: mm_entry,
        runs,
        fdinfo,
        fs,
        ids: ids_entry,
        obj_id: obj,
    })
}

/// Everything collected from the frozen tree, ready to be written.
struct Collection {
    tree: Vec<Process>,
    collected: Vec<Collected>,
    files: Files,
    root_ids: Value,
    extras: super::extras::Extras,
}

fn write_images(
    dir: &mut ImageDir,
    opts: &DumpOptions,
    c: &Collection,
    frozen: &mut dyn FrozenTree,
    stats: &mut DumpStats,
    prof: &mut Profile,
) -> Result<()> {
    let (tree, collected, files) = (&c.tree, &c.collected, &c.files);
    let root_ids = c.root_ids.clone();
    let root = opts.pid;
    fault::check("images", root)?;
    let img = |pid: i32| move |e| DumpError::image("images", pid, e);
    dir.write_all(
        "pstree.img",
        out::PSTREE,
        &tree.iter().map(tree::pstree_entry).collect::<Vec<_>>(),
    )
    .map_err(img(root))?;
    let mut pages_id = 0u32;
    let t_mem = prof.now_us();
    for shm in &files.shmem {
        pages_id += 1;
        pages::write_shmem(dir, root, shm, pages_id, &mut stats.pages)?;
    }
    for p in tree.iter().filter(|p| p.zombie) {
        dir.write_all(
            &format!("core-{}.img", p.pid),
            out::CORE,
            &[core::zombie_core(&p.stat.comm, p.exit_code)],
        )
        .map_err(img(p.pid))?;
    }
    for c in collected {
        let pid = c.pid;
        for (tid, core) in &c.cores {
            dir.write_all(
                &format!("core-{tid}.img"),
                out::CORE,
                std::slice::from_ref(core),
            )
            .map_err(img(*tid))?;
        }
        dir.write_all(
            &format!("mm-{pid}.img"),
            out::MM,
            std::slice::from_ref(&c.mm),
        )
        .map_err(img(pid))?;
        pages_id += 1;
        let t = prof.now_us();
        pages::write_private(dir, frozen, pid, pages_id, &c.runs, &mut stats.pages)?;
        prof.record(&format!("pages {pid}"), "pages", pid, t);
        dir.write_all(&format!("fdinfo-{}.img", c.obj_id), out::FDINFO, &c.fdinfo)
            .map_err(img(pid))?;
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
    stats.memwrite_time = prof.now_us() - t_mem;
    stats.page_pipes = pages_id as u64;
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
        let mut f = dir
            .create(&format!("ghost-file-{}.img", g.id), out::GHOST_FILE)
            .map_err(img(root))?;
        f.entry(&g.header).map_err(img(root))?;
        let chunks = files::data_chunks(&g.path, g.size).map_err(|e| {
            DumpError::io(
                "images",
                root,
                &format!("read ghost {}", g.path.display()),
                e,
            )
        })?;
        for (off, data) in chunks {
            f.entry_as(
                "ghost_chunk_entry",
                &serde_json::json!({"len": data.len(), "off": off}),
            )
            .map_err(img(root))?;
            f.payload(&data).map_err(img(root))?;
        }
        let n = f.finish().map_err(img(root))?;
        dir.add_bytes(n);
    }
    if !files.pipes_data.is_empty() {
        let mut f = dir
            .create("pipes-data.img", out::PIPES_DATA)
            .map_err(img(root))?;
        for (e, data) in &files.pipes_data {
            f.entry(e).map_err(img(root))?;
            f.payload(data).map_err(img(root))?;
        }
        let n = f.finish().map_err(img(root))?;
        dir.add_bytes(n);
    }
    files
        .kinds
        .extra
        .write_dir(dir.path())
        .map_err(|e| DumpError::new("images", root, e.errno(), e.to_string()))?;
    c.extras.write(dir, root)?;
    dir.write_all("timens-0.img", out::TIMENS, &[misc_images::timens()])
        .map_err(img(root))?;
    dir.write_all(
        "inventory.img",
        out::INVENTORY,
        &[misc_images::inventory(root_ids, c.extras.root_cg_set())],
    )
    .map_err(img(root))?;
    Ok(())
}

/// Runs a dump of `opts.pid` with `backend`.
pub fn run(opts: &DumpOptions, backend: &mut dyn Backend) -> Result<DumpReport> {
    let mut prof = Profile::new();
    if !opts.images_dir.is_dir() {
        return Err(DumpError::new(
            "images",
            opts.pid,
            Some(libc::ENOENT),
            format!(
                "images directory {} does not exist",
                opts.images_dir.display()
            ),
        ));
    }
    let _session = fault::Session::begin(opts.fault.clone());
    fault::check("seize", opts.pid)?;
    let t_freeze = prof.now_us();
    let mut frozen = backend.freeze(opts)?;
    let mut stats = DumpStats {
        freezing_time: prof.now_us() - t_freeze,
        ..Default::default()
    };
    prof.record("freeze", "phase", 0, t_freeze);
    let t_frozen = prof.now_us();
    let result = dump_frozen(opts, frozen.as_mut(), &mut stats, &mut prof);
    match result {
        Ok((dir, pids)) => {
            let kill = if opts.leave_running {
                Ok(())
            } else {
                fault::check("kill", opts.pid).and_then(|_| frozen.kill(&pids))
            };
            stats.frozen_time = prof.now_us() - t_frozen;
            let rel = frozen.release();
            kill?;
            rel?;
            prof.record("frozen", "phase", 0, t_frozen);
            let mut dir = dir;
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

fn dump_frozen(
    opts: &DumpOptions,
    frozen: &mut dyn FrozenTree,
    stats: &mut DumpStats,
    prof: &mut Profile,
) -> Result<(ImageDir, Vec<i32>)> {
    fault::check("collect-tree", opts.pid)?;
    let t = prof.now_us();
    let tree = tree::collect(opts.pid)?;
    tree::check_external(&tree, opts.shell_job)?;
    tree::check_file_locks(&tree)?;
    prof.record("collect-tree", "phase", 0, t);
    let mut files = Files::new();
    files.kinds.opts = crate::files::DumpOptions {
        tcp_established: opts.tcp_established,
        ext_unix_sk: opts.ext_unix_sk,
        shell_job: opts.shell_job,
    };
    let mut ids = IdAllocator::new();
    let me = std::process::id() as i32;
    let my_ns = proc::ns::read(me).map_err(|e| DumpError::proc("collect-tree", me, e))?;
    let root_ids = ids.ids_entry(&my_ns, [1; 4]);
    files.net_ns_id = root_ids["net_ns_id"].as_u64().map(|x| x as u32);
    let mut extras = super::extras::Extras::new(opts.pid)?;
    let t = prof.now_us();
    let mut collected = Vec::new();
    for p in tree.iter().filter(|p| !p.zombie) {
        collected.push(collect_process(
            p,
            frozen,
            &mut files,
            &mut ids,
            &mut stats.pages,
            prof,
            &mut extras,
        )?);
    }
    files.finish_kinds(opts.pid)?;
    stats.memdump_time = prof.now_us() - t;
    prof.record("collect", "phase", 0, t);
    let mut dir = ImageDir::new(&opts.images_dir);
    let t = prof.now_us();
    let mut c = Collection {
        tree,
        collected,
        files,
        root_ids,
        extras,
    };
    write_images(&mut dir, opts, &c, frozen, stats, prof)?;
    if !opts.leave_running {
        // Dumped TCP connections stay in repair mode: killing the tree closes them silently.
        c.files.kinds.close_tcp_in_repair();
    }
    prof.record("write", "phase", 0, t);
    fault::check("fsync", opts.pid)?;
    dir.finish()
        .map_err(|e| DumpError::image("fsync", opts.pid, e))?;
    Ok((dir, c.tree.iter().map(|p| p.pid).collect()))
}
