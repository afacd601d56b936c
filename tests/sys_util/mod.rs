//! Shared helpers of the ptrace and parasite tests: a compiled C workload, a watchdog that
//! kills it when a test runs too long (so a stuck tracee fails the test instead of hanging),
//! and memory reads through /proc.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Path of the workload binary, compiled once per test binary.
pub fn workload_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("stasis-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("workload.c");
        std::fs::write(&src, include_str!("workload.c")).expect("write workload.c");
        let bin = dir.join("workload");
        let status = Command::new("cc")
            .args(["-O1", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(status.success(), "compiling the workload failed");
        bin
    })
    .clone()
}

/// A running workload; killed and reaped on drop.
pub struct Workload {
    pub child: Child,
    pub stdout: BufReader<std::process::ChildStdout>,
    pub pid: i32,
    pub pattern_addr: u64,
    pub pattern_len: usize,
    pub counter_addr: u64,
    pub pipe_fd: i32,
    timed_out: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl Workload {
    /// Starts the workload with `threads` threads; the watchdog kills it after `timeout`.
    pub fn start(threads: usize, stop: bool, timeout: Duration) -> Self {
        Self::start_mode(threads, if stop { "stop" } else { "run" }, timeout)
    }

    /// Starts the workload in `mode` ("run", "stop", "read"); stdin and stdout are pipes.
    pub fn start_mode(threads: usize, mode: &str, timeout: Duration) -> Self {
        let mut cmd = Command::new(workload_bin());
        cmd.arg(threads.to_string()).arg(mode);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read ready line");
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.first(), Some(&"ready"), "workload said {line:?}");
        let pid: i32 = f[1].parse().unwrap();
        let timed_out = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        {
            let (timed_out, done) = (timed_out.clone(), done.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + timeout;
                while Instant::now() < deadline {
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                timed_out.store(true, Ordering::SeqCst);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            });
        }
        Workload {
            child,
            stdout,
            pid,
            pattern_addr: u64::from_str_radix(f[2], 16).unwrap(),
            pattern_len: f[3].parse().unwrap(),
            counter_addr: u64::from_str_radix(f[4], 16).unwrap(),
            pipe_fd: f[5].parse().unwrap(),
            timed_out,
            done,
        }
    }

    /// True when the watchdog fired.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::SeqCst)
    }

    /// Panics if the watchdog fired (call after the ptrace part of a test).
    pub fn assert_in_time(&self) {
        assert!(
            !self.timed_out(),
            "test timed out: the watchdog killed workload {}",
            self.pid
        );
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

    /// Thread ids.
    pub fn threads(&self) -> Vec<i32> {
        let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        v.sort();
        v
    }

    /// State letter of thread `tid` from /proc.
    pub fn state(&self, tid: i32) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", self.pid)).unwrap();
        stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
    }

    /// Expected pattern bytes.
    pub fn pattern(&self) -> Vec<u8> {
        (0..self.pattern_len).map(|i| (i * 7 + 3) as u8).collect()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
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

/// Runs `body` on its own thread (it becomes the tracer) and returns its result.
pub fn on_tracer_thread<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(body)
        .join()
        .expect("tracer thread panicked")
}
