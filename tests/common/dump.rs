//! Helpers of the dump tests: launching fixture workloads in their own cgroup v2 (so they can
//! be frozen, and killed as a group), running the `stasis` binary, a probe double for the
//! ptrace/parasite part, and comparison of image structure with CRIU's fixtures. Launching at
//! fixed PIDs needs the test to hold [`super::lock::restore_lock`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use stasis::dump::error::DumpError;
use stasis::dump::error::Result as DResult;
use stasis::dump::freeze::FrozenTree;
use stasis::dump::probe::{ProcessAccess, ProcessProbe, TaskProbe, ThreadProbe, Xsave};
use stasis::sys::freezer::Freezer;

pub use super::fixtures::{fixtures, install_if_missing as install_fixtures};

/// A workload running in its own cgroup; killed (cgroup.kill) and removed on drop.
pub struct Workload {
    pub name: String,
    pub pid: i32,
    pub cgroup: PathBuf,
    pub result: PathBuf,
    /// The launched child when it is ours to reap.
    pub child: Option<std::process::Child>,
}

pub fn kill_cgroup(cg: &Path) {
    let _ = std::fs::write(cg.join("cgroup.freeze"), "0");
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    for _ in 0..500 {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(cg);
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Kill, reap our own child (a zombie still counts in cgroup.procs), then remove.
        let _ = std::fs::write(self.cgroup.join("cgroup.freeze"), "0");
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
        kill_cgroup(&self.cgroup);
    }
}

/// The cgroup of a test workload (unique per test process, workload and pid base).
pub fn cgroup_path(name: &str, base: i32) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/cgroup/unified/stasis-dump-test-{name}-{}-{base}",
        std::process::id()
    ))
}

/// Sends SIGUSR2 to the workload and waits (10 s at most) for its verdict file.
pub fn verify(w: &Workload) -> String {
    let _ = std::fs::remove_file(&w.result);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&w.result) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} gave no verdict",
            w.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Has the restored workload verify itself, then kills `pids` (before judging, so a failure
/// leaves nothing behind) and fails unless the verdict is PASS.
pub fn verify_then_kill(w: &Workload, pids: &[i32], what: &str) {
    let verdict = verify(w);
    kill_pids(pids);
    assert_eq!(verdict, "PASS", "{what}");
}

/// Whether every task of the cgroup is alive and not stopped or traced.
pub fn all_running(w: &Workload) -> bool {
    let procs = std::fs::read_to_string(w.cgroup.join("cgroup.procs")).unwrap_or_default();
    let ev = std::fs::read_to_string(w.cgroup.join("cgroup.events")).unwrap_or_default();
    ev.contains("frozen 0")
        && !procs.trim().is_empty()
        && procs.lines().all(|p| {
            let st =
                std::fs::read_to_string(format!("/proc/{}/status", p.trim())).unwrap_or_default();
            st.lines().any(|l| l.starts_with("TracerPid:\t0"))
                && !st
                    .lines()
                    .any(|l| l.starts_with("State:\tT") || l.starts_with("State:\tt"))
        })
}

/// `GLIBC_TUNABLES` of the C workloads built by the tests: like the fixtures, glibc stays off
/// AVX and other recent extensions (the restorer refuses those xstate components here).
pub const TUNABLES: &str = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX2,-AVX,-FMA,-FMA4,-BMI1,-BMI2,-LZCNT,-MOVBE,-POPCNT,-SSE4_1,-SSE4_2,-SSSE3,-ERMS,-FSRM,-RTM";

/// `env GLIBC_TUNABLES=TUNABLES BIN ARGS...`, a command line for [`launch_cmd`].
pub fn tuned_cmd(bin: &Path, args: &[&Path]) -> String {
    let mut cmd = format!("env GLIBC_TUNABLES={TUNABLES} {}", bin.display());
    for a in args {
        cmd.push_str(&format!(" {}", a.display()));
    }
    cmd
}

/// Starts `sh -c CMD` inside a fresh cgroup and waits until `ready` exists.
pub fn launch_cmd(name: &str, base: i32, cmd: &str, ready: &Path) -> Workload {
    let cg = cgroup_path(name, base);
    let _ = std::fs::create_dir(&cg);
    let _ = std::fs::remove_file(ready);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {cmd}",
            cg.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Not the test's stderr: under CI that is a log file that keeps growing, and a
        // restore rightly refuses a regular file whose size changed since the dump.
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let t0 = Instant::now();
    while !ready.exists() {
        if t0.elapsed() > Duration::from_secs(30) {
            kill_cgroup(&cg);
            let _ = child.wait();
            panic!("{name} not ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    Workload {
        name: name.into(),
        pid,
        cgroup: cg,
        result: ready.to_path_buf(),
        child: Some(child),
    }
}

fn pid_free(pid: i32, span: i32) -> bool {
    (pid..pid + span).all(|p| !Path::new(&format!("/proc/{p}")).exists())
}

/// Starts fixture workload `name` (a file in bin/) with `args` after its result path, at a
/// free pid from `base`, inside a fresh cgroup (see [`launch_program`]); waits until it is
/// ready.
pub fn launch(name: &str, base: i32, args: &[&str]) -> Workload {
    let results = PathBuf::from("/tmp/stasis-dump-tests");
    std::fs::create_dir_all(&results).unwrap();
    let result = results.join(format!("{name}-{}-{base}.result", std::process::id()));
    let ready = PathBuf::from(format!("{}.ready", result.display()));
    let _ = std::fs::remove_file(&ready);
    let result_arg = result.to_string_lossy().into_owned();
    let mut full_args = vec![result_arg.as_str()];
    full_args.extend_from_slice(args);
    let program = format!("/tmp/criu-fixtures/bin/{name}");
    let mut w = launch_program(name, base, &program, &full_args);
    w.result = result;
    assert!(
        w.cgroup.join("cgroup.freeze").exists(),
        "no cgroup v2 freezer at {}",
        w.cgroup.display()
    );
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{name} not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    w
}

/// The environment fx-launch gives a workload: its `env[]`, read from the fixtures'
/// src/fx-launch.c (string literals, adjacent ones joined, up to `NULL`).
fn fx_launch_env() -> Vec<(String, String)> {
    let path = fixtures().join("src/fx-launch.c");
    let src = std::fs::read_to_string(&path).expect("read fx-launch.c");
    let block = src
        .split_once("char *env[] = {")
        .and_then(|(_, rest)| rest.split_once("NULL"))
        .map(|(b, _)| b)
        .unwrap_or_else(|| panic!("no env[] in {}", path.display()));
    let (mut vars, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in block.chars() {
        match (quoted, c) {
            (_, '"') => quoted = !quoted,
            (true, c) => cur.push(c),
            (false, ',') => vars.push(std::mem::take(&mut cur)),
            _ => {}
        }
    }
    let env: Vec<(String, String)> = vars
        .iter()
        .filter_map(|v| v.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        env.len() == vars.len() && env.iter().any(|(k, _)| k == "GLIBC_TUNABLES"),
        "unexpected env[] in {}: {vars:?}",
        path.display()
    );
    env
}

/// The command that starts `program args...` at `pid` the way fx-launch does, inside
/// `cgroup` if given (see tests/common/launch_at.c): exit status 0 and the pid on stdout, 3
/// when the pid is taken. It returns at once (the workload is re-parented).
pub fn launch_at(cgroup: Option<&Path>, pid: i32, program: &str, args: &[&str]) -> Command {
    let launcher = super::workload::c_program("launch_at", include_str!("launch_at.c"), &[]);
    let mut cmd = Command::new(launcher);
    cmd.arg(cgroup.map_or_else(|| "-".into(), |c| c.as_os_str().to_owned()))
        .arg(pid.to_string())
        .arg(program)
        .args(args)
        .env_clear()
        .envs(fx_launch_env());
    cmd
}

/// Above every fixed pid range of the tests: the fixtures' 30000-30699 and the launch bases
/// from 31000 on.
const ABOVE_FIXED_PIDS: i32 = 40_000;

/// Moves the kernel's pid allocator (`ns_last_pid`, under its flock as CRIU and fx-launch
/// take it) past `pid + span`, and past [`ABOVE_FIXED_PIDS`], unless it is there already.
/// New pids then come from above; the free pids below are not handed out again before the
/// allocator wraps at pid_max (4194304, see lock.rs), so no fork anywhere can take them.
/// Some tests move the allocator back into the fixture range (restore::pids_ready, the
/// restorer unit tests), so every launch checks.
pub fn allocator_past(pid: i32, span: i32) {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::FileExt;
    const PATH: &str = "/proc/sys/kernel/ns_last_pid";
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(PATH)
        .expect("open ns_last_pid");
    let f = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock ns_last_pid");
    let mut buf = [0u8; 32];
    let n = f.read_at(&mut buf, 0).expect("read ns_last_pid");
    let last: i32 = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .expect("ns_last_pid is a number");
    let past = ABOVE_FIXED_PIDS.max(pid + span);
    if last < past {
        // At offset 0: a sysctl ignores writes further in.
        let text = past.to_string();
        f.write_all_at(text.as_bytes(), 0)
            .expect("write ns_last_pid");
    }
}

/// Starts `program args...` the way fx-launch does (its own session, fds 0-2 on /dev/null,
/// cwd /, fx-launch's environment, parent gone so init reaps it) at a free pid from `base`,
/// inside a fresh cgroup. fx-launch's ns_last_pid write loses to any fork elsewhere on a busy
/// machine; here the pid allocator is moved past the chosen range first ([`allocator_past`])
/// and the pid comes from clone3's set_tid (tests/common/launch_at.c). The workload's own
/// children and threads get pids from the allocator, above its pid. Returns at once:
/// readiness is the caller's business.
pub fn launch_program(name: &str, base: i32, program: &str, args: &[&str]) -> Workload {
    assert!(
        super::lock::held(),
        "launching {name} at fixed pids needs the restore lock"
    );
    install_fixtures();
    let cg = cgroup_path(name, base);
    let _ = std::fs::create_dir(&cg);
    assert!(
        cg.join("cgroup.procs").exists(),
        "no cgroup v2 at {}",
        cg.display()
    );
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        base + 40 < pid_max,
        "pid base {base} beyond pid_max {pid_max}"
    );
    // From `base` up, wrapping round to 1000 below pid_max: other tests and builds may hold
    // pids anywhere for a while.
    let next = |pid: i32| {
        if pid + 40 >= pid_max {
            1000
        } else {
            pid + 20
        }
    };
    let start = || -> Result<i32, String> {
        let mut pid = base;
        let mut tried = 0;
        while !pid_free(pid, 20) {
            pid = next(pid);
            tried += 1;
            if tried >= pid_max / 20 {
                return Err("no free range of 20 pids at all".into());
            }
        }
        allocator_past(pid, 20);
        let out = launch_at(Some(&cg), pid, program, args)
            .output()
            .map_err(|e| format!("launch_at: {e}"))?;
        if out.status.success() {
            return Ok(pid);
        }
        // With the allocator past it, only a task created with that very pid can hold it.
        let holders: Vec<String> = super::pids::foreign_holders(&[pid])
            .iter()
            .map(|h| h.to_string())
            .collect();
        Err(format!(
            "launch_at {program} at {pid} (from {base}) failed ({}): {}; holders: {holders:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    };
    match start() {
        Ok(pid) => Workload {
            name: name.into(),
            pid,
            cgroup: cg,
            result: PathBuf::new(),
            child: None,
        },
        Err(e) => {
            // No Workload owns the cgroup yet: remove it here.
            kill_cgroup(&cg);
            panic!("{e}");
        }
    }
}

/// Whether none of `pids` exists any more (a zombie still holds its pid).
pub fn gone(pids: &[i32]) -> bool {
    pids.iter().all(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| s.contains(") X"))
            .unwrap_or(true)
    })
}

/// Waits (`secs` at most) until none of `pids` is alive.
pub fn wait_gone(pids: &[i32], secs: u64, what: &str) {
    let t0 = Instant::now();
    while !gone(pids) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: tasks {pids:?} still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of an image directory's process tree.
pub fn pids_of(dir: &Path) -> Vec<i32> {
    let doc = decode(&dir.join("pstree.img"));
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pid"].as_i64().unwrap() as i32)
        .collect()
}

/// SIGKILLs every one of `pids` (errors ignored: some may be gone).
pub fn kill_pids(pids: &[i32]) {
    for &p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A server's accepted TCP connections (local port `port`) that still have a file: established or
/// half-closed by the client (CLOSE_WAIT).
pub fn server_connections(port: u16) -> usize {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f[1].rsplit(':').next().unwrap();
            if u16::from_str_radix(local_port, 16) == Ok(port) && (f[3] == "01" || f[3] == "08") {
                n += 1;
            }
        }
    }
    n
}

/// Waits until a server has closed the connections of the clients the test closed (a dump in
/// between would meet half-closed CLOSE_WAIT sockets, which stasis does not dump).
pub fn wait_connections(port: u16, want: usize) {
    let t0 = Instant::now();
    loop {
        let n = server_connections(port);
        if n == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the server on port {port} keeps {n} connections, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of restored tasks, killed when a round-trip test fails.
pub type Restored = std::sync::Arc<std::sync::Mutex<Vec<i32>>>;

/// [`super::deadline::with_deadline`] for a dump/restore round trip of a workload in cgroup
/// `cg`: when `body` fails or runs out of time, the cgroup and the tasks it recorded in
/// [`Restored`] are killed.
pub fn with_round_trip_deadline<T: Send + 'static>(
    secs: u64,
    cg: PathBuf,
    body: impl FnOnce(Restored) -> T + Send + 'static,
) -> T {
    let restored = Restored::default();
    let on_fail = restored.clone();
    super::deadline::with_deadline(
        secs,
        move || {
            kill_cgroup(&cg);
            kill_pids(&on_fail.lock().unwrap_or_else(|e| e.into_inner()));
        },
        move || body(restored),
    )
}

/// Runs `stasis ARGS... -D dir -o LOG -v4 EXTRA...`; fails the test, with stderr and the log,
/// unless it succeeds; returns its stdout.
pub fn stasis_ok(args: &[&str], dir: &Path, log: &str, extra: &[&str]) -> String {
    let out = stasis_bin()
        .args(args)
        .arg("-D")
        .arg(dir)
        .args(["-o", log, "-v4"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stasis {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join(log)).unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh data directory for fx-files (`/tmp/stasis-dump-tests/<tag>-<pid>`), set up by
/// `fx-files --setup`; the caller removes it.
pub fn fx_files_data(tag: &str) -> String {
    let data = format!("/tmp/stasis-dump-tests/{tag}-{}", std::process::id());
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all("/tmp/stasis-dump-tests").unwrap();
    install_fixtures();
    assert!(Command::new(fixtures().join("bin/fx-files"))
        .arg("--setup")
        .arg(&data)
        .status()
        .unwrap()
        .success());
    data
}

/// `stasis dump -t PID -D dir -o dump.log -v4 EXTRA...`, which must succeed.
pub fn stasis_dump(pid: i32, dir: &Path, extra: &[&str]) {
    stasis_ok(&["dump", "-t", &pid.to_string()], dir, "dump.log", extra);
}

/// `stasis restore -d -D dir -o restore.log -v4 EXTRA...`, which must succeed.
pub fn stasis_restore_detached(dir: &Path, extra: &[&str]) {
    stasis_ok(&["restore", "-d"], dir, "restore.log", extra);
}

/// Reaps a dumped (killed) workload that is our child and waits (10 s at most) until its pid
/// is free.
pub fn reap_dumped(w: &mut Workload) {
    if let Some(mut child) = w.child.take() {
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "dumped task {} still alive",
                w.pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_gone(&[w.pid], 10, "the dumped task");
}

/// The files of `dir` whose name starts with `prefix`, in directory order.
pub fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

/// How many files of `dir` have a name starting with `prefix`.
pub fn count_files(dir: &Path, prefix: &str) -> usize {
    files_with_prefix(dir, prefix).len()
}

/// The stasis binary of this build.
pub fn stasis_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stasis"))
}

/// A frozen tree for tests: the cgroup freezer holds it still, memory is read through
/// /proc/PID/mem, and the ptrace/parasite part is a double with fixed, plausible values
/// (so every field the images carry is present; the values themselves are not checked).
pub struct TestFrozen {
    pub freeze: Option<Freezer>,
}

impl TaskProbe for TestFrozen {
    fn with_process(
        &mut self,
        pid: i32,
        tids: &[i32],
        f: &mut dyn FnMut(&mut dyn ProcessAccess) -> DResult<()>,
    ) -> DResult<()> {
        f(&mut TestProcess {
            pid,
            threads: tids.len(),
        })
    }
}

/// One process of [`TestFrozen`].
pub struct TestProcess {
    pid: i32,
    threads: usize,
}

impl ProcessAccess for TestProcess {
    fn threads(&mut self) -> DResult<Vec<ThreadProbe>> {
        let mut t = ThreadProbe::default();
        t.fpregs.xsave = Some(Xsave {
            xstate_bv: 3,
            ..Default::default()
        });
        t.fpregs.mxcsr = 0x1f80;
        t.fpregs.cwd = 0x37f;
        t.rseq = Some((0x1000, 32, 0x5305_3053));
        t.sas = (0, 0, 2);
        t.futex_rla_len = 24;
        Ok(vec![t; self.threads])
    }

    fn process(&mut self) -> DResult<ProcessProbe> {
        Ok(ProcessProbe {
            dumpable: 1,
            ..Default::default()
        })
    }

    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> DResult<()> {
        stasis::dump::freeze::read_proc_mem(self.pid, addr, buf)
    }
}

impl FrozenTree for TestFrozen {
    fn kill(&mut self, pids: &[i32]) -> DResult<()> {
        stasis::dump::freeze::kill_all(pids)
    }

    fn release(mut self: Box<Self>) -> DResult<()> {
        match self.freeze.take() {
            Some(f) => f.thaw().map_err(|e| DumpError::sys("thaw", 0, e)),
            None => Ok(()),
        }
    }
}

/// Backend freezing the workload's cgroup, with [`TestFrozen`].
pub struct TestBackend {
    pub cgroup: PathBuf,
}

impl stasis::dump::freeze::Backend for TestBackend {
    fn freeze(&mut self, _opts: &stasis::dump::DumpOptions) -> DResult<Box<dyn FrozenTree>> {
        Ok(Box::new(TestFrozen {
            freeze: Some(
                Freezer::freeze(&self.cgroup, Duration::from_secs(10))
                    .map_err(|e| DumpError::sys("seize", 0, e))?,
            ),
        }))
    }
}

/// Dumps `pid` through `backend` into a new temporary directory, leaving it running, as a
/// shell job (started from the test harness: its session and group are the harness's).
pub fn dump_leave_running(
    pid: i32,
    backend: &mut dyn stasis::dump::freeze::Backend,
) -> (tempfile::TempDir, DResult<stasis::dump::DumpReport>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = stasis::dump::DumpOptions {
        pid,
        images_dir: dir.path().to_path_buf(),
        leave_running: true,
        shell_job: true,
        ..Default::default()
    };
    let rep = stasis::dump::run(&opts, backend);
    (dir, rep)
}

/// `core-30300.img` -> `core-N.img`.
pub fn kind_of(file: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in file.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

/// Image files of a directory (no logs, no JSON), counted by kind.
pub fn image_kinds(dir: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        if n.ends_with(".json") || n.ends_with(".log") {
            continue;
        }
        *m.entry(kind_of(&n)).or_insert(0) += 1;
    }
    m
}

fn paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{prefix}.{k}");
                out.insert(p.clone());
                paths(x, &p, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// Every field path present in any entry of a decoded image (`.entries[].tc.comm`...).
pub fn field_paths(doc: &Value) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    if let Some(es) = doc.get("entries") {
        paths(es, "", &mut s);
    }
    s
}

/// Decodes an image file with our crit codec (pretty JSON, like the fixtures' FILE.json).
pub fn decode(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let codec = stasis::images::json::Codec::criu().unwrap();
    stasis::images::json::decode_image(codec, &bytes, true)
        .unwrap_or_else(|e| panic!("decode {}: {e}", path.display()))
}

/// Field paths per image kind (merged over files of the same kind).
pub fn paths_by_kind(dir: &Path, from_json: bool) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if n.starts_with("pages-") || n.ends_with(".log") || n.ends_with(".json") {
            continue;
        }
        let doc = if from_json {
            let j = dir.join(format!("{n}.json"));
            match std::fs::read_to_string(&j) {
                Ok(t) => serde_json::from_str(&t).unwrap(),
                Err(_) => continue,
            }
        } else {
            decode(&p)
        };
        m.entry(kind_of(&n)).or_default().extend(field_paths(&doc));
    }
    m
}

/// Runs Debian's crit (3.17) on every image: it must decode each one.
pub fn debian_crit_decodes_all(dir: &Path) {
    let crit = super::crit::debian_crit();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        // Raw files: pages, the tmpfs tars (gzip, as CRIU writes them).
        if n.starts_with("pages-")
            || n.starts_with("tmpfs-")
            || n.ends_with(".log")
            || n.ends_with(".json")
        {
            continue;
        }
        let out = Command::new(&crit)
            .args(["decode", "-i"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crit decode {n}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Field paths only the ptrace/parasite layer fills (signal queues), absent with the double
/// and with the interim ptrace backend (no PTRACE_PEEKSIGINFO yet).
pub const PROBE_ONLY: &[&str] = &[
    "[].tc.signals_s.signals",
    "[].tc.signals_s.signals[].siginfo",
    "[].thread_core.signals_p.signals",
    "[].thread_core.signals_p.signals[].siginfo",
];

/// Compares an image directory with the fixture of workload `name`: same image kinds and
/// counts, same field paths per kind (but [`PROBE_ONLY`]), same VMA classes.
pub fn compare(name: &str, ours: &Path) {
    let theirs = fixtures().join("criu-4.2").join(name);
    let mut want = image_kinds(&theirs);
    want.remove("dump.log");
    let got = image_kinds(ours);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "image kinds of {name}"
    );
    assert_eq!(got, want, "image counts of {name}");
    let pw = paths_by_kind(&theirs, true);
    let pg = paths_by_kind(ours, false);
    let probe_only: std::collections::BTreeSet<String> =
        PROBE_ONLY.iter().map(|s| s.to_string()).collect();
    for (kind, want_paths) in &pw {
        let got_paths = pg.get(kind).cloned().unwrap_or_default();
        let missing: Vec<_> = want_paths
            .difference(&got_paths)
            .filter(|p| !probe_only.contains(*p))
            .collect();
        let extra: Vec<_> = got_paths.difference(want_paths).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name} {kind}: missing {missing:?}, extra {extra:?}"
        );
    }
    // VMA classes (as a sorted multiset: mmap placement differs from run to run).
    let classes = |dir: &Path, from_json: bool| -> Vec<String> {
        let mm = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with("mm-") && n.ends_with(".img")
            })
            .unwrap();
        let doc: serde_json::Value = if from_json {
            serde_json::from_str(
                &std::fs::read_to_string(format!("{}.json", mm.display())).unwrap(),
            )
            .unwrap()
        } else {
            decode(&mm)
        };
        doc["entries"][0]["vmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| format!("{} {} {}", v["status"], v["flags"], v["prot"]))
            .collect::<Vec<_>>()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(classes(ours, false)),
        sorted(classes(&theirs, true)),
        "{name}: VMA classes"
    );
}
