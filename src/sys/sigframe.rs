//! The signal frames the parasite and its thread routine return through when the dumper is
//! gone: a thread that finds the command socket hung up puts itself back as it was with
//! `rt_sigreturn` instead of trapping to a tracer that no longer exists (a trap would kill
//! the task with SIGTRAP).
//!
//! ```text
//! rt_sigreturn reads the frame at rsp (x86-64, kernel rt_sigframe without its pretcode):
//!   uc + 0     uc_flags     UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
//!   uc + 8     uc_link      0
//!   uc + 16    uc_stack     filled by the parasite itself (sigaltstack(NULL, ..)) just before,
//!                           so the kernel's restore of it changes nothing
//!   uc + 40    uc_mcontext  sigcontext: r8..r15 di si bp bx dx ax cx sp ip flags
//!                           cs gs fs ss (u16 each) err trapno oldmask cr2 fpstate reserved[8]
//!   uc + 296   uc_sigmask   the thread's own blocked mask
//! fpstate (64-byte aligned): the XSAVE area in the standard format; bytes 464..512 hold the
//!   signal frame's software bytes (magic1, extended_size, xfeatures, xstate_size) and
//!   MAGIC2 follows at xstate_size: without them the kernel restores the legacy area only
//! ```
//!
//! The registers are the saved ones with CRIU's restart rules applied
//! ([`UserRegs::for_image`]): `rt_sigreturn` sets `orig_ax` = -1, so the kernel would not
//! restart an interrupted system call itself; the frame re-executes it instead (a
//! restart-block call such as `nanosleep` returns EINTR, as after a CRIU restore).
//!
//! Where the frames live: the leader's in its own area of the parasite mapping, written at
//! inject; a thread's in the scratch of its slot (the routine fills the mask it finds and the
//! XSAVE area it saves; the dumper writes the rest before starting it).

use crate::sys::regs::{UserRegs, XState};

/// Offset of `uc_mcontext`.
pub const UC_MCONTEXT: usize = 40;
/// Offset of `uc_sigmask`.
pub const UC_SIGMASK: usize = 296;
/// Bytes of the ucontext `rt_sigreturn` reads.
pub const UC_LEN: usize = 304;
/// Offset of `fpstate` in the sigcontext.
const SC_FPSTATE: usize = 184;
/// Offset of the fpstate from the start of a frame area (pretcode 8 + ucontext, 64-aligned).
pub const FRAME_FPSTATE: usize = 320;
/// Offset of the ucontext from the start of a frame area (where rsp points).
pub const FRAME_UC: usize = 8;

const UC_SIGCONTEXT_SS: u64 = 0x2;
const UC_STRICT_RESTORE_SS: u64 = 0x4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Offset of the software bytes in the XSAVE area.
const SW_BYTES: usize = 464;
/// Offset of the XSAVE header (xstate_bv first).
const XSAVE_HEADER: usize = 512;
/// Legacy area + header: the smallest XSAVE area.
const XSAVE_MIN: usize = 576;
/// XFEATURE_XTILE_DATA, the only feature a process enables on request (its frames carry it
/// only when it is in use).
const XFEATURE_XTILE_DATA: u64 = 1 << 18;

/// The ucontext restoring `regs` (restart rules applied here), `mask` and the XSAVE area at
/// `fpstate` (0: none; the kernel then resets the FPU state).
pub fn ucontext(regs: &UserRegs, mask: u64, fpstate: u64) -> [u8; UC_LEN] {
    let r = regs.for_image();
    let mut uc = [0u8; UC_LEN];
    uc[..8].copy_from_slice(&(UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS).to_le_bytes());
    let sc = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.di, r.si, r.bp, r.bx, r.dx, r.ax,
        r.cx, r.sp, r.ip, r.flags,
    ];
    for (i, v) in sc.iter().enumerate() {
        let at = UC_MCONTEXT + 8 * i;
        uc[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    // cs, gs, fs, ss as u16 each
    let segs = UC_MCONTEXT + 8 * sc.len();
    for (i, v) in [r.cs, r.gs, r.fs, r.ss].iter().enumerate() {
        uc[segs + 2 * i..segs + 2 * i + 2].copy_from_slice(&(*v as u16).to_le_bytes());
    }
    let fp = UC_MCONTEXT + SC_FPSTATE;
    uc[fp..fp + 8].copy_from_slice(&fpstate.to_le_bytes());
    uc[UC_SIGMASK..UC_SIGMASK + 8].copy_from_slice(&mask.to_le_bytes());
    uc
}

/// The software bytes 464..488 of a signal frame's XSAVE area holding features
/// `xfeatures` in `size` bytes (standard format): magic1, extended_size (size + MAGIC2),
/// xfeatures, xstate_size. MAGIC2 goes at offset `size`.
pub fn sw_bytes(xfeatures: u64, size: usize) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    b[4..8].copy_from_slice(&(size as u32 + 4).to_le_bytes());
    b[8..16].copy_from_slice(&xfeatures.to_le_bytes());
    b[16..20].copy_from_slice(&(size as u32).to_le_bytes());
    b
}

/// MAGIC2, written at the end of the XSAVE area (offset `size` of [`sw_bytes`]).
pub fn magic2() -> [u8; 4] {
    FP_XSTATE_MAGIC2.to_le_bytes()
}

/// End of the last feature of `xfeatures` in the standard XSAVE format (CPUID leaf 0xD).
pub fn xstate_end(xfeatures: u64) -> usize {
    (2..64)
        .filter(|i| xfeatures & (1 << i) != 0)
        .map(|i| {
            let (offset, size) = crate::sys::cpu::xsave_component(i);
            offset as usize + size as usize
        })
        .fold(XSAVE_MIN, usize::max)
}

/// The XSAVE area `xstate` (as ptrace shows it: XCR0 in the software bytes) made into a
/// signal frame's: software bytes describing the process's default features (the tile data
/// too when in use) and MAGIC2. Returns the bytes to place at a 64-byte aligned address.
pub fn fpstate(xstate: &XState) -> Vec<u8> {
    let area = xstate.as_bytes();
    let word = |at: usize| {
        area.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    let xcr0 = word(SW_BYTES);
    let in_use = word(XSAVE_HEADER);
    let xfeatures = if in_use & XFEATURE_XTILE_DATA != 0 {
        xcr0
    } else {
        xcr0 & !XFEATURE_XTILE_DATA
    };
    let size = xstate_end(xfeatures).min(area.len());
    let mut out = area.to_vec();
    out.resize(out.len().max(size + 4), 0);
    out[SW_BYTES..SW_BYTES + 24].copy_from_slice(&sw_bytes(xfeatures, size));
    out[SW_BYTES + 24..XSAVE_HEADER].fill(0);
    out[size..size + 4].copy_from_slice(&magic2());
    out
}

/// Where a frame for an XSAVE area of `xstate_len` bytes goes on a stack whose pointer is
/// `sp`: below the x86-64 red zone (128 bytes the code may use without moving `sp`), 64-byte
/// aligned, as the kernel places a signal frame. None when `sp` is too low to be a stack.
pub fn below_red_zone(sp: u64, xstate_len: usize) -> Option<u64> {
    const RED_ZONE: u64 = 128;
    let len = FRAME_FPSTATE as u64 + xstate_len as u64 + 64;
    sp.checked_sub(RED_ZONE + len)
        .filter(|a| *a >= 4096)
        .map(|a| a & !63)
}

/// A frame area for `regs`, `mask` and `xstate`, to be written at `addr` (64-byte aligned):
/// pretcode, ucontext at [`FRAME_UC`] (the `rsp` of `rt_sigreturn`), fpstate at
/// [`FRAME_FPSTATE`].
pub fn frame(addr: u64, regs: &UserRegs, mask: u64, xstate: &XState) -> Vec<u8> {
    let fp = fpstate(xstate);
    let mut out = vec![0u8; FRAME_FPSTATE + fp.len()];
    let uc = ucontext(regs, mask, addr + FRAME_FPSTATE as u64);
    out[FRAME_UC..FRAME_UC + UC_LEN].copy_from_slice(&uc);
    out[FRAME_FPSTATE..].copy_from_slice(&fp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ucontext_places_registers_as_sigcontext() {
        let regs = UserRegs {
            r8: 8,
            ip: 0x1000,
            sp: 0x2000,
            orig_ax: u64::MAX,
            cs: 0x33,
            ss: 0x2b,
            ..UserRegs::default()
        };
        let uc = ucontext(&regs, 0x55, 0x7000);
        let at = |o: usize| u64::from_le_bytes(uc[o..o + 8].try_into().unwrap());
        assert_eq!(at(UC_MCONTEXT), 8);
        assert_eq!(at(UC_MCONTEXT + 8 * 15), 0x2000);
        assert_eq!(at(UC_MCONTEXT + 8 * 16), 0x1000);
        assert_eq!(at(UC_MCONTEXT + SC_FPSTATE), 0x7000);
        assert_eq!(at(UC_SIGMASK), 0x55);
        assert_eq!(uc[UC_MCONTEXT + 144], 0x33);
        assert_eq!(uc[UC_MCONTEXT + 150], 0x2b);
    }

    #[test]
    fn restartable_syscall_is_rewound_in_the_frame() {
        let regs = UserRegs {
            orig_ax: 7,
            ax: (-514i64) as u64,
            ip: 0x1002,
            ..UserRegs::default()
        };
        let uc = ucontext(&regs, 0, 0);
        let at = |o: usize| u64::from_le_bytes(uc[o..o + 8].try_into().unwrap());
        assert_eq!(at(UC_MCONTEXT + 8 * 13), 7);
        assert_eq!(at(UC_MCONTEXT + 8 * 16), 0x1000);
    }
}
