//! CRIU options that change what happens to the tree, end to end on the self-verifying
//! workload of `unprivileged/fx-user.c` (memory, a counting thread, a pipe, a file at an
//! offset; PASS on SIGUSR2):
//!
//! ```text
//! dump -s           the tree is left stopped (every thread 'T', untraced), not killed;
//!                   SIGCONT: it runs on and passes
//! restore -s        the restored tree is stopped before it runs its own code; SIGCONT: passes
//! --inherit-fd      fd[7]:PATH (PATH deleted after the dump, so that only the inherited
//!                   descriptor can stand for it): the restored task reads it at its offset
//! --auto-dedup      a dump on top of a pre-dump punches the parent's pages it covers again
//!                   (the parent's pages image shrinks on disk), and the chain still restores
//! --cgroup-dump-controller  only the hierarchies named are recorded (a task in a v2 cgroup
//!                   of its own, dumped naming a v1 hierarchy it shares: no cgroup.img)
//! ```

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::deadline::with_deadline;
use common::dump::{stasis_bin, stasis_dump, stasis_restore_detached};
use common::workload::c_program;

const SRC: &str = include_str!("unprivileged/fx-user.c");

struct Fx {
    child: Option<Child>,
    pid: i32,
    result: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Fx {
    fn drop(&mut self) {
        kill(self.pid, libc::SIGKILL);
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
    }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(pid, sig) };
}

fn launch() -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let bin = c_program("fx-user", SRC, &["-pthread"]);
    let result = dir.path().join("result");
    let mut cmd = Command::new(&bin);
    cmd.arg(&result)
        .arg("plain")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: one async-signal-safe system call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let t0 = Instant::now();
    while std::fs::read_to_string(&result).unwrap_or_default() != "READY" {
        assert!(t0.elapsed() < Duration::from_secs(20), "fx-user not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Fx {
        child: Some(child),
        pid,
        result,
        _dir: dir,
    }
}

/// The state letter of every thread of `pid`.
fn thread_states(pid: i32) -> Vec<char> {
    let mut v: Vec<char> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter_map(|s| {
                    s.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .next()?
                        .chars()
                        .next()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_states(pid: i32, want: char) -> Vec<char> {
    let t0 = Instant::now();
    loop {
        let s = thread_states(pid);
        if s.len() >= 2 && s.iter().all(|&c| c == want) || t0.elapsed() > Duration::from_secs(10) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tracer(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// Dumps the workload (which kills it) into a new directory and reaps it.
fn dump_and_reap(fx: &mut Fx) -> tempfile::TempDir {
    let images = tempfile::tempdir().unwrap();
    stasis_dump(fx.pid, images.path(), &[]);
    let _ = fx.child.take().unwrap().wait();
    images
}

/// SIGUSR2 and the verdict.
fn verdict(pid: i32, result: &Path) -> String {
    let _ = std::fs::remove_file(result);
    kill(pid, libc::SIGUSR2);
    let t0 = Instant::now();
    while !result.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no verdict: threads {:?}\n{}",
            thread_states(pid),
            std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    std::fs::read_to_string(result).unwrap()
}

fn killer(pid: i32) -> impl FnOnce() {
    move || kill(pid, libc::SIGKILL)
}

#[test]
fn dump_leave_stopped_leaves_the_tree_stopped() {
    let fx = launch();
    let pid = fx.pid;
    with_deadline(60, killer(pid), move || {
        let images = tempfile::tempdir().unwrap();
        stasis_dump(pid, images.path(), &["-s"]);
        assert_eq!(
            wait_states(pid, 'T'),
            vec!['T', 'T'],
            "stopped after the dump"
        );
        assert_eq!(tracer(pid), "0");
        kill(pid, libc::SIGCONT);
        assert_eq!(verdict(pid, &fx.result), "PASS");
    });
}

#[test]
fn restore_leave_stopped_stops_the_restored_tree() {
    let mut fx = launch();
    let pid = fx.pid;
    with_deadline(60, killer(pid), move || {
        let images = dump_and_reap(&mut fx);
        stasis_restore_detached(images.path(), &["--leave-stopped"]);
        assert_eq!(
            wait_states(pid, 'T'),
            vec!['T', 'T'],
            "stopped after the restore"
        );
        kill(pid, libc::SIGCONT);
        assert_eq!(verdict(pid, &fx.result), "PASS");
    });
}

#[test]
fn inherit_fd_stands_for_a_file_of_the_images() {
    let mut fx = launch();
    let pid = fx.pid;
    with_deadline(60, killer(pid), move || {
        let images = dump_and_reap(&mut fx);
        // The file is gone; the caller has a descriptor for it (same content, same offset).
        let data = PathBuf::from(format!("{}.data", fx.result.display()));
        let inherited = {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&data)
                .unwrap();
            std::fs::remove_file(&data).unwrap();
            use std::io::Seek;
            let mut f = f;
            f.seek(std::io::SeekFrom::Start(4)).unwrap();
            f
        };
        let d = images.path().to_str().unwrap().to_string();
        let key = data.to_str().unwrap().trim_start_matches('/').to_string();
        // Without it, the restore refuses the missing file.
        let out = stasis_bin()
            .args(["restore", "-d", "-D", &d])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let raw = inherited.as_raw_fd();
        let mut cmd = stasis_bin();
        cmd.args(["restore", "-d", "-D", &d, "-v4", "-o", "restore.log"])
            .arg("--inherit-fd")
            .arg(format!("fd[7]:{key}"))
            .stdin(Stdio::null());
        // SAFETY: dup2 between fork and exec (it clears close-on-exec on fd 7).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 7) != 7 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let log = std::fs::read_to_string(images.path().join("restore.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{}\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(log.contains("restored from inherited fd 7"), "{log}");
        assert_eq!(verdict(pid, &fx.result), "PASS");
    });
}

/// Blocks (512 bytes) allocated to the pages images of `dir`.
fn pages_blocks(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().blocks())
        .sum()
}

#[test]
fn auto_dedup_punches_what_the_dump_wrote_again_out_of_the_parent() {
    let mut fx = launch();
    let pid = fx.pid;
    with_deadline(120, killer(pid), move || {
        let scratch = tempfile::tempdir().unwrap();
        let (pre, last) = (scratch.path().join("1"), scratch.path().join("2"));
        std::fs::create_dir_all(&pre).unwrap();
        std::fs::create_dir_all(&last).unwrap();
        let run = |args: &[&str], dir: &Path| {
            let out = stasis_bin()
                .args(args)
                .arg("-D")
                .arg(dir)
                .args(["-v4", "-o", "stasis.log"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let log = std::fs::read_to_string(dir.join("stasis.log")).unwrap_or_default();
            assert!(out.status.success(), "{args:?}: {log}");
            log
        };
        let p = pid.to_string();
        run(&["pre-dump", "-t", &p], &pre);
        let before = pages_blocks(&pre);
        // The counting thread keeps writing its stack and counter: those pages are dumped
        // again, and punched out of the pre-dump.
        std::thread::sleep(Duration::from_millis(200));
        let log = run(
            &[
                "dump",
                "-t",
                &p,
                "--prev-images-dir",
                "../1",
                "--auto-dedup",
            ],
            &last,
        );
        assert!(log.contains("auto-dedup:"), "{log}");
        let after = pages_blocks(&pre);
        assert!(
            after < before,
            "parent pages: {before} blocks before, {after} after"
        );
        let _ = fx.child.take().unwrap().wait();
        stasis_restore_detached(&last, &[]);
        assert_eq!(verdict(pid, &fx.result), "PASS");
    });
}

#[test]
fn cgroup_dump_controller_records_only_the_hierarchies_named() {
    // A task in a v2 cgroup of its own, in the dumper's cgroups of every other hierarchy.
    let scratch = tempfile::tempdir().unwrap();
    let ready = scratch.path().join("ready");
    let cmd = format!("sh -c 'touch {}; exec sleep 1000'", ready.display());
    let w = common::dump::launch_cmd("cg-dump-controller", 0, &cmd, &ready);
    let pid = w.pid;
    with_deadline(60, killer(pid), move || {
        let all = scratch.path().join("all");
        let named = scratch.path().join("named");
        std::fs::create_dir_all(&all).unwrap();
        std::fs::create_dir_all(&named).unwrap();
        stasis_dump(pid, &all, &["-R", "--shell-job"]);
        assert!(all.join("cgroup.img").exists(), "the v2 cgroup is recorded");
        // Only a hierarchy the task shares with the dumper: nothing differs, no cgroup.img.
        let mine = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let other = mine
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .find(|c| !c.is_empty())
            .unwrap_or("name=none")
            .to_string();
        stasis_dump(
            pid,
            &named,
            &["-R", "--shell-job", "--cgroup-dump-controller", &other],
        );
        assert!(
            !named.join("cgroup.img").exists(),
            "only {other} was recorded"
        );
        drop(w);
    });
}
