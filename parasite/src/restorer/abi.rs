//! The restorer's argument ABI: `#[repr(C)]` structs shared by the no_std restorer blob and the
//! engine (`src/restore/blob_args.rs` includes this very file), so both sides agree on every
//! offset. Everything here is plain data: integers and absolute addresses (`u64`), no Rust
//! references, so the engine can lay the area out for any load address.
//!
//! # The restorer area
//!
//! The engine picks a page-aligned base `B` that overlaps no VMA of the target layout (and no
//! premapped area), maps `area_len` bytes RWX there, copies the relocated blob and the args in,
//! then jumps to `B + EXPORT_ENTRY` with `rdi = &TaskArgs` and `rsp = threads[0].stack_top`:
//!
//! ```text
//! B ───────────── blob image (RESTORER.bytes relocated for B), restorer::SIZE bytes
//!                 TaskArgs                          64-byte aligned, address passed in rdi
//!                 ThreadArgs[nr_threads]            [0] = the thread group leader
//!                 VmaArgs[nr_vmas]                  sorted by start, not overlapping
//!                 SpecialRemap[nr_special]          vvar/vdso moves (at most 7), in order
//!                 VdsoPatch[nr_vdso_patches]        proxy jumps (only when proxying)
//!                 PosixTimerArgs[nr_posix_timers]
//!                 SigInfo[nr_shared_signals]        shared pending signals
//!                 KeepRange[nr_keep]                premapped areas the blob must not unmap,
//!                                                   sorted by start
//!                 u32[nr_close_fds]                 the engine's fds to close
//!                 u64[auxv_size / 8]                saved auxv (MmArgs::auxv)
//!                 per thread: SigInfo[nr_signals], groups + CredsArgs,
//!                             sock_filter programs + SeccompFilterArgs[nr_seccomp],
//!                             xsave image (64-byte aligned, fpu_size bytes)
//!                 (page aligned)                    ── end of Area::bytes ──
//!                 thread stacks                     nr_threads × THREAD_STACK_SIZE (zero
//!                                                   in the fresh mapping); ThreadArgs::
//!                                                   stack_top is the end of each
//! B + area_len ─
//! ```
//!
//! Every `Addr` field is an absolute address inside the area (0 = none); counts sit next to
//! their pointers. `blob_args::TaskSpec::build` fills all of them.
//!
//! # What the blob does (leader = thread 0)
//!
//! 1. Blocks all signals, drops the engine's inherited rseq registration (`cur_rseq`).
//! 2. Unmaps everything in `[0, TASK_SIZE)` except the area, the `keep` ranges (premapped
//!    private memory) and the `from` ranges of `special` (the running vvar/vdso).
//! 3. Moves `special` ranges (vvar, vdso) to their image addresses with `mremap`.
//!    Engine rules: premap ranges overlap no target VMA other than their own (`premap ==
//!    start` is allowed) and no special range; the area overlaps neither. `mremap` keeps the
//!    premap's VMA flags: premap a `MAP_GROWSDOWN` stack with `MAP_GROWSDOWN`.
//! 4. For each VMA in address order: `VMA_PREMAPPED` is moved from `premap` with
//!    `mremap(MREMAP_MAYMOVE|MREMAP_FIXED)` (no-op if `premap == start`); `VMA_MMAP` is
//!    mapped with `mmap(MAP_FIXED)` from `fd` (or anonymous if `fd < 0`) at `pgoff`; then each
//!    bit `n` of `madv` becomes `madvise(n)` and `mprotect(prot)` sets the final protection.
//!    `VMA_PREMAPPED_LAZY` is moved likewise, then registered on `uffd` (MISSING mode).
//!    `VMA_SKIP` entries (vsyscall, vdso/vvar moved by `special`) are only used for lookups.
//! 5. Writes `vdso_patches` (a 12-byte `movabs rax, target; jmp rax` at each `at`).
//! 6. `prctl(PR_SET_MM, PR_SET_MM_MAP, &mm)` (if `set_mm`); personality, umask, sigactions,
//!    rlimits, child subreaper.
//! 7. Creates threads 1.. with clone3 (`set_tid`, CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM);
//!    each thread (leader too) sets its robust list, clear_tid address, rseq, name,
//!    scheduling, fs/gs base, then its creds with the seccomp filters installed just before
//!    the capabilities (the leader does its creds in step 8).
//! 8. Leader: queues pending signals (shared: rt_sigqueueinfo, per thread:
//!    rt_tgsigqueueinfo), creates POSIX timers with their ids (PR_TIMER_CREATE_RESTORE_IDS),
//!    looks for the exit gadgets, restores its creds, pdeath signal, dumpable, arms itimers.
//! 9. Writes a `StatusRecord` with `stage = STAGE_READY` to `status_fd`; if `go_fd >= 0`
//!    reads one byte from it (the engine's go-ahead; EOF is an error); closes `close_fds`,
//!    `status_fd` and `go_fd`.
//! 10. Every thread writes its final `rt_sigframe` (+ xsave image) below its saved `sp - 128`
//!     (on the target's own stack, like the kernel does for a signal) and enters an
//!     intermediate sigreturn whose `rip` is a `syscall; ret` gadget found in the target's
//!     executable memory: non-leader threads `FUTEX_WAIT` there; the leader wakes them all,
//!     then `munmap`s the area through the same gadget, whose `ret` lands on the target's
//!     `mov $15, %rax; syscall` (sa_restorer) gadget and rt_sigreturns into the final frame.
//!     Nothing of the restorer stays mapped. If no gadget or no room on a stack is found, the
//!     frames stay in the area, the area stays mapped and `StatusRecord::code` has
//!     `STATUS_AREA_KEPT`.
//!
//! On any failure the blob writes a `StatusRecord` with `stage = STAGE_ERROR`, the failing
//! `step`, the entry `index` and the errno, then `exit_group(STATUS_EXIT_CODE)`.

/// `TaskArgs::magic`: "STASISRA".
pub const ARGS_MAGIC: u64 = 0x4152_5349_5341_5453;
/// `TaskArgs::version`; bumped on any layout change.
pub const ABI_VERSION: u32 = 6;
/// Size of each thread's stack in the area (blob code, frames, the xsave copy).
pub const THREAD_STACK_SIZE: u64 = 64 * 1024;
/// Exit code of a task whose restorer failed (after the error record was written).
pub const STATUS_EXIT_CODE: i32 = 0x7e;

/// `VmaArgs::kind`: only described (vsyscall, vdso/vvar handled by `special`, ...).
pub const VMA_SKIP: u32 = 0;
/// `VmaArgs::kind`: the engine premapped and filled it at `premap`; the blob moves it.
pub const VMA_PREMAPPED: u32 = 1;
/// `VmaArgs::kind`: the blob maps it with `mmap(MAP_FIXED)` (file if `fd >= 0`, else anon).
pub const VMA_MMAP: u32 = 2;
/// `VmaArgs::kind`: like `VMA_PREMAPPED`, then registered in MISSING mode on `TaskArgs::uffd`
/// (post-copy restore: its lazy pages come from the lazy-pages daemon on fault).
pub const VMA_PREMAPPED_LAZY: u32 = 3;

/// Absolute address in the restored process (0 = none).
pub type Addr = u64;

/// `struct prctl_mm_map` of `<linux/prctl.h>`: passed as is to `PR_SET_MM_MAP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmArgs {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Address of the saved auxv words (in the area).
    pub auxv: Addr,
    /// Size of the auxv in bytes.
    pub auxv_size: u32,
    /// fd of the executable to set as /proc/PID/exe, or `u32::MAX` to leave it.
    pub exe_fd: u32,
}

/// `struct kernel_sigaction` for x86-64 `rt_sigaction` (sigset of 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigactionArgs {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `struct timeval` (64-bit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeval {
    pub sec: i64,
    pub usec: i64,
}

/// `struct itimerval`: index 0 ITIMER_REAL, 1 ITIMER_VIRTUAL, 2 ITIMER_PROF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItimerArgs {
    pub interval: Timeval,
    pub value: Timeval,
}

/// `struct timespec` (64-bit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

/// One POSIX timer (`timer_create` + `timer_settime`), created with its old id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PosixTimerArgs {
    /// The timer id to get back (`PR_TIMER_CREATE_RESTORE_IDS`).
    pub id: i32,
    pub clock_id: i32,
    /// `SIGEV_SIGNAL`, `SIGEV_NONE`, `SIGEV_THREAD_ID` (`| SIGEV_SIGNAL`).
    pub sigev_notify: i32,
    pub sigev_signo: i32,
    pub sigev_value: u64,
    /// Target TID for `SIGEV_THREAD_ID`.
    pub notify_tid: i32,
    pub _pad: u32,
    pub interval: Timespec,
    pub value: Timespec,
}

/// `struct rlimit64`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RlimitArgs {
    pub cur: u64,
    pub max: u64,
}

/// Number of rlimits the args carry (RLIMIT_CPU .. RLIMIT_RTTIME).
pub const NR_RLIMITS: usize = 16;

/// A raw `siginfo_t` (128 bytes) as stored in the image.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigInfo {
    pub bytes: [u8; 128],
}

impl Default for SigInfo {
    fn default() -> Self {
        SigInfo { bytes: [0; 128] }
    }
}

/// An rseq registration: area address, length, signature (`ptr == 0`: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RseqArgs {
    pub ptr: Addr,
    pub len: u32,
    pub sig: u32,
}

// `struct user_regs_struct` of x86-64: one definition (`common/user_regs.rs`), compiled
// here in the blob and as `sys::regs::UserRegs` in the engine (the same type there).
#[cfg(stasis_blob)]
#[path = "../common/user_regs.rs"]
mod user_regs;
#[cfg(not(stasis_blob))]
pub use crate::sys::regs::UserRegs;
#[cfg(stasis_blob)]
pub use user_regs::UserRegs;

/// Credentials of one thread (raw syscalls change only the calling thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CredsArgs {
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    /// Capability sets, 64 bits each as two u32 words (low word first).
    pub cap_inh: [u32; 2],
    pub cap_prm: [u32; 2],
    pub cap_eff: [u32; 2],
    pub cap_bnd: [u32; 2],
    pub cap_amb: [u32; 2],
    pub secbits: u32,
    pub nr_groups: u32,
    /// Address of `nr_groups` u32 supplementary group ids.
    pub groups: Addr,
    /// Apply `PR_SET_NO_NEW_PRIVS` (1) or not (0).
    pub no_new_privs: u32,
    pub _pad: u32,
}

/// Per-thread state. `threads[0]` is the thread group leader (its tid is the pid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadArgs {
    pub tid: u32,
    /// Size of the xsave image at `fpu` (0: no FPU state, the kernel resets it).
    pub fpu_size: u32,
    /// Address of the xsave image (64-byte aligned; sw_reserved and FP_XSTATE_MAGIC2 filled
    /// by the engine, see `blob_args::xsave_image`).
    pub fpu: Addr,
    pub regs: UserRegs,
    /// Blocked signals after the restore.
    pub blocked: u64,
    /// `stack_t` of the sigaltstack: address, flags (`SS_DISABLE` 2 when none), size.
    pub sas_sp: u64,
    pub sas_flags: u32,
    pub _pad0: u32,
    pub sas_size: u64,
    pub rseq: RseqArgs,
    /// `set_tid_address` value (0: none).
    pub clear_tid_addr: Addr,
    /// `set_robust_list` head and length (0: none).
    pub robust_list: Addr,
    pub robust_list_len: u64,
    /// Address of this thread's `CredsArgs` (0: keep the current creds).
    pub creds: Addr,
    /// Per-thread pending signals: `nr_signals` `SigInfo` at `signals`.
    pub signals: Addr,
    pub nr_signals: u64,
    /// End of this thread's stack in the area (16-byte aligned).
    pub stack_top: Addr,
    /// `PR_SET_PDEATHSIG` value (0: none).
    pub pdeath_sig: u32,
    /// Apply `sched_policy`/`sched_prio` (sched_setscheduler) and `sched_nice` (setpriority).
    pub set_sched: u32,
    pub sched_policy: u32,
    pub sched_prio: u32,
    pub sched_nice: i32,
    pub _pad1: u32,
    /// Thread name for `PR_SET_NAME` (NUL padded; empty: leave).
    pub comm: [u8; 16],
    /// Seccomp filters to install, oldest first: `nr_seccomp` `SeccompFilterArgs`.
    pub seccomp: Addr,
    pub nr_seccomp: u32,
    pub _pad2: u32,
}

/// One classic-BPF seccomp filter (`SECCOMP_SET_MODE_FILTER`), installed by its thread after
/// the ids are changed and before the capabilities are set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeccompFilterArgs {
    /// Address of `len` `struct sock_filter` (8 bytes each).
    pub prog: Addr,
    pub len: u32,
    /// `SECCOMP_FILTER_FLAG_*` (only TSYNC, LOG and SPEC_ALLOW are passed on). TSYNC is how
    /// CRIU writes a chain shared by all threads: on the leader only, the other threads with
    /// none; the leader installs it after the threads exist, so the kernel gives it to them.
    pub flags: u32,
}

/// One VMA of the target layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaArgs {
    pub start: Addr,
    pub end: Addr,
    /// File offset in bytes (`VMA_MMAP` with a file).
    pub pgoff: u64,
    /// Where the engine premapped it (`VMA_PREMAPPED`); may equal `start`.
    pub premap: Addr,
    /// Bit n set: `madvise(start, len, n)` (e.g. 1 << 14 MADV_HUGEPAGE, 1 << 16 DONTDUMP).
    pub madv: u64,
    /// Final `PROT_*`.
    pub prot: u32,
    /// `MAP_*` flags for `VMA_MMAP` (`MAP_FIXED` is added by the blob). For other kinds only
    /// `MAP_GROWSDOWN` is looked at (a final frame may then extend the stack downwards) and
    /// `MAP_LOCKED` (every kind: `mlock` once in place).
    pub flags: u32,
    pub kind: u32,
    /// File to map (`VMA_MMAP`), -1 for anonymous.
    pub fd: i32,
}

/// A range the blob must not unmap in step 2 (premapped memory).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepRange {
    pub start: Addr,
    pub end: Addr,
}

/// Moves a special mapping of the running kernel (vvar, vvar_vclock, vdso) to `to`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialRemap {
    pub from: Addr,
    pub to: Addr,
    pub len: u64,
}

/// Writes `movabs $target, %rax; jmp *%rax` (12 bytes) at `at` (vdso proxy).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdsoPatch {
    pub at: Addr,
    pub target: Addr,
}

/// Reserved (the blob keeps its futex words in its own .bss); the engine writes zeros.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncArgs {
    /// Threads that finished their own setup.
    pub threads_ready: u32,
    /// Set to 1 by the leader when threads may build their final frames.
    pub go: u32,
    /// Threads whose final frames are written.
    pub frames_ready: u32,
    /// Futex the non-leader threads wait on outside the area (always 0).
    pub park: u32,
    /// First error recorded by any thread (0 none).
    pub error: u32,
    pub _pad: u32,
    /// Gadgets found by the leader: `syscall; ret` and `mov $15, %rax; syscall`.
    pub gadget_syscall_ret: Addr,
    pub gadget_sigreturn: Addr,
}

/// The root argument block, at the address passed in `rdi` to the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskArgs {
    pub magic: u64,
    pub version: u32,
    pub nr_threads: u32,
    /// The whole area (blob, args, stacks): kept, unmapped last.
    pub area_start: Addr,
    pub area_len: u64,
    pub threads: Addr,
    pub vmas: Addr,
    pub nr_vmas: u64,
    pub keep: Addr,
    pub nr_keep: u64,
    pub special: Addr,
    pub nr_special: u64,
    pub vdso_patches: Addr,
    pub nr_vdso_patches: u64,
    pub posix_timers: Addr,
    pub nr_posix_timers: u64,
    /// Shared pending signals (`rt_sigqueueinfo` to the process).
    pub shared_signals: Addr,
    pub nr_shared_signals: u64,
    /// fds (u32 each) the blob closes before the final jump (the engine's own fds).
    pub close_fds: Addr,
    pub nr_close_fds: u64,
    pub mm: MmArgs,
    /// Apply `mm` with `PR_SET_MM_MAP` (1) or not (0).
    pub set_mm: u32,
    /// `PR_SET_DUMPABLE` value after the creds (u32::MAX: leave).
    pub dumpable: u32,
    /// Index = signal number - 1; SIGKILL and SIGSTOP entries are ignored.
    pub sigactions: [SigactionArgs; 64],
    pub itimers: [ItimerArgs; 3],
    pub rlimits: [RlimitArgs; NR_RLIMITS],
    /// How many of `rlimits` to apply (0 = none).
    pub nr_rlimits: u32,
    /// `personality()` value (u32::MAX: leave).
    pub personality: u32,
    /// `umask` value (u32::MAX: leave).
    pub umask: u32,
    /// `PR_SET_CHILD_SUBREAPER` value.
    pub child_subreaper: u32,
    /// `PR_SET_THP_DISABLE` value (u32::MAX: leave).
    pub thp_disabled: u32,
    /// membarrier registrations to redo: bit n set = `membarrier(1 << n)` (CRIU's
    /// `membarrier_registration_mask`).
    pub membarrier_mask: u32,
    /// Where the blob reports (`StatusRecord`); -1 for none.
    pub status_fd: i32,
    /// One byte is read from it after STAGE_READY; -1 to go on at once.
    pub go_fd: i32,
    /// `mlockall` flags for future mappings (MCL_FUTURE, MCL_ONFAULT), applied once every
    /// VMA is in place; 0: none.
    pub mlockall: u32,
    /// Padding.
    pub pad_mlockall: u32,
    /// userfaultfd the `VMA_PREMAPPED_LAZY` VMAs are registered with once in place (-1: none;
    /// closed with `close_fds`).
    pub uffd: i32,
    pub _pad_uffd: u32,
    /// The engine's own rseq registration inherited by this task, dropped first.
    pub cur_rseq: RseqArgs,
    pub sync: SyncArgs,
}

impl Default for TaskArgs {
    fn default() -> Self {
        TaskArgs {
            magic: 0,
            version: 0,
            nr_threads: 0,
            area_start: 0,
            area_len: 0,
            threads: 0,
            vmas: 0,
            nr_vmas: 0,
            keep: 0,
            nr_keep: 0,
            special: 0,
            nr_special: 0,
            vdso_patches: 0,
            nr_vdso_patches: 0,
            posix_timers: 0,
            nr_posix_timers: 0,
            shared_signals: 0,
            nr_shared_signals: 0,
            close_fds: 0,
            nr_close_fds: 0,
            mm: MmArgs::default(),
            set_mm: 0,
            dumpable: 0,
            sigactions: [SigactionArgs::default(); 64],
            itimers: [ItimerArgs::default(); 3],
            rlimits: [RlimitArgs::default(); NR_RLIMITS],
            nr_rlimits: 0,
            personality: 0,
            umask: 0,
            child_subreaper: 0,
            thp_disabled: u32::MAX,
            membarrier_mask: 0,
            status_fd: -1,
            go_fd: -1,
            mlockall: 0,
            pad_mlockall: 0,
            uffd: -1,
            _pad_uffd: 0,
            cur_rseq: RseqArgs::default(),
            sync: SyncArgs::default(),
        }
    }
}

/// `StatusRecord::stage`: everything restored, about to jump into the target.
pub const STAGE_READY: u32 = 1;
/// `StatusRecord::stage`: a step failed; the task exits with `STATUS_EXIT_CODE`.
pub const STAGE_ERROR: u32 = 2;
/// `StatusRecord::magic`: "STRS".
pub const STATUS_MAGIC: u32 = 0x5352_5453;
/// `StatusRecord::flags`: the area could not be unmapped (frames stayed in it).
pub const STATUS_AREA_KEPT: u32 = 1;

/// What the blob writes to `status_fd` (one `write` of 24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusRecord {
    pub magic: u32,
    pub stage: u32,
    /// The restored pid (thread group id).
    pub pid: u32,
    /// `STEP_*` that failed (STAGE_ERROR).
    pub step: u32,
    /// Entry index within the step (VMA index, signal number, thread index, ...).
    pub index: u32,
    /// Positive errno (STAGE_ERROR), or `STATUS_*` flags (STAGE_READY).
    pub code: i32,
}

/// Failing steps named in `StatusRecord::step`.
pub mod step {
    pub const BAD_ARGS: u32 = 1;
    pub const UNMAP: u32 = 2;
    pub const SPECIAL_REMAP: u32 = 3;
    pub const VMA_MOVE: u32 = 4;
    pub const VMA_MMAP: u32 = 5;
    pub const VMA_MADVISE: u32 = 6;
    pub const VMA_PROTECT: u32 = 7;
    pub const VDSO_PATCH: u32 = 8;
    pub const MM_MAP: u32 = 9;
    pub const SIGACTION: u32 = 10;
    pub const RLIMIT: u32 = 11;
    pub const PRCTL: u32 = 12;
    pub const CLONE_THREAD: u32 = 13;
    pub const RSEQ: u32 = 14;
    pub const THREAD_STATE: u32 = 15;
    pub const CREDS: u32 = 16;
    pub const SIGQUEUE: u32 = 17;
    pub const POSIX_TIMER: u32 = 18;
    pub const ITIMER: u32 = 19;
    pub const GO: u32 = 20;
    pub const FRAME: u32 = 21;
    pub const SIGMASK: u32 = 22;
    pub const RSEQ_DROP: u32 = 23;
    pub const SECCOMP: u32 = 24;
    pub const VMA_MLOCK: u32 = 25;
    pub const MEMBARRIER: u32 = 26;
    pub const MLOCKALL: u32 = 27;
    pub const UFFD_REGISTER: u32 = 28;
}

/// Size checks: a layout change that forgets the other side fails to build.
const _: () = {
    assert!(core::mem::size_of::<MmArgs>() == 104);
    assert!(core::mem::size_of::<SigactionArgs>() == 32);
    assert!(core::mem::size_of::<UserRegs>() == 27 * 8);
    assert!(core::mem::size_of::<PosixTimerArgs>() == 64);
    assert!(core::mem::size_of::<CredsArgs>() == 96);
    assert!(
        core::mem::size_of::<ThreadArgs>()
            == 8 + 8 + 216 + 8 + 24 + 16 + 8 + 16 + 8 + 16 + 8 + 8 + 16 + 16 + 16
    );
    assert!(core::mem::size_of::<VmaArgs>() == 56);
    assert!(core::mem::size_of::<StatusRecord>() == 24);
    assert!(core::mem::size_of::<SigInfo>() == 128);
    assert!(core::mem::size_of::<SyncArgs>() == 40);
    assert!(core::mem::size_of::<TaskArgs>() == 2768);
};
