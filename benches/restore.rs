//! Restore time of many threads and of 1 GiB of anonymous memory, images on tmpfs.
//!
//! `cargo bench --bench restore` runs the full set (1000, 4000, 8000 threads; 1 GiB of
//! present private anonymous memory; median of 3) and prints a markdown table for
//! BENCHMARKS.md; without `--bench` (`cargo test --bench restore`, and plain `cargo test`,
//! see `test = true` in Cargo.toml) it runs one small configuration (100 threads + 16 MiB) so
//! the harness cannot rot. `STASIS_BENCH_ONLY=THREADS:MIB` runs one configuration once (for
//! profiling). Needs root, free PIDs (30000 and below 32768) and /dev/shm.
//!
//! Images: the fx-loop fixture extended by `tests/common/synth.rs`. Time: wall time of
//! `stasis restore -D DIR -d -v3` as a process; its log gives the split (images read and
//! checked / every task ready in its blob / released). After each run the harness checks the
//! thread count and, for memory, samples pages against the pattern.

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::restore::{pids_ready, serial, stasis_restore, wait_pids_free, Leftovers};
use common::synth::{fill_pattern, synthesize, ExtraVma, ROOT};

const BIG: u64 = 0x2_0000_0000;

struct Run {
    total: Duration,
    /// images read and checked, every task ready, restored (from the log)
    split: [Duration; 3],
    /// CPU time of the root task (main thread) when the restore returned
    cpu: Duration,
    /// CPU time (user + system) of the `stasis restore` process itself
    stasis_cpu: Duration,
}

/// Parses a `Debug` duration such as `1.5ms`, `20µs`, `1.2s`.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.split_whitespace().next()?;
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic() || c == 'µ')?);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" | "us" => v / 1e6,
        "ns" => v / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn split_from_log(log: &str) -> [Duration; 3] {
    let find = |key: &str| {
        log.lines()
            .find_map(|l| l.split_once(key).and_then(|(_, r)| parse_duration(r)))
            .unwrap_or_default()
    };
    [
        find("images read and checked in "),
        find("ready, after "),
        find("restored in "),
    ]
}

fn one(threads: usize, mib: u64) -> Run {
    let _s = serial();
    pids_ready("fx-loop");
    let _l = Leftovers("fx-loop");
    let vmas: Vec<ExtraVma> = if mib > 0 {
        vec![ExtraVma::full(BIG, mib << 20)]
    } else {
        Vec::new()
    };
    let (dir, tids) = synthesize(&format!("bench-{threads}-{mib}"), threads - 1, &vmas);
    let children_cpu = || {
        let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .expect("getrusage");
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
        };
        tv(u.user_time()) + tv(u.system_time())
    };
    let c0 = children_cpu();
    let t0 = Instant::now();
    let out = stasis_restore(&dir, &["-d", "-v3"]);
    let total = t0.elapsed();
    let stasis_cpu = children_cpu() - c0;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restore failed: {log}");
    let n = std::fs::read_dir(format!("/proc/{ROOT}/task"))
        .expect("list threads")
        .count();
    assert_eq!(n, threads, "threads after restore");
    // CPU time of the root task so far (its restore work: premap, fill, blob): less noisy
    // than wall time on a shared machine.
    let cpu = std::fs::read_to_string(format!("/proc/{ROOT}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos);
    if mib > 0 {
        let mem = std::fs::File::open(format!("/proc/{ROOT}/mem")).expect("open mem");
        let (mut got, mut want) = (vec![0u8; 4096], vec![0u8; 4096]);
        let pages = (mib << 20) / 4096;
        for p in [0, 1, pages / 3, pages / 2 + 7, pages - 1] {
            let at = BIG + p * 4096;
            mem.read_exact_at(&mut got, at)
                .expect("read restored memory");
            fill_pattern(at, &mut want);
            assert!(got == want, "page {p} of the restored memory differs");
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ROOT),
        nix::sys::signal::Signal::SIGKILL,
    );
    let mut all: Vec<i32> = tids.iter().map(|&t| t as i32).collect();
    all.push(ROOT);
    wait_pids_free(&all, Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        total,
        split: split_from_log(&log),
        cpu,
        stasis_cpu,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let only: Option<(usize, u64)> = std::env::var("STASIS_BENCH_ONLY").ok().and_then(|s| {
        let (t, m) = s.split_once(':')?;
        Some((t.parse().ok()?, m.parse().ok()?))
    });
    let (configs, reps): (Vec<(usize, u64)>, usize) = if let Some(c) = only {
        (vec![c], 1)
    } else if full {
        (vec![(1000, 0), (4000, 0), (8000, 0), (1, 1024)], 3)
    } else {
        (vec![(100, 16)], 1)
    };
    println!(
        "| threads | anon MiB | restore time (median of {reps}) | images read | all tasks ready | released | stasis CPU | root task CPU |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (threads, mib) in configs {
        let mut runs: Vec<Run> = (0..reps).map(|_| one(threads, mib)).collect();
        runs.sort_by_key(|r| r.total);
        let m = &runs[runs.len() / 2];
        println!(
            "| {threads} | {mib} | {} | {} | {} | {} | {} | {} |",
            ms(m.total),
            ms(m.split[0]),
            ms(m.split[1]),
            ms(m.split[2]),
            ms(m.stasis_cpu),
            ms(m.cpu)
        );
    }
}
