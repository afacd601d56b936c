//! The restorer blob (no_std, position independent). Entry: `__export_entry` at offset 0,
//! jumped to with `rdi` = the `TaskArgs` and `rsp` = the leader's stack top in the restorer
//! area. The argument layout and the steps are described in `restorer/abi.rs`; the final
//! switch in `restorer/frame.rs`.
#![no_std]
#![no_main]

#[path = "restorer/abi.rs"]
#[allow(dead_code)]
mod abi;
mod common;
#[path = "restorer/frame.rs"]
mod frame;
#[path = "restorer/mem.rs"]
mod mem;
#[path = "restorer/sys.rs"]
#[allow(dead_code)]
mod sys;
#[path = "restorer/task.rs"]
mod task;
#[path = "restorer/thread.rs"]
mod thread;

use abi::{step, TaskArgs, ThreadArgs, THREAD_STACK_SIZE};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};

core::arch::global_asm!(
    ".section .text.entry,\"ax\"",
    ".globl __export_entry",
    "__export_entry:",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym restore_main,
);

/// Threads (other than the leader) done with their own setup.
static THREADS_READY: AtomicU32 = AtomicU32::new(0);
/// 1 once threads may write their final frames and leave.
static GO: AtomicU32 = AtomicU32::new(0);
/// Parked threads wait here (outside the area code); always 0.
static PARK: AtomicU32 = AtomicU32::new(0);
/// `syscall; ret` gadget, 0 when the frames stay in the area.
static GADGET_SYSCALL_RET: AtomicU64 = AtomicU64::new(0);
/// `mov $15, %rax; syscall` gadget.
static GADGET_SIGRETURN: AtomicU64 = AtomicU64::new(0);

fn threads(a: &TaskArgs) -> &'static [ThreadArgs] {
    // SAFETY: the entry checked magic and version; the engine wrote nr_threads ThreadArgs.
    unsafe { sys::slice(a.threads, u64::from(a.nr_threads)) }
}

/// Writes `t`'s final frame and leaves the area (never returns).
fn finish(a: &TaskArgs, t: &ThreadArgs, index: usize) -> ! {
    let g = GADGET_SYSCALL_RET.load(SeqCst);
    let placement = if g != 0 {
        frame::place_on_target_stack(a, t).unwrap_or_else(|| frame::fail_frame(a, index))
    } else {
        frame::place_in_area(t.stack_top - THREAD_STACK_SIZE / 2, t)
    };
    frame::write_final(t, &placement, GADGET_SIGRETURN.load(SeqCst));
    if g == 0 {
        frame::jump_direct(&placement);
    }
    if index == 0 {
        frame::release_parked(&PARK, a.nr_threads as usize - 1);
        frame::jump_via_gadget(g, placement.frame, sys::MUNMAP, [a.area_start, a.area_len, 0]);
    }
    frame::jump_via_gadget(g, placement.frame, sys::FUTEX, [PARK.as_ptr() as u64, sys::FUTEX_WAIT_PRIVATE as u64, 0]);
}

extern "C" fn thread_main(a: *const TaskArgs, index: usize) -> ! {
    // SAFETY: the leader passes its valid args pointer.
    let a = unsafe { &*a };
    let t = &threads(a)[index];
    thread::restore_own_state(a, t, index);
    thread::restore_creds(a, t, index);
    THREADS_READY.fetch_add(1, SeqCst);
    sys::futex_wake(&THREADS_READY);
    while GO.load(SeqCst) == 0 {
        sys::futex_wait(&GO, 0);
    }
    finish(a, t, index)
}

/// Decides how threads leave: through the gadgets (area unmapped) when both gadgets exist
/// and every thread's frame fits on its target stack.
fn plan_exit(a: &TaskArgs) -> bool {
    let (syscall_ret, sigreturn) = mem::find_gadgets(a);
    let all_fit = threads(a).iter().all(|t| frame::place_on_target_stack(a, t).is_some());
    let ok = syscall_ret != 0 && sigreturn != 0 && all_fit;
    GADGET_SIGRETURN.store(sigreturn, SeqCst);
    GADGET_SYSCALL_RET.store(if ok { syscall_ret } else { 0 }, SeqCst);
    ok
}

fn close_fds(a: &TaskArgs) {
    // SAFETY: written by the engine inside the area.
    let fds: &[u32] = unsafe { sys::slice(a.close_fds, a.nr_close_fds) };
    for &fd in fds.iter().chain([a.go_fd as u32, a.status_fd as u32].iter()) {
        if fd as i32 >= 0 {
            // SAFETY: closing an fd touches no memory.
            let _ = unsafe { sys::sc(sys::CLOSE, fd as usize, 0, 0, 0, 0, 0) };
        }
    }
}

extern "C" fn restore_main(a: *const TaskArgs) -> ! {
    // SAFETY: the engine passes the TaskArgs address of the area (checked just below).
    let a = unsafe { &*a };
    if a.magic != abi::ARGS_MAGIC || a.version != abi::ABI_VERSION || a.nr_threads == 0 || a.threads == 0 {
        sys::fail(a, step::BAD_ARGS, 0, 22);
    }
    let all: u64 = !0;
    // SAFETY: all is a sigset of 8 bytes; no old mask requested.
    let r = unsafe { sys::sc(sys::RT_SIGPROCMASK, 2, &all as *const u64 as usize, 0, 8, 0, 0) };
    sys::check(a, step::SIGMASK, 0, r);
    thread::drop_inherited(a);
    mem::unmap_all_but_kept(a);
    mem::remap_special(a);
    mem::restore_vmas(a);
    mem::patch_vdso(a);
    task::restore_mm(a);
    task::restore_task_state(a);
    let ts = threads(a);
    for (i, t) in ts.iter().enumerate().skip(1) {
        thread::create(a, t, i, thread_main);
    }
    thread::restore_own_state(a, &ts[0], 0);
    let others = ts.len() as u32 - 1;
    loop {
        let ready = THREADS_READY.load(SeqCst);
        if ready >= others {
            break;
        }
        sys::futex_wait(&THREADS_READY, ready);
    }
    task::queue_signals(a, ts);
    task::restore_posix_timers(a);
    task::restore_mlockall(a);
    let unmap = plan_exit(a);
    thread::restore_creds(a, &ts[0], 0);
    task::restore_after_creds(a, &ts[0]);
    task::restore_itimers(a);
    let flags = if unmap { 0 } else { abi::STATUS_AREA_KEPT as i32 };
    sys::report(a, abi::STAGE_READY, 0, 0, flags);
    if a.go_fd >= 0 {
        let mut b = 0u8;
        // SAFETY: reads one byte into b.
        let r = unsafe { sys::sc(sys::READ, a.go_fd as usize, &mut b as *mut u8 as usize, 1, 0, 0, 0) };
        if sys::check(a, step::GO, 0, r) != 1 {
            sys::fail(a, step::GO, 0, 32);
        }
    }
    close_fds(a);
    GO.store(1, SeqCst);
    sys::futex_wake(&GO);
    finish(a, &ts[0], 0)
}
