//! What `stasis dump` captures beyond memory and registers, end to end through the CLI:
//!
//! * unix sockets (`dump_state_e2e/fx-unix.c`): stream, dgram and seqpacket socketpairs with
//!   queued data, a listener bound to a file path and one on an abstract name, a
//!   connect()/accept() pair with queued data both ways and one side shut down for writing,
//!   a socketpair shared between a parent and its child: dumped (tree killed), restored,
//!   the workload reads its queues, accepts a new connection and says PASS;
//! * a peer outside the tree is refused without `--ext-unix-sk` (and the task keeps running);
//! * seccomp (`dump_state_e2e/fx-seccomp.c`): two filters inherited by a second thread are
//!   written once to seccomp.img; after restore both threads still get EPERM/EACCES;
//! * cgroup.img: the workloads run in a cgroup of their own; the restored task is back in it,
//!   also when the cgroup was removed in between (created again).
//!
//! Every image is decoded by Debian's crit and by `stasis crit`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::deadline::with_deadline;
use common::dump::*;
use common::lock::restore_lock;
use common::workload::c_program;
use serde_json::Value;

/// Flags of the workloads: static, like the fixtures.
const STATIC: &[&str] = &["-static", "-pthread"];

/// Builds workload `name` from `src` and launches it at `base` (glibc tuned like the
/// fixtures) with its verdict file `result` and `args`, waiting for `result`.
fn launch_fx(
    name: &'static str,
    src: &'static str,
    base: i32,
    result: &Path,
    args: &[&Path],
) -> Workload {
    let bin = c_program(name, src, STATIC);
    let mut all = vec![result];
    all.extend_from_slice(args);
    launch_cmd(name, base, &tuned_cmd(&bin, &all), result)
}

/// Decodes an image with `stasis crit decode --pretty`.
fn crit(path: &Path) -> Value {
    let out = stasis_bin()
        .args(["crit", "decode", "--pretty", "-i"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stasis crit decode {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn log(images: &Path, name: &str) -> String {
    std::fs::read_to_string(images.join(name)).unwrap_or_default()
}

/// `stasis dump` of the workload (killing it), then reaps it so its pids are free.
fn dump_and_reap(w: &mut Workload, images: &Path, extra: &[&str]) {
    let out = stasis_bin()
        .args(["dump", "-t", &w.pid.to_string(), "-D"])
        .arg(images)
        .arg("--freeze-cgroup")
        .arg(&w.cgroup)
        .args(["-o", "dump.log", "-v4"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log(images, "dump.log")
    );
    debian_crit_decodes_all(images);
    let mut child = w.child.take().unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() || !gone(&[w.pid]) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "dumped task still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn restore(images: &Path) {
    let out = stasis_bin()
        .args(["restore", "-d", "-D"])
        .arg(images)
        .args(["-o", "restore.log", "-v4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log(images, "restore.log")
    );
}

/// The restored task is back in the workload's own v2 cgroup (it still exists).
fn assert_in_cgroup(pid: i32, cg: &Path) {
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "restored {pid} is not in {}: {}",
        cg.display(),
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
    );
}

#[test]
fn unix_sockets_dump_kill_restore_verify() {
    // Restores: one at a time across test binaries (pids must stay free).
    let _lock = restore_lock();
    let base = 33300;
    with_round_trip_deadline(120, cgroup_path("fx-unix", base), move |restored| {
        let work = tempfile::tempdir().unwrap();
        let socks = work.path().join("socks");
        std::fs::create_dir(&socks).unwrap();
        let result = work.path().join("result");
        let src = include_str!("dump_state_e2e/fx-unix.c");
        let mut w = launch_fx("fx-unix", src, base, &result, &[&socks]);
        *restored.lock().unwrap() = vec![w.pid];
        let images = tempfile::tempdir().unwrap();
        dump_and_reap(&mut w, images.path(), &[]);

        // What the images say.
        let files = crit(&images.path().join("files.img"));
        let usk: Vec<&Value> = files["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.get("usk"))
            .collect();
        let types: std::collections::BTreeSet<String> =
            usk.iter().map(|u| u["type"].to_string()).collect();
        for t in ["\"STREAM\"", "\"DGRAM\"", "\"SEQPACKET\""] {
            assert!(types.contains(t), "no {t} socket in {types:?}");
        }
        // The members CRIU 4.2 writes for every unix socket (sk-unix.c), file_perms for
        // bound path names. No fixture has unix sockets to compare with.
        for u in &usk {
            for k in [
                "id", "ino", "type", "state", "flags", "uflags", "backlog", "peer", "fown", "opts",
                "name", "ns_id",
            ] {
                assert!(u.get(k).is_some(), "usk without {k}: {u}");
            }
        }
        let listen_path = socks.join("listen.sock");
        let named = usk
            .iter()
            .find(|u| u["name"] == listen_path.to_str().unwrap())
            .unwrap_or_else(|| panic!("no socket named {}", listen_path.display()));
        assert_eq!(named["state"], "LISTEN");
        assert!(named.get("file_perms").is_some(), "{named}");
        assert!(
            usk.iter().any(|u| u.get("shutdown").is_some()),
            "shutdown state not recorded"
        );
        let q = crit(&images.path().join("sk-queues.img"));
        let n = q["entries"].as_array().unwrap().len();
        // 3 stream queues, 2 seqpacket and 3 dgram messages, 2 on the accepted pair.
        assert!(n >= 10, "{n} queued packets: {q}");

        restore(images.path());
        std::thread::sleep(Duration::from_millis(300));
        assert_in_cgroup(w.pid, &w.cgroup);
        verify_then_kill(&w, &[w.pid], "fx-unix restored from stasis' images");
    })
}

/// Connects to the abstract name argv[1], creates argv[2], waits.
const EXT_CLIENT: &str = r#"
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 2;
    setsid();
    struct sockaddr_un a;
    memset(&a, 0, sizeof(a));
    a.sun_family = AF_UNIX;
    size_t n = strlen(argv[1]);
    memcpy(a.sun_path + 1, argv[1], n);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + n)) return 1;
    close(open(argv[2], O_CREAT | O_WRONLY, 0600));
    for (;;) pause();
}
"#;

#[test]
fn unix_peer_outside_the_tree_needs_ext_unix_sk() {
    let base = 33400;
    let cg = cgroup_path("ext-unix", base);
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            let work = tempfile::tempdir().unwrap();
            let ready = work.path().join("ready");
            // The workload connects to a listener of this test process: its peer (the
            // accepted end, here) is outside the dumped tree.
            let name = format!("stasis-ext-unix-{}", std::process::id());
            let listener = std::os::unix::net::UnixListener::bind_addr(
                &<std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
                    name.as_bytes(),
                )
                    .unwrap(),
            )
            .unwrap();
            let bin = c_program("ext-client", EXT_CLIENT, STATIC);
            let cmd = format!("{} {name} {}", bin.display(), ready.display());
            let w = launch_cmd("ext-unix", base, &cmd, &ready);
            let (mine, _) = listener.accept().unwrap();
            let images = tempfile::tempdir().unwrap();
            let dump = |extra: &[&str]| {
                stasis_bin()
                    .args(["dump", "-t", &w.pid.to_string(), "-D"])
                    .arg(images.path())
                    .arg("--freeze-cgroup")
                    .arg(&w.cgroup)
                    .args(["-o", "dump.log", "-v4", "--leave-running"])
                    .args(extra)
                    .output()
                    .unwrap()
            };
            let out = dump(&[]);
            let err =
                String::from_utf8_lossy(&out.stderr).into_owned() + &log(images.path(), "dump.log");
            assert!(!out.status.success(), "dump with an outside peer succeeded");
            assert!(err.contains("--ext-unix-sk"), "{err}");
            assert!(all_running(&w), "the task does not run after a failed dump");
            let out = dump(&["--ext-unix-sk"]);
            assert!(
                out.status.success(),
                "dump --ext-unix-sk: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            debian_crit_decodes_all(images.path());
            let files = crit(&images.path().join("files.img"));
            let marked = files["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e.get("usk"))
                .any(|u| u["uflags"] == "0x1");
            assert!(marked, "external socket not marked USK_EXTERN: {files}");
            drop(mine);
        },
    )
}

#[test]
fn seccomp_filters_dump_kill_restore_verify() {
    // Restores: one at a time across test binaries (pids must stay free).
    let _lock = restore_lock();
    seccomp_round_trip(33500, false);
}

/// CRIU's soft cgroup mode: a recorded cgroup that is gone at restore time is created again
/// (with its recorded properties) and the task goes back into it.
#[test]
fn missing_cgroup_at_restore_is_created_again() {
    let _lock = restore_lock();
    seccomp_round_trip(33600, true);
}

fn seccomp_round_trip(base: i32, remove_cgroup: bool) {
    with_round_trip_deadline(120, cgroup_path("fx-seccomp", base), move |restored| {
        let work = tempfile::tempdir().unwrap();
        let result = work.path().join("result");
        let src = include_str!("dump_state_e2e/fx-seccomp.c");
        let mut w = launch_fx("fx-seccomp", src, base, &result, &[]);
        *restored.lock().unwrap() = vec![w.pid];
        let images = tempfile::tempdir().unwrap();
        dump_and_reap(&mut w, images.path(), &[]);

        // Two filters, the newer chained to the older, shared by both threads.
        let sc = crit(&images.path().join("seccomp.img"));
        let filters = sc["entries"][0]["seccomp_filters"].as_array().unwrap();
        assert_eq!(filters.len(), 2, "{sc}");
        assert_eq!(filters[1]["prev"], 0);
        let mut threads = 0;
        for e in std::fs::read_dir(images.path()).unwrap() {
            let p = e.unwrap().path();
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            if n.starts_with("core-") && n.ends_with(".img") {
                let c = crit(&p);
                let tc = &c["entries"][0]["thread_core"];
                assert_eq!(tc["seccomp_mode"], "filter", "{n}");
                assert_eq!(tc["seccomp_filter"], 1, "{n}");
                threads += 1;
            }
        }
        assert_eq!(threads, 2);

        if remove_cgroup {
            std::fs::remove_dir(&w.cgroup).unwrap();
        }
        restore(images.path());
        std::thread::sleep(Duration::from_millis(300));
        if remove_cgroup {
            let l = log(images.path(), "restore.log");
            assert!(
                l.contains(&format!("created cgroup {}", w.cgroup.display())),
                "{l}"
            );
        }
        assert_in_cgroup(w.pid, &w.cgroup);
        for t in std::fs::read_dir(format!("/proc/{}/task", w.pid)).unwrap() {
            let st = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            assert!(st.contains("Seccomp_filters:\t2\n"), "{st}");
        }
        verify_then_kill(&w, &[w.pid], "fx-seccomp restored from stasis' images");
    })
}
