//! A failed dump leaves the tree running exactly as before: for every step, a fault injected
//! there (`DumpOptions::fault`, the command line's `STASIS_FAULT`) makes the dump fail with a
//! message naming the step, the task and the errno, and fx-signals (pending signals, blocked
//! mask, dispositions, itimers and a POSIX timer) then still verifies itself: PASS.

mod common;

use common::deadline::with_deadline;
use common::dump::*;
use common::lock::restore_lock;
use stasis::dump::DumpOptions;

fn fault_at(step: &'static str, base: i32) {
    fault_with(step, base, false)
}

/// The same through the ptrace backend (the command line's default): the tree is seized,
/// registers read and system calls run inside it before the failure, and must be released
/// exactly as it was.
fn fault_ptrace(step: &'static str, base: i32) {
    fault_with(step, base, true)
}

fn fault_with(step: &'static str, base: i32, ptrace: bool) {
    let cg = cgroup_path("fx-signals", base);
    let _lock = restore_lock();
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            let w = launch("fx-signals", base, &[]);
            let dir = tempfile::tempdir().unwrap();
            let opts = DumpOptions {
                pid: w.pid,
                images_dir: dir.path().to_path_buf(),
                fault: Some(if step == "signal" {
                    "signal:mm".to_string()
                } else {
                    step.to_string()
                }),
                ..Default::default()
            };
            let err = if ptrace {
                stasis::dump::run(&opts, &mut stasis::dump::ptrace_backend::PtraceBackend)
            } else {
                let mut backend = TestBackend {
                    cgroup: w.cgroup.clone(),
                };
                stasis::dump::run(&opts, &mut backend)
            }
            .expect_err("dump must fail");
            let msg = err.to_string();
            if step == "signal" {
                assert!(msg.contains("interrupted by signal 15"), "{msg}");
            } else {
                assert_eq!(err.step, step, "{msg}");
                assert!(msg.starts_with(step) && msg.contains("errno 5"), "{msg}");
                assert!(err.pid > 0, "{msg}");
            }
            assert!(all_running(&w), "tree not running after a fault at {step}");
            assert_eq!(verify(&w), "PASS", "fx-signals after a fault at {step}");
        },
    )
}

#[test]
fn fault_seize() {
    fault_at("seize", 31600);
}
#[test]
fn fault_collect_tree() {
    fault_at("collect-tree", 31640);
}
#[test]
fn fault_collect_task() {
    fault_at("collect-task", 31680);
}
#[test]
fn fault_core() {
    fault_at("core", 31720);
}
#[test]
fn fault_mm() {
    fault_at("mm", 31760);
}
#[test]
fn fault_pages() {
    fault_at("pages", 31800);
}
#[test]
fn fault_files() {
    fault_at("files", 31840);
}
#[test]
fn fault_images() {
    fault_at("images", 31880);
}
#[test]
fn fault_fsync() {
    fault_at("fsync", 31920);
}
#[test]
fn fault_kill() {
    fault_at("kill", 31960);
}
#[test]
fn fault_signal_to_dumper() {
    fault_at("signal", 32000);
}

#[test]
fn every_step_has_a_test() {
    let src = include_str!("dump_faults.rs");
    for s in stasis::dump::fault::STEPS {
        assert!(
            src.contains(&format!("fault_at(\"{s}\"")),
            "no fault test for step {s}"
        );
    }
}

#[test]
fn ptrace_fault_seize() {
    fault_ptrace("seize", 31020);
}
#[test]
fn ptrace_fault_collect_tree() {
    fault_ptrace("collect-tree", 31060);
}
#[test]
fn ptrace_fault_collect_task() {
    fault_ptrace("collect-task", 31100);
}
#[test]
fn ptrace_fault_core() {
    fault_ptrace("core", 31140);
}
#[test]
fn ptrace_fault_mm() {
    fault_ptrace("mm", 31180);
}
#[test]
fn ptrace_fault_pages() {
    fault_ptrace("pages", 31220);
}
#[test]
fn ptrace_fault_files() {
    fault_ptrace("files", 31260);
}
#[test]
fn ptrace_fault_images() {
    fault_ptrace("images", 31300);
}
#[test]
fn ptrace_fault_fsync() {
    fault_ptrace("fsync", 31340);
}
#[test]
fn ptrace_fault_kill() {
    fault_ptrace("kill", 31380);
}
#[test]
fn ptrace_fault_signal() {
    fault_ptrace("signal", 31420);
}
