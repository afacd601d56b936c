//! Running system calls inside a stopped task (CRIU's "compel" technique), so that the task
//! survives its tracer's death at every step.
//!
//! ```text
//! save    regs (NT_PRSTATUS), XSAVE area, blocked mask, the code word at `ip`
//! frame   a signal frame restoring exactly that (sigframe.rs), written on the task's own
//!         stack below its red zone: [sp - 128 - frame, sp - 128)
//! poke    the gadget over the low 7 bytes of the word at `ip`:
//!           ip + 0  0f 05   syscall          the call asked for
//!           ip + 2  6a 0f   push $15         (into the frame's unused pretcode slot)
//!           ip + 4  58      pop %rax
//!           ip + 5  0f 05   syscall          rt_sigreturn through the frame: back as saved
//! set     regs: ax = nr, di si dx r10 r8 r9 = args, ip, sp = frame + 8, orig_ax = -1,
//!         TF and DF cleared; then the mask: every signal blocked
//! run     PTRACE_SYSCALL to the syscall-entry stop, PTRACE_SYSCALL to its exit stop, read ax
//! park    PTRACE_INTERRUPT + PTRACE_CONT: the task stops (event stop) before it returns to
//!         user mode, so the rt_sigreturn half never runs while we live
//! undo    mask, registers, then the code word: exactly as saved
//! ```
//!
//! Kill safety. A tracer that dies frees its tracees: one in an event stop or a syscall stop
//! simply goes on (one in a signal-delivery stop takes the signal, which is why no `int3`
//! trap is used). One on its way to a syscall stop (resumed by `PTRACE_SYSCALL`, not there
//! yet) is sent the stop's code as a signal by the kernel: every task is seized with
//! `PTRACE_O_TRACESYSGOOD` ([`super::ptrace::seize`]), whose code is no valid signal, so
//! nothing is sent (a plain SIGTRAP would stay pending under the all-blocked mask and kill
//! the task at the gadget's `rt_sigreturn`). At every step above the task is either in its
//! own state or on the way through the gadget, whose second half puts it back through the
//! frame (an interrupted system call is restarted as after a signal handler; a
//! restart-block one such as `nanosleep` returns EINTR, as after a CRIU restore). The mask goes on after the registers
//! and comes back before them, so the task never runs its own code with every signal
//! blocked. What a dying tracer may leave: the effect of the one call (a mapping, a
//! descriptor) and, between the poke and the first register write or between the last
//! register write and the unpoke, the gadget in the word at `ip` (the start of the first
//! executable mapping: `_init` of an executable, which runs once at startup). When the
//! frame cannot be written (no mapped stack below `sp`), the call runs without it and that
//! one call is not kill-safe (logged).
//!
//! `ip` is the start of an executable private mapping ([`proc_tasks::exec_area`]), or a gadget
//! the caller already placed in the task ([`GADGET`]; the dump parasite exports one): then
//! nothing is poked.
//!
//! Every thread of the process must be in a ptrace stop (seize the whole thread group): an
//! other running thread could execute the poked bytes. The task ends in a
//! `PTRACE_EVENT_STOP` with its original registers; on detach the kernel's own restart logic
//! restarts an interrupted syscall (`orig_ax` is restored).
//!
//! Results in -4095..-1 are decoded as [`Error::Remote`] with the errno.

use super::errno::decode_raw;
use super::error::{Error, Result};
use super::proc_tasks;
use super::ptrace;
use super::regs::{UserRegs, EFLAGS_DF, EFLAGS_TF};
use super::sigframe;
use super::task::SeizedTask;
use super::wait::WaitEvent;

/// The gadget: `syscall; push $15; pop %rax; syscall` (see the module doc).
pub const GADGET: [u8; 7] = [0x0f, 0x05, 0x6a, 0x0f, 0x58, 0x0f, 0x05];
/// The gadget in the low 7 bytes of a little-endian word.
const GADGET_WORD: u64 = 0x0005_0f58_0f6a_050f;
const CODE_MASK: u64 = 0x00ff_ffff_ffff_ffff;
/// Length of the gadget.
pub const GADGET_LEN: u64 = GADGET.len() as u64;
/// Where the first `syscall` of the gadget returns (and where the task sits in its syscall
/// stops).
const AFTER_SYSCALL: u64 = 2;

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

    /// Remote execution poking the gadget at `ip` (must be executable, private, and not
    /// run by any other thread while it is poked).
    pub fn at(task: &'a SeizedTask, ip: u64) -> Self {
        Remote {
            task,
            ip,
            poke: true,
        }
    }

    /// Remote execution through a [`GADGET`] already present at `ip`.
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
        task.restore_now()?;
        let orig = task.regs()?;
        let mask = task.sigmask()?;
        let frame = self.write_frame(&orig, mask);
        let word = if self.poke {
            let word = task.peek(self.ip)?;
            task.poke(self.ip, (word & !CODE_MASK) | GADGET_WORD)?;
            Some(word)
        } else {
            None
        };
        super::stop_point::stop_point("remote-frame");
        let result = self.run(&orig, frame, nr, args);
        let restored = self.restore(word, mask, &orig);
        let ax = result?;
        restored?;
        Ok(ax)
    }

    /// Writes the frame that puts the task back as it is now (`orig`, `mask`, its XSAVE
    /// area) below its red zone; returns the `sp` the gadget's `rt_sigreturn` needs, or
    /// None when it could not be written (the call is then not kill-safe).
    fn write_frame(&self, orig: &UserRegs, mask: u64) -> Option<u64> {
        let task = self.task;
        let written = task.xstate().and_then(|xstate| {
            let addr = sigframe::below_red_zone(orig.sp, xstate.len()).ok_or_else(|| {
                Error::Unexpected {
                    op: "remote syscall frame",
                    pid: task.tid(),
                    what: format!("sp {:#x}", orig.sp),
                }
            })?;
            let bytes = sigframe::frame(addr, orig, mask, &xstate);
            super::mem::write(task.tgid(), addr, &bytes)?;
            Ok(addr + sigframe::FRAME_UC as u64)
        });
        match written {
            Ok(sp) => Some(sp),
            Err(e) => {
                tracing::warn!(
                    "task {}: no return frame below its stack pointer ({e}): a dumper killed \
                     during this remote syscall loses the task",
                    task.tid()
                );
                None
            }
        }
    }

    fn restore(&self, word: Option<u64>, mask: u64, orig: &UserRegs) -> Result<()> {
        let task = self.task;
        // Mask before registers (the task must not run its own code with every signal
        // blocked), the code word last (the task must not run the gadget's bytes unpoked).
        task.set_sigmask(mask)?;
        super::stop_point::stop_point("remote-mask");
        task.set_regs(orig)?;
        super::stop_point::stop_point("remote-regs");
        if let Some(word) = word {
            task.poke(self.ip, word)?;
        }
        Ok(())
    }

    fn run(&self, orig: &UserRegs, frame_sp: Option<u64>, nr: i64, args: &[u64]) -> Result<u64> {
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
        regs.sp = frame_sp.unwrap_or(orig.sp);
        regs.orig_ax = u64::MAX;
        regs.flags &= !(EFLAGS_TF | EFLAGS_DF);
        // Registers before the mask: the task must not run its own code with every signal
        // blocked should we die in between.
        task.set_regs(&regs)?;
        task.set_sigmask(u64::MAX)?;
        super::stop_point::stop_point("remote-set");
        let at = self.ip + AFTER_SYSCALL;
        let entry = syscall_stop(task, "remote syscall", at)?;
        super::stop_point::stop_point("remote-entry");
        if entry.orig_ax != nr as u64 {
            return Err(Error::Unexpected {
                op: "remote syscall",
                pid: task.tid(),
                what: format!("entered syscall {} instead of {nr}", entry.orig_ax as i64),
            });
        }
        let exit = syscall_stop(task, "remote syscall", at)?;
        super::stop_point::stop_point("remote-exit");
        task.park()?;
        super::stop_point::stop_point("remote-parked");
        Ok(exit.ax)
    }
}

/// Resumes `task` with `PTRACE_SYSCALL` until its next syscall stop (`SIGTRAP | 0x80`: the
/// task was seized with `PTRACE_O_TRACESYSGOOD`), which must be at `ip == at`; returns the
/// registers there. Group stops and interrupts on the way are resumed; SIGSTOP is let
/// through (it becomes a group stop, reinstated on detach); any other signal stop, SIGTRAP
/// included, is an error (a fault in the code run: every other signal is blocked).
fn syscall_stop(task: &SeizedTask, op: &'static str, at: u64) -> Result<UserRegs> {
    task.resume_syscall(0)?;
    // The task is on its way to the stop (a tracer dying now: see the module doc).
    super::stop_point::stop_point("remote-resume");
    loop {
        match task.wait()? {
            WaitEvent::SignalStop {
                sig: ptrace::SYSCALL_STOP_SIG,
            } => {
                let regs = task.regs()?;
                if regs.ip != at {
                    return Err(Error::Unexpected {
                        op,
                        pid: task.tid(),
                        what: format!("SIGTRAP at ip {:#x}, expected {at:#x}", regs.ip),
                    });
                }
                return Ok(regs);
            }
            WaitEvent::SignalStop { sig: libc::SIGSTOP } => task.resume_syscall(libc::SIGSTOP)?,
            WaitEvent::EventStop { .. } | WaitEvent::OtherEvent { .. } => task.resume_syscall(0)?,
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
