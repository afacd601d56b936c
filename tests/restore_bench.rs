//! Restore-time benchmarks (run explicitly; they need root, ~1.2 GiB of /dev/shm and free
//! PIDs): `cargo test --release --test restore_bench -- --ignored --nocapture --test-threads 1`.
//!
//! Images are synthesized from the fx-loop fixture on tmpfs (/dev/shm): extra threads run a
//! `pause()` loop from an added code page; the memory case adds one 1 GiB private anonymous
//! VMA whose pages are all present in the pages image. Each case reports the wall time of
//! `stasis restore -d` (images read, tree created, memory written, threads created, running).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::restore::*;
use stasis::images::framing::Image;
use stasis::images::pb;

const CODE: u64 = 0x1000_0000;
const BIG: u64 = 0x2_0000_0000;

fn free_tids(n: usize) -> Vec<u32> {
    (2000u32..32768)
        .filter(|p| !(30000..30700).contains(p))
        .filter(|p| !Path::new(&format!("/proc/{p}")).exists())
        .take(n)
        .collect()
}

fn read<M: prost::Message + Default>(p: &Path) -> (Image, Vec<M>) {
    let img = Image::read_file(p).unwrap();
    let v = img.decode().unwrap();
    (img, v)
}

/// Builds an fx-loop image set with `threads` extra threads and `mem` bytes of extra memory.
fn synthesize(threads: usize, mem: u64) -> (PathBuf, Vec<u32>) {
    let dir = PathBuf::from(format!("/dev/shm/stasis-bench-{threads}-{mem}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures().join("criu-4.2/fx-loop");
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if !e.file_name().to_string_lossy().ends_with(".json") {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let tids = free_tids(threads);
    assert_eq!(tids.len(), threads, "not enough free pids");
    // pstree
    let (img, mut ps) = read::<pb::PstreeEntry>(&dir.join("pstree.img"));
    ps[0].threads.extend(&tids);
    Image::from_messages(img.kind, &ps)
        .write_file(dir.join("pstree.img"))
        .unwrap();
    // thread cores
    let (cimg, core) = read::<pb::CoreEntry>(&dir.join("core-30000.img"));
    let mut tcore = core[0].clone();
    tcore.tc = None;
    {
        let ti = tcore.thread_info.as_mut().unwrap();
        ti.clear_tid_addr = 0;
        ti.gpregs.ip = CODE;
        ti.gpregs.sp = CODE + 4096;
        ti.gpregs.orig_ax = u64::MAX;
        let th = tcore.thread_core.as_mut().unwrap();
        th.rseq_entry = None;
        th.sas = None;
        th.signals_p = None;
        th.blk_sigset = Some(0);
        th.comm = Some("bench".into());
    }
    for &t in &tids {
        Image::from_messages(cimg.kind, &[tcore.clone()])
            .write_file(dir.join(format!("core-{t}.img")))
            .unwrap();
    }
    // mm: code page (+ big region)
    let (mimg, mut mm) = read::<pb::MmEntry>(&dir.join("mm-30000.img"));
    let anon = |start: u64, end: u64, prot: u32| pb::VmaEntry {
        start,
        end,
        pgoff: 0,
        shmid: 0,
        prot,
        flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
        status: 1 | (1 << 9),
        fd: -1,
        madv: None,
        fdflags: None,
    };
    let mut vmas = vec![anon(
        CODE,
        CODE + 4096,
        (libc::PROT_READ | libc::PROT_EXEC) as u32,
    )];
    if mem > 0 {
        vmas.push(anon(
            BIG,
            BIG + mem,
            (libc::PROT_READ | libc::PROT_WRITE) as u32,
        ));
    }
    let pos = mm[0].vmas.iter().position(|v| v.start > CODE).unwrap();
    for (i, v) in vmas.into_iter().enumerate() {
        mm[0].vmas.insert(pos + i, v);
    }
    Image::from_messages(mimg.kind, &mm)
        .write_file(dir.join("mm-30000.img"))
        .unwrap();
    // pagemap + pages
    let pm_path = dir.join("pagemap-30000.img");
    let pimg = Image::read_file(&pm_path).unwrap();
    let head: pb::PagemapHead = pimg.decode_entry(0).unwrap();
    let mut out = Image::new(pimg.kind);
    out.push(&head);
    for i in 1..pimg.entries.len() {
        out.push(&pimg.decode_entry::<pb::PagemapEntry>(i).unwrap());
    }
    let entry = |vaddr: u64, nr: u64| pb::PagemapEntry {
        vaddr,
        compat_nr_pages: 0,
        in_parent: None,
        flags: Some(4),
        nr_pages: Some(nr),
    };
    out.push(&entry(CODE, 1));
    if mem > 0 {
        out.push(&entry(BIG, mem / 4096));
    }
    out.write_file(&pm_path).unwrap();
    use std::io::Write;
    let mut pages = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(format!("pages-{}.img", head.pages_id)))
        .unwrap();
    // mov eax, 34 (pause); syscall; jmp back to the mov
    let mut code = vec![0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
    code.resize(4096, 0xcc);
    pages.write_all(&code).unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2654435761).to_le_bytes()[1];
    }
    for _ in 0..mem / chunk.len() as u64 {
        pages.write_all(&chunk).unwrap();
    }
    (dir, tids)
}

fn bench(threads: usize, mem: u64) {
    let _s = serial();
    pids_ready("fx-loop");
    let _l = Leftovers("fx-loop");
    let (dir, tids) = synthesize(threads, mem);
    let t0 = Instant::now();
    let out = stasis_restore(&dir, &["-d"]);
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = std::fs::read_dir("/proc/30000/task").unwrap().count();
    assert_eq!(n, threads + 1, "threads after restore");
    println!(
        "BENCH restore threads={} mem={} MiB: {:.3} s",
        threads + 1,
        mem >> 20,
        took.as_secs_f64()
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(30000),
        nix::sys::signal::Signal::SIGKILL,
    );
    let mut all: Vec<i32> = tids.iter().map(|&t| t as i32).collect();
    all.push(30000);
    wait_pids_free(&all, Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "benchmark: run with --ignored"]
fn restore_1000_threads() {
    bench(999, 0);
}

#[test]
#[ignore = "benchmark: run with --ignored"]
fn restore_4000_threads() {
    bench(3999, 0);
}

#[test]
#[ignore = "benchmark: run with --ignored"]
fn restore_8000_threads() {
    bench(7999, 0);
}

#[test]
#[ignore = "benchmark: run with --ignored"]
fn restore_1gib_anon() {
    bench(0, 1 << 30);
}
