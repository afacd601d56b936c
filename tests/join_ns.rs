//! `--join-ns` (restore): the restored tree joins namespaces held by another process (a net
//! and a uts namespace made by `unshare`, named by PID and by path) and the workload checks
//! itself; an unopenable namespace file fails the restore by name before any task exists.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::dump::*;
use common::lock::restore_lock;

fn ns(pid: i32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn restore_joins_existing_namespaces() {
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path("fx-loop", 37500), move |restored| {
        // The holder of the namespaces to join (its own net and uts namespaces).
        let mut holder = Command::new("unshare")
            .args(["--net", "--uts", "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let hp = holder.id() as i32;
        let me = std::process::id() as i32;
        let t0 = std::time::Instant::now();
        while ns(hp, "net") == ns(me, "net") {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "unshare did not run"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let w = launch("fx-loop", 37500, &[]);
        let dir = tempfile::tempdir().unwrap();
        stasis_dump(w.pid, dir.path(), &[]);
        let pids = pids_of(dir.path());
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped tasks");

        // A namespace file that cannot be opened: refused by name, nothing runs.
        let out = stasis_bin()
            .args(["restore", "-d", "-D"])
            .arg(dir.path())
            .args(["--join-ns", "net:/nonexistent/ns"])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && e.contains("--join-ns net:/nonexistent/ns"),
            "{e}"
        );
        assert!(gone(&pids), "a refused restore left tasks");

        let uts = format!("uts:/proc/{hp}/ns/uts");
        stasis_restore_detached(dir.path(), &["--join-ns", &format!("net:{hp}"), "-J", &uts]);
        std::thread::sleep(Duration::from_millis(300));
        for &p in &pids {
            assert_eq!(
                ns(p, "net"),
                ns(hp, "net"),
                "task {p} is not in the joined net ns"
            );
            assert_eq!(
                ns(p, "uts"),
                ns(hp, "uts"),
                "task {p} is not in the joined uts ns"
            );
            assert_eq!(ns(p, "ipc"), ns(me, "ipc"), "task {p} left its ipc ns");
        }
        verify_then_kill(&w, &pids, "fx-loop restored into joined namespaces");
        let _ = holder.kill();
        let _ = holder.wait();
    })
}
