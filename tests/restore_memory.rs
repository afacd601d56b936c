//! Private anonymous memory after restore, on fx-loop images with added VMAs
//! (`common::synth`): every byte is the dumped one (present pages hold a per-address pattern,
//! absent pages read as zero), and each VMA's range and smaps `VmFlags` equal those of the
//! same mapping made by a process with mmap (+ madvise), i.e. of the dumped original.
//!
//! ```text
//! large    64 MiB rw-  all present            (two-thread UFFDIO_COPY fill)
//! holes     8 MiB rw-  four runs, gaps        (partial runs, pages outside stay empty)
//! ro        1 MiB r--  all present            (read-only premap: no VM_ACCOUNT gained)
//! thp       8 MiB rw-  MADV_HUGEPAGE recorded (huge-page faults, "hg" kept)
//! nores     4 MiB rw-  MAP_NORESERVE          ("nr" kept, no "ac")
//! none      2 MiB ---  two pages present      (contents kept under PROT_NONE)
//! ```

mod common;

use std::os::unix::fs::FileExt;

use common::restore::{pids_ready, serial, stasis_restore, verify, Leftovers};
use common::synth::{fill_pattern, synthesize, ExtraVma, ROOT};

const MIB: u64 = 1 << 20;

fn vmas() -> Vec<(&'static str, ExtraVma)> {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let v = |start: u64, len: u64, prot: i32, flags: i32, madv: u64, present: Vec<(u64, u64)>| {
        ExtraVma {
            start,
            len,
            prot,
            flags,
            madv,
            present,
        }
    };
    vec![
        ("large", ExtraVma::full(0x2_0000_0000, 64 * MIB)),
        (
            "holes",
            v(
                0x3_0000_0000,
                8 * MIB,
                rw,
                0,
                0,
                vec![(0, 1), (5, 100), (1000, 24), (2047, 1)],
            ),
        ),
        (
            "ro",
            v(0x3_4000_0000, MIB, libc::PROT_READ, 0, 0, vec![(0, 256)]),
        ),
        (
            "thp",
            v(0x3_8000_0000, 8 * MIB, rw, 0, 1 << 14, vec![(0, 2048)]),
        ),
        (
            "nores",
            v(
                0x3_c000_0000,
                4 * MIB,
                rw,
                libc::MAP_NORESERVE,
                0,
                vec![(1, 10)],
            ),
        ),
        (
            "none",
            v(0x4_0000_0000, 2 * MIB, libc::PROT_NONE, 0, 0, vec![(3, 2)]),
        ),
    ]
}

/// The smaps entry of the VMA starting at `start`: (its `start-end` range, its VmFlags).
fn smaps_entry(pid: &str, start: u64) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let head = format!("{start:x}-");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&head));
    let range = lines.next()?.split_whitespace().next()?.to_string();
    let flags = lines
        .find_map(|l| l.strip_prefix("VmFlags:"))?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    Some((range, flags))
}

/// VmFlags of the same mapping made here with mmap (+ madvise), as the original process did.
fn reference_flags(i: usize, v: &ExtraVma) -> Vec<String> {
    let at = 0x6100_0000_0000 + (i as u64) * (1 << 30);
    let got = stasis::sys::mem::map_noreplace(
        at,
        v.len,
        v.prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | v.flags,
        -1,
        0,
    )
    .expect("reference mmap");
    assert_eq!(got, at);
    if v.madv & (1 << 14) != 0 {
        stasis::sys::mem::advise_hugepage(at, v.len).expect("reference madvise");
    }
    smaps_entry("self", at).expect("reference vma in smaps").1
}

#[test]
fn restored_anonymous_memory_has_the_dumped_bytes_and_flags() {
    let _s = serial();
    pids_ready("fx-loop");
    let _l = Leftovers("fx-loop");
    let list = vmas();
    let extra: Vec<ExtraVma> = list.iter().map(|(_, v)| v.clone()).collect();
    let (dir, _) = synthesize("memory-test", 0, &extra);
    let pidfile = dir.join("root.pid");
    let out = stasis_restore(&dir, &["-d", "--pidfile", pidfile.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mem = std::fs::File::open(format!("/proc/{ROOT}/mem")).expect("open restored mem");
    let mut got = vec![0u8; 4096];
    let mut want = vec![0u8; 4096];
    for (i, (name, v)) in list.iter().enumerate() {
        let (range, flags) = smaps_entry(&ROOT.to_string(), v.start)
            .unwrap_or_else(|| panic!("{name}: no VMA at {:#x} after restore", v.start));
        assert_eq!(
            range,
            format!("{:x}-{:x}", v.start, v.start + v.len),
            "{name}: range"
        );
        assert_eq!(flags, reference_flags(i, v), "{name}: VmFlags");
        for p in 0..v.len / 4096 {
            let at = v.start + p * 4096;
            mem.read_exact_at(&mut got, at)
                .unwrap_or_else(|e| panic!("{name}: read page {p}: {e}"));
            if v.is_present(at) {
                fill_pattern(at, &mut want);
            } else {
                want.fill(0);
            }
            assert!(got == want, "{name}: page {p} at {at:#x} differs");
        }
    }
    let (ok, text) = verify("fx-loop", &pidfile);
    assert!(ok, "fx-loop after restore with extra memory: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
