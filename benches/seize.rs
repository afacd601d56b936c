//! Seizing threads: `seize_tree` (seize + interrupt every thread, one waitpid loop) + reading
//! every thread's registers (NT_PRSTATUS and NT_X86_XSTATE) + detaching, for a process with
//! 1000 and 8000 idle threads; and, for comparison, seizing one thread at a time
//! (`SeizedTask::seize`: seize, interrupt, wait, per thread).
//!
//! `cargo bench --bench seize` runs 1000 and 8000 threads, 5 rounds each, and prints medians.
//! Without `--bench` (e.g. under `cargo test --benches`) it runs 100 threads once. The
//! workload is this executable re-executed as `--workload THREADS` (parked threads, 64 KiB
//! stacks).

use stasis::sys::task::SeizedTask;
use stasis::sys::tree::seize_tree;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn workload(threads: usize) -> ! {
    let mut handles = Vec::new();
    for _ in 1..threads {
        let h = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| loop {
                std::thread::park();
            })
            .expect("spawn thread");
        handles.push(h);
    }
    println!("ready");
    loop {
        std::thread::park();
    }
}

struct Workload(Child);

impl Workload {
    fn start(threads: usize) -> (Self, i32) {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(["--workload", &threads.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        assert_eq!(line.trim(), "ready");
        let pid = child.id() as i32;
        (Workload(child), pid)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Round {
    seize: Duration,
    regs: Duration,
    detach: Duration,
    one_by_one: Duration,
}

fn round(pid: i32, threads: usize) -> Round {
    let t0 = Instant::now();
    let tree = seize_tree(pid).expect("seize tree");
    let t1 = Instant::now();
    assert_eq!(tree.thread_count(), threads);
    let mut xsave_bytes = 0;
    for task in tree.tasks() {
        let regs = task.task_regs().expect("registers");
        xsave_bytes += regs.xstate.as_bytes().len();
    }
    assert!(xsave_bytes >= 512 * threads);
    let t2 = Instant::now();
    tree.detach().expect("detach");
    let t3 = Instant::now();

    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let t4 = Instant::now();
    let tasks: Vec<SeizedTask> = tids
        .iter()
        .map(|&t| SeizedTask::seize(pid, t).expect("seize one"))
        .collect();
    let t5 = Instant::now();
    drop(tasks);
    Round {
        seize: t1 - t0,
        regs: t2 - t1,
        detach: t3 - t2,
        one_by_one: t5 - t4,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--workload") {
        workload(args[i + 1].parse().expect("thread count"));
    }
    let full = args.iter().any(|a| a == "--bench");
    let (sizes, rounds): (&[usize], usize) = if full {
        (&[1000, 8000], 5)
    } else {
        (&[100], 1)
    };
    println!("| threads | seize_tree (seize+interrupt+wait all) | regs + xstate, all threads | detach all | total | seize one at a time |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &threads in sizes {
        let (_w, pid) = Workload::start(threads);
        let results: Vec<Round> = (0..rounds).map(|_| round(pid, threads)).collect();
        let seize = median(results.iter().map(|r| r.seize).collect());
        let regs = median(results.iter().map(|r| r.regs).collect());
        let detach = median(results.iter().map(|r| r.detach).collect());
        let total = median(
            results
                .iter()
                .map(|r| r.seize + r.regs + r.detach)
                .collect(),
        );
        let one = median(results.iter().map(|r| r.one_by_one).collect());
        println!(
            "| {threads} | {} | {} | {} | {} | {} |",
            ms(seize),
            ms(regs),
            ms(detach),
            ms(total),
            ms(one)
        );
    }
}
