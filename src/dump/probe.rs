//! What the dump needs from inside the tasks (ptrace and the parasite), as plain data.
//!
//! The engine reads everything /proc offers itself (see `crate::proc`); the rest (registers,
//! signal dispositions, timers, sigaltstack, robust futex list, rseq, pending signals, memory
//! contents) comes through a [`TaskProbe`], implemented over seized tasks and the injected
//! parasite. Tests use a recording double.

use super::error::Result;

/// General purpose registers as the image stores them (x86-64 `user_regs_struct` order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct GpRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
    pub flags: u64,
    pub sp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadProbe {
    pub regs: GpRegs,
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
    /// `PR_GET_SECUREBITS` of the thread.
    pub secbits: u32,
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
    /// `brk(0)` in the task.
    pub brk: u64,
}

/// Access to a frozen tree's insides.
pub trait TaskProbe {
    /// State of thread `tid` of process `pid`.
    fn thread(&mut self, pid: i32, tid: i32) -> Result<ThreadProbe>;
    /// State of process `pid`.
    fn process(&mut self, pid: i32) -> Result<ProcessProbe>;
    /// Reads `buf.len()` bytes of `pid`'s memory at `addr`.
    fn read_memory(&mut self, pid: i32, addr: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes the memory of `regions` (address, length; page aligned, in order) of `pid` to
    /// `out` at its file position without copying through the dumper (the dump parasite);
    /// returns the bytes written, or `None` when this probe cannot (use `read_memory`).
    fn dump_pages(
        &mut self,
        _pid: i32,
        _regions: &[(u64, u64)],
        _out: &mut std::fs::File,
    ) -> Result<Option<u64>> {
        Ok(None)
    }
}
