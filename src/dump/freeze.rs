//! Holding the tree still, and the [`FrozenTree`] the engine works on.
//!
//! The engine asks a [`Backend`] to freeze the tree; the frozen tree answers [`TaskProbe`]
//! questions and, at the end, either kills the tree (a successful dump without
//! `--leave-running`) or releases it. Dropping a frozen tree releases it, so every error path
//! leaves the tree running as before.
//!
//! [`CgroupFreeze`] freezes the cgroup named by `--freeze-cgroup` (v2 `cgroup.freeze` or v1
//! `freezer.state`, plain file writes); the ptrace backend (`super::ptrace_backend`) uses it to
//! hold the tree still while it seizes every thread.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{DumpError, Result};
use super::options::DumpOptions;
use super::probe::TaskProbe;

/// A frozen tree.
pub trait FrozenTree: TaskProbe {
    /// SIGKILLs every process of the tree (called only after every image was written).
    fn kill(&mut self, pids: &[i32]) -> Result<()>;
    /// Lets the tree run again.
    fn release(self: Box<Self>) -> Result<()>;
    /// Queues SIGSTOP for every process of the tree (still frozen): released, each stops
    /// before running again (`--leave-stopped`).
    fn stop(&mut self, pids: &[i32]) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        for &pid in pids {
            kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).map_err(|e| {
                DumpError::new("stop", pid, Some(e as i32), format!("SIGSTOP: {e}"))
            })?;
        }
        Ok(())
    }
    /// Whether process `pid` was in a group stop (SIGSTOP, SIGTSTP...) when it was frozen:
    /// its /proc state then says traced ('t') like every other, so the freezer must tell. It
    /// is dumped as TASK_STOPPED. Backends that do not stop tasks themselves: false.
    fn group_stopped(&self, _pid: i32) -> bool {
        false
    }
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
