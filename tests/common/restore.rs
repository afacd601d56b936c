//! Harness of the restore tests: the restore lock (fixture PIDs are fixed), scratch copies,
//! running `stasis restore` and `verify.sh` with timeouts, and a guard that kills any fixture
//! task left alive.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::lock::{restore_lock, RestoreLock};

pub use super::fixtures::{fixtures, install as reinstall};
/// Whether `pid` exists and is not a zombie (the library's check).
pub use stasis::sys::proc_tasks::alive;

/// Holds the restore lock for the whole test, with a scratch directory.
pub struct Serial {
    _lock: RestoreLock,
    /// Scratch directory of this test.
    pub scratch: tempfile::TempDir,
}

/// Takes the lock, installs the fixtures once per lock holder, and checks we are root.
pub fn serial() -> Serial {
    assert!(nix::unistd::geteuid().is_root(), "restore tests need root");
    let lock = restore_lock();
    reinstall();
    Serial {
        _lock: lock,
        scratch: tempfile::tempdir().expect("scratch dir"),
    }
}

/// A test restoring fixture `name`: the lock held, the fixture's PIDs free, a scratch copy
/// of its images, and its tasks killed at the end. Fields drop in order: leftovers are
/// killed before the lock is released.
pub struct FixtureRun {
    /// The scratch copy of the images.
    pub dir: PathBuf,
    pub leftovers: Leftovers,
    pub serial: Serial,
}

/// Prepares a [`FixtureRun`] of fixture `name`.
pub fn fixture_run(name: &'static str) -> FixtureRun {
    fixture_run_locked(serial(), name)
}

/// [`fixture_run`] for a test that already holds the lock.
pub fn fixture_run_locked(serial: Serial, name: &'static str) -> FixtureRun {
    pids_ready(name);
    let leftovers = Leftovers(name);
    let dir = scratch_copy(&serial, name);
    FixtureRun {
        dir,
        leftovers,
        serial,
    }
}

/// Rewrites the single-entry image `path` after `edit` changed its entry.
pub fn edit_single<M: prost::Message + Default>(path: &Path, edit: impl FnOnce(&mut M)) {
    let img = stasis::images::framing::Image::read_file(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut entry: M = img.single().expect("single entry");
    edit(&mut entry);
    stasis::images::framing::Image::from_messages(img.kind, &[entry])
        .write_file(path)
        .expect("write image");
}

/// Root PID and every PID/TID of a fixture, from manifest.tsv.
pub fn manifest(name: &str) -> (i32, Vec<i32>) {
    let text = std::fs::read_to_string(fixtures().join("manifest.tsv")).expect("manifest");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.first() == Some(&name) {
            let root = cols[1].parse().expect("root pid");
            let all = cols[2]
                .split(',')
                .map(|p| p.parse().expect("pid"))
                .collect();
            return (root, all);
        }
    }
    panic!("{name} not in manifest.tsv");
}

/// Whether `pid` runs a fixture program.
fn is_fixture_task(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.starts_with("/tmp/criu-fixtures/bin"))
        .unwrap_or(false)
}

/// Kills every task of fixture `name` still running a fixture program (on drop too).
pub struct Leftovers(pub &'static str);

impl Leftovers {
    /// SIGKILLs what is left and waits (bounded) for the PIDs to be gone.
    pub fn kill(&self) {
        let (_, pids) = manifest(self.0);
        for &p in &pids {
            if is_fixture_task(p) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        wait_pids_free(&pids, Duration::from_secs(10));
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until none of `pids` exists (a reaped task frees its PID).
pub fn wait_pids_free(pids: &[i32], max: Duration) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        if pids
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Copies the image directory of `name` into the scratch dir (without the JSON decodes).
pub fn scratch_copy(s: &Serial, name: &str) -> PathBuf {
    let src = fixtures().join("criu-4.2").join(name);
    let dst = s.scratch.path().join(name);
    std::fs::create_dir_all(&dst).expect("mkdir scratch");
    for e in std::fs::read_dir(&src).expect("read fixture dir").flatten() {
        let n = e.file_name();
        if n.to_string_lossy().ends_with(".json") {
            continue;
        }
        std::fs::copy(e.path(), dst.join(&n)).expect("copy image");
    }
    dst
}

/// Runs `child` to completion or kills it after `max`.
pub fn wait_child(mut child: Child, max: Duration, what: &str) -> Output {
    let end = Instant::now() + max;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{what} timed out after {max:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `stasis restore -D dir extra...` with a timeout.
pub fn stasis_restore(dir: &Path, extra: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .arg("restore")
        .arg("-D")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stasis");
    wait_child(child, Duration::from_secs(60), "stasis restore")
}

/// `stasis restore -D dir -d -v4 -o restore.log --pidfile dir/root.pid`, which must
/// succeed (else the test fails with stderr and the log's tail); returns the pidfile.
pub fn restore_detached_with_pidfile(dir: &Path) -> PathBuf {
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
        "restore of {} failed: {}\nlog tail:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr),
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    pidfile
}

/// `verify.sh name result pidfile` with a timeout; returns (success, stdout+stderr).
pub fn verify(name: &str, pidfile: &Path) -> (bool, String) {
    let result = format!("/tmp/criu-fixtures/results/{name}.result");
    let child = Command::new(fixtures().join("verify.sh"))
        .arg(name)
        .arg(&result)
        .arg(pidfile)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn verify.sh");
    let out = wait_child(child, Duration::from_secs(20), "verify.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Waits for the fixture's PIDs to be free (another test's leftovers being reaped).
pub fn pids_ready(name: &str) {
    let (_, pids) = manifest(name);
    // Keep the PID allocator out of the fixtures' range (30000-30699) while we use it: new
    // processes of the machine would otherwise take the PIDs the images need.
    let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if (29000..30700).contains(&last) {
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", "30700");
    }
    assert!(
        wait_pids_free(&pids, Duration::from_secs(15)),
        "pids of {name} still taken: {:?}",
        pids.iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect::<Vec<_>>()
    );
}

/// Asserts a restore failed with a message containing every one of `needles`, and that no
/// task of fixture `name` is alive afterwards.
pub fn assert_failed(out: &Output, name: &str, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "restore should fail; stderr: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}; got: {err}");
    }
    let (_, pids) = manifest(name);
    let left: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|&p| alive(p) && is_fixture_task(p))
        .collect();
    assert!(
        left.is_empty(),
        "tasks left alive after a failed restore: {left:?}"
    );
    err
}

/// Restores fixture `name` inside a fresh PID namespace and verifies it there: `stasis restore
/// -D DIR -d --pidfile` runs as PID 2 of the namespace (PID 1 reaps), so clone3 set_tid gets
/// the recorded PIDs whoever holds them on the host; then `verify.sh` (SIGUSR2 to the root,
/// verdict file) and a bounded wait until every task of the fixture is gone, all inside the
/// namespace. Everything left there dies with it. Panics unless the workload reports PASS.
pub fn restores_and_passes_in_new_pidns(serial: &Serial, name: &str) {
    const SCRIPT: &str = r#"set -e
name=$1 stasis=$2 dir=$3 verify=$4 result=$5; shift 5
"$stasis" restore -D "$dir" -d -v4 -o restore.log --pidfile "$dir/root.pid"
echo "restored $name as pid $(cat "$dir/root.pid") of a fresh pid namespace (this shell is pid $$ there)"
"$verify" "$name" "$result" "$dir/root.pid"
i=0
while [ $i -lt 500 ]; do
  left=; for p in "$@"; do [ -e /proc/$p ] && left="$left $p"; done
  [ -z "$left" ] && exit 0
  sleep 0.02; i=$((i+1))
done
echo "tasks left after the verdict:$left" >&2
exit 4
"#;
    let dir = scratch_copy(serial, name);
    let (root, pids) = manifest(name);
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg("pidns-restore")
        .arg(name)
        .arg(env!("CARGO_BIN_EXE_stasis"))
        .arg(&dir)
        .arg(fixtures().join("verify.sh"))
        .arg(format!("/tmp/criu-fixtures/results/{name}.result"))
        .args(pids.iter().map(|p| p.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    stasis::sys::pidns::command_in_new_pid_ns(&mut cmd);
    let child = cmd.spawn().expect("spawn the pid namespace helper");
    let out = wait_child(
        child,
        Duration::from_secs(90),
        "restore in a new pid namespace",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{name} in a fresh pid namespace: status {:?}\nstdout: {stdout}\nstderr: {}\nlog tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        stdout.contains(&format!("as pid {root} of a fresh pid namespace")),
        "{name}: pid file inside the namespace should be {root}; stdout: {stdout}"
    );
    assert!(
        stdout.contains(&format!("{name}: PASS")),
        "{name}: no PASS; stdout: {stdout}"
    );
}

/// The live tasks holding a PID of fixture `name` that are not ours (see [`super::pids`]).
pub fn foreign_holders(name: &str) -> Vec<super::pids::Holder> {
    super::pids::foreign_holders(&manifest(name).1)
}
