//! An interim ptrace backend: seizes every thread of the tree with `PTRACE_SEIZE` +
//! `PTRACE_INTERRUPT` (through `crate::sys::tracee`), reads registers, the XSAVE area and the
//! rseq registration, and runs the few system calls CRIU's parasite would run (signal
//! dispositions, itimers, POSIX timer values, sigaltstack, robust list, tid address...) one at
//! a time inside the stopped thread, with no code of ours in the task:
//!
//! ```text
//!  save regs, mask │ mask := all signals (nothing is delivered meanwhile)
//!  for each call   │ regs := {ip = a `syscall` insn in the task's vdso, ax = nr, args,
//!                  │         orig_ax = -1}; PTRACE_SINGLESTEP; wait SIGTRAP; result = ax
//!                  │ output structs land in a 256-byte scratch below the red zone
//!                  │ (sp - 1024), read and restored through /proc/PID/mem
//!  restore regs, mask
//! ```
//! Pending signals come from PTRACE_PEEKSIGINFO and the GDT TLS slots from
//! PTRACE_GET_THREAD_AREA (`crate::sys::ptrace`). The full
//! ptrace/parasite layer (`dump-infra`) replaces this backend when it lands.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;

use super::error::{DumpError, Result};
use super::freeze::{Backend, CgroupFreeze, FrozenTree};
use super::options::DumpOptions;
use super::probe::{
    GpRegs, Itimer, PosixTimerValue, ProcessProbe, SigAction, TaskProbe, ThreadProbe, TlsDesc,
};
use crate::proc;
use crate::sys::tracee;

const SYS_BRK: i64 = 12;
const SYS_RT_SIGACTION: i64 = 13;
const SYS_GETITIMER: i64 = 36;
const SYS_SIGALTSTACK: i64 = 131;
const SYS_PRCTL: i64 = 157;
const SYS_TIMER_GETTIME: i64 = 224;
const SYS_TIMER_GETOVERRUN: i64 = 225;
const SYS_GET_ROBUST_LIST: i64 = 274;
const PR_GET_PDEATHSIG: u64 = 2;
const PR_GET_DUMPABLE: u64 = 3;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_GET_TID_ADDRESS: u64 = 40;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_GET_SECUREBITS: u64 = 27;
/// Kernel restart codes a syscall interrupted by the stop may hold in ax.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;
/// Largest XSAVE area we accept.
const XSAVE_MAX: usize = 1 << 14;
/// Rounds of "list threads, seize the new ones" before giving up on a tree that keeps growing.
const MAX_ROUNDS: usize = 64;

fn perr(step: &'static str, tid: i32, what: &str, e: Errno) -> DumpError {
    DumpError::new(step, tid, Some(e as i32), what.to_string())
}

/// Seizes with ptrace (see the module doc); freezes `--freeze-cgroup` first when given.
#[derive(Debug, Default)]
pub struct PtraceBackend;

/// A tree held by ptrace.
pub struct PtraceFrozen {
    /// Seized threads: tid -> pid.
    seized: BTreeMap<i32, i32>,
    /// Address of a `syscall` instruction in each process's vdso.
    gadgets: BTreeMap<i32, u64>,
    mem: BTreeMap<i32, File>,
    freeze: Option<CgroupFreeze>,
    released: bool,
}

/// Waits until `tid` is in the interrupt stop; false if it exited. A signal-delivery stop
/// that comes first gets its signal back (PTRACE_CONT with it), then we wait again: the
/// pending interrupt traps right after, and the task has seen its signal as it would have.
fn wait_stop(tid: i32) -> Result<bool> {
    for _ in 0..1024 {
        match tracee::wait(tid) {
            Ok(WaitStatus::PtraceEvent(..)) => return Ok(true),
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => return Ok(false),
            Ok(WaitStatus::Stopped(_, sig)) => {
                crate::sys::ptrace::cont(tid, sig as i32)
                    .map_err(|e| DumpError::sys("seize", tid, e))?;
            }
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return Ok(false),
            Err(e) => return Err(perr("seize", tid, "wait", e)),
        }
    }
    Err(DumpError::new(
        "seize",
        tid,
        Some(libc::EAGAIN),
        "signals keep arriving before the interrupt stop",
    ))
}

impl Backend for PtraceBackend {
    fn freeze(&mut self, opts: &DumpOptions) -> Result<Box<dyn FrozenTree>> {
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(10));
        let mut f = PtraceFrozen {
            seized: BTreeMap::new(),
            gadgets: BTreeMap::new(),
            mem: BTreeMap::new(),
            freeze: match &opts.freeze_cgroup {
                Some(cg) => Some(CgroupFreeze::freeze(cg, timeout)?),
                None => None,
            },
            released: false,
        };
        // On error, dropping `f` detaches what was seized and thaws.
        for _ in 0..MAX_ROUNDS {
            let tree = super::tree::collect(opts.pid)?;
            let mut new = Vec::new();
            for p in tree.iter().filter(|p| !p.zombie) {
                for &t in &p.threads {
                    if !f.seized.contains_key(&t) {
                        new.push((t, p.pid));
                    }
                }
            }
            if new.is_empty() {
                return Ok(Box::new(f));
            }
            for (t, pid) in new {
                match tracee::seize(t, nix::sys::ptrace::Options::empty())
                    .and_then(|_| tracee::interrupt(t))
                {
                    Ok(()) => {
                        f.seized.insert(t, pid);
                    }
                    // A thread that exited between listing and seizing.
                    Err(Errno::ESRCH) if t != opts.pid => continue,
                    Err(e) => return Err(perr("seize", t, "PTRACE_SEIZE/INTERRUPT", e)),
                }
                if f.freeze.is_none() && !wait_stop(t)? {
                    f.seized.remove(&t);
                }
            }
            if let Some(fr) = &mut f.freeze {
                // Frozen tasks stop in the interrupt trap once thawed; new threads cannot
                // appear while frozen, so one round seizes everything.
                fr.thaw()?;
                let tids: Vec<i32> = f.seized.keys().copied().collect();
                for t in tids {
                    if !wait_stop(t)? {
                        f.seized.remove(&t);
                    }
                }
                f.freeze = None;
            }
        }
        Err(DumpError::new(
            "seize",
            opts.pid,
            Some(libc::EAGAIN),
            "the tree keeps creating threads",
        ))
    }
}

impl PtraceFrozen {
    fn mem(&mut self, pid: i32) -> Result<&File> {
        use std::collections::btree_map::Entry;
        match self.mem.entry(pid) {
            Entry::Occupied(o) => Ok(o.into_mut()),
            Entry::Vacant(v) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(proc::path(pid, "mem"))
                    .map_err(|e| DumpError::io("core", pid, "open /proc/PID/mem", e))?;
                Ok(v.insert(f))
            }
        }
    }

    fn gadget(&mut self, pid: i32) -> Result<u64> {
        if let Some(&g) = self.gadgets.get(&pid) {
            return Ok(g);
        }
        let maps = proc::maps::read_smaps(pid).map_err(|e| DumpError::proc("core", pid, e))?;
        let vdso = maps
            .iter()
            .find(|v| v.path == "[vdso]")
            .ok_or_else(|| {
                DumpError::new(
                    "core",
                    pid,
                    Some(libc::ENOENT),
                    "no [vdso] to run system calls from",
                )
            })?
            .clone();
        let mut code = vec![0u8; vdso.len().min(1 << 16) as usize];
        self.mem(pid)?
            .read_exact_at(&mut code, vdso.start)
            .map_err(|e| DumpError::io("core", pid, "read vdso", e))?;
        let off = code
            .windows(2)
            .position(|w| w == [0x0f, 0x05])
            .ok_or_else(|| {
                DumpError::new(
                    "core",
                    pid,
                    Some(libc::ENOENT),
                    "no syscall instruction in the vdso",
                )
            })?;
        let g = vdso.start + off as u64;
        self.gadgets.insert(pid, g);
        Ok(g)
    }

    /// Runs `calls` in thread `tid` with all signals blocked; each call gets the scratch
    /// address and returns (nr, args); `read` gets each result with the scratch bytes.
    fn inject<T>(
        &mut self,
        pid: i32,
        tid: i32,
        calls: &[(i64, [u64; 6])],
        mut read: impl FnMut(usize, i64, &[u8]) -> T,
    ) -> Result<Vec<T>> {
        let gadget = self.gadget(pid)?;
        let saved = tracee::get_regs(tid).map_err(|e| perr("core", tid, "PTRACE_GETREGS", e))?;
        let mask = proc::status::read_thread(pid, tid)
            .and_then(|s| s.sig_blk())
            .map_err(|e| DumpError::proc("core", tid, e))?;
        let scratch = (saved.rsp - 1024) & !15;
        let mut orig = [0u8; 256];
        self.mem(pid)?
            .read_exact_at(&mut orig, scratch)
            .map_err(|e| DumpError::io("core", tid, "read scratch below the stack pointer", e))?;
        tracee::set_sigmask(tid, u64::MAX)
            .map_err(|e| perr("core", tid, "PTRACE_SETSIGMASK", e))?;
        let mut out = Vec::with_capacity(calls.len());
        let mut result = Ok(());
        for (i, &(nr, args)) in calls.iter().enumerate() {
            let mut r = saved;
            r.rip = gadget;
            r.rax = nr as u64;
            r.orig_rax = u64::MAX;
            r.rdi = if args[0] == u64::MAX - 1 {
                scratch
            } else {
                args[0]
            };
            r.rsi = if args[1] == u64::MAX - 1 {
                scratch
            } else {
                args[1]
            };
            r.rdx = if args[2] == u64::MAX - 1 {
                scratch
            } else if args[2] == u64::MAX - 2 {
                scratch + 8
            } else {
                args[2]
            };
            r.r10 = args[3];
            r.r8 = args[4];
            r.r9 = args[5];
            let step = tracee::set_regs(tid, r)
                .and_then(|_| tracee::single_step(tid))
                .map_err(|e| perr("core", tid, "inject syscall", e));
            if let Err(e) = step {
                result = Err(e);
                break;
            }
            loop {
                match tracee::wait(tid) {
                    Ok(WaitStatus::Stopped(_, nix::sys::signal::Signal::SIGTRAP)) => break,
                    Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => {
                        return Err(DumpError::new(
                            "core",
                            tid,
                            Some(libc::ESRCH),
                            "died during a system call",
                        ))
                    }
                    Ok(_) | Err(Errno::EINTR) => {
                        // A job-control or other stop: step again.
                        let _ = tracee::single_step(tid);
                    }
                    Err(e) => return Err(perr("core", tid, "wait after syscall", e)),
                }
            }
            let after =
                tracee::get_regs(tid).map_err(|e| perr("core", tid, "PTRACE_GETREGS", e))?;
            let mut buf = [0u8; 256];
            self.mem(pid)?
                .read_exact_at(&mut buf, scratch)
                .map_err(|e| DumpError::io("core", tid, "read syscall output", e))?;
            out.push(read(i, after.rax as i64, &buf));
        }
        // Put everything back, even after a failure.
        let _ = self.mem(pid).map(|m| m.write_all_at(&orig, scratch));
        tracee::set_regs(tid, saved).map_err(|e| perr("core", tid, "restore registers", e))?;
        tracee::set_sigmask(tid, mask).map_err(|e| perr("core", tid, "restore signal mask", e))?;
        result.map(|_| out)
    }
}

const SCRATCH: u64 = u64::MAX - 1;
const SCRATCH_8: u64 = u64::MAX - 2;

fn le64(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

/// The registers as the image stores them: a syscall interrupted by the stop is set up to
/// restart (ip back to the `syscall` insn, ax = nr) or to return EINTR, as the kernel would.
pub fn regs_for_image(r: &tracee::Regs) -> GpRegs {
    let mut ip = r.rip;
    let mut ax = r.rax;
    if (r.orig_rax as i64) >= 0 {
        match -(r.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                ip -= 2;
                ax = r.orig_rax;
            }
            ERESTART_RESTARTBLOCK => ax = (-(libc::EINTR as i64)) as u64,
            _ => {}
        }
    }
    GpRegs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

impl TaskProbe for PtraceFrozen {
    fn thread(&mut self, pid: i32, tid: i32) -> Result<ThreadProbe> {
        let regs = tracee::get_regs(tid).map_err(|e| perr("core", tid, "PTRACE_GETREGS", e))?;
        let xs = tracee::get_xstate(tid, XSAVE_MAX)
            .map_err(|e| perr("core", tid, "PTRACE_GETREGSET xstate", e))?;
        let rseq = tracee::rseq_config(tid)
            .map_err(|e| perr("core", tid, "PTRACE_GET_RSEQ_CONFIGURATION", e))?;
        let calls = [
            (SYS_SIGALTSTACK, [0, SCRATCH, 0, 0, 0, 0]),
            (SYS_PRCTL, [PR_GET_TID_ADDRESS, SCRATCH, 0, 0, 0, 0]),
            (SYS_GET_ROBUST_LIST, [0, SCRATCH, SCRATCH_8, 0, 0, 0]),
            (SYS_PRCTL, [PR_GET_PDEATHSIG, SCRATCH, 0, 0, 0, 0]),
            (SYS_PRCTL, [PR_GET_SECUREBITS, 0, 0, 0, 0, 0]),
        ];
        let res = self.inject(pid, tid, &calls, |i, ret, b| match i {
            0 => (ret, le64(b, 0), le64(b, 16), le64(b, 8) as u32),
            1 => (ret, le64(b, 0), 0, 0),
            2 => (ret, le64(b, 0), le64(b, 8), 0),
            4 => (ret, ret.max(0) as u64, 0, 0),
            _ => (ret, le64(b, 0) & 0xffff_ffff, 0, 0),
        })?;
        let ok = |i: usize| res[i].0 >= 0;
        Ok(ThreadProbe {
            regs: regs_for_image(&regs),
            fpregs: super::xsave::fpregs_from_xsave(&xs),
            tls: crate::sys::ptrace::tls(tid)
                .map_err(|e| DumpError::sys("core", tid, e))?
                .iter()
                .map(|u| TlsDesc {
                    entry_number: u.entry_number,
                    base_addr: u.base_addr,
                    limit: u.limit,
                    seg_32bit: u.seg_32bit(),
                    contents: u.contents(),
                    read_exec_only: u.read_exec_only(),
                    limit_in_pages: u.limit_in_pages(),
                    seg_not_present: u.seg_not_present(),
                    usable: u.useable(),
                })
                .collect(),
            clear_tid_addr: if ok(1) { res[1].1 } else { 0 },
            futex_rla: if ok(2) { res[2].1 } else { 0 },
            futex_rla_len: if ok(2) { res[2].2 as u32 } else { 0 },
            sas: if ok(0) {
                (res[0].1, res[0].2, res[0].3)
            } else {
                (0, 0, libc::SS_DISABLE as u32)
            },
            rseq: (rseq.abi_pointer != 0).then_some((
                rseq.abi_pointer,
                rseq.abi_size,
                rseq.signature,
            )),
            pending: crate::sys::ptrace::peek_siginfo(tid, false)
                .map_err(|e| DumpError::sys("core", tid, e))?
                .iter()
                .map(|s| s.to_vec())
                .collect(),
            pdeath_sig: if ok(3) { res[3].1 as u32 } else { 0 },
            secbits: if ok(4) { res[4].1 as u32 } else { 0 },
        })
    }

    fn process(&mut self, pid: i32) -> Result<ProcessProbe> {
        let timers = proc::timers::read(pid).map_err(|e| DumpError::proc("core", pid, e))?;
        let mut calls: Vec<(i64, [u64; 6])> = (1..=64u64)
            .map(|s| (SYS_RT_SIGACTION, [s, 0, SCRATCH, 8, 0, 0]))
            .collect();
        for w in 0..3u64 {
            calls.push((SYS_GETITIMER, [w, SCRATCH, 0, 0, 0, 0]));
        }
        for t in &timers {
            calls.push((SYS_TIMER_GETTIME, [t.id as u64, SCRATCH, 0, 0, 0, 0]));
            calls.push((SYS_TIMER_GETOVERRUN, [t.id as u64, 0, 0, 0, 0, 0]));
        }
        calls.push((SYS_PRCTL, [PR_GET_CHILD_SUBREAPER, SCRATCH, 0, 0, 0, 0]));
        calls.push((SYS_PRCTL, [PR_GET_DUMPABLE, 0, 0, 0, 0, 0]));
        calls.push((SYS_PRCTL, [PR_GET_THP_DISABLE, 0, 0, 0, 0, 0]));
        calls.push((SYS_BRK, [0, 0, 0, 0, 0, 0]));
        let res = self.inject(pid, pid, &calls, |_, ret, b| {
            (ret, [le64(b, 0), le64(b, 8), le64(b, 16), le64(b, 24)])
        })?;
        let mut p = ProcessProbe {
            shared_pending: crate::sys::ptrace::peek_siginfo(pid, true)
                .map_err(|e| DumpError::sys("core", pid, e))?
                .iter()
                .map(|s| s.to_vec())
                .collect(),
            ..Default::default()
        };
        for (ret, w) in res.iter().take(64) {
            if *ret == 0 {
                p.sigactions.push(SigAction {
                    handler: w[0],
                    flags: w[1],
                    restorer: w[2],
                    mask: w[3],
                });
            } else {
                p.sigactions.push(SigAction::default());
            }
        }
        for k in 0..3 {
            let (ret, w) = res[64 + k];
            if ret == 0 {
                p.itimers[k] = Itimer {
                    isec: w[0],
                    iusec: w[1],
                    vsec: w[2],
                    vusec: w[3],
                };
            }
        }
        let mut i = 67;
        for t in &timers {
            let (ret, w) = res[i];
            let (ovr, _) = res[i + 1];
            if ret == 0 {
                p.posix_timers.push(PosixTimerValue {
                    id: t.id,
                    overrun: ovr.max(0) as i32,
                    isec: w[0],
                    insec: w[1],
                    vsec: w[2],
                    vnsec: w[3],
                });
            }
            i += 2;
        }
        p.child_subreaper = res[i].0 == 0 && res[i].1[0] & 0xffff_ffff != 0;
        p.dumpable = res[i + 1].0.max(0) as u32;
        p.thp_disabled = res[i + 2].0 > 0;
        p.brk = res[i + 3].0 as u64;
        Ok(p)
    }

    fn dump_pages(
        &mut self,
        pid: i32,
        regions: &[(u64, u64)],
        out: &mut File,
    ) -> Result<Option<u64>> {
        super::parasite_pages::dump(pid, regions, out)
    }

    fn read_memory(&mut self, pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem(pid)?.read_exact_at(buf, addr).map_err(|e| {
            DumpError::io(
                "pages",
                pid,
                &format!("read memory at {addr:#x}+{:#x}", buf.len()),
                e,
            )
        })
    }
}

impl PtraceFrozen {
    fn detach_all(&mut self) -> Result<()> {
        let mut first = Ok(());
        for (&t, _) in self.seized.iter() {
            match tracee::detach(t) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    if first.is_ok() {
                        first = Err(perr("release", t, "PTRACE_DETACH", e));
                    }
                }
            }
        }
        self.released = true;
        first
    }
}

impl Drop for PtraceFrozen {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.detach_all() {
                tracing::error!("{e}");
            }
        }
    }
}

impl FrozenTree for PtraceFrozen {
    fn kill(&mut self, pids: &[i32]) -> Result<()> {
        super::freeze::kill_all(pids)
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        let r = self.detach_all();
        if let Some(mut f) = self.freeze.take() {
            f.thaw()?;
        }
        r
    }
}
