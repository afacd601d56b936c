//! Hostile input to `stasis crit` and mistaken targets of `stasis dump` (issue: robustness):
//! devices and floods are refused or cost memory in proportion to their valid content, and
//! the errors say what is wrong.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::workload::Workload;

const BIN: &str = env!("CARGO_BIN_EXE_stasis");

/// Runs `stasis args` with `stdin`; returns (exit code, stdout, stderr, peak memory in KiB).
fn run_rss(args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String, i64) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stasis");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut err_pipe = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be filled.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(r, child.id() as i32, "wait4");
    let _ = feeder.join();
    (
        libc::WEXITSTATUS(status),
        out,
        errs.join().unwrap(),
        ru.ru_maxrss,
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `crit decode -i /dev/zero` grew past 18 GB: devices are refused, on standard input the
/// magic is checked before anything more is read.
#[test]
fn crit_refuses_devices_and_checks_the_magic_first() {
    for args in [
        &["crit", "decode", "-i", "/dev/zero"][..],
        &["crit", "info", "/dev/zero"],
        &["crit", "show", "/dev/zero"],
    ] {
        let (code, _, err, _) = run_rss(args, b"");
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("/dev/zero") && err.contains("character device"),
            "{err}"
        );
    }
    let (code, _, err, _) = run_rss(&["crit", "encode", "-i", "/dev/zero"], b"");
    assert_eq!(code, 1);
    assert!(err.contains("character device"), "{err}");
    // Zeros on standard input: an unknown magic, refused after 8 bytes.
    let (code, _, err, rss) = run_rss(&["crit", "decode"], &vec![0u8; 8 << 20]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown magic 0x0"), "{err}");
    assert!(rss < 64 << 10, "peak memory {rss} KiB");
}

/// A 20 MB file of empty entries (5 million) cost 745-992 MB in decode and info; a 15 MB
/// JSON array of empty entries cost 1.4 GB in encode. Now they cost about their size.
#[test]
fn floods_of_empty_entries_cost_memory_in_proportion() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("cpuinfo.img");
    let mut b = Vec::with_capacity(20 << 20);
    b.extend_from_slice(&0x5456_4319u32.to_le_bytes());
    b.extend_from_slice(&0x6140_4013u32.to_le_bytes()); // CPUINFO: no required fields
    b.resize(20 << 20, 0);
    std::fs::write(&img, &b).unwrap();
    let entries = (b.len() - 8) / 4;

    let (code, out, err, rss) = run_rss(&["crit", "info", s(&img)], b"");
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(&format!("\"count\": {entries}")), "{text}");
    assert!(rss < 100 << 10, "crit info: peak memory {rss} KiB");

    let json = dir.path().join("cpuinfo.json");
    let (code, _, err, rss) = run_rss(&["crit", "decode", "-i", s(&img), "-o", s(&json)], b"");
    assert_eq!(code, 0, "{err}");
    assert!(rss < 150 << 10, "crit decode: peak memory {rss} KiB");
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(text.starts_with("{\"magic\": \"CPUINFO\", \"entries\": [{}, {}"));

    // 15 MB of JSON: {"magic": "CPUINFO", "entries": [{}, {}, ...]}
    let mut doc = String::from("{\"magic\": \"CPUINFO\", \"entries\": [{}");
    while doc.len() < 15 << 20 {
        doc.push_str(", {}");
    }
    doc.push_str("]}");
    // `{"magic": "CPUINFO", "entries": [` {} (`, {}`)* `]}`
    let n = 1 + (doc.len() - 37) / 4;
    let back = dir.path().join("back.img");
    let (code, _, err, rss) = run_rss(&["crit", "encode", "-o", s(&back)], doc.as_bytes());
    assert_eq!(code, 0, "{err}");
    assert!(rss < 150 << 10, "crit encode: peak memory {rss} KiB");
    assert_eq!(std::fs::metadata(&back).unwrap().len() as usize, 8 + 4 * n);
}

/// crit encode refuses an entry without a required field (here fdinfo's `type`), like crit.
#[test]
fn crit_encode_refuses_an_entry_without_its_type() {
    let doc = br#"{"magic": "FDINFO", "entries": [{"id": 1, "flags": 0, "fd": 3}]}"#;
    let (code, out, err, _) = run_rss(&["crit", "encode"], doc);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("required field type of fdinfo_entry is missing"),
        "{err}"
    );
    let good =
        br#"{"magic": "FDINFO", "entries": [{"id": 1, "flags": 0, "type": "REG", "fd": 3}]}"#;
    let (code, _, err, _) = run_rss(&["crit", "encode"], good);
    assert_eq!(code, 0, "{err}");
}

/// `dump -t TID` of a thread that is not its process's leader says whose thread it is;
/// `-D` naming a file says it is not a directory.
#[test]
fn dump_says_what_is_wrong_with_its_target() {
    let w = Workload::ptrace(2, false, Duration::from_secs(60));
    let tid: i32 = std::fs::read_dir(format!("/proc/{}/task", w.pid))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .find(|&t| t != w.pid)
        .expect("a second thread");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["dump", "-t", &tid.to_string(), "-D", s(dir.path())])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{tid} is a thread of process {}", w.pid)),
        "{err}"
    );
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = Command::new(BIN)
        .args(["dump", "-t", &w.pid.to_string(), "-D", s(&file)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    assert!(!err.contains("No such file"), "{err}");
}
