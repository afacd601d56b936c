//! Dirty tracking during one dump command: the tracker connection, the parent directory, and
//! the per-process page-source stage the engine calls while a process is frozen.
//!
//! ```text
//!  open(opts)        parent = DIR/REL (--prev-images-dir); tracker = parent's record, or a
//!                    new one when --track-mem (pre-dump always tracks)
//!  source(acc, pid, vmas, runs) -> runs     frozen: collect (re-arm) or adopt, then
//!                                           since_parent() when there is a parent
//!  finish(dir)       --track-mem: DIR/dirty-tracker.json names the tracker; else stop it
//! ```
//! Any tracker failure makes the process (and the rest of this dump) full: never stale.

use std::path::{Path, PathBuf};

use super::client::TrackerClient;
use super::parent::{since_parent, ParentPages};
use super::track::Identity;
use super::{DirtyMap, Method};
use crate::dump::error::{DumpError, Result};
use crate::dump::mm::{PageClass, VmaOut};
use crate::dump::options::DumpOptions;
use crate::dump::pages::Run;
use crate::dump::probe::ProcessAccess;
use crate::sys::dirty as kd;

/// Page counts of the tracking stage, for the report and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackStats {
    /// Pages left to the parent image (PE_PARENT).
    pub parent_pages: u64,
    /// Processes dumped in full because they were not tracked.
    pub untracked: u64,
}

/// Tracking state of one dump command.
pub struct Session {
    client: Option<TrackerClient>,
    /// Processes collected (committed at the end of a successful dump).
    collected: Vec<i32>,
    parent: Option<PathBuf>,
    track: bool,
    pub stats: TrackStats,
}

impl Session {
    /// No tracking at all (a plain dump).
    pub fn none() -> Self {
        Session {
            client: None,
            collected: Vec::new(),
            parent: None,
            track: false,
            stats: TrackStats::default(),
        }
    }

    /// For a dump (`track`: --track-mem, or a pre-dump).
    pub fn open(opts: &DumpOptions, track: bool) -> Result<Self> {
        let parent = opts
            .prev_images_dir
            .as_ref()
            .map(|rel| opts.images_dir.join(rel))
            .filter(|p| p.is_dir());
        if let (Some(rel), None) = (&opts.prev_images_dir, &parent) {
            return Err(DumpError::new(
                "images",
                opts.pid,
                Some(libc::ENOENT),
                format!(
                    "previous images directory {} (relative to {}) does not exist",
                    rel.display(),
                    opts.images_dir.display()
                ),
            ));
        }
        let mut client = parent.as_deref().and_then(TrackerClient::find);
        if client.is_none() && track {
            let exe = match &opts.tracker_exe {
                Some(p) => p.clone(),
                None => std::env::current_exe()
                    .map_err(|e| DumpError::io("dirty-track", opts.pid, "own executable", e))?,
            };
            match TrackerClient::spawn(&exe) {
                Ok(c) => client = Some(c),
                Err(e) => tracing::warn!("no dirty tracker ({e}): the next dump is full"),
            }
        }
        if let Some(c) = client.as_mut() {
            if parent.is_none() {
                // A new chain: answers relative to no earlier dump.
                c.parent_gen = None;
            }
        }
        Ok(Session {
            client,
            collected: Vec::new(),
            parent,
            track,
            stats: TrackStats::default(),
        })
    }

    /// The page-source stage of process `pid` (frozen, `acc` open): what it wrote since the
    /// parent, its tracking armed again; returns `runs` with the clean pages the parent has
    /// turned into PE_PARENT runs.
    pub fn source(
        &mut self,
        acc: &mut dyn ProcessAccess,
        pid: i32,
        vmas: &[VmaOut],
        runs: Vec<Run>,
    ) -> Result<Vec<Run>> {
        let t = std::time::Instant::now();
        let dirty = self.dirty_map(acc, pid, vmas)?;
        tracing::debug!("process {pid}: tracker answered in {:?}", t.elapsed());
        let Some(parent) = self.parent.as_deref() else {
            return Ok(runs);
        };
        let Some(pp) = ParentPages::read(parent, pid) else {
            return Ok(runs);
        };
        let out = since_parent(&runs, &dirty, &pp);
        self.stats.parent_pages += out
            .iter()
            .filter(|r| r.flags & crate::dump::pages::PE_PARENT != 0)
            .map(|r| r.nr_pages)
            .sum::<u64>();
        Ok(out)
    }

    fn dirty_map(
        &mut self,
        acc: &mut dyn ProcessAccess,
        pid: i32,
        vmas: &[VmaOut],
    ) -> Result<DirtyMap> {
        let Some(client) = self.client.as_mut() else {
            return Ok(DirtyMap::all());
        };
        let ranges: Vec<(u64, u64)> = vmas
            .iter()
            .filter(|v| matches!(v.class, PageClass::AnonPrivate | PageClass::FilePrivate))
            .map(|v| (v.start, v.end))
            .collect();
        let id = Identity::read(pid).map_err(|e| DumpError::io("dirty-track", pid, "stat", e))?;
        let track = self.track;
        let collected = &mut self.collected;
        let answer = (|| -> std::io::Result<Option<DirtyMap>> {
            if let Some(dirt) = client.collect(pid, id, &ranges)? {
                collected.push(pid);
                let map = DirtyMap::new(&ranges, dirt);
                let (w, u) = map.written_pages();
                tracing::info!("process {pid}: {w} pages written since the parent, {u} untracked");
                return Ok(Some(map));
            }
            if track && adopt(client, acc, pid, id)? {
                // Register and arm now (the answer is "all dirty" anyway).
                client.collect(pid, id, &ranges)?;
                collected.push(pid);
            }
            Ok(None)
        })();
        match answer {
            Ok(Some(map)) => Ok(map),
            Ok(None) => {
                self.stats.untracked += 1;
                Ok(DirtyMap::all())
            }
            Err(e) => {
                tracing::warn!("dirty tracker lost ({e}): dumping everything");
                self.client = None;
                self.stats.untracked += 1;
                Ok(DirtyMap::all())
            }
        }
    }

    /// At the end of a successful dump: `--track-mem` records the tracker in `dir` (the next
    /// dump's parent); otherwise the tracker is stopped.
    pub fn finish(self, dir: &Path) {
        let Some(mut c) = self.client else { return };
        if !self.track {
            if let Err(e) = c.stop() {
                tracing::warn!("stop the dirty tracker: {e}");
            }
            return;
        }
        // This dump's generation: the next dump names it as its parent's.
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        let done = c
            .commit(generation, &self.collected)
            .and_then(|_| c.record(dir, generation));
        if let Err(e) = done {
            tracing::warn!("record the dirty tracker in {}: {e}", dir.display());
        }
    }
}

/// Gets a tracking handle for `pid` (a userfaultfd from inside it, else soft-dirty) and hands
/// it to the tracker; `false`: no method works for this process (it stays untracked).
fn adopt(
    client: &mut TrackerClient,
    acc: &mut dyn ProcessAccess,
    pid: i32,
    id: Identity,
) -> std::io::Result<bool> {
    let mut fd = None;
    for flags in [
        kd::UFFD_OPEN_FLAGS,
        kd::UFFD_OPEN_FLAGS | kd::UFFD_USER_MODE_ONLY,
    ] {
        match acc.userfaultfd(flags) {
            Ok(Some(f)) => {
                fd = Some(f);
                break;
            }
            Ok(None) => break,
            Err(e) => tracing::info!("userfaultfd({flags:#x}) in {pid}: {e}"),
        }
    }
    let method = match &fd {
        Some(_) => Method::UffdWp,
        None if super::soft_dirty_works() => Method::SoftDirty,
        None => {
            tracing::warn!("process {pid}: no userfaultfd and no soft-dirty: untracked");
            return Ok(false);
        }
    };
    match client.adopt(pid, id, method, fd) {
        Ok(()) => Ok(true),
        // The tracker refused (e.g. UFFDIO_API): untracked, the connection is fine.
        Err(e)
            if e.kind() == std::io::ErrorKind::Other && e.to_string().starts_with("tracker:") =>
        {
            tracing::warn!("process {pid}: {e}: untracked");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
