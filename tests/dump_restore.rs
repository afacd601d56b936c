//! End to end with the command lines: `stasis dump` (ptrace backend, the tree is killed) then
//! `stasis restore -d` from those images, and the workload verifies itself: PASS.

mod common;

use std::time::{Duration, Instant};

use common::dump::*;
use common::lock::restore_lock;

/// Dumps workload `name` (through its cgroup's freezer when `freeze`, else ptrace alone),
/// restores it and has it verify itself.
fn round_trip(name: &'static str, base: i32, args: Vec<String>, freeze: bool) {
    let _lock = restore_lock();
    with_round_trip_deadline(90, cgroup_path(name, base), move |restored| {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let w = launch(name, base, &a);
        let dir = tempfile::tempdir().unwrap();
        let cgroup = w.cgroup.to_string_lossy().into_owned();
        let freeze_args: &[&str] = if freeze {
            &["--freeze-cgroup", &cgroup]
        } else {
            &[]
        };
        stasis_dump(w.pid, dir.path(), freeze_args);
        let pids = pids_of(dir.path());
        *restored.lock().unwrap() = pids.clone();
        let t0 = Instant::now();
        while !gone(&pids) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{name}: dumped tasks still alive"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stasis_restore_detached(dir.path(), &[]);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(
            &w,
            &pids,
            &format!("{name} restored from stasis' own images"),
        );
    })
}

#[test]
fn round_trip_fx_loop() {
    round_trip("fx-loop", 31000 + 1500, vec![], false);
}

#[test]
fn round_trip_fx_mem() {
    round_trip("fx-mem", 32540, vec![], true);
}

#[test]
fn round_trip_fx_threads() {
    round_trip("fx-threads", 32580, vec!["16".into()], false);
}

#[test]
fn round_trip_fx_tree() {
    round_trip("fx-tree", 32640, vec![], false);
}

#[test]
fn round_trip_fx_files() {
    let data = fx_files_data("rt-fx-files-data");
    round_trip("fx-files", 32680, vec![data.clone()], true);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn round_trip_fx_signals() {
    round_trip("fx-signals", 32440, vec![], false);
}

#[test]
fn round_trip_python_threads() {
    let _lock = restore_lock();
    let base = 32180;
    with_round_trip_deadline(90, cgroup_path("python3-rt", base), move |restored| {
        let dir = std::path::PathBuf::from(format!(
            "/tmp/stasis-dump-tests/py-rt-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out_file = dir.join("out");
        let script = format!(
                "import threading, time, os\n\
                 counts = [0] * 4\n\
                 def work(i):\n    while True:\n        counts[i] += 1\n        time.sleep(0.005)\n\
                 for i in range(4):\n    threading.Thread(target=work, args=(i,), daemon=True).start()\n\
                 while True:\n    open('{o}.tmp', 'w').write(' '.join(map(str, counts)))\n    os.rename('{o}.tmp', '{o}')\n    time.sleep(0.05)\n",
                o = out_file.display()
            );
        std::fs::write(dir.join("t.py"), script).unwrap();
        // setsid: its own session, so no --shell-job is needed.
        let mut w = launch_cmd(
            "python3-rt",
            base,
            &format!("setsid python3 {}", dir.join("t.py").display()),
            &out_file,
        );
        let images = dir.join("img");
        std::fs::create_dir_all(&images).unwrap();
        stasis_dump(w.pid, &images, &[]);
        assert_eq!(count_files(&images, "core-"), 5);
        let before = std::fs::read_to_string(&out_file).unwrap();
        // The dumped (killed) python is our child: reap it so its pid is free.
        reap_dumped(&mut w);
        let pids = pids_of(&images);
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped python");
        stasis_restore_detached(&images, &[]);
        let root = pids[0];
        assert_eq!(
            std::fs::read_dir(format!("/proc/{root}/task"))
                .unwrap()
                .count(),
            5,
            "python main thread + 4 workers restored"
        );
        // Every thread counts on from where it was (no counter went back), and keeps
        // counting: each one moves on twice after the restore.
        let counts = |s: &str| -> Vec<u64> {
            s.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        };
        let mut last = counts(&before);
        assert_eq!(last.len(), 4, "counts before the restore: {before:?}");
        let t1 = Instant::now();
        for round in 0..2 {
            loop {
                let now = counts(&std::fs::read_to_string(&out_file).unwrap_or_default());
                if now.len() == 4 {
                    assert!(
                        now.iter().zip(&last).all(|(n, o)| n >= o),
                        "a thread's count went back: {last:?} -> {now:?}"
                    );
                    if now.iter().zip(&last).all(|(n, o)| n > o) {
                        last = now;
                        break;
                    }
                }
                assert!(
                    t1.elapsed() < Duration::from_secs(20),
                    "threads did not go on (round {round}): {last:?} -> {now:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        kill_pids(&pids);
        let _ = std::fs::remove_dir_all(&dir);
    })
}

/// A program that holds its own `/proc/PID/stat` open (as redis does while it reads its RSS)
/// is restored: the file exists only once the task does, so the task reopens it itself, and
/// reads from it go on to show the restored task.
#[test]
fn round_trip_program_holding_its_own_proc_file() {
    let _lock = restore_lock();
    let base = 32300;
    with_round_trip_deadline(90, cgroup_path("python3-proc", base), move |restored| {
        let dir = std::path::PathBuf::from(format!(
            "/tmp/stasis-dump-tests/py-proc-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out_file = dir.join("out");
        let script = format!(
            "import os, time\n\
             f = open('/proc/%d/stat' % os.getpid())\n\
             n = 0\n\
             while True:\n    f.seek(0)\n    pid = f.read().split()[0]\n    n += 1\n    \
             open('{o}.tmp', 'w').write('%s %d' % (pid, n))\n    os.rename('{o}.tmp', '{o}')\n    \
             time.sleep(0.05)\n",
            o = out_file.display()
        );
        std::fs::write(dir.join("p.py"), script).unwrap();
        let mut w = launch_cmd(
            "python3-proc",
            base,
            &format!("setsid python3 {}", dir.join("p.py").display()),
            &out_file,
        );
        let images = dir.join("img");
        std::fs::create_dir_all(&images).unwrap();
        stasis_dump(w.pid, &images, &[]);
        let files = decode(&images.join("files.img"));
        let own = format!("/proc/{}/stat", w.pid);
        assert!(
            files["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["reg"]["name"] == own.as_str()),
            "{own} is among the dumped files: {files}"
        );
        reap_dumped(&mut w);
        let pids = pids_of(&images);
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped python");
        let before: u64 = std::fs::read_to_string(&out_file)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        stasis_restore_detached(&images, &[]);
        let t1 = Instant::now();
        loop {
            let now = std::fs::read_to_string(&out_file).unwrap_or_default();
            let v: Vec<&str> = now.split_whitespace().collect();
            if v.len() == 2 && v[1].parse::<u64>().unwrap_or(0) > before + 2 {
                assert_eq!(v[0], pids[0].to_string(), "reads show the restored task");
                break;
            }
            assert!(
                t1.elapsed() < Duration::from_secs(20),
                "the restored program did not go on: {now:?} (count {before} before)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_pids(&pids);
        let _ = std::fs::remove_dir_all(&dir);
    })
}
