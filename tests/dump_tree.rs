//! A tree of 100 processes, each with memory of its own (benches/tree_workload.c), dumped
//! with `stasis dump` (pages pinned per process and written by the page writers while the
//! next process is dumped) and restored with `stasis restore -d`: every restored process
//! checks every page of its region and reports it intact.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::dump::*;
use common::lock::restore_lock;

const NPROC: usize = 100;
/// MiB of written memory per process.
const MIB: usize = 2;

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many processes reported their memory intact (`READY.ok.INDEX` files).
fn intact(ready: &Path) -> usize {
    let name = ready.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(ready.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.ok."))
        })
        .count()
}

#[test]
fn tree_of_100_processes_round_trip() {
    let _lock = restore_lock();
    let base = 33400;
    with_round_trip_deadline(180, cgroup_path("tree-100", base), move |restored| {
        let bin = common::workload::c_program(
            "tree_workload",
            include_str!("../benches/tree_workload.c"),
            &[],
        );
        let work = tempfile::tempdir().unwrap();
        let ready = work.path().join("ready");
        let w = launch_program(
            "tree-100",
            base,
            bin.to_str().unwrap(),
            &[
                &NPROC.to_string(),
                &MIB.to_string(),
                ready.to_str().unwrap(),
            ],
        );
        wait_for("the tree did not get ready", 60, || ready.exists());
        let images = work.path().join("img");
        std::fs::create_dir(&images).unwrap();
        stasis_dump(w.pid, &images, &[]);
        let pids = pids_of(&images);
        assert_eq!(pids.len(), NPROC, "every process of the tree dumped");
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 30, "the dumped tree");
        stasis_restore_detached(&images, &[]);
        for &p in &pids {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGUSR1,
            )
            .unwrap_or_else(|e| panic!("restored process {p} is not there: {e}"));
        }
        wait_for(
            "not every restored process reported its memory intact",
            60,
            || intact(&ready) == NPROC,
        );
        // A process whose memory was wrong exited (status 3) instead of reporting.
        assert!(pids
            .iter()
            .all(|p| Path::new(&format!("/proc/{p}")).exists()));
        kill_pids(&pids);
        wait_gone(&pids, 30, "the restored tree");
    })
}
