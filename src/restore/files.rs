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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::Mode;
use nix::unistd::{lseek, Whence};

use super::error::RestoreError;
use super::plan::{vma_status, Pages, Plan};

/// Descriptors opened for the restore, parked at numbers >= `base`.
#[derive(Default)]
pub struct Opened {
    /// files.img id -> parked descriptor of its open file description.
    pub desc: HashMap<u32, RawFd>,
    /// files.img id -> parked descriptor used to map the file (memfd: the memfd itself).
    pub maps: HashMap<u32, RawFd>,
    /// First parked number.
    pub base: RawFd,
    /// Owners (closed when the restorer is done).
    owned: Vec<OwnedFd>,
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

    /// Every parked descriptor.
    pub fn parked(&self) -> Vec<RawFd> {
        self.owned.iter().map(|f| f.as_raw_fd()).collect()
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
pub fn open_all(plan: &Plan, kinds: crate::files::RestoreOptions) -> Result<Opened, RestoreError> {
    let max_fd = plan
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2);
    let base = (max_fd as RawFd + 1).max(100);
    let (_, hard) = crate::sys::tracee::get_rlimit(0, libc::RLIMIT_NOFILE)
        .map_err(|e| sys("read RLIMIT_NOFILE", e))?;
    let _ = crate::sys::tracee::set_rlimit(0, libc::RLIMIT_NOFILE, hard, hard);
    if base as u64 + 64 > hard {
        return Err(RestoreError::Unsupported(format!(
            "descriptor {max_fd} is above this system's RLIMIT_NOFILE {hard}"
        )));
    }
    let mut o = Opened {
        base,
        ..Default::default()
    };

    // memfd inodes: one memfd each, with its content and seals.
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

    // Which ids are mapped (and how).
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

    // Pipes: group the ends by pipe_id.
    let mut pipes: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for (id, f) in &plan.files {
        if let Some(p) = &f.pipe {
            pipes.entry(p.pipe_id).or_default().push((*id, p.flags));
        }
    }
    for (pipe_id, ends) in &pipes {
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

    // Descriptions referenced by some task's fdinfo, and mapped files.
    let mut wanted: BTreeSet<u32> = BTreeSet::new();
    for t in &plan.tasks {
        wanted.extend(t.fds.iter().map(|f| f.id));
    }
    let mut shared = Vec::new();
    for id in wanted.iter().copied().chain(mapped.keys().copied()) {
        let f = plan.files.get(&id).ok_or_else(|| RestoreError::Image {
            path: plan.dir.join("files.img"),
            index: 0,
            what: format!("no file id {id}"),
        })?;
        let want_desc = wanted.contains(&id) && !o.desc.contains_key(&id);
        let want_map = mapped.contains_key(&id) && !o.maps.contains_key(&id);
        if let Some(reg) = &f.reg {
            if want_desc {
                let fd = if let Some((g, chunks)) = plan.ghosts.get(&id) {
                    open_ghost(&reg.name, reg.flags, g.mode, g.size, chunks)?
                } else {
                    nix::fcntl::open(reg.name.as_str(), open_flags(reg.flags), Mode::empty())
                        .map_err(|e| sys(format!("open {}", reg.name), e))?
                };
                lseek(&fd, reg.pos as i64, Whence::SeekSet)
                    .map_err(|e| sys(format!("seek {}", reg.name), e))?;
                let n = o.park(fd)?;
                o.desc.insert(id, n);
            }
            if want_map {
                let acc = mapped[&id];
                let fd = match o.desc.get(&id) {
                    Some(&d) if plan.ghosts.contains_key(&id) => reopen(d, acc)?,
                    _ => nix::fcntl::open(reg.name.as_str(), open_flags(acc), Mode::empty())
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
        } else if crate::files::handles(f) {
            if want_desc {
                shared.push(id);
            }
        } else if f.pipe.is_none() {
            return Err(RestoreError::Unsupported(format!(
                "files.img: id {id}: file type {} is not restored yet",
                f.r#type
            )));
        }
    }
    // Sockets, eventfd, epoll, timerfd, signalfd, inotify, ptys: crate::files, in its order.
    let tables: Vec<&[crate::images::pb::FdinfoEntry]> =
        plan.tasks.iter().map(|t| t.fds.as_slice()).collect();
    let desc = o.desc.clone();
    let restored = crate::files::task::restore_files(
        &plan.dir,
        &plan.files,
        &shared,
        &tables,
        &|id| desc.get(&id).copied(),
        kinds,
    )?;
    for (id, fd) in restored {
        let n = o.park(fd)?;
        o.desc.insert(id, n);
    }
    Ok(o)
}

fn io(step: &'static str, what: &str, e: std::io::Error) -> RestoreError {
    RestoreError::Io {
        step,
        path: PathBuf::from(what),
        source: e,
    }
}

/// A new open file description of the object behind `fd` (via /proc/self/fd).
fn reopen(fd: RawFd, flags: u32) -> Result<OwnedFd, RestoreError> {
    let p = format!("/proc/self/fd/{fd}");
    nix::fcntl::open(p.as_str(), open_flags(flags), Mode::empty())
        .map_err(|e| sys(format!("reopen {p}"), e))
}

/// Recreates an unlinked file under its old name, opens it, and unlinks it again.
fn open_ghost(
    name: &str,
    flags: u32,
    mode: u32,
    size: Option<u64>,
    chunks: &[(u64, Vec<u8>)],
) -> Result<OwnedFd, RestoreError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .open(name)
        .map_err(|e| mismatch(name, format!("cannot recreate deleted file ({e})")))?;
    let res = (|| {
        for (off, data) in chunks {
            file.write_all_at(data, *off)?;
        }
        if let Some(s) = size {
            file.set_len(s)?;
        }
        std::io::Result::Ok(())
    })();
    let opened = res
        .map_err(|e| io("write ghost file", name, e))
        .and_then(|_| {
            nix::fcntl::open(name, open_flags(flags), Mode::empty())
                .map_err(|e| sys(format!("open ghost {name}"), e))
        });
    let _ = std::fs::remove_file(name);
    opened
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
