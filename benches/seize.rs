//! Seizing threads: `seize_tree` (seize + interrupt every thread, one waitpid loop) + reading
//! every thread's registers (NT_PRSTATUS and NT_X86_XSTATE) + detaching, for a process with
//! 1000 and 8000 idle threads; and, for comparison, seizing one thread at a time
//! (`SeizedTask::seize`: seize, interrupt, wait, per thread).
//!
//! Then the parasite's page dump (vmsplice into a pipe, splice into a file on /dev/shm) of
//! 256 MiB of anonymous memory, against copying it through `/proc/PID/mem` (1 MiB reads).
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

fn memory_workload(mib: usize) -> ! {
    let mut v = vec![0u8; mib << 20 | 4096];
    for (i, page) in v.chunks_mut(4096).enumerate() {
        page[0] = i as u8;
        page[100] = 0x5a;
    }
    let start = (v.as_ptr() as usize).next_multiple_of(4096);
    println!("ready {start:x} {}", mib << 20);
    loop {
        std::thread::park();
    }
}

struct Workload(Child);

impl Workload {
    fn start(threads: usize) -> (Self, i32) {
        let (w, pid, _) = Self::start_with(&["--workload", &threads.to_string()]);
        (w, pid)
    }

    fn start_with(args: &[&str]) -> (Self, i32, String) {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready");
        assert!(line.starts_with("ready"), "{line}");
        let pid = child.id() as i32;
        (Workload(child), pid, line)
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
    if let Some(i) = args.iter().position(|a| a == "--workload-mem") {
        memory_workload(args[i + 1].parse().expect("MiB"));
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
    pages(if full { 256 } else { 16 }, rounds);
}

/// Parasite page dump against /proc/PID/mem copying, both into a file on /dev/shm.
fn pages(mib: usize, rounds: usize) {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    let (_w, pid, line) = Workload::start_with(&["--workload-mem", &mib.to_string()]);
    let f: Vec<&str> = line.split_whitespace().collect();
    let base = u64::from_str_radix(f[1], 16).expect("address");
    let len: u64 = f[2].parse().expect("length");
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    let mut splice_times = Vec::new();
    let mut mem_times = Vec::new();
    for _ in 0..rounds {
        let tree = seize_tree(pid).expect("seize");
        let out = std::fs::File::create(dir.path().join("pages-splice")).expect("file");
        let t0 = Instant::now();
        let mut p = stasis::parasite::Parasite::inject(tree.root().leader()).expect("inject");
        let t1 = Instant::now();
        let iov = stasis::parasite::proto::RemoteIov { base, len };
        assert_eq!(p.dump_pages(&[iov], out.as_fd()).expect("dump pages"), len);
        let t2 = Instant::now();
        p.cure().expect("cure");
        let t3 = Instant::now();
        splice_times.push((t1 - t0, t2 - t1, t3 - t2));

        let out = std::fs::File::create(dir.path().join("pages-mem")).expect("file");
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
        let mut buf = vec![0u8; 1 << 20];
        let t4 = Instant::now();
        let mut off = 0;
        while off < len {
            mem.read_exact_at(&mut buf, base + off).expect("read mem");
            out.write_all_at(&buf, off).expect("write");
            off += buf.len() as u64;
        }
        mem_times.push(t4.elapsed());
        drop(tree);
    }
    let inject = median(splice_times.iter().map(|t| t.0).collect());
    let dump = median(splice_times.iter().map(|t| t.1).collect());
    let cure = median(splice_times.iter().map(|t| t.2).collect());
    let mem = median(mem_times);
    let gibs = |d: Duration| len as f64 / (1u64 << 30) as f64 / d.as_secs_f64();
    println!();
    println!("| MiB | inject | dump_pages (vmsplice + splice) | cure | /proc/PID/mem copy |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {mib} | {} | {} ({:.2} GiB/s) | {} | {} ({:.2} GiB/s) |",
        ms(inject),
        ms(dump),
        gibs(dump),
        ms(cure),
        ms(mem),
        gibs(mem)
    );
}
