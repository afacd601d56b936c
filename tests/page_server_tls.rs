//! Page-server TLS end to end with the command lines (`--tls`, CRIU's X.509 mutual
//! authentication): `stasis dump` → `stasis page-server` over TLS → restore, verified by the
//! workload; a server the dump must not trust (another CA, a certificate for another name)
//! fails the dump with the peer named and the target left running. The CA and certificates
//! are made by the test (tests/common/pki.rs).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dump::*;
use common::lock::restore_lock;
use common::page_server;
use common::pki::{Ca, Leaf};

fn stasis_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stasis"))
}

/// `--tls --tls-cacert CA --tls-cert C --tls-key K`.
fn tls_args(ca: &Path, me: &Leaf) -> Vec<String> {
    vec![
        "--tls".into(),
        "--tls-cacert".into(),
        ca.display().to_string(),
        "--tls-cert".into(),
        me.cert.display().to_string(),
        "--tls-key".into(),
        me.key.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn dump_to_page_server_over_tls_and_restore() {
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path("fx-mem", 37100), move |restored| {
        let pki = tempfile::tempdir().unwrap();
        let ca = Ca::new(pki.path(), "ca");
        let srv = ca.leaf("server", &["127.0.0.1"], 1);
        let cli = ca.leaf("client", &["127.0.0.1"], 2);
        let crl = ca.crl(&[99]);
        let w = launch("fx-mem", 37100, &[]);
        let dump_dir = tempfile::tempdir().unwrap();
        let ps_dir = tempfile::tempdir().unwrap();
        let mut sa = tls_args(&ca.cert, &srv);
        sa.extend(["--tls-cacrl".into(), crl.display().to_string()]);
        let server = page_server::start(&stasis_path(), ps_dir.path(), &strs(&sa));
        let port = server.port.to_string();
        let mut da: Vec<String> = ["--page-server", "--address", "127.0.0.1", "--port", &port]
            .map(String::from)
            .to_vec();
        da.extend(tls_args(&ca.cert, &cli));
        stasis_dump(w.pid, dump_dir.path(), &strs(&da));
        server.wait_ok(ps_dir.path());
        let log = std::fs::read_to_string(ps_dir.path().join("page-server.log")).unwrap();
        assert!(log.contains("tls: handshake with"), "{log}");
        assert!(page_server::merge(ps_dir.path(), dump_dir.path()) >= 4);
        let pids = pids_of(dump_dir.path());
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped tasks");
        stasis_restore_detached(dump_dir.path(), &[]);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &pids, "fx-mem through a stasis page server over TLS");
    })
}

/// `stasis dump` to a TLS page server, which must fail: returns the dump's stderr and log.
fn refused_dump(pid: i32, server_tls: &[String], dump_tls: &[String]) -> String {
    let dump_dir = tempfile::tempdir().unwrap();
    let ps_dir = tempfile::tempdir().unwrap();
    let server = page_server::start(&stasis_path(), ps_dir.path(), &strs(server_tls));
    let out = stasis_bin()
        .args(["dump", "-t", &pid.to_string(), "-D"])
        .arg(dump_dir.path())
        .args([
            "-o",
            "dump.log",
            "-v4",
            "--page-server",
            "--address",
            "127.0.0.1",
        ])
        .args(["--port", &server.port.to_string()])
        .args(dump_tls)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the dump succeeded");
    drop(server);
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dump_dir.path().join("dump.log")).unwrap_or_default()
    )
}

#[test]
fn untrusted_page_server_fails_the_dump_and_target_runs() {
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path("fx-mem", 37160), move |_restored| {
        let pki = tempfile::tempdir().unwrap();
        let ca = Ca::new(pki.path(), "ca");
        let other = Ca::new(pki.path(), "other");
        let cli = ca.leaf("client", &["127.0.0.1"], 2);
        let w = launch("fx-mem", 37160, &[]);
        let peer = "page server 127.0.0.1:";

        let stranger = other.leaf("stranger", &["127.0.0.1"], 3);
        let elsewhere = ca.leaf("elsewhere", &["10.9.9.9"], 4);
        let srv = ca.leaf("server", &["127.0.0.1"], 5);
        let cases = [
            // A server whose certificate another CA signed.
            (
                tls_args(&other.cert, &stranger),
                tls_args(&ca.cert, &cli),
                "UnknownIssuer",
            ),
            // A server certificate for another address.
            (
                tls_args(&ca.cert, &elsewhere),
                tls_args(&ca.cert, &cli),
                "not valid for name",
            ),
            // A dump without TLS to a TLS server: the server refuses, the dump fails.
            (tls_args(&ca.cert, &srv), vec![], ""),
        ];
        for (server_tls, dump_tls, why) in cases {
            let e = refused_dump(w.pid, &server_tls, &dump_tls);
            assert!(e.contains(peer) && e.contains(why), "{e}");
            assert!(
                all_running(&w),
                "the target does not run after the refused dump"
            );
        }
        verify_then_kill(&w, &[], "fx-mem after refused TLS dumps");
    })
}
