//! `struct user_regs_struct` of x86-64: the general registers as ptrace's `NT_PRSTATUS`
//! exchanges them, in the order of CRIU's `user_x86_regs_entry` too. The one definition of
//! the layout: compiled into the restorer blob (`restorer/abi.rs`) and into the engine as
//! `sys::regs::UserRegs` (which `restore::blob_args::abi` re-exports), so both sides of the
//! restorer ABI use the same struct. no_std: nothing but `core`.
//!
//! ```text
//! 27 u64: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax
//!         ip cs flags sp ss fs_base gs_base ds es fs gs          (216 bytes)
//! ```

/// `user_regs_struct` of x86-64 (`NT_PRSTATUS`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UserRegs {
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

const _: () = assert!(core::mem::size_of::<UserRegs>() == 27 * 8);
