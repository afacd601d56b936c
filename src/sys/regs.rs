//! x86-64 register sets as ptrace exchanges them, and CRIU's syscall-restart rules.
//!
//! ```text
//! UserRegs   = user_regs_struct (NT_PRSTATUS), 27 u64, fs_base/gs_base included
//!              (parasite/src/common/user_regs.rs, the blob's definition too)
//! XState     = NT_X86_XSTATE, standard (non-compacted) XSAVE layout:
//!   0..512    legacy FXSAVE area (FxSave: cwd swd twd fop rip rdp mxcsr mxcsr_mask st[8] xmm[16])
//!   464..512  software bytes: magic1 0x46505853, extended_size, xfeatures, xstate_size
//!   512..576  XSAVE header: xstate_bv, xcomp_bv
//!   576..     components at CPUID(0xd, i).ebx offsets (2: YMM_Hi128 256 bytes, ...)
//! ```
//!
//! Interrupted system calls: a task stopped inside a syscall has `orig_ax` = syscall number
//! (>= 0) and, when a signal or our interrupt broke the syscall, `ax` = -ERESTART*. Live
//! registers must be restored as read (the kernel restarts the syscall itself on resume). For
//! the *image*, [`UserRegs::for_image`] applies CRIU's rules, so a restored task restarts
//! without the kernel's help: -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND rewind `ip` by 2
//! (the `syscall` instruction) and set `ax = orig_ax`; -ERESTART_RESTARTBLOCK becomes -EINTR
//! (the restart block cannot be restored, the program sees EINTR).

use super::errno::{ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS, ERESTART_RESTARTBLOCK};

#[path = "../../parasite/src/common/user_regs.rs"]
mod user_regs;

/// `user_regs_struct` of x86-64 (`NT_PRSTATUS`); defined once, in
/// `parasite/src/common/user_regs.rs`, shared with the restorer blob.
pub use user_regs::UserRegs;

/// EFLAGS trap flag.
pub const EFLAGS_TF: u64 = 1 << 8;
/// EFLAGS direction flag.
pub const EFLAGS_DF: u64 = 1 << 10;

/// Where a stopped task is relative to system calls, decoded from `orig_ax`/`ax`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallState {
    /// Stopped in user space (`orig_ax` = -1).
    User,
    /// Inside or at the exit of syscall `nr`, not asking for a restart.
    InSyscall {
        /// Syscall number (`orig_ax`).
        nr: u64,
    },
    /// Syscall `nr` was interrupted and will be restarted; `code` is the positive
    /// ERESTART* value found in `ax`.
    Restart {
        /// Syscall number (`orig_ax`).
        nr: u64,
        /// 512 ERESTARTSYS, 513 ERESTARTNOINTR, 514 ERESTARTNOHAND, 516 ERESTART_RESTARTBLOCK.
        code: i64,
    },
}

impl UserRegs {
    /// Decodes the syscall state (`orig_ax`, `ax`).
    pub fn syscall_state(&self) -> SyscallState {
        if (self.orig_ax as i32) < 0 {
            return SyscallState::User;
        }
        let nr = self.orig_ax;
        match -(self.ax as i64) {
            code @ (ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK) => {
                SyscallState::Restart { nr, code }
            }
            _ => SyscallState::InSyscall { nr },
        }
    }

    /// The registers to write into an image (CRIU's rules, see the module doc): a restartable
    /// syscall is rewound so the restored task re-executes it; a restart-block syscall returns
    /// -EINTR.
    pub fn for_image(&self) -> UserRegs {
        let mut regs = *self;
        if let SyscallState::Restart { code, .. } = self.syscall_state() {
            if code == ERESTART_RESTARTBLOCK {
                regs.ax = (-(libc::EINTR as i64)) as u64;
            } else {
                regs.ax = self.orig_ax;
                regs.ip = self.ip.wrapping_sub(2);
            }
        }
        regs
    }
}

/// Offset of the XSAVE header in the XSAVE area.
pub const XSAVE_HEADER_OFFSET: usize = 512;
/// Size of the legacy FXSAVE area.
pub const FXSAVE_SIZE: usize = 512;
/// Largest XSAVE area we accept from CPUID (AMX tiles need ~11 KiB).
const XSAVE_MAX: usize = 64 * 1024;

/// The legacy FXSAVE area (first 512 bytes of an XSAVE area), `user_i387_struct`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct FxSave {
    pub cwd: u16,
    pub swd: u16,
    pub twd: u16,
    pub fop: u16,
    pub rip: u64,
    pub rdp: u64,
    pub mxcsr: u32,
    pub mxcsr_mask: u32,
    /// 8 registers of 16 bytes (80-bit values, padded), as 32 u32.
    pub st_space: [u32; 32],
    /// 16 XMM registers, as 64 u32.
    pub xmm_space: [u32; 64],
    pub padding: [u32; 12],
    /// Software-reserved bytes 464..512 (`xstate_fx_sw_bytes` when XSAVE is in use).
    pub sw_reserved: [u32; 12],
}

/// The full extended register state (`NT_X86_XSTATE`), standard format, `len` bytes. The
/// stored bytes may stop early: the rest is zeros (the AMX tile data of a thread that does
/// not use it is 8 KiB of them). Equality compares the whole area.
#[derive(Debug, Clone)]
pub struct XState {
    bytes: Vec<u8>,
    len: usize,
}

impl PartialEq for XState {
    fn eq(&self, other: &Self) -> bool {
        let common = self.bytes.len().min(other.bytes.len());
        self.len == other.len
            && self.bytes[..common] == other.bytes[..common]
            && self.bytes[common..].iter().all(|&b| b == 0)
            && other.bytes[common..].iter().all(|&b| b == 0)
    }
}

impl Eq for XState {}

impl XState {
    /// Size of the buffer to request: CPUID(0xd, 0).ebx (XSAVE size for the features enabled
    /// in XCR0), at least 4 KiB, at most 64 KiB.
    pub fn buffer_size() -> usize {
        // CPUID traps to the hypervisor in a VM: ask once.
        static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *SIZE.get_or_init(|| {
            let leaf = core::arch::x86_64::__cpuid_count(0xd, 0);
            (leaf.ebx as usize).clamp(4096, XSAVE_MAX)
        })
    }

    /// Wraps raw bytes as returned by the kernel.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        XState { bytes, len }
    }

    /// An area of `len` bytes that starts with `prefix` and is zero after it.
    pub fn from_prefix(mut prefix: Vec<u8>, len: usize) -> Self {
        prefix.truncate(len);
        XState { bytes: prefix, len }
    }

    /// The stored bytes: the area, or a prefix of it (the rest is zeros; see
    /// [`XState::to_vec`]).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length of the whole area.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty area.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole area, zeros included.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = self.bytes.clone();
        v.resize(self.len, 0);
        v
    }

    /// The legacy FXSAVE area, if present.
    pub fn fxsave(&self) -> Option<FxSave> {
        let raw = self.bytes.get(..FXSAVE_SIZE)?;
        let mut out = [0u8; FXSAVE_SIZE];
        out.copy_from_slice(raw);
        let word16 = |o: usize| u16::from_le_bytes([out[o], out[o + 1]]);
        let word32 = |o: usize| u32::from_le_bytes(out[o..o + 4].try_into().unwrap_or([0; 4]));
        let word64 = |o: usize| u64::from_le_bytes(out[o..o + 8].try_into().unwrap_or([0; 8]));
        let words = |o: usize, dst: &mut [u32]| {
            for (i, w) in dst.iter_mut().enumerate() {
                *w = word32(o + 4 * i);
            }
        };
        let mut fx = FxSave {
            cwd: word16(0),
            swd: word16(2),
            twd: word16(4),
            fop: word16(6),
            rip: word64(8),
            rdp: word64(16),
            mxcsr: word32(24),
            mxcsr_mask: word32(28),
            st_space: [0; 32],
            xmm_space: [0; 64],
            padding: [0; 12],
            sw_reserved: [0; 12],
        };
        words(32, &mut fx.st_space);
        words(160, &mut fx.xmm_space);
        words(416, &mut fx.padding);
        words(464, &mut fx.sw_reserved);
        Some(fx)
    }

    /// `xstate_bv` of the XSAVE header: which components hold non-initial state.
    pub fn xstate_bv(&self) -> u64 {
        self.u64_at(XSAVE_HEADER_OFFSET)
    }

    /// Bytes of component `index` (2 = YMM_Hi128, 5..7 = AVX-512, ...) at the offset and
    /// size CPUID(0xd, index) gives, if the area holds it.
    pub fn component(&self, index: u32) -> Option<&[u8]> {
        if !(2..64).contains(&index) {
            return None;
        }
        let leaf = core::arch::x86_64::__cpuid_count(0xd, index);
        let (size, offset) = (leaf.eax as usize, leaf.ebx as usize);
        if size == 0 {
            return None;
        }
        self.bytes.get(offset..offset.checked_add(size)?)
    }

    fn u64_at(&self, off: usize) -> u64 {
        self.bytes
            .get(off..off + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    }
}

/// Registers of one stopped thread: general registers and the XSAVE area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRegs {
    /// General registers as read (live: not rewritten for the image).
    pub regs: UserRegs,
    /// Extended state.
    pub xstate: XState,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped_in(nr: u64, ax: i64) -> UserRegs {
        UserRegs {
            orig_ax: nr,
            ax: ax as u64,
            ip: 0x1000,
            ..Default::default()
        }
    }

    #[test]
    fn user_regs_is_user_regs_struct_sized() {
        assert_eq!(std::mem::size_of::<UserRegs>(), 27 * 8);
        assert_eq!(std::mem::size_of::<FxSave>(), FXSAVE_SIZE);
    }

    #[test]
    fn restart_rules_match_criu() {
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let img = stopped_in(34, -code).for_image();
            assert_eq!((img.ax, img.ip), (34, 0x1000 - 2));
        }
        let img = stopped_in(230, -ERESTART_RESTARTBLOCK).for_image();
        assert_eq!((img.ax as i64, img.ip), (-(libc::EINTR as i64), 0x1000));
        let user = UserRegs {
            orig_ax: u64::MAX,
            ax: (-ERESTARTSYS) as u64,
            ..Default::default()
        };
        assert_eq!(user.for_image(), user);
        assert_eq!(user.syscall_state(), SyscallState::User);
        assert_eq!(
            stopped_in(0, 5).syscall_state(),
            SyscallState::InSyscall { nr: 0 }
        );
    }
}
