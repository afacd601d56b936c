//! ptrace primitives (seize, registers, XSAVE area, signal mask, rseq configuration) and the
//! syscall-injection protocol below (used by the dump engine), plus small process helpers.
//!
//! Syscall injection protocol (no code of ours is needed in the tracee):
//!
//! ```text
//! tracee stopped ──set regs: ip = address of a `syscall` insn (0f 05, found in the vdso),
//!                  ax = nr, di/si/dx/r10/r8/r9 = args, orig_ax = -1 (no restart)──▶
//! PTRACE_SINGLESTEP ──kernel runs the syscall, traps after it──▶ stopped, ax = result
//! ```
//!
//! Every call wraps ptrace(2) (see its man page); errors are the raw [`Errno`].

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use libc::user_regs_struct as Regs;

/// `NT_X86_XSTATE`: the regset with the whole XSAVE area (UABI, non-compacted).
const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_SETSIGMASK` (linux/ptrace.h).
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
/// `PTRACE_GET_RSEQ_CONFIGURATION` (linux/ptrace.h, Linux 5.13).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfig {
    /// Registered `struct rseq` address (0: none).
    pub abi_pointer: u64,
    /// Its registered length.
    pub abi_size: u32,
    /// Abort signature.
    pub signature: u32,
    /// Flags.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// `ptrace(PTRACE_SEIZE, tid, 0, options)`.
pub fn seize(tid: i32, options: ptrace::Options) -> Result<(), Errno> {
    ptrace::seize(Pid::from_raw(tid), options)
}

/// `ptrace(PTRACE_INTERRUPT, tid)`.
pub fn interrupt(tid: i32) -> Result<(), Errno> {
    ptrace::interrupt(Pid::from_raw(tid))
}

/// `waitpid(tid, __WALL)`.
pub fn wait(tid: i32) -> Result<WaitStatus, Errno> {
    waitpid(Pid::from_raw(tid), Some(WaitPidFlag::__WALL))
}

/// `PTRACE_GETREGS`.
pub fn get_regs(tid: i32) -> Result<Regs, Errno> {
    ptrace::getregs(Pid::from_raw(tid))
}

/// `PTRACE_SETREGS`.
pub fn set_regs(tid: i32, regs: Regs) -> Result<(), Errno> {
    ptrace::setregs(Pid::from_raw(tid), regs)
}

/// `PTRACE_SINGLESTEP` with no signal.
pub fn single_step(tid: i32) -> Result<(), Errno> {
    ptrace::step(Pid::from_raw(tid), None)
}

/// `PTRACE_CONT` with no signal.
pub fn cont(tid: i32) -> Result<(), Errno> {
    ptrace::cont(Pid::from_raw(tid), None)
}

/// `PTRACE_DETACH` with no signal: the task runs on.
pub fn detach(tid: i32) -> Result<(), Errno> {
    ptrace::detach(Pid::from_raw(tid), None)
}

/// `PTRACE_GETEVENTMSG` (e.g. the new TID after `PTRACE_EVENT_CLONE`).
pub fn event_msg(tid: i32) -> Result<i64, Errno> {
    ptrace::getevent(Pid::from_raw(tid))
}

/// `PTRACE_GETREGSET(NT_X86_XSTATE)`: the task's XSAVE area (its length is the kernel's
/// user xstate size, at most `max` bytes).
pub fn get_xstate(tid: i32, max: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; max];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov points at `buf` (valid for iov_len bytes, alive across the call); the
    // kernel writes at most iov_len bytes and updates iov_len.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut libc::iovec,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// `PTRACE_SETREGSET(NT_X86_XSTATE)` with a full XSAVE area as returned by [`get_xstate`].
pub fn set_xstate(tid: i32, area: &[u8]) -> Result<(), Errno> {
    let mut iov = libc::iovec {
        iov_base: area.as_ptr() as *mut libc::c_void,
        iov_len: area.len(),
    };
    // SAFETY: iov describes `area`, alive across the call; the kernel only reads it.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut libc::iovec,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `PTRACE_SETSIGMASK`: the blocked-signal mask of a stopped tracee (bit n-1 = signal n).
pub fn set_sigmask(tid: i32, mask: u64) -> Result<(), Errno> {
    let m = mask;
    // SAFETY: addr is the mask size (8) and data points at a u64 alive across the call.
    let r = unsafe {
        libc::ptrace(
            PTRACE_SETSIGMASK,
            tid,
            std::mem::size_of::<u64>(),
            &m as *const u64,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `PTRACE_GET_RSEQ_CONFIGURATION`: the tracee's rseq registration.
pub fn rseq_config(tid: i32) -> Result<RseqConfig, Errno> {
    let mut conf = RseqConfig::default();
    // SAFETY: addr is the size of `conf`, data points at it; the kernel writes at most that.
    let r = unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of::<RseqConfig>(),
            &mut conf as *mut RseqConfig,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(conf)
}

/// `prlimit64(pid, resource, &{cur, max}, NULL)`: set another process's limit.
pub fn set_rlimit(pid: i32, resource: u32, cur: u64, max: u64) -> Result<(), Errno> {
    let lim = libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: `lim` is a valid rlimit64 alive across the call; the old-value pointer is NULL.
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            &lim,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `prlimit64(pid, resource, NULL, &old)`: read a process's limit as (cur, max).
pub fn get_rlimit(pid: i32, resource: u32) -> Result<(u64, u64), Errno> {
    let mut lim = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the new-value pointer is NULL; `lim` is valid for the kernel to write.
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            std::ptr::null(),
            &mut lim,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The address of this process's vdso (`getauxval(AT_SYSINFO_EHDR)`), 0 if none.
pub fn own_vdso() -> u64 {
    // SAFETY: getauxval only reads the saved auxiliary vector.
    unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) }
}

/// `prctl(PR_SET_PDEATHSIG, sig)` for the calling task.
pub fn set_pdeathsig(sig: i32) -> Result<(), Errno> {
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `_exit(code)`: leave without running destructors or atexit handlers (a forked task).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Ends the calling (forked) process the way a zombie of the images ended: `status` is its
/// recorded wait status (`tc.exit_code`). A signal death is repeated with the signal at its
/// default action and unblocked (the restorer's own dispositions, e.g. an ignored SIGPIPE,
/// are inherited), the dumpable flag off so no core file is written; a signal whose default
/// action does not kill becomes SIGABRT (as CRIU does). Otherwise `_exit(status >> 8)`.
pub fn exit_like(status: u32) -> ! {
    let sig = (status & 0x7f) as i32;
    if sig != 0 {
        let _ = nix::sys::prctl::set_dumpable(false);
        let kills = !matches!(sig, 17..=23 | 28) && sig <= 64;
        let sig = if kills { sig } else { libc::SIGABRT };
        for s in (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
            // SAFETY: a zeroed sigaction is SIG_DFL with no flags; no handler of ours runs.
            unsafe {
                let sa: libc::sigaction = std::mem::zeroed();
                libc::sigaction(s, &sa, std::ptr::null_mut());
            }
        }
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        );
        // SAFETY: sends a signal to this process only (raw: real-time signals included).
        unsafe { libc::kill(libc::getpid(), sig) };
    }
    exit_now(((status >> 8) & 0xff) as i32)
}

/// Offset of XSAVE component `bit` in the standard (non-compacted) format: `CPUID(0xD, bit).EBX`.
pub fn xfeature_offset(bit: u32) -> Option<usize> {
    let r = core::arch::x86_64::__cpuid_count(0xd, bit);
    (r.eax != 0).then_some(r.ebx as usize)
}

/// The XSAVE features the OS enabled (XCR0), or 0x3 (x87|SSE) without OSXSAVE.
pub fn xcr0() -> u64 {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 27) == 0 {
        return 0x3;
    }
    #[target_feature(enable = "xsave")]
    fn read() -> u64 {
        // SAFETY: XGETBV(0) is allowed in user mode once the OS set CR4.OSXSAVE, which
        // CPUID.1:ECX.OSXSAVE (checked by the caller) reports.
        unsafe { core::arch::x86_64::_xgetbv(0) }
    }
    // SAFETY: the xsave target feature is present: OSXSAVE implies XSAVE support.
    unsafe { read() }
}
