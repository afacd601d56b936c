//! [`SeizedTask`]: one thread attached with `PTRACE_SEIZE` and held in a ptrace stop.
//!
//! A ptrace request must come from the thread that seized the task (the kernel answers ESRCH
//! otherwise), so a `SeizedTask` is neither `Send` nor `Sync` and every method checks the
//! calling thread. Dropping it detaches (`PTRACE_DETACH`, no signal): a task that was in a
//! group-stop stays stopped, any other resumes where it was.
//!
//! A task may carry a deferred restore (registers and mask it must get back, recorded by
//! the parasite's thread routine, which leaves it stopped at a trap of ours): reads of the
//! registers and mask answer with it, and anything that writes them, resumes or detaches
//! the task writes it back first.

use super::error::{Error, Result};
use super::proc_tasks;
use super::ptrace::{self, RseqConfig, UserDesc, SIGINFO_SIZE};
use super::regs::{TaskRegs, UserRegs, XState};
use super::wait::{self, gettid, WaitEvent};
use std::cell::Cell;
use std::marker::PhantomData;

/// How a task reported its stop when it was seized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// Stopped by our `PTRACE_INTERRUPT` (it was running or sleeping).
    Interrupted,
    /// It was (or went) into a group-stop by `sig`: it stays stopped after detach.
    GroupStop {
        /// The stop signal (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
        sig: i32,
    },
}

/// A thread seized with `PTRACE_SEIZE` and stopped; detached on drop.
#[derive(Debug)]
pub struct SeizedTask {
    tid: i32,
    tgid: i32,
    tracer: i32,
    stop: StopKind,
    attached: Cell<bool>,
    /// Registers and blocked mask to write back before the task runs again or is detached
    /// (see [`SeizedTask::defer_restore`]).
    restore: Cell<Option<(UserRegs, Option<u64>)>>,
    /// ptrace requests only work from the tracer thread: not Send, not Sync.
    _tracer_thread: PhantomData<*const ()>,
}

impl SeizedTask {
    /// Seizes thread `tid` (of thread group `tgid`), interrupts it and waits for its stop.
    /// Signals that arrive before the stop are delivered (the task handles them) and the wait
    /// goes on. For a whole process tree use [`crate::sys::tree::seize_tree`], which does the
    /// same for all threads with one event loop.
    pub fn seize(tgid: i32, tid: i32) -> Result<Self> {
        ptrace::seize(tid, 0)?;
        let mut task = SeizedTask::attached(tgid, tid, StopKind::Interrupted);
        ptrace::interrupt(tid)?;
        loop {
            match wait::wait_task(tgid, tid)? {
                WaitEvent::EventStop { sig } => {
                    task.stop = stop_kind(sig);
                    return Ok(task);
                }
                WaitEvent::SignalStop { sig } => ptrace::cont(tid, sig)?,
                WaitEvent::OtherEvent { .. } => ptrace::cont(tid, 0)?,
                WaitEvent::Exited { .. } | WaitEvent::Killed { .. } => {
                    task.attached.set(false);
                    return Err(Error::TaskDied {
                        pid: tid,
                        op: "seize",
                    });
                }
            }
        }
    }

    /// Wraps a thread the calling thread has seized and seen stop.
    pub(crate) fn attached(tgid: i32, tid: i32, stop: StopKind) -> Self {
        SeizedTask {
            tid,
            tgid,
            tracer: gettid(),
            stop,
            attached: Cell::new(true),
            restore: Cell::new(None),
            _tracer_thread: PhantomData,
        }
    }

    pub(crate) fn set_stop(&mut self, stop: StopKind) {
        self.stop = stop;
    }

    /// Marks the task as gone: drop will not try to detach it.
    pub(crate) fn forget(&self) {
        self.attached.set(false);
    }

    /// The thread that seized the task (the only one ptrace answers).
    pub fn tracer(&self) -> i32 {
        self.tracer
    }

    /// False once the task is known to be gone (or was detached).
    pub fn is_attached(&self) -> bool {
        self.attached.get()
    }

    /// Thread id.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Thread group id (process id).
    pub fn tgid(&self) -> i32 {
        self.tgid
    }

    /// True for the thread group leader.
    pub fn is_leader(&self) -> bool {
        self.tid == self.tgid
    }

    /// How the task stopped when seized.
    pub fn stop_kind(&self) -> StopKind {
        self.stop
    }

    /// Fails unless called from the thread that seized the task.
    pub fn check_tracer(&self, op: &'static str) -> Result<()> {
        let caller = gettid();
        if caller != self.tracer {
            return Err(Error::WrongTracer {
                op,
                pid: self.tid,
                tracer: self.tracer,
                caller,
            });
        }
        if !self.attached.get() {
            return Err(Error::TaskDied { pid: self.tid, op });
        }
        Ok(())
    }

    /// General registers (`PTRACE_GETREGSET NT_PRSTATUS`), fs_base/gs_base included: with a
    /// deferred restore pending, the registers the task will resume with.
    pub fn regs(&self) -> Result<UserRegs> {
        self.check_tracer("PTRACE_GETREGSET")?;
        if let Some((regs, _)) = self.restore.get() {
            return Ok(regs);
        }
        ptrace::get_regs(self.tid)
    }

    /// Writes the general registers.
    pub fn set_regs(&self, regs: &UserRegs) -> Result<()> {
        self.check_tracer("PTRACE_SETREGSET")?;
        self.restore_now()?;
        ptrace::set_regs(self.tid, regs)
    }

    /// The XSAVE area (`PTRACE_GETREGSET NT_X86_XSTATE`).
    pub fn xstate(&self) -> Result<XState> {
        self.check_tracer("PTRACE_GETREGSET")?;
        ptrace::get_xstate(self.tid)
    }

    /// Writes the XSAVE area.
    pub fn set_xstate(&self, xstate: &XState) -> Result<()> {
        self.check_tracer("PTRACE_SETREGSET")?;
        ptrace::set_xstate(self.tid, xstate)
    }

    /// General registers and XSAVE area.
    pub fn task_regs(&self) -> Result<TaskRegs> {
        Ok(TaskRegs {
            regs: self.regs()?,
            xstate: self.xstate()?,
        })
    }

    /// Writes general registers and XSAVE area back.
    pub fn set_task_regs(&self, regs: &TaskRegs) -> Result<()> {
        self.set_xstate(&regs.xstate)?;
        self.set_regs(&regs.regs)
    }

    /// Blocked signal mask (bit `n - 1` = signal `n`); with a deferred restore pending, the
    /// mask the task will resume with.
    pub fn sigmask(&self) -> Result<u64> {
        self.check_tracer("PTRACE_GETSIGMASK")?;
        if let Some((_, Some(mask))) = self.restore.get() {
            return Ok(mask);
        }
        ptrace::get_sigmask(self.tid)
    }

    /// Sets the blocked signal mask.
    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        self.check_tracer("PTRACE_SETSIGMASK")?;
        self.restore_now()?;
        ptrace::set_sigmask(self.tid, mask)
    }

    /// Pending signals as raw `siginfo_t` (128 bytes each): the thread's private queue, or
    /// with `shared` the process-wide one.
    pub fn pending_signals(&self, shared: bool) -> Result<Vec<[u8; SIGINFO_SIZE]>> {
        self.check_tracer("PTRACE_PEEKSIGINFO")?;
        ptrace::peek_siginfo(self.tid, shared)
    }

    /// The registered rseq area (`PTRACE_GET_RSEQ_CONFIGURATION`).
    pub fn rseq(&self) -> Result<RseqConfig> {
        self.check_tracer("PTRACE_GET_RSEQ_CONFIGURATION")?;
        ptrace::rseq_config(self.tid)
    }

    /// The three GDT TLS entries (`PTRACE_GET_THREAD_AREA` 12..=14).
    pub fn tls(&self) -> Result<[UserDesc; 3]> {
        self.check_tracer("PTRACE_GET_THREAD_AREA")?;
        ptrace::tls(self.tid)
    }

    /// The robust futex list (`get_robust_list`): head address and length.
    pub fn robust_list(&self) -> Result<(u64, u64)> {
        ptrace::robust_list(self.tid)
    }

    /// Reads one word of memory.
    pub fn peek(&self, addr: u64) -> Result<u64> {
        self.check_tracer("PTRACE_PEEKDATA")?;
        ptrace::peek(self.tid, addr)
    }

    /// Writes one word of memory.
    pub fn poke(&self, addr: u64, word: u64) -> Result<()> {
        self.check_tracer("PTRACE_POKEDATA")?;
        ptrace::poke(self.tid, addr, word)
    }

    /// Resumes the task (`PTRACE_CONT`) delivering `sig` (0: none), after writing back a
    /// deferred restore.
    pub fn cont(&self, sig: i32) -> Result<()> {
        self.check_tracer("PTRACE_CONT")?;
        self.restore_now()?;
        ptrace::cont(self.tid, sig)
    }

    /// Resumes the task until its next syscall-entry or syscall-exit stop (`PTRACE_SYSCALL`),
    /// delivering `sig` (0: none), after writing back a deferred restore. A tracer that dies
    /// while the task sits in a syscall stop frees it to go on (no signal is delivered).
    pub fn resume_syscall(&self, sig: i32) -> Result<()> {
        self.check_tracer("PTRACE_SYSCALL")?;
        self.restore_now()?;
        ptrace::syscall(self.tid, sig)
    }

    /// Records the registers and blocked mask the task must get back before it runs again:
    /// the thread routine leaves its threads stopped at its trap and the write-back is done
    /// by [`SeizedTask::detach`] (or drop, or [`SeizedTask::cont`]). A dump that kills the
    /// tree skips it (two requests per thread), any other outcome pays it once at the end.
    /// `mask` None: the blocked mask is not ours to write back (not changed, or not known).
    pub fn defer_restore(&self, regs: UserRegs, mask: Option<u64>) {
        self.restore.set(Some((regs, mask)));
    }

    /// The deferred restore, if one is pending: the task's own registers (and mask) while
    /// it sits at a trap of ours.
    pub fn pending_restore(&self) -> Option<(UserRegs, Option<u64>)> {
        self.restore.get()
    }

    /// Writes a deferred restore back now (nothing if none is pending).
    pub fn restore_now(&self) -> Result<()> {
        if let Some((regs, mask)) = self.restore.get() {
            self.check_tracer("PTRACE_SETREGSET")?;
            ptrace::set_regs(self.tid, &regs)?;
            if let Some(mask) = mask {
                ptrace::set_sigmask(self.tid, mask)?;
            }
            self.restore.set(None);
        }
        Ok(())
    }

    /// Drops a deferred restore: the task is being killed and will never run again.
    pub(crate) fn discard_restore(&self) {
        self.restore.set(None);
    }

    /// Moves a task that sits at one of our traps (a SIGTRAP signal-delivery-stop, or a
    /// syscall stop) into a `PTRACE_EVENT_STOP` at the same registers without running a
    /// single instruction of it:
    /// `PTRACE_INTERRUPT`, then `PTRACE_CONT` without the signal, and the kernel traps it
    /// before it leaves the signal code. A tracer that dies frees a task in a
    /// signal-delivery-stop to take that signal (SIGTRAP kills it); from an event stop the task
    /// resumes where its registers say, restarting an interrupted system call as usual.
    pub fn park(&self) -> Result<()> {
        self.check_tracer("PTRACE_INTERRUPT")?;
        ptrace::interrupt(self.tid)?;
        self.cont(0)?;
        loop {
            match self.wait()? {
                WaitEvent::EventStop { .. } => return Ok(()),
                WaitEvent::OtherEvent { .. } => ptrace::cont(self.tid, 0)?,
                // Not expected (the trap comes before any signal is dequeued): delivered.
                WaitEvent::SignalStop { sig } => ptrace::cont(self.tid, sig)?,
                WaitEvent::Exited { .. } | WaitEvent::Killed { .. } => {
                    return Err(Error::TaskDied {
                        pid: self.tid,
                        op: "park",
                    })
                }
            }
        }
    }

    /// Makes a running task stop again (`PTRACE_INTERRUPT`); wait with [`SeizedTask::wait`].
    pub fn interrupt(&self) -> Result<()> {
        self.check_tracer("PTRACE_INTERRUPT")?;
        ptrace::interrupt(self.tid)
    }

    /// Waits for the task's next state change. An exit marks the task gone and returns
    /// "task N died".
    pub fn wait(&self) -> Result<WaitEvent> {
        self.check_tracer("waitpid")?;
        let ev = wait::wait_task(self.tgid, self.tid).inspect_err(|e| {
            if e.is_task_died() {
                self.attached.set(false);
            }
        })?;
        if ev.is_gone() {
            self.attached.set(false);
            return Err(Error::TaskDied {
                pid: self.tid,
                op: "waitpid",
            });
        }
        Ok(ev)
    }

    /// Non-blocking [`SeizedTask::wait`].
    pub fn poll(&self) -> Result<Option<WaitEvent>> {
        self.check_tracer("waitpid")?;
        let ev = wait::poll_tid(self.tid)?;
        if ev.is_some_and(|e| e.is_gone()) {
            self.attached.set(false);
            return Err(Error::TaskDied {
                pid: self.tid,
                op: "waitpid",
            });
        }
        Ok(ev)
    }

    /// Detaches now, reporting failure (drop detaches silently).
    pub fn detach(self) -> Result<()> {
        self.check_tracer("PTRACE_DETACH")?;
        self.restore_now()?;
        self.attached.set(false);
        ptrace::detach(self.tid, 0)
    }
}

impl Drop for SeizedTask {
    fn drop(&mut self) {
        if !self.attached.get() {
            return;
        }
        if gettid() != self.tracer {
            tracing::error!(
                tid = self.tid,
                "seized task dropped on a thread that is not its tracer"
            );
            return;
        }
        if let Err(e) = self.restore_now() {
            if !e.is_task_died() {
                tracing::error!("restore registers before detach: {e}");
            }
        }
        match ptrace::detach(self.tid, 0) {
            Ok(()) => {}
            Err(e) if e.is_task_died() => self.release_unstopped(),
            Err(e) => tracing::error!("detach: {e}"),
        }
    }
}

impl SeizedTask {
    /// Detach failed with ESRCH: the task is not in a ptrace stop. A dead task is a traced
    /// zombie only we can reap (its process cannot be reaped before); a running one (e.g. a
    /// parasite left running) is interrupted and detached.
    fn release_unstopped(&self) {
        let dead = |tid| {
            matches!(
                proc_tasks::state(self.tgid, tid),
                Ok(None | Some('Z' | 'X'))
            )
        };
        if dead(self.tid) {
            // A zombie leader is reported only after its other threads: wait only if they
            // are all dead too (their exits are reaped and stashed on the way).
            let others_dead = proc_tasks::threads(self.tgid)
                .map(|tids| tids.into_iter().all(dead))
                .unwrap_or(true);
            if !self.is_leader() || others_dead {
                let _ = wait::wait_tid(self.tid);
            }
            return;
        }
        if ptrace::interrupt(self.tid).is_err() {
            return;
        }
        loop {
            match wait::wait_task(self.tgid, self.tid) {
                Ok(WaitEvent::EventStop { .. }) | Ok(WaitEvent::SignalStop { .. }) => {
                    if let Err(e) = ptrace::detach(self.tid, 0) {
                        tracing::error!("detach after interrupt: {e}");
                    }
                    return;
                }
                Ok(WaitEvent::OtherEvent { .. }) => {
                    if ptrace::cont(self.tid, 0).is_err() {
                        return;
                    }
                }
                Ok(WaitEvent::Exited { .. }) | Ok(WaitEvent::Killed { .. }) | Err(_) => return,
            }
        }
    }
}

/// The stop kind of a `PTRACE_EVENT_STOP` with signal `sig`.
pub(crate) fn stop_kind(sig: i32) -> StopKind {
    match sig {
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
            StopKind::GroupStop { sig }
        }
        _ => StopKind::Interrupted,
    }
}
