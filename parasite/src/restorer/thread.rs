//! Threads: creation with clone3 (`set_tid`), per-thread kernel state, credentials.

use crate::abi::{step, CredsArgs, SeccompFilterArgs, TaskArgs, ThreadArgs, THREAD_STACK_SIZE};
use crate::sys::{self, check, sc, slice};

const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SYSVSEM: u64 = 0x40000;

/// `struct clone_args` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Creates thread `index` with its TID on its own stack; it starts in `entry(args, index)`.
pub fn create(a: &TaskArgs, t: &ThreadArgs, index: usize, entry: extern "C" fn(*const TaskArgs, usize) -> !) {
    let tid: u64 = u64::from(t.tid);
    let ca = CloneArgs {
        flags: CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: 0,
        stack: t.stack_top - THREAD_STACK_SIZE,
        stack_size: THREAD_STACK_SIZE,
        tls: 0,
        set_tid: &tid as *const u64 as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    let ret: isize;
    // SAFETY: ca is a valid clone_args whose stack is this thread's own stack in the area.
    // The child starts on that empty stack with every register of the parent but rax = 0;
    // it only uses r12/r13/r14 (args, index, entry), aligns rsp and calls entry, which never
    // returns. The parent sees the new TID or -errno in rax.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "mov rsi, r13",
            "and rsp, -16",
            "call r14",
            "ud2",
            "2:",
            inlateout("rax") sys::CLONE3 as isize => ret,
            in("rdi") &ca as *const CloneArgs,
            in("rsi") core::mem::size_of::<CloneArgs>(),
            in("r12") a as *const TaskArgs,
            in("r13") index,
            in("r14") entry as usize,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if (-4095..0).contains(&ret) {
        sys::fail(a, step::CLONE_THREAD, index as u32, -ret as i32);
    }
    if ret as u64 != tid {
        sys::fail(a, step::CLONE_THREAD, index as u32, 17);
    }
}

const RSEQ_FLAG_UNREGISTER: usize = 1;
const PR_SET_NAME: usize = 15;
const ARCH_SET_GS: usize = 0x1001;
const ARCH_SET_FS: usize = 0x1002;
const SS_DISABLE: usize = 2;

/// Drops the engine's rseq registration and alternate stack inherited by the leader.
pub fn drop_inherited(a: &TaskArgs) {
    if a.cur_rseq.ptr != 0 {
        // SAFETY: unregistration only compares the arguments with the registration.
        let r = unsafe {
            sc(sys::RSEQ, a.cur_rseq.ptr as usize, a.cur_rseq.len as usize, RSEQ_FLAG_UNREGISTER, a.cur_rseq.sig as usize, 0, 0)
        };
        check(a, step::RSEQ_DROP, 0, r);
    }
    let ss = [0u64, SS_DISABLE as u64, 0];
    // SAFETY: ss is a stack_t disabling the alternate stack.
    let _ = unsafe { sc(sys::SIGALTSTACK, ss.as_ptr() as usize, 0, 0, 0, 0, 0) };
}

/// The calling thread's own kernel state: robust list, clear_tid address, rseq, name,
/// scheduling, fs/gs base.
pub fn restore_own_state(a: &TaskArgs, t: &ThreadArgs, index: usize) {
    // SAFETY: the kernel only stores the pointer (read at thread exit).
    let r = unsafe { sc(sys::SET_ROBUST_LIST, t.robust_list as usize, t.robust_list_len.max(24) as usize, 0, 0, 0, 0) };
    check(a, step::THREAD_STATE, index, r);
    // SAFETY: the kernel only stores the pointer (cleared at thread exit).
    let _ = unsafe { sc(sys::SET_TID_ADDRESS, t.clear_tid_addr as usize, 0, 0, 0, 0, 0) };
    if t.rseq.ptr != 0 {
        // SAFETY: the rseq area is target memory, restored by now.
        let r = unsafe { sc(sys::RSEQ, t.rseq.ptr as usize, t.rseq.len as usize, 0, t.rseq.sig as usize, 0, 0) };
        check(a, step::RSEQ, index, r);
    }
    if t.comm[0] != 0 {
        // SAFETY: comm is 16 bytes in the area; the kernel reads at most 16 (NUL padded).
        let r = unsafe { sc(sys::PRCTL, PR_SET_NAME, t.comm.as_ptr() as usize, 0, 0, 0, 0) };
        check(a, step::THREAD_STATE, index, r);
    }
    if t.set_sched != 0 {
        let param = [t.sched_prio as i32];
        // SAFETY: param is a struct sched_param; the target is this thread.
        let r = unsafe { sc(sys::SCHED_SETSCHEDULER, t.tid as usize, t.sched_policy as usize, param.as_ptr() as usize, 0, 0, 0) };
        check(a, step::THREAD_STATE, index, r);
        // SAFETY: integer arguments only (PRIO_PROCESS of a TID is that thread).
        let r = unsafe { sc(sys::SETPRIORITY, 0, t.tid as usize, t.sched_nice as isize as usize, 0, 0, 0) };
        check(a, step::THREAD_STATE, index, r);
    }
    // SAFETY: the blob does not use fs/gs-relative memory.
    let r = unsafe { sc(sys::ARCH_PRCTL, ARCH_SET_FS, t.regs.fs_base as usize, 0, 0, 0, 0) };
    check(a, step::THREAD_STATE, index, r);
    // SAFETY: as above.
    let r = unsafe { sc(sys::ARCH_PRCTL, ARCH_SET_GS, t.regs.gs_base as usize, 0, 0, 0, 0) };
    check(a, step::THREAD_STATE, index, r);
}

const PR_CAPBSET_READ: usize = 23;
const PR_CAPBSET_DROP: usize = 24;
const PR_GET_SECUREBITS: usize = 27;
const PR_SET_SECUREBITS: usize = 28;
const PR_SET_NO_NEW_PRIVS: usize = 38;
const PR_CAP_AMBIENT: usize = 47;
const PR_CAP_AMBIENT_RAISE: usize = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: usize = 4;
const SECBIT_NO_SETUID_FIXUP: usize = 1 << 2;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// True when the calling thread's supplementary groups are `want`, in order.
fn groups_are(want: &[u32]) -> bool {
    let mut have = [0u32; 64];
    // SAFETY: the kernel writes at most 64 gid_t into `have`.
    let n = unsafe { sc(sys::GETGROUPS, have.len(), have.as_mut_ptr() as usize, 0, 0, 0, 0) };
    matches!(n, Ok(n) if n == want.len() && have[..n] == *want)
}

/// True when the calling thread's real, effective, saved and fs ids are those of `c`.
fn ids_are(c: &CredsArgs) -> bool {
    let (mut u, mut g) = ([0u32; 3], [0u32; 3]);
    // SAFETY: each pointer names a u32 the kernel writes.
    let got = unsafe {
        sc(sys::GETRESUID, &mut u[0] as *mut u32 as usize, &mut u[1] as *mut u32 as usize, &mut u[2] as *mut u32 as usize, 0, 0, 0)
            .and(sc(sys::GETRESGID, &mut g[0] as *mut u32 as usize, &mut g[1] as *mut u32 as usize, &mut g[2] as *mut u32 as usize, 0, 0, 0))
    };
    // SAFETY: setfsuid(-1)/setfsgid(-1) change nothing and return the current value.
    let (fsuid, fsgid) = unsafe {
        (sc(sys::SETFSUID, usize::MAX, 0, 0, 0, 0, 0), sc(sys::SETFSGID, usize::MAX, 0, 0, 0, 0, 0))
    };
    got.is_ok()
        && u == [c.uid, c.euid, c.suid]
        && g == [c.gid, c.egid, c.sgid]
        && fsuid == Ok(c.fsuid as usize)
        && fsgid == Ok(c.fsgid as usize)
}

fn bits(w: [u32; 2]) -> u64 {
    u64::from(w[0]) | (u64::from(w[1]) << 32)
}

/// Installs the thread's seccomp filters, oldest first (still privileged: the capabilities
/// are set afterwards).
fn install_seccomp(a: &TaskArgs, t: &ThreadArgs, index: usize) {
    // SAFETY: written by the engine inside the area.
    let filters: &[SeccompFilterArgs] = unsafe { slice(t.seccomp, u64::from(t.nr_seccomp)) };
    for f in filters {
        let fprog = SockFprog { len: f.len as u16, _pad: [0; 6], filter: f.prog };
        // SAFETY: fprog points to f.len sock_filter instructions in the area.
        let r = unsafe {
            sc(sys::SECCOMP, SECCOMP_SET_MODE_FILTER, (f.flags & SECCOMP_FLAGS_KEPT) as usize, &fprog as *const _ as usize, 0, 0, 0)
        };
        check(a, step::SECCOMP, index, r);
    }
}

/// `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: u16,
    _pad: [u8; 6],
    filter: u64,
}

const SECCOMP_SET_MODE_FILTER: usize = 1;
/// SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW.
/// TSYNC comes only on the leader's chain of a CRIU image whose other threads have none (see
/// `SeccompFilterArgs::flags`); the leader installs its filters in step 8, after the threads
/// were created, so the kernel synchronises them all to the leader's chain.
const SECCOMP_FLAGS_KEPT: u32 = 1 | 2 | 4;

/// Restores the calling thread's creds and seccomp filters (see `restore_ids_and_caps`).
pub fn restore_creds(a: &TaskArgs, t: &ThreadArgs, index: usize) {
    if t.creds == 0 {
        install_seccomp(a, t, index);
        return;
    }
    restore_ids_and_caps(a, t, index);
}

/// Groups, ids (keeping caps across the change), securebits, bounding set, seccomp filters,
/// capabilities, ambient set, no_new_privs.
fn restore_ids_and_caps(a: &TaskArgs, t: &ThreadArgs, index: usize) {
    // SAFETY: creds points to a CredsArgs written by the engine inside the area.
    let c: &CredsArgs = unsafe { &*(t.creds as *const CredsArgs) };
    // SAFETY: integer arguments only.
    let p = |o: usize, v1: usize, v2: usize| unsafe { sc(sys::PRCTL, o, v1, v2, 0, 0, 0) };
    // Each change is skipped when the task already has what the image asks (CRIU's way): an
    // unprivileged restore (the caller's own ids, CAP_CHECKPOINT_RESTORE only) has no
    // CAP_SETUID, CAP_SETGID or CAP_SETPCAP, and needs none of them for its own creds.
    // SAFETY: groups points to nr_groups u32 in the area.
    let groups: &[u32] = unsafe { slice(c.groups, u64::from(c.nr_groups)) };
    if !groups_are(groups) {
        // SAFETY: the kernel reads nr_groups gid_t from groups.
        let r = unsafe { sc(sys::SETGROUPS, c.nr_groups as usize, groups.as_ptr() as usize, 0, 0, 0, 0) };
        check(a, step::CREDS, index, r);
    }
    if !ids_are(c) {
        // Keep the capabilities across the change of ids.
        check(a, step::CREDS, index, p(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0));
        // SAFETY: integer arguments only.
        let r = unsafe { sc(sys::SETRESGID, c.gid as usize, c.egid as usize, c.sgid as usize, 0, 0, 0) };
        check(a, step::CREDS, index, r);
        // SAFETY: integer argument; setfsgid returns the previous value.
        let _ = unsafe { sc(sys::SETFSGID, c.fsgid as usize, 0, 0, 0, 0, 0) };
        // SAFETY: integer arguments only.
        let r = unsafe { sc(sys::SETRESUID, c.uid as usize, c.euid as usize, c.suid as usize, 0, 0, 0) };
        check(a, step::CREDS, index, r);
        // SAFETY: integer argument; setfsuid returns the previous value.
        let _ = unsafe { sc(sys::SETFSUID, c.fsuid as usize, 0, 0, 0, 0, 0) };
    }
    if p(PR_GET_SECUREBITS, 0, 0) != Ok(c.secbits as usize) {
        check(a, step::CREDS, index, p(PR_SET_SECUREBITS, c.secbits as usize, 0));
    }
    let bnd = bits(c.cap_bnd);
    for cap in 0..64usize {
        if bnd & (1 << cap) == 0 {
            match p(PR_CAPBSET_READ, cap, 0) {
                // EINVAL past the last capability the kernel knows: done.
                Err(22) => break,
                Ok(0) => continue,
                _ => {}
            }
            let _ = p(PR_CAPBSET_DROP, cap, 0);
        }
    }
    install_seccomp(a, t, index);
    let header = [LINUX_CAPABILITY_VERSION_3, 0];
    let data = [
        c.cap_eff[0], c.cap_prm[0], c.cap_inh[0],
        c.cap_eff[1], c.cap_prm[1], c.cap_inh[1],
    ];
    // SAFETY: header is a cap_user_header_t for pid 0 and data two cap_user_data_t.
    let r = unsafe { sc(sys::CAPSET, header.as_ptr() as usize, data.as_ptr() as usize, 0, 0, 0, 0) };
    check(a, step::CREDS, index, r);
    let amb = bits(c.cap_amb);
    // EINVAL on kernels without ambient caps: only fatal if some are wanted.
    let r = p(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0);
    if amb != 0 {
        check(a, step::CREDS, index, r);
    }
    for cap in 0..64usize {
        if amb & (1 << cap) != 0 {
            check(a, step::CREDS, index, p(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap));
        }
    }
    if c.no_new_privs != 0 {
        check(a, step::CREDS, index, p(PR_SET_NO_NEW_PRIVS, 1, 0));
    }
}
