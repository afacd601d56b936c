//! The dump parasite end to end: injection, page dump through a pipe, descriptor transfer,
//! in-task state, and a cure that leaves the process exactly as it was.

mod common;

use common::workload::Workload;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use stasis::parasite::proto::RemoteIov;
use stasis::parasite::Parasite;
use stasis::sys::tree::seize_tree;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn fd_links(pid: i32) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read_link(e.path()).unwrap().display().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn maps(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

#[test]
fn parasite_dumps_pages_fds_and_state_then_cures() {
    let w = Workload::ptrace(3, false, TIMEOUT);
    let tree = seize_tree(w.pid).expect("seize tree");
    let leader = tree.root().leader();
    let regs = leader.task_regs().unwrap();
    let mask = leader.sigmask().unwrap();
    let (maps_before, fds_before) = (maps(w.pid), fd_links(w.pid));

    let mut p = Parasite::inject(leader).expect("inject");

    // Pages: the known pattern, through vmsplice and splice.
    let mut file = tempfile::tempfile().unwrap();
    let iov = RemoteIov {
        base: w.mem_addr,
        len: w.mem_len as u64,
    };
    let n = p.dump_pages(&[iov], file.as_fd()).expect("dump pages");
    assert_eq!(n, w.mem_len as u64);
    let mut got = Vec::new();
    use std::io::Seek;
    file.rewind().unwrap();
    file.read_to_end(&mut got).unwrap();
    assert!(got == w.pattern(), "dumped pages differ from the pattern");
    // A second dump (the pipe is reused) of one page.
    let n = p
        .dump_pages(
            &[RemoteIov {
                base: w.mem_addr + 4096,
                len: 4096,
            }],
            file.as_fd(),
        )
        .unwrap();
    assert_eq!(n, 4096);

    // mprotect inside the task: PROT_NONE and back.
    use stasis::parasite::proto::MprotectReq;
    let region = |prot: i32| MprotectReq {
        addr: w.mem_addr,
        len: 4096,
        prot: prot as u64,
    };
    p.mprotect(&[region(libc::PROT_NONE)])
        .expect("mprotect none");
    assert!(maps(w.pid).contains(&format!("{:x}-{:x} ---p", w.mem_addr, w.mem_addr + 4096)));
    p.mprotect(&[region(libc::PROT_READ | libc::PROT_WRITE)])
        .expect("mprotect back");

    // Descriptors: the workload's pipe write end comes over SCM_RIGHTS.
    let fds = p.drain_fds(&[w.pipe_fd]).expect("drain fds");
    assert_eq!(fds.len(), 1);
    let (fd, opts) = &fds[0];
    assert_eq!(opts.fd, w.pipe_fd);
    assert_eq!(opts.fd_flags, 0, "no FD_CLOEXEC on the workload's pipe");
    let ours = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/fd/{}", w.pid, w.pipe_fd)).unwrap();
    assert_eq!(ours, theirs);
    let err = p.drain_fds(&[999]).unwrap_err();
    assert!(err.to_string().contains("EBADF"), "{err}");

    // Signal dispositions.
    let acts = p.sigactions().expect("sigactions");
    let usr1 = acts[libc::SIGUSR1 as usize - 1];
    assert!(usr1.handler > 1);
    assert_ne!(usr1.flags & libc::SA_RESTART as u64, 0);
    assert_eq!(usr1.mask, 1 << (libc::SIGUSR2 - 1));
    assert_eq!(
        acts[libc::SIGUSR2 as usize - 1].handler,
        libc::SIG_IGN as u64
    );
    assert_eq!(
        acts[libc::SIGTERM as usize - 1].handler,
        libc::SIG_DFL as u64
    );

    // Misc state.
    let misc = p.misc().expect("misc");
    assert_eq!(misc.pid, w.pid);
    assert_eq!(misc.ppid, std::process::id() as i32);
    assert_eq!(misc.dumpable, 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid)).unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap()
        .trim();
    assert_eq!(misc.umask, u32::from_str_radix(umask, 8).unwrap());
    let nofile =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    assert_eq!((misc.rlimits[7].cur, misc.rlimits[7].max), nofile);
    assert!(misc.brk > 0);

    // Per-thread state: the leader by command, the others by remote syscalls.
    for t in &tree.root().threads {
        let st = p.thread_state(t).expect("thread state");
        assert_eq!(&st.comm[..8], b"workload");
        assert_eq!(st.altstack_flags, libc::SS_DISABLE);
        if !t.is_leader() {
            assert_ne!(st.tid_address, 0, "pthreads have a clear_child_tid address");
        }
    }
    assert!(p.posix_timers(&[]).unwrap().is_empty());
    let timers = p.posix_timers(&[0]).expect("posix timer 0");
    assert_eq!(
        (
            timers[0].id,
            timers[0].interval_sec,
            timers[0].interval_nsec
        ),
        (0, 1000, 0)
    );
    assert!(timers[0].value_sec > 0 && timers[0].value_sec <= 1000);
    assert_eq!(misc.itimers[1].interval_sec, 500, "ITIMER_VIRTUAL");
    assert_eq!(misc.itimers[0], Default::default(), "ITIMER_REAL unused");
    let err = p.posix_timers(&[12345]).unwrap_err();
    assert!(err.to_string().contains("EINVAL"), "{err}");

    // The parasite's socket and its page pipes are the extra descriptors while it lives.
    assert_eq!(
        fd_links(w.pid).len(),
        fds_before.len() + 1 + stasis::parasite::proto::MAX_PIPES,
        "socket and page pipes"
    );
    p.cure().expect("cure");
    assert_eq!(leader.task_regs().unwrap(), regs);
    assert_eq!(leader.sigmask().unwrap(), mask);
    assert_eq!(maps(w.pid), maps_before);
    assert_eq!(fd_links(w.pid), fds_before);
    let before = w.counter();
    drop(tree);
    w.wait_counting(before);
}

#[test]
fn parasite_dropped_without_cure_still_cures() {
    let w = Workload::ptrace(2, false, TIMEOUT);
    let tree = seize_tree(w.pid).unwrap();
    let leader = tree.root().leader();
    let regs = leader.task_regs().unwrap();
    let (maps_before, fds_before) = (maps(w.pid), fd_links(w.pid));
    {
        let mut p = Parasite::inject(leader).unwrap();
        p.misc().unwrap();
    }
    assert_eq!(leader.task_regs().unwrap(), regs);
    assert_eq!(maps(w.pid), maps_before);
    assert_eq!(fd_links(w.pid), fds_before);
    let before = w.counter();
    drop(tree);
    w.wait_counting(before);
}

#[test]
fn killing_the_target_mid_way_reports_task_died() {
    let w = Workload::ptrace(2, false, TIMEOUT);
    let tree = seize_tree(w.pid).unwrap();
    let mut p = Parasite::inject(tree.root().leader()).unwrap();
    p.misc().unwrap();
    kill(Pid::from_raw(w.pid), Signal::SIGKILL).unwrap();
    let err = p.misc().unwrap_err();
    assert!(err.is_task_died(), "{err}");
    assert_eq!(err.to_string(), format!("task {} died", w.pid));
    drop(p);
    drop(tree);
    w.assert_in_time();
}

#[test]
fn interrupted_read_restarts_after_cure() {
    use std::io::{BufRead, Write};
    let mut w = Workload::ptrace_mode(2, "read", TIMEOUT);
    while !std::fs::read_to_string(format!("/proc/{0}/task/{0}/syscall", w.pid))
        .unwrap()
        .starts_with("0 ")
    {
        w.assert_in_time();
        std::thread::sleep(Duration::from_millis(2));
    }
    let tree = seize_tree(w.pid).unwrap();
    let leader = tree.root().leader();
    let regs = leader.regs().unwrap();
    // read(2) on a pipe interrupted by PTRACE_INTERRUPT: -ERESTARTSYS, orig_ax 0.
    assert_eq!(
        regs.syscall_state(),
        stasis::sys::regs::SyscallState::Restart { nr: 0, code: 512 }
    );
    let img = regs.for_image();
    assert_eq!(
        (img.ax, img.ip),
        (0, regs.ip - 2),
        "the image re-executes the syscall"
    );
    let mut p = Parasite::inject(leader).unwrap();
    p.misc().unwrap();
    p.cure().unwrap();
    assert_eq!(leader.regs().unwrap(), regs);
    drop(tree);
    // The read restarted: it gets the byte instead of failing with EINTR.
    w.child.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    let mut line = String::new();
    w.stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "read 1 0");
    w.assert_in_time();
}

#[test]
fn parasite_in_a_group_stopped_process() {
    let w = Workload::ptrace(2, true, TIMEOUT);
    while w.state(w.pid) != 'T' {
        w.assert_in_time();
        std::thread::sleep(Duration::from_millis(2));
    }
    let tree = seize_tree(w.pid).unwrap();
    let leader = tree.root().leader();
    assert_eq!(
        leader.stop_kind(),
        stasis::sys::task::StopKind::GroupStop { sig: libc::SIGSTOP }
    );
    let regs = leader.task_regs().unwrap();
    let mut p = Parasite::inject(leader).unwrap();
    assert_eq!(p.misc().unwrap().pid, w.pid);
    p.cure().unwrap();
    assert_eq!(leader.task_regs().unwrap(), regs);
    let counter = w.counter();
    drop(tree);
    for tid in w.threads() {
        while w.state(tid) != 'T' {
            w.assert_in_time();
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(w.counter(), counter, "the stopped process ran user code");
    kill(Pid::from_raw(w.pid), Signal::SIGCONT).unwrap();
    w.wait_counting(counter);
}
