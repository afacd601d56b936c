//! ptrace layer: seize/interrupt/detach, registers, signals, remote syscalls, dying tasks.
//! Every test runs a workload under a watchdog (a stuck tracee is killed and the test fails).

mod common;

use common::workload::Workload;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use stasis::sys::regs::SyscallState;
use stasis::sys::remote::{Remote, RemoteMapping};
use stasis::sys::task::{SeizedTask, StopKind};
use stasis::sys::Error;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

fn seize_all(w: &Workload) -> Vec<SeizedTask> {
    w.threads()
        .into_iter()
        .map(|tid| SeizedTask::seize(w.pid, tid).expect("seize"))
        .collect()
}

#[test]
fn seize_interrupt_detach_leaves_multithreaded_process_running() {
    let w = Workload::ptrace(8, false, TIMEOUT);
    let before = w.counter();
    let tasks = seize_all(&w);
    assert_eq!(tasks.len(), 8);
    for t in &tasks {
        assert_eq!(t.stop_kind(), StopKind::Interrupted);
        assert_eq!(
            w.state(t.tid()),
            't',
            "thread {} is not in a tracing stop",
            t.tid()
        );
    }
    let frozen = w.counter();
    assert!(frozen >= before);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        w.counter(),
        frozen,
        "counter moved while every thread was stopped"
    );
    drop(tasks);
    w.wait_counting(frozen);
    for tid in w.threads() {
        assert_ne!(w.state(tid), 't');
    }
}

#[test]
fn registers_roundtrip() {
    let w = Workload::ptrace(2, false, TIMEOUT);
    let tasks = seize_all(&w);
    let main = &tasks[0];
    let regs = main.regs().unwrap();
    assert_ne!(regs.fs_base, 0, "glibc sets fs_base for TLS");
    assert_ne!(regs.ip, 0);
    let mut changed = regs;
    changed.r12 ^= 0x5a5a_5a5a;
    changed.r15 = 0x1234_5678;
    main.set_regs(&changed).unwrap();
    assert_eq!(main.regs().unwrap(), changed);
    main.set_regs(&regs).unwrap();
    assert_eq!(main.regs().unwrap(), regs);

    let xs = main.xstate().unwrap();
    assert!(
        xs.as_bytes().len() >= 576,
        "xsave area of {} bytes",
        xs.as_bytes().len()
    );
    let fx = xs.fxsave().unwrap();
    assert_eq!(fx.mxcsr & 0xffc0, 0x1f80 & 0xffc0, "default MXCSR masks");
    main.set_xstate(&xs).unwrap();
    assert_eq!(main.xstate().unwrap(), xs);
    let both = main.task_regs().unwrap();
    main.set_task_regs(&both).unwrap();
    assert_eq!(main.task_regs().unwrap(), both);
    let before = w.counter();
    drop(tasks);
    w.wait_counting(before);
    w.assert_in_time();
}

#[test]
fn sleeping_thread_shows_restartable_syscall() {
    let w = Workload::ptrace(2, false, TIMEOUT);
    let sleeper_tid = w.threads()[1];
    // Wait until the new thread sleeps in clock_nanosleep (it may still be leaving clone3).
    while !std::fs::read_to_string(format!("/proc/{}/task/{sleeper_tid}/syscall", w.pid))
        .unwrap()
        .starts_with("230 ")
    {
        w.assert_in_time();
        std::thread::sleep(Duration::from_millis(5));
    }
    let tasks = seize_all(&w);
    let sleeper = &tasks[1];
    let regs = sleeper.regs().unwrap();
    // glibc's nanosleep is clock_nanosleep (230); PTRACE_INTERRUPT broke it with
    // -ERESTART_RESTARTBLOCK, which CRIU stores as -EINTR at the same ip.
    assert_eq!(
        regs.syscall_state(),
        SyscallState::Restart { nr: 230, code: 516 }
    );
    let img = regs.for_image();
    assert_eq!((img.ax as i64, img.ip), (-(libc::EINTR as i64), regs.ip));
    // A remote syscall in that thread leaves the interrupted state exactly as it was.
    let remote = Remote::new(sleeper).unwrap();
    assert_eq!(
        remote.syscall("gettid", libc::SYS_gettid, &[]).unwrap(),
        sleeper.tid() as u64
    );
    assert_eq!(sleeper.regs().unwrap(), regs);
    let before = w.counter();
    drop(tasks);
    w.wait_counting(before);
}

#[test]
fn signal_masks_and_pending_signals() {
    let w = Workload::ptrace(2, false, TIMEOUT);
    let tasks = seize_all(&w);
    let main = &tasks[0];
    let mask = main.sigmask().unwrap();
    main.set_sigmask(mask | (1 << (libc::SIGHUP - 1))).unwrap();
    assert_eq!(main.sigmask().unwrap(), mask | 1);
    main.set_sigmask(mask).unwrap();
    assert_eq!(main.sigmask().unwrap(), mask);

    // Signals sent to stopped threads stay queued: one private, one shared.
    stasis::sys::tkill::tgkill(w.pid, tasks[1].tid(), libc::SIGUSR1).unwrap();
    kill(Pid::from_raw(w.pid), Signal::SIGUSR1).unwrap();
    let private = tasks[1].pending_signals(false).unwrap();
    assert_eq!(private.len(), 1);
    assert_eq!(
        i32::from_le_bytes(private[0][..4].try_into().unwrap()),
        libc::SIGUSR1
    );
    let shared = main.pending_signals(true).unwrap();
    assert_eq!(shared.len(), 1);
    assert_eq!(
        i32::from_le_bytes(shared[0][..4].try_into().unwrap()),
        libc::SIGUSR1
    );
    assert!(main.pending_signals(false).unwrap().is_empty());

    // glibc registers a robust list per thread; 64-bit tasks leave the TLS slots empty.
    let (head, len) = tasks[1].robust_list().unwrap();
    assert_ne!(head, 0);
    assert_eq!(len, 24, "sizeof(struct robust_list_head)");
    for (i, d) in main.tls().unwrap().iter().enumerate() {
        assert_eq!(d.entry_number, 12 + i as u32);
        assert!(d.seg_not_present() && d.read_exec_only());
    }
    let rseq = main.rseq().unwrap();
    if rseq.rseq_abi_pointer != 0 {
        assert!(rseq.rseq_abi_size >= 32);
    }
    let before = w.counter();
    drop(tasks);
    w.wait_counting(before);
}

#[test]
fn remote_syscalls_return_values_and_typed_errnos() {
    let w = Workload::ptrace(3, false, TIMEOUT);
    let tasks = seize_all(&w);
    let main = &tasks[0];
    let regs = main.regs().unwrap();
    let mask = main.sigmask().unwrap();
    let remote = Remote::new(main).unwrap();
    let code = main.peek(remote.ip()).unwrap();
    assert_eq!(
        remote.syscall("getpid", libc::SYS_getpid, &[]).unwrap(),
        w.pid as u64
    );
    let err = remote
        .syscall("close", libc::SYS_close, &[9999])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Remote {
                errno: Errno::EBADF,
                op: "close",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("remote close in task {}: EBADF: Bad file number", w.pid)
    );
    // Remote mmap, write, read back, unmap on drop.
    let map = RemoteMapping::new(remote, 8192, libc::PROT_READ | libc::PROT_WRITE).unwrap();
    map.write(100, b"stasis").unwrap();
    let mut back = [0u8; 6];
    map.read(100, &mut back).unwrap();
    assert_eq!(&back, b"stasis");
    let addr = map.addr();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", w.pid)).unwrap();
    assert!(maps.contains(&format!("{addr:x}-")));
    drop(map);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", w.pid)).unwrap();
    assert!(
        !maps.contains(&format!("{addr:x}-")),
        "mapping not unmapped"
    );
    // Everything restored.
    assert_eq!(main.regs().unwrap(), regs);
    assert_eq!(main.sigmask().unwrap(), mask);
    assert_eq!(main.peek(remote.ip()).unwrap(), code);
    let before = w.counter();
    drop(tasks);
    w.wait_counting(before);
}

#[test]
fn group_stopped_task_stays_stopped() {
    let w = Workload::ptrace(2, true, TIMEOUT);
    while w.state(w.pid) != 'T' {
        w.assert_in_time();
        std::thread::sleep(Duration::from_millis(5));
    }
    let tasks = seize_all(&w);
    assert_eq!(
        tasks[0].stop_kind(),
        StopKind::GroupStop { sig: libc::SIGSTOP }
    );
    let remote = Remote::new(&tasks[0]).unwrap();
    assert_eq!(
        remote.syscall("getpid", libc::SYS_getpid, &[]).unwrap(),
        w.pid as u64
    );
    drop(tasks);
    // Detached: back in the group stop (a resumed thread passes through R on its way).
    let counter = w.counter();
    for tid in w.threads() {
        while w.state(tid) != 'T' {
            w.assert_in_time();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(w.counter(), counter, "the stopped process ran user code");
    let before = w.counter();
    kill(Pid::from_raw(w.pid), Signal::SIGCONT).unwrap();
    w.wait_counting(before);
}

#[test]
fn killed_task_reports_task_died() {
    let w = Workload::ptrace(2, false, TIMEOUT);
    let tasks = seize_all(&w);
    kill(Pid::from_raw(w.pid), Signal::SIGKILL).unwrap();
    let remote = Remote::new(&tasks[0]);
    let err = match remote {
        Ok(r) => r.syscall("getpid", libc::SYS_getpid, &[]).unwrap_err(),
        Err(e) => e,
    };
    assert!(err.is_task_died(), "{err}");
    assert_eq!(err.to_string(), format!("task {} died", w.pid));
    w.assert_in_time();
}

/// A deferred restore (what the parasite's thread routine leaves) reads back as the task's
/// registers and mask, is written back by detach (the workload goes on counting), and a
/// killed tree is reaped as its tracer: no thread of it is left.
#[test]
fn deferred_restore_is_written_back_on_detach_and_dropped_on_kill() {
    let w = Workload::ptrace(4, false, TIMEOUT);
    let before = w.counter();
    let tree = stasis::sys::tree::seize_tree(w.pid).expect("seize tree");
    let t = &tree.root().threads[1];
    let (regs, mask) = (t.regs().unwrap(), t.sigmask().unwrap());
    // Scribble on the live registers as the routine would, keeping the originals deferred.
    t.defer_restore(regs, Some(mask));
    let mut scribbled = regs;
    scribbled.ip = 0x1000;
    stasis::sys::ptrace::set_regs(t.tid(), &scribbled).unwrap();
    stasis::sys::ptrace::set_sigmask(t.tid(), !0).unwrap();
    assert_eq!(
        t.regs().unwrap(),
        regs,
        "regs read through a pending restore"
    );
    assert_eq!(
        t.sigmask().unwrap(),
        mask,
        "mask read through a pending restore"
    );
    assert_eq!(t.pending_restore(), Some((regs, Some(mask))));
    drop(tree);
    w.wait_counting(before);

    let w = Workload::ptrace(4, false, TIMEOUT);
    let tids = w.threads();
    let tree = stasis::sys::tree::seize_tree(w.pid).expect("seize tree");
    for t in &tree.root().threads[1..] {
        t.defer_restore(t.regs().unwrap(), Some(t.sigmask().unwrap()));
        let mut scribbled = t.regs().unwrap();
        scribbled.ip = 0x1000;
        stasis::sys::ptrace::set_regs(t.tid(), &scribbled).unwrap();
    }
    tree.kill().expect("kill");
    for tid in &tids[1..] {
        assert!(
            !std::path::Path::new(&format!("/proc/{}/task/{tid}", w.pid)).exists(),
            "thread {tid} left after kill"
        );
    }
    // The tracer is the parent here too: reaping the leader as its tracer reaped it whole.
    assert!(
        !std::path::Path::new(&format!("/proc/{}", w.pid)).exists(),
        "process {} left after kill",
        w.pid
    );
}
