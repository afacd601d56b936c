//! The lazy-pages daemon (`stasis lazy-pages`): the page sink of a post-copy restore. Its
//! sink is each restored task's userfaultfd; its source a [`LazySource`] (the images, or the
//! dump's page server).
//!
//! ```text
//!  listen WORKDIR/lazy-pages.socket ─► accept the restore's connection
//!  one handle per task of pstree.img (i32 pid [+ uffd]; -pid: zombie)
//!  loop (poll: every uffd, the restore's socket)
//!    Fault addr   lazy, not yet copied: get up to 16 pages from the source, UFFDIO_COPY
//!                 else: UFFDIO_ZEROPAGE (a page the dump had not: it never existed)
//!    Remap/Remove/Fork   moved / dropped / copied lazy ranges (CRIU's handling)
//!    u32 "RSTF"   the tree runs: background transfer, 1 MiB at a time, task after task
//!  every lazy range copied (or its task gone) ─► source.finish() (PS_IOV_CLOSE) ─► exit 0
//! ```
//! Failure: the restore's socket closing before "RSTF" ends the daemon with an error (the
//! restore failed and killed its tasks). A source that fails (the page server is gone or
//! answers wrongly; a read error of the images) leaves pages that can never come: the daemon
//! kills every restored task it knows (SIGKILL; children forked after the restore are not
//! known by pid) and exits with an error naming the source's failure.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::error::{PagesError, Result};
use super::lazy_source::{read_pagemap, LazySource};
use super::{PAGE_SIZE, PE_LAZY};
use crate::sys::uffd::{self, Event, Uffd};

/// The daemon's socket name (CRIU's).
pub const SOCKET_NAME: &str = "lazy-pages.socket";
/// "The tree runs" (CRIU's `LAZY_PAGES_RESTORE_FINISHED`).
const RESTORE_FINISHED: u32 = 0x5253_5446;
/// Pages fetched for one fault.
const FAULT_PAGES: u64 = 16;
/// Pages fetched per background step.
const BACKGROUND_PAGES: u64 = 256;

/// Whether the pages of VMA `v` may be restored lazily (CRIU's `vma_entry_can_be_lazy`):
/// private anonymous, not locked, not hugetlb, not vdso/vvar/vsyscall. The dump marks exactly
/// these `PE_LAZY`-only with `--lazy-pages`; the restore registers exactly these.
pub fn can_be_lazy(v: &stasis_images::pb::VmaEntry) -> bool {
    // CRIU's VMA_AREA_VSYSCALL, VMA_AREA_VDSO, VMA_ANON_PRIVATE, VMA_AREA_VVAR.
    const VSYSCALL: u32 = 1 << 2;
    const VDSO: u32 = 1 << 3;
    const ANON_PRIVATE: u32 = 1 << 9;
    const VVAR: u32 = 1 << 12;
    let f = v.flags as i32;
    f & libc::MAP_ANONYMOUS != 0
        && f & libc::MAP_PRIVATE != 0
        && f & (libc::MAP_LOCKED | libc::MAP_HUGETLB) == 0
        && v.status & ANON_PRIVATE != 0
        && v.status & (VDSO | VVAR | VSYSCALL) == 0
}

/// Binds the daemon's socket in `dir` (a stale socket file is replaced, as CRIU does).
pub fn listen(dir: &Path) -> Result<UnixListener> {
    let p = dir.join(SOCKET_NAME);
    let _ = std::fs::remove_file(&p);
    UnixListener::bind(&p).map_err(|e| PagesError::io("bind", &p, e))
}

/// A lazy range: image address `img` of the task is at `[start, end)` now.
#[derive(Debug, Clone, Copy)]
struct Range {
    end: u64,
    img: u64,
}

/// The lazy ranges of one address space, by start.
#[derive(Debug, Clone, Default)]
struct Ranges(BTreeMap<u64, Range>);

impl Ranges {
    /// The range holding `addr`: (start, range).
    fn find(&self, addr: u64) -> Option<(u64, Range)> {
        self.0
            .range(..=addr)
            .next_back()
            .filter(|(_, r)| r.end > addr)
            .map(|(&s, &r)| (s, r))
    }

    /// Takes `[start, end)` out; returns the pieces taken (start, range).
    fn take(&mut self, start: u64, end: u64) -> Vec<(u64, Range)> {
        let mut hit: Vec<u64> = self
            .0
            .range(..end)
            .rev()
            .take_while(|(_, r)| r.end > start)
            .map(|(&s, _)| s)
            .collect();
        // Also a range starting before `start` that covers it (found by the reverse walk
        // only if it is the last one below `end`).
        if let Some((s, _)) = self.find(start) {
            if !hit.contains(&s) {
                hit.push(s);
            }
        }
        let mut taken = Vec::new();
        for s in hit {
            let Some(r) = self.0.remove(&s) else { continue };
            if s < start {
                self.0.insert(
                    s,
                    Range {
                        end: start,
                        img: r.img,
                    },
                );
            }
            if r.end > end {
                self.0.insert(
                    end,
                    Range {
                        end: r.end,
                        img: r.img + (end - s),
                    },
                );
            }
            let (a, b) = (s.max(start), r.end.min(end));
            if a < b {
                taken.push((
                    a,
                    Range {
                        end: b,
                        img: r.img + (a - s),
                    },
                ));
            }
        }
        taken
    }

    fn pages(&self) -> u64 {
        self.0.iter().map(|(s, r)| (r.end - s) / PAGE_SIZE).sum()
    }
}

/// One restored address space.
struct Task {
    /// The dumped task whose pages these are (a forked child: its parent's).
    pid: i32,
    uffd: Uffd,
    ranges: Ranges,
    gone: bool,
    queue: VecDeque<Event>,
}

/// What the daemon did.
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonReport {
    pub tasks: u64,
    pub faults: u64,
    pub zero_faults: u64,
    pub pages_on_fault: u64,
    pub pages_background: u64,
}

/// The lazy ranges of task `pid`: its `PE_LAZY` pagemap entries cut at VMA ends (a copy
/// never spans two VMAs).
fn lazy_ranges(dir: &Path, pid: i32) -> Result<Ranges> {
    let pm = read_pagemap(dir, pid)?;
    let mm_path = dir.join(format!("mm-{pid}.img"));
    let mm: stasis_images::pb::MmEntry = stasis_images::framing::read_single(&mm_path)
        .map_err(|e| PagesError::image(&mm_path, e))?;
    let mut ends: Vec<u64> = mm.vmas.iter().map(|v| v.end).collect();
    ends.sort_unstable();
    let mut out = Ranges::default();
    for r in pm.runs.iter().filter(|r| r.flags & PE_LAZY != 0) {
        let mut s = r.vaddr;
        while s < r.end() {
            let i = ends.partition_point(|&e| e <= s);
            let e = ends.get(i).copied().unwrap_or(u64::MAX).min(r.end());
            out.0.insert(s, Range { end: e, img: s });
            s = e;
        }
    }
    Ok(out)
}

/// The number of tasks of the images (`pstree.img` entries).
fn nr_tasks(dir: &Path) -> Result<usize> {
    let p = dir.join("pstree.img");
    let v: Vec<stasis_images::pb::PstreeEntry> =
        stasis_images::framing::read_entries(&p).map_err(|e| PagesError::image(&p, e))?;
    Ok(v.len())
}

fn errno_err(what: &str, e: Errno) -> PagesError {
    PagesError::io_errno(what, e)
}

/// The daemon: serves the restore that connects to `listener`, with the images in
/// `images_dir` and pages from `source`.
pub fn run(
    listener: UnixListener,
    images_dir: &Path,
    source: &mut dyn LazySource,
) -> Result<DaemonReport> {
    let n = nr_tasks(images_dir)?;
    let (conn, _) = listener
        .accept()
        .map_err(|e| PagesError::io("accept", images_dir.join(SOCKET_NAME), e))?;
    drop(listener);
    let _ = std::fs::remove_file(images_dir.join(SOCKET_NAME));
    let conn = OwnedFd::from(conn);
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (pid, h) = uffd::recv_handle(conn.as_fd())
            .map_err(|e| errno_err("receive a task's userfaultfd", e))?;
        let Some(u) = h else { continue };
        let ranges = lazy_ranges(images_dir, pid)?;
        tracing::info!(pid, pages = ranges.pages(), "lazy pages: task handed over");
        tasks.push(Task {
            pid,
            uffd: u,
            ranges,
            gone: false,
            queue: VecDeque::new(),
        });
    }
    let mut d = Daemon {
        tasks,
        conn: Some(conn),
        finished: false,
        report: DaemonReport::default(),
        buf: vec![0u8; (BACKGROUND_PAGES * PAGE_SIZE) as usize],
        next_bg: 0,
    };
    d.report.tasks = d.tasks.len() as u64;
    let r = d.serve(source);
    match r {
        Ok(()) => {
            source.finish()?;
            Ok(d.report)
        }
        Err(e) => {
            if matches!(e, Failure::Source(_)) {
                d.kill_all();
            }
            Err(e.into_error())
        }
    }
}

/// Why the loop stopped.
enum Failure {
    /// The page source failed: pages will never come.
    Source(PagesError),
    /// Anything else (the restore, a userfaultfd).
    Other(PagesError),
}

impl Failure {
    fn into_error(self) -> PagesError {
        match self {
            Failure::Source(e) => PagesError::Usage(format!(
                "lazy pages: the page source failed ({e}): the restored tasks were killed, \
                 their missing pages can never arrive"
            )),
            Failure::Other(e) => e,
        }
    }
}

struct Daemon {
    tasks: Vec<Task>,
    conn: Option<OwnedFd>,
    finished: bool,
    report: DaemonReport,
    buf: Vec<u8>,
    next_bg: usize,
}

impl Daemon {
    fn kill_all(&self) {
        let mut pids: Vec<i32> = self.tasks.iter().map(|t| t.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        for p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        tracing::error!("lazy pages: killed the restored tasks {pids:?}");
    }

    fn done(&self) -> bool {
        self.finished && self.tasks.iter().all(|t| t.gone || t.ranges.0.is_empty())
    }

    fn serve(&mut self, source: &mut dyn LazySource) -> std::result::Result<(), Failure> {
        while !self.done() {
            let background = self.finished;
            let ready = self.wait(if background { 0 } else { 1000 })?;
            for i in ready {
                self.read_events(i)?;
            }
            for i in 0..self.tasks.len() {
                self.drain(i, source)?;
            }
            if background {
                self.background(source)?;
            }
        }
        Ok(())
    }

    /// Polls; returns the tasks with events. Handles the restore's socket.
    fn wait(&mut self, ms: u16) -> std::result::Result<Vec<usize>, Failure> {
        let mut idx = Vec::new();
        let mut fds = Vec::new();
        for (i, t) in self.tasks.iter().enumerate().filter(|(_, t)| !t.gone) {
            idx.push(i);
            fds.push(PollFd::new(t.uffd.as_fd(), PollFlags::POLLIN));
        }
        let conn_at = fds.len();
        if let Some(c) = &self.conn {
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Failure::Other(errno_err("poll", e))),
        }
        let revents: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        let conn_ev = revents.get(conn_at).copied().unwrap_or(PollFlags::empty());
        let mut ready = Vec::new();
        for (k, &i) in idx.iter().enumerate() {
            let e = revents[k];
            if e.contains(PollFlags::POLLIN) {
                ready.push(i);
            } else if e.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
                self.tasks[i].gone = true;
            }
        }
        if self.conn.is_some() && conn_ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            self.restore_message()?;
        }
        Ok(ready)
    }

    fn restore_message(&mut self) -> std::result::Result<(), Failure> {
        let Some(c) = &self.conn else { return Ok(()) };
        let mut b = [0u8; 4];
        let n = crate::sys::socket::recv(c, &mut b, libc::MSG_WAITALL).unwrap_or(0);
        if n == 4 && u32::from_ne_bytes(b) == RESTORE_FINISHED {
            tracing::info!("lazy pages: the tree runs; transferring the rest in the background");
            self.finished = true;
            return Ok(());
        }
        self.conn = None;
        if self.finished {
            return Ok(());
        }
        Err(Failure::Other(PagesError::Usage(format!(
            "lazy pages: the restore closed its connection before the tree ran ({}): it \
             failed",
            if n == 0 {
                "end of file".to_string()
            } else {
                format!("{n} bytes {b:02x?}")
            }
        ))))
    }

    /// Reads every pending event of task `i` into its queue.
    fn read_events(&mut self, i: usize) -> std::result::Result<(), Failure> {
        loop {
            let t = &mut self.tasks[i];
            match t.uffd.read_event() {
                Ok(Some(e)) => t.queue.push_back(e),
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::info!(pid = t.pid, "lazy pages: userfaultfd read: {e}: task gone");
                    t.gone = true;
                    return Ok(());
                }
            }
        }
    }

    /// Handles the queued events of task `i`.
    fn drain(&mut self, i: usize, source: &mut dyn LazySource) -> std::result::Result<(), Failure> {
        while let Some(e) = self.tasks[i].queue.pop_front() {
            match e {
                Event::Fault { addr } => self.fault(i, addr, source)?,
                Event::Remap { from, to, len } => {
                    let t = &mut self.tasks[i];
                    for (s, r) in t.ranges.take(from, from + len) {
                        t.ranges.0.insert(
                            s - from + to,
                            Range {
                                end: r.end - from + to,
                                img: r.img,
                            },
                        );
                    }
                }
                Event::Remove { start, end } => {
                    self.tasks[i].ranges.take(start, end);
                }
                Event::Fork { child } => {
                    let parent = &self.tasks[i];
                    let t = Task {
                        pid: parent.pid,
                        uffd: child,
                        ranges: parent.ranges.clone(),
                        gone: false,
                        queue: VecDeque::new(),
                    };
                    self.tasks.push(t);
                }
            }
        }
        Ok(())
    }

    /// Copies up to `max` pages of task `i` from `addr` (inside a lazy range) from `source`;
    /// returns the pages put in place (0: the task or range is gone).
    fn fill(
        &mut self,
        i: usize,
        addr: u64,
        max: u64,
        source: &mut dyn LazySource,
    ) -> std::result::Result<u64, Failure> {
        let Some((s, r)) = self.tasks[i].ranges.find(addr) else {
            return Ok(0);
        };
        let nr = ((r.end - addr) / PAGE_SIZE).min(max).max(1);
        let img = r.img + (addr - s);
        let pid = self.tasks[i].pid;
        let got = source
            .get(pid, img, &mut self.buf[..(nr * PAGE_SIZE) as usize])
            .map_err(Failure::Source)?;
        let len = got * PAGE_SIZE;
        loop {
            match self.tasks[i].uffd.copy(addr, &self.buf[..len as usize]) {
                Ok(()) => break,
                // An event (remap, unmap, fork) is pending: handle it, then look again.
                Err(Errno::EAGAIN) => {
                    self.read_events(i)?;
                    let faults: Vec<Event> = {
                        let q = &mut self.tasks[i].queue;
                        let (f, other): (Vec<Event>, Vec<Event>) =
                            q.drain(..).partition(|e| matches!(e, Event::Fault { .. }));
                        q.extend(other);
                        f
                    };
                    self.drain(i, source)?;
                    self.tasks[i].queue.extend(faults);
                    if self.tasks[i]
                        .ranges
                        .find(addr)
                        .map(|x| x.1.img + (addr - x.0))
                        != Some(img)
                    {
                        return Ok(0);
                    }
                }
                Err(Errno::ESRCH) => {
                    self.tasks[i].gone = true;
                    return Ok(0);
                }
                Err(Errno::ENOENT) => {
                    // Not registered (any more): nothing to fill there.
                    self.tasks[i].ranges.take(addr, addr + len);
                    return Ok(0);
                }
                Err(e) => return Err(Failure::Other(errno_err("lazy pages: UFFDIO_COPY", e))),
            }
        }
        self.tasks[i].ranges.take(addr, addr + len);
        Ok(got)
    }

    fn fault(
        &mut self,
        i: usize,
        addr: u64,
        source: &mut dyn LazySource,
    ) -> std::result::Result<(), Failure> {
        self.report.faults += 1;
        if self.tasks[i].ranges.find(addr).is_some() {
            let n = self.fill(i, addr, FAULT_PAGES, source)?;
            self.report.pages_on_fault += n;
            return Ok(());
        }
        self.report.zero_faults += 1;
        match self.tasks[i].uffd.zero(addr, PAGE_SIZE) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::ESRCH) => {
                self.tasks[i].gone = true;
                Ok(())
            }
            Err(Errno::EAGAIN) => {
                // An event first; the fault comes back with it handled.
                self.read_events(i)?;
                self.tasks[i].queue.push_back(Event::Fault { addr });
                Ok(())
            }
            Err(e) => Err(Failure::Other(errno_err("lazy pages: UFFDIO_ZEROPAGE", e))),
        }
    }

    /// One background step: the first remaining range of the next task.
    fn background(&mut self, source: &mut dyn LazySource) -> std::result::Result<(), Failure> {
        let n = self.tasks.len();
        for k in 0..n {
            let i = (self.next_bg + k) % n;
            let t = &self.tasks[i];
            if t.gone {
                continue;
            }
            let Some((&s, _)) = t.ranges.0.iter().next() else {
                continue;
            };
            self.next_bg = i + 1;
            let got = self.fill(i, s, BACKGROUND_PAGES, source)?;
            self.report.pages_background += got;
            return Ok(());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(v: &[(u64, u64)]) -> Ranges {
        let mut r = Ranges::default();
        for &(s, e) in v {
            r.0.insert(s, Range { end: e, img: s });
        }
        r
    }

    #[test]
    fn take_splits_and_keeps_image_addresses() {
        let mut r = ranges(&[(0x1000, 0x5000), (0x8000, 0x9000)]);
        let t = r.take(0x2000, 0x3000);
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].0, t[0].1.end, t[0].1.img), (0x2000, 0x3000, 0x2000));
        assert_eq!(r.pages(), 4);
        assert!(r.find(0x2000).is_none());
        let (s, x) = r.find(0x4000).unwrap();
        assert_eq!((s, x.end, x.img), (0x3000, 0x5000, 0x3000));
        // Across two ranges.
        let t = r.take(0x4000, 0x8800);
        assert_eq!(t.len(), 2);
        assert_eq!(r.pages(), 1 + 1);
        assert!(r.find(0x8800).is_some() && r.find(0x8000).is_none());
    }

    #[test]
    fn remap_moves_ranges() {
        let mut r = ranges(&[(0x10000, 0x14000)]);
        for (s, x) in r.take(0x10000, 0x14000) {
            r.0.insert(
                s - 0x10000 + 0x50000,
                Range {
                    end: x.end - 0x10000 + 0x50000,
                    img: x.img,
                },
            );
        }
        let (s, x) = r.find(0x51000).unwrap();
        assert_eq!((s, x.end, x.img), (0x50000, 0x54000, 0x10000));
    }
}
