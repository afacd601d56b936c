//! End to end: every CRIU 4.2 fixture restores with `stasis restore -d` and its workload
//! reports PASS through the fixtures' protocol (SIGUSR2 to the root, verdict file).

mod common;

use common::restore::*;

fn restores_and_passes(name: &'static str) {
    let run = fixture_run(name);
    let dir = &run.dir;
    let pidfile = restore_detached_with_pidfile(dir);
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
