//! The page-server protocol against CRIU 4.2 over loopback, both ways:
//! `stasis dump` → `criu page-server` and `criu dump` → `stasis page-server` (plain and over
//! `--tls` with a CA and certificate made by the test), the images then
//! restored by stasis and verified by the workload itself.
//!
//! Runs when `STASIS_CRIU` names a CRIU 4.2 binary; otherwise each test says SKIPPED on the
//! test output (not captured) and passes.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::dump::*;
use common::lock::restore_lock;
use common::page_server;
use common::pki::Ca;

fn criu(test: &str) -> Option<PathBuf> {
    match std::env::var_os("STASIS_CRIU") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            // Straight to the test output, past the capture: the skip is visible.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: set STASIS_CRIU=/path/to/criu (CRIU 4.2) to run it"
            );
            None
        }
    }
}

fn pages_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pages-"))
        .collect();
    v.sort();
    v
}

/// `--tls` options for a CRIU/stasis pair: a CA and one certificate for 127.0.0.1, made in
/// `dir` (both sides may use the same certificate: mutual authentication only needs the CA).
fn tls_pair(dir: &Path) -> Vec<String> {
    let ca = Ca::new(dir, "ca");
    let me = ca.leaf("peer", &["127.0.0.1"], 1);
    vec![
        "--tls".into(),
        "--tls-cacert".into(),
        ca.cert.display().to_string(),
        "--tls-cert".into(),
        me.cert.display().to_string(),
        "--tls-key".into(),
        me.key.display().to_string(),
    ]
}

#[test]
fn stasis_dump_to_criu_page_server() {
    stasis_dump_to_criu("stasis_dump_to_criu_page_server", 33340, false);
}

#[test]
fn stasis_dump_to_criu_page_server_tls() {
    stasis_dump_to_criu("stasis_dump_to_criu_page_server_tls", 37220, true);
}

fn stasis_dump_to_criu(test: &str, base: i32, tls: bool) {
    let Some(criu) = criu(test) else {
        return;
    };
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path("fx-mem", base), move |restored| {
        let pki = tempfile::tempdir().unwrap();
        let tls: Vec<String> = if tls { tls_pair(pki.path()) } else { vec![] };
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        let w = launch("fx-mem", base, &[]);
        let dump_dir = tempfile::tempdir().unwrap();
        let ps_dir = tempfile::tempdir().unwrap();
        let server = page_server::start(&criu, ps_dir.path(), &tls);
        let port = server.port.to_string();
        let mut args = vec!["--page-server", "--address", "127.0.0.1", "--port", &port];
        args.extend_from_slice(&tls);
        stasis_dump(w.pid, dump_dir.path(), &args);
        server.wait_ok(ps_dir.path());
        if !tls.is_empty() {
            let log = std::fs::read_to_string(ps_dir.path().join("page-server.log")).unwrap();
            assert!(log.contains("TLS handshake completed"), "{log}");
        }
        let pages = pages_files(ps_dir.path());
        assert!(pages.contains(&"pages-65537.img".to_string()), "{pages:?}");
        assert!(page_server::merge(ps_dir.path(), dump_dir.path()) >= 4);
        debian_crit_decodes_all(dump_dir.path());
        let pids = pids_of(dump_dir.path());
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped tasks");
        stasis_restore_detached(dump_dir.path(), &[]);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &pids, "fx-mem dumped by stasis into criu page-server");
    })
}

fn criu_dump_to_stasis(
    test: &str,
    base: i32,
    server_extra: Vec<String>,
    restore_extra: Vec<String>,
    tls: bool,
) {
    let Some(criu) = criu(test) else {
        return;
    };
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path("fx-mem", base), move |restored| {
        let pki = tempfile::tempdir().unwrap();
        let tls: Vec<String> = if tls { tls_pair(pki.path()) } else { vec![] };
        let w = launch("fx-mem", base, &[]);
        let dump_dir = tempfile::tempdir().unwrap();
        let ps_dir = tempfile::tempdir().unwrap();
        let extra: Vec<&str> = server_extra
            .iter()
            .chain(&tls)
            .map(String::as_str)
            .collect();
        let stasis = PathBuf::from(env!("CARGO_BIN_EXE_stasis"));
        let server = page_server::start(&stasis, ps_dir.path(), &extra);
        let out = Command::new(&criu)
            .args(["dump", "-t", &w.pid.to_string(), "-D"])
            .arg(dump_dir.path())
            .args(["--page-server", "--address", "127.0.0.1"])
            .args(["--port", &server.port.to_string()])
            .args(["-o", "dump.log", "-v4"])
            .args(&tls)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "criu dump: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dump_dir.path().join("dump.log")).unwrap_or_default()
        );
        server.wait_ok(ps_dir.path());
        if !tls.is_empty() {
            let log = std::fs::read_to_string(dump_dir.path().join("dump.log")).unwrap();
            assert!(log.contains("TLS handshake completed"), "{log}");
        }
        assert!(page_server::merge(ps_dir.path(), dump_dir.path()) >= 4);
        let pids = pids_of(dump_dir.path());
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped tasks");
        let r: Vec<&str> = restore_extra.iter().map(String::as_str).collect();
        stasis_restore_detached(dump_dir.path(), &r);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &pids, "fx-mem dumped by criu into stasis page-server");
    })
}

#[test]
fn criu_dump_to_stasis_page_server() {
    criu_dump_to_stasis(
        "criu_dump_to_stasis_page_server",
        33400,
        vec![],
        vec![],
        false,
    );
}

#[test]
fn criu_dump_to_stasis_page_server_tls() {
    criu_dump_to_stasis(
        "criu_dump_to_stasis_page_server_tls",
        37280,
        vec![],
        vec![],
        true,
    );
}

#[test]
fn criu_dump_to_stasis_page_server_packed() {
    let keys = std::env::temp_dir().join(format!("stasis-ps-criu-key-{}", std::process::id()));
    std::fs::write(&keys, [0x33u8; 32]).unwrap();
    let k = keys.to_string_lossy().into_owned();
    criu_dump_to_stasis(
        "criu_dump_to_stasis_page_server_packed",
        33460,
        vec![
            "--compress".into(),
            "zstd:1".into(),
            "--encrypt-key".into(),
            k.clone(),
        ],
        vec!["--encrypt-key".into(), k],
        false,
    );
    let _ = std::fs::remove_file(&keys);
}
