//! Holding the tree still, and the [`FrozenTree`] the engine works on.
//!
//! The engine asks a [`Backend`] to freeze the tree; the frozen tree answers [`TaskProbe`]
//! questions and, at the end, either kills the tree (a successful dump without
//! `--leave-running`) or releases it. Dropping a frozen tree releases it, so every error path
//! leaves the tree running as before.
//!
//! The cgroup named by `--freeze-cgroup` is frozen by [`crate::sys::freezer::Freezer`]; the
//! ptrace backend (`super::ptrace_backend`) holds the tree still with it while it seizes every
//! thread.

use std::os::unix::fs::FileExt;

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
