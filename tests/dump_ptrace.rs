//! Dumps through the ptrace backend (real registers, FPU state, signal dispositions, timers,
//! sigaltstack, robust list): the images match CRIU's structure, carry the values the
//! workloads set up, and the workload, left running, still verifies itself afterwards (the
//! dump changed nothing in it).

mod common;

use common::deadline::with_deadline;
use common::dump::*;
use common::lock::restore_lock;
use stasis::dump::ptrace_backend::PtraceBackend;
use stasis::dump::DumpOptions;

fn ptrace_dump(
    name: &'static str,
    base: i32,
    args: &'static [&'static str],
    check: fn(&std::path::Path, i32),
) {
    let cg = cgroup_path(name, base);
    let _lock = restore_lock();
    with_deadline(
        90,
        move || kill_cgroup(&cg),
        move || {
            let w = launch(name, base, args);
            let dir = tempfile::tempdir().unwrap();
            let opts = DumpOptions {
                pid: w.pid,
                images_dir: dir.path().to_path_buf(),
                leave_running: true,
                freeze_cgroup: Some(w.cgroup.clone()),
                ..Default::default()
            };
            let rep = stasis::dump::run(&opts, &mut PtraceBackend)
                .unwrap_or_else(|e| panic!("dump {name}: {e}"));
            assert!(rep.pids.contains(&w.pid));
            assert!(all_running(&w), "{name} not running after the dump");
            // The workload runs in its own cgroup (the fixtures ran in CRIU's): cgroup.img is
            // extra here (its content is checked by dump_fixtures).
            std::fs::remove_file(dir.path().join("cgroup.img")).expect("cgroup.img");
            compare(name, dir.path());
            debian_crit_decodes_all(dir.path());
            check(dir.path(), w.pid);
            assert_eq!(verify(&w), "PASS", "{name} after a leave-running dump");
        },
    )
}

fn core(dir: &std::path::Path, tid: i32) -> serde_json::Value {
    decode(&dir.join(format!("core-{tid}.img")))["entries"][0].clone()
}

fn hex(v: &serde_json::Value) -> u64 {
    let s = v.as_str().unwrap_or("0x0");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn ptrace_fx_loop() {
    ptrace_dump("fx-loop", 32300, &[], |dir, pid| {
        let c = core(dir, pid);
        let g = &c["thread_info"]["gpregs"];
        assert!(hex(&g["ip"]) >= 0x400000 && hex(&g["ip"]) < 0x500000, "{g}");
        assert_ne!(hex(&g["fs_base"]), 0);
        let fp = &c["thread_info"]["fpregs"];
        // Round toward zero in MXCSR (RC = 11b) and the x87 control word.
        assert_eq!(fp["mxcsr"].as_u64().unwrap() & 0x6000, 0x6000, "{fp}");
        assert_eq!(fp["cwd"].as_u64().unwrap() & 0xc00, 0xc00, "{fp}");
        assert_eq!(c["thread_core"]["rseq_entry"]["signature"], 0x5305_3053);
    });
}

#[test]
fn ptrace_fx_threads() {
    ptrace_dump("fx-threads", 32340, &["16"], |dir, pid| {
        let leader = core(dir, pid);
        assert_ne!(leader["thread_core"]["futex_rla_len"], 0);
        // Thread 0 (the first the leader created: the lowest TID but the leader's, as the
        // kernel hands out TIDs in increasing order) has a 64 KiB sigaltstack.
        let mut tids: Vec<i32> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.strip_prefix("core-")?.strip_suffix(".img")?.parse().ok()
            })
            .collect();
        tids.sort();
        assert_eq!(tids.len(), 17);
        assert!(tids.contains(&pid), "no core of the leader {pid}: {tids:?}");
        tids.retain(|&t| t != pid);
        let t0 = core(dir, tids[0]);
        assert_eq!(
            t0["thread_core"]["sas"]["ss_size"], 65536,
            "{}",
            t0["thread_core"]
        );
        assert_ne!(hex(&t0["thread_info"]["clear_tid_addr"]), 0);
    });
}

#[test]
fn ptrace_fx_signals() {
    ptrace_dump("fx-signals", 32380, &[], |dir, pid| {
        let tc = &core(dir, pid)["tc"];
        let sa = tc["sigactions"].as_array().unwrap();
        // Entry 0 is SIGHUP (SA_RESETHAND|SA_NODEFER), entry 1 SIGINT (SIG_IGN = 1).
        assert_ne!(hex(&sa[0]["sigaction"]), 0);
        assert_eq!(hex(&sa[1]["sigaction"]), 1);
        let t = &tc["timers"];
        assert_eq!(t["virt"]["isec"], 100, "{t}");
        assert_eq!(t["real"]["iusec"], 10000, "{t}");
        assert_eq!(t["posix"][0]["sival_ptr"], 777, "{t}");
        assert_eq!(t["posix"][0]["insec"], 25_000_000, "{t}");
    });
}

#[test]
fn ptrace_fx_tree() {
    ptrace_dump("fx-tree", 32420, &[], |dir, pid| {
        let p = decode(&dir.join("pstree.img"));
        assert_eq!(p["entries"].as_array().unwrap().len(), 6);
        assert_eq!(core(dir, pid)["tc"]["task_state"], "Alive");
    });
}

#[test]
fn ptrace_fx_files_and_mem() {
    ptrace_dump("fx-mem", 32460, &[], |dir, _| {
        assert!(dir.join("memfd.img").exists());
    });
}
