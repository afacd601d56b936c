//! What CRIU 4.2's restore needs of stasis' images, checked without CRIU (the cross test with
//! a CRIU binary is tests/criu_compat.rs; its findings are in COMPATIBILITY.md):
//!
//! * `mm_saved_auxv` holds at most CRIU's `AT_VECTOR_SIZE` (44) words, the first words of
//!   `/proc/PID/auxv`; CRIU's restore rejects more ("Image corrupted");
//! * every page of the vDSO VMA is in the pagemap and its first page is the vDSO's ELF image,
//!   also in a forked child whose vDSO was never touched (CRIU's restorer parses that ELF:
//!   "vdso: Invalid ELF magic" otherwise);
//! * a seccomp chain shared by all threads, which CRIU writes on the leader only with
//!   `SECCOMP_FILTER_FLAG_TSYNC` (the other threads' cores have none), is restored on every
//!   thread (before, only the leader got it back).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::deadline::with_deadline;
use common::dump::*;
use common::lock::restore_lock;
use common::restore::edit_single;
use common::workload::c_program;
use stasis::images::framing::{read_single, Image};
use stasis::images::pb;

/// CRIU's `VMA_AREA_VDSO` status bit.
const VMA_AREA_VDSO: u32 = 1 << 3;

/// A parent that forks a child; neither calls into the vDSO after the fork, so the child's
/// vDSO pages are not present (the kernel maps them on first touch).
const FORKED: &str = r#"
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int p[2];
    if (pipe(p)) return 1;
    if (fork() == 0) {
        close(p[0]);
        write(p[1], "c", 1);
        for (;;) pause();
    }
    char c;
    if (read(p[0], &c, 1) != 1) return 1;
    int fd = open(argv[1], O_CREAT | O_WRONLY, 0600);
    write(fd, "READY", 5);
    close(fd);
    for (;;) pause();
}
"#;

/// `(start, end)` of the `[vdso]` line of `/proc/PID/maps`.
fn vdso_range(pid: i32) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .unwrap_or_else(|| panic!("no [vdso] in /proc/{pid}/maps"));
    let (s, e) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    (
        u64::from_str_radix(s, 16).unwrap(),
        u64::from_str_radix(e, 16).unwrap(),
    )
}

/// How many pages of `start..end` are present in `pid`'s memory (/proc/PID/pagemap bit 63).
fn present_pages(pid: i32, start: u64, end: u64) -> usize {
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    (start..end)
        .step_by(4096)
        .filter(|a| {
            let mut e = [0u8; 8];
            f.read_exact_at(&mut e, a / 4096 * 8).unwrap();
            u64::from_le_bytes(e) >> 63 == 1
        })
        .count()
}

/// `/proc/PID/auxv` as words.
fn auxv_words(pid: i32) -> Vec<u64> {
    std::fs::read(format!("/proc/{pid}/auxv"))
        .unwrap()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The pagemap of process `pid`: its pages image id and its `(vaddr, nr_pages)` runs.
fn pagemap(dir: &Path, pid: i32) -> (u32, Vec<(u64, u64)>) {
    let img = Image::read_file(dir.join(format!("pagemap-{pid}.img"))).unwrap();
    let head: pb::PagemapHead = img.decode_entry(0).unwrap();
    let runs = (1..img.entries.len())
        .map(|i| {
            let e: pb::PagemapEntry = img.decode_entry(i).unwrap();
            (e.vaddr, e.nr_pages.unwrap_or(0))
        })
        .collect();
    (head.pages_id, runs)
}

/// The first `len` bytes the images hold for `vaddr` of process `pid` (pagemap + pages).
fn image_bytes(dir: &Path, pid: i32, vaddr: u64, len: usize) -> Option<Vec<u8>> {
    let (pages_id, runs) = pagemap(dir, pid);
    let mut off = 0u64;
    for (a, n) in runs {
        if (a..a + n * 4096).contains(&vaddr) {
            let mut f = std::fs::File::open(dir.join(format!("pages-{pages_id}.img"))).unwrap();
            f.seek(SeekFrom::Start(off + vaddr - a)).unwrap();
            let mut b = vec![0u8; len];
            f.read_exact(&mut b).unwrap();
            return Some(b);
        }
        off += n * 4096;
    }
    None
}

/// Whether the pagemap of `pid` covers every page of `start..end`.
fn covered(dir: &Path, pid: i32, start: u64, end: u64) -> bool {
    let runs = pagemap(dir, pid).1;
    (start..end)
        .step_by(4096)
        .all(|p| runs.iter().any(|&(a, n)| (a..a + n * 4096).contains(&p)))
}

#[test]
fn forked_child_with_untouched_vdso_and_long_auxv_dumps_as_criu_restores() {
    let base = 34400;
    let cg = cgroup_path("vdso-fork", base);
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            let bin = c_program("vdso_fork", FORKED, &["-static"]);
            let work = tempfile::tempdir().unwrap();
            let ready = work.path().join("ready");
            let cmd = format!("setsid {}", tuned_cmd(&bin, &[&ready]));
            let w = launch_cmd("vdso-fork", base, &cmd, &ready);
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", w.pid)).unwrap();
            let child: i32 = children.trim().parse().expect("one child");
            let (start, end) = vdso_range(child);
            assert!(
                present_pages(child, start, end) < ((end - start) / 4096) as usize,
                "precondition: the child's vDSO has pages not present"
            );
            let auxv = auxv_words(child);

            let images = tempfile::tempdir().unwrap();
            stasis_dump(w.pid, images.path(), &[]);

            for pid in [w.pid, child] {
                let mm: pb::MmEntry =
                    read_single(images.path().join(format!("mm-{pid}.img"))).unwrap();
                let saved = &mm.mm_saved_auxv;
                assert!(saved.len() <= 44, "{pid}: {} auxv words", saved.len());
                if pid == child {
                    assert_eq!(saved[..], auxv[..saved.len()], "the first auxv words");
                    assert_eq!(saved.len(), auxv.len().min(44));
                }
                let vdso = mm
                    .vmas
                    .iter()
                    .find(|v| v.status & VMA_AREA_VDSO != 0)
                    .unwrap_or_else(|| panic!("{pid}: no VDSO VMA"));
                let (s, e) = (vdso.start, vdso.end);
                assert!(
                    covered(images.path(), pid, s, e),
                    "{pid}: every vDSO page {s:#x}-{e:#x} is in the pagemap"
                );
                assert_eq!(
                    image_bytes(images.path(), pid, s, 4).as_deref(),
                    Some(&b"\x7fELF"[..]),
                    "{pid}: the vDSO's ELF header is in the pages"
                );
            }
        },
    )
}

/// `SECCOMP_FILTER_FLAG_TSYNC`.
const TSYNC: u32 = 1;

#[test]
fn seccomp_chain_in_criu_tsync_form_restores_on_every_thread() {
    let _lock = restore_lock();
    let base = 34440;
    with_round_trip_deadline(
        120,
        cgroup_path("fx-seccomp-tsync", base),
        move |restored| {
            let bin = c_program(
                "fx-seccomp",
                include_str!("dump_state_e2e/fx-seccomp.c"),
                &["-static", "-pthread"],
            );
            let work = tempfile::tempdir().unwrap();
            let result = work.path().join("result");
            let cmd = format!("setsid {}", tuned_cmd(&bin, &[&result]));
            let mut w = launch_cmd("fx-seccomp-tsync", base, &cmd, &result);
            *restored.lock().unwrap() = vec![w.pid];
            let images = tempfile::tempdir().unwrap();
            stasis_dump(w.pid, images.path(), &[]);
            reap_dumped(&mut w);

            // Into CRIU's form: every filter TSYNC, only the leader's core names the chain.
            edit_single::<pb::SeccompEntry>(&images.path().join("seccomp.img"), |e| {
                for f in &mut e.seccomp_filters {
                    f.flags = Some(f.flags.unwrap_or(0) | TSYNC);
                }
            });
            let mut others = 0;
            for core in files_with_prefix(images.path(), "core-") {
                if core.file_name().unwrap() != format!("core-{}.img", w.pid).as_str() {
                    edit_single::<pb::CoreEntry>(&core, |c| {
                        let tc = c.thread_core.as_mut().unwrap();
                        (tc.seccomp_mode, tc.seccomp_filter) = (None, None);
                    });
                    others += 1;
                }
            }
            assert_eq!(others, 1, "fx-seccomp has a second thread");

            stasis_restore_detached(images.path(), &[]);
            std::thread::sleep(std::time::Duration::from_millis(300));
            for t in std::fs::read_dir(format!("/proc/{}/task", w.pid)).unwrap() {
                let st = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
                assert!(st.contains("Seccomp_filters:\t2\n"), "{st}");
            }
            verify_then_kill(&w, &[w.pid], "fx-seccomp restored from CRIU's TSYNC form");
        },
    )
}
