//! End to end for terminals (`tests/tty_e2e/fx-tty.c` checks itself after the restore):
//!
//! * pair: a pty pair with data queued both ways, termios, window size and exclusive mode
//!   changed, and a second pair in packet mode with its master locked; the images hold
//!   `tty-data.img` (one entry per direction) and every TTY entry has its path entry;
//! * session: a session leader whose controlling terminal is a pty slave, its child in a
//!   group of its own that is the terminal's foreground group;
//! * devtty: the same, and the leader holds a descriptor of `/dev/tty`;
//! * refused: a descriptor of a terminal that is not restored (the system console) makes the
//!   dump fail with the device named.
//!
//! Each is dumped with `stasis dump` (the tree is killed), restored with `stasis restore -d`,
//! then told to verify itself: PASS. The `-j` round trip (a job of a shell on a pty, restored
//! on another) is in tests/restore_features.rs.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use common::dump::*;
use common::lock::restore_lock;
use common::workload::c_program;

const SRC: &str = include_str!("tty_e2e/fx-tty.c");

/// Launches fx-tty in `mode`, dumps it, checks the images with `images`, restores it and has
/// it verify itself.
fn round_trip(mode: &'static str, base: i32, images_check: fn(&Path)) {
    let _lock = restore_lock();
    with_round_trip_deadline(
        90,
        cgroup_path(&format!("fx-tty-{mode}"), base),
        move |restored| {
            let work = tempfile::tempdir().unwrap();
            let bin = c_program("fx-tty", SRC, &["-static"]);
            let result = work.path().join("result");
            let cmd = tuned_cmd(&bin, &[&result, Path::new(mode)]);
            let mut w = launch_cmd(&format!("fx-tty-{mode}"), base, &cmd, &result);
            let images = tempfile::tempdir().unwrap();
            let cgroup = w.cgroup.to_string_lossy().into_owned();
            stasis_dump(w.pid, images.path(), &["--freeze-cgroup", &cgroup]);
            let pids = pids_of(images.path());
            *restored.lock().unwrap() = pids.clone();
            images_check(images.path());
            debian_crit_decodes_all(images.path());
            reap_dumped(&mut w);
            wait_gone(&pids, 10, "the dumped tree");
            stasis_restore_detached(images.path(), &[]);
            std::thread::sleep(Duration::from_millis(300));
            verify_then_kill(&w, &pids, &format!("fx-tty {mode} restored"));
        },
    )
}

/// Every TTY entry of files.img names a REG entry with its path (CRIU's restore opens
/// terminals by it).
fn paths_for_every_tty(dir: &Path) {
    let files = decode(&dir.join("files.img"));
    let entries = files["entries"].as_array().unwrap();
    let ttys: Vec<_> = entries.iter().filter(|e| e.get("tty").is_some()).collect();
    assert!(!ttys.is_empty(), "{files}");
    for t in ttys {
        let rid = &t["tty"]["regf_id"];
        let reg = entries
            .iter()
            .find(|e| &e["id"] == rid && e.get("reg").is_some())
            .unwrap_or_else(|| panic!("no path entry for {t}"));
        let name = reg["reg"]["name"].as_str().unwrap();
        assert!(
            name == "/dev/ptmx" || name.starts_with("/dev/pts/") || name == "/dev/tty",
            "{reg}"
        );
    }
}

fn pair_images(dir: &Path) {
    paths_for_every_tty(dir);
    let data = decode(&dir.join("tty-data.img"));
    let entries = data["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "one entry per direction: {data}");
    let info = decode(&dir.join("tty-info.img"));
    let infos = info["entries"].as_array().unwrap();
    assert_eq!(infos.len(), 4, "two sides of two pairs: {info}");
    assert!(
        infos
            .iter()
            .any(|i| i["packet_mode"] == true && i["locked"] == true),
        "the second pair's master: packet mode, locked: {info}"
    );
}

fn session_images(dir: &Path) {
    paths_for_every_tty(dir);
    let info = decode(&dir.join("tty-info.img"));
    let pids = pids_of(dir);
    assert!(
        info["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["sid"] == pids[0] && i["pgrp"] == pids[1]),
        "the terminal's session and foreground group: {info}"
    );
}

fn devtty_images(dir: &Path) {
    session_images(dir);
    let info = decode(&dir.join("tty-info.img"));
    assert!(
        info["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["type"] == "CTTY" && i.get("pty").is_none()),
        "a CTTY entry for /dev/tty: {info}"
    );
}

#[test]
fn pty_pair_queued_data_termios_winsize_packet_lock() {
    round_trip("pair", 37100, pair_images);
}

#[test]
fn session_leader_ctty_and_foreground_group() {
    round_trip("session", 37140, session_images);
}

#[test]
fn dev_tty_descriptor() {
    round_trip("devtty", 37180, devtty_images);
}

/// The system console is refused by name at dump, and the task runs on.
#[test]
fn console_refused_by_name() {
    common::deadline::with_timeout(60, || {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            // O_NOCTTY: the console must not become the test's terminal.
            .stdin(
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOCTTY)
                    .open("/dev/console")
                    .unwrap(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let images = tempfile::tempdir().unwrap();
        let out = stasis_bin()
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(images.path())
            .args(["--shell-job", "-o", "dump.log"])
            .output()
            .unwrap();
        let log = std::fs::read_to_string(images.path().join("dump.log")).unwrap_or_default();
        let alive = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            !out.status.success(),
            "dump of a task on /dev/console succeeded"
        );
        let text = format!("{}{log}", String::from_utf8_lossy(&out.stderr));
        assert!(
            text.contains("/dev/console is the system console: not supported"),
            "{text}"
        );
        assert!(alive, "the task died in a refused dump");
    })
}
