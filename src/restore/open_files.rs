//! Open file descriptions, created once in the restorer before the tree is forked.
//!
//! Every files.img id becomes one open file description (so descriptors that shared one at
//! dump time share one again), parked at a high descriptor number; forked tasks inherit them
//! all and `dup2` theirs into place ([`super::tree`]). Mappings of files and memfds get their
//! own parked descriptors, which the tracer passes to `mmap` inside the task.
//!
//! ```text
//! restorer fds:  0..base-1  (its own)   base.. parked: desc[id]..., map[id]..., control pipes
//! task fds:      image fd numbers (dup2 of desc[id]) + map fds until the switch closes them
//! ```
//!
//! Unlinked files (ghosts: regular files, FIFOs, device nodes, symlinks), and removed
//! directories a task had as cwd or root, are made again with their content (rdev, symlink
//! target), owner, mode and times (under directories made for the moment when
//! those are gone too), opened `O_PATH` once per dumped inode, and removed; descriptions,
//! mappings and cwd/root reopen them through /proc/self/fd. The signal of an owned file is
//! set here, its owner by the owning task itself once it exists ([`set_owners`]); file locks
//! are taken by each task on its own descriptors (`super::tree`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::Mode;
use nix::unistd::{lseek, Whence};

use stasis_images::pb;

use super::error::RestoreError;
use super::plan::{vma_status, Pages, Plan};

/// Descriptors opened for the restore, parked at numbers >= `base`.
#[derive(Default)]
pub struct Opened {
    /// files.img id -> parked descriptor of its open file description.
    pub desc: HashMap<u32, RawFd>,
    /// files.img id -> parked descriptor used to map the file (memfd: the memfd itself).
    pub maps: HashMap<u32, RawFd>,
    /// shmid -> parked memfd backing shared anonymous memory (`VMA_ANON_SHARED`).
    pub shmem: HashMap<u64, RawFd>,
    /// pages image -> parked read-only descriptor (tasks `pread` their pages from it).
    pub pages: HashMap<PathBuf, RawFd>,
    /// First parked number.
    pub base: RawFd,
    /// `--shell-job`: the terminals given in place of a dumped one whose master was outside
    /// the images, as (files.img id, the dumped foreground group). The task leading that
    /// group makes it the foreground group of the new terminal.
    pub shell_ttys: Vec<(u32, i32)>,
    /// Files in `/proc/PID/` of a task of the tree (e.g. a program reading its own
    /// `/proc/self/stat` when it was dumped): they exist only once the task does, so the task
    /// opens them itself, as (files.img id -> path, open flags, offset).
    pub in_task: HashMap<u32, (String, u32, u64)>,
    /// pidfds of tasks of the tree, as (files.img id -> target pid, flags): each task opens
    /// its own once the target exists (`crate::files::pidfd`).
    pub pidfds: HashMap<u32, (i32, u32)>,
    /// files.img id of a task's cwd or root -> parked `O_PATH` descriptor of the directory
    /// (a deleted one is recreated, opened and removed again: see [`make_ghost`]).
    pub fs_dirs: HashMap<u32, RawFd>,
    /// Parked descriptions with an owner for SIGIO (`F_SETOWN_EX`): set by the owning task
    /// itself once it exists (see [`set_owners`]).
    pub owners: Vec<(RawFd, pb::FownEntry)>,
    /// Ghosts made, by the (device, inode) they had: several entries of one unlinked file
    /// (two opens, a cwd that is also the root) get one file again. Parked `O_PATH` fds.
    ghosts_made: HashMap<(u32, u64), RawFd>,
    /// Owners (closed when the restorer is done).
    owned: Vec<OwnedFd>,
    /// `--lazy-pages`: where each task sends its userfaultfd (parked descriptors).
    pub lazy: Option<LazyHandover>,
}

/// The parked descriptors through which each task hands its userfaultfd to the lazy-pages
/// daemon: the connection, and a one-byte token pipe that serialises the tasks (a hand-over
/// is two messages).
#[derive(Debug, Clone, Copy)]
pub struct LazyHandover {
    pub sock: RawFd,
    pub token_r: RawFd,
    pub token_w: RawFd,
}

impl Opened {
    /// Moves `fd` to the parking range and keeps it.
    pub fn park(&mut self, fd: OwnedFd) -> Result<RawFd, RestoreError> {
        let n = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(self.base))
            .map_err(|e| RestoreError::sys("park descriptor", 0, e))?;
        let owned = owned_from(n);
        self.owned.push(owned);
        Ok(n)
    }

    /// The `O_PATH` descriptor of ghost `g` of entry `name`, made once per dumped inode
    /// (see [`make_ghost`]).
    fn ghost(&mut self, name: &str, g: &super::plan::Ghost) -> Result<RawFd, RestoreError> {
        let key = g.0.dev.zip(g.0.ino);
        if let Some(&fd) = key.and_then(|k| self.ghosts_made.get(&k)) {
            return Ok(fd);
        }
        let fd = self.park(make_ghost(name, g)?)?;
        if let Some(k) = key {
            self.ghosts_made.insert(k, fd);
        }
        Ok(fd)
    }
}

fn owned_from(fd: RawFd) -> OwnedFd {
    // The fd was just returned by F_DUPFD and is owned by nobody else.
    crate::sys::fds::own(fd)
}

fn sys(step: impl Into<String>, e: nix::errno::Errno) -> RestoreError {
    RestoreError::sys(step, 0, e)
}

fn mismatch(path: &str, what: impl Into<String>) -> RestoreError {
    RestoreError::FileMismatch {
        path: PathBuf::from(path),
        what: what.into(),
    }
}

/// Flags we may pass to open(2) from an image's recorded file flags.
fn open_flags(flags: u32) -> OFlag {
    let drop = (libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32;
    OFlag::from_bits_retain((flags & !drop) as i32) | OFlag::O_LARGEFILE
}

/// Status flags settable with F_SETFL.
fn status_flags(flags: u32) -> OFlag {
    let keep =
        (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC | libc::O_NOATIME | libc::O_DIRECT)
            as u32;
    OFlag::from_bits_retain((flags & keep) as i32)
}

/// Opens every file description and mapping the plan needs.
pub fn open_all(
    plan: &Plan,
    opts: crate::files::RestoreOptions,
    inherited: &[super::inherit::InheritFd],
) -> Result<Opened, RestoreError> {
    let base = raise_fd_limit(plan)?;
    let mut o = Opened {
        base,
        ..Default::default()
    };
    // `--inherit-fd`: those entries are the caller's descriptors, nothing is opened for them.
    super::inherit::park_inherited(plan, &mut o, inherited)?;
    let memfds = open_memfd_inodes(plan, &mut o)?;
    open_page_images(plan, &mut o)?;
    open_shared_anon(plan, &mut o)?;
    let mapped = mapped_files(plan);
    open_pipes(plan, &mut o)?;
    open_fifos(plan, &mut o)?;
    let wanted = open_descriptions(plan, &memfds, &mapped, &mut o)?;
    open_kinds(plan, &wanted, opts, &mut o)?;
    open_fs_dirs(plan, &mut o)?;
    collect_owners(plan, &mut o)?;
    Ok(o)
}

/// The first descriptor parked above every fd of the images (at least 100), after raising
/// RLIMIT_NOFILE to its hard limit; an error if that is too low.
fn raise_fd_limit(plan: &Plan) -> Result<RawFd, RestoreError> {
    let max_fd = plan
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2);
    let base = (max_fd as RawFd + 1).max(100);
    let (_, hard) = crate::sys::process::get_rlimit(0, libc::RLIMIT_NOFILE)
        .map_err(|e| sys("read RLIMIT_NOFILE", e))?;
    let _ = crate::sys::process::set_rlimit(0, libc::RLIMIT_NOFILE, hard, hard);
    if base as u64 + 64 > hard {
        return Err(RestoreError::Unsupported(format!(
            "descriptor {max_fd} is above this system's RLIMIT_NOFILE {hard}"
        )));
    }
    Ok(base)
}

/// memfd inodes: one memfd each, with its content and seals; by inode id.
fn open_memfd_inodes(plan: &Plan, o: &mut Opened) -> Result<BTreeMap<u64, RawFd>, RestoreError> {
    let mut memfds: BTreeMap<u64, RawFd> = BTreeMap::new();
    for (inode, (e, pages)) in &plan.memfd_inodes {
        let name = CString::new(e.name.trim_start_matches("/memfd:").as_bytes())
            .map_err(|_| RestoreError::Unsupported(format!("memfd name {:?}", e.name)))?;
        let fd = memfd_create(name.as_c_str(), MFdFlags::MFD_ALLOW_SEALING)
            .map_err(|er| sys(format!("memfd_create {}", e.name), er))?;
        let file = std::fs::File::from(fd);
        file.set_len(e.size)
            .map_err(|er| io("size memfd", &e.name, er))?;
        fill_from_pages(&file, pages, e.size).map_err(|er| io("fill memfd", &e.name, er))?;
        if let Some(mode) = e.mode {
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777));
        }
        let fd = OwnedFd::from(file);
        if e.seals != 0 {
            fcntl(
                &fd,
                FcntlArg::F_ADD_SEALS(SealFlag::from_bits_retain(e.seals as i32)),
            )
            .map_err(|er| sys(format!("seal memfd {}", e.name), er))?;
        }
        let n = o.park(fd)?;
        memfds.insert(*inode, n);
    }

    Ok(memfds)
}

/// Every pages file of every task (all layers of an incremental chain), once each.
fn open_page_images(plan: &Plan, o: &mut Opened) -> Result<(), RestoreError> {
    for t in plan.tasks.iter().filter(|t| !t.pages.runs.is_empty()) {
        // Every file of an incremental chain (one without).
        for layer in t.pages.layers() {
            if o.pages.contains_key(&layer.file) {
                continue;
            }
            let f = std::fs::File::open(&layer.file)
                .map_err(|e| io("open pages image", &layer.file.to_string_lossy(), e))?;
            let n = o.park(OwnedFd::from(f))?;
            o.pages.insert(layer.file, n);
        }
    }

    Ok(())
}

/// Shared anonymous memory: one memfd per shmid, shared by every task mapping it.
fn open_shared_anon(plan: &Plan, o: &mut Opened) -> Result<(), RestoreError> {
    let mut shm_size: BTreeMap<u64, u64> = BTreeMap::new();
    for t in &plan.tasks {
        for v in t.mm.iter().flat_map(|m| m.vmas.iter()) {
            if v.status & vma_status::ANON_SHARED != 0 {
                let end = v.pgoff + (v.end - v.start);
                let e = shm_size.entry(v.shmid).or_insert(0);
                *e = (*e).max(end);
            }
        }
    }
    for (shmid, size) in shm_size {
        let name = format!("pagemap-shmem-{shmid}.img");
        let pages = if plan.dir.join(&name).exists() {
            super::plan::read_pages(&plan.dir, &name)?
        } else {
            Pages::default()
        };
        let fd = memfd_create(c"dev/zero", MFdFlags::empty())
            .map_err(|er| sys(format!("memfd_create for shmid {shmid}"), er))?;
        let file = std::fs::File::from(fd);
        file.set_len(size)
            .map_err(|er| io("size shared memory", &name, er))?;
        fill_from_pages(&file, &pages, size).map_err(|er| io("fill shared memory", &name, er))?;
        let n = o.park(OwnedFd::from(file))?;
        o.shmem.insert(shmid, n);
    }

    Ok(())
}

/// Which file ids are mapped (exe files and file VMAs), with the access mode they need.
fn mapped_files(plan: &Plan) -> BTreeMap<u32, u32> {
    let mut mapped: BTreeMap<u32, u32> = BTreeMap::new(); // id -> access mode
    for t in &plan.tasks {
        let Some(mm) = &t.mm else { continue };
        mapped
            .entry(mm.exe_file_id)
            .or_insert(libc::O_RDONLY as u32);
        for v in &mm.vmas {
            if v.status & (vma_status::FILE_PRIVATE | vma_status::FILE_SHARED) != 0 {
                let acc = if v.status & vma_status::FILE_SHARED != 0 {
                    v.fdflags.unwrap_or(0) & libc::O_ACCMODE as u32
                } else {
                    libc::O_RDONLY as u32
                };
                let e = mapped.entry(v.shmid as u32).or_insert(acc);
                if acc == libc::O_RDWR as u32 {
                    *e = acc;
                }
            }
        }
    }

    mapped
}

/// Pipes: the ends grouped by pipe_id, each pipe filled with its queued data.
fn open_pipes(plan: &Plan, o: &mut Opened) -> Result<(), RestoreError> {
    let mut pipes: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for (id, f) in &plan.files {
        if let Some(p) = &f.pipe {
            pipes.entry(p.pipe_id).or_default().push((*id, p.flags));
        }
    }
    for (pipe_id, ends) in &pipes {
        if ends.iter().all(|(id, _)| o.desc.contains_key(id)) {
            continue; // inherited
        }
        let (r, w) = nix::unistd::pipe().map_err(|e| sys("pipe", e))?;
        if let Some((size, data)) = plan.pipe_data.get(pipe_id) {
            let want = (*size as usize).max(data.len());
            if want > 0 {
                let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(want as i32));
            }
            let mut off = 0;
            while off < data.len() {
                let n = nix::unistd::write(&w, &data[off..]).map_err(|e| sys("fill pipe", e))?;
                off += n;
            }
        }
        let mut used = [false, false];
        for &(id, flags) in ends {
            if o.desc.contains_key(&id) {
                continue; // inherited
            }
            let write_end = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            let src = if write_end { &w } else { &r };
            let fd = if !used[write_end as usize] {
                used[write_end as usize] = true;
                src.try_clone().map_err(|e| io("dup pipe", "pipe", e))?
            } else {
                reopen(src.as_raw_fd(), flags)?
            };
            fcntl(&fd, FcntlArg::F_SETFL(status_flags(flags)))
                .map_err(|e| sys("set pipe flags", e))?;
            let n = o.park(fd)?;
            o.desc.insert(id, n);
        }
    }

    Ok(())
}

/// FIFOs: a keeper (O_RDWR) per pipe_id holds the queued data, then each end is opened.
fn open_fifos(plan: &Plan, o: &mut Opened) -> Result<(), RestoreError> {
    let mut keepers: BTreeMap<u32, ()> = BTreeMap::new();
    for (id, f) in &plan.files {
        let Some(fifo) = &f.fifo else { continue };
        let path = fifo
            .regf_id
            .and_then(|r| plan.files.get(&r))
            .and_then(|r| r.reg.as_ref())
            .map(|r| (r.name.clone(), r.flags))
            .ok_or_else(|| RestoreError::Image {
                path: plan.dir.join("files.img"),
                index: 0,
                what: format!("fifo {id}: no path entry"),
            })?;
        if keepers.insert(fifo.pipe_id, ()).is_none() {
            let keeper = super::root::open(&plan.root, &path.0, OFlag::O_RDWR | OFlag::O_NONBLOCK)
                .map_err(|e| sys(format!("open fifo {}", path.0), e))?;
            if let Some((size, data)) = plan.fifo_data.get(&fifo.pipe_id) {
                if *size as usize >= data.len() && *size > 0 {
                    let _ = fcntl(&keeper, FcntlArg::F_SETPIPE_SZ(*size as i32));
                }
                let mut off = 0;
                while off < data.len() {
                    off += nix::unistd::write(&keeper, &data[off..])
                        .map_err(|e| sys(format!("fill fifo {}", path.0), e))?;
                }
            }
            o.park(keeper)?;
        }
        let fd = super::root::open(&plan.root, &path.0, open_flags(path.1) | OFlag::O_NONBLOCK)
            .map_err(|e| sys(format!("open fifo {}", path.0), e))?;
        fcntl(&fd, FcntlArg::F_SETFL(status_flags(path.1)))
            .map_err(|e| sys("set fifo flags", e))?;
        let n = o.park(fd)?;
        o.desc.insert(*id, n);
    }

    Ok(())
}

/// Descriptions referenced by some task's fdinfo, and mapped files (regular files and
/// memfds; the fd kinds are opened later by `open_kinds`); returns the referenced ids.
fn open_descriptions(
    plan: &Plan,
    memfds: &BTreeMap<u64, RawFd>,
    mapped: &BTreeMap<u32, u32>,
    o: &mut Opened,
) -> Result<BTreeSet<u32>, RestoreError> {
    let mut wanted: BTreeSet<u32> = BTreeSet::new();
    for t in &plan.tasks {
        wanted.extend(t.fds.iter().map(|f| f.id));
    }
    wanted.extend(in_flight_ids(plan)?);
    for id in wanted.iter().copied().chain(mapped.keys().copied()) {
        let f = plan.files.get(&id).ok_or_else(|| RestoreError::Image {
            path: plan.dir.join("files.img"),
            index: 0,
            what: format!("no file id {id}"),
        })?;
        let want_desc = wanted.contains(&id) && !o.desc.contains_key(&id);
        let want_map = mapped.contains_key(&id) && !o.maps.contains_key(&id);
        if let Some(reg) = &f.reg {
            if tree_proc_path(plan, &reg.name) {
                if want_map {
                    return Err(RestoreError::Unsupported(format!(
                        "files.img: id {id}: mapping {} of a task of the tree",
                        reg.name
                    )));
                }
                o.in_task.insert(id, (reg.name.clone(), reg.flags, reg.pos));
                continue;
            }
            let ghost = match plan.ghosts.get(&id) {
                Some(g) if want_desc || want_map => Some(o.ghost(&host_name(plan, &reg.name), g)?),
                _ => None,
            };
            if want_desc && !o.desc.contains_key(&id) {
                let fd = open_reg(&plan.root, reg, ghost)?;
                let n = o.park(fd)?;
                o.desc.insert(id, n);
            }
            if want_map {
                let acc = mapped[&id];
                let fd = match ghost {
                    Some(g) => reopen(g, acc)?,
                    None => super::root::open(&plan.root, &reg.name, open_flags(acc))
                        .map_err(|e| sys(format!("open {} for mapping", reg.name), e))?,
                };
                let n = o.park(fd)?;
                o.maps.insert(id, n);
            }
        } else if let Some(m) = &f.memfd {
            let &mfd = memfds
                .get(&u64::from(m.inode_id))
                .ok_or_else(|| RestoreError::Image {
                    path: plan.dir.join("memfd.img"),
                    index: 0,
                    what: format!("no memfd inode {}", m.inode_id),
                })?;
            if want_desc {
                let fd = reopen(mfd, m.flags)?;
                lseek(&fd, m.pos as i64, Whence::SeekSet).map_err(|e| sys("seek memfd", e))?;
                let n = o.park(fd)?;
                o.desc.insert(id, n);
            }
            if want_map {
                o.maps.insert(id, mfd);
            }
        } else if let Some(target) = crate::files::pidfd::in_task(f) {
            o.pidfds.insert(id, target);
        } else if crate::files::handles(f) {
            // Restored below, in stage order, once every possible epoll target exists.
        } else if f.pipe.is_none() && f.fifo.is_none() {
            return Err(RestoreError::Unsupported(format!(
                "files.img: id {id}: file type {} is not restored yet",
                f.r#type
            )));
        }
    }
    Ok(wanted)
}

/// Opens the cwd and root of every task (see [`Opened::fs_dirs`]).
fn open_fs_dirs(plan: &Plan, o: &mut Opened) -> Result<(), RestoreError> {
    for fs in plan.tasks.iter().filter_map(|t| t.fs.as_ref()) {
        for id in [fs.cwd_id, fs.root_id] {
            if o.fs_dirs.contains_key(&id) {
                continue;
            }
            let Some(reg) = plan.files.get(&id).and_then(|f| f.reg.as_ref()) else {
                continue;
            };
            let n = match plan.ghosts.get(&id) {
                Some(g) => o.ghost(&host_name(plan, &reg.name), g)?,
                None => o.park(
                    super::root::open(&plan.root, &reg.name, OFlag::O_PATH | OFlag::O_DIRECTORY)
                        .map_err(|e| sys(format!("open directory {}", reg.name), e))?,
                )?,
            };
            o.fs_dirs.insert(id, n);
        }
    }
    Ok(())
}

/// The owner of an entry's file, whatever its kind.
fn entry_fown(f: &pb::FileEntry) -> Option<&pb::FownEntry> {
    None.or(f.reg.as_ref().map(|x| &x.fown))
        .or(f.pipe.as_ref().map(|x| &x.fown))
        .or(f.memfd.as_ref().map(|x| &x.fown))
        .or(f.usk.as_ref().map(|x| &x.fown))
        .or(f.isk.as_ref().map(|x| &x.fown))
        .or(f.efd.as_ref().map(|x| &x.fown))
        .or(f.epfd.as_ref().map(|x| &x.fown))
        .or(f.sgfd.as_ref().map(|x| &x.fown))
        .or(f.tfd.as_ref().map(|x| &x.fown))
        .or(f.ify.as_ref().map(|x| &x.fown))
        .or(f.tty.as_ref().map(|x| &x.fown))
}

/// The signal of every owned description is set here; its owner task (or process group
/// leader) sets the owner itself when it exists ([`set_owners`]); owners outside the tree are
/// set here, and must exist.
fn collect_owners(plan: &Plan, o: &mut Opened) -> Result<(), RestoreError> {
    let ids = plan.all_ids();
    for (&id, &fd) in &o.desc {
        let Some(f) = plan.files.get(&id) else {
            continue;
        };
        // A FIFO's owner is in the entry of its path.
        let fown = match &f.fifo {
            Some(fi) => fi
                .regf_id
                .and_then(|r| plan.files.get(&r))
                .and_then(entry_fown),
            None => entry_fown(f),
        };
        let Some(fown) = fown.filter(|w| w.pid != 0 || w.signum != 0) else {
            continue;
        };
        let bfd = crate::sys::fds::borrow(fd);
        if fown.signum != 0 {
            crate::sys::fdkinds::set_sig(bfd, fown.signum as i32)
                .map_err(|e| sys(format!("F_SETSIG on file {id}"), e))?;
        }
        if fown.pid == 0 {
            continue;
        }
        if ids.contains(&(fown.pid as i32)) {
            o.owners.push((fd, *fown));
        } else {
            crate::sys::fdkinds::set_owner(bfd, fown.pid_type as i32, fown.pid as i32)
                .map_err(|e| sys(format!("F_SETOWN_EX {} on file {id}", fown.pid), e))?;
        }
    }
    Ok(())
}

/// In the restored task `pid` (leader of group `pgid` when equal), before its descriptors are
/// closed: sets the owner of the parked descriptions it owns.
pub fn set_owners(o: &Opened, pid: i32, pgid: i32) -> Result<(), nix::errno::Errno> {
    const F_OWNER_PGRP: u32 = 2;
    for (fd, w) in &o.owners {
        let mine = if w.pid_type == F_OWNER_PGRP {
            pgid == pid && w.pid as i32 == pid
        } else {
            w.pid as i32 == pid
        };
        if mine {
            crate::sys::fdkinds::set_owner(
                crate::sys::fds::borrow(*fd),
                w.pid_type as i32,
                w.pid as i32,
            )?;
        }
    }
    Ok(())
}

/// Once every restored thread exists (the tasks wait in their restorer blobs): sets the
/// owners that are threads other than a leader (`F_OWNER_TID`), which no task could set
/// while it restored its descriptors (its threads are made later, by the blob). The owner
/// belongs to the open file description, so the engine's parked copy serves.
pub fn set_thread_owners(
    o: &Opened,
    plan: &Plan,
    host: &dyn Fn(i32) -> i32,
) -> Result<(), RestoreError> {
    const F_OWNER_TID: u32 = 0;
    let leaders: BTreeSet<i32> = plan.tasks.iter().map(|t| t.pid).collect();
    for (fd, w) in &o.owners {
        if w.pid_type == F_OWNER_TID && !leaders.contains(&(w.pid as i32)) {
            crate::sys::fdkinds::set_owner(
                crate::sys::fds::borrow(*fd),
                F_OWNER_TID as i32,
                host(w.pid as i32),
            )
            .map_err(|e| sys(format!("F_SETOWN_EX thread {}", w.pid), e))?;
        }
    }
    Ok(())
}

/// Whether `path` lies in `/proc/PID/` of a task or thread the images restore.
pub fn tree_proc_path(plan: &Plan, path: &str) -> bool {
    path.strip_prefix("/proc/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.parse::<i32>().ok())
        .is_some_and(|id| plan.all_ids().contains(&id))
}

/// Restores the descriptor kinds of [`crate::files`] (eventfd, timerfd, signalfd, inotify,
/// sockets, epoll last) in the restorer, parked like the others.
fn open_kinds(
    plan: &Plan,
    wanted: &BTreeSet<u32>,
    opts: crate::files::RestoreOptions,
    o: &mut Opened,
) -> Result<(), RestoreError> {
    let mut kinds: Vec<&pb::FileEntry> = plan
        .files
        .values()
        .filter(|f| wanted.contains(&f.id) && crate::files::handles(f))
        .collect();
    if kinds.is_empty() {
        return Ok(());
    }
    kinds.sort_by_key(|f| crate::files::restore_stage(f));
    // --tcp-close restores connections closed: their state is not read.
    let tcp_inos: Vec<u32> = plan
        .files
        .values()
        .filter_map(|f| f.isk.as_ref())
        .filter(|s| !opts.tcp_close && s.state == 1 && s.proto == libc::IPPROTO_TCP as u32)
        .map(|s| s.ino)
        .collect();
    let extra = crate::files::Extra::read_dir(&plan.dir, &tcp_inos)?;
    let mut ctx = crate::files::RestoreCtx::new(opts, &extra, plan.files.values());
    ctx.root = plan.root.clone();
    // Unlinked files restored above, by the inode they had (see RestoreCtx::inodes).
    for (id, (g, _)) in &plan.ghosts {
        if let (Some(&fd), Some(dev), Some(ino)) = (o.desc.get(id), g.dev, g.ino) {
            ctx.inodes.insert((dev, ino), fd);
        }
    }
    for f in kinds {
        // Epoll targets are recorded by fd number in the task that owns the epoll.
        let owner = plan
            .tasks
            .iter()
            .find(|t| t.fds.iter().any(|d| d.id == f.id));
        let desc = o.desc.clone();
        let targets = |tfd: u32| -> Option<RawFd> {
            let t = owner?;
            let id = t.fds.iter().find(|d| d.fd == tfd)?.id;
            desc.get(&id).copied()
        };
        // The epoll keys its items by (file, fd number): register each target under the fd
        // number it has in the task, by placing it there in the restorer for the call.
        let tfds: Vec<u32> = f
            .epfd
            .iter()
            .flat_map(|e| e.tfd.iter().map(|t| t.tfd))
            .collect();
        let mut swaps: Vec<(RawFd, Option<RawFd>)> = Vec::new();
        for &tfd in &tfds {
            let Some(src) = targets(tfd) else { continue };
            let tfd = tfd as RawFd;
            if swaps.iter().any(|s| s.0 == tfd) {
                continue;
            }
            let saved = crate::sys::fds::dup_above(tfd, o.base + 4096).ok();
            crate::sys::fds::dup2_raw(src, tfd, true)
                .map_err(|e| sys(format!("place epoll target at fd {tfd}"), e))?;
            swaps.push((tfd, saved));
        }
        let direct = |tfd: u32| -> Option<RawFd> {
            swaps
                .iter()
                .any(|s| s.0 == tfd as RawFd)
                .then_some(tfd as RawFd)
        };
        let res = crate::files::restore_fd(f, &mut ctx, &direct);
        for &(tfd, saved) in swaps.iter().rev() {
            match saved {
                Some(orig) => {
                    let _ = crate::sys::fds::dup2_raw(orig, tfd, false);
                    crate::sys::fds::close_raw(orig);
                }
                None => crate::sys::fds::close_raw(tfd),
            }
        }
        let fd = res?;
        if opts.shell_job {
            if let Some(pgrp) = inherited_tty_pgrp(plan, &extra, f) {
                o.shell_ttys.push((f.id, pgrp));
            }
        }
        let n = o.park(fd)?;
        o.desc.insert(f.id, n);
    }
    ctx.finish_in_flight(&o.desc)?;
    ctx.finish()?;
    Ok(())
}

/// Files passed with `SCM_RIGHTS` and still in a unix queue (`sk-queues.img`): opened like
/// the tasks' files, also when no task has them any more.
fn in_flight_ids(plan: &Plan) -> Result<BTreeSet<u32>, RestoreError> {
    if !plan.dir.join("sk-queues.img").exists() {
        return Ok(BTreeSet::new());
    }
    let extra = crate::files::Extra::read_dir(&plan.dir, &[])?;
    Ok(crate::files::scm::in_flight_ids(&extra).collect())
}

/// The dumped foreground group of a pty slave whose master is not in the images (a shell
/// job's terminal, replaced by the restorer's own), 0 when it had none.
fn inherited_tty_pgrp(plan: &Plan, extra: &crate::files::Extra, f: &pb::FileEntry) -> Option<i32> {
    let info_id = f.tty.as_ref()?.tty_info_id;
    let master = info_id | 1;
    if info_id & 1 == 1
        || plan
            .files
            .values()
            .any(|g| g.tty.as_ref().is_some_and(|t| t.tty_info_id == master))
    {
        return None;
    }
    let info = extra.tty_info.iter().find(|i| i.id == info_id)?;
    Some(info.pgrp as i32)
}

fn io(step: &'static str, what: &str, e: std::io::Error) -> RestoreError {
    RestoreError::Io {
        step,
        path: PathBuf::from(what),
        source: e,
    }
}

/// Opens a regular file (or directory, or other path) entry with its recorded flags and
/// position; `ghost` is the unlinked file it was (see [`make_ghost`]).
fn open_reg(
    root: &Path,
    reg: &pb::RegFileEntry,
    ghost: Option<RawFd>,
) -> Result<OwnedFd, RestoreError> {
    let o_path = reg.flags & libc::O_PATH as u32 != 0;
    let mut flags = reg.flags;
    if reg.mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFLNK) {
        // An O_PATH descriptor of the symlink itself.
        flags |= libc::O_NOFOLLOW as u32;
    }
    let fd = match ghost {
        Some(g) => reopen(g, flags)?,
        None => super::root::open(root, &reg.name, open_flags(flags))
            .map_err(|e| sys(format!("open {}", reg.name), e))?,
    };
    if !o_path {
        // O_ASYNC is not taken by open(2).
        fcntl(&fd, FcntlArg::F_SETFL(status_flags(flags)))
            .map_err(|e| sys(format!("set flags of {}", reg.name), e))?;
        if reg.pos != 0 {
            lseek(&fd, reg.pos as i64, Whence::SeekSet)
                .map_err(|e| sys(format!("seek {}", reg.name), e))?;
        }
    }
    Ok(fd)
}

/// The host path of image path `name` under the restore's root, as text (ghosts are made
/// there).
fn host_name(plan: &Plan, name: &str) -> String {
    super::root::host_path(&plan.root, name)
        .to_string_lossy()
        .into_owned()
}

/// A new open file description of the object behind `fd` (via /proc/self/fd).
fn reopen(fd: RawFd, flags: u32) -> Result<OwnedFd, RestoreError> {
    let p = format!("/proc/self/fd/{fd}");
    // O_NOFOLLOW would stop at the /proc link itself.
    let flags = flags & !(libc::O_NOFOLLOW as u32);
    nix::fcntl::open(p.as_str(), open_flags(flags), Mode::empty())
        .map_err(|e| sys(format!("reopen {p}"), e))
}

/// Recreates an unlinked file, directory, FIFO, device node (mode and rdev) or symlink (its
/// target) — a ghost — with its content, owner, mode and times, and returns an `O_PATH` descriptor of it once it is unlinked again (reopen it
/// through /proc/self/fd with the flags wanted). It is created under its old name, in
/// directories made for the moment when they were removed too, or beside that name when
/// something else took it since.
fn make_ghost(name: &str, g: &super::plan::Ghost) -> Result<OwnedFd, RestoreError> {
    use std::path::Path;
    let (head, chunks) = g;
    let want = Path::new(name);
    if !want.is_absolute() {
        return Err(mismatch(name, "deleted file with a relative path"));
    }
    // Missing ancestors, made now and removed at the end (innermost first).
    let mut made: Vec<PathBuf> = Vec::new();
    let missing: Vec<&Path> = want
        .ancestors()
        .skip(1)
        .take_while(|a| std::fs::symlink_metadata(a).is_err())
        .collect();
    let res = (|| {
        for dir in missing.iter().rev() {
            std::fs::create_dir(dir).map_err(|e| io("make a ghost's directory", name, e))?;
            made.push(dir.to_path_buf());
        }
        let mut path = want.to_path_buf();
        let mut n = 0;
        while std::fs::symlink_metadata(&path).is_ok() {
            n += 1;
            path = PathBuf::from(format!("{name}.stasis-ghost.{n}"));
        }
        let ghost = create_ghost(&path, head, chunks);
        let fd = ghost.and_then(|()| {
            nix::fcntl::open(&path, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(|e| sys(format!("open ghost {}", path.display()), e))
        });
        let gone = if head.mode & libc::S_IFMT == libc::S_IFDIR {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        let fd = fd?;
        gone.map_err(|e| io("unlink ghost", name, e))?;
        Ok(fd)
    })();
    for dir in made.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    res
}

/// Creates one ghost at `path` (see [`make_ghost`]).
fn create_ghost(
    path: &std::path::Path,
    head: &stasis_images::pb::GhostFileEntry,
    chunks: &[(u64, Vec<u8>)],
) -> Result<(), RestoreError> {
    let name = path.to_string_lossy();
    let perm = head.mode & 0o7777;
    match head.mode & libc::S_IFMT {
        libc::S_IFDIR => {
            std::fs::create_dir(path).map_err(|e| io("make ghost directory", &name, e))?
        }
        libc::S_IFIFO => nix::unistd::mkfifo(path, Mode::from_bits_truncate(perm))
            .map_err(|e| sys(format!("make ghost fifo {name}"), e))?,
        libc::S_IFREG => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| mismatch(&name, format!("cannot recreate deleted file ({e})")))?;
            for (off, data) in chunks {
                file.write_all_at(data, *off)
                    .map_err(|e| io("write ghost file", &name, e))?;
            }
            if let Some(s) = head.size {
                file.set_len(s)
                    .map_err(|e| io("size ghost file", &name, e))?;
            }
        }
        kind @ (libc::S_IFCHR | libc::S_IFBLK) => {
            let rdev = head
                .rdev
                .ok_or_else(|| mismatch(&name, "deleted device node without its rdev"))?;
            let kind = if kind == libc::S_IFCHR {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFBLK
            };
            nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(perm), rdev.into())
                .map_err(|e| sys(format!("make ghost device node {name}"), e))?
        }
        libc::S_IFLNK => {
            let target = head
                .symlnk_target
                .as_deref()
                .ok_or_else(|| mismatch(&name, "deleted symlink without its target"))?;
            std::os::unix::fs::symlink(target, path)
                .map_err(|e| io("make ghost symlink", &name, e))?
        }
        other => {
            return Err(RestoreError::Unsupported(format!(
                "deleted file {name} of type {other:o}"
            )))
        }
    }
    std::os::unix::fs::lchown(path, Some(head.uid), Some(head.gid))
        .map_err(|e| io("chown ghost", &name, e))?;
    // A symlink has no mode of its own (chmod would follow it).
    if head.mode & libc::S_IFMT != libc::S_IFLNK {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm))
            .map_err(|e| io("chmod ghost", &name, e))?;
    }
    let ts = |t: &Option<stasis_images::pb::Timeval>| {
        t.as_ref()
            .map_or(nix::sys::time::TimeSpec::UTIME_OMIT, |t| {
                nix::sys::time::TimeSpec::new(t.tv_sec as i64, (t.tv_usec * 1000) as i64)
            })
    };
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts(&head.atim),
        &ts(&head.mtim),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| sys(format!("set times of ghost {name}"), e))?;
    Ok(())
}

/// Writes the present runs of a shmem pagemap into `file` (vaddr = offset in the object).
fn fill_from_pages(file: &std::fs::File, pages: &Pages, size: u64) -> std::io::Result<()> {
    if pages.runs.is_empty() {
        return Ok(());
    }
    let src = std::fs::File::open(&pages.file)?;
    let mut buf = vec![0u8; 1 << 20];
    for run in &pages.runs {
        let mut done = 0u64;
        let total = run.nr * 4096;
        while done < total {
            let n = (total - done).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], run.offset + done)?;
            let at = run.vaddr + done;
            if at < size {
                let m = n.min((size - at) as usize);
                file.write_all_at(&buf[..m], at)?;
            }
            done += n as u64;
        }
    }
    Ok(())
}

/// Closes every descriptor of the calling task that is not in `keep` (run in a forked task).
pub fn keep_only(keep: &BTreeSet<RawFd>) -> Result<(), nix::errno::Errno> {
    // The gaps between the kept numbers, by close_range: no listing of /proc/self/fd (whose
    // entries the kernel builds one by one, for each of the tree's tasks).
    let mut from = 0u32;
    let mut ranges = Vec::with_capacity(keep.len() + 1);
    for &fd in keep.iter().filter(|&&fd| fd >= 0) {
        if fd as u32 > from {
            ranges.push((from, fd as u32 - 1));
        }
        from = fd as u32 + 1;
    }
    ranges.push((from, u32::MAX));
    match ranges
        .iter()
        .try_for_each(|&(a, b)| crate::sys::fds::close_range_raw(a, b))
    {
        Err(nix::errno::Errno::ENOSYS) => {}
        other => return other,
    }
    let mut open = Vec::new();
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|_| nix::errno::Errno::EIO)?;
    for e in dir.flatten() {
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) {
            open.push(n);
        }
    }
    for fd in open {
        if !keep.contains(&fd) {
            crate::sys::fds::close_raw(fd);
        }
    }
    Ok(())
}

impl Opened {
    /// Closes the given parked descriptors in the restorer (the forked tasks keep theirs).
    pub fn forget(&mut self, fds: &[RawFd]) {
        self.owned.retain(|f| !fds.contains(&f.as_raw_fd()));
    }
}
