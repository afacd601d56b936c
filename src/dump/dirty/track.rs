//! One tracked process, as the tracker holds it: the handle that keeps its write-protection
//! armed (a userfaultfd) or the soft-dirty bits, and the VMA ranges armed last time.
//!
//! ```text
//!  collect(vmas, parent generation)
//!                  identity check (start time, code/stack addresses: a reused pid or an exec
//!                  is a new process: every VMA dirty, the state dropped)
//!   uffd           per VMA: UFFDIO_REGISTER (WP; EBUSY: the application's own userfaultfd
//!                  has it -> dirty), PAGEMAP_SCAN WRITTEN + WP_MATCHING + CHECK_WPASYNC
//!                  (reads and re-arms in one walk); armed before -> the written ranges,
//!                  else (new, moved, grown VMA) -> dirty
//!   soft-dirty     per VMA: pagemap bit 55; then clear_refs 4 (the tree is frozen)
//! ```
//! Whatever cannot be read is [`Dirt::All`]: a wrong answer may cost pages, never leave a
//! stale one.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use super::{Dirt, Method};
use crate::proc::pagemap::{PagemapReader, PAGE_SIZE, PM_SOFT_DIRTY};
use crate::sys::dirty as kd;

/// What identifies a process over time: its start time (a reused pid has another) and the
/// addresses exec sets (another program, or the same one re-executed with ASLR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub start_ticks: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
}

impl Identity {
    /// Reads it from `/proc/PID/stat` (fields 22, 26, 27, 28).
    pub fn read(pid: i32) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "short stat");
        let rest = &text[text.rfind(')').ok_or_else(bad)? + 1..];
        // rest starts at field 3 (state).
        let f: Vec<&str> = rest.split_whitespace().collect();
        let at = |n: usize| -> std::io::Result<u64> {
            f.get(n - 3).and_then(|s| s.parse().ok()).ok_or_else(bad)
        };
        Ok(Identity {
            start_ticks: at(22)?,
            start_code: at(26)?,
            end_code: at(27)?,
            start_stack: at(28)?,
        })
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!([
            self.start_ticks,
            self.start_code,
            self.end_code,
            self.start_stack
        ])
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Self> {
        let a = v.as_array()?;
        let n = |i: usize| a.get(i).and_then(|x| x.as_u64());
        Some(Identity {
            start_ticks: n(0)?,
            start_code: n(1)?,
            end_code: n(2)?,
            start_stack: n(3)?,
        })
    }
}

/// The handle that keeps a process's tracking alive.
#[derive(Debug)]
pub enum Handle {
    /// A userfaultfd of the process's mm, write-protect async.
    Uffd(OwnedFd),
    /// Soft-dirty bits (nothing to hold).
    SoftDirty,
}

impl Handle {
    pub fn method(&self) -> Method {
        match self {
            Handle::Uffd(_) => Method::UffdWp,
            Handle::SoftDirty => Method::SoftDirty,
        }
    }
}

/// One tracked process.
///
/// A collect re-arms the pages it reads (one PAGEMAP_SCAN walk), which cannot be undone: if
/// the dump that asked then fails, those pages were never saved. So what is written since
/// the last **committed** dump accumulates until the dumper commits (after its images are
/// written), and an answer is only given relative to that commit: a dump whose parent is not
/// the last committed one (a retry after a failure is fine, a skipped or older parent is not)
/// gets "all dirty".
#[derive(Debug)]
pub struct Tracked {
    pub pid: i32,
    pub id: Identity,
    pub handle: Handle,
    /// VMA ranges armed by the last collect (sorted).
    armed: Vec<(u64, u64)>,
    /// Written ranges (sorted, merged) read since the last commit.
    since: Vec<(u64, u64)>,
    /// The last commit: its generation and the ranges armed then.
    committed: Option<(u64, Vec<(u64, u64)>)>,
}

/// `[s, e)` lies inside the union of `ranges` (sorted; adjacent ranges join).
fn covered(ranges: &[(u64, u64)], s: u64, e: u64) -> bool {
    let mut at = s;
    let i = ranges.partition_point(|r| r.1 <= s);
    for &(rs, re) in &ranges[i..] {
        if rs > at {
            return false;
        }
        at = at.max(re);
        if at >= e {
            return true;
        }
    }
    at >= e
}

/// The union of two lists of ranges, sorted and merged.
fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    super::merge_ranges(a.iter().chain(b).copied().collect())
}

/// The parts of `ranges` (sorted) inside `[s, e)`.
fn clip(ranges: &[(u64, u64)], s: u64, e: u64) -> Vec<(u64, u64)> {
    let i = ranges.partition_point(|r| r.1 <= s);
    ranges[i..]
        .iter()
        .take_while(|r| r.0 < e)
        .map(|r| (r.0.max(s), r.1.min(e)))
        .collect()
}

impl Tracked {
    /// Takes over `handle` (a fresh userfaultfd gets its API handshake here).
    pub fn new(pid: i32, id: Identity, handle: Handle) -> Result<Self, nix::errno::Errno> {
        if let Handle::Uffd(fd) = &handle {
            kd::api(fd.as_fd())?;
        }
        Ok(Tracked {
            pid,
            id,
            handle,
            armed: Vec::new(),
            since: Vec::new(),
            committed: None,
        })
    }

    /// What was written in each of `vmas` (start, end) since the commit `parent` (the
    /// generation of the dump the caller uses as parent; `None`: no parent), and arms them
    /// again. `None`: this is not the process tracked (identity changed).
    pub fn collect(&mut self, vmas: &[(u64, u64)], parent: Option<u64>) -> Option<Vec<Dirt>> {
        match Identity::read(self.pid) {
            Ok(id) if id == self.id => {}
            _ => return None,
        }
        let (raw, armed) = match &self.handle {
            Handle::Uffd(fd) => self.scan_uffd(fd.as_fd(), vmas),
            Handle::SoftDirty => self.scan_soft_dirty(vmas),
        };
        self.armed = armed;
        let written: Vec<(u64, u64)> = raw.iter().flatten().flatten().copied().collect();
        self.since = union(&self.since, &written);
        let base = match &self.committed {
            Some((generation, armed)) if Some(*generation) == parent => armed,
            _ => return Some(vec![Dirt::All; vmas.len()]),
        };
        Some(
            vmas.iter()
                .zip(raw)
                .map(|(&(s, e), r)| match r {
                    Some(_) if covered(base, s, e) => Dirt::Written(clip(&self.since, s, e)),
                    _ => Dirt::All,
                })
                .collect(),
        )
    }

    /// The dump that collected last succeeded as generation `generation`: later answers are
    /// relative to it.
    pub fn commit(&mut self, generation: u64) {
        self.committed = Some((generation, self.armed.clone()));
        self.since.clear();
    }

    /// Per VMA: the written ranges (`None`: not readable, so all dirty), and the VMAs armed.
    #[allow(clippy::type_complexity)]
    fn scan_uffd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        vmas: &[(u64, u64)],
    ) -> (Vec<Option<Vec<(u64, u64)>>>, Vec<(u64, u64)>) {
        let pm = match File::open(format!("/proc/{}/pagemap", self.pid)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("tracker: pagemap of {}: {e}: all dirty", self.pid);
                return (vec![None; vmas.len()], Vec::new());
            }
        };
        let mut armed = Vec::with_capacity(vmas.len());
        let out = vmas
            .iter()
            .map(|&(s, e)| {
                if let Err(err) = kd::register_wp(fd, s, e - s) {
                    tracing::info!(
                        "tracker: {} {s:#x}-{e:#x} not trackable ({err}): dirty",
                        self.pid
                    );
                    return None;
                }
                match kd::scan_written(pm.as_fd(), s, e, true) {
                    Ok(w) => {
                        armed.push((s, e));
                        Some(w)
                    }
                    Err(err) => {
                        tracing::info!("tracker: scan {} {s:#x}-{e:#x}: {err}: dirty", self.pid);
                        None
                    }
                }
            })
            .collect();
        armed.sort_unstable();
        (out, armed)
    }

    #[allow(clippy::type_complexity)]
    fn scan_soft_dirty(
        &self,
        vmas: &[(u64, u64)],
    ) -> (Vec<Option<Vec<(u64, u64)>>>, Vec<(u64, u64)>) {
        let Ok(pm) = PagemapReader::open(self.pid) else {
            return (vec![None; vmas.len()], Vec::new());
        };
        let out: Vec<Option<Vec<(u64, u64)>>> = vmas
            .iter()
            .map(|&(s, e)| {
                let mut w: Vec<(u64, u64)> = Vec::new();
                let r = pm.for_each(s, e, |addr, ent| {
                    if ent & PM_SOFT_DIRTY != 0 {
                        match w.last_mut() {
                            Some(l) if l.1 == addr => l.1 += PAGE_SIZE,
                            _ => w.push((addr, addr + PAGE_SIZE)),
                        }
                    }
                });
                r.ok().map(|_| w)
            })
            .collect();
        if let Err(e) = kd::clear_soft_dirty(self.pid) {
            tracing::warn!("tracker: clear_refs of {}: {e}", self.pid);
            return (vec![None; vmas.len()], Vec::new());
        }
        let mut armed = vmas.to_vec();
        armed.sort_unstable();
        (out, armed)
    }
}
