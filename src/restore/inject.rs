//! Running system calls inside a seized task (see [`crate::sys::tracee`] for the protocol) and
//! writing into its memory through `/proc/PID/mem`.

use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::error::RestoreError;
use crate::sys::tracee;

/// A stopped thread we can run syscalls in.
#[derive(Debug, Clone, Copy)]
pub struct Thread {
    /// Its TID.
    pub tid: i32,
    /// Address of a `syscall` instruction in its address space.
    pub gadget: u64,
}

/// Result of one injected syscall, plus a TID created by it (clone).
pub struct Outcome {
    /// Return value (>= 0; errors are returned as `Err`).
    pub ret: i64,
    /// A thread created by the call (`PTRACE_EVENT_CLONE`).
    pub new_tid: Option<i32>,
}

impl Thread {
    /// Runs `nr(args...)` in the thread; a negative result becomes an error naming `step`.
    pub fn syscall(&self, step: &str, nr: i64, args: [u64; 6]) -> Result<i64, RestoreError> {
        self.syscall_ex(step, nr, args).map(|o| o.ret)
    }

    /// Like [`Thread::syscall`], also reporting a TID created by the call.
    pub fn syscall_ex(&self, step: &str, nr: i64, args: [u64; 6]) -> Result<Outcome, RestoreError> {
        let tid = self.tid;
        let err = |e| RestoreError::sys(format!("{step}: ptrace"), tid, e);
        let mut regs = tracee::get_regs(tid).map_err(err)?;
        regs.rip = self.gadget;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs.eflags &= !0x100;
        tracee::set_regs(tid, regs).map_err(err)?;
        let mut new_tid = None;
        loop {
            tracee::single_step(tid).map_err(err)?;
            match tracee::wait(tid).map_err(err)? {
                WaitStatus::Stopped(_, Signal::SIGTRAP) => {}
                WaitStatus::PtraceEvent(_, _, ev) if ev == libc::PTRACE_EVENT_CLONE => {
                    new_tid = Some(tracee::event_msg(tid).map_err(err)? as i32);
                    continue;
                }
                WaitStatus::Stopped(_, _) | WaitStatus::PtraceEvent(..) => {
                    // Another stop before the step completed: step again if not yet executed.
                    let r = tracee::get_regs(tid).map_err(err)?;
                    if r.rip == self.gadget {
                        continue;
                    }
                }
                st @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                    return Err(RestoreError::TaskDied {
                        pid: tid,
                        step: step.to_string(),
                        status: format!("{st:?}"),
                    })
                }
                _ => continue,
            }
            let r = tracee::get_regs(tid).map_err(err)?;
            if r.rip != self.gadget + 2 {
                return Err(RestoreError::Sys {
                    step: format!(
                        "{step}: task stopped at {:#x}, not after the syscall",
                        r.rip
                    ),
                    pid: tid,
                    errno: nix::errno::Errno::EFAULT,
                });
            }
            let ret = r.rax as i64;
            tracing::debug!(tid, step, nr, ?args, ret, "injected syscall");
            if (-4095..0).contains(&ret) {
                return Err(RestoreError::sys(
                    step,
                    tid,
                    nix::errno::Errno::from_raw(-ret as i32),
                ));
            }
            return Ok(Outcome { ret, new_tid });
        }
    }
}

/// Write access to a task's memory.
pub struct Mem {
    file: File,
    pid: i32,
}

impl Mem {
    /// Opens `/proc/PID/mem` (we are the task's tracer).
    pub fn open(pid: i32) -> Result<Self, RestoreError> {
        let path = format!("/proc/{pid}/mem");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| RestoreError::Io {
                step: "open task memory",
                path: path.into(),
                source: e,
            })?;
        Ok(Self { file, pid })
    }

    /// Writes `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), RestoreError> {
        self.file
            .write_all_at(data, addr)
            .map_err(|e| RestoreError::Sys {
                step: format!("write task memory at {addr:#x}"),
                pid: self.pid,
                errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, RestoreError> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, addr)
            .map_err(|e| RestoreError::Sys {
                step: format!("read task memory at {addr:#x}"),
                pid: self.pid,
                errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
        Ok(buf)
    }
}

/// One line of /proc/PID/maps: start, end, name.
pub fn maps(pid: i32) -> Result<Vec<(u64, u64, String)>, RestoreError> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&path).map_err(|e| RestoreError::Io {
        step: "read maps",
        path: path.into(),
        source: e,
    })?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let range = it.next().unwrap_or("");
        let name = it.nth(4).unwrap_or("").to_string();
        let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
        let a = u64::from_str_radix(a, 16).unwrap_or(0);
        let b = u64::from_str_radix(b, 16).unwrap_or(0);
        out.push((a, b, name));
    }
    Ok(out)
}
