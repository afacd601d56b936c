//! Dump time of idle threads and of anonymous memory, written to tmpfs.
//!
//! `cargo bench --bench dump` runs the full matrix (1, 100, 1000, 4000, 8000 idle threads;
//! 1 GiB of touched anonymous memory) and prints a markdown table for BENCHMARKS.md, then
//! `dd if=/dev/zero of=/dev/shm/... bs=1M count=1024` on the same machine in the same run as
//! the yardstick for the memory case; under `cargo test` it runs one small configuration as
//! a smoke test.
//!
//! The workload is this executable itself, re-executed with `--workload THREADS MIB READY`,
//! inside its own cgroup v2. Images go to /dev/shm (tmpfs). Two backends: `ptrace` (the command
//! line's: every thread seized and interrupted, registers, XSAVE, rseq, pending signals and
//! the in-task system calls) and `cgroup + double` (the cgroup freezer and a no-cost double for
//! the ptrace part, which isolates the /proc collection and image writing).
//! `STASIS_BENCH_ONLY=ptrace` skips the second backend.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::dump::{kill_cgroup, TestBackend};

fn workload(threads: usize, mib: usize, ready: &Path) -> ! {
    let mut mem: Vec<u8> = vec![0; mib << 20];
    for i in (0..mem.len()).step_by(4096) {
        mem[i] = (i / 4096) as u8 | 1;
    }
    let mut hs = Vec::new();
    for _ in 1..threads {
        hs.push(
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(|| loop {
                    std::thread::park();
                })
                .expect("spawn idle thread"),
        );
    }
    std::fs::write(ready, "READY").expect("write ready file");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        std::hint::black_box(&mem);
    }
}

struct Run {
    total: Duration,
    frozen_us: u64,
    pages: u64,
    bytes: u64,
}

fn one(threads: usize, mib: usize, tag: &str, ptrace: bool) -> Run {
    let cg = PathBuf::from(format!(
        "/sys/fs/cgroup/unified/stasis-bench-{}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::create_dir(&cg);
    let ready = PathBuf::from(format!(
        "/dev/shm/stasis-bench-{}-{tag}.ready",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&ready);
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {} --workload {threads} {mib} {}",
            cg.display(),
            exe.display(),
            ready.display()
        ))
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "workload not ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = PathBuf::from(format!(
        "/dev/shm/stasis-bench-{}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let opts = stasis::dump::DumpOptions {
        pid: child.id() as i32,
        images_dir: dir.clone(),
        leave_running: true,
        shell_job: true,
        ..Default::default()
    };
    let t = Instant::now();
    let rep = if ptrace {
        stasis::dump::run(&opts, &mut stasis::dump::ptrace_backend::PtraceBackend)
    } else {
        let mut backend = TestBackend { cgroup: cg.clone() };
        stasis::dump::run(&opts, &mut backend)
    }
    .unwrap_or_else(|e| panic!("dump: {e}"));
    let total = t.elapsed();
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    let _ = child.wait();
    kill_cgroup(&cg);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&ready);
    Run {
        total,
        frozen_us: rep.stats.frozen_time,
        pages: rep.stats.pages.pages_written,
        bytes: rep.bytes,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--workload") {
        let t: usize = args[2].parse().unwrap();
        let m: usize = args[3].parse().unwrap();
        workload(t, m, Path::new(&args[4]));
    }
    let full = args.iter().any(|a| a == "--bench");
    let configs: Vec<(usize, usize)> = if full {
        vec![(1, 0), (100, 0), (1000, 0), (4000, 0), (8000, 0), (1, 1024)]
    } else {
        vec![(4, 1)]
    };
    let reps = if full { 3 } else { 1 };
    let only_ptrace = std::env::var("STASIS_BENCH_ONLY").as_deref() == Ok("ptrace");
    let mut ptrace_median: Vec<((usize, usize), Duration)> = Vec::new();
    println!(
        "| backend | threads | anon MiB | dump time (median of {reps}) | frozen | pages written | image bytes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (i, (threads, mib)) in configs.into_iter().enumerate() {
        for ptrace in [true, false] {
            if !ptrace && only_ptrace {
                continue;
            }
            let mut runs: Vec<Run> = (0..reps)
                .map(|r| one(threads, mib, &format!("{i}-{r}-{ptrace}"), ptrace))
                .collect();
            runs.sort_by_key(|r| r.total);
            let m = &runs[runs.len() / 2];
            let name = if ptrace { "ptrace" } else { "cgroup + double" };
            if ptrace {
                ptrace_median.push(((threads, mib), m.total));
            }
            println!(
                "| {name} | {threads} | {mib} | {:.1} ms | {:.1} ms | {} | {} |",
                m.total.as_secs_f64() * 1e3,
                m.frozen_us as f64 / 1e3,
                m.pages,
                m.bytes
            );
        }
    }
    let t = |k: (usize, usize)| ptrace_median.iter().find(|(c, _)| *c == k).map(|(_, d)| *d);
    if let (Some(a), Some(b)) = (t((1000, 0)), t((8000, 0))) {
        println!(
            "\nt(8000 threads) / t(1000 threads) = {:.2}",
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    if let Some(mem) = t((1, 1024)) {
        let dd = dd_median(reps);
        let gib = |d: Duration| 1.0 / d.as_secs_f64();
        println!(
            "1 GiB: stasis dump {:.3} s ({:.2} GiB/s); dd to /dev/shm {:.3} s ({:.2} GiB/s); \
             stasis at {:.0} % of dd",
            mem.as_secs_f64(),
            gib(mem),
            dd.as_secs_f64(),
            gib(dd),
            100.0 * dd.as_secs_f64() / mem.as_secs_f64()
        );
    }
}

/// Median wall time of `dd if=/dev/zero of=/dev/shm/... bs=1M count=1024` (the file is
/// removed after each run).
fn dd_median(reps: usize) -> Duration {
    let out = format!("/dev/shm/stasis-bench-dd-{}", std::process::id());
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let st = Command::new("dd")
                .args(["if=/dev/zero", &format!("of={out}"), "bs=1M", "count=1024"])
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run dd");
            let d = t.elapsed();
            assert!(st.success(), "dd failed");
            let _ = std::fs::remove_file(&out);
            d
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}
