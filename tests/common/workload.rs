//! The C workloads of the ptrace and parasite tests, compiled once per test binary, and the
//! running [`Workload`] with a watchdog that SIGKILLs it when a test runs too long (so a stuck
//! tracee fails the test instead of hanging).
//!
//! ```text
//! workload_ptrace.c  NTHREADS [stop|read|churn]  4 pages of pattern, a pipe; modes for ptrace
//! workload_state.c   NTHREADS MEM_MIB            known in-task state for the dump parasite
//! both print:  ready PID MEM_ADDR MEM_LEN COUNTER_ADDR ALT_BASE FILE_FD PIPE_FD SOCK_FD
//! MEM byte i = (i * 7 + 3) ^ (i >> 12); the main thread bumps COUNTER every millisecond
//! fx_verdict.h       verdict/CHECK/readn/... of the self-verifying end-to-end workloads
//! ```

use stasis::sys::task::SeizedTask;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Libraries of the workloads.
const WORKLOAD_LIBS: &[&str] = &["-pthread", "-lrt"];

/// Headers the C sources may include (`#include "NAME"`), written next to them.
const C_HEADERS: &[(&str, &str)] = &[("fx_verdict.h", include_str!("fx_verdict.h"))];

/// Path of the binary `name` built from C source `src` (`cc -O1 -o BIN SRC args...`, with
/// [`C_HEADERS`] beside it), compiled once per test binary.
pub fn c_program(name: &'static str, src: &'static str, args: &[&str]) -> PathBuf {
    static BINS: Mutex<Option<HashMap<&'static str, PathBuf>>> = Mutex::new(None);
    let mut bins = BINS.lock().unwrap_or_else(|e| e.into_inner());
    let bins = bins.get_or_insert_with(HashMap::new);
    if let Some(bin) = bins.get(name) {
        return bin.clone();
    }
    let dir = std::env::temp_dir().join(format!("stasis-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (header, text) in C_HEADERS {
        std::fs::write(dir.join(header), text).expect("write workload header");
    }
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).expect("write workload source");
    let bin = dir.join(name);
    let status = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(&c)
        .args(args)
        .status()
        .expect("run cc");
    assert!(status.success(), "compiling {name}.c failed");
    bins.insert(name, bin.clone());
    bin
}

/// Kills `pid` when it outlives its time; stopped (and never firing) on drop.
pub struct Watchdog {
    pid: i32,
    timed_out: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts watching `pid` (a negative value: its process group): SIGKILL after `timeout`.
    pub fn start(pid: i32, timeout: Duration) -> Self {
        let timed_out = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (fired, stop) = (timed_out.clone(), done.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            fired.store(true, Ordering::SeqCst);
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        });
        Watchdog {
            pid,
            timed_out,
            done,
        }
    }

    /// True when the watchdog fired.
    pub fn fired(&self) -> bool {
        self.timed_out.load(Ordering::SeqCst)
    }

    /// Panics if the watchdog fired.
    pub fn assert_in_time(&self) {
        assert!(
            !self.fired(),
            "test timed out: the watchdog killed workload {}",
            self.pid
        );
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// A running workload (its ready line parsed); killed and reaped on drop.
pub struct Workload {
    pub child: Child,
    /// Its stdout after the ready line.
    pub stdout: BufReader<ChildStdout>,
    pub pid: i32,
    pub mem_addr: u64,
    pub mem_len: usize,
    pub counter_addr: u64,
    /// Base of the sigaltstacks (state workload; 0 otherwise).
    pub alt_base: u64,
    /// /proc/self/exe, O_RDONLY|O_CLOEXEC (state workload; -1 otherwise).
    pub file_fd: i32,
    /// A pipe end: the write end (ptrace workload) or the O_NONBLOCK read end (state).
    pub pipe_fd: i32,
    /// One end of a unix socketpair (state workload; -1 otherwise).
    pub sock_fd: i32,
    watchdog: Watchdog,
}

impl Workload {
    /// The ptrace workload with `threads` threads, stopped (SIGSTOP) when `stop`; the
    /// watchdog kills it after `timeout`.
    pub fn ptrace(threads: usize, stop: bool, timeout: Duration) -> Self {
        Self::ptrace_mode(threads, if stop { "stop" } else { "run" }, timeout)
    }

    /// The ptrace workload in `mode` ("run", "stop", "read", "churn").
    pub fn ptrace_mode(threads: usize, mode: &str, timeout: Duration) -> Self {
        let bin = c_program(
            "workload_ptrace",
            include_str!("workload_ptrace.c"),
            WORKLOAD_LIBS,
        );
        Self::launch(bin, &[&threads.to_string(), mode], timeout)
    }

    /// The state workload with `threads` threads and `mib` MiB of patterned memory.
    pub fn stateful(threads: usize, mib: usize, timeout: Duration) -> Self {
        Self::stateful_with(threads, mib, &[], timeout)
    }

    /// [`Workload::stateful`] with extra options of the C program (e.g. `fpu`).
    pub fn stateful_with(threads: usize, mib: usize, extra: &[&str], timeout: Duration) -> Self {
        let bin = c_program(
            "workload_state",
            include_str!("workload_state.c"),
            WORKLOAD_LIBS,
        );
        let (t, m) = (threads.to_string(), mib.to_string());
        let mut args = vec![t.as_str(), m.as_str()];
        args.extend_from_slice(extra);
        Self::launch(bin, &args, timeout)
    }

    /// Spawns `bin args` (stdin and stdout are pipes) and parses its ready line.
    fn launch(bin: PathBuf, args: &[&str], timeout: Duration) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Not the test's stderr, which may be a growing log file (see launch_cmd).
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn workload");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() == 9 && f[0] == "ready", "workload said {line:?}");
        let pid: i32 = f[1].parse().unwrap();
        let watchdog = Watchdog::start(pid, timeout);
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
        Workload {
            child,
            stdout,
            pid,
            mem_addr: hex(f[2]),
            mem_len: f[3].parse().unwrap(),
            counter_addr: hex(f[4]),
            alt_base: hex(f[5]),
            file_fd: f[6].parse().unwrap(),
            pipe_fd: f[7].parse().unwrap(),
            sock_fd: f[8].parse().unwrap(),
            watchdog,
        }
    }

    /// True when the watchdog fired.
    pub fn timed_out(&self) -> bool {
        self.watchdog.fired()
    }

    /// Panics if the watchdog fired (call after the ptrace part of a test).
    pub fn assert_in_time(&self) {
        self.watchdog.assert_in_time()
    }

    /// The main thread's counter.
    pub fn counter(&self) -> u64 {
        let mut buf = [0u8; 8];
        read_mem(self.pid, self.counter_addr, &mut buf);
        u64::from_le_bytes(buf)
    }

    /// Waits (bounded by the watchdog) until the counter moves past `from`: the main thread runs.
    pub fn wait_counting(&self, from: u64) -> u64 {
        loop {
            self.assert_in_time();
            let now = self.counter();
            if now > from {
                return now;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Thread ids, ascending (the main thread first).
    pub fn threads(&self) -> Vec<i32> {
        let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        v.sort();
        v
    }

    /// Seizes every thread, the main thread first.
    pub fn seize_all(&self) -> Vec<SeizedTask> {
        self.threads()
            .into_iter()
            .map(|tid| SeizedTask::seize(self.pid, tid).expect("seize"))
            .collect()
    }

    /// State letter of thread `tid` from /proc.
    pub fn state(&self, tid: i32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", self.pid)).unwrap();
        stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
    }

    /// A field of `/proc/PID/task/TID/status`.
    pub fn status_field(&self, tid: i32, field: &str) -> String {
        let s = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", self.pid)).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in status"))
            .trim()
            .to_string()
    }

    /// `/proc/PID/maps`.
    pub fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap()
    }

    /// Expected memory pattern (MEM_LEN bytes).
    pub fn pattern(&self) -> Vec<u8> {
        (0..self.mem_len)
            .map(|i| ((i * 7 + 3) ^ (i >> 12)) as u8)
            .collect()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads memory of `pid` through /proc/PID/mem.
pub fn read_mem(pid: i32, addr: u64, buf: &mut [u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    f.read_exact_at(buf, addr).unwrap();
}
