//! Trees that own their namespaces: a self-checking workload started under `unshare --pid
//! --uts --ipc --net --cgroup --fork` (`tests/namespaces/ns-workload.c`: PID 1 of its pid
//! namespace with a child and a thread, its host name, kernel.msgmax changed in its IPC namespace, lo up
//! with a TCP listener on 127.0.0.1 in its network namespace) is dumped (the tree is
//! killed), restored, and checks itself: PASS.
//!
//! ```text
//! own_namespaces_round_trip   stasis -> stasis; the images (pstree pid 1, utsns, ipcns-var,
//!                             netns, netdev) decoded by Debian's crit and `stasis crit`; a
//!                             copy whose root owns a user namespace is refused by name
//! own_time_namespace          the same with --time and clock offsets: CLOCK_MONOTONIC goes on
//!                             from the dumped value
//! refused_by_name             user namespace, nested uts namespace, System V IPC objects
//! criu_cross                  STASIS_CRIU set: CRIU 4.2 restores stasis's images and stasis
//!                             CRIU's (skipped, saying so, without it); stasis -> CRIU
//!                             without the cgroup namespace (see there)
//! ```
//! Every restore is into a new pid namespace: the workload's PIDs (1, 2) are free there, so
//! these tests need no fixed host PID and no shared lock.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::criu::criu_ok;
use common::deadline::with_timeout;
use common::dump::{debian_crit_decodes_all, stasis_bin, stasis_dump};
use common::workload::c_program;

const NS_FLAGS: &[&str] = &["--pid", "--uts", "--ipc", "--net", "--cgroup", "--fork"];
const PORT: &str = "4242";

/// The workload running under `unshare`: `pid` is its PID here (PID 1 in its namespace).
struct NsWorkload {
    unshare: Child,
    pid: i32,
    work: tempfile::TempDir,
}

impl NsWorkload {
    fn result(&self) -> PathBuf {
        self.work.path().join("result")
    }
}

impl Drop for NsWorkload {
    fn drop(&mut self) {
        // Killing the namespace's init kills the namespace.
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn bin() -> PathBuf {
    c_program("ns-workload", include_str!("namespaces/ns-workload.c"), &[])
}

/// Starts the workload under `unshare FLAGS...` and waits until it is ready.
fn launch(flags: &[&str]) -> NsWorkload {
    let work = tempfile::tempdir().unwrap();
    let ready = work.path().join("ready");
    let unshare = Command::new("unshare")
        .args(flags)
        .arg(bin())
        .arg(&ready)
        .arg(work.path().join("result"))
        .arg(PORT)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run unshare");
    let up = unshare.id();
    let t0 = Instant::now();
    let mut w = NsWorkload {
        unshare,
        pid: 0,
        work,
    };
    while w.pid == 0 || !ready.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the workload never got ready"
        );
        if let Ok(result) = std::fs::read_to_string(w.result()) {
            panic!("workload setup failed: {result}");
        }
        let kids =
            std::fs::read_to_string(format!("/proc/{up}/task/{up}/children")).unwrap_or_default();
        w.pid = kids
            .split_whitespace()
            .next()
            .and_then(|k| k.parse().ok())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(20));
    }
    w
}

/// Dumps the workload with stasis (the tree is killed) and reaps `unshare`.
fn stasis_dump_killed(w: &mut NsWorkload, images: &Path) {
    stasis_dump(w.pid, images, &[]);
    let _ = w.unshare.wait();
}

/// `stasis restore -d --pidfile`: the restored root's PID here.
fn stasis_restore(images: &Path) -> i32 {
    let pidfile = images.join("root.pid");
    let out = common::restore::stasis_restore(
        images,
        &[
            "-d",
            "-v4",
            "-o",
            "restore.log",
            "--pidfile",
            pidfile.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "stasis restore: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(images.join("restore.log")).unwrap_or_default()
    );
    read_pid(&pidfile)
}

fn read_pid(p: &Path) -> i32 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

/// Asks the restored root (`root`, its PID here) to check itself; asserts PASS, then kills
/// it (and with it its pid namespace).
fn assert_pass(root: i32, result: &Path, what: &str) {
    let _ = std::fs::remove_file(result);
    let kill = |sig: &str| {
        let _ = Command::new("kill").args([sig, &root.to_string()]).status();
    };
    kill("-USR1");
    let t0 = Instant::now();
    let verdict = loop {
        if let Ok(v) = std::fs::read_to_string(result) {
            if v.ends_with('\n') {
                break v;
            }
        }
        if t0.elapsed() > Duration::from_secs(20) {
            kill("-9");
            panic!("{what}: no verdict from the restored workload");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    kill("-9");
    assert_eq!(verdict.trim(), "PASS", "{what}");
}

/// The JSON `stasis crit decode` makes of one image.
fn stasis_crit(p: &Path) -> serde_json::Value {
    let out = stasis_bin()
        .args(["crit", "decode", "-i"])
        .arg(p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stasis crit decode {}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A copy of the image directory `dir`.
fn copy_dir(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(dir).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    copy
}

/// The one image of `dir` whose name starts with `prefix`.
fn one_image(dir: &Path, prefix: &str) -> PathBuf {
    let f = common::dump::files_with_prefix(dir, prefix);
    assert_eq!(f.len(), 1, "{prefix}*: {f:?}");
    f[0].clone()
}

#[test]
fn own_namespaces_round_trip() {
    with_timeout(120, || {
        let mut w = launch(NS_FLAGS);
        let images = tempfile::tempdir().unwrap();
        let dir = images.path();
        stasis_dump_killed(&mut w, dir);
        // The images hold the pids inside the namespace.
        let pstree = stasis_crit(&dir.join("pstree.img"));
        let e = &pstree["entries"];
        assert_eq!(
            (e[0]["pid"].as_u64(), e[0]["sid"].as_u64()),
            (Some(1), Some(1)),
            "{e}"
        );
        assert_eq!(e[1]["ppid"], 1, "{e}");
        assert!(dir.join("core-1.img").exists() && dir.join("mm-1.img").exists());
        let uts = stasis_crit(&one_image(dir, "utsns-"));
        assert_eq!(uts["entries"][0]["nodename"], "stasis-ns");
        let ipc = stasis_crit(&one_image(dir, "ipcns-var-"));
        assert_eq!(ipc["entries"][0]["msg_ctlmax"], 12345);
        let dev = stasis_crit(&one_image(dir, "netdev-"));
        assert_eq!(dev["entries"][0]["name"], "lo");
        one_image(dir, "netns-");
        // Namespaces of the root differ from inventory's root_ids: CRIU's ns mask.
        let ids = stasis_crit(&dir.join("ids-1.img"));
        let inv = stasis_crit(&dir.join("inventory.img"));
        for k in [
            "pid_ns_id",
            "net_ns_id",
            "ipc_ns_id",
            "uts_ns_id",
            "cgroup_ns_id",
        ] {
            assert_ne!(
                ids["entries"][0][k], inv["entries"][0]["root_ids"][k],
                "{k}"
            );
        }
        debian_crit_decodes_all(dir);

        // A root owning a user namespace is refused by name, nothing is started.
        let copy = copy_dir(dir);
        common::restore::edit_single::<stasis::images::pb::TaskKobjIdsEntry>(
            &copy.path().join("ids-1.img"),
            |ids| ids.user_ns_id = Some(999),
        );
        let out = common::restore::stasis_restore(copy.path(), &["-d"]);
        assert!(!out.status.success(), "a user namespace restored");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("user namespace"), "{err}");

        let root = stasis_restore(dir);
        assert_pass(root, &w.result(), "stasis -> stasis");
    })
}

#[test]
fn own_time_namespace() {
    with_timeout(120, || {
        let mut flags = NS_FLAGS.to_vec();
        flags.extend(["--time", "--monotonic", "100000", "--boottime", "200000"]);
        let mut w = launch(&flags);
        let images = tempfile::tempdir().unwrap();
        stasis_dump_killed(&mut w, images.path());
        let t = stasis_crit(&one_image(images.path(), "timens-"));
        let mono = t["entries"][0]["monotonic"]["tv_sec"].as_u64().unwrap();
        assert!(
            mono >= 100000,
            "the namespace's clock, offset included: {t}"
        );
        assert!(
            !images.path().join("timens-0.img").exists(),
            "timens-0 is for trees without a time namespace"
        );
        let root = stasis_restore(images.path());
        let offsets = std::fs::read_to_string(format!("/proc/{root}/timens_offsets")).unwrap();
        assert!(!offsets.contains("monotonic 0 0"), "{offsets}");
        assert_pass(root, &w.result(), "time namespace");
    })
}

/// Dumps `unshare ARGS...`'s child (`--shell-job`: it is in the test's session); the dump
/// must fail naming `needle` and leave the tree running.
fn refused(args: &[&str], needle: &str) {
    let mut unshare = Command::new("unshare")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = unshare.id();
    let t0 = Instant::now();
    let pid = loop {
        let kids =
            std::fs::read_to_string(format!("/proc/{up}/task/{up}/children")).unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            break k.to_string();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{args:?} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the shell start what it starts.
    std::thread::sleep(Duration::from_millis(500));
    let images = tempfile::tempdir().unwrap();
    let out = stasis_bin()
        .args(["dump", "--shell-job", "-t", &pid, "-D"])
        .arg(images.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let alive = Path::new(&format!("/proc/{pid}")).exists();
    let _ = Command::new("kill").args(["-9", &pid]).status();
    let _ = unshare.kill();
    let _ = unshare.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} dumped");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(alive, "a refused dump left the tree dead");
}

#[test]
fn refused_by_name() {
    with_timeout(90, || {
        refused(
            &["--user", "--map-root-user", "--fork", "sleep", "60"],
            "own user namespace",
        );
        refused(
            &[
                "--uts",
                "--fork",
                "sh",
                "-c",
                "unshare --uts sleep 60 & wait",
            ],
            "nested uts namespaces",
        );
        refused(
            &[
                "--ipc",
                "--fork",
                "sh",
                "-c",
                "ipcmk -Q >/dev/null; exec sleep 60",
            ],
            "System V msg object",
        );
    })
}

#[test]
fn criu_cross() {
    let Some(criu) = std::env::var_os("STASIS_CRIU").map(PathBuf::from) else {
        println!("namespaces criu_cross: skipped: STASIS_CRIU unset");
        return;
    };
    with_timeout(180, move || {
        // stasis dumps, CRIU restores. Not with a cgroup namespace: CRIU roots it at the
        // `cgns_prefix` of the root's set in cgroup.img, which stasis does not write yet
        // (its own restore roots it at the task's cgroup); CRIU's namespace would be rooted
        // above the task's cgroup (the workload sees it and fails).
        let no_cgroupns: Vec<&str> = NS_FLAGS
            .iter()
            .copied()
            .filter(|f| *f != "--cgroup")
            .collect();
        let mut w = launch(&no_cgroupns);
        let images = tempfile::tempdir().unwrap();
        stasis_dump_killed(&mut w, images.path());
        let pidfile = images.path().join("criu.pid");
        criu_ok(
            &criu,
            &["restore", "-d", "--pidfile", pidfile.to_str().unwrap()],
            images.path(),
            "restore.log",
        );
        assert_pass(read_pid(&pidfile), &w.result(), "stasis -> criu");
        drop(w);

        // CRIU dumps (its network lock needs iptables), stasis restores.
        let mut w = launch(NS_FLAGS);
        let images = tempfile::tempdir().unwrap();
        criu_ok(
            &criu,
            &["dump", "-t", &w.pid.to_string()],
            images.path(),
            "dump.log",
        );
        let _ = w.unshare.wait();
        // Its cgroup namespace rooted above the task's cgroup (a shorter `cgns_prefix`):
        // refused by name.
        let copy = copy_dir(images.path());
        let mut shortened = false;
        common::restore::edit_single::<stasis::images::pb::CgroupEntry>(
            &copy.path().join("cgroup.img"),
            |cg| {
                for m in cg.sets.iter_mut().flat_map(|s| s.ctls.iter_mut()) {
                    if m.cgns_prefix.is_some_and(|p| p > 1) {
                        m.cgns_prefix = Some(1);
                        shortened = true;
                    }
                }
            },
        );
        if shortened {
            let out = common::restore::stasis_restore(copy.path(), &["-d"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains("cgroup namespace"),
                "{err}"
            );
        }
        let root = stasis_restore(images.path());
        assert_pass(root, &w.result(), "criu -> stasis");
    })
}
