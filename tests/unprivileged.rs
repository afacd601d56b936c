//! `stasis dump` and `stasis restore` run by the tasks' own user, with CAP_CHECKPOINT_RESTORE
//! as its only capability (ambient, so the stasis binary has it after exec), on a workload of
//! that user that checks itself after the restore (`unprivileged/fx-user.c`):
//!
//! ```text
//! test (root) ── pick a uid no account and no process uses; a scratch dir owned by it
//!   ├─ fx-user RESULT MODE               as uid:uid, no groups, no capabilities
//!   └─ helper thread: setresgid/setresuid (this thread only, keep-caps), then the `caps`
//!      crate: CAP_CHECKPOINT_RESTORE effective, permitted, inheritable, ambient
//!        └─ stasis dump / restore / check  (inherit exactly that)
//! ```
//! plain:   dump, restore, SIGUSR2 → the workload answers PASS (memory, thread, pipe, file,
//!          ids); the restored task runs as the user without capabilities
//! seccomp: the dump is refused naming CAP_SYS_ADMIN and PTRACE_O_SUSPEND_SECCOMP; the task
//!          runs on, untraced
//! no caps: dump and restore are refused up front naming CAP_CHECKPOINT_RESTORE

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use caps::{CapSet, Capability};
use common::deadline::with_deadline;
use common::workload::c_program;

const SRC: &str = include_str!("unprivileged/fx-user.c");

/// A uid (and gid of the same number) that no account in /etc/passwd or /etc/group names and
/// no process runs as.
fn unused_id() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let named = |text: &str, id: u32| {
        text.lines()
            .any(|l| l.split(':').nth(2) == Some(id.to_string().as_str()))
    };
    let running: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
        })
        .collect();
    (47000..48000)
        .find(|&id| !named(&passwd, id) && !named(&group, id) && !running.contains(&id))
        .expect("a free uid in 47000..48000")
}

/// Makes the calling thread (only it: raw system calls) the user `id` with `caps` in its
/// effective, permitted, inheritable and ambient sets; what it spawns inherits them.
fn become_user(id: u32, caps: &[Capability]) {
    // SAFETY: integer arguments; the raw system calls change only this thread's creds.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
            0
        );
        assert_eq!(libc::syscall(libc::SYS_setresgid, id, id, id), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, id, id, id), 0);
    }
    let set: caps::CapsHashSet = caps.iter().copied().collect();
    caps::set(None, CapSet::Permitted, &set).unwrap();
    caps::set(None, CapSet::Effective, &set).unwrap();
    caps::set(None, CapSet::Inheritable, &set).unwrap();
    caps::clear(None, CapSet::Ambient).unwrap();
    for c in caps {
        caps::raise(None, CapSet::Ambient, *c).unwrap();
    }
}

/// Runs `stasis ARGS` as user `id` with `caps` (from a thread of its own that takes those
/// creds), capturing its output.
fn stasis_as(id: u32, caps: &'static [Capability], args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        become_user(id, caps);
        Command::new(env!("CARGO_BIN_EXE_stasis"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run stasis")
    })
    .join()
    .unwrap()
}

/// A scratch directory owned by user `id`.
fn user_dir(id: u32) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(d.path(), Some(id), Some(id)).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// fx-user running as user `id` (no groups, no capabilities, only fds 0-2).
struct Fx {
    child: Child,
    pid: i32,
    result: PathBuf,
}

impl Fx {
    /// SIGUSR2, then the verdict the workload writes.
    fn verdict(&self) -> String {
        std::fs::remove_file(&self.result).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::SIGUSR2,
        )
        .unwrap();
        let t0 = Instant::now();
        while !self.result.exists() {
            assert!(t0.elapsed() < Duration::from_secs(20), "no verdict");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&self.result).unwrap()
    }
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::SIGKILL,
        );
        let _ = self.child.try_wait();
    }
}

fn launch(id: u32, dir: &Path, mode: &str) -> Fx {
    let bin = c_program("fx-user", SRC, &["-pthread"]);
    let result = dir.join("result");
    let mut cmd = Command::new(&bin);
    cmd.arg(&result)
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(id, id, id) != 0
                || libc::setresuid(id, id, id) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start fx-user");
    let pid = child.id() as i32;
    let t0 = Instant::now();
    while std::fs::read_to_string(&result).unwrap_or_default() != "READY" {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "fx-user {mode} not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Fx { child, pid, result }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Uid and capability lines of `/proc/PID/status`.
fn status_of(pid: i32) -> (String, String) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    (line("Uid:"), line("CapEff:"))
}

const CR: &[Capability] = &[Capability::CAP_CHECKPOINT_RESTORE];

#[test]
fn a_user_dumps_and_restores_its_own_task_with_checkpoint_restore_only() {
    let id = unused_id();
    let dir = user_dir(id);
    let images = user_dir(id);
    let fx = launch(id, dir.path(), "plain");
    let pid = fx.pid;
    with_deadline(
        120,
        move || {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        },
        move || {
            let mut fx = fx;
            let d = images.path().to_str().unwrap().to_string();
            let check = stasis_as(id, CR, &["check", "--all"]);
            let out = String::from_utf8_lossy(&check.stdout).into_owned();
            assert!(check.status.success(), "{}", text(&check));
            assert!(
                out.contains("Warn  (suspend_seccomp)") && out.contains("CAP_SYS_ADMIN"),
                "{out}"
            );
            assert!(
                out.contains("Ok    (map_files)") && out.contains("Ok    (restore_pids)"),
                "{out}"
            );
            let dump = stasis_as(
                id,
                CR,
                &[
                    "dump",
                    "-t",
                    &pid.to_string(),
                    "-D",
                    &d,
                    "-v4",
                    "-o",
                    "dump.log",
                ],
            );
            assert!(
                dump.status.success(),
                "{}\n{}",
                text(&dump),
                std::fs::read_to_string(images.path().join("dump.log")).unwrap_or_default()
            );
            let _ = fx.child.wait();
            // The pid just freed is taken again: no fixed pid, no shared lock.
            let restore = stasis_as(
                id,
                CR,
                &["restore", "-d", "-D", &d, "-v4", "-o", "restore.log"],
            );
            assert!(
                restore.status.success(),
                "{}\n{}",
                text(&restore),
                std::fs::read_to_string(images.path().join("restore.log")).unwrap_or_default()
            );
            let (uid, capeff) = status_of(pid);
            assert_eq!(uid, format!("{id}\t{id}\t{id}\t{id}"));
            assert_eq!(
                capeff, "0000000000000000",
                "the restored task has no capabilities"
            );
            assert_eq!(fx.verdict(), "PASS", "after the restore");
            drop(images);
        },
    );
}

#[test]
fn a_task_under_seccomp_is_refused_naming_cap_sys_admin() {
    let id = unused_id();
    let dir = user_dir(id);
    let images = user_dir(id);
    let fx = launch(id, dir.path(), "seccomp");
    let pid = fx.pid;
    with_deadline(
        60,
        move || {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        },
        move || {
            let d = images.path().to_str().unwrap().to_string();
            let dump = stasis_as(id, CR, &["dump", "-t", &pid.to_string(), "-D", &d]);
            let err = String::from_utf8_lossy(&dump.stderr).into_owned();
            assert_eq!(dump.status.code(), Some(1), "{}", text(&dump));
            assert!(
                err.contains("seccomp") && err.contains("CAP_SYS_ADMIN"),
                "{err}"
            );
            // The task runs on, untraced, and still answers.
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert!(st.contains("TracerPid:\t0"), "{st}");
            assert_eq!(fx.verdict(), "PASS");
            drop(fx);
        },
    );
}

#[test]
fn without_checkpoint_restore_dump_and_restore_name_it() {
    let id = unused_id();
    let dir = user_dir(id);
    let fx = launch(id, dir.path(), "plain");
    let d = dir.path().to_str().unwrap().to_string();
    let dump = stasis_as(id, &[], &["dump", "-t", &fx.pid.to_string(), "-D", &d]);
    let err = String::from_utf8_lossy(&dump.stderr).into_owned();
    assert_eq!(dump.status.code(), Some(1), "{}", text(&dump));
    assert!(
        err.contains("CAP_CHECKPOINT_RESTORE") && err.contains("map_files"),
        "{err}"
    );
    let restore = stasis_as(id, &[], &["restore", "-d", "-D", &d]);
    let err = String::from_utf8_lossy(&restore.stderr).into_owned();
    assert_eq!(restore.status.code(), Some(1), "{}", text(&restore));
    assert!(
        err.contains("CAP_CHECKPOINT_RESTORE") && err.contains("set_tid"),
        "{err}"
    );
    let check = stasis_as(id, &[], &["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("Error (map_files)"));
    // Nothing touched the task.
    let st = std::fs::read_to_string(format!("/proc/{}/status", fx.pid)).unwrap();
    assert!(st.contains("TracerPid:\t0"), "{st}");
}
