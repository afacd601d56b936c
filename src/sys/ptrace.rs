//! Raw ptrace requests (`ptrace(2)`), one function per request. Every failure goes through
//! [`Error::task`], so ESRCH reads "task N died". These functions do not check that the caller
//! is the tracer thread; [`crate::sys::task::SeizedTask`] does.

use super::error::{Error, Result};
use super::regs::{UserRegs, XState};
use nix::errno::Errno;

/// `PTRACE_PEEKSIGINFO_SHARED`: read the process-wide (shared) pending queue.
const PEEKSIGINFO_SHARED: u32 = 1;
/// `NT_PRSTATUS` regset: `user_regs_struct`.
const NT_PRSTATUS: usize = 1;
/// `NT_X86_XSTATE` regset: the XSAVE area in standard format.
const NT_X86_XSTATE: usize = 0x202;
/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// Size of one raw `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;

fn req(
    op: &'static str,
    request: libc::c_uint,
    tid: i32,
    addr: usize,
    data: usize,
) -> Result<libc::c_long> {
    Errno::clear();
    // SAFETY: every caller passes `addr`/`data` as the request documents: either plain integers
    // or pointers to live buffers of the size the kernel writes or reads for that request.
    let ret = unsafe { libc::ptrace(request, tid, addr, data) };
    if ret == -1 {
        let errno = Errno::last();
        // PEEK requests may legitimately return -1; they clear errno first and check it.
        if errno != Errno::UnknownErrno {
            return Err(Error::task(op, tid, errno));
        }
    }
    Ok(ret)
}

/// `PTRACE_O_TRACESYSGOOD`: syscall stops report `SIGTRAP | 0x80`.
pub const PTRACE_O_TRACESYSGOOD: u32 = 1;
/// The signal of a syscall stop of a task seized by [`seize`] (`SIGTRAP | 0x80`).
pub const SYSCALL_STOP_SIG: i32 = libc::SIGTRAP | 0x80;

/// `PTRACE_SEIZE`: attach without stopping the task; `options` are `PTRACE_O_*` bits, to
/// which [`PTRACE_O_TRACESYSGOOD`] is always added.
///
/// TRACESYSGOOD is what makes a remote syscall (sys/remote.rs) survive its tracer's death.
/// A task resumed with `PTRACE_SYSCALL` whose tracer dies before it reaches its syscall stop
/// finds no tracer in `ptrace_stop`, which hands back the stop's exit code, and
/// `ptrace_report_syscall` then sends that code to the task as a signal: SIGTRAP without the
/// option, which stays pending while the remote syscall blocks every signal and kills the
/// task as soon as the gadget's `rt_sigreturn` gives it its own mask back. With the option
/// the code is `SIGTRAP | 0x80`, not a valid signal number: the kernel sends nothing.
pub fn seize(tid: i32, options: u32) -> Result<()> {
    let options = options | PTRACE_O_TRACESYSGOOD;
    req("PTRACE_SEIZE", libc::PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}

/// `PTRACE_INTERRUPT`: make a seized task report a `PTRACE_EVENT_STOP`.
pub fn interrupt(tid: i32) -> Result<()> {
    req("PTRACE_INTERRUPT", libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// `PTRACE_DETACH` delivering `sig` (0: none).
pub fn detach(tid: i32, sig: i32) -> Result<()> {
    req("PTRACE_DETACH", libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_CONT` delivering `sig` (0: none).
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    req("PTRACE_CONT", libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_SYSCALL` delivering `sig` (0: none): resume until the next syscall-entry or
/// syscall-exit stop.
pub fn syscall(tid: i32, sig: i32) -> Result<()> {
    req("PTRACE_SYSCALL", libc::PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_GETSIGINFO`: the raw siginfo of the current stop.
pub fn get_siginfo(tid: i32) -> Result<[u8; SIGINFO_SIZE]> {
    let mut buf = [0u8; SIGINFO_SIZE];
    req(
        "PTRACE_GETSIGINFO",
        libc::PTRACE_GETSIGINFO,
        tid,
        0,
        buf.as_mut_ptr() as usize,
    )?;
    Ok(buf)
}

/// `PTRACE_PEEKDATA`: one word of the task's memory.
pub fn peek(tid: i32, addr: u64) -> Result<u64> {
    let ret = req(
        "PTRACE_PEEKDATA",
        libc::PTRACE_PEEKDATA,
        tid,
        addr as usize,
        0,
    )?;
    Ok(ret as u64)
}

/// `PTRACE_POKEDATA`: write one word of the task's memory (private mappings get a COW copy,
/// read-only and executable ones included).
pub fn poke(tid: i32, addr: u64, word: u64) -> Result<()> {
    req(
        "PTRACE_POKEDATA",
        libc::PTRACE_POKEDATA,
        tid,
        addr as usize,
        word as usize,
    )
    .map(drop)
}

/// `PTRACE_GETREGSET NT_PRSTATUS`: the general registers (`user_regs_struct`).
pub fn get_regs(tid: i32) -> Result<UserRegs> {
    let mut regs = UserRegs::default();
    let mut iov = libc::iovec {
        iov_base: (&mut regs as *mut UserRegs).cast(),
        iov_len: std::mem::size_of::<UserRegs>(),
    };
    req(
        "PTRACE_GETREGSET(NT_PRSTATUS)",
        libc::PTRACE_GETREGSET,
        tid,
        NT_PRSTATUS,
        &mut iov as *mut _ as usize,
    )?;
    if iov.iov_len != std::mem::size_of::<UserRegs>() {
        return Err(Error::Unexpected {
            op: "PTRACE_GETREGSET(NT_PRSTATUS)",
            pid: tid,
            what: format!("kernel returned {} bytes (a 32-bit task?)", iov.iov_len),
        });
    }
    Ok(regs)
}

/// `PTRACE_SETREGSET NT_PRSTATUS`.
pub fn set_regs(tid: i32, regs: &UserRegs) -> Result<()> {
    let mut copy = *regs;
    let mut iov = libc::iovec {
        iov_base: (&mut copy as *mut UserRegs).cast(),
        iov_len: std::mem::size_of::<UserRegs>(),
    };
    req(
        "PTRACE_SETREGSET(NT_PRSTATUS)",
        libc::PTRACE_SETREGSET,
        tid,
        NT_PRSTATUS,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

/// `PTRACE_GETREGSET NT_X86_XSTATE`: the full XSAVE area (standard format), truncated to the
/// length the kernel returned.
pub fn get_xstate(tid: i32) -> Result<XState> {
    let mut buf = vec![0u8; XState::buffer_size()];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    req(
        "PTRACE_GETREGSET(NT_X86_XSTATE)",
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )?;
    buf.truncate(iov.iov_len.min(buf.len()));
    Ok(XState::from_bytes(buf))
}

/// `PTRACE_SETREGSET NT_X86_XSTATE`.
pub fn set_xstate(tid: i32, xstate: &XState) -> Result<()> {
    let mut buf = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    req(
        "PTRACE_SETREGSET(NT_X86_XSTATE)",
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

/// `PTRACE_GETSIGMASK`: the blocked signal mask (bit `n - 1` is signal `n`).
pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut mask = 0u64;
    req(
        "PTRACE_GETSIGMASK",
        libc::PTRACE_GETSIGMASK,
        tid,
        8,
        &mut mask as *mut u64 as usize,
    )?;
    Ok(mask)
}

/// `PTRACE_SETSIGMASK` (SIGKILL and SIGSTOP bits are ignored by the kernel).
pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    let copy = mask;
    req(
        "PTRACE_SETSIGMASK",
        libc::PTRACE_SETSIGMASK,
        tid,
        8,
        &copy as *const u64 as usize,
    )
    .map(drop)
}

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// `PTRACE_PEEKSIGINFO`: all pending signals of one queue, as raw 128-byte `siginfo_t`s, in
/// queue order. `shared` selects the process-wide queue, else the thread's private one.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<[u8; SIGINFO_SIZE]>> {
    const BATCH: usize = 32;
    let mut out = Vec::new();
    loop {
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        let mut buf = [[0u8; SIGINFO_SIZE]; BATCH];
        let n = req(
            "PTRACE_PEEKSIGINFO",
            libc::PTRACE_PEEKSIGINFO,
            tid,
            &args as *const PeekSiginfoArgs as usize,
            buf.as_mut_ptr() as usize,
        )?;
        let n = usize::try_from(n).unwrap_or(0).min(BATCH);
        out.extend_from_slice(&buf[..n]);
        if n < BATCH {
            return Ok(out);
        }
    }
}

/// `struct ptrace_rseq_configuration`: the task's registered rseq area.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    /// Address of the `struct rseq` (0: none registered).
    pub rseq_abi_pointer: u64,
    /// Registered size.
    pub rseq_abi_size: u32,
    /// Abort signature.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// `PTRACE_GET_RSEQ_CONFIGURATION`.
pub fn rseq_config(tid: i32) -> Result<RseqConfig> {
    let mut conf = RseqConfig::default();
    req(
        "PTRACE_GET_RSEQ_CONFIGURATION",
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<RseqConfig>(),
        &mut conf as *mut RseqConfig as usize,
    )?;
    Ok(conf)
}

/// `struct user_desc` (a GDT TLS descriptor) with its flag bits decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserDesc {
    /// GDT index.
    pub entry_number: u32,
    /// Segment base.
    pub base_addr: u32,
    /// Segment limit.
    pub limit: u32,
    /// Flag bits: seg_32bit 0, contents 1-2, read_exec_only 3, limit_in_pages 4,
    /// seg_not_present 5, useable 6, lm 7.
    pub flags: u32,
}

impl UserDesc {
    /// `seg_32bit`.
    pub fn seg_32bit(&self) -> bool {
        self.flags & 1 != 0
    }
    /// `contents` (2 bits).
    pub fn contents(&self) -> u32 {
        (self.flags >> 1) & 3
    }
    /// `read_exec_only`.
    pub fn read_exec_only(&self) -> bool {
        self.flags & (1 << 3) != 0
    }
    /// `limit_in_pages`.
    pub fn limit_in_pages(&self) -> bool {
        self.flags & (1 << 4) != 0
    }
    /// `seg_not_present`.
    pub fn seg_not_present(&self) -> bool {
        self.flags & (1 << 5) != 0
    }
    /// `useable`.
    pub fn useable(&self) -> bool {
        self.flags & (1 << 6) != 0
    }
}

/// First GDT TLS entry on x86 (`GDT_ENTRY_TLS_MIN`); there are three.
pub const GDT_ENTRY_TLS_MIN: u32 = 12;
/// `PTRACE_GET_THREAD_AREA`.
const PTRACE_GET_THREAD_AREA: libc::c_uint = 25;

/// `PTRACE_GET_THREAD_AREA` for the three TLS entries (12, 13, 14).
pub fn tls(tid: i32) -> Result<[UserDesc; 3]> {
    let mut out = [UserDesc::default(); 3];
    for (i, desc) in out.iter_mut().enumerate() {
        let entry = GDT_ENTRY_TLS_MIN + i as u32;
        let mut raw = [0u32; 4];
        req(
            "PTRACE_GET_THREAD_AREA",
            PTRACE_GET_THREAD_AREA,
            tid,
            entry as usize,
            raw.as_mut_ptr() as usize,
        )?;
        *desc = UserDesc {
            entry_number: raw[0],
            base_addr: raw[1],
            limit: raw[2],
            flags: raw[3],
        };
    }
    Ok(out)
}

/// `get_robust_list(tid)`: the robust futex list head and its length (needs ptrace access).
pub fn robust_list(tid: i32) -> Result<(u64, u64)> {
    let mut head = 0u64;
    let mut len = 0usize;
    // SAFETY: the kernel writes one pointer to `head` and one size_t to `len`, both live.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    super::errno::check(ret).map_err(|errno| Error::task("get_robust_list", tid, errno))?;
    Ok((head, len as u64))
}
