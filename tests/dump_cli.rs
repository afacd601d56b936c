//! The `stasis dump` and `stasis check` command lines.

mod common;

use common::deadline::{with_deadline, with_timeout};
use common::dump::*;
use common::lock::restore_lock;

#[test]
fn check_reports_features() {
    let out = stasis_bin().arg("check").arg("--all").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Ok    (seize)"), "{text}");
    assert!(text.contains("Warn  (soft_dirty)"), "{text}");
    assert!(text.contains("Ok    (pagemap_scan)"), "{text}");
    let one = stasis_bin()
        .args(["check", "--feature", "clone3_set_tid"])
        .output()
        .unwrap();
    assert!(one.status.success());
    let bad = stasis_bin()
        .args(["check", "--feature", "soft_dirty"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("soft_dirty is not supported"));
}

#[test]
fn unknown_and_unsupported_options_are_refused_by_name() {
    let out = stasis_bin()
        .args(["dump", "-t", "1", "-D", "/tmp", "--page-server"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--page-server"));
    let out = stasis_bin()
        .args(["dump", "-t", "1", "-D", "/tmp", "--no-such-option"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-option"), "{err}");
    assert!(
        err.contains("Usage: stasis dump"),
        "usage names the verb: {err}"
    );
    for verb in ["dump", "restore", "check"] {
        let out = stasis_bin().args([verb, "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains(&format!("Usage: stasis {verb}")), "{help}");
    }
}

/// A task in a namespace of a kind stasis does not dump (here user) would be restored in the
/// restorer's: the dump refuses it by name and leaves it running.
#[test]
fn tree_in_its_own_namespaces_is_refused_by_name() {
    let base = 32250;
    let cg = cgroup_path("own-ns", base);
    let _lock = restore_lock();
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            let work = tempfile::tempdir().unwrap();
            let ready = work.path().join("READY");
            let w = launch_cmd(
                "own-ns",
                base,
                &format!(
                    "setsid unshare --user --map-root-user sh -c 'touch {}; exec sleep 60'",
                    ready.display()
                ),
                &ready,
            );
            let dir = tempfile::tempdir().unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "-D"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("task {}", w.pid))
                    && err.contains("in its own user namespace")
                    && err.contains("not built yet"),
                "{err}"
            );
            assert!(all_running(&w));
        },
    )
}

#[test]
fn failed_cli_dump_names_step_task_errno_and_releases_the_tree() {
    let base = 32240;
    let cg = cgroup_path("fx-loop", base);
    let _lock = restore_lock();
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            let w = launch("fx-loop", base, &[]);
            let dir = tempfile::tempdir().unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "-D"])
                .arg(dir.path())
                .arg("--freeze-cgroup")
                .arg(&w.cgroup)
                .args(["-o", "dump.log", "-v4"])
                .env("STASIS_FAULT", "collect-tree")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("collect-tree: task {}", w.pid)) && err.contains("errno 5"),
                "{err}"
            );
            let log = std::fs::read_to_string(dir.path().join("dump.log")).unwrap();
            assert!(log.contains("collect-tree"), "{log}");
            assert!(all_running(&w));
            assert_eq!(verify(&w), "PASS");
        },
    )
}

#[test]
fn leave_running_dump_with_stats_and_profile() {
    let base = 32260;
    let cg = cgroup_path("fx-loop", base);
    let _lock = restore_lock();
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            let w = launch("fx-loop", base, &[]);
            let dir = tempfile::tempdir().unwrap();
            let trace = dir.path().join("trace.json");
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "-D"])
                .arg(dir.path())
                .args(["-R", "--stats", "--profile"])
                .arg(&trace)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("pages scanned"));
            let t: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
            let names: Vec<String> = t["traceEvents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect();
            for want in [
                "freeze",
                "collect-tree",
                "collect",
                "write",
                &format!("thread {}", w.pid),
                &format!("task {}", w.pid),
            ] {
                assert!(
                    names.iter().any(|n| n == want),
                    "no span {want} in {names:?}"
                );
            }
            assert!(dir.path().join("stats-dump").exists());
            assert!(all_running(&w));
            assert_eq!(verify(&w), "PASS");
        },
    )
}

/// Processes stopped inside sleeps that the kernel restarts through the task's restart
/// block (`clock_nanosleep`: `-ERESTART_RESTARTBLOCK`) sleep on after `dump -R`, in the
/// main thread and in other threads: the parasite waits without touching that block.
#[test]
fn leave_running_keeps_interrupted_sleeps_intact() {
    with_timeout(120, || {
        let dir = tempfile::tempdir().unwrap();
        let single = std::process::Command::new("sleep")
            .arg("3")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let threads = std::process::Command::new("python3")
            .args([
                "-c",
                "import threading,time\n\
                 ts=[threading.Thread(target=time.sleep,args=(3,)) for _ in range(3)]\n\
                 [t.start() for t in ts]\ntime.sleep(3)\n[t.join() for t in ts]\nprint('ok')",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        for (i, pid) in [single.id(), threads.id()].into_iter().enumerate() {
            let d = dir.path().join(i.to_string());
            std::fs::create_dir(&d).unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &pid.to_string(), "-R", "-j", "-D"])
                .arg(&d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "dump -R of {pid}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let s = single.wait_with_output().unwrap();
        assert!(
            s.status.success(),
            "sleep after dump -R: {:?} {}",
            s.status,
            String::from_utf8_lossy(&s.stderr)
        );
        let t = threads.wait_with_output().unwrap();
        assert!(
            t.status.success() && String::from_utf8_lossy(&t.stdout).trim() == "ok",
            "python threads after dump -R: {:?} {}",
            t.status,
            String::from_utf8_lossy(&t.stderr)
        );
    });
}
