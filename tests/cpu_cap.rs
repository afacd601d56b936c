//! `--cpu-cap`: `stasis dump --cpu-cap` records this host in `cpuinfo.img` (as CRIU's dump
//! does, decodable by Debian's crit); `stasis restore --cpu-cap` on a host that lacks an
//! instruction extension the image names fails before anything starts, naming it; with the
//! instruction check turned off (`--cpu-cap=^ins`) the same images restore and verify.

mod common;

use std::time::Duration;

use common::dump::*;
use common::lock::restore_lock;
use common::restore::edit_single;
use stasis::cpuinfo::{entry, INS_FEATURES};
use stasis::images::pb;
use stasis::sys::cpu::CpuId;

#[test]
fn restore_on_a_host_lacking_a_feature_fails_up_front_naming_it() {
    let _lock = restore_lock();
    let base = 34520;
    with_round_trip_deadline(90, cgroup_path("fx-loop", base), move |restored| {
        let w = launch("fx-loop", base, &[]);
        let images = tempfile::tempdir().unwrap();
        stasis_dump(w.pid, images.path(), &["--cpu-cap"]);
        let pids = pids_of(images.path());
        *restored.lock().unwrap() = pids.clone();
        wait_gone(&pids, 10, "the dumped fx-loop");
        let path = images.path().join("cpuinfo.img");
        let host = CpuId::host();
        let got: pb::CpuinfoEntry = stasis::images::framing::read_single(&path).unwrap();
        assert_eq!(got, entry(&host), "cpuinfo.img describes this host");
        debian_crit_decodes_all(images.path());

        // The image now says the dump host had an extension this one lacks.
        let &(word, bit, name) = INS_FEATURES
            .iter()
            .find(|f| !host.has(f.0, f.1))
            .expect("an instruction extension this host lacks");
        edit_single::<pb::CpuinfoEntry>(&path, |e| e.x86_entry[0].capability[word] |= 1 << bit);
        let out = stasis_bin()
            .args(["restore", "-d", "--cpu-cap", "-D"])
            .arg(images.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("lacks CPU features") && err.contains(name),
            "{err}"
        );
        assert!(gone(&pids), "nothing was restored");

        stasis_restore_detached(images.path(), &["--cpu-cap=^ins"]);
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &pids, "fx-loop restored with --cpu-cap=^ins");
    })
}
