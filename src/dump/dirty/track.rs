//! One tracked process, as the tracker holds it: the handle that keeps its write-protection
//! armed (a userfaultfd) or the soft-dirty bits, and the VMA ranges armed last time.
//!
//! ```text
//!  collect(vmas)   identity check (start time, code/stack addresses: a reused pid or an exec
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
#[derive(Debug)]
pub struct Tracked {
    pub pid: i32,
    pub id: Identity,
    pub handle: Handle,
    /// VMA ranges armed by the last collect (sorted).
    armed: Vec<(u64, u64)>,
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
        })
    }

    /// Whether `[s, e)` lies inside the ranges armed last time (adjacent ranges join).
    fn was_armed(&self, s: u64, e: u64) -> bool {
        let mut at = s;
        let i = self.armed.partition_point(|r| r.1 <= s);
        for &(rs, re) in &self.armed[i..] {
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

    /// What was written in each of `vmas` (start, end) since the last collect, and arms them
    /// again. `None`: this is not the process tracked (identity changed).
    pub fn collect(&mut self, vmas: &[(u64, u64)]) -> Option<Vec<Dirt>> {
        match Identity::read(self.pid) {
            Ok(id) if id == self.id => {}
            _ => return None,
        }
        let (out, armed) = match &self.handle {
            Handle::Uffd(fd) => self.collect_uffd(fd.as_fd(), vmas),
            Handle::SoftDirty => self.collect_soft_dirty(vmas),
        };
        // The ranges armed now are those answered next time.
        self.armed = armed;
        Some(out)
    }

    fn collect_uffd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        vmas: &[(u64, u64)],
    ) -> (Vec<Dirt>, Vec<(u64, u64)>) {
        let pm = match File::open(format!("/proc/{}/pagemap", self.pid)) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("tracker: pagemap of {}: {e}: all dirty", self.pid);
                return (vec![Dirt::All; vmas.len()], Vec::new());
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
                    return Dirt::All;
                }
                match kd::scan_written(pm.as_fd(), s, e, true) {
                    Ok(w) => {
                        armed.push((s, e));
                        if self.was_armed(s, e) {
                            Dirt::Written(w)
                        } else {
                            Dirt::All
                        }
                    }
                    Err(err) => {
                        tracing::info!("tracker: scan {} {s:#x}-{e:#x}: {err}: dirty", self.pid);
                        Dirt::All
                    }
                }
            })
            .collect();
        armed.sort_unstable();
        (out, armed)
    }

    fn collect_soft_dirty(&self, vmas: &[(u64, u64)]) -> (Vec<Dirt>, Vec<(u64, u64)>) {
        let pm = match PagemapReader::open(self.pid) {
            Ok(p) => p,
            Err(_) => return (vec![Dirt::All; vmas.len()], Vec::new()),
        };
        let out = vmas
            .iter()
            .map(|&(s, e)| {
                if !self.was_armed(s, e) {
                    return Dirt::All;
                }
                let mut w: Vec<(u64, u64)> = Vec::new();
                let r = pm.for_each(s, e, |addr, ent| {
                    if ent & PM_SOFT_DIRTY != 0 {
                        match w.last_mut() {
                            Some(l) if l.1 == addr => l.1 += PAGE_SIZE,
                            _ => w.push((addr, addr + PAGE_SIZE)),
                        }
                    }
                });
                match r {
                    Ok(()) => Dirt::Written(w),
                    Err(_) => Dirt::All,
                }
            })
            .collect();
        if let Err(e) = kd::clear_soft_dirty(self.pid) {
            tracing::warn!("tracker: clear_refs of {}: {e}", self.pid);
            return (vec![Dirt::All; vmas.len()], Vec::new());
        }
        (out, vmas.to_vec())
    }
}
