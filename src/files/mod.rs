//! File-descriptor kinds beyond regular files and pipes, shared by the dump and restore
//! engines: eventfd, epoll, timerfd, signalfd, inotify, unix sockets, inet/inet6 sockets (TCP
//! listeners, UDP, established TCP with `--tcp-established` via TCP_REPAIR), terminals (pty
//! pairs with their queued data, `/dev/tty`, `--shell-job`, `--external tty[...]`).
//!
//! Each kind is one file with a `dump` and a `restore` function, bound together in the table
//! [`KINDS`] (CRIU's per-fd-type ops). The engines call the generic entry points:
//!
//! ```text
//!  dump engine, per fd of a task (fd obtained with pidfd_getfd / parasite SCM_RIGHTS):
//!    link   = readlink /proc/PID/fd/N        "anon_inode:[eventfd]", "socket:[123]", "/dev/pts/3"
//!    fdinfo = read /proc/PID/fdinfo/N
//!    if let Some(ops) = files::kind_of(link, fd.as_fd()):
//!        entry = files::dump_fd(&DumpFd { pid, fd: N, file, link, fdinfo, id }, &mut state)?
//!        files.img  <- entry                (file_entry {type, id, <kind member>})
//!        fdinfo-*.img <- {id, flags FD_CLOEXEC, type: entry.type, fd: N}
//!    (or all of the above at once: files::task::dump_task_fd(pid, N, next_id, &mut state))
//!  after the last task:  files::finish_dump(&mut state, next_id)?  (unix peers, --ext-unix-sk;
//!                        returns entries to add to / replace in files.img)
//!                        state.extra.write_dir(images_dir)?   (sk-queues, tcp-stream-*, tty-*)
//!  dumped TCP connections stay in TCP_REPAIR: state.close_tcp_in_repair() before killing the
//!  tree (they vanish silently), or drop the state / release_tcp_repair() to let it run on
//!
//!  restore engine:
//!    extra = Extra::read_dir(images_dir, tcp_inos)?;  ctx = RestoreCtx::new(opts, &extra, files.img)
//!    for entry in files.img sorted by files::restore_stage(entry)     (epoll last)
//!        if files::handles(entry):
//!            fd = files::restore_fd(entry, &mut ctx, &|tfd| <restored fd now at tfd in the
//!                                   task owning the epoll>)?      -> OwnedFd in this task
//!    ctx.finish()?          (TCP connections leave repair mode; before the tasks run)
//! ```
//!
//! An epoll item is keyed by the target's file *and fd number* (fdinfo shows it, and the
//! program's later `EPOLL_CTL_MOD`/`DEL` name it): when restoring an epoll, each target
//! should sit at its recorded fd number in the calling task, and `targets` return that number
//! (the restore engine moves the targets there for the call).
//!
//! Descriptors come back with the recorded status flags (`O_NONBLOCK`, ...) and owner;
//! `FD_CLOEXEC` and the final fd number are the engine's business (fdinfo-N.img).
//! Extra images go through [`Extra`]: `sk-queues.img` (unix receive queues, peeked at dump
//! time without consuming), `tcp-stream-<ino>.img` (TCP_REPAIR state and queues), `tty-info.img`,
//! `tty-data.img` (pty queues, read out and written back: `tty_queue`).

pub(crate) mod common;
pub(crate) mod epoll;
pub(crate) mod error;
pub(crate) mod eventfd;
pub mod fanotify;
pub mod inet;
pub(crate) mod inotify;
pub mod pidfd;
pub mod scm;
pub(crate) mod side_images;
pub(crate) mod signalfd;
pub(crate) mod sockopts;
pub mod task;
pub(crate) mod tcp;
pub(crate) mod timerfd;
pub(crate) mod tty;
pub(crate) mod tty_queue;
pub mod unix;

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use stasis_images::pb;

pub use error::{At, FilesError, Result};
pub use side_images::Extra;

/// Dump-time options (the criu flags that change what is allowed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpOptions {
    /// `--tcp-established`: dump established TCP connections via TCP_REPAIR.
    pub tcp_established: bool,
    /// `--ext-unix-sk`: allow unix sockets whose peer is outside the dumped tree.
    pub ext_unix_sk: bool,
    /// `--shell-job`: the tree's terminal is outside (its tty is external).
    pub shell_job: bool,
    /// `--tcp-close`: established connections are recorded without their state (no repair).
    pub tcp_close: bool,
    /// `--skip-in-flight`: connections waiting in a listener's accept queue are not refused.
    pub skip_in_flight: bool,
}

/// Restore-time options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    /// `--tcp-close`: established connections are restored closed.
    pub tcp_close: bool,
}

/// One fd to dump. `file` is the task's descriptor, duplicated into the dumper.
#[derive(Debug, Clone, Copy)]
pub struct DumpFd<'a> {
    pub pid: i32,
    pub fd: i32,
    pub file: BorrowedFd<'a>,
    /// `readlink /proc/PID/fd/FD`.
    pub link: &'a str,
    /// The text of `/proc/PID/fdinfo/FD`.
    pub fdinfo: &'a str,
    /// The files.img id the engine gives this open file description.
    pub id: u32,
}

impl DumpFd<'_> {
    /// Where errors happened.
    pub fn at(&self) -> At {
        At::Fd {
            pid: self.pid,
            fd: self.fd,
        }
    }
}

/// A unix socket seen during the dump (for the peer check of [`finish_dump`]).
#[derive(Debug, Clone)]
pub(crate) struct UnixSeen {
    pub id: u32,
    pub ino: u32,
    pub peer: u32,
    pub pid: i32,
    pub fd: i32,
    /// A listener's connections not accepted yet (their server-side inodes).
    pub icons: Vec<u32>,
}

/// Everything collected across all fds of a dump.
#[derive(Debug, Default)]
pub struct DumpState {
    pub opts: DumpOptions,
    /// Side images to write once the dump is done.
    pub extra: Extra,
    pub(crate) unix: Vec<UnixSeen>,
    /// Unix entries whose `uflags` [`finish_dump`] may still change, by id.
    pub(crate) unix_entries: HashMap<u32, pb::UnixSkEntry>,
    /// Dumped TCP connections, held in repair mode (see [`tcp`]).
    pub(crate) tcp_repair: tcp::RepairHold,
    /// Terminals seen (queued data and path entries are done at the end: [`tty::finish`]).
    pub(crate) tty: tty::Seen,
    /// `--external tty[RDEV:DEV]`: terminals outside the dump, as (rdev, dev).
    pub ext_ttys: Vec<(u32, u32)>,
    /// Pids of the dumped tree (a pidfd of another task is refused).
    pub tree_pids: std::collections::HashSet<i32>,
    /// Descriptors in flight found in unix queues, to be dumped as files ([`scm`]).
    pub(crate) in_flight: Vec<scm::InFlight>,
}

impl DumpState {
    pub fn new(opts: DumpOptions) -> Self {
        DumpState {
            opts,
            ..Default::default()
        }
    }
}

/// State of a restore across entries (socketpair ends waiting for their entry, pty masters).
pub struct RestoreCtx<'a> {
    pub opts: RestoreOptions,
    pub extra: &'a Extra,
    /// The other end of a socketpair, by the inode its entry carries.
    pub(crate) pending: HashMap<u32, OwnedFd>,
    /// Pty masters by tty index (slaves are opened through them).
    pub(crate) pty_masters: HashMap<u32, OwnedFd>,
    /// Pty indexes whose queued data is back (the first slave of a pair writes it).
    pub(crate) pty_refilled: std::collections::HashSet<u32>,
    /// Pty indexes whose master was locked (locked again once every slave is open).
    pub(crate) pty_relock: Vec<u32>,
    /// Unix entries by socket inode, and their files.img ids (peers look each other up).
    pub(crate) unix: HashMap<u32, pb::UnixSkEntry>,
    pub(crate) unix_ids: HashMap<u32, u32>,
    /// Restored TCP connections still in repair mode: (id, socket, unsent data).
    pub(crate) tcp_pending: Vec<(u32, OwnedFd, Vec<u8>)>,
    /// Restored files by the (kernel device, inode) they had at dump time: unlinked files
    /// (ghosts) that a file handle cannot find any more (an inotify watch falls back to them).
    pub inodes: HashMap<(u32, u64), RawFd>,
    /// Names of unlinked unix sockets and the directories made for them, removed (last
    /// first) when the context goes.
    pub(crate) remove_later: Vec<std::path::PathBuf>,
    /// Queues that pass descriptors, written once every file is open ([`scm`]).
    pub(crate) scm_fills: Vec<(At, OwnedFd, Vec<scm::Packet>)>,
    /// The restore's `--root` (`/` by default): image paths (an inotify watch's path when
    /// its file handle finds nothing) resolve under it.
    pub root: std::path::PathBuf,
}

impl Drop for RestoreCtx<'_> {
    fn drop(&mut self) {
        for p in self.remove_later.drain(..).rev() {
            let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir(&p));
        }
    }
}

impl<'a> RestoreCtx<'a> {
    /// A context for restoring the entries of one files.img (all of them: sockets find
    /// their peers among them).
    pub fn new<'f>(
        opts: RestoreOptions,
        extra: &'a Extra,
        files: impl IntoIterator<Item = &'f pb::FileEntry>,
    ) -> Self {
        let mut unix = HashMap::new();
        let mut unix_ids = HashMap::new();
        for f in files {
            if let Some(u) = &f.usk {
                unix_ids.insert(u.ino, f.id);
                unix.insert(u.ino, u.clone());
            }
        }
        RestoreCtx {
            opts,
            extra,
            pending: HashMap::new(),
            pty_masters: HashMap::new(),
            pty_refilled: Default::default(),
            pty_relock: Vec::new(),
            unix,
            unix_ids,
            tcp_pending: Vec::new(),
            inodes: HashMap::new(),
            remove_later: Vec::new(),
            scm_fills: Vec::new(),
            root: std::path::PathBuf::from("/"),
        }
    }

    /// Ends the restore of the files: established TCP connections leave repair mode (all
    /// together, once both ends of local connections exist) and send their unsent data;
    /// pty masters that were locked are locked again (every slave is open).
    /// Call after the last [`restore_fd`] and before the tasks run.
    pub fn finish(&mut self) -> Result<()> {
        for index in std::mem::take(&mut self.pty_relock) {
            if let Some(m) = self.pty_masters.get(&index) {
                crate::sys::tty::set_int(m, crate::sys::tty::TIOCSPTLCK, 1).map_err(error::sys(
                    "tty",
                    At::Id(index),
                    "TIOCSPTLCK",
                ))?;
            }
        }
        tcp::finish(std::mem::take(&mut self.tcp_pending))
    }

    /// Unix socket inodes whose pair end was created but not yet asked for.
    pub fn unclaimed(&self) -> Vec<u32> {
        self.pending.keys().copied().collect()
    }
}

/// Looks up the restored descriptor now standing at fd number `tfd` of the task that owns
/// an epoll (epoll targets are recorded by fd number).
pub type Targets<'t> = &'t dyn Fn(u32) -> Option<RawFd>;

/// One kind: how to recognise it, dump it and restore it.
pub struct KindOps {
    pub name: &'static str,
    pub fd_type: pb::FdTypes,
    /// Whether an fd with this `/proc/PID/fd` link (and descriptor) is of this kind.
    pub matches: fn(&str, BorrowedFd<'_>) -> bool,
    pub dump: fn(&DumpFd<'_>, &mut DumpState) -> Result<pb::FileEntry>,
    pub restore: fn(&pb::FileEntry, &mut RestoreCtx<'_>, Targets<'_>) -> Result<OwnedFd>,
    /// Restore order of an entry: 0 first; epolls (which need their targets) last.
    pub stage: fn(&pb::FileEntry) -> u8,
}

/// The kinds this module handles.
pub static KINDS: &[KindOps] = &[
    eventfd::OPS,
    timerfd::OPS,
    signalfd::OPS,
    inotify::OPS,
    fanotify::OPS,
    unix::OPS,
    inet::OPS,
    tty::OPS,
    pidfd::OPS,
    epoll::OPS,
];

/// The kind of an fd, from its `/proc/PID/fd/N` link; `None` for kinds the engines handle
/// themselves (regular files, pipes, memfd, directories) or nobody handles.
pub fn kind_of(link: &str, file: BorrowedFd<'_>) -> Option<&'static KindOps> {
    KINDS.iter().find(|k| (k.matches)(link, file))
}

/// The kind that restores a files.img entry.
pub fn kind_for(entry: &pb::FileEntry) -> Option<&'static KindOps> {
    KINDS.iter().find(|k| k.fd_type as i32 == entry.r#type)
}

/// Whether [`restore_fd`] restores this entry (a pidfd of a task of the tree is opened by
/// its task instead: [`pidfd::in_task`]).
pub fn handles(entry: &pb::FileEntry) -> bool {
    kind_for(entry).is_some() && pidfd::in_task(entry).is_none()
}

/// Restore order of an entry (sort ascending; entries of other kinds are 0).
pub fn restore_stage(entry: &pb::FileEntry) -> u8 {
    kind_for(entry).map_or(0, |k| (k.stage)(entry))
}

/// Dumps one fd into its files.img entry (and side images into `st.extra`).
pub fn dump_fd(d: &DumpFd<'_>, st: &mut DumpState) -> Result<pb::FileEntry> {
    let k = kind_of(d.link, d.file).ok_or_else(|| {
        error::unsupported("file", d.at(), format!("no fd kind for {:?}", d.link))
    })?;
    (k.dump)(d, st)
}

/// Checks what needs the whole tree: every unix socket's peer is in the dump, or
/// `--ext-unix-sk` marks it external. Returns files.img entries to add (external named peers,
/// with ids from `next_id`; no fd refers to them) or to replace (same id, now USK_EXTERN).
/// Terminals: the data queued in pty pairs, and the path entries of every TTY entry
/// (added, and the TTY entries replaced with their `regf_id`).
pub fn finish_dump(
    st: &mut DumpState,
    next_id: &mut dyn FnMut() -> u32,
) -> Result<Vec<pb::FileEntry>> {
    let mut out = unix::finish(st, next_id)?;
    out.extend(tty::finish(st, next_id)?);
    Ok(out)
}

/// Restores one files.img entry as a new descriptor of the calling task.
pub fn restore_fd(
    entry: &pb::FileEntry,
    ctx: &mut RestoreCtx<'_>,
    targets: Targets<'_>,
) -> Result<OwnedFd> {
    let k = kind_for(entry).ok_or_else(|| {
        error::unsupported(
            "file",
            At::Id(entry.id),
            format!("file type {} is not an fd kind of ours", entry.r#type),
        )
    })?;
    (k.restore)(entry, ctx, targets)
}

/// A files.img entry with just the kind's member set.
pub(crate) fn file_entry(ty: pb::FdTypes, id: u32) -> pb::FileEntry {
    pb::FileEntry {
        r#type: ty as i32,
        id,
        ..Default::default()
    }
}

/// Stage function of kinds without ordering needs.
pub(crate) fn stage0(_: &pb::FileEntry) -> u8 {
    0
}

/// The `anon_inode:` name of a link (`anon_inode:[eventfd]` → `[eventfd]`).
pub(crate) fn anon(link: &str) -> Option<&str> {
    link.strip_prefix("anon_inode:")
}
