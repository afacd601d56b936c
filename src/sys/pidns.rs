//! Running something inside a fresh PID namespace (tests restore fixtures there when a PID the
//! images need is held by an unrelated process of the machine).
//!
//! ```text
//! caller ── fork/spawn ──> outer: unshare(CLONE_NEWPID | CLONE_NEWNS), mounts "/" rprivate
//!                            │ fork (first child of the new namespace)
//!                            └─> init, PID 1: PR_SET_PDEATHSIG(SIGKILL), fresh /proc, fork
//!                                  └─> worker, PID 2: runs the body / execs the command
//! init reaps every orphan (restored trees reparent to it) and exits with the worker's status
//! as soon as the worker ends: the kernel then kills what is left in the namespace. outer
//! exits with init's status (128 + signal when killed). Killing outer kills init (death
//! signal) and so the whole namespace: a timeout needs to kill only the process it spawned.
//! ```
//!
//! outer and init close every fd above 2, so a pipe the caller waits on (e.g. the exec-error
//! pipe of `std::process::Command`, or a result pipe) stays open only in the worker.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// Exit status of a process that died of signal `sig`, as shells report it.
fn status_code(st: libc::c_int) -> libc::c_int {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        125
    }
}

/// Closes every fd above 2 of the calling process.
fn close_above_stdio() {
    // SAFETY: close_range only closes descriptors of this process; the callers (outer, init)
    // use nothing but their own stack afterwards.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Waits for `pid` (retrying on EINTR) and returns its exit code.
fn wait_code(pid: libc::pid_t) -> libc::c_int {
    loop {
        let mut st = 0;
        // SAFETY: waits for our own child; st is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            return status_code(st);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 126;
        }
    }
}

/// Called in a process of its own (a fork, or `pre_exec`): only the worker, PID 2 of a fresh
/// PID namespace with its own /proc, returns `Ok`; outer and init never return. Uses only
/// async-signal-safe calls (no allocation), so it may run in the fork of a threaded process.
fn become_worker() -> io::Result<()> {
    // SAFETY: unshare affects only this process (its future children get the new PID
    // namespace; the mount namespace is a private copy).
    if unsafe { libc::unshare(libc::CLONE_NEWPID | libc::CLONE_NEWNS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: remounts in our private mount namespace; the strings are NUL-terminated literals.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the child runs async-signal-safe code only (below) until it returns to a
    // caller that execs or runs its body in a single-threaded process.
    let init = unsafe { libc::fork() };
    if init < 0 {
        return Err(io::Error::last_os_error());
    }
    if init > 0 {
        close_above_stdio();
        let code = wait_code(init);
        // SAFETY: ends outer without running the caller's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    // init (PID 1): dies with outer.
    // SAFETY: prctl on the calling process.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: mounts a procfs of this (new) PID namespace over /proc in our private mount
    // namespace; NUL-terminated literals.
    let r = unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; the worker returns to the caller.
    let worker = unsafe { libc::fork() };
    if worker < 0 {
        return Err(io::Error::last_os_error());
    }
    if worker == 0 {
        return Ok(());
    }
    close_above_stdio();
    loop {
        let mut st = 0;
        // SAFETY: reaps any child of init (the worker and every orphan of the namespace).
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r == worker {
            // SAFETY: init's exit tears the namespace down.
            unsafe { libc::_exit(status_code(st)) };
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // SAFETY: as above.
            unsafe { libc::_exit(126) };
        }
    }
}

/// Makes `cmd` run as PID 2 of a fresh PID namespace (PID 1 is a reaping init, /proc is the
/// namespace's own). The spawned child is "outer": its exit status is the command's
/// (128 + signal if it was killed); killing it kills everything in the namespace.
pub fn command_in_new_pid_ns(cmd: &mut Command) -> &mut Command {
    // SAFETY: become_worker uses only async-signal-safe calls, as pre_exec requires.
    unsafe { cmd.pre_exec(become_worker) }
}

/// Runs `body` as PID 2 of a fresh PID namespace (forked from this process) and waits at most
/// `max` for it. `Err` carries the body's panic message, or what went wrong around it
/// (namespace setup, exit status, timeout: then the whole namespace is killed).
pub fn run_in_new_pid_ns(body: impl FnOnce(), max: Duration) -> Result<(), String> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", io::Error::last_os_error()));
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: the child only runs become_worker (async-signal-safe) and then, as the
    // single-threaded worker, the body; it never returns from this function.
    let outer = unsafe { libc::fork() };
    if outer < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if outer == 0 {
        let msg = match become_worker() {
            Err(e) => Some(format!("enter a new pid namespace: {e}")),
            Ok(()) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(body))
                .err()
                .map(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into())
                }),
        };
        let code = match msg {
            None => 0,
            Some(m) => {
                // SAFETY: writes our own buffer to our own pipe.
                unsafe { libc::write(wr, m.as_ptr().cast(), m.len()) };
                1
            }
        };
        // SAFETY: leaves the forked worker without unwinding into the caller's frames.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: closes our copy of the write end.
    unsafe { libc::close(wr) };
    let end = Instant::now() + max;
    let mut msg = Vec::new();
    let mut timed_out = false;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let mut pfd = libc::pollfd {
            fd: rd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if n <= 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: buf is writable for its length.
        let got = unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            break;
        }
        msg.extend_from_slice(&buf[..got as usize]);
    }
    // SAFETY: closes our read end.
    unsafe { libc::close(rd) };
    if timed_out {
        // SAFETY: kills our own child; init follows through its death signal.
        unsafe { libc::kill(outer, libc::SIGKILL) };
    }
    let code = wait_code(outer);
    if timed_out {
        return Err(format!("timed out after {max:?} in the new pid namespace"));
    }
    match (code, msg.is_empty()) {
        (0, true) => Ok(()),
        (_, false) => Err(String::from_utf8_lossy(&msg).into_owned()),
        (c, true) => Err(format!("pid namespace run ended with status {c}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_runs_as_pid_2_with_its_own_proc() {
        let r = run_in_new_pid_ns(
            || {
                assert_eq!(std::process::id(), 2, "worker pid");
                let me = std::fs::read_link("/proc/self").expect("/proc/self");
                assert_eq!(me.to_str(), Some("2"), "/proc is the namespace's");
                let init = std::fs::read_to_string("/proc/1/status").expect("/proc/1");
                assert!(
                    init.contains("\nPPid:\t0\n"),
                    "pid 1 is the namespace's init"
                );
            },
            Duration::from_secs(30),
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn a_panic_in_the_body_is_reported() {
        let r = run_in_new_pid_ns(|| panic!("boom in the namespace"), Duration::from_secs(30));
        assert_eq!(r, Err("boom in the namespace".to_string()));
    }

    #[test]
    fn a_stuck_body_is_killed() {
        let r = run_in_new_pid_ns(
            || std::thread::sleep(Duration::from_secs(600)),
            Duration::from_secs(1),
        );
        assert!(r.unwrap_err().contains("timed out"));
    }

    #[test]
    fn a_command_runs_as_pid_2_and_its_status_comes_back() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo $$; exit 7"])
            .stdout(std::process::Stdio::piped());
        command_in_new_pid_ns(&mut cmd);
        let child = cmd.spawn().expect("spawn");
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(out) => out.expect("wait"),
            Err(_) => {
                // SAFETY: kills our own child (and with it the namespace).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("command in a new pid namespace timed out");
            }
        };
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    }
}
