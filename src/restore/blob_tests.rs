//! End-to-end tests of the restorer blob (root only): a forked child builds a small target
//! layout from its own address space plus a moved region, a file mapping, a second thread,
//! signals, timers, creds, ... and enters the blob; the restored threads land on the
//! `landing_*` stubs below, which record every register and check the kernel state from
//! inside. The parent checks the rest from outside (/proc/PID/{maps,smaps,status}).
//!
//! ```text
//! parent                                   child (forked)
//!   pipes: status, go, verdict ─────────►  builds TaskSpec, maps the area, enters the blob
//!   read StatusRecord (READY) ◄──────────  blob: ... STAGE_READY
//!   write go byte ───────────────────────► blob: final sigreturn → landing_leader/thread
//!   read verdict (result, addresses) ◄───  leader_check (after thread_check finished)
//!   inspect /proc/PID, SIGKILL, reap       pause
//! ```
//! Every wait has a timeout; the child is killed on any failure.
//!
//! These drive the blob directly (arguments built by [`super::blob_args::TaskSpec`]) for what
//! a restore through the engine cannot set up on purpose: a frame that does not fit on the
//! target stack, corrupted arguments, a TID taken between the checks and the clone. A failing
//! step reported through the engine (step name, errno, the tree killed) is
//! `tests/restore_failures.rs::failure_in_the_restorer_blob_kills_the_tree`.

use crate::restore::blob_args::abi::{self, *};
use crate::restore::blob_args::{TaskSpec, ThreadSpec};
use crate::restore::vdso::{self, ImageVdso, RuntimeVdso, VdsoPlan};
use crate::restore::xsave::{xsave_image, FpuRegs};
use crate::sys::pod::read_pod;
use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// The restore lock shared with the integration tests (tests that move the pid allocator).
#[allow(dead_code)]
#[path = "../../tests/common/lock.rs"]
mod lock;

/// Raw syscall usable without TLS (no errno).
fn rsys(nr: i64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    let r: i64;
    // SAFETY: callers pass arguments valid for `nr` (pointers to live locals or statics).
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr => r, in("rdi") a1, in("rsi") a2, in("rdx") a3,
                         in("r10") a4, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

/// Registers seen at landing: rax rbx rcx rdx rsi rdi rbp rsp r8..r15, xmm0 (2), mxcsr|fcw.
static SEEN_LEADER: [AtomicU64; 20] = [const { AtomicU64::new(0) }; 20];
static SEEN_THREAD: [AtomicU64; 20] = [const { AtomicU64::new(0) }; 20];

macro_rules! landing {
    ($name:literal, $seen:ident, $check:ident) => {
        core::arch::global_asm!(
            concat!(".globl ", $name),
            concat!($name, ":"),
            "mov [rip + {seen}], rax",
            "mov [rip + {seen} + 8], rbx",
            "mov [rip + {seen} + 16], rcx",
            "mov [rip + {seen} + 24], rdx",
            "mov [rip + {seen} + 32], rsi",
            "mov [rip + {seen} + 40], rdi",
            "mov [rip + {seen} + 48], rbp",
            "mov [rip + {seen} + 56], rsp",
            "mov [rip + {seen} + 64], r8",
            "mov [rip + {seen} + 72], r9",
            "mov [rip + {seen} + 80], r10",
            "mov [rip + {seen} + 88], r11",
            "mov [rip + {seen} + 96], r12",
            "mov [rip + {seen} + 104], r13",
            "mov [rip + {seen} + 112], r14",
            "mov [rip + {seen} + 120], r15",
            "movdqu [rip + {seen} + 128], xmm0",
            "stmxcsr [rip + {seen} + 144]",
            "fnstcw [rip + {seen} + 148]",
            "and rsp, -16",
            "call {check}",
            "ud2",
            seen = sym $seen,
            check = sym $check,
        );
    };
}
landing!("stasis_test_landing_leader", SEEN_LEADER, leader_check);
landing!("stasis_test_landing_thread", SEEN_THREAD, thread_check);

extern "C" {
    fn stasis_test_landing_leader();
    fn stasis_test_landing_thread();
}

/// Values the landing checks compare against, set by the child before it enters the blob.
/// Statics because the landing stubs are entered by the blob's sigreturn, with no arguments
/// and nothing but this (forked) child's memory to go by.
struct Expected {
    /// The leader's saved stack pointer.
    leader_sp: AtomicU64,
    /// The second thread's saved stack pointer.
    thread_sp: AtomicU64,
    /// Target address of the moved region (premapped at `p`).
    t: AtomicU64,
    /// Where the moved region was premapped (unmapped after the restore).
    p: AtomicU64,
    /// A mapping left out of the layout (unmapped after the restore).
    junk: AtomicU64,
    /// Address of the file mapping.
    f: AtomicU64,
    /// The pipe the leader writes its verdict to.
    verdict_fd: AtomicU64,
    /// Base of the restorer area.
    area: AtomicU64,
    /// The leader's fs base.
    fs: AtomicU64,
    /// The leader's sigaltstack.
    leader_sas: AtomicU64,
    /// The thread's sigaltstack.
    thread_sas: AtomicU64,
    /// The thread's rseq area.
    rseq: AtomicU64,
    /// The SIGUSR2 handler as the kernel reported it.
    sa_handler: AtomicU64,
    /// `__vdso_clock_gettime` in the image's (copied) vdso.
    vdso_fn: AtomicU64,
    /// Where the running vdso was moved (the proxy's target).
    proxy_vdso: AtomicU64,
    /// 1: the area is kept (a frame did not fit on the target stack).
    keep_area: AtomicU64,
}

impl Expected {
    const fn new() -> Self {
        Expected {
            leader_sp: AtomicU64::new(0),
            thread_sp: AtomicU64::new(0),
            t: AtomicU64::new(0),
            p: AtomicU64::new(0),
            junk: AtomicU64::new(0),
            f: AtomicU64::new(0),
            verdict_fd: AtomicU64::new(0),
            area: AtomicU64::new(0),
            fs: AtomicU64::new(0),
            leader_sas: AtomicU64::new(0),
            thread_sas: AtomicU64::new(0),
            rseq: AtomicU64::new(0),
            sa_handler: AtomicU64::new(0),
            vdso_fn: AtomicU64::new(0),
            proxy_vdso: AtomicU64::new(0),
            keep_area: AtomicU64::new(0),
        }
    }
}

static EXPECT: Expected = Expected::new();
/// clear_tid word of the thread: its TID until it exits.
static CLEAR_TID: AtomicU32 = AtomicU32::new(0);
static THREAD_RESULT: AtomicU32 = AtomicU32::new(u32::MAX);

const REG_BASE: u64 = 0x1111_0000_0000_0000;
const LEADER_MASK: u64 = (1 << (10 - 1)) | (1 << (37 - 1)) | (1 << (40 - 1));
const THREAD_MASK: u64 = (1 << (10 - 1)) | (1 << (37 - 1)) | (1 << (41 - 1));
const XMM0: [u32; 4] = [0x0102_0304, 0x0506_0708, 0x090a_0b0c, 0x0d0e_0f10];
const PATTERN: u8 = 0x5a;
const SIGUSR1: u64 = 10;
const SIGUSR2: usize = 12;
const RSEQ_SIG: u32 = 0x5305_3053;

fn e(v: &AtomicU64) -> u64 {
    v.load(SeqCst)
}

fn unmapped(addr: u64) -> bool {
    rsys(28, addr, 4096, 0, 0) == -12 // madvise(MADV_NORMAL): ENOMEM when nothing is mapped
}

fn sigwait_value(sig: u64) -> i64 {
    let set: u64 = 1 << (sig - 1);
    let mut info = [0u8; 128];
    let zero = [0i64; 2];
    let r = rsys(
        128,
        &set as *const _ as u64,
        info.as_mut_ptr() as u64,
        zero.as_ptr() as u64,
        8,
    );
    if r != sig as i64 {
        return -1;
    }
    i64::from(i32::from_le_bytes(
        info[24..28].try_into().unwrap_or([0; 4]),
    ))
}

fn regs_ok(seen: &[AtomicU64; 20], sp: u64, salt: u64) -> bool {
    // Order in SEEN: rax rbx rcx rdx rsi rdi rbp rsp r8..r15.
    (0..16).all(|i| {
        let v = seen[i].load(SeqCst);
        if i == 7 {
            v == sp
        } else {
            v == REG_BASE + salt + i as u64
        }
    })
}

fn sas_ok(want_sp: u64, want_size: u64) -> bool {
    let mut old = [0u64; 3];
    rsys(131, 0, old.as_mut_ptr() as u64, 0, 0) == 0 && old[0] == want_sp && old[2] == want_size
}

fn blocked() -> u64 {
    let mut old: u64 = 0;
    rsys(14, 0, 0, &mut old as *mut u64 as u64, 8);
    old
}

extern "C" fn thread_check() -> ! {
    let r = if !regs_ok(&SEEN_THREAD, e(&EXPECT.thread_sp), 0x100) {
        1
    } else if blocked() != THREAD_MASK {
        2
    } else if !sas_ok(e(&EXPECT.thread_sas), 8192) {
        3
    } else if sigwait_value(SIGUSR1) != 42 {
        4
    } else if rsys(334, e(&EXPECT.rseq), 32, 0, u64::from(RSEQ_SIG)) != -16 {
        5 // registered already: EBUSY
    } else if rsys(102, 0, 0, 0, 0) != 1000 || rsys(104, 0, 0, 0, 0) != 1000 {
        6
    } else if rsys(110, 0, 0, 0, 0) != -1 {
        7 // the seccomp filter makes getppid fail with EPERM
    } else {
        0
    };
    THREAD_RESULT.store(r, SeqCst);
    loop {
        rsys(60, 0, 0, 0, 0); // exit this thread; the kernel clears CLEAR_TID and wakes
    }
}

/// Calls clock_gettime through the old (patched) vdso copy: lands in the moved real vdso.
fn vdso_call_ok() -> bool {
    let mut ts = [0i64; 2];
    // SAFETY: EXPECT.vdso_fn is the old vdso copy's __vdso_clock_gettime, patched with a jump to the
    // running vdso's, which has the C signature below.
    let f: extern "C" fn(i32, *mut i64) -> i32 =
        unsafe { std::mem::transmute(e(&EXPECT.vdso_fn) as usize) };
    f(libc::CLOCK_MONOTONIC, ts.as_mut_ptr()) == 0 && (ts[0] > 0 || ts[1] > 0)
}

extern "C" fn leader_check() -> ! {
    let seen_xmm = [SEEN_LEADER[16].load(SeqCst), SEEN_LEADER[17].load(SeqCst)];
    let want_xmm = [
        u64::from(XMM0[0]) | (u64::from(XMM0[1]) << 32),
        u64::from(XMM0[2]) | (u64::from(XMM0[3]) << 32),
    ];
    let ctl = SEEN_LEADER[18].load(SeqCst);
    let mut old_sa = [0u64; 4];
    let mut rl = [0u64; 2];
    let mut its = [0i64; 4];
    let mut fs: u64 = 0;
    let cap_hdr = [0x2008_0522u32, 0];
    let mut caps = [0u32; 6];
    let r = if !regs_ok(&SEEN_LEADER, e(&EXPECT.leader_sp), 0) {
        1
    } else if seen_xmm != want_xmm {
        2
    } else if ctl & 0xffff_ffff != 0x7f80 || (ctl >> 32) & 0xffff != 0xf7f {
        3
    } else if blocked() != LEADER_MASK {
        4
    } else if !sas_ok(e(&EXPECT.leader_sas), 16384) {
        5
    } else if sigwait_value(SIGUSR1) != 1234 {
        6
    } else if rsys(95, 0o022, 0, 0, 0) != 0o027 {
        7
    } else if rsys(302, 0, 7, 0, rl.as_mut_ptr() as u64) != 0 || rl[0] != 777 {
        8
    } else if !unmapped(e(&EXPECT.p))
        || !unmapped(e(&EXPECT.junk))
        || (e(&EXPECT.keep_area) == 0 && !unmapped(e(&EXPECT.area)))
    {
        9
    } else if (0..8192).any(|i| {
        // SAFETY: T is an 8 KiB readable mapping of the restored layout.
        unsafe { *((e(&EXPECT.t) + i) as *const u8) != PATTERN }
    }) {
        10
    } else if (0..4096).any(|i| {
        // SAFETY: F is a 4 KiB readable file mapping of the restored layout.
        unsafe { *((e(&EXPECT.f) + i) as *const u8) != (i % 251) as u8 ^ 0x33 }
    }) {
        11
    } else if rsys(224, 7, its.as_mut_ptr() as u64, 0, 0) != 0 || its[2] < 50 {
        12
    } else if rsys(13, SIGUSR2 as u64, 0, old_sa.as_mut_ptr() as u64, 8) != 0
        || old_sa[0] != e(&EXPECT.sa_handler)
    {
        13
    } else if rsys(158, 0x1003, &mut fs as *mut u64 as u64, 0, 0) != 0 || fs != e(&EXPECT.fs) {
        14
    } else if rsys(125, cap_hdr.as_ptr() as u64, caps.as_mut_ptr() as u64, 0, 0) != 0
        || caps[0] & (1 << 24) != 0
    {
        15
    } else if !vdso_call_ok() {
        16
    } else if rsys(110, 0, 0, 0, 0) <= 0 {
        17 // no filter on the leader
    } else {
        0
    };
    // Join the thread: its clear_tid word turns 0 when it has exited.
    loop {
        let v = CLEAR_TID.load(SeqCst);
        if v == 0 {
            break;
        }
        rsys(202, CLEAR_TID.as_ptr() as u64, 0, u64::from(v), 0);
    }
    let t = THREAD_RESULT.load(SeqCst);
    let r = if r == 0 && t != 0 { 100 + t } else { r };
    let out = [
        u64::from(r),
        e(&EXPECT.area),
        e(&EXPECT.t),
        e(&EXPECT.p),
        e(&EXPECT.junk),
        e(&EXPECT.f),
        e(&EXPECT.proxy_vdso),
    ];
    rsys(1, e(&EXPECT.verdict_fd), out.as_ptr() as u64, 56, 0);
    loop {
        rsys(34, 0, 0, 0, 0); // pause until the parent kills us
    }
}

fn mmap(len: u64, prot: i32) -> u64 {
    // SAFETY: a fresh anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    p as u64
}

/// A free address range for the target layout, held by a shared PROT_NONE mapping (never
/// merged with neighbours) that the blob unmaps with everything not kept.
fn reserve(len: u64) -> u64 {
    // SAFETY: a fresh shared anonymous mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_NONE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    RESERVED.with(|r| r.borrow_mut().push((p as u64, p as u64 + len)));
    p as u64
}

/// A private anonymous mapping inside a reservation of its own, a page of it on either side:
/// a VMA of its own whatever lies around (the layout skips it with its reservation).
fn isolated(len: u64, prot: i32) -> u64 {
    let at = reserve(len + 2 * 4096) + 4096;
    // SAFETY: replaces pages in the middle of our own fresh reservation.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len as usize,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p as u64, at);
    at
}

fn reserved(a: u64) -> bool {
    RESERVED.with(|r| r.borrow().iter().any(|&(s, e)| s <= a && a < e))
}

thread_local! {
    /// Start of the MAP_GROWSDOWN stack of the `grow_stack` variant (0: none).
    static GROWS_AT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static RESERVED: std::cell::RefCell<Vec<(u64, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A free range for the restorer area: reserved, then released just before mapping the area.
fn area_hole(len: u64) -> u64 {
    let p = mmap(len, libc::PROT_NONE);
    // SAFETY: unmaps the mapping just created; nothing allocates before the area is mapped.
    unsafe { libc::munmap(p as *mut libc::c_void, len as usize) };
    p
}

struct Map {
    start: u64,
    end: u64,
    prot: u32,
    name: String,
}

fn self_maps() -> Vec<Map> {
    let text = std::fs::read_to_string("/proc/self/maps").expect("read maps");
    text.lines()
        .map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next().unwrap_or("0-0");
            let perms = it.next().unwrap_or("----").as_bytes();
            let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
            let prot = u32::from(perms[0] == b'r')
                | (u32::from(perms[1] == b'w') << 1)
                | (u32::from(perms[2] == b'x') << 2);
            Map {
                start: u64::from_str_radix(s, 16).unwrap_or(0),
                end: u64::from_str_radix(e, 16).unwrap_or(0),
                prot,
                name: it.nth(3).unwrap_or("").to_string(),
            }
        })
        .collect()
}

fn stat_fields() -> Vec<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").expect("read stat");
    let after = &s[s.rfind(')').unwrap_or(0) + 2..];
    // after[0] is field 3 (state).
    after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

/// Classic BPF: getppid (110) fails with EPERM, everything else is allowed.
fn getppid_eperm_filter() -> Vec<u8> {
    let insn = |code: u16, jt: u8, jf: u8, k: u32| {
        let mut b = code.to_le_bytes().to_vec();
        b.extend_from_slice(&[jt, jf]);
        b.extend_from_slice(&k.to_le_bytes());
        b
    };
    [
        insn(0x20, 0, 0, 0),           // ld [0] (seccomp_data.nr)
        insn(0x15, 0, 1, 110),         // jeq #110
        insn(0x06, 0, 0, 0x0005_0001), // ret ERRNO(EPERM)
        insn(0x06, 0, 0, 0x7fff_0000), // ret ALLOW
    ]
    .concat()
}

fn siginfo(sig: i32, code: i32, value: i32) -> SigInfo {
    let mut si = SigInfo::default();
    si.bytes[0..4].copy_from_slice(&sig.to_le_bytes());
    si.bytes[8..12].copy_from_slice(&code.to_le_bytes());
    si.bytes[24..28].copy_from_slice(&value.to_le_bytes());
    si
}

/// A TID that is free now, below `after`: the caller's pid, just handed out by the kernel, so
/// the pid allocator is past it and does not come back to lower pids before it wraps at
/// pid_max (tests that move it back hold the restore lock, as the caller does). A TID above
/// would lie in the allocator's way: any fork of the machine could take it before the blob's
/// clone3 does.
fn free_tid(after: u32) -> u32 {
    (1000..after)
        .rev()
        .find(|t| !std::path::Path::new(&format!("/proc/{t}")).exists())
        .expect("a free TID")
}

/// Child side of the full test: builds the spec from its own layout and enters the blob.
/// `keep_area`: the thread's saved sp sits 256 bytes above the start of its stack VMA (with
/// another mapping right below), so its frame cannot go on the target stack and the blob must
/// take the fallback (frames in the area, area kept).
fn child_full(
    status_fd: i32,
    go_fd: i32,
    verdict_fd: i32,
    file: &std::path::Path,
    keep_area: bool,
    grow_stack: bool,
) -> std::convert::Infallible {
    // Keep malloc from unmapping or trimming memory after the layout was read.
    // SAFETY: mallopt only changes malloc tunables of this (forked, single-threaded) child.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
    }
    let stacks = mmap(256 * 1024, libc::PROT_READ | libc::PROT_WRITE);
    let leader_sp = stacks + 64 * 1024;
    let thread_sp = if grow_stack {
        // A MAP_GROWSDOWN stack at the top of a 4 MiB reservation (freed by the blob): the
        // frame goes below its start and the stack grows.
        let r = reserve(4 << 20);
        let top = r + (4 << 20) - 64 * 1024;
        // SAFETY: replaces the top 64 KiB of our own reservation.
        let p = unsafe {
            libc::mmap(
                top as *mut libc::c_void,
                64 * 1024,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_GROWSDOWN,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, top);
        GROWS_AT.with(|g| g.set(top));
        top + 256
    } else if keep_area {
        // A shared mapping right above the private stacks: a VMA of its own.
        // SAFETY: replaces the top 64 KiB of our own fresh `stacks` mapping.
        let p = unsafe {
            libc::mmap(
                (stacks + 192 * 1024) as *mut libc::c_void,
                64 * 1024,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(p as u64, stacks + 192 * 1024);
        EXPECT.keep_area.store(1, SeqCst);
        stacks + 192 * 1024 + 256
    } else {
        stacks + 128 * 1024
    };
    let leader_sas = stacks + 160 * 1024;
    let thread_sas = stacks + 176 * 1024;
    let rseq_area = stacks + 224 * 1024;
    // Both go with the layout; isolated, so neither can merge with (and take along) a
    // neighbour that must stay, such as the stacks.
    let junk = isolated(4096, libc::PROT_READ);
    let p = isolated(8192, libc::PROT_READ | libc::PROT_WRITE);
    // SAFETY: p is the 8 KiB mapping just created.
    unsafe { std::ptr::write_bytes(p as *mut u8, PATTERN, 8192) };
    let t = reserve(64 * 1024) + 16 * 1024;
    let f = reserve(64 * 1024) + 8 * 1024;
    let fd = std::fs::File::open(file).expect("open test file");
    let fd = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // vdso proxy: a copy of the running vdso plays the image's vdso (one page larger, so the
    // layouts differ), the running vdso moves to a hole and the copy gets jumps into it.
    let rt = RuntimeVdso::current().expect("runtime vdso");
    let rt_bytes = rt.read_bytes().expect("vdso bytes");
    let vlen = rt_bytes.len() as u64;
    // RWX keeps it from merging with a neighbour; its target protection is r-x.
    let old_vdso = mmap(
        vlen + 4096,
        libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
    );
    // SAFETY: old_vdso has vlen + 4096 writable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(rt_bytes.as_ptr(), old_vdso as *mut u8, rt_bytes.len())
    };
    let proxy_at = reserve(1 << 20);
    let image = ImageVdso {
        vdso: (old_vdso, old_vdso + vlen + 4096),
        vvar: None,
        bytes: Some(rt_bytes.clone()),
    };
    let VdsoPlan::Proxy { special, patches } =
        vdso::plan(&image, &rt, &rt_bytes, |_, _| true, proxy_at).expect("plan")
    else {
        panic!("expected a proxy plan");
    };
    let syms = vdso::vdso_symbols(&rt_bytes).expect("symbols");
    let off = syms
        .iter()
        .find(|(n, _)| n == "__vdso_clock_gettime")
        .map(|s| s.1)
        .expect("clock_gettime");
    EXPECT.vdso_fn.store(old_vdso + off, SeqCst);
    EXPECT.proxy_vdso.store(
        special
            .iter()
            .find(|s| s.from == rt.vdso.0)
            .map_or(0, |s| s.to),
        SeqCst,
    );
    let mut fs_base = 0u64;
    rsys(158, 0x1003, &mut fs_base as *mut u64 as u64, 0, 0);
    // The kernel's restorer for a glibc handler: install one and read it back.
    // SAFETY: installs a plain handler for SIGUSR2 in this child only.
    unsafe {
        libc::signal(
            libc::SIGUSR2,
            stasis_test_landing_leader as *const () as usize,
        )
    };
    let mut ksa = [0u64; 4];
    rsys(13, SIGUSR2 as u64, 0, ksa.as_mut_ptr() as u64, 8);

    let pid = std::process::id();
    let tid2 = free_tid(pid);
    CLEAR_TID.store(tid2, SeqCst);
    EXPECT.leader_sp.store(leader_sp, SeqCst);
    EXPECT.thread_sp.store(thread_sp, SeqCst);
    EXPECT.t.store(t, SeqCst);
    EXPECT.p.store(p, SeqCst);
    EXPECT.junk.store(junk, SeqCst);
    EXPECT.f.store(f, SeqCst);
    EXPECT.verdict_fd.store(verdict_fd as u64, SeqCst);
    EXPECT.fs.store(fs_base, SeqCst);
    EXPECT.leader_sas.store(leader_sas, SeqCst);
    EXPECT.thread_sas.store(thread_sas, SeqCst);
    EXPECT.rseq.store(rseq_area, SeqCst);
    EXPECT.sa_handler.store(ksa[0], SeqCst);

    let mut spec = TaskSpec::new();
    for m in self_maps() {
        let grows = GROWS_AT.with(|g| g.get()) == m.start;
        if m.start == junk || m.start == p || (reserved(m.start) && !grows) {
            continue;
        }
        // The running vdso/vvar move to the proxy place (spec.special from the plan).
        if matches!(m.name.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]") {
            continue;
        }
        let skip = m.start >= 0x8000_0000_0000;
        spec.vmas.push(VmaArgs {
            start: m.start,
            end: m.end,
            premap: m.start,
            prot: if m.start == old_vdso { 5 } else { m.prot },
            flags: if grows { libc::MAP_GROWSDOWN as u32 } else { 0 },
            kind: if skip { VMA_SKIP } else { VMA_PREMAPPED },
            fd: -1,
            ..Default::default()
        });
        if !skip {
            spec.keep.push(KeepRange {
                start: m.start,
                end: m.end,
            });
        }
    }
    spec.vmas.push(VmaArgs {
        start: t,
        end: t + 8192,
        premap: p,
        prot: 1,
        madv: 1 << 16,
        kind: VMA_PREMAPPED,
        fd: -1,
        ..Default::default()
    });
    spec.keep.push(KeepRange {
        start: p,
        end: p + 8192,
    });
    spec.vmas.push(VmaArgs {
        start: f,
        end: f + 4096,
        pgoff: 4096,
        prot: 1,
        flags: libc::MAP_PRIVATE as u32,
        kind: VMA_MMAP,
        fd,
        ..Default::default()
    });
    spec.vmas.sort_by_key(|v| v.start);
    spec.special = special;
    spec.vdso_patches = patches;
    spec.close_fds.push(fd as u32);

    let st = stat_fields();
    let field = |n: usize| st.get(n - 3).copied().unwrap_or(0);
    // SAFETY: sbrk(0) only reads the current break.
    let brk = unsafe { libc::sbrk(0) } as u64;
    spec.task.mm = MmArgs {
        start_code: field(26),
        end_code: field(27),
        start_stack: field(28),
        start_data: field(45),
        end_data: field(46),
        start_brk: field(47),
        brk,
        arg_start: field(48),
        arg_end: field(49),
        env_start: field(50),
        env_end: field(51),
        exe_fd: u32::MAX,
        ..Default::default()
    };
    let auxv = std::fs::read("/proc/self/auxv").expect("read auxv");
    spec.auxv = auxv
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    spec.task.set_mm = 1;
    spec.task.umask = 0o027;
    for (i, rl) in spec.task.rlimits.iter_mut().enumerate() {
        let mut cur = [0u64; 2];
        rsys(302, 0, i as u64, 0, cur.as_mut_ptr() as u64);
        *rl = RlimitArgs {
            cur: cur[0],
            max: cur[1],
        };
    }
    spec.task.rlimits[7].cur = 777;
    spec.task.nr_rlimits = 16;
    spec.task.sigactions[SIGUSR2 - 1] = SigactionArgs {
        handler: ksa[0],
        flags: ksa[1],
        restorer: ksa[2],
        mask: 0,
    };
    spec.task.status_fd = status_fd;
    spec.task.go_fd = go_fd;
    spec.task.cur_rseq = crate::sys::restorer::current_rseq();
    spec.shared_signals.push(siginfo(37, -1, 5));
    spec.posix_timers.push(PosixTimerArgs {
        id: 7,
        clock_id: libc::CLOCK_MONOTONIC,
        sigev_notify: libc::SIGEV_NONE,
        value: Timespec { sec: 100, nsec: 0 },
        ..Default::default()
    });

    let regs = |salt: u64, ip: u64, sp: u64, fs: u64| {
        let v = |i: u64| REG_BASE + salt + i;
        UserRegs {
            ax: v(0),
            bx: v(1),
            cx: v(2),
            dx: v(3),
            si: v(4),
            di: v(5),
            bp: v(6),
            r8: v(8),
            r9: v(9),
            r10: v(10),
            r11: v(11),
            r12: v(12),
            r13: v(13),
            r14: v(14),
            r15: v(15),
            ip,
            sp,
            flags: 0x202,
            cs: 0x33,
            ss: 0x2b,
            fs_base: fs,
            orig_ax: u64::MAX,
            ..Default::default()
        }
    };
    let st_space = [0u32; 32];
    let mut xmm = [0u32; 64];
    xmm[..4].copy_from_slice(&XMM0);
    let fpu = xsave_image(&FpuRegs {
        cwd: 0xf7f,
        mxcsr: 0x7f80,
        mxcsr_mask: 0xffff,
        st_space: &st_space,
        xmm_space: &xmm,
        xstate_bv: 3,
        ..Default::default()
    });
    let status = std::fs::read_to_string("/proc/self/status").expect("read status");
    let cap = |k: &str| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map_or(0, |v| u64::from_str_radix(v.trim(), 16).unwrap_or(0));
        [v as u32, (v >> 32) as u32]
    };
    let (prm, bnd) = (cap("CapPrm:"), cap("CapBnd:"));
    let root_caps = CredsArgs {
        cap_eff: [prm[0] & !(1 << 24), prm[1]],
        cap_prm: prm,
        cap_bnd: bnd,
        ..Default::default()
    };
    let user = CredsArgs {
        uid: 1000,
        gid: 1000,
        euid: 1000,
        egid: 1000,
        suid: 1000,
        sgid: 1000,
        fsuid: 1000,
        fsgid: 1000,
        cap_bnd: bnd,
        ..Default::default()
    };
    spec.threads.push(ThreadSpec {
        args: ThreadArgs {
            tid: pid,
            regs: regs(
                0,
                stasis_test_landing_leader as *const () as usize as u64,
                leader_sp,
                fs_base,
            ),
            blocked: LEADER_MASK,
            sas_sp: leader_sas,
            sas_size: 16384,
            ..Default::default()
        },
        fpu,
        creds: Some((root_caps, vec![0])),
        signals: vec![siginfo(10, -1, 1234)],
        seccomp: Vec::new(),
    });
    spec.threads.push(ThreadSpec {
        args: ThreadArgs {
            tid: tid2,
            regs: regs(
                0x100,
                stasis_test_landing_thread as *const () as usize as u64,
                thread_sp,
                0,
            ),
            blocked: THREAD_MASK,
            sas_sp: thread_sas,
            sas_size: 8192,
            rseq: RseqArgs {
                ptr: rseq_area,
                len: 32,
                sig: RSEQ_SIG,
            },
            clear_tid_addr: CLEAR_TID.as_ptr() as u64,
            ..Default::default()
        },
        fpu: Vec::new(),
        creds: Some((user, vec![1000])),
        signals: vec![siginfo(10, -1, 42)],
        seccomp: vec![(getppid_eperm_filter(), 0)],
    });
    let len = spec.area_len();
    let base = area_hole(len);
    EXPECT.area.store(base, SeqCst);
    let area = spec.build(base).expect("build area");
    let mut m = crate::sys::restorer::RestorerArea::map(base, len).expect("map area");
    m.write(&area.bytes).expect("write area");
    m.enter(area.entry_offset, area.args, area.leader_stack_top)
}

struct Child(libc::pid_t);

impl Drop for Child {
    fn drop(&mut self) {
        // SAFETY: kills and reaps our own child process.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

/// Reads exactly `n` bytes from `fd` within `timeout`.
fn read_timeout(fd: i32, n: usize, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for the child ({} of {n} bytes)",
            out.len()
        );
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        if r <= 0 {
            continue;
        }
        let mut buf = vec![0u8; n - out.len()];
        // SAFETY: buf has buf.len() writable bytes.
        let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        assert!(
            got > 0,
            "child closed the pipe after {} of {n} bytes",
            out.len()
        );
        out.extend_from_slice(&buf[..got as usize]);
    }
    out
}

fn fork_child<F: FnOnce() -> std::convert::Infallible>(f: F) -> Child {
    // SAFETY: the child only runs `f`, which never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        // SAFETY: leaves the forked child without running the harness's exit handlers.
        unsafe { libc::_exit(99) };
    }
    Child(pid)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn blob_restores_layout_threads_signals_and_leaves_nothing_mapped() {
    run_full(false, false);
}

#[test]
fn blob_keeps_its_area_when_a_frame_does_not_fit_on_the_target_stack() {
    run_full(true, false);
}

#[test]
fn blob_grows_a_growsdown_stack_for_a_frame_below_its_start() {
    run_full(false, true);
}

fn run_full(keep_area: bool, grow_stack: bool) {
    assert!(
        is_root(),
        "restorer blob tests need root (clone3 set_tid, creds)"
    );
    // The thread's TID comes from below the pid allocator (free_tid): no test may move the
    // allocator back meanwhile.
    let _lock = lock::restore_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data");
    let mut file = std::fs::File::create(&path).expect("create");
    let data: Vec<u8> = (0..12288)
        .map(|i| ((i % 4096) % 251) as u8 ^ 0x33)
        .collect();
    file.write_all(&data).expect("write");
    drop(file);
    let (status_r, status_w) = pipe();
    let (go_r, go_w) = pipe();
    let (verdict_r, verdict_w) = pipe();
    let child = fork_child(|| child_full(status_w, go_r, verdict_w, &path, keep_area, grow_stack));
    // SAFETY: closes the parent's copies of the child's pipe ends.
    unsafe {
        libc::close(status_w);
        libc::close(go_r);
        libc::close(verdict_w);
    }
    let rec: StatusRecord =
        read_pod(&read_timeout(status_r, 24, Duration::from_secs(10))).expect("status record");
    assert_eq!(rec.magic, abi::STATUS_MAGIC);
    assert_eq!(
        (rec.stage, rec.step, rec.index, rec.code),
        (
            abi::STAGE_READY,
            0,
            0,
            if keep_area {
                abi::STATUS_AREA_KEPT as i32
            } else {
                0
            }
        ),
        "blob reported {rec:?} (code 1 = area kept)"
    );
    assert_eq!(rec.pid, child.0 as u32);
    // Before go: the pending shared signal and both threads exist.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0)).expect("status");
    let shd = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap_or(0));
    assert_eq!(shd, Some(1 << 36), "shared pending SIGRTMIN+3");
    assert!(status.contains("Threads:\t2"), "{status}");
    // SAFETY: writes one byte to our pipe.
    assert_eq!(unsafe { libc::write(go_w, b"g".as_ptr().cast(), 1) }, 1);
    let v = read_timeout(verdict_r, 56, Duration::from_secs(10));
    let w = |i: usize| u64::from_le_bytes(v[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(
        w(0),
        0,
        "landing check failed: code {} (see leader_check/thread_check)",
        w(0)
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.0)).expect("maps");
    let has = |a: u64| maps.lines().any(|l| l.starts_with(&format!("{a:x}-")));
    assert_eq!(has(w(1)), keep_area, "restorer area mapped or not:\n{maps}");
    assert!(has(w(2)) && !has(w(3)) && !has(w(4)) && has(w(5)), "{maps}");
    let line_vdso = maps
        .lines()
        .find(|l| l.starts_with(&format!("{:x}-", w(6))))
        .unwrap_or("");
    assert!(
        line_vdso.ends_with("[vdso]"),
        "running vdso not moved to the proxy place: {line_vdso}"
    );
    let line_t = maps
        .lines()
        .find(|l| l.starts_with(&format!("{:x}-", w(2))))
        .unwrap_or("");
    assert!(line_t.contains(" r--p "), "{line_t}");
    let line_f = maps
        .lines()
        .find(|l| l.starts_with(&format!("{:x}-", w(5))))
        .unwrap_or("");
    assert!(
        line_f.contains(" r--p 00001000 ") && line_f.ends_with("/data"),
        "{line_f}"
    );
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.0)).expect("smaps");
    let vmflags = smaps
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{:x}-", w(2))))
        .find(|l| l.starts_with("VmFlags"))
        .unwrap_or("");
    assert!(
        vmflags.contains(" dd"),
        "MADV_DONTDUMP not applied: {vmflags}"
    );
    drop(child);
}

/// Runs the blob on a minimal spec changed by `modify` (and its built bytes by `corrupt`,
/// given the offset of the TaskArgs) and returns the error record; checks the exit code.
fn run_failing(modify: fn(&mut TaskSpec, u64), corrupt: fn(&mut [u8], usize)) -> StatusRecord {
    assert!(is_root(), "restorer blob tests need root");
    let (status_r, status_w) = pipe();
    let child = fork_child(move || {
        let mut spec = TaskSpec::new();
        let hole = reserve(1 << 20);
        for m in self_maps()
            .into_iter()
            .filter(|m| m.start < 0x7fff_ffff_f000 && !reserved(m.start))
        {
            spec.keep.push(KeepRange {
                start: m.start,
                end: m.end,
            });
        }
        spec.task.status_fd = status_w;
        spec.task.cur_rseq = crate::sys::restorer::current_rseq();
        spec.threads.push(ThreadSpec {
            args: ThreadArgs {
                tid: std::process::id(),
                ..Default::default()
            },
            ..Default::default()
        });
        modify(&mut spec, hole);
        let len = spec.area_len();
        let base = area_hole(len);
        let mut area = spec.build(base).expect("build");
        corrupt(&mut area.bytes, (area.args - base) as usize);
        let mut m = crate::sys::restorer::RestorerArea::map(base, len).expect("map");
        m.write(&area.bytes).expect("write");
        m.enter(area.entry_offset, area.args, area.leader_stack_top)
    });
    // SAFETY: closes the parent's copy of the write end.
    unsafe { libc::close(status_w) };
    let rec: StatusRecord =
        read_pod(&read_timeout(status_r, 24, Duration::from_secs(10))).expect("record");
    let mut st = 0;
    // SAFETY: waits for our own child.
    let r = unsafe { libc::waitpid(child.0, &mut st, 0) };
    assert_eq!(r, child.0);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == abi::STATUS_EXIT_CODE,
        "status {st:#x}"
    );
    std::mem::forget(child);
    assert_eq!(
        (rec.magic, rec.stage),
        (abi::STATUS_MAGIC, abi::STAGE_ERROR)
    );
    rec
}

#[test]
fn blob_rejects_args_with_a_bad_magic() {
    let rec = run_failing(|_, _| {}, |bytes, args| bytes[args] ^= 0xff);
    assert_eq!((rec.step, rec.code), (abi::step::BAD_ARGS, libc::EINVAL));
}

#[test]
fn blob_reports_a_taken_thread_id() {
    let rec = run_failing(
        |spec, _| {
            // TID 1 (init) is always taken: clone3 set_tid fails with EEXIST.
            spec.threads.push(ThreadSpec {
                args: ThreadArgs {
                    tid: 1,
                    ..Default::default()
                },
                ..Default::default()
            });
        },
        |_, _| {},
    );
    assert_eq!(
        (rec.step, rec.index, rec.code),
        (abi::step::CLONE_THREAD, 1, libc::EEXIST)
    );
}
