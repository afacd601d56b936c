//! The page pipeline end to end with the command lines, no CRIU needed: `stasis dump` to a
//! `stasis page-server` over loopback, packed pages (`--compress`, `--encrypt-key`) restored,
//! shown by `stasis crit`, converted by `stasis convert` to images Debian's crit decodes and
//! that restore; tampered streams refused before any task exists. Workloads verify themselves.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dump::*;
use common::lock::restore_lock;
use common::page_server;

fn stasis_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stasis"))
}

fn write_key(dir: &Path, byte: u8) -> PathBuf {
    let p = dir.join(format!("key-{byte}"));
    std::fs::write(&p, [byte; 32]).unwrap();
    p
}

fn names(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| pred(n))
        .collect();
    v.sort();
    v
}

/// stasis dump → stasis page-server (plain pages, then packed on the server side) → merge →
/// stasis restore; fx-mem (patterns, holes, PROT_NONE, shared anonymous memory) checks every
/// page.
fn page_server_round_trip(base: i32, server_extra: &'static [&'static str]) {
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path("fx-mem", base), move |restored| {
        let w = launch("fx-mem", base, &[]);
        let dump_dir = tempfile::tempdir().unwrap();
        let ps_dir = tempfile::tempdir().unwrap();
        let key = write_key(ps_dir.path(), 0x5a);
        let key_s = key.to_string_lossy().into_owned();
        let mut extra: Vec<&str> = server_extra.to_vec();
        if extra.contains(&"--encrypt-key") {
            extra.push(&key_s);
        }
        let server = page_server::start(&stasis_path(), ps_dir.path(), &extra);
        let port = server.port.to_string();
        stasis_dump(
            w.pid,
            dump_dir.path(),
            &["--page-server", "--address", "127.0.0.1", "--port", &port],
        );
        server.wait_ok(ps_dir.path());
        // The dump wrote no pages of its own; the server numbered its files from 0x10001.
        assert!(names(dump_dir.path(), |n| n.starts_with("pages-")).is_empty());
        let pages = names(ps_dir.path(), |n| n.starts_with("pages-"));
        assert!(
            pages.iter().any(|n| n.starts_with("pages-65537.")),
            "{pages:?}"
        );
        assert_eq!(
            pages.iter().any(|n| n.ends_with(".pack.img")),
            !server_extra.is_empty()
        );
        assert!(page_server::merge(ps_dir.path(), dump_dir.path()) >= 4);
        let pids = pids_of(dump_dir.path());
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped tasks");
        let key_arg: Vec<&str> = if server_extra.contains(&"--encrypt-key") {
            vec!["--encrypt-key", &key_s]
        } else {
            vec![]
        };
        stasis_restore_detached(dump_dir.path(), &key_arg);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &pids, "fx-mem through a stasis page server");
    })
}

#[test]
fn page_server_plain_round_trip() {
    page_server_round_trip(33100, &[]);
}

#[test]
fn page_server_packed_round_trip() {
    page_server_round_trip(33160, &["--compress", "zstd:3", "--encrypt-key"]);
}

/// Restore of `dir` that must fail before any task exists: the error names `file` and
/// `offset` (when given) and the dumped pids stay free.
fn refused(dir: &Path, extra: &[&str], pids: &[i32], file: &str, offset: Option<u64>, why: &str) {
    let out = stasis_bin()
        .args(["restore", "-d", "-D"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{why}: restore succeeded");
    assert!(
        err.contains(file),
        "{why}: error does not name {file}: {err}"
    );
    if let Some(o) = offset {
        assert!(
            err.contains(&format!("offset {o}")),
            "{why}: error does not name offset {o}: {err}"
        );
    }
    assert!(gone(pids), "{why}: a task was started: {pids:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// Runs `cmd`, which must succeed; its output.
fn stasis_ok_out(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The record heads of a packed file, from `stasis crit show`: (offset, kind, stored).
fn records(file: &Path) -> Vec<(u64, String, u64)> {
    let out = stasis_ok_out(stasis_bin().args(["crit", "show"]).arg(file));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["magic"], "STASIS_PAGES_PACK");
    doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["kind"].as_str().unwrap().to_string(),
                e["stored"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// dump --compress --encrypt-key: packed files only, a marked inventory; crit shows them;
/// restore reads them (fx-mem verifies); every kind of damage is refused before any task
/// exists, naming the file and offset; convert writes plain images Debian's crit decodes,
/// which restore too.
#[test]
fn packed_dump_restore_convert_and_tampering() {
    let _lock = restore_lock();
    with_round_trip_deadline(240, cgroup_path("fx-mem", 33220), move |restored| {
        let w = launch("fx-mem", 33220, &[]);
        let dir = tempfile::tempdir().unwrap();
        let keys = tempfile::tempdir().unwrap();
        let key = write_key(keys.path(), 0x11);
        let wrong = write_key(keys.path(), 0x12);
        let key_s = key.to_string_lossy().into_owned();
        let wrong_s = wrong.to_string_lossy().into_owned();
        stasis_dump(
            w.pid,
            dir.path(),
            &["--compress", "zstd:3", "--encrypt-key", &key_s],
        );
        let pids = pids_of(dir.path());
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped tasks");
        let d = dir.path();
        assert!(names(d, |n| n.starts_with("pages-") && !n.ends_with(".pack.img")).is_empty());
        let packs = names(d, |n| n.ends_with(".pack.img"));
        assert!(!packs.is_empty());
        // The key is in no log.
        let log = std::fs::read(d.join("dump.log")).unwrap();
        assert!(!log.windows(32).any(|w| w == [0x11; 32]));
        // CRIU would refuse the directory: inventory img_version is not CRIU's.
        let inv = common::dump::decode(&d.join("inventory.img"));
        assert_ne!(inv["entries"][0]["img_version"], 2, "{inv}");

        // The biggest packed file: the process's private memory.
        let big = packs
            .iter()
            .max_by_key(|n| std::fs::metadata(d.join(n)).unwrap().len())
            .unwrap()
            .clone();
        let recs = records(&d.join(&big));
        // fx-mem's patterns hardly compress (RAW records); its other pages do (ZSTD).
        assert!(recs.iter().any(|r| r.1 == "ZSTD"), "{recs:?}");
        assert!(recs.len() > 3, "{recs:?}");
        assert_eq!(recs.last().unwrap().1, "END");

        let scratch = tempfile::tempdir().unwrap();
        let case = |name: &str, edit: &dyn Fn(&Path)| -> PathBuf {
            let c = scratch.path().join(name);
            copy_dir(d, &c);
            edit(&c.join(&big));
            c
        };
        let k = ["--encrypt-key", key_s.as_str()];
        // A flipped byte in the second record's data.
        let (o1, _, _) = recs[1];
        let c = case("flip", &|f| {
            let mut b = std::fs::read(f).unwrap();
            b[o1 as usize + 16 + 5] ^= 0x40;
            std::fs::write(f, b).unwrap();
        });
        refused(&c, &k, &pids, &big, Some(o1), "flipped byte");
        // Truncated in the middle of a record.
        let (o2, _, s2) = recs[2];
        let c = case("trunc", &|f| {
            let b = std::fs::read(f).unwrap();
            std::fs::write(f, &b[..(o2 + 16 + s2 / 2) as usize]).unwrap();
        });
        refused(&c, &k, &pids, &big, Some(o2), "truncated file");
        // Truncated at a record boundary (before the end record).
        let end = recs.last().unwrap().0;
        let c = case("trunc-boundary", &|f| {
            let b = std::fs::read(f).unwrap();
            std::fs::write(f, &b[..end as usize]).unwrap();
        });
        refused(
            &c,
            &k,
            &pids,
            &big,
            Some(end),
            "file cut before its end record",
        );
        // Records 0 and 1 swapped.
        let (o0, o1, o2) = (recs[0].0 as usize, recs[1].0 as usize, recs[2].0 as usize);
        let c = case("reorder", &|f| {
            let b = std::fs::read(f).unwrap();
            let mut n = b[..o0].to_vec();
            n.extend_from_slice(&b[o1..o2]);
            n.extend_from_slice(&b[o0..o1]);
            n.extend_from_slice(&b[o2..]);
            std::fs::write(f, n).unwrap();
        });
        refused(&c, &k, &pids, &big, Some(o0 as u64), "reordered records");
        // Wrong key, no key.
        refused(
            d,
            &["--encrypt-key", &wrong_s],
            &pids,
            &big,
            Some(48),
            "wrong key",
        );
        let out = stasis_bin()
            .args(["restore", "-d", "-D"])
            .arg(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--encrypt-key") && err.contains(".pack.img"),
            "{err}"
        );
        assert!(gone(&pids), "missing key: a task was started");

        // Convert: plain images, decoded by Debian's crit.
        let plain = scratch.path().join("plain");
        stasis_ok_out(
            stasis_bin()
                .args(["convert", "-D"])
                .arg(d)
                .arg("-o")
                .arg(&plain)
                .args(["--encrypt-key", &key_s]),
        );
        assert!(names(&plain, |n| n.ends_with(".pack.img")).is_empty());
        assert_eq!(
            names(&plain, |n| n.starts_with("pages-")).len(),
            packs.len()
        );
        debian_crit_decodes_all(&plain);
        let inv = common::dump::decode(&plain.join("inventory.img"));
        assert_eq!(inv["entries"][0]["img_version"], 2, "{inv}");

        // The packed images restore.
        stasis_restore_detached(d, &k);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &pids, "fx-mem from compressed and encrypted pages");
        wait_gone(&pids, 10, "the restored fx-mem");
        // So do the converted ones.
        stasis_restore_detached(&plain, &[]);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &pids, "fx-mem from converted images");
    })
}

/// dump --compress alone (no key): restore reads it.
#[test]
fn compressed_round_trip() {
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path("fx-mem", 33280), move |restored| {
        let w = launch("fx-mem", 33280, &[]);
        let dir = tempfile::tempdir().unwrap();
        stasis_dump(w.pid, dir.path(), &["--compress", "zstd"]);
        let pids = pids_of(dir.path());
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped tasks");
        let packed: u64 = names(dir.path(), |n| n.ends_with(".pack.img"))
            .iter()
            .map(|n| std::fs::metadata(dir.path().join(n)).unwrap().len())
            .sum();
        assert!(packed > 0);
        stasis_restore_detached(dir.path(), &[]);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &pids, "fx-mem from compressed pages");
    })
}
