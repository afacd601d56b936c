//! Wire format between the dumper and the dump parasite. Included by the blob
//! (`parasite/src/dump.rs`) and by the engine (`src/parasite/proto.rs`) with `#[path]`, so both
//! sides compile the same definitions. Plain `#[repr(C)]` structs with explicit padding only
//! (every bit pattern valid, no implicit padding): they travel as raw bytes.
//!
//! ```text
//! start:   rdi = &ParasiteArgs (in the parasite area); the blob serves `sock_fd` until FINI
//! socket:  AF_UNIX SOCK_SEQPACKET pair made in the task; the dumper took one end with
//!          pidfd_getfd, so one message = one command or one reply, no framing needed
//! command: CmdHeader { cmd, len } + len bytes of payload          (at most MAX_MSG bytes)
//! reply:   ReplyHeader { cmd, status (0 or -errno), len, pad } + len bytes of payload
//!
//! cmd             payload                         reply payload (status 0)      ancillary
//! SET_PIPE        [i32 index] (none: 0)           i32 fd number in the task      cmd: 1 fd
//! DUMP_PAGES      [RemoteIov] (page aligned)      u64 bytes vmspliced into pipe 0
//! DUMP_PAGES_TO   u64 pipe index, [RemoteIov]     u64 bytes vmspliced into that pipe
//! MPROTECT        [MprotectReq]                   -
//! DRAIN_FDS       [i32 fd] (<= MAX_FDS)           [FdOpts], same order           reply: fds
//! MISC            -                               MiscState
//! SIGACTIONS      -                               [KSigaction; 64] (index sig-1)
//! POSIX_TIMERS    [i32 id] (<= MAX_TIMERS)        [PosixTimerState]
//! THREAD_STATE    -                               ThreadState of the parasite's thread
//! USERFAULTFD     i32 flags of userfaultfd(2)      i32 fd number it had in the task   reply: 1 fd
//!                 (the parasite closes its copy after sending: nothing stays in the task)
//!
//! any other thread: the dumper points its ip at `__export_thread_entry` with rdi = its slot
//! in the thread area (slots of a multiple of THREAD_SLOT bytes, sp = slot end; see
//! ThreadState) and resumes it; it writes its ThreadState and XSAVE area into the slot,
//! sends the 8-byte message THREAD_DONE ^ tid on the socket and waits for the socket to hang
//! up (the dumper stops it there and gives it its registers back)
//! FINI            -                               -   then the parasite closes its pipes
//!                                                     and waits for the socket to hang up
//! socket hang-up (the dumper died): the parasite and every thread in the routine close
//! what they opened and return through their signal frame (`rt_sigreturn`)
//! ```
//! A failed syscall makes the whole command fail: `status` is its -errno, `len` 0.

/// `ParasiteArgs::magic`.
pub const ARGS_MAGIC: u64 = 0x5354_4153_4953_5031; // "STASISP1"
/// Largest message, header included.
pub const MAX_MSG: usize = 16 * 1024 + 64;
/// Most iovecs in one DUMP_PAGES (vmsplice takes at most UIO_MAXIOV = 1024).
pub const MAX_IOVS: usize = 1024;
/// Most descriptors in one DRAIN_FDS (SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 64;
/// Page pipes the parasite holds (SET_PIPE index 0..MAX_PIPES).
pub const MAX_PIPES: usize = 4;
/// Most timers in one POSIX_TIMERS.
pub const MAX_TIMERS: usize = 256;
/// Number of rlimits in `MiscState` (RLIM_NLIMITS).
pub const RLIMITS: usize = 16;

/// Set the pipe DUMP_PAGES writes to (its write end rides along as SCM_RIGHTS).
pub const CMD_SET_PIPE: u32 = 1;
/// vmsplice regions of the task's memory into the pipe.
pub const CMD_DUMP_PAGES: u32 = 2;
/// mprotect regions (make PROT_NONE memory readable before dumping it, and back).
pub const CMD_MPROTECT: u32 = 3;
/// Send descriptors to the dumper.
pub const CMD_DRAIN_FDS: u32 = 4;
/// Per-process state from syscalls.
pub const CMD_MISC: u32 = 5;
/// All signal dispositions.
pub const CMD_SIGACTIONS: u32 = 6;
/// POSIX timer values.
pub const CMD_POSIX_TIMERS: u32 = 7;
/// Per-thread state of the thread running the parasite.
pub const CMD_THREAD_STATE: u32 = 8;
/// Stop serving.
pub const CMD_FINI: u32 = 9;
/// vmsplice regions into the page pipe of a given index.
pub const CMD_DUMP_PAGES_TO: u32 = 10;
/// Create a userfaultfd in the task and send it to the dumper (dirty-page tracking).
pub const CMD_USERFAULTFD: u32 = 11;

/// Written by the dumper where `rdi` points at start.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct ParasiteArgs {
    /// [`ARGS_MAGIC`].
    pub magic: u64,
    /// The parasite's end of the command socket.
    pub sock_fd: i32,
    /// Padding.
    pub pad: u32,
    /// Address of the ucontext of the frame the parasite returns through when the dumper is
    /// gone (`rt_sigreturn` with rsp here).
    pub cure_sp: u64,
    /// The area (parasite image, args, frame, stack, thread slots): what the leader unmaps
    /// on its way out when the dumper is gone.
    pub area_base: u64,
    /// Length of the area.
    pub area_len: u64,
    /// A frame like the one at `cure_sp` on the leader's own stack, 64-byte aligned, whose
    /// pretcode holds the address of an `rt_sigreturn` sequence outside the area (0: none).
    pub exit_frame: u64,
    /// A `syscall; ret` outside the area (0: none). With `exit_frame`, the leader leaves by
    /// munmap of the area through it, then `ret` into the exit frame's pretcode.
    pub exit_syscall_ret: u64,
    /// 1 while no thread but the leader can run code of the area (the dumper clears it
    /// before it starts the thread routine); read when the dumper is gone.
    pub unmap_ok: u64,
}

/// Header of a command.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct CmdHeader {
    /// `CMD_*`.
    pub cmd: u32,
    /// Payload bytes after the header.
    pub len: u32,
}

/// Header of a reply.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct ReplyHeader {
    /// The command answered.
    pub cmd: u32,
    /// 0, or -errno of the syscall that failed.
    pub status: i32,
    /// Payload bytes after the header.
    pub len: u32,
    /// Padding.
    pub pad: u32,
}

/// A region of the task's memory.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct RemoteIov {
    /// Start address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One mprotect call.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct MprotectReq {
    /// Start address (page aligned).
    pub addr: u64,
    /// Length.
    pub len: u64,
    /// `PROT_*` bits.
    pub prot: u64,
}

/// What the task knows about one descriptor it sent.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct FdOpts {
    /// The descriptor number in the task.
    pub fd: i32,
    /// `F_GETFD` (FD_CLOEXEC).
    pub fd_flags: i32,
    /// `F_GETOWN_EX` type (F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2).
    pub owner_type: i32,
    /// `F_GETOWN_EX` pid (0: no owner).
    pub owner_pid: i32,
    /// `F_GETSIG`.
    pub signum: i32,
    /// Padding.
    pub pad: i32,
}

/// Kernel `struct sigaction` of x86-64 (what `rt_sigaction` reads and writes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct KSigaction {
    /// Handler address, or SIG_DFL 0 / SIG_IGN 1.
    pub handler: u64,
    /// `SA_*` flags.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// Signals blocked during the handler.
    pub mask: u64,
}

/// `struct itimerval` (seconds, microseconds).
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct Itimerval {
    /// Interval seconds.
    pub interval_sec: i64,
    /// Interval microseconds.
    pub interval_usec: i64,
    /// Value seconds.
    pub value_sec: i64,
    /// Value microseconds.
    pub value_usec: i64,
}

/// `struct rlimit64`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct Rlimit {
    /// Soft limit.
    pub cur: u64,
    /// Hard limit.
    pub max: u64,
}

/// Per-process state read from inside the task (values as the task sees them: pids are in
/// its pid namespace).
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct MiscState {
    /// `brk(0)`.
    pub brk: u64,
    /// `getpid()`.
    pub pid: i32,
    /// `getppid()` (0 when the parent is outside the task's pid namespace).
    pub ppid: i32,
    /// `getsid(0)`.
    pub sid: i32,
    /// `getpgid(0)`.
    pub pgid: i32,
    /// `umask` (read by setting it and setting it back).
    pub umask: u32,
    /// `PR_GET_DUMPABLE`.
    pub dumpable: i32,
    /// `personality(0xffffffff)`.
    pub personality: u32,
    /// `PR_GET_THP_DISABLE`.
    pub thp_disabled: i32,
    /// `PR_GET_CHILD_SUBREAPER`.
    pub child_subreaper: i32,
    /// `PR_GET_NO_NEW_PRIVS`.
    pub no_new_privs: i32,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: [Itimerval; 3],
    /// `prlimit64(0, resource, NULL, &old)` for resources 0..16.
    pub rlimits: [Rlimit; RLIMITS],
    /// membarrier registrations as CRIU's `membarrier_registration_mask`: bit
    /// `MEMBARRIER_CMD_REGISTER_*` set when the matching barrier command succeeds.
    pub membarrier_mask: u32,
    pub _pad: u32,
}

/// One POSIX timer: `timer_gettime` and `timer_getoverrun`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct PosixTimerState {
    /// Timer id.
    pub id: i32,
    /// Overrun count.
    pub overrun: i32,
    /// Interval seconds.
    pub interval_sec: i64,
    /// Interval nanoseconds.
    pub interval_nsec: i64,
    /// Remaining seconds.
    pub value_sec: i64,
    /// Remaining nanoseconds.
    pub value_nsec: i64,
}

/// Most supplementary groups [`ThreadState`] carries (more: `ngroups` says how many, the
/// dumper reads them from /proc).
pub const MAX_GROUPS: usize = 32;
/// `ThreadState::done` is `THREAD_DONE ^ tid` once the thread routine filled the state.
pub const THREAD_DONE: u64 = 0x5448_5244_444f_4e45; // "THRDDONE"
/// Smallest thread slot (the dumper rounds a slot up to hold the XSAVE area too).
pub const THREAD_SLOT: usize = 4096;
/// Offset of the XSAVE area in a thread slot (64-byte aligned, as XSAVE requires).
pub const THREAD_XSAVE_OFF: usize = 1024;
/// Thread routine flag (rcx at entry): store the XSAVE features in use (`xgetbv` with
/// ecx = 1) at [`THREAD_XINUSE_OFF`] of the slot (the CPU must support it).
pub const THREAD_FLAG_XINUSE: u64 = 2;
/// Offset in a thread slot of the XINUSE bitmap stored with [`THREAD_FLAG_XINUSE`].
pub const THREAD_XINUSE_OFF: usize = 488;
/// Offset in a thread slot of the flag (u64, written by the dumper) that says the frame's
/// mask is already the thread's own (the routine then leaves it).
pub const THREAD_MASK_KNOWN_OFF: usize = 520;
/// Offset in a thread slot of the socket descriptor (u64, written by the dumper).
pub const THREAD_SOCK_OFF: usize = 528;
/// Offset in a thread slot of the signal frame's XSAVE software bytes (24, written by the
/// dumper; the routine copies them behind its XSAVE, and MAGIC2 at their xstate_size).
pub const THREAD_SW_BYTES_OFF: usize = 544;
/// Offset in a thread slot of the ucontext of the thread's signal frame (the dumper writes
/// it; the routine fills its mask).
pub const THREAD_FRAME_OFF: usize = 640;

/// Per-thread state only the thread itself can read: what CMD_THREAD_STATE answers for the
/// parasite's thread, and what `__export_thread_entry` writes into its slot for any other
/// thread of the task.
///
/// ```text
///  0 tid_address  8 altstack_sp  16 altstack_size  24 altstack_flags  28 pdeath_sig
/// 32 comm[16]     48 robust_head 56 robust_len     64 sigpending
/// 72 uids[4] (real, effective, saved, fs)          88 gids[4]
/// 104 cap_eff 112 cap_prm 120 cap_inh 128 cap_bnd 136 cap_amb   144 secbits 148 ngroups
/// 152 groups[32]   280 sched_policy 284 sched_prio 288 sched_nice 292 no_new_privs
/// 296 tls[3] (user_desc: entry, base, limit, flags)  344 tls_status 348 status 352 done
/// 360 seccomp_mode 364 xsave_len 368 rseq_status 372 pad 376 blocked
/// ```
///
/// A thread slot of the thread area (`slot_size` bytes, chosen by the dumper): this state at
/// 0, the routine's scratch up to [`THREAD_XSAVE_OFF`], then the XSAVE area. The routine is
/// entered with rdi = slot, rsi = XSAVE bytes (0: none), rdx = XSAVE feature mask, rcx =
/// flags ([`THREAD_FLAG_XINUSE`]), r8/r9/r10 = the rseq area, length and signature to
/// confirm (r8 = 0: none). Scratch: 400 capget, 440..488 the entry values, 488 XINUSE,
/// 496 the mask it blocks, 504 the mask it found, 512 whether it blocked, 520 mask known,
/// 528 socket, 536 pollfd, 544 XSAVE software bytes, 600 sigaltstack, 632..944 the signal
/// frame (ucontext at 640).
#[repr(C)]
#[derive(Clone, Copy, Default)]
#[cfg_attr(not(stasis_blob), derive(Debug, PartialEq, Eq))]
pub struct ThreadState {
    /// `PR_GET_TID_ADDRESS` (clear_child_tid).
    pub tid_address: u64,
    /// sigaltstack `ss_sp`.
    pub altstack_sp: u64,
    /// sigaltstack `ss_size`.
    pub altstack_size: u64,
    /// sigaltstack `ss_flags` (SS_DISABLE 2, SS_ONSTACK 1, SS_AUTODISARM bit 31).
    pub altstack_flags: i32,
    /// `PR_GET_PDEATHSIG`.
    pub pdeath_sig: i32,
    /// `PR_GET_NAME` (comm, NUL padded).
    pub comm: [u8; 16],
    /// `get_robust_list(0)`: head.
    pub robust_head: u64,
    /// `get_robust_list(0)`: length.
    pub robust_len: u64,
    /// `rt_sigpending` while every signal but SIGTRAP is blocked: the thread's private and
    /// the process's shared pending signals.
    pub sigpending: u64,
    /// `getresuid` and `setfsuid(-1)`.
    pub uids: [u32; 4],
    /// `getresgid` and `setfsgid(-1)`.
    pub gids: [u32; 4],
    /// `capget` (version 3): effective.
    pub cap_eff: u64,
    /// Permitted.
    pub cap_prm: u64,
    /// Inheritable.
    pub cap_inh: u64,
    /// `PR_CAPBSET_READ` of every capability.
    pub cap_bnd: u64,
    /// `PR_CAP_AMBIENT_IS_SET` of every capability.
    pub cap_amb: u64,
    /// `PR_GET_SECUREBITS`.
    pub secbits: u32,
    /// `getgroups` count (only the first [`MAX_GROUPS`] are in `groups`).
    pub ngroups: i32,
    /// Supplementary groups.
    pub groups: [u32; MAX_GROUPS],
    /// `sched_getscheduler` (SCHED_RESET_ON_FORK cleared).
    pub sched_policy: i32,
    /// `sched_getparam` priority.
    pub sched_prio: i32,
    /// Nice value (`20 - getpriority(PRIO_PROCESS, 0)` raw).
    pub sched_nice: i32,
    /// `PR_GET_NO_NEW_PRIVS`.
    pub no_new_privs: i32,
    /// GDT entries 12, 13, 14 (`struct user_desc`: entry_number, base_addr, limit, flag
    /// bits) when `tls_status` is 0.
    pub tls: [u32; 12],
    /// -ENOSYS: `get_thread_area` is not a 64-bit syscall; the dumper asks ptrace.
    pub tls_status: i32,
    /// 0, or the -errno of the first syscall that failed.
    pub status: i32,
    /// [`THREAD_DONE`] `^ tid` when complete.
    pub done: u64,
    /// `PR_GET_SECCOMP` (0 none, 1 strict, 2 filter; read with seccomp suspended by ptrace).
    pub seccomp_mode: i32,
    /// Bytes of XSAVE area the thread routine wrote at [`THREAD_XSAVE_OFF`] (0: none; the
    /// leader's CMD_THREAD_STATE never does).
    pub xsave_len: u32,
    /// 0 when the thread routine confirmed the rseq registration the dumper guessed, or
    /// why not (-ENOSYS: not asked; -EINVAL: registered otherwise or not at all).
    pub rseq_status: i32,
    /// Padding.
    pub pad: i32,
    /// The thread's blocked signals before the thread routine blocked all but SIGTRAP
    /// (its first system call); 0 from CMD_THREAD_STATE.
    pub blocked: u64,
}

/// Raw-byte views of the wire structs.
///
/// # Safety
/// Implement only for `#[repr(C)]` types without implicit padding whose every bit pattern
/// is valid.
pub unsafe trait Wire: Copy + Default {}

// SAFETY: each type below is #[repr(C)], made of u8/u32/i32/u64/i64 fields (and arrays of
// them) with explicit padding fields only; the size tests in the engine check the layouts.
unsafe impl Wire for ParasiteArgs {}
// SAFETY: as above.
unsafe impl Wire for CmdHeader {}
// SAFETY: as above.
unsafe impl Wire for ReplyHeader {}
// SAFETY: as above.
unsafe impl Wire for RemoteIov {}
// SAFETY: as above.
unsafe impl Wire for MprotectReq {}
// SAFETY: as above.
unsafe impl Wire for FdOpts {}
// SAFETY: as above.
unsafe impl Wire for KSigaction {}
// SAFETY: as above.
unsafe impl Wire for MiscState {}
// SAFETY: as above.
unsafe impl Wire for PosixTimerState {}
// SAFETY: as above.
unsafe impl Wire for ThreadState {}
// SAFETY: plain integers.
unsafe impl Wire for i32 {}
// SAFETY: plain integers.
unsafe impl Wire for u64 {}

/// The bytes of `v`.
pub fn bytes_of<T: Wire>(v: &T) -> &[u8] {
    // SAFETY: `Wire` types have no padding, so all size_of::<T>() bytes are initialized; the
    // slice borrows `v`.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>()) }
}

/// The bytes of a slice of `T`.
pub fn bytes_of_slice<T: Wire>(v: &[T]) -> &[u8] {
    // SAFETY: as for `bytes_of`, for `v.len()` consecutive values.
    unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), core::mem::size_of_val(v)) }
}

/// Reads a `T` from the start of `b`; `None` if `b` is too short.
pub fn read<T: Wire>(b: &[u8]) -> Option<T> {
    if b.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: `b` holds at least size_of::<T>() bytes, every bit pattern is a valid `T`, and
    // read_unaligned has no alignment requirement.
    Some(unsafe { core::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// Reads element `i` of an array of `T` at the start of `b`.
pub fn read_at<T: Wire>(b: &[u8], i: usize) -> Option<T> {
    let size = core::mem::size_of::<T>();
    read(b.get(i.checked_mul(size)?..)?)
}
