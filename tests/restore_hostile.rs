//! Hostile and damaged image sets (issue: robustness): each is refused while planning, with
//! an error naming the file and the entry, in bounded memory and without leaving a task;
//! and a failure after the tree exists (the pidfile) kills the tree.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use common::restore::*;
use stasis::images::framing::{Entry, Image};
use stasis::images::magic::IMG_COMMON_MAGIC;
use stasis::images::pb;

/// Rewrites entry `index` of the image at `path` (decoded as `M`) after `edit`.
fn edit_entry<M: prost::Message + Default>(path: &Path, index: usize, edit: impl FnOnce(&mut M)) {
    let mut img = Image::read_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut m: M = img.decode_entry(index).expect("decode entry");
    edit(&mut m);
    img.entries[index] = Entry::from_message(&m);
    img.write_file(path).expect("write image");
}

/// `stasis restore -D dir -d` with its peak memory (KiB, from wait4) and stderr.
fn restore_with_rss(dir: &Path) -> (i32, String, i64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stasis"))
        .args(["restore", "-d", "-D"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stasis");
    let mut err = String::new();
    // stderr closes when stasis exits (it runs under the 60 s bound of its own --timeout).
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be filled.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(r, child.id() as i32, "wait4");
    (libc::WEXITSTATUS(status), err, ru.ru_maxrss)
}

fn failed(code: i32, err: &str, needles: &[&str]) {
    assert_eq!(code, 1, "restore should fail; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention {n:?}; got: {err}");
    }
}

/// Item 2: an image that is a link to /dev/zero is refused before it is read.
#[test]
fn image_linked_to_dev_zero_is_refused() {
    let run = fixture_run("fx-loop");
    let core = run.dir.join("core-30000.img");
    std::fs::remove_file(&core).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &core).unwrap();
    let (code, err, _) = restore_with_rss(&run.dir);
    failed(code, &err, &["core-30000.img", "character device"]);
    let out = stasis_restore(&run.dir, &["-d"]);
    assert_failed(&out, "fx-loop", &["core-30000.img"]);
}

/// Item 2: 20 MB of empty pstree entries fail at the first, in memory far below the file's
/// count of entries (it used to cost about 1 GB).
#[test]
fn a_file_of_empty_entries_costs_little_memory() {
    let run = fixture_run("fx-loop");
    let mut b = Vec::with_capacity(20 << 20);
    b.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    b.extend_from_slice(&0x5027_3030u32.to_le_bytes()); // PSTREE
    b.resize(20 << 20, 0);
    std::fs::write(run.dir.join("pstree.img"), &b).unwrap();
    let (code, err, rss_kib) = restore_with_rss(&run.dir);
    failed(code, &err, &["pstree.img", "entry 0", "pid 0"]);
    assert!(
        rss_kib < 100 << 10,
        "peak memory {rss_kib} KiB for a 20 MB image"
    );
}

/// Item 3: a stack VMA ending at the top of the address space (the restore used to hang and
/// leave a spinning task) is refused, and so are overlapping and unaligned ones.
#[test]
fn vmas_outside_user_space_overlapping_or_unaligned_are_refused() {
    let cases: [(&str, fn(&mut pb::MmEntry)); 3] = [
        ("beyond the user address space", |mm| {
            let sp = mm.mm_start_stack;
            let v = mm
                .vmas
                .iter_mut()
                .find(|v| v.start <= sp && sp < v.end)
                .expect("stack vma");
            v.end = 0xffff_ffff_ffff_f000;
        }),
        ("overlaps", |mm| {
            let end = mm.vmas[1].end;
            mm.vmas[0].end = end;
        }),
        ("not page-aligned", |mm| mm.vmas[0].start += 1),
    ];
    for (what, edit) in cases {
        let run = fixture_run("fx-loop");
        edit_entry(&run.dir.join("mm-30000.img"), 0, edit);
        let out = stasis_restore(&run.dir, &["-d"]);
        assert_failed(&out, "fx-loop", &["mm-30000.img", what]);
    }
}

/// Item 4: the pidfile cannot be written after the tree exists: the restore fails and the
/// tree is killed, not left running.
#[test]
fn a_pidfile_that_cannot_be_written_kills_the_tree() {
    let run = fixture_run("fx-loop");
    let out = stasis_restore(&run.dir, &["-d", "--pidfile", "/nonexistent/dir/pid"]);
    assert_failed(&out, "fx-loop", &["pidfile", "/nonexistent/dir/pid"]);
}

/// Item 5: a garbage or empty inventory, or one of an unknown version.
#[test]
fn bad_inventories_are_refused() {
    let cases: [(&[u8], &str); 2] = [(b"", "truncated"), (b"garbage garbage!", "magic")];
    for (bytes, what) in cases {
        let run = fixture_run("fx-loop");
        std::fs::write(run.dir.join("inventory.img"), bytes).unwrap();
        let out = stasis_restore(&run.dir, &["-d"]);
        assert_failed(&out, "fx-loop", &["inventory.img", what]);
    }
    let run = fixture_run("fx-loop");
    edit_single(
        &run.dir.join("inventory.img"),
        |inv: &mut pb::InventoryEntry| inv.img_version = 7,
    );
    let out = stasis_restore(&run.dir, &["-d"]);
    assert_failed(&out, "fx-loop", &["inventory.img", "image version 7"]);
}

/// Item 5: pagemap entries with unknown flags, no pages, out of order, or outside every VMA
/// (they used to restore a task that died at once, or be dropped silently).
#[test]
fn bad_pagemap_entries_are_refused() {
    let cases: [(&str, fn(&mut Vec<pb::PagemapEntry>)); 4] = [
        ("unknown flags 0x44", |e| e[0].flags = Some(0x44)),
        ("no pages", |e| e[0].nr_pages = Some(0)),
        ("out of order", |e| e.swap(0, 1)),
        ("in no vma", |e| {
            e[0].vaddr = 0x10_0000_0000;
            e[0].nr_pages = Some(1);
        }),
    ];
    for (what, edit) in cases {
        let run = fixture_run("fx-loop");
        let path = run.dir.join("pagemap-30000.img");
        let mut img = Image::read_file(&path).unwrap();
        let mut entries: Vec<pb::PagemapEntry> = (1..img.entries.len())
            .map(|i| img.decode_entry(i).unwrap())
            .collect();
        assert!(entries.len() >= 2, "fx-loop has several page runs");
        edit(&mut entries);
        for (i, e) in entries.iter().enumerate() {
            img.entries[i + 1] = Entry::from_message(e);
        }
        img.write_file(&path).unwrap();
        let out = stasis_restore(&run.dir, &["-d"]);
        assert_failed(&out, "fx-loop", &["pagemap-30000.img", "entry 1", what]);
    }
}

/// Item 6: a process group or session no task of the tree leads is refused from the images,
/// before anything starts (it used to fail after the 10 s wait of the task joining it).
#[test]
fn groups_and_sessions_outside_the_tree_are_refused_up_front() {
    for (edit, what) in [
        (
            (|e: &mut pb::PstreeEntry| e.pgid = 31999) as fn(&mut pb::PstreeEntry),
            "process group 31999",
        ),
        (|e: &mut pb::PstreeEntry| e.sid = 31998, "session 31998"),
    ] {
        let run = fixture_run("fx-tree");
        let path = run.dir.join("pstree.img");
        let img = Image::read_file(&path).unwrap();
        let index = (0..img.entries.len())
            .find(|&i| img.decode_entry::<pb::PstreeEntry>(i).unwrap().pid == 30406)
            .expect("task 30406");
        edit_entry(&path, index, edit);
        let out = stasis_restore(&run.dir, &["-d"]);
        assert_failed(
            &out,
            "fx-tree",
            &[
                "pstree.img",
                "task 30406",
                what,
                "no task of the tree leads",
            ],
        );
    }
}

/// Item 7: a relative path in files.img is refused; absolute ones resolve under --root.
#[test]
fn file_paths_are_absolute_and_resolved_under_the_root() {
    let run = fixture_run("fx-files");
    let path = run.dir.join("files.img");
    let img = Image::read_file(&path).unwrap();
    let index = (0..img.entries.len())
        .find(|&i| img.decode_entry::<pb::FileEntry>(i).unwrap().reg.is_some())
        .expect("a regular file");
    edit_entry(&path, index, |f: &mut pb::FileEntry| {
        let reg = f.reg.as_mut().unwrap();
        reg.name = reg.name.trim_start_matches('/').to_string();
    });
    let out = stasis_restore(&run.dir, &["-d"]);
    assert_failed(&out, "fx-files", &["files.img", "is not absolute"]);

    let run = fixture_run("fx-files");
    let root = run.serial.scratch.path().join("empty-root");
    std::fs::create_dir_all(&root).unwrap();
    let out = stasis_restore(&run.dir, &["-d", "--root", root.to_str().unwrap()]);
    let under = format!("{}/tmp/criu-fixtures/", root.display());
    assert_failed(&out, "fx-files", &[&under, "cannot stat"]);
}

/// Item 8: a restored zombie carries its recorded name, not the restorer's.
#[test]
fn a_restored_zombie_keeps_its_name() {
    let run = fixture_run("fx-tree");
    let pidfile = restore_detached_with_pidfile(&run.dir);
    let pstree: Vec<pb::PstreeEntry> =
        stasis::images::framing::read_entries(run.dir.join("pstree.img")).unwrap();
    let mut zombies = 0;
    for e in &pstree {
        let core: pb::CoreEntry =
            stasis::images::framing::read_single(run.dir.join(format!("core-{}.img", e.pid)))
                .unwrap();
        let tc = core.tc.unwrap();
        if tc.task_state != 2 {
            continue;
        }
        zombies += 1;
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", e.pid)).unwrap();
        assert_eq!(comm.trim_end(), tc.comm, "zombie {}", e.pid);
    }
    assert!(zombies > 0, "fx-tree has a zombie");
    let _ = std::fs::remove_file(pidfile);
}
