//! What the dump needs from inside the tasks (ptrace and the parasite), as plain data.
//!
//! The engine reads per-process facts /proc offers itself (see `crate::proc`); the rest
//! (registers, signal dispositions, timers, sigaltstack, robust futex list, rseq, pending
//! signals, per-thread credentials/comm/scheduling, memory contents) comes through a
//! [`TaskProbe`], implemented over seized tasks and the injected parasite. Tests use a double.
//!
//! ```text
//!  engine ── with_process(pid, tids, f) ──► backend opens the process (parasite injected)
//!            f(&mut dyn ProcessAccess):  process()   per-process state
//!                                        threads()   every thread's state, in one batch
//!                                        dump_pages() / read_memory()
//!           ◄── returns: the backend closes the process (parasite cured), also on errors
//! ```

use super::error::Result;
pub use crate::sys::regs::UserRegs;

/// What the core image of a thread is built from, besides the probes.
#[derive(Debug, Clone, Default)]
pub struct ThreadFacts {
    pub tid: i32,
    pub comm: String,
    pub blk_sigset: u64,
    pub sched_policy: u32,
    pub sched_nice: i32,
    pub sched_prio: u32,
    pub creds: Creds,
}

/// Credentials of a thread (from `/proc/PID/task/TID/status`).
#[derive(Debug, Clone, Default)]
pub struct Creds {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub secbits: u32,
    /// `PR_GET_NO_NEW_PRIVS` (NoNewPrivs in /proc).
    pub no_new_privs: bool,
}

/// The xsave parts beyond the legacy FXSAVE area, in CRIU's layout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xsave {
    pub xstate_bv: u64,
    /// Upper halves of ymm0-15 (64 u32).
    pub ymmh_space: Vec<u32>,
    /// AVX-512 opmask k0-7 (8 u64).
    pub opmask_reg: Vec<u64>,
    /// Upper 256 bits of zmm0-15 (64 u64).
    pub zmm_upper: Vec<u64>,
    /// zmm16-31 (128 u64).
    pub hi16_zmm: Vec<u64>,
}

/// FPU/SSE state (FXSAVE layout) plus xsave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FpRegs {
    pub cwd: u32,
    pub swd: u32,
    pub twd: u32,
    pub fop: u32,
    pub rip: u64,
    pub rdp: u64,
    pub mxcsr: u32,
    pub mxcsr_mask: u32,
    /// 32 u32 (8 x87 registers of 16 bytes).
    pub st_space: Vec<u32>,
    /// 64 u32 (16 xmm registers).
    pub xmm_space: Vec<u32>,
    pub xsave: Option<Xsave>,
}

/// One GDT TLS descriptor (`struct user_desc`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct TlsDesc {
    pub entry_number: u32,
    pub base_addr: u32,
    pub limit: u32,
    pub seg_32bit: bool,
    pub contents: u32,
    pub read_exec_only: bool,
    pub limit_in_pages: bool,
    pub seg_not_present: bool,
    pub usable: bool,
}

impl TlsDesc {
    /// An unused GDT slot as the kernel reports it.
    pub fn empty(entry_number: u32) -> Self {
        TlsDesc {
            entry_number,
            read_exec_only: true,
            seg_not_present: true,
            ..Default::default()
        }
    }
}

/// Per-thread state from ptrace/parasite.
#[derive(Debug, Clone, Default)]
pub struct ThreadProbe {
    /// General registers as the image stores them (`UserRegs::for_image`: an interrupted
    /// syscall is set up to restart).
    pub regs: UserRegs,
    pub fpregs: FpRegs,
    pub tls: Vec<TlsDesc>,
    pub clear_tid_addr: u64,
    pub futex_rla: u64,
    pub futex_rla_len: u32,
    /// sigaltstack: sp, size, flags.
    pub sas: (u64, u64, u32),
    /// rseq registration: abi pointer, size, signature.
    pub rseq: Option<(u64, u32, u32)>,
    /// Thread-private pending signals (raw 128-byte siginfo each).
    pub pending: Vec<Vec<u8>>,
    pub pdeath_sig: u32,
    /// Thread facts read inside the thread (comm, blocked mask, scheduling, credentials);
    /// `None`: the engine reads them from /proc.
    pub facts: Option<ThreadFacts>,
    /// Seccomp mode read inside the thread; `None`: the engine reads /proc status.
    pub seccomp_mode: Option<u32>,
}

/// One signal disposition (kernel `struct sigaction` for x86-64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// One interval timer: interval and value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Itimer {
    pub isec: u64,
    pub iusec: u64,
    pub vsec: u64,
    pub vusec: u64,
}

/// Remaining state of one POSIX timer (the rest is in /proc/PID/timers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PosixTimerValue {
    pub id: i32,
    pub overrun: i32,
    pub isec: u64,
    pub insec: u64,
    pub vsec: u64,
    pub vnsec: u64,
}

/// Per-process state from ptrace/parasite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessProbe {
    /// Signals 1..=64 (entries for SIGKILL/SIGSTOP are ignored).
    pub sigactions: Vec<SigAction>,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: [Itimer; 3],
    pub posix_timers: Vec<PosixTimerValue>,
    /// Process-wide pending signals (raw 128-byte siginfo each).
    pub shared_pending: Vec<Vec<u8>>,
    pub child_subreaper: bool,
    pub dumpable: u32,
    pub thp_disabled: bool,
    /// membarrier registrations (`task_core.membarrier_registration_mask`).
    pub membarrier_mask: u32,
    /// `brk(0)` in the task.
    pub brk: u64,
    /// `mlockall` flags for future mappings (MCL_FUTURE, MCL_ONFAULT), 0: none.
    pub mlockall: u32,
}

/// Access to a frozen tree's insides, one process at a time.
pub trait TaskProbe {
    /// Opens process `pid` (threads `tids`, the leader first), runs `f` with access to it and
    /// closes it again (the parasite is cured), also when `f` fails.
    fn with_process(
        &mut self,
        pid: i32,
        tids: &[i32],
        f: &mut dyn FnMut(&mut dyn ProcessAccess) -> Result<()>,
    ) -> Result<()>;
}

/// One open process (see [`TaskProbe::with_process`]).
pub trait ProcessAccess {
    /// Per-process state.
    fn process(&mut self) -> Result<ProcessProbe>;
    /// State of every thread, in the order of the `tids` given to `with_process`.
    fn threads(&mut self) -> Result<Vec<ThreadProbe>>;
    /// Address ranges the probe itself mapped into the process (the parasite): not part of
    /// the process's memory.
    fn hidden_areas(&self) -> Vec<(u64, u64)> {
        Vec::new()
    }
    /// A userfaultfd of the process's mm made inside it by `userfaultfd(flags)` and handed
    /// over (nothing stays in the process); `None` when this probe cannot (dirty tracking
    /// then falls back to soft-dirty or to full dumps).
    fn userfaultfd(&mut self, _flags: u32) -> Result<Option<std::os::fd::OwnedFd>> {
        Ok(None)
    }
    /// Pins the pages of `regions` (address, length; page aligned, readable, in order) into
    /// pipes the caller keeps and drains later, after the tree runs again (pre-dump splice
    /// mode). Returns each pipe and its bytes, or `None` when this probe cannot.
    fn pin_pages(
        &mut self,
        _regions: &[(u64, u64)],
    ) -> Result<Option<Vec<(std::os::fd::OwnedFd, u64)>>> {
        Ok(None)
    }
    /// Reads `buf.len()` bytes of the process's memory at `addr`.
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes the memory of `regions` (address, length; page aligned, in order) to `out` at
    /// its file position without copying through the dumper (the dump parasite); `readable`
    /// are the process's readable mappings (start, end; sorted). Returns the bytes written,
    /// or `None` when this probe cannot (use `read_memory`).
    fn dump_pages(
        &mut self,
        _regions: &[(u64, u64)],
        _readable: &[(u64, u64)],
        _out: &mut std::fs::File,
    ) -> Result<Option<u64>> {
        Ok(None)
    }
}
