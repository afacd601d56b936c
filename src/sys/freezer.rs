//! Freezing a cgroup so a tree can be seized without racing forks and clones.
//!
//! ```text
//! v1 (freezer controller, e.g. /sys/fs/cgroup/freezer/<cg>):
//!      write "FROZEN" to freezer.state; read it until "FROZEN" (FREEZING meanwhile);
//!      thaw: write "THAWED"
//! v2 (unified hierarchy, e.g. /sys/fs/cgroup/unified/<cg>):
//!      write "1" to cgroup.freeze; read cgroup.events until the line "frozen 1";
//!      thaw: write "0"
//! ```
//!
//! [`Freezer`] thaws on drop (errors are logged), so a failed dump never leaves a cgroup
//! frozen; a dumper killed while the cgroup is frozen (no drop runs) is covered by a
//! [`FreezeGuard`], a small process started before freezing that thaws the cgroup when the
//! dumper dies and is dismissed once the dumper thawed it itself. Waits poll every
//! millisecond up to a deadline and then fail with a timeout.

use super::error::{Error, Result};
use super::freeze_guard::FreezeGuard;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Cgroup version of a freezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerVersion {
    /// cgroup v1 freezer controller (`freezer.state`).
    V1,
    /// cgroup v2 (`cgroup.freeze`, `cgroup.events`).
    V2,
}

/// A frozen cgroup; thawed on drop.
#[derive(Debug)]
pub struct Freezer {
    dir: PathBuf,
    version: FreezerVersion,
    frozen: bool,
    /// Thaws the cgroup if this process dies before it does.
    guard: Option<FreezeGuard>,
}

/// How long to wait for a cgroup to reach FROZEN.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Freezer {
    /// Freezes the cgroup directory `dir` (version detected from its files) and waits until
    /// every task in it is frozen.
    pub fn freeze(dir: &Path, timeout: Duration) -> Result<Self> {
        let version = if dir.join("freezer.state").exists() {
            FreezerVersion::V1
        } else if dir.join("cgroup.freeze").exists() {
            FreezerVersion::V2
        } else {
            return Err(Error::path("open freezer", dir, nix::errno::Errno::ENOENT));
        };
        let mut freezer = Freezer {
            dir: dir.to_path_buf(),
            version,
            frozen: false,
            guard: None,
        };
        let thaw = match version {
            FreezerVersion::V1 => "THAWED",
            FreezerVersion::V2 => "0",
        };
        freezer.guard = Some(FreezeGuard::spawn(&freezer.control_file(), thaw)?);
        freezer.set(true)?;
        freezer.frozen = true;
        freezer.wait(true, timeout)?;
        super::stop_point::stop_point("frozen");
        Ok(freezer)
    }

    /// The cgroup directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup version.
    pub fn version(&self) -> FreezerVersion {
        self.version
    }

    /// Reads whether the cgroup is frozen now.
    pub fn is_frozen(&self) -> Result<bool> {
        state(&self.dir, self.version)
    }

    /// Thaws now, reporting failure (drop thaws and logs).
    pub fn thaw(mut self) -> Result<()> {
        self.frozen = false;
        let thawed = self.set(false);
        if let Some(mut guard) = self.guard.take() {
            match thawed {
                Ok(()) => guard.dismiss(),
                // Left to the guardian, which thaws when we exit.
                Err(_) => std::mem::forget(guard),
            }
        }
        thawed
    }

    fn control_file(&self) -> PathBuf {
        match self.version {
            FreezerVersion::V1 => self.dir.join("freezer.state"),
            FreezerVersion::V2 => self.dir.join("cgroup.freeze"),
        }
    }

    fn set(&self, freeze: bool) -> Result<()> {
        let value = match (self.version, freeze) {
            (FreezerVersion::V1, true) => "FROZEN",
            (FreezerVersion::V1, false) => "THAWED",
            (FreezerVersion::V2, true) => "1",
            (FreezerVersion::V2, false) => "0",
        };
        let path = self.control_file();
        std::fs::write(&path, value).map_err(|e| Error::io("write", &path, &e))
    }

    fn wait(&self, frozen: bool, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if state(&self.dir, self.version)? == frozen {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    op: if frozen { "freeze" } else { "thaw" },
                    what: self.dir.display().to_string(),
                    millis: timeout.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn state(dir: &Path, version: FreezerVersion) -> Result<bool> {
    match version {
        FreezerVersion::V1 => {
            let path = dir.join("freezer.state");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, &e))?;
            Ok(text.trim() == "FROZEN")
        }
        FreezerVersion::V2 => {
            let path = dir.join("cgroup.events");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, &e))?;
            Ok(text.lines().any(|l| l.trim() == "frozen 1"))
        }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        if self.frozen {
            if let Err(e) = self.set(false) {
                tracing::error!("thawing {}: {e}", self.dir.display());
                // Left to the guardian, which thaws when we exit.
                if let Some(guard) = self.guard.take() {
                    std::mem::forget(guard);
                }
            }
        }
    }
}
