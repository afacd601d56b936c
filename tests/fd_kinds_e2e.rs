//! End to end for the fd kinds: a self-verifying C workload holding an eventfd, a periodic
//! timerfd, a signalfd, an epoll over an eventfd and a socket, a unix socketpair with data
//! queued both ways, a bound unix datagram socket with queued datagrams, a unix listener,
//! an inotify watch, a TCP listener, an established TCP connection with unread data in both
//! directions, a UDP socket and a pty pair is dumped with `stasis dump --tcp-established`
//! (the tree is killed), restored with `stasis restore -d --tcp-established`, and then checks
//! every object itself (`tests/fd_kinds_e2e/fx-kinds.c`): PASS.

mod common;

use std::time::Duration;

use common::dump::*;
use common::lock::restore_lock;
use common::workload::c_program;

#[test]
fn fd_kinds_dump_kill_restore_verify() {
    // Restores: one at a time across test binaries (pids must stay free).
    let _lock = restore_lock();
    let base = 33100;
    with_round_trip_deadline(90, cgroup_path("fx-kinds", base), move |restored| {
        let work = tempfile::tempdir().unwrap();
        // Static, like the fixtures.
        let bin = c_program(
            "fx-kinds",
            include_str!("fd_kinds_e2e/fx-kinds.c"),
            &["-static"],
        );
        let watched = work.path().join("watched");
        std::fs::create_dir(&watched).unwrap();
        let result = work.path().join("result");
        // Like the fixtures: keep glibc off AVX-512 (the restorer refuses those xstate
        // components here).
        let cmd = tuned_cmd(&bin, &[&result, &watched]);
        let mut w = launch_cmd("fx-kinds", base, &cmd, &result);
        *restored.lock().unwrap() = vec![w.pid];
        let images = tempfile::tempdir().unwrap();
        let cgroup = w.cgroup.to_string_lossy().into_owned();
        stasis_dump(
            w.pid,
            images.path(),
            &["--freeze-cgroup", &cgroup, "--tcp-established"],
        );
        for f in ["sk-queues.img", "tty-info.img"] {
            assert!(images.path().join(f).exists(), "{f} missing");
        }
        let streams = count_files(images.path(), "tcp-stream-");
        assert_eq!(streams, 2, "one tcp-stream image per end of the connection");
        // CRIU's own decoder (Debian's crit) reads every image, ours included.
        debian_crit_decodes_all(images.path());
        // The workload is our child: reap it once the dump killed it (its pid must be free).
        reap_dumped(&mut w);
        let out = stasis_bin()
            .args(["restore", "-d", "-D"])
            .arg(images.path())
            .args(["--tcp-established", "-o", "restore.log", "-v4"])
            .output()
            .unwrap();
        if !out.status.success() {
            let files = stasis_bin()
                .args(["crit", "decode", "--pretty", "-i"])
                .arg(images.path().join("files.img"))
                .output()
                .unwrap();
            eprintln!("files.img:\n{}", String::from_utf8_lossy(&files.stdout));
        }
        assert!(
            out.status.success(),
            "restore: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(images.path().join("restore.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
        verify_then_kill(&w, &[w.pid], "fx-kinds restored from stasis' own images");
    })
}
