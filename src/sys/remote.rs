//! Running system calls inside a stopped task (CRIU's "compel" technique).
//!
//! ```text
//! save   regs (NT_PRSTATUS), blocked mask, the code word at `ip`
//! poke   `0f 05 cc` (syscall; int3) over the first 3 bytes of the word at `ip`
//! set    ax = nr, di si dx r10 r8 r9 = args, ip, orig_ax = -1 (no restart processing),
//!        TF and DF cleared; blocked mask = every signal but SIGTRAP
//! run    PTRACE_CONT, wait for the SIGTRAP of `int3` (ip = `ip` + 3), read ax
//! undo   code word, mask, registers: exactly as saved, on every path
//! park   PTRACE_INTERRUPT + PTRACE_CONT without the SIGTRAP: the task waits in an event stop
//! ```
//!
//! `ip` is the start of an executable private mapping ([`proc_tasks::exec_area`]), or a
//! `syscall; int3` gadget the caller already placed in the task (the dump parasite exports
//! one): then nothing is poked. SIGTRAP stays unblocked because the kernel resets the handler
//! of a blocked SIGTRAP it forces (the `int3`) to SIG_DFL.
//!
//! Every thread of the process must be in a ptrace stop (seize the whole thread group): an
//! other running thread could execute the poked bytes. The task ends in a
//! `PTRACE_EVENT_STOP` with its original registers (parked: a signal-delivery-stop for the
//! SIGTRAP would make a dying tracer's tasks take it and die); on detach the kernel's own
//! restart logic restarts an interrupted syscall (`orig_ax` is restored). A tracer killed
//! while the syscall itself runs (the poked word in place, the registers ours) still loses
//! the task: that window is the length of one system call.
//!
//! Results in -4095..-1 are decoded as [`Error::Remote`] with the errno.

use super::errno::decode_raw;
use super::error::{Error, Result};
use super::proc_tasks;
use super::regs::{UserRegs, EFLAGS_DF, EFLAGS_TF};
use super::task::SeizedTask;
use super::wait::WaitEvent;

/// `syscall; int3` in the low three bytes of a little-endian word.
const SYSCALL_INT3: u64 = 0x00cc_050f;
const CODE_MASK: u64 = 0x00ff_ffff;
/// Length of `syscall; int3`.
pub const GADGET_LEN: u64 = 3;

/// Executes syscalls inside one stopped thread.
#[derive(Debug, Clone, Copy)]
pub struct Remote<'a> {
    task: &'a SeizedTask,
    ip: u64,
    poke: bool,
}

impl<'a> Remote<'a> {
    /// Remote execution at the start of the task's first executable private mapping.
    pub fn new(task: &'a SeizedTask) -> Result<Self> {
        let ip = proc_tasks::exec_area(task.tgid())?;
        Ok(Remote {
            task,
            ip,
            poke: true,
        })
    }

    /// Remote execution poking `syscall; int3` at `ip` (must be executable, private, and not
    /// run by any other thread while it is poked).
    pub fn at(task: &'a SeizedTask, ip: u64) -> Self {
        Remote {
            task,
            ip,
            poke: true,
        }
    }

    /// Remote execution through a `syscall; int3` gadget already present at `ip`.
    pub fn with_gadget(task: &'a SeizedTask, ip: u64) -> Self {
        Remote {
            task,
            ip,
            poke: false,
        }
    }

    /// The task the syscalls run in.
    pub fn task(&self) -> &'a SeizedTask {
        self.task
    }

    /// The address `syscall` executes at.
    pub fn ip(&self) -> u64 {
        self.ip
    }

    /// Runs syscall `nr` with up to six arguments (missing ones are 0) and returns its value;
    /// -4095..-1 becomes [`Error::Remote`] (`op` names the call in the error).
    pub fn syscall(&self, op: &'static str, nr: i64, args: &[u64]) -> Result<u64> {
        let ax = self.syscall_raw(nr, args)?;
        decode_raw(ax).map_err(|errno| Error::Remote {
            op,
            pid: self.task.tid(),
            errno,
        })
    }

    /// Runs syscall `nr` and returns the raw `ax` (no errno decoding).
    pub fn syscall_raw(&self, nr: i64, args: &[u64]) -> Result<u64> {
        let task = self.task;
        task.check_tracer("remote syscall")?;
        let orig = task.regs()?;
        let mask = task.sigmask()?;
        let word = if self.poke {
            let word = task.peek(self.ip)?;
            task.poke(self.ip, (word & !CODE_MASK) | SYSCALL_INT3)?;
            Some(word)
        } else {
            None
        };
        let result = self.run(&orig, nr, args);
        let restored = self.restore(word, mask, &orig);
        let ax = result?;
        restored?;
        task.park()?;
        Ok(ax)
    }

    fn restore(&self, word: Option<u64>, mask: u64, orig: &UserRegs) -> Result<()> {
        let task = self.task;
        if let Some(word) = word {
            task.poke(self.ip, word)?;
        }
        task.set_sigmask(mask)?;
        task.set_regs(orig)
    }

    fn run(&self, orig: &UserRegs, nr: i64, args: &[u64]) -> Result<u64> {
        let task = self.task;
        let arg = |i: usize| args.get(i).copied().unwrap_or(0);
        let mut regs = *orig;
        regs.ax = nr as u64;
        regs.di = arg(0);
        regs.si = arg(1);
        regs.dx = arg(2);
        regs.r10 = arg(3);
        regs.r8 = arg(4);
        regs.r9 = arg(5);
        regs.ip = self.ip;
        regs.orig_ax = u64::MAX;
        regs.flags &= !(EFLAGS_TF | EFLAGS_DF);
        task.set_regs(&regs)?;
        task.set_sigmask(!(1u64 << (libc::SIGTRAP - 1)))?;
        run_until_trap(task, "remote syscall", self.ip + GADGET_LEN)
    }
}

/// Resumes `task` and waits until it traps with `ip == trap_ip`; returns `ax` then. Group
/// stops and interrupts on the way are resumed; SIGSTOP is let through (it becomes a group
/// stop, reinstated on detach); any other signal stop is an error (a fault in the code run).
pub fn run_until_trap(task: &SeizedTask, op: &'static str, trap_ip: u64) -> Result<u64> {
    task.cont(0)?;
    loop {
        match task.wait()? {
            WaitEvent::SignalStop { sig: libc::SIGTRAP } => {
                let regs = task.regs()?;
                if regs.ip != trap_ip {
                    return Err(Error::Unexpected {
                        op,
                        pid: task.tid(),
                        what: format!("SIGTRAP at ip {:#x}, expected {trap_ip:#x}", regs.ip),
                    });
                }
                return Ok(regs.ax);
            }
            WaitEvent::SignalStop { sig: libc::SIGSTOP } => task.cont(libc::SIGSTOP)?,
            WaitEvent::EventStop { .. } | WaitEvent::OtherEvent { .. } => task.cont(0)?,
            WaitEvent::SignalStop { sig } => {
                let ip = task.regs().map(|r| r.ip).unwrap_or(0);
                return Err(Error::Unexpected {
                    op,
                    pid: task.tid(),
                    what: format!("stopped by signal {sig} at ip {ip:#x}"),
                });
            }
            WaitEvent::Exited { .. } | WaitEvent::Killed { .. } => {
                return Err(Error::TaskDied {
                    pid: task.tid(),
                    op,
                })
            }
        }
    }
}

/// An anonymous mapping created in a task by remote `mmap`; unmapped (remote `munmap`) on
/// drop, which needs the task stopped and its thread group seized, like any remote syscall.
#[derive(Debug)]
pub struct RemoteMapping<'a> {
    remote: Remote<'a>,
    addr: u64,
    len: u64,
    mapped: bool,
}

impl<'a> RemoteMapping<'a> {
    /// Maps `len` bytes (`MAP_PRIVATE | MAP_ANONYMOUS`) with `prot` in the task of `remote`.
    pub fn new(remote: Remote<'a>, len: u64, prot: i32) -> Result<Self> {
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = remote.syscall(
            "mmap",
            libc::SYS_mmap,
            &[0, len, prot as u64, flags, u64::MAX, 0],
        )?;
        Ok(RemoteMapping {
            remote,
            addr,
            len,
            mapped: true,
        })
    }

    /// Address of the mapping in the task.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length mapping (never: mmap rejects it).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `data` at offset `off` of the mapping (`/proc/PID/mem`).
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        if off.saturating_add(data.len() as u64) > self.len {
            return Err(Error::Unexpected {
                op: "write remote mapping",
                pid: self.remote.task.tid(),
                what: format!(
                    "{} bytes at offset {off} overflow {} bytes",
                    data.len(),
                    self.len
                ),
            });
        }
        super::mem::write(self.remote.task.tgid(), self.addr + off, data)
    }

    /// Reads `buf.len()` bytes at offset `off` of the mapping.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        if off.saturating_add(buf.len() as u64) > self.len {
            return Err(Error::Unexpected {
                op: "read remote mapping",
                pid: self.remote.task.tid(),
                what: format!(
                    "{} bytes at offset {off} overflow {} bytes",
                    buf.len(),
                    self.len
                ),
            });
        }
        super::mem::read(self.remote.task.tgid(), self.addr + off, buf)
    }

    /// Unmaps now, reporting failure (drop unmaps and logs).
    pub fn unmap(mut self) -> Result<()> {
        self.mapped = false;
        self.remote
            .syscall("munmap", libc::SYS_munmap, &[self.addr, self.len])
            .map(drop)
    }

    /// Forgets the mapping without unmapping it (its owner unmaps it some other way).
    pub fn leak(mut self) -> (u64, u64) {
        self.mapped = false;
        (self.addr, self.len)
    }
}

impl Drop for RemoteMapping<'_> {
    fn drop(&mut self) {
        if !self.mapped {
            return;
        }
        if let Err(e) = self
            .remote
            .syscall("munmap", libc::SYS_munmap, &[self.addr, self.len])
        {
            if !e.is_task_died() {
                tracing::error!("unmapping remote area {:#x}: {e}", self.addr);
            }
        }
    }
}
