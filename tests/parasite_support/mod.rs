//! Helpers of the dump parasite tests: a compiled C workload with known in-task state
//! (see workload.c), a watchdog that kills it when a test runs too long (a stuck tracee fails
//! the test instead of hanging), seizing, and /proc readers.
#![allow(dead_code)]

use stasis::sys::task::SeizedTask;
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
        let dir = std::env::temp_dir().join(format!("stasis-parasite-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("workload.c");
        std::fs::write(&src, include_str!("workload.c")).expect("write workload.c");
        let bin = dir.join("workload");
        let status = Command::new("cc")
            .args(["-O1", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .arg("-lrt")
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
    pub pid: i32,
    pub mem_addr: u64,
    pub mem_len: usize,
    pub counter_addr: u64,
    pub alt_base: u64,
    pub file_fd: i32,
    pub pipe_fd: i32,
    pub sock_fd: i32,
    timed_out: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl Workload {
    /// Starts the workload with `threads` threads and `mib` MiB of patterned memory; the
    /// watchdog kills it after `timeout`.
    pub fn start(threads: usize, mib: usize, timeout: Duration) -> Self {
        let mut child = Command::new(workload_bin())
            .arg(threads.to_string())
            .arg(mib.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read ready line");
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
        let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
        Workload {
            child,
            pid,
            mem_addr: hex(f[2]),
            mem_len: f[3].parse().unwrap(),
            counter_addr: hex(f[4]),
            alt_base: hex(f[5]),
            file_fd: f[6].parse().unwrap(),
            pipe_fd: f[7].parse().unwrap(),
            sock_fd: f[8].parse().unwrap(),
            timed_out,
            done,
        }
    }

    /// Panics if the watchdog fired.
    pub fn assert_in_time(&self) {
        assert!(
            !self.timed_out.load(Ordering::SeqCst),
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

    /// Waits (bounded by the watchdog) until the counter moves past `from`.
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

    /// Expected memory pattern.
    pub fn pattern(&self) -> Vec<u8> {
        (0..self.mem_len)
            .map(|i| ((i * 7 + 3) ^ (i >> 12)) as u8)
            .collect()
    }

    /// `/proc/PID/maps`.
    pub fn maps(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap()
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
