//! Incremental dumps end to end: `stasis pre-dump` chains, `stasis dump --prev-images-dir`,
//! `stasis restore` of the chain, and a workload that checks its own memory after restore
//! (every page's version matches the table it keeps in other pages: a stale page fails it).
//! Every dirty-tracking fallback (new VMA, mremap, fork, exec, killed tracker) must give a
//! restorable chain without a stale page. With STASIS_CRIU=/path/to/criu (4.2), the chain is
//! also restored by CRIU.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::dump::*;
use common::lock::restore_lock;
use serde_json::Value;

/// Launches the dirty workload (tests/common/workload_dirty.c) at a free pid from `base`.
fn launch_dirty(name: &str, base: i32, mib: u32, mode: &str) -> Workload {
    let bin = common::workload::c_program(
        "workload_dirty",
        include_str!("common/workload_dirty.c"),
        &[],
    );
    let results = PathBuf::from("/tmp/stasis-dump-tests");
    std::fs::create_dir_all(&results).unwrap();
    let result = results.join(format!("{name}-{}-{base}.result", std::process::id()));
    for suffix in ["", ".ready", ".acted", ".child"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", result.display()));
    }
    let mut w = launch_program(
        name,
        base,
        bin.to_str().unwrap(),
        &[result.to_str().unwrap(), &mib.to_string(), mode],
    );
    w.result = result.clone();
    wait_file(&format!("{}.ready", result.display()), 20);
    w
}

fn wait_file(path: &str, secs: u64) {
    let t0 = Instant::now();
    while !Path::new(path).exists() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "no {path}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `stasis ARGS... -o LOG -v4`; fails the test with the log unless it succeeds.
fn stasis(args: &[&str], dir: &Path, log: &str) -> String {
    stasis_ok(args, dir, log, &[])
}

/// Pre-dumps `w` `depth` times into ROOT/0.. (each with the previous as parent; mode
/// `mode(i)`), calling `between(i)` after each, then dumps it into ROOT/final with the last
/// as parent. Returns the final directory.
fn chain(
    w: &Workload,
    root: &Path,
    depth: usize,
    mode: impl Fn(usize) -> &'static str,
    mut between: impl FnMut(usize),
    final_extra: &[&str],
) -> PathBuf {
    let pid = w.pid.to_string();
    for i in 0..depth {
        let d = root.join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        let prev = format!("../{}", i.wrapping_sub(1));
        let mut args = vec!["pre-dump", "-t", &pid, "--pre-dump-mode", mode(i)];
        if i > 0 {
            args.extend(["--prev-images-dir", &prev]);
        }
        stasis(&args, &d, "pre-dump.log");
        assert!(d.join(format!("pagemap-{pid}.img")).exists());
        assert!(
            !d.join("core-{pid}.img").exists() && !d.join("pstree.img").exists(),
            "a pre-dump writes memory only"
        );
        between(i);
        std::thread::sleep(Duration::from_millis(50));
    }
    let fin = root.join("final");
    std::fs::create_dir_all(&fin).unwrap();
    let prev = format!("../{}", depth.wrapping_sub(1));
    let mut args = vec!["dump", "-t", &pid];
    if depth > 0 {
        args.extend(["--prev-images-dir", &prev]);
    }
    args.extend_from_slice(final_extra);
    stasis(&args, &fin, "dump.log");
    fin
}

/// `stats-dump` of an image directory: (pages written, pages left to the parent).
fn page_stats(dir: &Path) -> (u64, u64) {
    let doc = decode(&dir.join("stats-dump"));
    let d: &Value = &doc["entries"][0]["dump"];
    (
        d["pages_written"].as_u64().unwrap(),
        d["pages_skipped_parent"].as_u64().unwrap_or(0),
    )
}

/// Restores `dir` (the workload's tasks gone first) and has the workload verify itself.
fn restore_and_verify(w: &Workload, dir: &Path, restored: &Restored, what: &str) {
    let pids = pids_of(dir);
    *restored.lock().unwrap() = pids.clone();
    wait_gone(&pids, 10, "the dumped tree");
    stasis(&["restore", "-d"], dir, "restore.log");
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(criu) = std::env::var("STASIS_CRIU") {
        // The same chain through CRIU 4.2 (after stasis' own restore was judged).
        let verdict = verify(w);
        kill_pids(&pids);
        assert_eq!(verdict, "PASS", "{what} (stasis restore)");
        wait_gone(&pids, 10, "the restored tree");
        let out = Command::new(criu)
            .args(["restore", "-d", "-o", "criu-restore.log", "-v4", "-D"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "criu restore of the chain: {}",
            std::fs::read_to_string(dir.join("criu-restore.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    verify_then_kill(w, &pids, what);
}

/// A busy workload pre-dumped `depth` times, then dumped and restored.
fn busy_chain(name: &'static str, base: i32, depth: usize, mode: fn(usize) -> &'static str) {
    let _lock = restore_lock();
    with_round_trip_deadline(
        60 + 15 * depth as u64,
        cgroup_path(name, base),
        move |restored| {
            let w = launch_dirty(name, base, 32, "busy");
            let root = tempfile::tempdir().unwrap();
            let fin = chain(&w, root.path(), depth, mode, |_| {}, &[]);
            let (written, parent) = page_stats(&fin);
            assert!(
                parent > 0,
                "the final dump left no page to the chain ({written} written)"
            );
            // The last pre-dump names the tracker; the final dump (no --track-mem) stopped it.
            let rec = root
                .path()
                .join(format!("{}/dirty-tracker.json", depth - 1));
            let tracker: Value =
                serde_json::from_str(&std::fs::read_to_string(rec).unwrap()).unwrap();
            let tpid = tracker["pid"].as_i64().unwrap() as i32;
            wait_gone(&[tpid], 10, "the tracker after the final dump");
            restore_and_verify(
                &w,
                &fin,
                &restored,
                &format!("{name} after a chain of {depth}"),
            );
        },
    )
}

#[test]
fn chain_depth_1() {
    busy_chain("inc-d1", 33000, 1, |_| "splice");
}

#[test]
fn chain_depth_3() {
    busy_chain("inc-d3", 33040, 3, |_| "read");
}

#[test]
fn chain_depth_10() {
    busy_chain("inc-d10", 33080, 10, |i| {
        if i % 2 == 0 {
            "splice"
        } else {
            "read"
        }
    });
}

/// The workload does its MODE's action between two pre-dumps; the chain still restores
/// without a stale page.
fn fallback(name: &'static str, base: i32, mode: &'static str) -> (u64, u64) {
    let _lock = restore_lock();
    with_round_trip_deadline(90, cgroup_path(name, base), move |restored| {
        let w = launch_dirty(name, base, 16, mode);
        let root = tempfile::tempdir().unwrap();
        let acted = format!("{}.acted", w.result.display());
        let fin = chain(
            &w,
            root.path(),
            2,
            |_| "splice",
            |i| {
                if i == 0 {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(w.pid),
                        nix::sys::signal::Signal::SIGUSR1,
                    )
                    .unwrap();
                    wait_file(&acted, 10);
                }
            },
            &[],
        );
        let stats = page_stats(&fin);
        restore_and_verify(&w, &fin, &restored, &format!("{name}: {mode} after arming"));
        stats
    })
}

#[test]
fn fallback_new_vma() {
    fallback("inc-newvma", 33200, "newvma");
}

#[test]
fn fallback_mremap() {
    fallback("inc-mremap", 33240, "mremap");
}

#[test]
fn fallback_forked_child() {
    fallback("inc-fork", 33280, "fork");
}

#[test]
fn fallback_exec() {
    fallback("inc-exec", 33320, "exec");
}

/// The tracker is killed while the workload runs: the workload keeps running (async
/// write-protect never waits for anybody), and the next dump, finding no tracker, is full.
#[test]
fn killed_tracker_gives_a_full_dump_and_the_target_keeps_running() {
    let _lock = restore_lock();
    let (name, base) = ("inc-killtr", 33360);
    with_round_trip_deadline(90, cgroup_path(name, base), move |restored| {
        let w = launch_dirty(name, base, 16, "busy");
        let root = tempfile::tempdir().unwrap();
        let d0 = root.path().join("0");
        std::fs::create_dir_all(&d0).unwrap();
        stasis(&["pre-dump", "-t", &w.pid.to_string()], &d0, "pre-dump.log");
        let rec: Value =
            serde_json::from_str(&std::fs::read_to_string(d0.join("dirty-tracker.json")).unwrap())
                .unwrap();
        let tpid = rec["pid"].as_i64().unwrap() as i32;
        kill_pids(&[tpid]);
        wait_gone(&[tpid], 10, "the killed tracker");
        // Still running and writing: its context switches go on, and it answers.
        let switches = || {
            std::fs::read_to_string(format!("/proc/{}/status", w.pid))
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .map(|v| v.trim().parse::<u64>().unwrap())
                .unwrap()
        };
        let s0 = switches();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            switches() > s0 + 10,
            "the workload stopped after its tracker died"
        );
        assert_eq!(verify(&w), "PASS", "the workload after its tracker died");
        let fin = root.path().join("final");
        std::fs::create_dir_all(&fin).unwrap();
        stasis(
            &[
                "dump",
                "-t",
                &w.pid.to_string(),
                "--prev-images-dir",
                "../0",
            ],
            &fin,
            "dump.log",
        );
        let (written, parent) = page_stats(&fin);
        assert_eq!(parent, 0, "no tracker: nothing may come from the parent");
        assert!(written >= 16 * 256, "a full dump ({written} pages)");
        restore_and_verify(&w, &fin, &restored, "after the tracker was killed");
    })
}

/// CRIU's iterative dumps: `dump -R --track-mem`, then `dump --prev-images-dir`.
#[test]
fn dump_leave_running_track_mem_then_incremental_dump() {
    let _lock = restore_lock();
    let (name, base) = ("inc-iter", 33560);
    with_round_trip_deadline(90, cgroup_path(name, base), move |restored| {
        let w = launch_dirty(name, base, 16, "busy");
        let root = tempfile::tempdir().unwrap();
        let (d0, d1) = (root.path().join("0"), root.path().join("1"));
        std::fs::create_dir_all(&d0).unwrap();
        std::fs::create_dir_all(&d1).unwrap();
        let pid = w.pid.to_string();
        stasis(&["dump", "-t", &pid, "-R", "--track-mem"], &d0, "dump.log");
        let inv = decode(&d0.join("inventory.img"));
        assert!(
            inv["entries"][0]["dump_uptime"].as_u64().unwrap() > 0,
            "--track-mem records the uptime"
        );
        assert_eq!(verify(&w), "PASS", "the workload left running");
        stasis(
            &["dump", "-t", &pid, "--prev-images-dir", "../0"],
            &d1,
            "dump.log",
        );
        assert!(page_stats(&d1).1 > 0, "the second dump used its parent");
        restore_and_verify(&w, &d1, &restored, "after an iterative dump");
    })
}

/// A dump that fails after the tracker re-armed the pages it read must not lose them: the
/// retry against the same parent answers them again; a dump naming an older parent than the
/// last one committed gets everything dirty.
#[test]
fn failed_dump_retry_and_older_parent_are_not_stale() {
    let _lock = restore_lock();
    let (name, base) = ("inc-retry", 33600);
    with_round_trip_deadline(120, cgroup_path(name, base), move |restored| {
        let w = launch_dirty(name, base, 16, "busy");
        let root = tempfile::tempdir().unwrap();
        let pid = w.pid.to_string();
        let dir = |n: &str| {
            let d = root.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        stasis(&["pre-dump", "-t", &pid], &dir("0"), "pre-dump.log");
        stasis(
            &["pre-dump", "-t", &pid, "--prev-images-dir", "../0"],
            &dir("1"),
            "pre-dump.log",
        );
        let failed = stasis_bin()
            .args(["dump", "-t", &pid, "--prev-images-dir", "../1", "-D"])
            .arg(dir("failed"))
            .env("STASIS_FAULT", "images")
            .output()
            .unwrap();
        assert!(
            !failed.status.success(),
            "the injected fault did not fail the dump"
        );
        std::thread::sleep(Duration::from_millis(200));
        let retry = dir("retry");
        stasis(
            &[
                "dump",
                "-t",
                &pid,
                "-R",
                "--track-mem",
                "--prev-images-dir",
                "../1",
            ],
            &retry,
            "dump.log",
        );
        assert!(page_stats(&retry).1 > 0, "the retry used its parent");
        stasis(
            &["dump", "-t", &pid, "-R", "--prev-images-dir", "../0"],
            &dir("older"),
            "dump.log",
        );
        assert_eq!(
            page_stats(&root.path().join("older")).1,
            0,
            "a parent older than the last commit: everything dirty"
        );
        kill_pids(&[w.pid]);
        restore_and_verify(&w, &retry, &restored, "the retry of a failed dump");
    })
}

/// An idle workload: the final dump after two pre-dumps writes few pages.
#[test]
fn idle_chain_final_dump_writes_few_pages() {
    let _lock = restore_lock();
    let (name, base) = ("inc-idle", 33400);
    with_round_trip_deadline(90, cgroup_path(name, base), move |restored| {
        let w = launch_dirty(name, base, 64, "idle");
        let root = tempfile::tempdir().unwrap();
        let fin = chain(&w, root.path(), 2, |_| "splice", |_| {}, &[]);
        let first = page_stats(&root.path().join("0"));
        let (written, parent) = page_stats(&fin);
        assert!(
            first.0 >= 64 * 256,
            "the first pre-dump copies everything: {first:?}"
        );
        assert!(parent >= 64 * 256, "pages left to the chain: {parent}");
        assert!(
            written * 20 < first.0,
            "the final dump of an idle workload wrote {written} pages (first pre-dump {})",
            first.0
        );
        restore_and_verify(&w, &fin, &restored, "an idle workload after a chain");
    })
}

/// A fixture workload (CRIU's own test programs) through a chain of two pre-dumps.
fn fixture_chain(name: &'static str, base: i32, args: Vec<String>) {
    let _lock = restore_lock();
    with_round_trip_deadline(90, cgroup_path(name, base), move |restored| {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let w = launch(name, base, &a);
        let root = tempfile::tempdir().unwrap();
        let fin = chain(
            &w,
            root.path(),
            2,
            |i| if i == 0 { "read" } else { "splice" },
            |_| {},
            &[],
        );
        restore_and_verify(&w, &fin, &restored, &format!("{name} through a chain"));
    })
}

#[test]
fn fixture_chain_fx_mem() {
    fixture_chain("fx-mem", 33440, vec![]);
}

#[test]
fn fixture_chain_fx_tree() {
    fixture_chain("fx-tree", 33480, vec![]);
}

#[test]
fn fixture_chain_fx_threads() {
    fixture_chain("fx-threads", 33520, vec!["8".into()]);
}

#[test]
fn check_names_the_tracking_method() {
    let out = stasis_bin()
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // This kernel has no soft-dirty: userfaultfd write-protect it is.
    assert!(text.contains("method: uffd-wp-async"), "{text}");
}

/// STASIS_CRIU, or None after saying on the test output (past the capture) that the test is
/// skipped.
fn criu_or_skip(test: &str) -> Option<PathBuf> {
    use std::io::Write;
    let p = std::env::var_os("STASIS_CRIU").map(PathBuf::from);
    if p.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: set STASIS_CRIU=/path/to/criu (CRIU 4.2) to run it"
        );
    }
    p
}

/// A chain pre-dump → pre-dump → dump entirely through page servers (one session per
/// iteration, each server directory with the previous one as `--prev-images-dir`), `server`
/// being `stasis` or CRIU 4.2. The dump side keeps only its non-memory images and the record
/// of the pagemaps it sent; the final dump's images are put next to the last server's pages
/// and that directory is restored (by stasis, and by CRIU 4.2 when STASIS_CRIU is set).
fn page_server_chain(name: &'static str, base: i32, server: PathBuf) {
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path(name, base), move |restored| {
        let w = launch_dirty(name, base, 32, "busy");
        let root = tempfile::tempdir().unwrap();
        let pid = w.pid.to_string();
        let names = ["0", "1", "final"];
        let mut written = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let (d, s) = (root.path().join(n), root.path().join(format!("s{n}")));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::create_dir_all(&s).unwrap();
            let (prev, sprev) = if i > 0 {
                (
                    format!("../{}", names[i - 1]),
                    format!("../s{}", names[i - 1]),
                )
            } else {
                (String::new(), String::new())
            };
            let mut sextra = vec![];
            if i > 0 {
                sextra.extend(["--prev-images-dir", sprev.as_str()]);
            }
            let srv = common::page_server::start(&server, &s, &sextra);
            let port = srv.port.to_string();
            let verb = if *n == "final" { "dump" } else { "pre-dump" };
            let mut args = vec![verb, "-t", &pid];
            if i > 0 {
                args.extend(["--prev-images-dir", prev.as_str()]);
            }
            args.extend(["--page-server", "--address", "127.0.0.1", "--port", &port]);
            stasis(&args, &d, &format!("{verb}.log"));
            srv.wait_ok(&s);
            let pagemap = format!("pagemap-{pid}.img");
            assert!(
                s.join(&pagemap).exists(),
                "{n}: the server got no {pagemap}"
            );
            assert!(!d.join(&pagemap).exists(), "{n}: a pagemap written locally");
            assert!(d.join(format!("sent-{pagemap}")).exists(), "{n}: no record");
            written.push(page_stats(&d));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            written[1].1 > 0 && written[2].1 > 0,
            "the pre-dump and the dump after it left no page to the chain: {written:?}"
        );
        // The final images next to the last server's pages: a complete image set.
        let (fin, sfin) = (root.path().join("final"), root.path().join("sfinal"));
        for e in std::fs::read_dir(&fin).unwrap() {
            let p = e.unwrap().path();
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_file() && f.ends_with(".img") && !f.starts_with("sent-") {
                std::fs::copy(&p, sfin.join(&f)).unwrap();
            }
        }
        restore_and_verify(
            &w,
            &sfin,
            &restored,
            &format!("{name}: a chain through {} page servers", server.display()),
        );
    })
}

#[test]
fn page_server_chain_stasis_server() {
    page_server_chain("inc-ps", 33640, PathBuf::from(env!("CARGO_BIN_EXE_stasis")));
}

#[test]
fn page_server_chain_criu_server() {
    let Some(criu) = criu_or_skip("page_server_chain_criu_server") else {
        return;
    };
    page_server_chain("inc-ps-criu", 33680, criu);
}

/// CRIU 4.2 restores what it cannot make here (CRIU's pre-dump needs soft-dirty): two
/// stasis pre-dumps and a final `dump --track-mem` of a workload that keeps writing,
/// restored by `criu restore -D DIR` and checked by the workload itself.
#[test]
fn chain_with_track_mem_restored_by_criu() {
    let Some(criu) = criu_or_skip("chain_with_track_mem_restored_by_criu") else {
        return;
    };
    let _lock = restore_lock();
    let (name, base) = ("inc-criu", 33720);
    with_round_trip_deadline(120, cgroup_path(name, base), move |restored| {
        let w = launch_dirty(name, base, 32, "busy");
        let root = tempfile::tempdir().unwrap();
        let fin = chain(&w, root.path(), 2, |_| "splice", |_| {}, &["--track-mem"]);
        let (_, parent) = page_stats(&fin);
        assert!(parent > 0, "the final dump left no page to the chain");
        let rec: Value =
            serde_json::from_str(&std::fs::read_to_string(fin.join("dirty-tracker.json")).unwrap())
                .unwrap();
        let tracker = rec["pid"].as_i64().unwrap() as i32;
        let pids = pids_of(&fin);
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped tree");
        // The tracker the final dump kept ends once the tree it tracked is gone.
        wait_gone(&[tracker], 10, "the tracker after the tree was killed");
        let out = Command::new(&criu)
            .args(["restore", "-d", "-o", "criu-restore.log", "-v4", "-D"])
            .arg(&fin)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "criu restore of the chain: {}",
            std::fs::read_to_string(fin.join("criu-restore.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
        verify_then_kill(
            &w,
            &pids,
            "a stasis chain (--track-mem) restored by CRIU 4.2",
        );
    })
}
