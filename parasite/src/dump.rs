//! The dump parasite (no_std, position independent). Injected into a stopped task and started
//! on its own stack in the task's main thread with `rdi` = `&ParasiteArgs`; it serves the
//! command socket (protocol: `common/dump_proto.rs`) until FINI, then closes its pipes and
//! waits for the dumper to stop it. Whenever the dumper's end of the socket closes (the
//! dumper died: the kernel closes its descriptors), the parasite puts its thread back as it
//! was by itself: closes its descriptors and returns through the signal frame the dumper
//! prepared (`rt_sigreturn`, see `src/sys/sigframe.rs`); a trap with no tracer would kill
//! the task. Unless other threads may run the area's code (the thread routine ran), it
//! leaves by unmapping the area on its way out (`src/parasite/gadgets.rs`). Exports:
//!
//! ```text
//! __export_entry           offset 0: call serve(args) (never returns)
//! __export_syscall_gadget  `syscall; push 15; pop rax; syscall` (sys::remote::GADGET): lets
//!                          the dumper run remote syscalls in the task without poking code
//! __export_thread_entry    rdi = a ThreadState slot: fills the slot with the calling
//!                          thread's state (the same as `fill_thread_state`, in assembly:
//!                          integer registers only, so no FPU/vector state to restore;
//!                          no stack), sends THREAD_DONE ^ tid on the socket, then waits
//!                          for the socket to hang up (the dumper stops it before) and
//!                          returns through the frame in its slot
//! ```
#![no_std]
#![no_main]

mod common;
#[path = "common/dump_proto.rs"]
#[allow(dead_code)]
mod proto;

use common::syscall::syscall6;
use proto::*;

core::arch::global_asm!(
    ".section .text.entry,\"ax\"",
    ".globl __export_entry",
    "__export_entry:",
    "    call {serve}",
    "    ud2",
    ".globl __export_syscall_gadget",
    "__export_syscall_gadget:",
    "    syscall",
    "    push 15",
    "    pop rax",
    "    syscall",
    // The thread routine: plain integer code only (no SSE/x87, no stack), so the
    // thread's FPU/vector state stays untouched; results go straight into the slot
    // (layout: ThreadState, scratch from offset 384). r12 = slot.
    ".macro CHECK",
    "    cmp rax, -4095",
    "    jae 90f",
    ".endm",
    ".globl __export_thread_entry",
    "__export_thread_entry:",
    "    mov r12, rdi",
    "    mov r13, rsi",
    "    mov r14, rdx",
    "    mov r15, rcx",
    "    mov [r12 + 464], r8",
    "    mov [r12 + 472], r9",
    "    mov [r12 + 480], r10",
    // First of all, block every signal: rt_sigprocmask(SIG_SETMASK, scratch+496,
    // scratch+504); the thread's own mask lands at scratch+504 (a signal the thread takes
    // before this is seen by the dumper, which then blocks them by ptrace and writes the
    // mask into the frame itself, scratch+520 = 1)
    "    mov qword ptr [r12 + 512], 0",
    "    mov rax, -1",
    "    mov [r12 + 496], rax",
    "    mov edi, 2",
    "    lea rsi, [r12 + 496]",
    "    lea rdx, [r12 + 504]",
    "    mov r10d, 8",
    "    mov eax, 14",
    "    syscall",
    "    mov rbx, rax",
    "    cmp rax, -4095",
    "    jae 15f",
    "    mov qword ptr [r12 + 512], 1",
    // the frame's uc_sigmask (frame at scratch+640, mask at +296)
    "    cmp qword ptr [r12 + 520], 0",
    "    jne 15f",
    "    mov rax, [r12 + 504]",
    "    mov [r12 + 936], rax",
    "15:",
    "    mov rdi, r12",
    "    xor eax, eax",
    "    mov ecx, 48",
    "    rep stosq",
    "    mov rax, [r12 + 504]",
    "    mov [r12 + 376], rax",
    "    mov [r12 + 440], r13",
    "    mov [r12 + 448], r14",
    "    mov [r12 + 456], r15",
    "    mov rax, rbx",
    "    CHECK",
    // XSAVE (standard format, 64-bit FIP/FDP) of the features in rdx into the zeroed area
    // at THREAD_XSAVE_OFF, rsi bytes long: the state ptrace would show, without a request
    "    test r13, r13",
    "    jz 8f",
    "    lea rdi, [r12 + 1024]",
    "    mov rcx, r13",
    "    shr rcx, 3",
    "    xor eax, eax",
    "    rep stosq",
    "    mov rax, r14",
    "    mov rdx, r14",
    "    shr rdx, 32",
    "    xsave64 [r12 + 1024]",
    // the signal frame's software bytes (scratch+544..568, from the dumper) and MAGIC2 at
    // the end of the area (xstate_size, scratch+560), for the return through the frame
    "    mov rax, [r12 + 544]",
    "    mov [r12 + 1488], rax",
    "    mov rax, [r12 + 552]",
    "    mov [r12 + 1496], rax",
    "    mov rax, [r12 + 560]",
    "    mov [r12 + 1504], rax",
    "    mov eax, [r12 + 560]",
    "    mov dword ptr [r12 + rax + 1024], 0x46505845",
    "    mov [r12 + 364], r13d",
    // XINUSE (xgetbv 1) when asked (bit 1 of rcx at entry): the dumper checks for
    // features it left out of the mask
    "    mov qword ptr [r12 + 488], -1",
    "    test r15, 2",
    "    jz 8f",
    "    mov ecx, 1",
    "    xgetbv",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov [r12 + 488], rax",
    "8:",
    "    xor r10d, r10d",
    "    xor r8d, r8d",
    "    xor r9d, r9d",
    // sigaltstack(NULL, scratch+600)
    "    xor edi, edi",
    "    lea rsi, [r12 + 600]",
    "    xor edx, edx",
    "    mov eax, 131",
    "    syscall",
    "    CHECK",
    "    mov rax, [r12 + 600]",
    "    mov [r12 + 8], rax",
    "    mov eax, [r12 + 608]",
    "    mov [r12 + 24], eax",
    "    mov rax, [r12 + 616]",
    "    mov [r12 + 16], rax",
    // prctl(PR_GET_TID_ADDRESS, &tid_address)
    "    mov edi, 40",
    "    lea rsi, [r12]",
    "    mov eax, 157",
    "    syscall",
    "    CHECK",
    // prctl(PR_GET_PDEATHSIG, &pdeath_sig)
    "    mov edi, 2",
    "    lea rsi, [r12 + 28]",
    "    mov eax, 157",
    "    syscall",
    "    CHECK",
    // prctl(PR_GET_NAME, comm)
    "    mov edi, 16",
    "    lea rsi, [r12 + 32]",
    "    mov eax, 157",
    "    syscall",
    "    CHECK",
    // get_robust_list(0, &head, &len)
    "    xor edi, edi",
    "    lea rsi, [r12 + 48]",
    "    lea rdx, [r12 + 56]",
    "    mov eax, 274",
    "    syscall",
    "    CHECK",
    // rt_sigpending(&set, 8)
    "    lea rdi, [r12 + 64]",
    "    mov esi, 8",
    "    xor edx, edx",
    "    mov eax, 127",
    "    syscall",
    "    CHECK",
    // getresuid, setfsuid(-1)
    "    lea rdi, [r12 + 72]",
    "    lea rsi, [r12 + 76]",
    "    lea rdx, [r12 + 80]",
    "    mov eax, 118",
    "    syscall",
    "    CHECK",
    "    mov edi, -1",
    "    mov eax, 122",
    "    syscall",
    "    mov [r12 + 84], eax",
    // getresgid, setfsgid(-1)
    "    lea rdi, [r12 + 88]",
    "    lea rsi, [r12 + 92]",
    "    lea rdx, [r12 + 96]",
    "    mov eax, 120",
    "    syscall",
    "    CHECK",
    "    mov edi, -1",
    "    mov eax, 123",
    "    syscall",
    "    mov [r12 + 100], eax",
    // capget(v3 header at scratch+400, data at scratch+408)
    "    mov dword ptr [r12 + 400], 0x20080522",
    "    mov dword ptr [r12 + 404], 0",
    "    lea rdi, [r12 + 400]",
    "    lea rsi, [r12 + 408]",
    "    xor edx, edx",
    "    mov eax, 125",
    "    syscall",
    "    CHECK",
    "    mov eax, [r12 + 408]",
    "    mov edx, [r12 + 420]",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov [r12 + 104], rax",
    "    mov eax, [r12 + 412]",
    "    mov edx, [r12 + 424]",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov [r12 + 112], rax",
    "    mov eax, [r12 + 416]",
    "    mov edx, [r12 + 428]",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov [r12 + 120], rax",
    // bounding set: PR_CAPBSET_READ of each capability until EINVAL
    "    xor ebx, ebx",
    "    xor r13d, r13d",
    "1:",
    "    mov edi, 23",
    "    mov rsi, rbx",
    "    xor edx, edx",
    "    mov eax, 157",
    "    syscall",
    "    cmp rax, -4095",
    "    jae 2f",
    "    test rax, rax",
    "    jz 3f",
    "    bts r13, rbx",
    "3:",
    "    inc ebx",
    "    cmp ebx, 64",
    "    jb 1b",
    "2:",
    "    mov [r12 + 128], r13",
    // ambient set: PR_CAP_AMBIENT_IS_SET of the capabilities both permitted and
    // inheritable (the only ones that can be ambient)
    "    mov r14, [r12 + 112]",
    "    and r14, [r12 + 120]",
    "    xor ebx, ebx",
    "    xor r13d, r13d",
    "4:",
    "    bt r14, rbx",
    "    jnc 5f",
    "    mov edi, 47",
    "    mov esi, 1",
    "    mov rdx, rbx",
    "    mov eax, 157",
    "    syscall",
    "    cmp rax, -4095",
    "    jae 6f",
    "    test rax, rax",
    "    jz 5f",
    "    bts r13, rbx",
    "5:",
    "    inc ebx",
    "    cmp ebx, 64",
    "    jb 4b",
    "6:",
    "    mov [r12 + 136], r13",
    // prctl(PR_GET_SECUREBITS), prctl(PR_GET_NO_NEW_PRIVS)
    "    mov edi, 27",
    "    xor esi, esi",
    "    xor edx, edx",
    "    mov eax, 157",
    "    syscall",
    "    CHECK",
    "    mov [r12 + 144], eax",
    "    mov edi, 39",
    "    mov eax, 157",
    "    syscall",
    "    CHECK",
    "    mov [r12 + 292], eax",
    // getgroups(32, groups); more than 32: getgroups(0, NULL) for the count
    "    mov edi, 32",
    "    lea rsi, [r12 + 152]",
    "    mov eax, 115",
    "    syscall",
    "    cmp rax, -22",
    "    jne 7f",
    "    xor edi, edi",
    "    xor esi, esi",
    "    mov eax, 115",
    "    syscall",
    "7:",
    "    CHECK",
    "    mov [r12 + 148], eax",
    // sched_getscheduler(0) without SCHED_RESET_ON_FORK, sched_getparam(0), nice
    "    xor edi, edi",
    "    mov eax, 145",
    "    syscall",
    "    CHECK",
    "    and eax, 0xbfffffff",
    "    mov [r12 + 280], eax",
    "    xor edi, edi",
    "    lea rsi, [r12 + 284]",
    "    mov eax, 143",
    "    syscall",
    "    CHECK",
    "    xor edi, edi",
    "    xor esi, esi",
    "    mov eax, 140",
    "    syscall",
    "    CHECK",
    "    mov edx, 20",
    "    sub edx, eax",
    "    mov [r12 + 288], edx",
    // prctl(PR_GET_SECCOMP): the mode (seccomp itself is suspended by the tracer)
    "    mov edi, 21",
    "    xor esi, esi",
    "    xor edx, edx",
    "    mov eax, 157",
    "    syscall",
    "    CHECK",
    "    mov [r12 + 360], eax",
    // rseq: confirm, without side effects, the registration the dumper guessed (r8 area,
    // r9 length, r10 signature at entry). Unregistering with another signature answers
    // EPERM only for the registered area and length; registering again answers EBUSY only
    // if the signature matches too. Should the other signature be the registered one (the
    // unregistration succeeds), the same registration is made again at once. Anything but
    // EPERM + EBUSY leaves the question to ptrace.
    "    mov dword ptr [r12 + 368], -38",
    "    mov rdi, [r12 + 464]",
    "    test rdi, rdi",
    "    jz 13f",
    "    mov esi, [r12 + 472]",
    "    mov edx, 1",
    "    mov r10d, [r12 + 480]",
    "    xor r10d, 1",
    "    mov eax, 334",
    "    syscall",
    "    test rax, rax",
    "    jnz 14f",
    "    mov rdi, [r12 + 464]",
    "    mov esi, [r12 + 472]",
    "    xor edx, edx",
    "    mov r10d, [r12 + 480]",
    "    xor r10d, 1",
    "    mov eax, 334",
    "    syscall",
    "    mov eax, -22",
    "    jmp 12f",
    "14:",
    "    cmp rax, -1",
    "    jne 12f",
    "    mov rdi, [r12 + 464]",
    "    mov esi, [r12 + 472]",
    "    xor edx, edx",
    "    mov r10d, [r12 + 480]",
    "    mov eax, 334",
    "    syscall",
    "    cmp rax, -16",
    "    jne 12f",
    "    xor eax, eax",
    "12:",
    "    mov [r12 + 368], eax",
    "13:",
    // get_thread_area is not in the 64-bit syscall table (and the 32-bit one through
    // int 0x80 costs about 16 us in a VM, five ptrace requests): the dumper asks ptrace.
    "    mov dword ptr [r12 + 344], -38",
    "    jmp 91f",
    "90:",
    "    mov [r12 + 348], eax",
    "91:",
    // done = THREAD_DONE ^ gettid(), also sent to the dumper on the socket (scratch+528):
    // MSG_NOSIGNAL, a dumper gone gives EPIPE and no SIGPIPE
    "    mov eax, 186",
    "    syscall",
    "    movabs rdx, 0x54485244444f4e45",
    "    xor rax, rdx",
    "    mov [r12 + 352], rax",
    "    mov edi, [r12 + 528]",
    "    lea rsi, [r12 + 352]",
    "    mov edx, 8",
    "    mov r10d, 0x4000",
    "    xor r8d, r8d",
    "    xor r9d, r9d",
    "    mov eax, 44",
    "    syscall",
    // Wait for the socket to hang up: ppoll({fd, events 0}, 1, NULL, NULL) at scratch+536.
    // The dumper stops the thread in here and gives it its registers back; the ppoll
    // returns only if the dumper is gone. Not poll(2): an interrupted poll sets the
    // thread's restart block (do_restart_poll), which a syscall the thread was stopped in
    // (nanosleep, ...) needs when the kernel restarts it after the cure.
    "17:",
    "    mov eax, [r12 + 528]",
    "    mov [r12 + 536], eax",
    "    mov dword ptr [r12 + 540], 0",
    "    lea rdi, [r12 + 536]",
    "    mov esi, 1",
    "    xor edx, edx",
    "    xor r10d, r10d",
    "    mov r8d, 8",
    "    mov eax, 271",
    "    syscall",
    "    cmp rax, -4",
    "    je 17b",
    "    test rax, rax",
    "    jz 17b",
    // Back as it was: the frame's uc_stack from sigaltstack(NULL, ..), then rt_sigreturn
    // with rsp at the frame's ucontext (scratch+640).
    "    xor edi, edi",
    "    lea rsi, [r12 + 656]",
    "    mov eax, 131",
    "    syscall",
    "    lea rsp, [r12 + 640]",
    "    mov eax, 15",
    "    syscall",
    "    ud2",
    ".purgem CHECK",
    ".previous",
    serve = sym serve,
);

const SYS_CLOSE: usize = 3;
const SYS_MUNMAP: usize = 11;
const SYS_MPROTECT: usize = 10;
const SYS_BRK: usize = 12;
const SYS_RT_SIGACTION: usize = 13;
const SYS_GETITIMER: usize = 36;
const SYS_GETPID: usize = 39;
const SYS_GETGROUPS: usize = 115;
const SYS_GETRESUID: usize = 118;
const SYS_GETRESGID: usize = 120;
const SYS_SETFSUID: usize = 122;
const SYS_SETFSGID: usize = 123;
const SYS_CAPGET: usize = 125;
const SYS_RT_SIGPENDING: usize = 127;
const SYS_GETPRIORITY: usize = 140;
const SYS_SCHED_GETPARAM: usize = 143;
const SYS_SCHED_GETSCHEDULER: usize = 145;
const SYS_GETTID: usize = 186;
const SYS_GET_ROBUST_LIST: usize = 274;
const SYS_SENDMSG: usize = 46;
const SYS_RECVMSG: usize = 47;
const SYS_FCNTL: usize = 72;
const SYS_UMASK: usize = 95;
const SYS_GETPPID: usize = 110;
const SYS_GETPGID: usize = 121;
const SYS_GETSID: usize = 124;
const SYS_SIGALTSTACK: usize = 131;
const SYS_PERSONALITY: usize = 135;
const SYS_PRCTL: usize = 157;
const SYS_TIMER_GETTIME: usize = 224;
const SYS_TIMER_GETOVERRUN: usize = 225;
const SYS_VMSPLICE: usize = 278;
const SYS_PRLIMIT64: usize = 302;
const SYS_USERFAULTFD: usize = 323;
const SYS_MEMBARRIER: usize = 324;

const PR_GET_PDEATHSIG: usize = 2;
const PR_GET_DUMPABLE: usize = 3;
const PR_GET_NAME: usize = 16;
const PR_GET_CHILD_SUBREAPER: usize = 37;
const PR_GET_NO_NEW_PRIVS: usize = 39;
const PR_GET_TID_ADDRESS: usize = 40;
const PR_GET_THP_DISABLE: usize = 42;
const PR_CAPBSET_READ: usize = 23;
const PR_GET_SECCOMP: usize = 21;
const PR_GET_SECUREBITS: usize = 27;
const PR_CAP_AMBIENT: usize = 47;
const PR_CAP_AMBIENT_IS_SET: usize = 1;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const SCHED_RESET_ON_FORK: usize = 0x4000_0000;
const ENOSYS: i32 = 38;
const F_GETFD: usize = 1;
const F_GETSIG: usize = 11;
const F_GETOWN_EX: usize = 16;
const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;
const EINVAL: isize = 22;
const EINTR: isize = 4;
const SYS_PPOLL: usize = 271;
const SYS_RT_SIGTIMEDWAIT: usize = 128;
/// A closed peer gives EPIPE without raising SIGPIPE.
const MSG_NOSIGNAL: usize = 0x4000;
const SIGPIPE_BIT: u64 = 1 << 12;
const POLLNVAL: i16 = 0x20;
const EPROTO: isize = 71;
const EPERM: isize = 1;

/// Raw syscall with up to six arguments.
fn sys(nr: usize, a: [usize; 6]) -> isize {
    // SAFETY: every call site passes arguments valid for `nr`: pointers point into live
    // buffers of this frame sized for what the kernel writes or reads.
    unsafe { syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

fn ok(ret: isize) -> Result<usize, isize> {
    if (-4095..0).contains(&ret) {
        Err(ret)
    } else {
        Ok(ret as usize)
    }
}

#[repr(C)]
struct Iovec {
    base: usize,
    len: usize,
}

#[repr(C)]
struct Msghdr {
    name: usize,
    namelen: u32,
    pad: u32,
    iov: *mut Iovec,
    iovlen: usize,
    control: *mut u8,
    controllen: usize,
    flags: i32,
    pad2: i32,
}

/// Control buffer for up to MAX_FDS descriptors: cmsghdr (16 bytes) + 4 per fd.
const CMSG_BUF: usize = 16 + 4 * MAX_FDS;

#[repr(C, align(8))]
struct Cmsg([u8; CMSG_BUF]);

/// Receives one message into `buf`; returns its length and the first SCM_RIGHTS fd (or -1).
fn recv(sock: i32, buf: &mut [u8]) -> Result<(usize, i32), isize> {
    let mut iov = Iovec { base: buf.as_mut_ptr() as usize, len: buf.len() };
    let mut cmsg = Cmsg([0; CMSG_BUF]);
    let mut msg = Msghdr {
        name: 0,
        namelen: 0,
        pad: 0,
        iov: &mut iov,
        iovlen: 1,
        control: cmsg.0.as_mut_ptr(),
        controllen: CMSG_BUF,
        flags: 0,
        pad2: 0,
    };
    let n = ok(sys(SYS_RECVMSG, [sock as usize, &mut msg as *mut Msghdr as usize, 0, 0, 0, 0]))?;
    let mut fd = -1;
    if msg.controllen >= 20 {
        let level = i32::from_ne_bytes([cmsg.0[8], cmsg.0[9], cmsg.0[10], cmsg.0[11]]);
        let kind = i32::from_ne_bytes([cmsg.0[12], cmsg.0[13], cmsg.0[14], cmsg.0[15]]);
        if level == SOL_SOCKET && kind == SCM_RIGHTS {
            fd = i32::from_ne_bytes([cmsg.0[16], cmsg.0[17], cmsg.0[18], cmsg.0[19]]);
        }
    }
    Ok((n, fd))
}

/// Sends one message made of `parts`, with `fds` as SCM_RIGHTS when not empty.
fn send(sock: i32, parts: &[&[u8]], fds: &[i32]) -> Result<(), isize> {
    let mut iovs = [Iovec { base: 0, len: 0 }, Iovec { base: 0, len: 0 }];
    let count = parts.len().min(2);
    for (iov, part) in iovs.iter_mut().zip(parts) {
        iov.base = part.as_ptr() as usize;
        iov.len = part.len();
    }
    let mut cmsg = Cmsg([0; CMSG_BUF]);
    let nfds = fds.len().min(MAX_FDS);
    let clen = 16 + 4 * nfds;
    cmsg.0[..8].copy_from_slice(&(clen as u64).to_ne_bytes());
    cmsg.0[8..12].copy_from_slice(&SOL_SOCKET.to_ne_bytes());
    cmsg.0[12..16].copy_from_slice(&SCM_RIGHTS.to_ne_bytes());
    for (i, fd) in fds[..nfds].iter().enumerate() {
        cmsg.0[16 + 4 * i..20 + 4 * i].copy_from_slice(&fd.to_ne_bytes());
    }
    let mut msg = Msghdr {
        name: 0,
        namelen: 0,
        pad: 0,
        iov: iovs.as_mut_ptr(),
        iovlen: count,
        control: if nfds > 0 { cmsg.0.as_mut_ptr() } else { core::ptr::null_mut() },
        controllen: if nfds > 0 { (clen + 7) & !7 } else { 0 },
        flags: 0,
        pad2: 0,
    };
    ok(sys(SYS_SENDMSG, [sock as usize, &mut msg as *mut Msghdr as usize, MSG_NOSIGNAL, 0, 0, 0])).map(drop)
}

fn reply(sock: i32, cmd: u32, result: Result<&[u8], isize>, fds: &[i32]) -> Result<(), isize> {
    let (status, payload) = match result {
        Ok(p) => (0, p),
        Err(e) => (e as i32, &[][..]),
    };
    let hdr = ReplyHeader { cmd, status, len: payload.len() as u32, pad: 0 };
    send(sock, &[bytes_of(&hdr), payload], if status == 0 { fds } else { &[] })
}

/// The command loop. Never returns: after FINI it waits for the dumper to stop it; when the
/// socket fails (the dumper is gone) it puts the thread back by itself ([`cure_self`]).
extern "C" fn serve(args_ptr: *const ParasiteArgs) -> ! {
    // SAFETY: the dumper wrote a ParasiteArgs at `args_ptr` before starting us.
    let args = unsafe { core::ptr::read_volatile(args_ptr) };
    if args.magic != ARGS_MAGIC {
        // No frame to return through: only a broken dumper gets here.
        // SAFETY: ud2 raises SIGILL, as good as any trap.
        unsafe { core::arch::asm!("ud2", options(noreturn)) }
    }
    let sock = args.sock_fd;
    let sigpipe_before = sigpending() & SIGPIPE_BIT != 0;
    // Page pipes by index (SET_PIPE's payload; none: index 0).
    let mut pipes = [-1i32; MAX_PIPES];
    let mut buf = [0u8; MAX_MSG];
    let mut out = [0u8; MAX_MSG];
    let mut fini = false;
    loop {
        let Ok((n, fd)) = recv(sock, &mut buf) else { break };
        let Some(hdr) = read::<CmdHeader>(&buf[..n]) else { break };
        let hlen = core::mem::size_of::<CmdHeader>();
        let payload = &buf[hlen..n.min(hlen + hdr.len as usize)];
        let sent = match hdr.cmd {
            CMD_SET_PIPE => {
                let idx = read::<i32>(payload).unwrap_or(0);
                if fd < 0 || !(0..MAX_PIPES as i32).contains(&idx) {
                    if fd >= 0 {
                        sys(SYS_CLOSE, [fd as usize, 0, 0, 0, 0, 0]);
                    }
                    reply(sock, hdr.cmd, Err(-EINVAL), &[])
                } else {
                    let slot = &mut pipes[idx as usize];
                    if *slot >= 0 {
                        sys(SYS_CLOSE, [*slot as usize, 0, 0, 0, 0, 0]);
                    }
                    *slot = fd;
                    reply(sock, hdr.cmd, Ok(bytes_of(&fd)), &[])
                }
            }
            CMD_DUMP_PAGES => {
                let r = dump_pages(pipes[0], payload);
                reply(sock, hdr.cmd, r.as_ref().map(|v| bytes_of(v)).map_err(|e| *e), &[])
            }
            CMD_DUMP_PAGES_TO => {
                let idx = read::<u64>(payload).unwrap_or(u64::MAX);
                let r = if idx < MAX_PIPES as u64 {
                    dump_pages(pipes[idx as usize], &payload[8..])
                } else {
                    Err(-EINVAL)
                };
                reply(sock, hdr.cmd, r.as_ref().map(|v| bytes_of(v)).map_err(|e| *e), &[])
            }
            CMD_MPROTECT => reply(sock, hdr.cmd, mprotect(payload).map(|_| &[][..]), &[]),
            CMD_DRAIN_FDS => {
                let mut fds = [0i32; MAX_FDS];
                match drain_fds(payload, &mut fds, &mut out) {
                    Ok((count, len)) => reply(sock, hdr.cmd, Ok(&out[..len]), &fds[..count]),
                    Err(e) => reply(sock, hdr.cmd, Err(e), &[]),
                }
            }
            CMD_MISC => {
                let r = misc();
                reply(sock, hdr.cmd, r.as_ref().map(|v| bytes_of(v)).map_err(|e| *e), &[])
            }
            CMD_SIGACTIONS => {
                let r = sigactions(&mut out);
                reply(sock, hdr.cmd, r.map(|len| &out[..len]), &[])
            }
            CMD_POSIX_TIMERS => {
                let r = posix_timers(payload, &mut out);
                reply(sock, hdr.cmd, r.map(|len| &out[..len]), &[])
            }
            CMD_THREAD_STATE => {
                let r = thread_state();
                reply(sock, hdr.cmd, r.as_ref().map(|v| bytes_of(v)).map_err(|e| *e), &[])
            }
            CMD_USERFAULTFD => {
                let flags = read::<i32>(payload).unwrap_or(0) as u32 as usize;
                match ok(sys(SYS_USERFAULTFD, [flags, 0, 0, 0, 0, 0])) {
                    Ok(fd) => {
                        let fd = fd as i32;
                        let sent = reply(sock, hdr.cmd, Ok(bytes_of(&fd)), &[fd]);
                        // The dumper holds it now (or the send failed): none stays here.
                        sys(SYS_CLOSE, [fd as usize, 0, 0, 0, 0, 0]);
                        sent
                    }
                    Err(e) => reply(sock, hdr.cmd, Err(e), &[]),
                }
            }
            CMD_FINI => {
                // The page pipes go before the answer: once answered, the dumper may stop
                // this thread at any moment and then list the task's descriptors.
                for pipe in pipes.iter_mut().filter(|p| **p >= 0) {
                    sys(SYS_CLOSE, [*pipe as usize, 0, 0, 0, 0, 0]);
                    *pipe = -1;
                }
                fini = reply(sock, hdr.cmd, Ok(&[]), &[]).is_ok();
                break;
            }
            _ => reply(sock, hdr.cmd, Err(-EPROTO), &[]),
        };
        if sent.is_err() {
            break;
        }
    }
    for pipe in pipes {
        if pipe >= 0 {
            sys(SYS_CLOSE, [pipe as usize, 0, 0, 0, 0, 0]);
        }
    }
    // After FINI the dumper stops us in this poll and removes everything itself; it returns
    // only if the dumper is gone (hang-up) or after the dumper closed the socket (POLLNVAL:
    // the number is no longer ours to close).
    let sock_ours = !fini || wait_hangup(sock) & POLLNVAL == 0;
    if sock_ours {
        sys(SYS_CLOSE, [sock as usize, 0, 0, 0, 0, 0]);
    }
    // SAFETY: `args_ptr` is the dumper's ParasiteArgs; it clears unmap_ok in place before
    // any other thread can run our code.
    let unmap_ok = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*args_ptr).unmap_ok)) };
    if unmap_ok == 1 && args.exit_frame != 0 && args.exit_syscall_ret != 0 {
        leave_unmapping(&args, sigpipe_before)
    }
    cure_self(args.cure_sp, sigpipe_before)
}

/// Blocks until `sock` hangs up (or is closed); returns the poll's revents.
///
/// ppoll without a timeout, not poll(2): an interrupted poll overwrites the task's restart
/// block (`do_restart_poll`), and the syscall the task was stopped in (clock_nanosleep, ...)
/// is restarted through that block once the parasite is cured.
fn wait_hangup(sock: i32) -> i16 {
    let mut pfd = [sock, 0i32]; // struct pollfd: fd, events 0, revents 0
    loop {
        let r = sys(SYS_PPOLL, [pfd.as_mut_ptr() as usize, 1, 0, 0, 8, 0]);
        if r > 0 {
            return (pfd[1] >> 16) as i16;
        }
        if r != -EINTR && r != 0 {
            return 0;
        }
    }
}

/// The pending signals of the thread and the process.
fn sigpending() -> u64 {
    let mut set = 0u64;
    sys(SYS_RT_SIGPENDING, [&mut set as *mut u64 as usize, 8, 0, 0, 0, 0]);
    set
}

/// Puts the thread back as it was before the parasite started: a SIGPIPE our writes to the
/// dead dumper's pipes raised is taken back (it was not pending before), then `rt_sigreturn`
/// through the frame whose ucontext is at `cure_sp` (registers, mask, XSAVE area; the
/// alternate stack is read now, so restoring it changes nothing).
fn cure_self(cure_sp: u64, sigpipe_before: bool) -> ! {
    take_back_sigpipe(sigpipe_before);
    sys(SYS_SIGALTSTACK, [0, cure_sp as usize + 16, 0, 0, 0, 0]);
    // SAFETY: the dumper wrote a complete frame at `cure_sp` (sigframe.rs); rt_sigreturn
    // replaces every register and never returns here.
    unsafe {
        core::arch::asm!(
            "mov rsp, {sp}",
            "mov eax, 15",
            "syscall",
            "ud2",
            sp = in(reg) cure_sp,
            options(noreturn),
        )
    }
}

/// A SIGPIPE our writes to the dead dumper's pipes raised is taken back (it was not pending
/// before).
fn take_back_sigpipe(sigpipe_before: bool) {
    if !sigpipe_before && sigpending() & SIGPIPE_BIT != 0 {
        let set = SIGPIPE_BIT;
        let zero = [0i64; 2];
        sys(SYS_RT_SIGTIMEDWAIT, [&set as *const u64 as usize, 0, zero.as_ptr() as usize, 8, 0, 0]);
    }
}

/// [`cure_self`] that also removes the area: rsp = the exit frame on the leader's own stack,
/// then munmap of the area through the `syscall; ret` outside it, whose `ret` takes the
/// frame's pretcode: an `rt_sigreturn` sequence outside the area (`src/parasite/gadgets.rs`).
fn leave_unmapping(args: &ParasiteArgs, sigpipe_before: bool) -> ! {
    take_back_sigpipe(sigpipe_before);
    // The frame's ucontext is at exit_frame + 8, its uc_stack 16 bytes further.
    sys(SYS_SIGALTSTACK, [0, args.exit_frame as usize + 8 + 16, 0, 0, 0, 0]);
    // SAFETY: the dumper wrote a complete frame at exit_frame and found both gadgets in
    // mappings that are not the area; nothing after the jump touches the area.
    unsafe {
        core::arch::asm!(
            "mov rsp, {sp}",
            "jmp {gadget}",
            sp = in(reg) args.exit_frame,
            gadget = in(reg) args.exit_syscall_ret,
            in("rax") SYS_MUNMAP,
            in("rdi") args.area_base,
            in("rsi") args.area_len,
            options(noreturn),
        )
    }
}

fn dump_pages(pipe: i32, payload: &[u8]) -> Result<u64, isize> {
    if pipe < 0 {
        return Err(-EINVAL);
    }
    let count = payload.len() / core::mem::size_of::<RemoteIov>();
    let mut total = 0u64;
    for i in 0..count.min(MAX_IOVS) {
        let Some(iov) = read_at::<RemoteIov>(payload, i) else { break };
        let (mut base, mut left) = (iov.base as usize, iov.len as usize);
        while left > 0 {
            let mut one = Iovec { base, len: left };
            let n = ok(sys(SYS_VMSPLICE, [pipe as usize, &mut one as *mut Iovec as usize, 1, 0, 0, 0]))?;
            if n == 0 {
                return Err(-EPROTO);
            }
            base += n;
            left -= n;
            total += n as u64;
        }
    }
    Ok(total)
}

fn mprotect(payload: &[u8]) -> Result<(), isize> {
    let count = payload.len() / core::mem::size_of::<MprotectReq>();
    for i in 0..count {
        let Some(r) = read_at::<MprotectReq>(payload, i) else { break };
        ok(sys(SYS_MPROTECT, [r.addr as usize, r.len as usize, r.prot as usize, 0, 0, 0]))?;
    }
    Ok(())
}

fn drain_fds(payload: &[u8], fds: &mut [i32; MAX_FDS], out: &mut [u8]) -> Result<(usize, usize), isize> {
    let count = (payload.len() / 4).min(MAX_FDS);
    let size = core::mem::size_of::<FdOpts>();
    for i in 0..count {
        let fd = read_at::<i32>(payload, i).unwrap_or(-1);
        fds[i] = fd;
        let flags = ok(sys(SYS_FCNTL, [fd as usize, F_GETFD, 0, 0, 0, 0]))?;
        let mut owner = [0i32; 2];
        ok(sys(SYS_FCNTL, [fd as usize, F_GETOWN_EX, owner.as_mut_ptr() as usize, 0, 0, 0]))?;
        let sig = ok(sys(SYS_FCNTL, [fd as usize, F_GETSIG, 0, 0, 0, 0]))?;
        let opts = FdOpts {
            fd,
            fd_flags: flags as i32,
            owner_type: owner[0],
            owner_pid: owner[1],
            signum: sig as i32,
            pad: 0,
        };
        out[i * size..(i + 1) * size].copy_from_slice(bytes_of(&opts));
    }
    Ok((count, count * size))
}

fn prctl_int(option: usize) -> Result<i32, isize> {
    let mut v = 0i32;
    ok(sys(SYS_PRCTL, [option, &mut v as *mut i32 as usize, 0, 0, 0, 0]))?;
    Ok(v)
}

/// The membarrier registrations (CRIU's rule): a private expedited barrier command succeeds
/// only when the process registered for it (EPERM otherwise, EINVAL/ENOSYS when the kernel
/// lacks it); each success sets its registration command (`MEMBARRIER_CMD_REGISTER_X` =
/// `MEMBARRIER_CMD_X << 1`): PRIVATE_EXPEDITED, ..._SYNC_CORE, ..._RSEQ.
fn membarrier_mask() -> Result<u32, isize> {
    let mut mask = 0u32;
    for bit in [3u32, 5, 7] {
        let cmd = 1usize << bit;
        match sys(SYS_MEMBARRIER, [cmd, 0, 0, 0, 0, 0]) {
            0 => mask |= (cmd as u32) << 1,
            r if r == -EPERM || r == -EINVAL || r == -(ENOSYS as isize) => {}
            r => return Err(r),
        }
    }
    Ok(mask)
}

fn misc() -> Result<MiscState, isize> {
    let mut m = MiscState {
        brk: ok(sys(SYS_BRK, [0; 6]))? as u64,
        pid: ok(sys(SYS_GETPID, [0; 6]))? as i32,
        ppid: ok(sys(SYS_GETPPID, [0; 6]))? as i32,
        sid: ok(sys(SYS_GETSID, [0; 6]))? as i32,
        pgid: ok(sys(SYS_GETPGID, [0; 6]))? as i32,
        ..MiscState::default()
    };
    let old = ok(sys(SYS_UMASK, [0; 6]))?;
    sys(SYS_UMASK, [old, 0, 0, 0, 0, 0]);
    m.umask = old as u32;
    m.dumpable = ok(sys(SYS_PRCTL, [PR_GET_DUMPABLE, 0, 0, 0, 0, 0]))? as i32;
    m.personality = ok(sys(SYS_PERSONALITY, [0xffff_ffff, 0, 0, 0, 0, 0]))? as u32;
    m.thp_disabled = ok(sys(SYS_PRCTL, [PR_GET_THP_DISABLE, 0, 0, 0, 0, 0]))? as i32;
    m.child_subreaper = prctl_int(PR_GET_CHILD_SUBREAPER)?;
    m.no_new_privs = ok(sys(SYS_PRCTL, [PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0, 0]))? as i32;
    for (which, t) in m.itimers.iter_mut().enumerate() {
        ok(sys(SYS_GETITIMER, [which, t as *mut Itimerval as usize, 0, 0, 0, 0]))?;
    }
    for (res, r) in m.rlimits.iter_mut().enumerate() {
        ok(sys(SYS_PRLIMIT64, [0, res, 0, r as *mut Rlimit as usize, 0, 0]))?;
    }
    m.membarrier_mask = membarrier_mask()?;
    Ok(m)
}

fn sigactions(out: &mut [u8]) -> Result<usize, isize> {
    let size = core::mem::size_of::<KSigaction>();
    for sig in 1..=64usize {
        let mut act = KSigaction::default();
        if sig != 9 && sig != 19 {
            ok(sys(SYS_RT_SIGACTION, [sig, 0, &mut act as *mut KSigaction as usize, 8, 0, 0]))?;
        }
        out[(sig - 1) * size..sig * size].copy_from_slice(bytes_of(&act));
    }
    Ok(64 * size)
}

fn posix_timers(payload: &[u8], out: &mut [u8]) -> Result<usize, isize> {
    let count = (payload.len() / 4).min(MAX_TIMERS);
    let size = core::mem::size_of::<PosixTimerState>();
    let count = count.min(out.len() / size);
    for i in 0..count {
        let id = read_at::<i32>(payload, i).unwrap_or(-1);
        let mut spec = [0i64; 4];
        ok(sys(SYS_TIMER_GETTIME, [id as usize, spec.as_mut_ptr() as usize, 0, 0, 0, 0]))?;
        let overrun = ok(sys(SYS_TIMER_GETOVERRUN, [id as usize, 0, 0, 0, 0, 0]))?;
        let t = PosixTimerState {
            id,
            overrun: overrun as i32,
            interval_sec: spec[0],
            interval_nsec: spec[1],
            value_sec: spec[2],
            value_nsec: spec[3],
        };
        out[i * size..(i + 1) * size].copy_from_slice(bytes_of(&t));
    }
    Ok(count * size)
}

fn thread_state() -> Result<ThreadState, isize> {
    let mut t = ThreadState::default();
    fill_thread_state(&mut t)?;
    t.done = THREAD_DONE ^ sys(SYS_GETTID, [0; 6]) as u64;
    Ok(t)
}

/// Reads the calling thread's state (see `ThreadState`).
fn fill_thread_state(t: &mut ThreadState) -> Result<(), isize> {
    let mut ss = [0u64; 3]; // ss_sp, ss_flags (int + pad), ss_size
    ok(sys(SYS_SIGALTSTACK, [0, ss.as_mut_ptr() as usize, 0, 0, 0, 0]))?;
    t.altstack_sp = ss[0];
    t.altstack_flags = ss[1] as u32 as i32;
    t.altstack_size = ss[2];
    let mut addr = 0u64;
    ok(sys(SYS_PRCTL, [PR_GET_TID_ADDRESS, &mut addr as *mut u64 as usize, 0, 0, 0, 0]))?;
    t.tid_address = addr;
    t.pdeath_sig = prctl_int(PR_GET_PDEATHSIG)?;
    ok(sys(SYS_PRCTL, [PR_GET_NAME, t.comm.as_mut_ptr() as usize, 0, 0, 0, 0]))?;
    let (mut head, mut len) = (0u64, 0u64);
    ok(sys(SYS_GET_ROBUST_LIST, [0, &mut head as *mut u64 as usize, &mut len as *mut u64 as usize, 0, 0, 0]))?;
    t.robust_head = head;
    t.robust_len = len;
    let mut pending = 0u64;
    ok(sys(SYS_RT_SIGPENDING, [&mut pending as *mut u64 as usize, 8, 0, 0, 0, 0]))?;
    t.sigpending = pending;
    let mut ids = [0u32; 3];
    ok(sys(SYS_GETRESUID, [&mut ids[0] as *mut u32 as usize, &mut ids[1] as *mut u32 as usize, &mut ids[2] as *mut u32 as usize, 0, 0, 0]))?;
    t.uids = [ids[0], ids[1], ids[2], sys(SYS_SETFSUID, [u32::MAX as usize, 0, 0, 0, 0, 0]) as u32];
    ok(sys(SYS_GETRESGID, [&mut ids[0] as *mut u32 as usize, &mut ids[1] as *mut u32 as usize, &mut ids[2] as *mut u32 as usize, 0, 0, 0]))?;
    t.gids = [ids[0], ids[1], ids[2], sys(SYS_SETFSGID, [u32::MAX as usize, 0, 0, 0, 0, 0]) as u32];
    let mut hdr = [LINUX_CAPABILITY_VERSION_3, 0u32];
    let mut data = [0u32; 6]; // {effective, permitted, inheritable} x 2
    ok(sys(SYS_CAPGET, [hdr.as_mut_ptr() as usize, data.as_mut_ptr() as usize, 0, 0, 0, 0]))?;
    t.cap_eff = data[0] as u64 | (data[3] as u64) << 32;
    t.cap_prm = data[1] as u64 | (data[4] as u64) << 32;
    t.cap_inh = data[2] as u64 | (data[5] as u64) << 32;
    for cap in 0..64usize {
        match ok(sys(SYS_PRCTL, [PR_CAPBSET_READ, cap, 0, 0, 0, 0])) {
            Ok(0) => {}
            Ok(_) => t.cap_bnd |= 1 << cap,
            Err(_) => break,
        }
    }
    let may_be_ambient = t.cap_prm & t.cap_inh;
    for cap in (0..64usize).filter(|&c| may_be_ambient & (1 << c) != 0) {
        match ok(sys(SYS_PRCTL, [PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, cap, 0, 0, 0])) {
            Ok(0) => {}
            Ok(_) => t.cap_amb |= 1 << cap,
            Err(_) => break,
        }
    }
    t.secbits = ok(sys(SYS_PRCTL, [PR_GET_SECUREBITS, 0, 0, 0, 0, 0]))? as u32;
    t.no_new_privs = ok(sys(SYS_PRCTL, [PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0, 0]))? as i32;
    let n = ok(sys(SYS_GETGROUPS, [0, 0, 0, 0, 0, 0]))?;
    t.ngroups = n as i32;
    if n <= MAX_GROUPS {
        let got = ok(sys(SYS_GETGROUPS, [n, t.groups.as_mut_ptr() as usize, 0, 0, 0, 0]))?;
        t.ngroups = got as i32;
    }
    t.sched_policy = (ok(sys(SYS_SCHED_GETSCHEDULER, [0; 6]))? & !SCHED_RESET_ON_FORK) as i32;
    let mut prio = 0i32;
    ok(sys(SYS_SCHED_GETPARAM, [0, &mut prio as *mut i32 as usize, 0, 0, 0, 0]))?;
    t.sched_prio = prio;
    t.sched_nice = 20 - ok(sys(SYS_GETPRIORITY, [0, 0, 0, 0, 0, 0]))? as i32;
    t.seccomp_mode = ok(sys(SYS_PRCTL, [PR_GET_SECCOMP, 0, 0, 0, 0, 0]))? as i32;
    // get_thread_area is not in the 64-bit syscall table: the dumper asks ptrace.
    t.tls_status = -ENOSYS;
    t.rseq_status = -ENOSYS;
    Ok(())
}
