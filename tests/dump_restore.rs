//! End to end with the command lines: `stasis dump` (ptrace backend, the tree is killed) then
//! `stasis restore -d` from those images, and the workload verifies itself: PASS.

mod dump_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dump_support::*;

fn stasis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stasis"))
}

fn gone(pids: &[i32]) -> bool {
    pids.iter().all(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| s.contains(") X"))
            .unwrap_or(true)
    })
}

fn pids_of(dir: &Path) -> Vec<i32> {
    let doc = decode(&dir.join("pstree.img"));
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pid"].as_i64().unwrap() as i32)
        .collect()
}

fn kill_pids(pids: &[i32]) {
    for &p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The restore tests' lock: one restore at a time on this machine.
fn restore_lock() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::File::create("/tmp/stasis-restore-tests.lock").unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
}

/// Dumps workload `name` (through its cgroup's freezer when `freeze`, else ptrace alone),
/// restores it and has it verify itself.
fn round_trip(name: &'static str, base: i32, args: Vec<String>, freeze: bool) {
    let _lock = restore_lock();
    let cg = cgroup_path(name, base);
    let restored: std::sync::Arc<std::sync::Mutex<Vec<i32>>> = Default::default();
    let r2 = restored.clone();
    with_deadline(
        90,
        move || {
            kill_cgroup(&cg);
            kill_pids(&r2.lock().unwrap());
        },
        move || {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            let w = launch(name, base, &a);
            let dir = tempfile::tempdir().unwrap();
            let mut cmd = stasis();
            cmd.args(["dump", "-t", &w.pid.to_string(), "-D"])
                .arg(dir.path())
                .args(["-o", "dump.log", "-v4"]);
            if freeze {
                cmd.arg("--freeze-cgroup").arg(&w.cgroup);
            }
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "dump {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let pids = pids_of(dir.path());
            *restored.lock().unwrap() = pids.clone();
            let t0 = Instant::now();
            while !gone(&pids) {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{name}: dumped tasks still alive"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = stasis()
                .args(["restore", "-d", "-D"])
                .arg(dir.path())
                .args(["-o", "restore.log", "-v4"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "restore {name}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("restore.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
            let verdict = verify(&w);
            kill_pids(&pids);
            assert_eq!(verdict, "PASS", "{name} restored from stasis' own images");
        },
    )
}

#[test]
fn round_trip_fx_loop() {
    round_trip("fx-loop", 31000 + 1500, vec![], false);
}

#[test]
fn round_trip_fx_mem() {
    round_trip("fx-mem", 32540, vec![], true);
}

#[test]
fn round_trip_fx_threads() {
    round_trip("fx-threads", 32580, vec!["16".into()], false);
}

#[test]
fn round_trip_fx_tree() {
    round_trip("fx-tree", 32640, vec![], false);
}

#[test]
fn round_trip_fx_files() {
    let data = format!(
        "/tmp/stasis-dump-tests/rt-fx-files-data-{}",
        std::process::id()
    );
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all("/tmp/stasis-dump-tests").unwrap();
    install_fixtures();
    assert!(Command::new("/tmp/criu-fixtures/bin/fx-files")
        .arg("--setup")
        .arg(&data)
        .status()
        .unwrap()
        .success());
    round_trip("fx-files", 32680, vec![data.clone()], true);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn round_trip_fx_signals() {
    round_trip("fx-signals", 32440, vec![], false);
}
