//! Open files of the tree: `files.img` (one entry per open file description, shared by every
//! fd and VMA that refers to it), `fdinfo-N.img` per fd table, and the side images some file
//! kinds need: ghost files (`remap-fpath.img`, `ghost-file-N.img`), pipe contents
//! (`pipes-data.img`) and memfd inodes (`memfd.img`, with their pages dumped as shmem).
//!
//! ```text
//!  fd 13 -> /proc/P/fd/13 = "/data/gone.dat (deleted)", nlink 0
//!        files.img  {type REG, id 7, reg {name "/data/gone.dat", pos, flags, size, mode}}
//!        remap-fpath.img {orig_id 7, remap_id 1, remap_type GHOST}
//!        ghost-file-1.img {mode, dev, ino, times, chunks, size} + {len, off} + data...
//!  fdinfo-<files_id>.img {id 7, fd 13, type REG, flags FD_CLOEXEC?}
//! ```
//!
//! ```text
//!  fd 4 -> "/w/fifo", a FIFO
//!        files.img  {type REG, id 8, reg {name "/w/fifo", flags, fown}}      (its path)
//!                   {type FIFO, id 9, fifo {id 9, pipe_id ino, regf_id 8}}  (what fd 4 is)
//!        fifo-data.img {pipe_id, bytes, size} + bytes        (also for an empty FIFO: size)
//!  fd 5 with a lock (fdinfo "lock: 1: FLOCK ADVISORY WRITE ..."), --file-locks:
//!        filelocks.img {flag FL_FLOCK, type F_WRLCK, pid, fd 5, start, len}
//!  cwd/root in a removed directory: a REG entry + a ghost with the directory's mode
//!  an unlinked device node: ghost {mode, rdev} (no data: the device is never read)
//!  an unlinked symlink (an O_PATH|O_NOFOLLOW fd): ghost {mode, symlnk_target}
//! ```
//!
//! Two fds are one open file description when /proc shows the same and `kcmp(KCMP_FILE)`
//! agrees; the owner and signal of a file (`fown`) are read on a `pidfd_getfd` copy. A
//! descriptor table shared by a parent and its child (`CLONE_FILES`) is dumped once: both
//! carry the same `files_id` in `ids-P.img` and there is one `fdinfo-<files_id>.img`.
//!
//! File contents are read from outside the task: `/proc/P/fd/N` and `/proc/P/map_files/A-B`
//! reopen the same inode (pipes are peeked with `tee`, never consumed).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use stasis_images::pb;

use super::error::{DumpError, Result};
use crate::proc;
use crate::proc::fd::FdTarget;

/// Largest ghost file we copy into the images (CRIU's default `--ghost-limit` is 1 MiB).
pub const GHOST_LIMIT: u64 = 1 << 20;

/// Kernel dev_t as CRIU stores it (`major << 20 | minor`).
pub fn kdev(dev: u64) -> u64 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major << 20) | minor
}

/// A shmem object (memfd or shared anonymous memory) whose pages must be dumped.
#[derive(Debug, Clone)]
pub struct Shmem {
    /// `shmid` (the inode number).
    pub shmid: u64,
    /// Where its content can be read.
    pub path: PathBuf,
    pub size: u64,
}

/// A ghost file whose content goes to `ghost-file-<id>.img`.
#[derive(Debug, Clone)]
pub struct Ghost {
    pub id: u32,
    pub header: pb::GhostFileEntry,
    pub path: PathBuf,
    pub size: u64,
}

/// One fd of one task, as `fdinfo-N.img` records it.
#[derive(Debug, Clone)]
pub struct FdEntry {
    pub fd: i32,
    pub id: u32,
    pub kind: &'static str,
    pub cloexec: bool,
}

/// Everything file-related collected over the whole tree.
#[derive(Debug, Default)]
pub struct Files {
    next_id: u32,
    /// `files.img` entries.
    pub entries: Vec<pb::FileEntry>,
    /// Open file descriptions seen, by what /proc tells of them; several may share a key
    /// (two opens of one file), `kcmp` tells them apart: (pid, fd, id, kind).
    by_open: HashMap<String, Vec<(i32, i32, u32, &'static str)>>,
    by_inode: HashMap<(u64, u64), u32>,
    memfd_inode_ids: HashMap<u64, u32>,
    /// `memfd.img` entries.
    pub memfd_inodes: Vec<pb::MemfdInodeEntry>,
    /// shmem objects to dump as `pagemap-shmem-<shmid>.img`.
    pub shmem: Vec<Shmem>,
    /// `remap-fpath.img` entries.
    pub remaps: Vec<pb::RemapFilePathEntry>,
    pub ghosts: Vec<Ghost>,
    /// `pipes-data.img`: entry and data.
    pub pipes_data: Vec<(pb::PipeDataEntry, Vec<u8>)>,
    /// `fifo-data.img`: entry and data.
    pub fifo_data: Vec<(pb::PipeDataEntry, Vec<u8>)>,
    pipes_seen: HashSet<u64>,
    /// Tasks seen and their table's `files_id` (one `fdinfo-<files_id>.img` per table).
    tables: Vec<(i32, u32)>,
    /// `--file-locks`: locks are dumped (else a lock refuses the dump).
    pub file_locks_allowed: bool,
    /// `filelocks.img` entries (POSIX, flock and OFD locks, from the fdinfo `lock:` lines).
    pub file_locks: Vec<pb::FileLockEntry>,
    /// State of the fd kinds shared with the restore engine ([`crate::files`]): unix and
    /// inet sockets, established TCP, ptys; their side images (sk-queues, tcp-stream, tty-info).
    pub kinds: crate::files::DumpState,
    /// CRIU's id of the dumper's network namespace (`inventory.root_ids.net_ns_id`): sockets
    /// must be in it (sock_diag answers for that namespace) and carry it as `ns_id`.
    pub net_ns_id: Option<u32>,
    /// The dumper's network namespace inode, read on the first socket.
    my_net: Option<Option<u64>>,
    /// `--ghost-limit` (None: [`GHOST_LIMIT`]).
    pub ghost_limit: Option<u64>,
    /// `--link-remap` was given.
    pub link_remap: bool,
}

/// `value` for a 32-bit field of an image, or an error naming it: never truncated.
fn field_u32(pid: i32, field: &str, value: u64) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        DumpError::new(
            "files",
            pid,
            Some(libc::EOVERFLOW),
            format!("{field} {value} does not fit the image's 32-bit field"),
        )
    })
}

/// The `pipe_data_entry` of a pipe or FIFO `ino` holding `data` in a buffer of `size` bytes.
fn pipe_data(pid: i32, ino: u64, data: &[u8], size: u64) -> Result<pb::PipeDataEntry> {
    Ok(pb::PipeDataEntry {
        pipe_id: field_u32(pid, "pipe inode", ino)?,
        bytes: field_u32(pid, "pipe bytes", data.len() as u64)?,
        size: Some(field_u32(pid, "pipe size", size)?),
    })
}

/// The owner and signal (`F_GETOWN_EX`, `F_GETSIG`) of fd `fd` of `pid`, read on a copy of
/// the descriptor (`pidfd_getfd`: the same open file description).
fn task_fown(pid: i32, fd: i32) -> Result<pb::FownEntry> {
    use crate::sys::fdkinds;
    let fail = |what: &str, e: nix::errno::Errno| {
        DumpError::new(
            "files",
            pid,
            Some(e as i32),
            format!("fd {fd}: {what}: {e}"),
        )
    };
    let pidfd = fdkinds::pidfd_open(pid).map_err(|e| fail("pidfd_open", e))?;
    let file = fdkinds::pidfd_getfd(&pidfd, fd).map_err(|e| fail("pidfd_getfd", e))?;
    let o = crate::files::common::dump_fown("file", crate::files::At::Fd { pid, fd }, file.as_fd())
        .map_err(|e| DumpError::new("files", pid, e.errno(), format!("fd {fd}: {e}")))?;
    Ok(pb::FownEntry {
        uid: o.uid,
        euid: o.euid,
        signum: o.signum,
        pid_type: o.pid_type,
        pid: o.pid,
    })
}

fn step_io(pid: i32, what: String) -> impl FnOnce(std::io::Error) -> DumpError {
    move |e| {
        let errno = match e.raw_os_error() {
            Some(libc::ENOENT) if !proc::path(pid, "").exists() => Some(libc::ESRCH),
            x => x,
        };
        DumpError::new("files", pid, errno, format!("{what}: {e}"))
    }
}

impl Files {
    pub fn new() -> Self {
        Files::default()
    }

    fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Dumps fd `fd` of `pid` with [`crate::files`] if it is one of its kinds.
    fn shared_kind(&mut self, pid: i32, fd: i32) -> Result<Option<(u32, &'static str)>> {
        let next = &mut self.next_id;
        let mut alloc = || {
            *next += 1;
            *next
        };
        let fail = |e: crate::files::FilesError| {
            DumpError::new("files", pid, e.errno(), format!("fd {fd}: {e}"))
        };
        let Some((mut e, kind)) =
            crate::files::task::dump_task_fd(pid, fd, &mut alloc, &mut self.kinds).map_err(fail)?
        else {
            return Ok(None);
        };
        if let Some(u) = &mut e.usk {
            // Like CRIU: the socket's network namespace (checked to be ours in `fd`).
            u.ns_id = self.net_ns_id;
        }
        let id = e.id;
        self.entries.push(e);
        Ok(Some((id, kind)))
    }

    /// After the last task: the whole-tree checks of [`crate::files::finish_dump`] (unix
    /// peers); its entries replace or join files.img entries.
    pub fn finish_kinds(&mut self, root: i32) -> Result<()> {
        self.dump_in_flight()?;
        let next = &mut self.next_id;
        let mut alloc = || {
            *next += 1;
            *next
        };
        let fail =
            |e: crate::files::FilesError| DumpError::new("files", root, e.errno(), e.to_string());
        for e in crate::files::finish_dump(&mut self.kinds, &mut alloc).map_err(fail)? {
            match self.entries.iter_mut().find(|x| x.id == e.id) {
                Some(old) => *old = e,
                None => self.entries.push(e),
            }
        }
        Ok(())
    }

    /// Descriptors in flight in the tree's unix queues (`SCM_RIGHTS`), peeked into the
    /// dumper: each is dumped as a file (the same open file description as a task's fd
    /// gets that fd's id) and its id goes into its packet's `scm` entry. A socket in flight
    /// may carry more in its own queue: repeated until none is left.
    fn dump_in_flight(&mut self) -> Result<()> {
        let me = std::process::id() as i32;
        // The copies stay open until the end: ids of open descriptions are matched by
        // (pid, fd), which a number used again would confuse.
        let mut held = Vec::new();
        loop {
            let batch = self.kinds.take_in_flight();
            if batch.is_empty() {
                break;
            }
            for f in batch {
                let mut ids = Vec::with_capacity(f.fds.len());
                for fd in &f.fds {
                    let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
                    ids.push(self.fd(me, raw)?.id);
                }
                self.kinds.set_rights(f.index, ids);
                held.push(f.fds);
            }
        }
        Ok(())
    }

    /// A `reg` entry for a file opened at `link` (a /proc path reopening it).
    fn reg_entry(
        &mut self,
        pid: i32,
        link: &PathBuf,
        name: &str,
        flags: u32,
        pos: u64,
    ) -> Result<(u32, File)> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(link)
            .map_err(step_io(pid, format!("open {}", link.display())))?;
        let md = f
            .metadata()
            .map_err(step_io(pid, format!("stat {}", link.display())))?;
        let id = self.new_id();
        let is_reg = md.file_type().is_file();
        let wronly_append = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32
            && flags & libc::O_APPEND as u32 != 0;
        let mut reg = pb::RegFileEntry {
            id,
            flags,
            pos,
            name: name.to_string(),
            size: (is_reg && !wronly_append).then(|| md.size()),
            mode: Some(md.mode()),
            ..Default::default()
        };
        if is_reg && !wronly_append {
            // O_PATH fds cannot be read: reopen for the build-id.
            if let Ok(rf) = File::open(link) {
                if let Some(b) = super::elf::build_id(&rf) {
                    reg.build_id = b;
                }
            }
        }
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(reg),
            ..Default::default()
        });
        Ok((id, f))
    }

    /// The file of a file-backed VMA (deduplicated by device and inode).
    pub fn vma_file(&mut self, pid: i32, vma: &proc::maps::Vma) -> Result<u32> {
        let link = proc::path(pid, &format!("map_files/{:x}-{:x}", vma.start, vma.end));
        let md =
            std::fs::metadata(&link).map_err(step_io(pid, format!("stat {}", link.display())))?;
        if let Some(&id) = self.by_inode.get(&(md.dev(), md.ino())) {
            return Ok(id);
        }
        let (name, deleted) = vma.path_deleted();
        let name = name.to_string();
        let id = self.reg_ghost(pid, "mapping", &link, &name, deleted, 0, 0)?;
        self.by_inode.insert((md.dev(), md.ino()), id);
        Ok(id)
    }

    /// The executable (`mm.exe_file_id`), shared with its VMAs' file.
    pub fn exe(&mut self, pid: i32) -> Result<u32> {
        let link = proc::path(pid, "exe");
        let md = std::fs::metadata(&link).map_err(step_io(pid, "stat exe".into()))?;
        if let Some(&id) = self.by_inode.get(&(md.dev(), md.ino())) {
            return Ok(id);
        }
        let target = proc::read_link(pid, &link).map_err(|e| DumpError::proc("files", pid, e))?;
        let target = target.to_string_lossy();
        let name = target.trim_end_matches(" (deleted)").to_string();
        let deleted = name.len() != target.len();
        let id = self.reg_ghost(pid, "exe", &link, &name, deleted, 0, 0)?;
        self.by_inode.insert((md.dev(), md.ino()), id);
        Ok(id)
    }

    /// The directory `cwd` or `root` of a task (always a new entry, like CRIU).
    pub fn fs_dir(&mut self, pid: i32, which: &str) -> Result<u32> {
        let link = proc::path(pid, which);
        let target = proc::read_link(pid, &link).map_err(|e| DumpError::proc("files", pid, e))?;
        let target = target.to_string_lossy();
        let name = target.trim_end_matches(" (deleted)").to_string();
        let deleted = name.len() != target.len();
        self.reg_ghost(pid, which, &link, &name, deleted, 0, 0)
    }

    fn memfd_inode(&mut self, pid: i32, link: &PathBuf, name: &str) -> Result<u32> {
        let f = File::open(link).map_err(step_io(pid, format!("open {}", link.display())))?;
        let md = f
            .metadata()
            .map_err(step_io(pid, format!("stat {}", link.display())))?;
        if let Some(&i) = self.memfd_inode_ids.get(&md.ino()) {
            return Ok(i);
        }
        let inode_id = self.memfd_inode_ids.len() as u32 + 1;
        self.memfd_inode_ids.insert(md.ino(), inode_id);
        // Shared anonymous memory has no seals of its own: it is sealed against everything.
        let seals = nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_GET_SEALS)
            .unwrap_or(libc::F_SEAL_SEAL);
        self.memfd_inodes.push(pb::MemfdInodeEntry {
            name: name.to_string(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.size(),
            shmid: field_u32(pid, "memfd inode", md.ino())?,
            // The seals are flag bits (F_SEAL_*).
            seals: seals as u32,
            inode_id: inode_id.into(),
            mode: Some(md.mode()),
            hugetlb_flag: None,
        });
        self.shmem.push(Shmem {
            shmid: md.ino(),
            path: link.clone(),
            size: md.size(),
        });
        Ok(inode_id)
    }

    fn memfd_entry(
        &mut self,
        pid: i32,
        link: &PathBuf,
        name: &str,
        flags: u32,
        pos: u64,
    ) -> Result<u32> {
        let inode_id = self.memfd_inode(pid, link, name)?;
        let id = self.new_id();
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Memfd as i32,
            id,
            memfd: Some(pb::MemfdFileEntry {
                id,
                flags,
                pos,
                fown: pb::FownEntry::default(),
                inode_id,
            }),
            ..Default::default()
        });
        Ok(id)
    }

    /// The file of a shared memfd or shared anonymous VMA (a MEMFD entry; its pages are shmem).
    pub fn vma_memfd(&mut self, pid: i32, vma: &proc::maps::Vma) -> Result<u32> {
        let link = proc::path(pid, &format!("map_files/{:x}-{:x}", vma.start, vma.end));
        let (p, _) = vma.path_deleted();
        let name = p.strip_prefix("/memfd:").unwrap_or(p).to_string();
        let md =
            std::fs::metadata(&link).map_err(step_io(pid, format!("stat {}", link.display())))?;
        if let Some(&id) = self.by_inode.get(&(md.dev(), md.ino())) {
            return Ok(id);
        }
        let id = self.memfd_entry(pid, &link, &name, 0, 0)?;
        self.by_inode.insert((md.dev(), md.ino()), id);
        Ok(id)
    }

    /// An open file whose name was unlinked while other links remain: CRIU links it back
    /// under a temporary name with `--link-remap`; stasis does not build link remaps yet.
    fn link_remap_refusal(&self, pid: i32, what: &str, name: &str) -> DumpError {
        let detail = if self.link_remap {
            format!("{what}: {name}: its name was unlinked while other links remain; link remaps (--link-remap) are not built yet")
        } else {
            format!("{what}: {name}: its name was unlinked while other links remain; can't create link remap without the --link-remap option")
        };
        DumpError::new("files", pid, Some(libc::ENOTSUP), detail)
    }

    /// Records the unlinked file (or directory, or FIFO) behind `link` as a ghost of files.img
    /// entry `orig_id`: its metadata, and for a regular file its data (holes skipped; the
    /// ghost limit applies to the data, like CRIU's allocated-blocks check).
    fn ghost(&mut self, pid: i32, orig_id: u32, link: &PathBuf, node: &File) -> Result<()> {
        use std::os::unix::fs::FileTypeExt;
        // fstat of the O_PATH descriptor: a symlink's own inode, not its target.
        let md = node
            .metadata()
            .map_err(step_io(pid, format!("stat {}", link.display())))?;
        let kind = md.file_type();
        let is_reg = kind.is_file();
        if is_reg {
            let f = File::open(link).map_err(step_io(pid, format!("open {}", link.display())))?;
            let data: u64 = data_segments(&f, md.size())
                .map_err(step_io(pid, format!("find data of {}", link.display())))?
                .iter()
                .map(|(a, b)| b - a)
                .sum();
            let limit = self.ghost_limit.unwrap_or(GHOST_LIMIT);
            if data > limit {
                return Err(DumpError::new(
                    "files",
                    pid,
                    Some(libc::EFBIG),
                    format!(
                        "unlinked file {} holds {data} bytes of data, over the ghost limit \
                         {limit} (--ghost-limit)",
                        link.display(),
                    ),
                ));
            }
        }
        let id = self.ghosts.len() as u32 + 1;
        let time = |sec: i64, nsec: i64| -> Result<pb::Timeval> {
            Ok(pb::Timeval {
                tv_sec: u64::try_from(sec).map_err(|_| {
                    DumpError::new(
                        "files",
                        pid,
                        Some(libc::EOVERFLOW),
                        format!("{}: time {sec} before 1970", link.display()),
                    )
                })?,
                tv_usec: nsec.unsigned_abs() / 1000,
            })
        };
        let mut header = pb::GhostFileEntry {
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode(),
            dev: Some(field_u32(pid, "device", kdev(md.dev()))?),
            ino: Some(md.ino()),
            atim: Some(time(md.atime(), md.atime_nsec())?),
            mtim: Some(time(md.mtime(), md.mtime_nsec())?),
            chunks: is_reg.then_some(true),
            size: is_reg.then(|| md.size()),
            ..Default::default()
        };
        if kind.is_char_device() || kind.is_block_device() {
            // The glibc encoding, as CRIU writes it and as mknod(2) takes it back.
            header.rdev = Some(md.rdev() as u32);
        }
        if kind.is_symlink() {
            let target = nix::fcntl::readlinkat(node, "").map_err(|e| {
                DumpError::new(
                    "files",
                    pid,
                    Some(e as i32),
                    format!("read the target of unlinked symlink {}", link.display()),
                )
            })?;
            header.symlnk_target = Some(target.to_string_lossy().into_owned());
        }
        self.remaps.push(pb::RemapFilePathEntry {
            orig_id,
            remap_id: id,
            remap_type: Some(pb::RemapType::Ghost as i32),
        });
        self.ghosts.push(Ghost {
            id,
            header,
            path: link.clone(),
            size: if is_reg { md.size() } else { 0 },
        });
        Ok(())
    }

    /// A `reg` entry for the file at `link`, with its ghost when it is unlinked.
    #[allow(clippy::too_many_arguments)]
    fn reg_ghost(
        &mut self,
        pid: i32,
        what: &str,
        link: &PathBuf,
        name: &str,
        deleted: bool,
        flags: u32,
        pos: u64,
    ) -> Result<u32> {
        let (id, f) = self.reg_entry(pid, link, name, flags, pos)?;
        let nlink = f.metadata().map(|m| m.nlink()).unwrap_or(1);
        if deleted && nlink == 0 {
            self.ghost(pid, id, link, &f)?;
        } else if deleted {
            return Err(self.link_remap_refusal(pid, what, name));
        }
        Ok(id)
    }

    /// A FIFO: its path as a `reg` entry (`regf_id`), the `fifo` entry the fd refers to, and
    /// its queued data (`fifo-data.img`, peeked), as CRIU writes them.
    #[allow(clippy::too_many_arguments)]
    fn fifo(
        &mut self,
        pid: i32,
        fd: i32,
        link: &PathBuf,
        name: &str,
        deleted: bool,
        flags: u32,
        pos: u64,
    ) -> Result<u32> {
        let ino = std::fs::metadata(link)
            .map_err(step_io(pid, format!("stat {}", link.display())))?
            .ino();
        let regf_id = self.reg_ghost(pid, &format!("fd {fd}"), link, name, deleted, flags, pos)?;
        let id = self.new_id();
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Fifo as i32,
            id,
            fifo: Some(pb::FifoEntry {
                id,
                pipe_id: field_u32(pid, "fifo inode", ino)?,
                regf_id: Some(regf_id),
            }),
            ..Default::default()
        });
        if self.pipes_seen.insert(ino) {
            let (size, data) =
                peek_pipe(link).map_err(step_io(pid, format!("peek fifo {fd} {name}")))?;
            self.fifo_data
                .push((pipe_data(pid, ino, &data, size)?, data));
        }
        Ok(id)
    }

    /// Puts `fown` into the entry `id` (of a kind that has one; a FIFO's is in its path entry).
    fn set_fown(&mut self, id: u32, fown: pb::FownEntry) {
        let Some(e) = self.entries.iter_mut().rev().find(|e| e.id == id) else {
            return;
        };
        if let Some(r) = e.fifo.as_ref().and_then(|f| f.regf_id) {
            return self.set_fown(r, fown);
        }
        if let Some(reg) = &mut e.reg {
            reg.fown = fown;
        } else if let Some(pipe) = &mut e.pipe {
            pipe.fown = fown;
        } else if let Some(memfd) = &mut e.memfd {
            memfd.fown = fown;
        }
    }

    /// The open file description of fd `fd` of `pid` when it was seen already (same /proc
    /// view `key`, and `kcmp` says the same description).
    fn same_open(&self, key: &str, pid: i32, fd: i32) -> Result<Option<(u32, &'static str)>> {
        for &(p, f, id, kind) in self.by_open.get(key).into_iter().flatten() {
            let same = crate::sys::fdkinds::same_file(p, f, pid, fd).map_err(|e| {
                DumpError::new(
                    "files",
                    pid,
                    Some(e as i32),
                    format!("fd {fd}: kcmp with fd {f} of {p}: {e}"),
                )
            })?;
            if same {
                return Ok(Some((id, kind)));
            }
        }
        Ok(None)
    }

    /// Records the locks held through fd `fd` of `pid` (its fdinfo `lock:` lines, e.g.
    /// `1: POSIX  ADVISORY  WRITE 1234 fe:00:6004852 10 29`, end `EOF` for "to the end"), as
    /// CRIU's `file_lock_entry` {flag FL_POSIX 1 | FL_FLOCK 2 | FL_OFD 4, type F_RDLCK 0 |
    /// F_WRLCK 1, pid, fd, start, len (0: to the end)}.
    fn locks(&mut self, pid: i32, fd: i32, info: &proc::fd::FdInfo) -> Result<()> {
        for (k, v) in &info.extra {
            if k != "lock" {
                continue;
            }
            let w: Vec<&str> = v.split_whitespace().filter(|w| *w != "->").collect();
            let bad = || {
                DumpError::new(
                    "files",
                    pid,
                    Some(libc::EINVAL),
                    format!("fd {fd}: lock line {v:?}"),
                )
            };
            let kind = *w.get(1).ok_or_else(bad)?;
            if !self.file_locks_allowed {
                return Err(DumpError::new(
                    "files",
                    pid,
                    Some(libc::ENOTSUP),
                    format!("fd {fd} holds a file lock ({kind}): dump with --file-locks"),
                ));
            }
            let flag = match kind {
                "POSIX" => 1,
                "FLOCK" => 2,
                "OFDLCK" => 4,
                other => {
                    return Err(DumpError::new(
                        "files",
                        pid,
                        Some(libc::ENOTSUP),
                        format!("fd {fd}: file lock of kind {other} (leases are not supported)"),
                    ))
                }
            };
            let ty = match *w.get(3).ok_or_else(bad)? {
                "READ" => libc::F_RDLCK,
                "WRITE" => libc::F_WRLCK,
                _ => return Err(bad()),
            };
            let start: i64 = w.get(6).and_then(|x| x.parse().ok()).ok_or_else(bad)?;
            let len = match *w.get(7).ok_or_else(bad)? {
                "EOF" => 0,
                end => end.parse::<i64>().map_err(|_| bad())? - start + 1,
            };
            self.file_locks.push(pb::FileLockEntry {
                flag,
                r#type: ty as u32,
                pid,
                fd,
                start,
                len,
            });
        }
        Ok(())
    }

    /// The descriptor table of `pid` (its `files_id`): a table shared with its parent
    /// (`CLONE_FILES`) is the parent's (`Some(files_id)`: its fds are dumped once, with the
    /// parent's); a new one gets `obj` (`None`: dump its fds). A table shared with another
    /// task of the tree that is not its parent is refused by name: the restore recreates
    /// sharing by forking with `CLONE_FILES`, which only a parent can do.
    pub fn fd_table(&mut self, pid: i32, ppid: i32, obj: u32) -> Result<Option<u32>> {
        let kcmp = |p: i32| {
            crate::sys::fdkinds::same_fd_table(p, pid).map_err(|e| {
                DumpError::new("files", pid, Some(e as i32), format!("kcmp with {p}: {e}"))
            })
        };
        if let Some(&(_, id)) = self.tables.iter().find(|&&(p, _)| p == ppid) {
            if kcmp(ppid)? {
                self.tables.push((pid, id));
                return Ok(Some(id));
            }
        }
        for &(p, _) in &self.tables {
            if kcmp(p)? {
                return Err(DumpError::new(
                    "files",
                    pid,
                    Some(libc::ENOTSUP),
                    format!(
                        "descriptor table shared with task {p} (CLONE_FILES), which is not \
                         its parent: not supported"
                    ),
                ));
            }
        }
        self.tables.push((pid, obj));
        Ok(None)
    }

    fn pipe(&mut self, pid: i32, fd: i32, ino: u64, flags: u32) -> Result<u32> {
        let id = self.new_id();
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Pipe as i32,
            id,
            pipe: Some(pb::PipeEntry {
                id,
                pipe_id: field_u32(pid, "pipe inode", ino)?,
                flags,
                fown: pb::FownEntry::default(),
            }),
            ..Default::default()
        });
        if self.pipes_seen.insert(ino) {
            let link = proc::path(pid, &format!("fd/{fd}"));
            let (size, data) =
                peek_pipe(&link).map_err(step_io(pid, format!("peek pipe {}", link.display())))?;
            // Like CRIU, also for an empty pipe: the entry carries its buffer size.
            self.pipes_data
                .push((pipe_data(pid, ino, &data, size)?, data));
        }
        Ok(id)
    }

    /// Sockets are looked up with sock_diag in the dumper's network namespace: a task in
    /// another one is refused.
    fn same_net_ns(&mut self, pid: i32, fd: i32, ino: u64) -> Result<()> {
        let mine = match self.my_net {
            Some(m) => m,
            None => {
                // This thread's: it may visit the tree's own network namespace.
                let m = std::fs::read_link("/proc/thread-self/ns/net")
                    .ok()
                    .and_then(|t| {
                        let t = t.to_string_lossy().into_owned();
                        t.rsplit_once('[')?.1.strip_suffix(']')?.parse().ok()
                    });
                *self.my_net.insert(m)
            }
        };
        let theirs =
            proc::ns::read_one(pid, "net").map_err(|e| DumpError::proc("files", pid, e))?;
        if mine != theirs {
            return Err(DumpError::new(
                "files",
                pid,
                Some(libc::ENOTSUP),
                format!("fd {fd}: socket:[{ino}] is in another network namespace"),
            ));
        }
        Ok(())
    }

    /// Records fd `fd` of `pid`; returns its fdinfo entry.
    pub fn fd(&mut self, pid: i32, fd: i32) -> Result<FdEntry> {
        let target =
            proc::fd::read_target(pid, fd).map_err(|e| DumpError::proc("files", pid, e))?;
        let info = proc::fd::read_fdinfo(pid, fd).map_err(|e| DumpError::proc("files", pid, e))?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let key = format!(
            "{target:?}|{}|{}|{}|{}",
            info.mnt_id, info.ino, flags, info.pos
        );
        if let Some((id, kind)) = self.same_open(&key, pid, fd)? {
            return Ok(FdEntry {
                fd,
                id,
                kind,
                cloexec,
            });
        }
        self.locks(pid, fd, &info)?;
        // Sockets, ptys and anonymous-inode kinds (eventfd, epoll, timerfd, signalfd,
        // inotify) go to the fd kinds shared with the restore engine; what they do not
        // recognise falls through to the code below.
        let shared = match &target {
            FdTarget::Socket(_) | FdTarget::AnonInode(_) => true,
            FdTarget::Path(p) => {
                p.starts_with("/dev/pts/")
                    || p.as_os_str() == "/dev/ptmx"
                    || p.as_os_str() == "/dev/tty"
            }
            _ => false,
        };
        if let FdTarget::Socket(ino) = &target {
            self.same_net_ns(pid, fd, *ino)?;
        }
        if shared {
            if let Some((id, kind)) = self.shared_kind(pid, fd)? {
                self.by_open
                    .entry(key)
                    .or_default()
                    .push((pid, fd, id, kind));
                return Ok(FdEntry {
                    fd,
                    id,
                    kind,
                    cloexec,
                });
            }
        }
        let link = proc::path(pid, &format!("fd/{fd}"));
        let (id, kind) = match &target {
            FdTarget::Pipe(ino) => {
                let id = self.pipe(pid, fd, *ino, flags)?;
                self.set_fown(id, task_fown(pid, fd)?);
                (id, "PIPE")
            }
            FdTarget::Path(p) => {
                let s = p.to_string_lossy();
                let (name, deleted) = match s.strip_suffix(" (deleted)") {
                    Some(n) => (n.to_string(), true),
                    None => (s.to_string(), false),
                };
                if let Ok(md) = std::fs::metadata(&link) {
                    use std::os::unix::fs::FileTypeExt;
                    let (major, minor) = (libc::major(md.rdev()), libc::minor(md.rdev()));
                    let tty = crate::files::tty::other_tty_kind(major.into(), minor.into());
                    if let Some(what) = tty.filter(|_| md.file_type().is_char_device()) {
                        return Err(DumpError::new(
                            "files",
                            pid,
                            Some(libc::ENOTSUP),
                            format!("fd {fd}: terminal {name} is {what}: not supported"),
                        ));
                    }
                }
                let is_fifo = {
                    use std::os::unix::fs::FileTypeExt;
                    std::fs::metadata(&link).is_ok_and(|m| m.file_type().is_fifo())
                };
                let (id, kind) = if is_fifo {
                    (
                        self.fifo(pid, fd, &link, &name, deleted, flags, info.pos)?,
                        "FIFO",
                    )
                } else if let Some(m) = name.strip_prefix("/memfd:") {
                    (self.memfd_entry(pid, &link, m, flags, info.pos)?, "MEMFD")
                } else {
                    (
                        self.reg_ghost(
                            pid,
                            &format!("fd {fd}"),
                            &link,
                            &name,
                            deleted,
                            flags,
                            info.pos,
                        )?,
                        "REG",
                    )
                };
                // An O_PATH descriptor has no owner (fcntl F_GETOWN_EX: EBADF).
                if flags & libc::O_PATH as u32 == 0 {
                    self.set_fown(id, task_fown(pid, fd)?);
                }
                (id, kind)
            }
            FdTarget::Socket(ino) => {
                return Err(DumpError::new(
                    "files",
                    pid,
                    Some(libc::ENOTSUP),
                    format!("fd {fd}: socket:[{ino}] of an unsupported family"),
                ))
            }
            FdTarget::AnonInode(kind) => {
                return Err(DumpError::new(
                    "files",
                    pid,
                    Some(libc::ENOTSUP),
                    format!("fd {fd}: unsupported anonymous inode [{kind}]"),
                ))
            }
            other => {
                return Err(DumpError::new(
                    "files",
                    pid,
                    Some(libc::ENOTSUP),
                    format!("fd {fd}: unsupported file kind {other:?}"),
                ))
            }
        };
        self.by_open
            .entry(key)
            .or_default()
            .push((pid, fd, id, kind));
        Ok(FdEntry {
            fd,
            id,
            kind,
            cloexec,
        })
    }
}

/// Copies a pipe's queued bytes without consuming them: `tee` into a private pipe as large as
/// the source, then read that. Returns the source's buffer size and the data.
fn peek_pipe(link: &PathBuf) -> std::io::Result<(u64, Vec<u8>)> {
    use nix::fcntl::{fcntl, tee, FcntlArg, OFlag, SpliceFFlags};
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(link)?;
    let size = fcntl(src.as_fd(), FcntlArg::F_GETPIPE_SZ).map_err(std::io::Error::from)? as usize;
    let (r, w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(std::io::Error::from)?;
    fcntl(w.as_fd(), FcntlArg::F_SETPIPE_SZ(size as i32)).map_err(std::io::Error::from)?;
    let n = match tee(
        src.as_fd(),
        w.as_fd(),
        size,
        SpliceFFlags::SPLICE_F_NONBLOCK,
    ) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(e) => return Err(e.into()),
    };
    drop(w);
    let mut data = vec![0u8; n];
    let rf = File::from(r);
    let mut got = 0;
    while got < n {
        let k = nix::unistd::read(rf.as_fd(), &mut data[got..]).map_err(std::io::Error::from)?;
        if k == 0 {
            break;
        }
        got += k;
    }
    data.truncate(got);
    Ok((size as u64, data))
}

/// The data segments `[start, end)` of a file (holes skipped), up to `size`.
pub fn data_segments(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut off: i64 = 0;
    let size = size as i64;
    while off < size {
        let start = match lseek(f.as_fd(), off, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = lseek(f.as_fd(), start, Whence::SeekHole)
            .map_err(std::io::Error::from)?
            .min(size);
        out.push((start as u64, end as u64));
        off = end;
    }
    Ok(out)
}

/// Reads the data segments of a file (skipping holes) for ghost chunks: (offset, bytes).
pub fn data_chunks(path: &PathBuf, size: u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let f = File::open(path)?;
    data_segments(&f, size)?
        .into_iter()
        .map(|(start, end)| {
            let mut buf = vec![0u8; (end - start) as usize];
            f.read_exact_at(&mut buf, start)?;
            Ok((start, buf))
        })
        .collect()
}

/// The `fdinfo-N.img` entry of one fd.
pub fn fdinfo_entry(e: &FdEntry) -> pb::FdinfoEntry {
    pb::FdinfoEntry {
        id: e.id,
        flags: u32::from(e.cloexec),
        r#type: pb::FdTypes::from_str_name(e.kind).map_or(0, |t| t as i32),
        // Descriptor numbers are never negative.
        fd: e.fd.unsigned_abs(),
        xattr_security_selinux: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdev_encoding() {
        assert_eq!(kdev(libc::makedev(254, 0)), 266338304);
        assert_eq!(kdev(libc::makedev(8, 17)), (8 << 20) | 17);
    }

    #[test]
    fn pipe_peek_does_not_consume() {
        use std::io::{Read, Write};
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut wf = File::from(w);
        wf.write_all(b"hello pipe").unwrap();
        use std::os::fd::AsRawFd;
        let link = PathBuf::from(format!("/proc/self/fd/{}", r.as_raw_fd()));
        let (size, data) = peek_pipe(&link).unwrap();
        assert!(size >= 4096);
        assert_eq!(data, b"hello pipe");
        let mut rf = File::from(r);
        drop(wf);
        let mut s = String::new();
        rf.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello pipe");
    }

    #[test]
    fn anon_inode_fds_encode() {
        use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
        use nix::sys::eventfd::{EfdFlags, EventFd};
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        use nix::sys::signal::{SigSet, Signal};
        use nix::sys::signalfd::SignalFd;
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
        use std::os::fd::{AsFd, AsRawFd};
        let efd = EventFd::from_value_and_flags(7, EfdFlags::EFD_NONBLOCK).unwrap();
        let ep = Epoll::new(EpollCreateFlags::empty()).unwrap();
        ep.add(efd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 42))
            .unwrap();
        let tfd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::empty()).unwrap();
        tfd.set(
            Expiration::IntervalDelayed(TimeSpec::new(100, 0), TimeSpec::new(1, 500)),
            TimerSetTimeFlags::empty(),
        )
        .unwrap();
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGUSR1);
        let sfd = SignalFd::new(&mask).unwrap();
        let ino = Inotify::init(InitFlags::empty()).unwrap();
        ino.add_watch("/tmp", AddWatchFlags::IN_CREATE).unwrap();
        let me = std::process::id() as i32;
        let mut files = Files::new();
        let kinds: Vec<&str> = [
            efd.as_fd().as_raw_fd(),
            ep.0.as_raw_fd(),
            tfd.as_fd().as_raw_fd(),
            sfd.as_raw_fd(),
            ino.as_fd().as_raw_fd(),
        ]
        .iter()
        .map(|&fd| files.fd(me, fd).unwrap().kind)
        .collect();
        assert_eq!(
            kinds,
            ["EVENTFD", "EVENTPOLL", "TIMERFD", "SIGNALFD", "INOTIFY"]
        );
        let e = &files.entries;
        assert_eq!(e[0].efd.as_ref().map(|x| x.counter), Some(7));
        assert_eq!(e[1].epfd.as_ref().map(|x| x.tfd[0].data), Some(42));
        assert_eq!(e[2].tfd.as_ref().map(|x| x.isec), Some(1));
        assert_eq!(
            e[3].sgfd.as_ref().map(|x| x.sigmask),
            Some(1u64 << (libc::SIGUSR1 - 1))
        );
        assert_eq!(
            e[4].ify.as_ref().map(|x| x.wd[0].mask),
            Some(libc::IN_CREATE)
        );
        // Every kind name is a type of fdinfo entries.
        for fd in [efd.as_fd().as_raw_fd(), ino.as_fd().as_raw_fd()] {
            assert_ne!(fdinfo_entry(&files.fd(me, fd).unwrap()).r#type, 0);
        }
    }

    #[test]
    fn own_fds_and_ghost() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.dat");
        std::fs::write(&p, vec![5u8; 5000]).unwrap();
        let f = File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        use std::os::fd::AsRawFd;
        let me = std::process::id() as i32;
        let mut files = Files::new();
        let e = files.fd(me, f.as_raw_fd()).unwrap();
        assert_eq!(e.kind, "REG");
        assert!(e.cloexec);
        assert_eq!(files.ghosts.len(), 1);
        assert_eq!(files.remaps[0].orig_id, e.id);
        let chunks = data_chunks(&files.ghosts[0].path, files.ghosts[0].size).unwrap();
        assert_eq!(chunks.iter().map(|c| c.1.len()).sum::<usize>(), 5000);
        // The same open file seen twice keeps one id.
        assert_eq!(files.fd(me, f.as_raw_fd()).unwrap().id, e.id);
        assert_eq!(files.entries.len(), 1);
    }
}
