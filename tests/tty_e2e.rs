//! End to end for terminals (`tests/tty_e2e/fx-tty.c` checks itself after the restore):
//!
//! * pair: a pty pair with data queued both ways, termios, window size and exclusive mode
//!   changed, and a second pair in packet mode with its master locked; the images hold
//!   `tty-data.img` (one entry per direction) and every TTY entry has its path entry;
//! * session: a session leader whose controlling terminal is a pty slave, its child in a
//!   group of its own that is the terminal's foreground group;
//! * devtty: the same, and the leader holds a descriptor of `/dev/tty`;
//! * external: a workload holding one of the test's ptys is dumped with `--external
//!   tty[RDEV:DEV]` and restored with `--inherit-fd fd[N]:tty[RDEV:DEV]` naming a new pty of
//!   the test, on which the restored workload writes;
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

/// `--external tty[RDEV:DEV]` at dump, `--inherit-fd fd[N]:tty[RDEV:DEV]` at restore: the
/// restored workload writes on the terminal the restore was given.
#[test]
fn external_terminal_inherited() {
    let _lock = restore_lock();
    let base = 37220;
    with_round_trip_deadline(90, cgroup_path("fx-tty-ext", base), move |restored| {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        let work = tempfile::tempdir().unwrap();
        let bin = c_program("fx-tty", SRC, &["-static"]);
        let result = work.path().join("result");
        let cloexec = |p: &nix::pty::OpenptyResult| {
            for fd in [&p.master, &p.slave] {
                let flag = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
                nix::fcntl::fcntl(fd, flag).unwrap();
            }
        };
        // The workload holds the slave by its path only (not the test's descriptors).
        let old = nix::pty::openpty(None, None).unwrap();
        cloexec(&old);
        let old_path = nix::unistd::ttyname(&old.slave).unwrap();
        let cmd = tuned_cmd(&bin, &[&result, Path::new("ext"), &old_path]);
        let mut w = launch_cmd("fx-tty-ext", base, &cmd, &result);
        assert_eq!(std::fs::read_to_string(&result).unwrap(), "READY");
        let md = std::fs::metadata(&old_path).unwrap();
        let key = format!("tty[{:x}:{:x}]", md.rdev(), md.dev());
        let images = tempfile::tempdir().unwrap();
        let cgroup = w.cgroup.to_string_lossy().into_owned();
        let ext = format!("--external={key}");
        stasis_dump(w.pid, images.path(), &["--freeze-cgroup", &cgroup, &ext]);
        let info = decode(&images.path().join("tty-info.img"));
        assert_eq!(info["entries"][0]["type"], "EXT_TTY", "{info}");
        let pids = pids_of(images.path());
        *restored.lock().unwrap() = pids.clone();
        reap_dumped(&mut w);
        wait_gone(&pids, 10, "the dumped tree");
        // A new pty: its slave is the caller's fd 7 for the restore.
        let new = nix::pty::openpty(None, None).unwrap();
        cloexec(&new);
        let raw = new.slave.as_raw_fd();
        let mut restore = stasis_bin();
        restore
            .args(["restore", "-d", "-D"])
            .arg(images.path())
            .args(["-o", "restore.log", "-v4", "--inherit-fd"])
            .arg(format!("fd[7]:{key}"));
        // SAFETY: dup2 between fork and exec (it clears close-on-exec on fd 7; when the slave
        // is fd 7 already, fcntl does).
        unsafe {
            restore.pre_exec(move || {
                let placed = if raw == 7 {
                    libc::fcntl(7, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(raw, 7) == 7
                };
                if !placed {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = restore.output().unwrap();
        assert!(
            out.status.success(),
            "restore: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(images.path().join("restore.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
        let verdict = verify(&w);
        let mut buf = [0u8; 6];
        let mut got = 0;
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&new.master),
            nix::poll::PollFlags::POLLIN,
        )];
        while got < 6 && nix::poll::poll(&mut fds, 5000u16).unwrap_or(0) > 0 {
            match nix::unistd::read(&new.master, &mut buf[got..]) {
                Ok(n) if n > 0 => got += n,
                _ => break,
            }
        }
        kill_pids(&pids);
        assert_eq!(verdict, "PASS", "fx-tty ext restored");
        assert_eq!(&buf[..got], b"ext-ok", "written on the inherited terminal");
    })
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
