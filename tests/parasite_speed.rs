//! Page dump throughput of the dump parasite (vmsplice + splice) against copying through
//! `/proc/PID/mem`, into a tmpfs file. Prints MiB/s (no timed assertion); asserts the bytes.
//! Size: `STASIS_SPEED_MIB` (default 256).

mod common;

use common::workload::Workload;
use stasis::parasite::proto::RemoteIov;
use stasis::parasite::Parasite;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

fn tmpfs_file(name: &str) -> (std::path::PathBuf, std::fs::File) {
    let path = std::path::Path::new("/dev/shm").join(format!("{name}-{}", std::process::id()));
    let f = std::fs::File::create(&path).unwrap();
    (path, f)
}

#[test]
fn parasite_page_dump_throughput() {
    let mib: usize = std::env::var("STASIS_SPEED_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let w = Workload::stateful(2, mib, Duration::from_secs(120));
    let tasks = w.seize_all();
    let len = w.mem_len as u64;

    let (p1, out) = tmpfs_file("stasis-speed-parasite");
    let mut p = Parasite::inject(&tasks[0]).expect("inject");
    let t0 = Instant::now();
    let n = p
        .dump_pages(
            &[RemoteIov {
                base: w.mem_addr,
                len,
            }],
            out.as_fd(),
        )
        .expect("dump pages");
    let parasite = t0.elapsed();
    p.cure().expect("cure");
    assert_eq!(n, len);

    let (p2, mut out2) = tmpfs_file("stasis-speed-procmem");
    let mem = std::fs::File::open(format!("/proc/{}/mem", w.pid)).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    let mut off = 0;
    while off < len {
        mem.read_exact_at(&mut buf, w.mem_addr + off).unwrap();
        out2.write_all(&buf).unwrap();
        off += buf.len() as u64;
    }
    let procmem = t0.elapsed();
    drop(tasks);
    w.assert_in_time();

    let mut a = Vec::new();
    std::fs::File::open(&p1)
        .unwrap()
        .read_to_end(&mut a)
        .unwrap();
    assert!(a == w.pattern(), "parasite dump differs from the pattern");
    let _ = std::fs::remove_file(&p1);
    let _ = std::fs::remove_file(&p2);
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "{mib} MiB: parasite {:.0} MiB/s ({parasite:?}), /proc/PID/mem {:.0} MiB/s ({procmem:?})",
        rate(parasite),
        rate(procmem)
    );
}
