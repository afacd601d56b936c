//! The final switch of each thread: an `rt_sigframe` holding the saved registers, FPU state,
//! sigmask and sigaltstack, entered with rt_sigreturn.
//!
//! ```text
//! target stack of the thread (below the saved sp, like a signal frame):
//!   saved sp
//!   - 128 bytes red zone
//!   xsave image                 64-byte aligned, fpstate of the frame
//!   rt_sigframe                 pretcode = sigreturn gadget | uc (flags, link, stack,
//!                               mcontext, sigmask) | siginfo (unused)
//! ```
//!
//! Leaving the area without running code in it once it is gone (`abi` step 10): every thread
//! rt_sigreturns into an intermediate frame `F0` (in the area; consumed by the kernel before
//! anything is unmapped) whose rip is a `syscall; ret` gadget and whose rsp is the final
//! frame `F` (its first word, pretcode, is the `mov $15, %rax; syscall` gadget):
//!
//! ```text
//! thread i > 0: F0 -> gadget: futex(&park, FUTEX_WAIT, 0)   ... woken by the leader
//!                     ret -> sigreturn gadget -> F (final state)
//! leader:       wakes parked threads until all nr_threads - 1 were woken, then
//!               F0 -> gadget: munmap(area) ; ret -> sigreturn gadget -> F
//! ```

use crate::abi::{step, TaskArgs, ThreadArgs, VmaArgs};
use crate::mem;
use crate::sys::{self, sc};

#[repr(C)]
#[derive(Default)]
struct SigContext {
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    di: u64,
    si: u64,
    bp: u64,
    bx: u64,
    dx: u64,
    ax: u64,
    cx: u64,
    sp: u64,
    ip: u64,
    flags: u64,
    cs: u16,
    gs: u16,
    fs: u16,
    ss: u16,
    err: u64,
    trapno: u64,
    oldmask: u64,
    cr2: u64,
    fpstate: u64,
    reserved: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct UContext {
    flags: u64,
    link: u64,
    ss_sp: u64,
    ss_flags: u32,
    _pad: u32,
    ss_size: u64,
    mc: SigContext,
    sigmask: u64,
}

#[repr(C)]
struct RtSigframe {
    pretcode: u64,
    uc: UContext,
    info: [u8; 128],
}

const _: () = assert!(core::mem::size_of::<RtSigframe>() == 440);

const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
const SS_DISABLE: u32 = 2;
const PROT_WRITE: u32 = 2;
const MAP_GROWSDOWN: u32 = 0x100;
const STACK_GUARD_GAP: u64 = 256 * 4096 + 4096;
const RED_ZONE: u64 = 128;
const USER_CS: u16 = 0x33;
const USER_DS: u16 = 0x2b;

/// Where the final frame and the xsave copy of a thread go: `(frame, fpstate)`.
pub struct Placement {
    pub frame: u64,
    pub fpstate: u64,
}

fn place_below(sp: u64, fpu_size: u64) -> Placement {
    let top = sp - RED_ZONE;
    let fpstate = (top - fpu_size) & !63;
    let frame = ((fpstate - core::mem::size_of::<RtSigframe>() as u64) & !15) - 8;
    Placement { frame, fpstate }
}

fn writable(v: &VmaArgs) -> bool {
    v.prot & PROT_WRITE != 0 && v.kind != crate::abi::VMA_SKIP
}

/// The frame on the thread's own target stack, if that memory is a writable target VMA.
pub fn place_on_target_stack(a: &TaskArgs, t: &ThreadArgs) -> Option<Placement> {
    let sp = t.regs.sp;
    if sp < 4096 + RED_ZONE {
        return None;
    }
    let p = place_below(sp, u64::from(t.fpu_size));
    if mem::vma_covering(a, p.frame, sp).is_some_and(writable) {
        return Some(p);
    }
    // A MAP_GROWSDOWN stack grows on the write (as for a signal frame), if nothing else lies
    // within the kernel's stack guard gap (256 pages by default) below the new start.
    let v = mem::vma_covering(a, sp - 1, sp).filter(|v| writable(v) && v.flags & MAP_GROWSDOWN != 0)?;
    let below = mem::vmas(a).iter().filter(|o| o.end <= v.start).map(|o| o.end).max().unwrap_or(0);
    (p.frame & !4095 >= below + STACK_GUARD_GAP).then_some(p)
}

/// The frame on the thread's area stack, below `below` (fallback: the area stays mapped).
pub fn place_in_area(below: u64, t: &ThreadArgs) -> Placement {
    place_below(below, u64::from(t.fpu_size))
}

/// Writes the final frame of `t` at `p` (pretcode = `sigreturn_gadget`).
pub fn write_final(t: &ThreadArgs, p: &Placement, sigreturn_gadget: u64) {
    let r = &t.regs;
    let mut fpstate = 0;
    if t.fpu_size != 0 {
        // SAFETY: p.fpstate has fpu_size writable bytes (placement checked against a
        // writable VMA or inside the area) and t.fpu holds the engine's xsave image.
        unsafe { core::ptr::copy_nonoverlapping(t.fpu as *const u8, p.fpstate as *mut u8, t.fpu_size as usize) };
        fpstate = p.fpstate;
    }
    let uc = UContext {
        flags: if fpstate != 0 { UC_FP_XSTATE } else { 0 } | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
        link: 0,
        ss_sp: t.sas_sp,
        ss_flags: t.sas_flags,
        _pad: 0,
        ss_size: t.sas_size,
        mc: SigContext {
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            di: r.di,
            si: r.si,
            bp: r.bp,
            bx: r.bx,
            dx: r.dx,
            ax: r.ax,
            cx: r.cx,
            sp: r.sp,
            ip: r.ip,
            flags: r.flags,
            cs: if r.cs != 0 { r.cs as u16 } else { USER_CS },
            ss: if r.ss != 0 { r.ss as u16 } else { USER_DS },
            fpstate,
            ..Default::default()
        },
        sigmask: t.blocked,
    };
    let frame = RtSigframe { pretcode: sigreturn_gadget, uc, info: [0; 128] };
    // SAFETY: p.frame has room for an RtSigframe in writable memory (see place_*).
    unsafe { core::ptr::write_unaligned(p.frame as *mut RtSigframe, frame) };
}

/// Enters rt_sigreturn with the frame at `frame` (`rsp = frame + 8`).
///
/// # Safety
/// `frame` must point to a complete, readable RtSigframe; the calling context is abandoned.
unsafe fn sigreturn(frame: u64) -> ! {
    // SAFETY: per the contract; the kernel replaces every register from the frame.
    unsafe {
        core::arch::asm!(
            "mov rsp, {f}",
            "syscall",
            "ud2",
            f = in(reg) frame + 8,
            in("rax") sys::RT_SIGRETURN,
            options(noreturn),
        )
    }
}

/// Enters the final frame directly from the area (fallback: the area stays mapped).
pub fn jump_direct(p: &Placement) -> ! {
    // SAFETY: write_final filled the frame at p.frame.
    unsafe { sigreturn(p.frame) }
}

/// Leaves through the gadgets: rt_sigreturn into F0 { rip = syscall_ret, rsp = frame, args }.
pub fn jump_via_gadget(syscall_ret: u64, frame: u64, nr: usize, args: [u64; 3]) -> ! {
    let f0 = RtSigframe {
        pretcode: 0,
        uc: UContext {
            flags: UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS,
            ss_flags: SS_DISABLE,
            mc: SigContext {
                ax: nr as u64,
                di: args[0],
                si: args[1],
                dx: args[2],
                sp: frame,
                ip: syscall_ret,
                flags: 0x202,
                cs: USER_CS,
                ss: USER_DS,
                ..Default::default()
            },
            sigmask: !0,
            ..Default::default()
        },
        info: [0; 128],
    };
    // SAFETY: f0 lives on this thread's area stack, complete, until the kernel consumed it.
    unsafe { sigreturn(&f0 as *const RtSigframe as u64) }
}

/// Leader: wakes the parked threads until `n` were woken (they then run outside the area).
pub fn release_parked(park: &core::sync::atomic::AtomicU32, n: usize) {
    let mut woken = 0;
    while woken < n {
        woken += sys::futex_wake(park);
        if woken < n {
            // SAFETY: no arguments.
            let _ = unsafe { sc(sys::SCHED_YIELD, 0, 0, 0, 0, 0, 0) };
        }
    }
}

/// Reports a frame that cannot be placed.
pub fn fail_frame(a: &TaskArgs, index: usize) -> ! {
    sys::fail(a, step::FRAME, index as u32, 14)
}
