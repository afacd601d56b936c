//! End to end: every CRIU 4.2 fixture restores with `stasis restore -d` and its workload
//! reports PASS through the fixtures' protocol (SIGUSR2 to the root, verdict file). A fixture
//! whose PID is held by a foreign task is restored in a fresh PID namespace instead (noted on
//! stderr); `every_fixture_in_a_fresh_pid_namespace` always takes that path.

mod common;

use common::restore::*;

/// Restores `name` in the host PID namespace and checks PASS; when a PID of the fixture is
/// held by a task that is not ours (another program of the machine), says so on stderr and
/// restores it in a fresh PID namespace instead (PASS asserted there too).
fn restores_and_passes(name: &'static str) {
    let serial = serial();
    let holders = foreign_holders(name);
    if !holders.is_empty() {
        eprintln!("{}", common::pids::fallback_note(name, &holders));
        restores_and_passes_in_new_pidns(&serial, name);
        return;
    }
    let run = fixture_run_locked(serial, name);
    let dir = &run.dir;
    let pidfile = dir.join("root.pid");
    let out = stasis_restore(
        dir,
        &[
            "-d",
            "-v4",
            "-o",
            "restore.log",
            "--pidfile",
            pidfile.to_str().unwrap(),
        ],
    );
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "restore of {name} failed: {}\nlog tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let (root, _) = manifest(name);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        root.to_string()
    );
    let (ok, text) = verify(name, &pidfile);
    assert!(ok, "{name}: verify.sh: {text}");
    // The workload exits after its verdict; nothing of the tree may linger.
    let (_, pids) = manifest(name);
    assert!(
        wait_pids_free(&pids, std::time::Duration::from_secs(10)),
        "{name}: tasks left after PASS"
    );
    drop(run);
}

#[test]
fn fx_loop() {
    restores_and_passes("fx-loop");
}

#[test]
fn fx_mem() {
    restores_and_passes("fx-mem");
}

#[test]
fn fx_signals() {
    restores_and_passes("fx-signals");
}

#[test]
fn fx_threads() {
    restores_and_passes("fx-threads");
}

#[test]
fn fx_files() {
    restores_and_passes("fx-files");
}

#[test]
fn fx_tree() {
    restores_and_passes("fx-tree");
}

/// Every fixture restored in a fresh PID namespace, whoever holds its PIDs on the host, and
/// verified there (so the namespace path is always exercised).
#[test]
fn every_fixture_in_a_fresh_pid_namespace() {
    let serial = serial();
    for name in [
        "fx-loop",
        "fx-mem",
        "fx-threads",
        "fx-files",
        "fx-tree",
        "fx-signals",
    ] {
        restores_and_passes_in_new_pidns(&serial, name);
    }
}

/// Without `-d`, restore waits for the root and exits with its status (0 after PASS).
#[test]
fn attached_restore_exits_with_root_status() {
    let name = "fx-loop";
    let run = fixture_run(name);
    let dir = &run.dir;
    let pidfile = dir.join("root.pid");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["restore", "-D"])
        .arg(dir)
        .arg("--pidfile")
        .arg(&pidfile)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (root, _) = manifest(name);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !pidfile.exists() {
        assert!(std::time::Instant::now() < end, "no pidfile");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(alive(root));
    let (ok, text) = verify(name, &pidfile);
    assert!(ok, "verify: {text}");
    let out = wait_child(
        child,
        std::time::Duration::from_secs(20),
        "attached restore",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
