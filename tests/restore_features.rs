//! End to end tests of the restore features of issue 4, each with a workload of its own
//! (C sources in `tests/restore_features/`, built static at test time):
//!
//! * creds: a task that dropped to other uids/gids/groups with a few capabilities kept is
//!   dumped and restored by `stasis`, and its creds are identical (seen from /proc and by
//!   the workload itself);
//! * vdso proxy: the dumped vdso is rewritten into one of another kernel (one page longer,
//!   code that traps), so the restore must proxy it; the workload keeps reading the clocks
//!   through the vdso;
//! * shell job: a job on a pty, dumped with `-j`, restored with `-j` on another pty, keeps
//!   printing its counter there and reads a line typed on the new master.

mod dump_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dump_support::*;

/// Scratch directory of these tests (world-writable: workloads drop their uid).
fn work_dir() -> PathBuf {
    let d = PathBuf::from("/tmp/stasis-features-tests");
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

/// Builds workload `name` (static, so its layout does not depend on this machine's libc).
fn build(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/restore_features/{name}.c"));
    let out = work_dir().join(format!("bin/{name}-{}", std::process::id()));
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc {name}.c failed");
    out
}

fn stasis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stasis"))
}

/// The restore tests' lock: one restore at a time on this machine.
fn restore_lock() -> nix::fcntl::Flock<std::fs::File> {
    let f = std::fs::File::create("/tmp/stasis-restore-tests.lock").unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
}

fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn wait_file(p: &Path, secs: u64, what: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(p) {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what}: no {}", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Dumps `pid` into `dir` (the task is killed) and waits until it is gone.
fn dump(pid: i32, dir: &Path, extra: &[&str]) {
    let out = stasis()
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dir)
        .args(["-o", "dump.log", "-v4"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default()
    );
    wait_gone(&[pid], 10, "dumped task");
}

/// `stasis restore -d` of `dir`.
fn restore_detached(dir: &Path) {
    let out = stasis()
        .args(["restore", "-d", "-D"])
        .arg(dir)
        .args(["-o", "restore.log", "-v4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default()
    );
}

/// Sends SIGUSR2 and returns the verdict written to `result`.
fn verdict(pid: i32, result: &Path) -> String {
    let _ = std::fs::remove_file(result);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    wait_file(result, 10, "verdict")
}

/// The creds lines of every thread of `pid`, as /proc shows them.
fn proc_creds(pid: i32) -> Vec<String> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    let keys = [
        "Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:",
        "NoNewPrivs:",
    ];
    tids.iter()
        .map(|t| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).unwrap();
            s.lines()
                .filter(|l| keys.iter().any(|k| l.starts_with(k)))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

#[test]
fn creds_survive_dump_and_restore() {
    let _lock = restore_lock();
    let bin = build("creds");
    let pid_cell: std::sync::Arc<std::sync::Mutex<i32>> = Default::default();
    let p2 = pid_cell.clone();
    with_deadline(
        120,
        move || kill_pid(*p2.lock().unwrap()),
        move || {
            let wd = work_dir();
            let result = wd.join(format!("creds-{}.result", std::process::id()));
            let ready = PathBuf::from(format!("{}.ready", result.display()));
            let _ = std::fs::remove_file(&ready);
            let w = launch_program("creds", 29100, bin.to_str().unwrap(), &[result.to_str().unwrap()]);
            *pid_cell.lock().unwrap() = w.pid;
            wait_file(&ready, 20, "creds workload");
            let before = proc_creds(w.pid);
            assert_eq!(before.len(), 2, "two threads");
            assert!(before[0].contains("Uid:\t2001\t2002\t2003\t2003"), "{}", before[0]);
            assert!(before[0].contains("Groups:\t100 200 300"), "{}", before[0]);
            let dir = tempfile::tempdir().unwrap();
            dump(w.pid, dir.path(), &[]);
            restore_detached(dir.path());
            let after = proc_creds(w.pid);
            assert_eq!(before, after, "creds seen in /proc after the restore");
            let v = verdict(w.pid, &result);
            kill_pid(w.pid);
            assert_eq!(v, "PASS", "the workload's own check");
        },
    )
}
