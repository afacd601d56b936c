//! Task and memory state that must come back from `stasis dump` + `stasis restore` exactly as
//! it was, each kind checked by the workload itself (`task_state_e2e/fx-task.c MODE`: it sets
//! the state, waits for the dump, and after the restore checks it the way its user would,
//! answering PASS or FAIL on SIGUSR2) and, where the outside sees it, from /proc:
//!
//! ```text
//! stopped       SIGSTOPped before the dump: every thread is stopped again after the restore
//! zombie        two unreaped children (exit 42, killed by SIGPIPE): zombies again, with their
//!               names and parent; the parent reaps them with those statuses
//! oom           oom_score_adj 345
//! loginuid      loginuid 4242
//! sched         nice 5; SCHED_BATCH nice 3, SCHED_IDLE, SCHED_FIFO 10, SCHED_RR 7 per thread
//! dumpable      PR_SET_DUMPABLE 0
//! thp           PR_SET_THP_DISABLE 1
//! madv          DONTFORK, DONTDUMP (content kept), HUGEPAGE, NOHUGEPAGE, WIPEONFORK, MERGEABLE
//! mlock         an mlock()ed range is locked again (VmFlags lo, VmLck)
//! mlock-setuid  locked as root, then RLIMIT_MEMLOCK 0 and uid 65534: still locked
//! mlockall      mlockall(MCL_CURRENT | MCL_FUTURE): a mapping made after the restore is
//!               locked (the flag is a stasis field of mm.img: CRIU has none)
//! membarrier    MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED is registered again
//! cow           parent and child sharing pages copy-on-write: each sees its own content
//! sigpending    blocked pending signals, private and shared, with their siginfo
//! wait-*        in pause, sigsuspend, nanosleep, read, futex wait: SIGTERM kills it
//! wait-*-mask   in sigsuspend/ppoll with a temporary mask blocking SIGTERM: afterwards the
//!               task's own mask is back (not the temporary one) and SIGTERM kills it
//! sigtrap       a pending SIGTRAP is refused by name at dump; the task keeps it pending
//! ```

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dump::*;
use common::lock::restore_lock;
use common::workload::c_program;

const SRC: &str = include_str!("task_state_e2e/fx-task.c");

/// The workload, its scratch directory (world-writable: mlock-setuid drops to nobody) and
/// its verdict file.
struct Fx {
    w: Workload,
    _work: tempfile::TempDir,
}

/// Builds fx-task (static, glibc tuned like the fixtures) and starts `fx-task RESULT mode`
/// in a cgroup of its own; returns once it wrote READY.
fn launch_mode(mode: &str, base: i32) -> Fx {
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let result = work.path().join("result");
    let bin = c_program("fx-task", SRC, &["-static", "-pthread"]);
    let cmd = format!("{} {mode}", tuned_cmd(&bin, &[&result]));
    let w = launch_cmd(&format!("fx-task-{mode}"), base, &cmd, &result);
    Fx { w, _work: work }
}

/// What the workload wrote when ready ("READY" and maybe pids).
fn ready_text(w: &Workload) -> String {
    std::fs::read_to_string(&w.result).unwrap_or_default()
}

/// `/proc/PID/stat` state letter, or '?' when the task is gone.
fn state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .chars()
                .next()
        })
        .unwrap_or('?')
}

/// The state letters of every thread of `pid`.
fn thread_states(pid: i32) -> Vec<char> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let s = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        out.push(
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .and_then(|t| t.chars().next())
                .unwrap_or('?'),
        );
    }
    out
}

/// Waits (bounded) until `cond` holds.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// Dumps the workload (tree killed), reaps it and restores it detached; the restored root
/// is back in the workload's cgroup.
fn dump_restore(fx: &mut Fx, images: &Path) {
    stasis_dump(
        fx.w.pid,
        images,
        &["--freeze-cgroup", fx.w.cgroup.to_str().unwrap()],
    );
    reap_dumped(&mut fx.w);
    stasis_restore_detached(images, &[]);
    let procs = std::fs::read_to_string(fx.w.cgroup.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.lines().any(|l| l.trim() == fx.w.pid.to_string()),
        "restored {} is not back in {}",
        fx.w.pid,
        fx.w.cgroup.display()
    );
}

/// Under the restore lock and a deadline that kills what it lists: launches `mode`, runs
/// `before` on it, dumps it (killed), restores it, then runs `after` (which may list more
/// pids to kill on failure, e.g. children).
fn restored(
    mode: &'static str,
    base: i32,
    before: impl FnOnce(&Workload) + Send + 'static,
    after: impl FnOnce(&Workload, &Restored) + Send + 'static,
) {
    let _lock = restore_lock();
    with_round_trip_deadline(
        120,
        cgroup_path(&format!("fx-task-{mode}"), base),
        move |r| {
            let mut fx = launch_mode(mode, base);
            *r.lock().unwrap() = vec![fx.w.pid];
            before(&fx.w);
            let images = tempfile::tempdir().unwrap();
            dump_restore(&mut fx, images.path());
            after(&fx.w, &r);
        },
    )
}

/// [`restored`], then `check` (from outside), then the workload's own verdict.
fn round_trip(mode: &'static str, base: i32, check: impl FnOnce(&Workload) + Send + 'static) {
    restored(
        mode,
        base,
        |_| {},
        move |w, _| {
            check(w);
            verify_then_kill(w, &[w.pid], &format!("fx-task {mode} after the restore"));
        },
    )
}

/// Field `n` (0-based, after the command name) of `/proc/PID/stat`.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(s.rsplit(')').next()?.split_whitespace().nth(n)?.to_string())
}

fn all_threads_stopped(pid: i32) -> bool {
    thread_states(pid).iter().all(|&s| s == 'T')
}

#[test]
fn stopped_task_stays_stopped() {
    restored(
        "stopped",
        35100,
        |w| {
            signal(w.pid, nix::sys::signal::Signal::SIGSTOP);
            wait_for(10, "SIGSTOP did not stop the workload", || {
                all_threads_stopped(w.pid)
            });
        },
        |w, _| {
            let pid = w.pid;
            wait_for(10, "the restored task is not stopped", || {
                all_threads_stopped(pid)
            });
            // And it stays so (nothing resumes it behind our back).
            std::thread::sleep(Duration::from_millis(300));
            let states = thread_states(pid);
            assert!(
                states.len() == 2 && states.iter().all(|&s| s == 'T'),
                "{states:?}"
            );
            signal(pid, nix::sys::signal::Signal::SIGCONT);
            wait_for(10, "SIGCONT did not resume it", || {
                thread_states(pid).iter().all(|&s| s != 'T')
            });
            verify_then_kill(w, &[pid], "fx-task stopped, restored and continued");
        },
    )
}

/// A stopped task dumped with --leave-running stays stopped, and runs on when continued
/// (the dump's thread routine must not send a group-stopped thread back into its own code).
#[test]
fn stopped_task_stays_stopped_after_a_leave_running_dump() {
    let base = 35150;
    common::deadline::with_deadline(
        120,
        move || kill_cgroup(&cgroup_path("fx-task-stopped", base)),
        move || {
            let fx = launch_mode("stopped", base);
            let pid = fx.w.pid;
            signal(pid, nix::sys::signal::Signal::SIGSTOP);
            wait_for(10, "SIGSTOP did not stop the workload", || {
                all_threads_stopped(pid)
            });
            let images = tempfile::tempdir().unwrap();
            stasis_dump(
                pid,
                images.path(),
                &[
                    "--leave-running",
                    "--freeze-cgroup",
                    fx.w.cgroup.to_str().unwrap(),
                ],
            );
            // Raw numbers (crit's pretty names call 3 "Zombie", as CRIU's crit does).
            let out = stasis_bin()
                .args(["crit", "decode", "-i"])
                .arg(images.path().join(format!("core-{pid}.img")))
                .output()
                .unwrap();
            let core: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(core["entries"][0]["tc"]["task_state"], 3, "TASK_STOPPED");
            assert!(all_threads_stopped(pid), "{:?}", thread_states(pid));
            signal(pid, nix::sys::signal::Signal::SIGCONT);
            verify_then_kill(&fx.w, &[pid], "fx-task stopped, dumped, continued");
        },
    )
}

#[test]
fn zombies_keep_name_parent_and_exit_status() {
    restored(
        "zombie",
        35200,
        |_| {},
        |w, _| {
            let kids: Vec<i32> = ready_text(w)
                .split_whitespace()
                .skip(1)
                .map(|p| p.parse().unwrap())
                .collect();
            assert_eq!(kids.len(), 2, "{}", ready_text(w));
            for (kid, name) in kids.iter().zip(["fx-zombie-a", "fx-zombie-b"]) {
                assert_eq!(state(*kid), 'Z', "{kid} is not a zombie");
                let comm = std::fs::read_to_string(format!("/proc/{kid}/comm")).unwrap();
                assert_eq!(comm.trim(), name, "name of zombie {kid}");
                let ppid = stat_field(*kid, 1).and_then(|p| p.parse().ok());
                assert_eq!(ppid, Some(w.pid), "parent of zombie {kid}");
            }
            verify_then_kill(
                w,
                &[w.pid],
                "fx-task zombie: the parent reaps both with their statuses",
            );
        },
    )
}

#[test]
fn oom_score_adj_survives() {
    round_trip("oom", 35300, |w| {
        let v = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", w.pid)).unwrap();
        assert_eq!(v.trim(), "345");
    });
}

#[test]
fn loginuid_survives() {
    round_trip("loginuid", 36800, |w| {
        let v = std::fs::read_to_string(format!("/proc/{}/loginuid", w.pid)).unwrap();
        assert_eq!(v.trim(), "4242");
    });
}

#[test]
fn scheduling_policy_priority_and_nice_survive() {
    round_trip("sched", 35400, |_| {});
}

#[test]
fn dumpable_flag_survives() {
    round_trip("dumpable", 35500, |_| {});
}

#[test]
fn thp_disable_survives() {
    round_trip("thp", 35600, |_| {});
}

#[test]
fn madvise_flags_and_dontdump_content_survive() {
    round_trip("madv", 35700, |_| {});
}

#[test]
fn mlocked_range_stays_locked() {
    round_trip("mlock", 35800, |w| {
        let st = std::fs::read_to_string(format!("/proc/{}/status", w.pid)).unwrap();
        assert!(st.contains("VmLck:\t      64 kB"), "{st}");
    });
}

#[test]
fn mlocked_range_stays_locked_after_setuid() {
    round_trip("mlock-setuid", 35900, |w| {
        let st = std::fs::read_to_string(format!("/proc/{}/status", w.pid)).unwrap();
        assert!(st.contains("Uid:\t65534\t65534\t65534\t65534"), "{st}");
        assert!(st.contains("VmLck:\t      64 kB"), "{st}");
    });
}

#[test]
fn mlockall_future_survives() {
    round_trip("mlockall", 36900, |w| {
        let st = std::fs::read_to_string(format!("/proc/{}/status", w.pid)).unwrap();
        let kb: u64 = st
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        assert!(kb >= 64, "{st}");
    });
}

#[test]
fn membarrier_registration_survives() {
    round_trip("membarrier", 36000, |_| {});
}

#[test]
fn pending_signals_survive_with_their_siginfo() {
    round_trip("sigpending", 36100, |_| {});
}

/// The pages a parent shares copy-on-write with its child come back with the right content
/// in each (the child checks its view and reports it through its exit status). The sharing
/// itself is checked by `restore_cow.rs` (Rss/Pss in this test's output).
#[test]
fn cow_pages_have_each_process_content() {
    restored(
        "cow",
        36200,
        |_| {},
        |w, r| {
            let child: i32 = ready_text(w)
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no child pid: {}", ready_text(w)));
            r.lock().unwrap().push(child);
            assert!(alive(child), "the child was not restored");
            eprintln!("after the restore: child Rss/Pss {:?}", rss_pss(child));
            verify_then_kill(w, &[w.pid, child], "fx-task cow: parent and child views");
        },
    )
}

/// Total Rss and Pss (kB) of `pid`.
fn rss_pss(pid: i32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn alive(pid: i32) -> bool {
    !matches!(state(pid), '?' | 'Z' | 'X')
}

/// Sends SIGTERM to the restored `pid` and waits (bounded) until it is dead.
fn terminates(mode: &str, pid: i32) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    wait_for(
        10,
        &format!("{mode}: SIGTERM did not kill the restored task"),
        || !alive(pid),
    );
}

/// A restored task sitting in a blocking system call, SIGTERM at its default action, dies of
/// SIGTERM (the call it was in is restarted, its mask and actions are its own). The signal
/// is sent at once: one that arrives while the restore finishes must not be lost either.
#[test]
fn sigterm_kills_a_restored_task_in_a_blocking_call() {
    for (i, how) in ["pause", "sigsuspend", "nanosleep", "read", "futex"]
        .iter()
        .enumerate()
    {
        let mode: &'static str = Box::leak(format!("wait-{how}").into_boxed_str());
        restored(
            mode,
            36300 + i as i32 * 10,
            |_| {},
            move |w, _| terminates(mode, w.pid),
        );
    }
}

/// A single-threaded task waiting in sigsuspend/ppoll with a temporary mask that blocks
/// SIGTERM: /proc shows that mask while it waits, but it is not the task's own. After the
/// restore, SIGUSR2 ends the wait, the task pauses with its own mask (nothing blocked), and
/// SIGTERM kills it. (Recording the temporary mask left SIGTERM blocked for good.)
#[test]
fn sigterm_kills_a_restored_task_after_a_temporary_mask() {
    for (i, how) in ["sigsuspend-mask", "ppoll-mask"].iter().enumerate() {
        let mode: &'static str = Box::leak(format!("wait-{how}").into_boxed_str());
        restored(
            mode,
            36600 + i as i32 * 10,
            |_| {},
            move |w, _| {
                let pid = w.pid;
                signal(pid, nix::sys::signal::Signal::SIGUSR2);
                // pause() (syscall 34) with the task's own mask.
                wait_for(
                    10,
                    &format!("{mode}: the wait did not end on SIGUSR2"),
                    || {
                        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                            .is_ok_and(|s| s.starts_with("34 "))
                    },
                );
                let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                assert!(st.contains("SigBlk:\t0000000000000000"), "{mode}: {st}");
                terminates(mode, pid);
            },
        );
    }
}

/// A pending SIGTRAP cannot be dumped (the parasite's own traps would take it): the dump
/// fails naming it, and the task runs on with the signal still pending.
#[test]
fn pending_sigtrap_is_refused_by_name() {
    let _lock = restore_lock();
    let base = 36400;
    with_round_trip_deadline(120, cgroup_path("fx-task-sigtrap", base), move |r| {
        let fx = launch_mode("sigtrap", base);
        *r.lock().unwrap() = vec![fx.w.pid];
        let images = tempfile::tempdir().unwrap();
        let out = stasis_bin()
            .args(["dump", "-t", &fx.w.pid.to_string(), "-D"])
            .arg(images.path())
            .args(["--freeze-cgroup", fx.w.cgroup.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a pending SIGTRAP was dumped");
        assert!(err.contains("pending SIGTRAP"), "{err}");
        assert!(
            all_running(&fx.w),
            "the task does not run after the refused dump"
        );
        verify_then_kill(&fx.w, &[fx.w.pid], "fx-task sigtrap after a refused dump");
    })
}

/// Mount point of the cgroup v1 hierarchy with controller `ctl`, from /proc/self/mounts.
fn v1_mount(ctl: &str) -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == ctl))
            .then(|| std::path::PathBuf::from(f[1]))
    })
}

/// A task in a pids cgroup with a limit (cgroup v1 here: the unified hierarchy of this
/// machine has no pids controller) whose cgroup is gone at restore time: the restore
/// recreates it with its recorded pids.max (CRIU's soft mode) and puts the task back in it.
#[test]
fn missing_cgroup_is_recreated_with_its_properties() {
    let pids_root = v1_mount("pids").expect("this test needs a cgroup v1 pids hierarchy");
    let cg = pids_root.join(format!("stasis-task-state-{}", std::process::id()));
    let cg2 = cg.clone();
    let _lock = restore_lock();
    let base = 36500;
    with_round_trip_deadline(120, cgroup_path("fx-task-oom", base), move |r| {
        let mut fx = launch_mode("oom", base);
        let pid = fx.w.pid;
        *r.lock().unwrap() = vec![pid];
        let _ = std::fs::create_dir(&cg);
        std::fs::write(cg.join("pids.max"), "77").unwrap();
        std::fs::write(cg.join("cgroup.procs"), pid.to_string()).unwrap();
        let images = tempfile::tempdir().unwrap();
        stasis_dump(
            pid,
            images.path(),
            &["--freeze-cgroup", fx.w.cgroup.to_str().unwrap()],
        );
        reap_dumped(&mut fx.w);
        wait_for(10, "the pids cgroup stays populated", || {
            std::fs::remove_dir(&cg).is_ok()
        });
        stasis_restore_detached(images.path(), &[]);
        let name = cg.file_name().unwrap().to_str().unwrap().to_string();
        let mine = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let back = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        let max = std::fs::read_to_string(cg.join("pids.max")).unwrap_or_default();
        kill_pids(&[pid]);
        assert!(mine.contains(&format!("pids:/{name}\n")), "{mine}");
        assert!(back.lines().any(|l| l == pid.to_string()), "{back}");
        assert_eq!(max.trim(), "77", "recorded pids.max");
    });
    // Killed above; the directory goes once the task is reaped.
    let t0 = Instant::now();
    while std::fs::remove_dir(&cg2).is_err() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}
