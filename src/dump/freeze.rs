//! Holding the tree still, and the [`FrozenTree`] the engine works on.
//!
//! The engine asks a [`Backend`] to freeze the tree; the frozen tree answers [`TaskProbe`]
//! questions and, at the end, either kills the tree (a successful dump without
//! `--leave-running`) or releases it. Dropping a frozen tree releases it, so every error path
//! leaves the tree running as before.
//!
//! [`ProcBackend`] freezes with the cgroup freezer named by `--freeze-cgroup` (v2
//! `cgroup.freeze` or v1 `freezer.state`, plain file writes) and reads memory through
//! `/proc/PID/mem`; it has no access to registers or in-task state, which come from ptrace and
//! the parasite (`crate::sys`, `crate::parasite`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{DumpError, Result};
use super::options::DumpOptions;
use super::probe::{ProcessProbe, TaskProbe, ThreadProbe};

/// A frozen tree.
pub trait FrozenTree: TaskProbe {
    /// SIGKILLs every process of the tree (called only after every image was written).
    fn kill(&mut self, pids: &[i32]) -> Result<()>;
    /// Lets the tree run again.
    fn release(self: Box<Self>) -> Result<()>;
}

/// Something that can freeze a tree.
pub trait Backend {
    fn freeze(&mut self, opts: &DumpOptions) -> Result<Box<dyn FrozenTree>>;
}

/// A cgroup frozen for the duration of the dump; thawed on drop.
#[derive(Debug)]
pub struct CgroupFreeze {
    path: PathBuf,
    v2: bool,
    thawed: bool,
}

fn write_file(p: &Path, s: &str) -> std::io::Result<()> {
    std::fs::write(p, s)
}

impl CgroupFreeze {
    /// Freezes the cgroup at `path` and waits (up to `timeout`) until it is frozen.
    pub fn freeze(path: &Path, timeout: Duration) -> Result<Self> {
        let v2 = path.join("cgroup.freeze").exists();
        let io = |what: &str, e: std::io::Error| {
            DumpError::io("seize", 0, &format!("{what} {}", path.display()), e)
        };
        let ctl = if v2 {
            path.join("cgroup.freeze")
        } else {
            path.join("freezer.state")
        };
        write_file(&ctl, if v2 { "1" } else { "FROZEN" }).map_err(|e| io("freeze", e))?;
        let me = CgroupFreeze {
            path: path.to_path_buf(),
            v2,
            thawed: false,
        };
        let t0 = Instant::now();
        loop {
            let frozen = if v2 {
                std::fs::read_to_string(path.join("cgroup.events"))
                    .map_err(|e| io("read events of", e))?
                    .lines()
                    .any(|l| l.trim() == "frozen 1")
            } else {
                std::fs::read_to_string(&ctl)
                    .map_err(|e| io("read state of", e))?
                    .trim()
                    == "FROZEN"
            };
            if frozen {
                return Ok(me);
            }
            if t0.elapsed() > timeout {
                return Err(DumpError::new(
                    "seize",
                    0,
                    Some(libc::ETIMEDOUT),
                    format!("cgroup {} did not freeze in {timeout:?}", path.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Thaws the cgroup.
    pub fn thaw(&mut self) -> Result<()> {
        if self.thawed {
            return Ok(());
        }
        let (ctl, val) = if self.v2 {
            (self.path.join("cgroup.freeze"), "0")
        } else {
            (self.path.join("freezer.state"), "THAWED")
        };
        write_file(&ctl, val)
            .map_err(|e| DumpError::io("thaw", 0, &format!("thaw {}", self.path.display()), e))?;
        self.thawed = true;
        Ok(())
    }
}

impl Drop for CgroupFreeze {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            tracing::error!("{e}");
        }
    }
}

/// Reads task memory through `/proc/PID/mem`.
pub fn read_proc_mem(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let p = crate::proc::path(pid, "mem");
    let f = std::fs::File::open(&p)
        .map_err(|e| DumpError::io("pages", pid, "open /proc/PID/mem", e))?;
    f.read_exact_at(buf, addr).map_err(|e| {
        DumpError::io(
            "pages",
            pid,
            &format!("read memory at {addr:#x}+{:#x}", buf.len()),
            e,
        )
    })
}

/// Freezes through a cgroup and reads what /proc offers (see the module doc).
#[derive(Debug, Default)]
pub struct ProcBackend;

/// The tree frozen by [`ProcBackend`].
#[derive(Debug)]
pub struct ProcFrozen {
    freeze: Option<CgroupFreeze>,
}

impl Backend for ProcBackend {
    fn freeze(&mut self, opts: &DumpOptions) -> Result<Box<dyn FrozenTree>> {
        let Some(cg) = &opts.freeze_cgroup else {
            return Err(DumpError::new(
                "seize",
                opts.pid,
                Some(libc::ENOSYS),
                "seizing with ptrace is not wired into the dump engine yet; use --freeze-cgroup",
            ));
        };
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(10));
        Ok(Box::new(ProcFrozen {
            freeze: Some(CgroupFreeze::freeze(cg, timeout)?),
        }))
    }
}

impl TaskProbe for ProcFrozen {
    fn thread(&mut self, pid: i32, tid: i32) -> Result<ThreadProbe> {
        Err(DumpError::new(
            "core",
            tid,
            Some(libc::ENOSYS),
            format!("registers of thread {tid} of {pid} need ptrace, not wired into the dump engine yet"),
        ))
    }

    fn process(&mut self, pid: i32) -> Result<ProcessProbe> {
        Err(DumpError::new(
            "core",
            pid,
            Some(libc::ENOSYS),
            "signal dispositions and timers need the parasite, not wired into the dump engine yet",
        ))
    }

    fn read_memory(&mut self, pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
        read_proc_mem(pid, addr, buf)
    }
}

/// SIGKILLs every pid (ESRCH is fine: a zombie or an already dead task).
pub fn kill_all(pids: &[i32]) -> Result<()> {
    for &p in pids {
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(DumpError::new("kill", p, Some(e as i32), "kill")),
        }
    }
    Ok(())
}

impl FrozenTree for ProcFrozen {
    fn kill(&mut self, pids: &[i32]) -> Result<()> {
        kill_all(pids)
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        match self.freeze.take() {
            Some(mut f) => f.thaw(),
            None => Ok(()),
        }
    }
}
