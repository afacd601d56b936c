//! CRIU 4.2's command-line options: every one parses on `dump`, `restore` and `check` (accepted,
//! or refused with a message naming it), and the behaviour of the ones stasis implements:
//! action scripts (environment and order), `--pidfile` ignored on dump, `--status-fd` left
//! alone by dump, exit codes and the log's `Error (file:line): ...` lines, `--restore-sibling`,
//! config files, `--skip-in-flight`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::deadline::with_deadline;
use common::dump::{all_running, cgroup_path, kill_cgroup, launch_cmd, stasis_bin, Workload};
use common::lock::restore_lock;

/// How a CRIU option takes a value (getopt's has_arg); B: a BOOL_OPT flag.
#[derive(Clone, Copy, PartialEq)]
enum A {
    N,
    R,
    O,
    B,
}
use A::{B, N, O, R};

/// criu/config.c `long_opts` of CRIU 4.2, in its order (BOOL_OPT expanded into NAME and
/// no-NAME; the macros USK_EXT_PARAM, SK_EST_PARAM, ... replaced by their strings).
const CRIU_LONG: &[(&str, A)] = &[
    ("tree", R),
    ("leave-stopped", N),
    ("leave-running", N),
    ("restore-detached", B),
    ("no-restore-detached", B),
    ("restore-sibling", B),
    ("no-restore-sibling", B),
    ("daemon", B),
    ("no-daemon", B),
    ("images-dir", R),
    ("work-dir", R),
    ("log-file", R),
    ("join-ns", R),
    ("root", R),
    ("ext-unix-sk", O),
    ("help", N),
    ("tcp-established", B),
    ("no-tcp-established", B),
    ("close", R),
    ("log-pid", B),
    ("no-log-pid", B),
    ("version", N),
    ("evasive-devices", B),
    ("no-evasive-devices", B),
    ("pidfile", R),
    ("veth-pair", R),
    ("action-script", R),
    ("link-remap", B),
    ("no-link-remap", B),
    ("shell-job", B),
    ("no-shell-job", B),
    ("file-locks", B),
    ("no-file-locks", B),
    ("page-server", B),
    ("no-page-server", B),
    ("address", R),
    ("port", R),
    ("prev-images-dir", R),
    ("ms", N),
    ("track-mem", B),
    ("no-track-mem", B),
    ("auto-dedup", B),
    ("no-auto-dedup", B),
    ("libdir", R),
    ("cpu-cap", O),
    ("force-irmap", B),
    ("no-force-irmap", B),
    ("ext-mount-map", R),
    ("exec-cmd", N),
    ("manage-cgroups", O),
    ("cgroup-root", R),
    ("inherit-fd", R),
    ("feature", R),
    ("skip-mnt", R),
    ("enable-fs", R),
    ("enable-external-sharing", N),
    ("enable-external-masters", N),
    ("freeze-cgroup", R),
    ("ghost-limit", R),
    ("irmap-scan-path", R),
    ("lsm-profile", R),
    ("timeout", R),
    ("external", R),
    ("empty-ns", R),
    ("lazy-pages", N),
    ("extra", B),
    ("no-extra", B),
    ("experimental", B),
    ("no-experimental", B),
    ("all", N),
    ("cgroup-props", R),
    ("cgroup-props-file", R),
    ("cgroup-dump-controller", R),
    ("skip-in-flight", B),
    ("no-skip-in-flight", B),
    ("deprecated", B),
    ("no-deprecated", B),
    ("display-stats", B),
    ("no-display-stats", B),
    ("weak-sysctls", B),
    ("no-weak-sysctls", B),
    ("status-fd", R),
    ("tcp-close", B),
    ("no-tcp-close", B),
    ("verbosity", O),
    ("ps-socket", R),
    ("stream", B),
    ("no-stream", B),
    ("config", R),
    ("no-default-config", N),
    ("tls-cacert", R),
    ("tls-cacrl", R),
    ("tls-cert", R),
    ("tls-key", R),
    ("tls", B),
    ("no-tls", B),
    ("tls-no-cn-verify", N),
    ("cgroup-yard", R),
    ("pre-dump-mode", R),
    ("file-validation", R),
    ("skip-file-rwx-check", B),
    ("no-skip-file-rwx-check", B),
    ("lsm-mount-context", R),
    ("network-lock", R),
    ("mntns-compat-mode", B),
    ("no-mntns-compat-mode", B),
    ("unprivileged", B),
    ("no-unprivileged", B),
    ("ghost-fiemap", B),
    ("no-ghost-fiemap", B),
    ("allow-uprobes", B),
    ("no-allow-uprobes", B),
];

/// criu/config.c `short_opts`: "dSsRt:hD:o:v::x::Vr:jJ:lW:L:M:".
const CRIU_SHORT: &str = "dSsRt:hD:o:v::x::Vr:jJ:lW:L:M:";

/// A value CRIU accepts for option `name` (the scratch directory is `dir`).
fn value(name: &str, dir: &Path, pid: i32) -> String {
    let d = dir.display().to_string();
    match name {
        "tree" | "t" => pid.to_string(),
        "images-dir" | "work-dir" | "prev-images-dir" | "libdir" | "D" | "W" | "L" => d,
        "log-file" | "o" => "opt.log".into(),
        "join-ns" | "J" => "net:/proc/1/ns/net".into(),
        "root" | "r" => "/".into(),
        "close" | "status-fd" | "ps-socket" => "99".into(),
        "pidfile" => format!("{d}/pidfile"),
        "veth-pair" => "a=b".into(),
        "action-script" => "/bin/true".into(),
        "address" => "127.0.0.1".into(),
        "port" => "1234".into(),
        "ext-mount-map" | "M" => "a:b".into(),
        "cgroup-root" => "/x".into(),
        "inherit-fd" => "fd[5]:pipe:[1]".into(),
        "feature" => "seize".into(),
        "skip-mnt" | "irmap-scan-path" | "cgroup-yard" => "/x".into(),
        "enable-fs" => "proc".into(),
        "freeze-cgroup" => "/nonexistent-cgroup".into(),
        "ghost-limit" => "1M".into(),
        "lsm-profile" => "apparmor:x".into(),
        "timeout" => "5".into(),
        "external" => "mnt[/x]:y".into(),
        "empty-ns" => "net".into(),
        "config" => format!("{d}/empty.conf"),
        "pre-dump-mode" => "read".into(),
        "file-validation" => "filesize".into(),
        "network-lock" => "skip".into(),
        _ => "x".into(),
    }
}

/// A PID that is not in use (dumps of it fail after parsing, at the seize).
fn free_pid() -> i32 {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (1000..max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Runs `verb` with `extra` options after its usual ones; the output and status.
fn run_verb(verb: &str, extra: &[String], dir: &Path, pid: i32) -> (Option<i32>, String) {
    let mut cmd = stasis_bin();
    cmd.arg(verb);
    match verb {
        "dump" => cmd.args(["-t", &pid.to_string(), "-D"]).arg(dir),
        "restore" => cmd.arg("-D").arg(dir),
        _ => &mut cmd,
    };
    cmd.arg("--no-default-config").args(extra);
    let out = cmd.output().unwrap();
    (out.status.code(), text(&out))
}

/// What a run of `verb` prints when it got past its options.
fn reached_work(verb: &str, out: &str, pid: i32) -> bool {
    match verb {
        "dump" => out.contains(&format!("task {pid}")) || out.contains("nonexistent-cgroup"),
        "restore" => out.contains("inventory"),
        _ => out.contains("Looks good") || out.contains("Looks bad") || out.contains("seize is"),
    }
}

fn check_one(verb: &str, spelled: &str, extra: Vec<String>, dir: &Path, pid: i32) {
    let (code, out) = run_verb(verb, &extra, dir, pid);
    let info = matches!(spelled, "--help" | "-h" | "--version" | "-V");
    let clap_refused = out.contains("unexpected argument") || out.contains("invalid value");
    assert!(!clap_refused, "{verb} {extra:?}: not parsed:\n{out}");
    if info {
        assert_eq!(code, Some(0), "{verb} {spelled}:\n{out}");
        return;
    }
    // A short option may be named by its long spelling.
    let long = match spelled {
        "-S" => "--restore-sibling",
        "-d" => "--restore-detached",
        "-r" => "--root",
        s => s,
    };
    let named = [spelled, long].iter().any(|n| {
        out.contains(&format!("{n}:"))
            || out.contains(&format!("{n} "))
            || out.contains(&format!("{n}="))
    });
    assert!(
        reached_work(verb, &out, pid) || (code == Some(1) && named),
        "{verb} {extra:?}: neither accepted nor refused by name (status {code:?}):\n{out}"
    );
}

#[test]
fn every_criu_option_parses_on_dump_restore_and_check() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.conf"), "").unwrap();
    let pid = free_pid();
    for verb in ["dump", "restore", "check"] {
        for &(name, arg) in CRIU_LONG {
            let spelled = format!("--{name}");
            let mut extra = vec![spelled.clone()];
            if arg == R {
                extra.push(value(name, dir.path(), pid));
            }
            if name == "exec-cmd" && verb == "restore" {
                extra.extend(["--".into(), "/bin/true".into()]);
            }
            check_one(verb, &spelled, extra, dir.path(), pid);
        }
        let b = CRIU_SHORT.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c == b':' {
                continue;
            }
            let c = c as char;
            let spelled = format!("-{c}");
            let required = b.get(i + 1) == Some(&b':') && b.get(i + 2) != Some(&b':');
            let mut extra = vec![spelled.clone()];
            if required {
                extra.push(value(&c.to_string(), dir.path(), pid));
            }
            check_one(verb, &spelled, extra, dir.path(), pid);
        }
    }
}

#[test]
fn refused_options_name_themselves_and_are_in_help() {
    let dir = tempfile::tempdir().unwrap();
    let pid = free_pid();
    use stasis::cli::criu_options::{Status, OPTIONS};
    let refused: Vec<String> = OPTIONS
        .iter()
        .filter(|o| matches!(o.status, Status::NotBuilt(_)) && o.long != "ms")
        .map(|o| format!("--{}", o.long))
        .collect();
    assert!(!refused.is_empty());
    for opt in &refused {
        let mut args = vec![opt.clone()];
        if let Some(o) = stasis::cli::criu_options::by_long(&opt[2..]) {
            if o.arg == stasis::cli::criu_options::Arg::Required {
                args.push("x".into());
            }
        }
        let (code, out) = run_verb("dump", &args, dir.path(), pid);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(&format!("{opt}: not built yet")), "{out}");
    }
    for verb in ["dump", "restore", "check"] {
        let out = stasis_bin().args([verb, "--help"]).output().unwrap();
        let help = text(&out);
        for opt in [
            "--action-script",
            "--ghost-limit",
            "--manage-cgroups",
            "--restore-sibling",
            "--status-fd",
            "--tcp-close",
            "--no-NAME",
        ] {
            assert!(help.contains(opt), "{verb} --help lacks {opt}:\n{help}");
        }
    }
}

#[test]
fn failure_exit_code_and_criu_error_lines_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let pid = free_pid();
    let out = stasis_bin()
        .args([
            "dump",
            "-t",
            &pid.to_string(),
            "-o",
            "dump.log",
            "-v4",
            "-D",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.path().join("dump.log")).unwrap();
    // "(00.000123) Error (src/...rs:12): seize: task N died ..." then "Dumping FAILED."
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("Error (")).collect();
    assert!(errors.len() >= 2, "{log}");
    for l in &errors {
        let rest = l.strip_prefix('(').expect(l);
        let (ts, rest) = rest.split_once(") ").expect(l);
        let (s, us) = ts.split_once('.').expect(l);
        assert!(s.len() == 2 && us.len() == 6, "timestamp {ts} in {l}");
        let loc = rest.strip_prefix("Error (").expect(l);
        let (loc, _) = loc.split_once("): ").expect(l);
        let (file, line) = loc.rsplit_once(':').expect(l);
        assert!(file.ends_with(".rs") && line.parse::<u32>().is_ok(), "{l}");
    }
    assert!(
        errors.iter().any(|l| l.contains(&format!("task {pid}"))),
        "{log}"
    );
    assert!(errors.last().unwrap().ends_with("Dumping FAILED."), "{log}");
    // Default level: no timestamps; a refusal is an error line too.
    let out = stasis_bin()
        .args(["dump", "-t", "1", "--stream", "-o", "refused.log", "-D"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.path().join("refused.log")).unwrap();
    assert!(
        log.starts_with("Error (") && log.contains("): --stream: not built yet"),
        "{log}"
    );
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A `sleep` in its own session and a fresh cgroup.
fn sleeper(name: &str, base: i32) -> Workload {
    let ready = PathBuf::from(format!(
        "/tmp/stasis-dump-tests/{name}-{}.ready",
        std::process::id()
    ));
    std::fs::create_dir_all("/tmp/stasis-dump-tests").unwrap();
    launch_cmd(
        name,
        base,
        &format!("setsid sh -c 'touch {}; exec sleep 1000'", ready.display()),
        &ready,
    )
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn dump_scripts_pidfile_and_status_fd() {
    let base = 32600;
    let cg = cgroup_path("opt-scripts", base);
    with_deadline(
        90,
        move || kill_cgroup(&cg),
        move || {
            let w = sleeper("opt-scripts", base);
            let dir = tempfile::tempdir().unwrap();
            let work = tempfile::tempdir().unwrap();
            let record = work.path().join("record");
            let body = format!(
                "echo \"$(basename $0) $CRTOOLS_SCRIPT_ACTION $CRTOOLS_INIT_PID $(test -d $CRTOOLS_IMAGE_DIR && echo dir)\" >> {}",
                record.display()
            );
            let s1 = script(work.path(), "s1", &body);
            let s2 = script(work.path(), "s2", &body);
            let (r, wfd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            use std::os::fd::AsRawFd;
            let raw = wfd.as_raw_fd();
            let pidfile = work.path().join("pid");
            let mut cmd = stasis_bin();
            cmd.args(["dump", "-t", &w.pid.to_string(), "-R", "-D"])
                .arg(dir.path())
                .arg("--action-script")
                .arg(&s1)
                .arg("--action-script")
                .arg(&s2)
                .arg("--pidfile")
                .arg(&pidfile)
                .args(["--status-fd", &raw.to_string()]);
            // Only stasis gets the write end: close-on-exec is cleared in its child alone.
            use std::os::unix::process::CommandExt;
            // SAFETY: fcntl is async-signal-safe and changes the child's own descriptor only.
            unsafe {
                cmd.pre_exec(move || {
                    libc::fcntl(raw, libc::F_SETFD, 0);
                    Ok(())
                })
            };
            let out = cmd.output().unwrap();
            drop(wfd);
            assert!(out.status.success(), "{}", text(&out));
            let pid = w.pid;
            // Most recently given first (CRIU's list), pre-dump then post-dump.
            assert_eq!(
                lines(&record),
                vec![
                    format!("s2 pre-dump {pid} dir"),
                    format!("s1 pre-dump {pid} dir"),
                    format!("s2 post-dump {pid} dir"),
                    format!("s1 post-dump {pid} dir"),
                ]
            );
            assert!(
                !pidfile.exists(),
                "--pidfile is ignored on dump, as CRIU does"
            );
            let mut b = [0u8; 1];
            assert_eq!(
                nix::unistd::read(&r, &mut b),
                Ok(0),
                "dump writes nothing to --status-fd (CRIU: page-server and lazy-pages only)"
            );
            assert!(all_running(&w));

            // A failing post-dump script: exit 255 and the tree resumed, even without -R.
            let bad = script(work.path(), "bad", "exit 7");
            let dir2 = tempfile::tempdir().unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &pid.to_string(), "-D"])
                .arg(dir2.path())
                .arg(format!("--action-script={}", bad.display()))
                .output()
                .unwrap();
            // pre-dump fails first: exit 1 and the tree untouched.
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(text(&out).contains("pre-dump script"), "{}", text(&out));
            assert!(all_running(&w));
            let post_only = script(
                work.path(),
                "post-only",
                "test \"$CRTOOLS_SCRIPT_ACTION\" != post-dump",
            );
            let out = stasis_bin()
                .args(["dump", "-t", &pid.to_string(), "-D"])
                .arg(dir2.path())
                .arg("--action-script")
                .arg(&post_only)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(255), "{}", text(&out));
            assert!(text(&out).contains("post-dump script"), "{}", text(&out));
            assert!(
                all_running(&w),
                "the tree runs on after a failed post-dump script"
            );
        },
    )
}

#[test]
fn restore_scripts_in_order_and_sibling() {
    let base = 32620;
    let cg = cgroup_path("opt-restore", base);
    let _lock = restore_lock();
    with_deadline(
        120,
        move || kill_cgroup(&cg),
        move || {
            let w = sleeper("opt-restore", base);
            let dir = tempfile::tempdir().unwrap();
            let work = tempfile::tempdir().unwrap();
            // Options from a config file, CRIU's format.
            let conf = work.path().join("dump.conf");
            std::fs::write(
                &conf,
                "# dump options\nlog-file \"dump.log\"  # quoted\nverbosity 4\n",
            )
            .unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "-D"])
                .arg(dir.path())
                .arg("--config")
                .arg(&conf)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            assert!(
                std::fs::read_to_string(dir.path().join("dump.log"))
                    .unwrap()
                    .contains("Dumping finished successfully"),
                "the config file's log-file and verbosity apply"
            );
            // The dumped (killed) sleep was our child: reap it so its PID is free again.
            let mut w = w;
            if let Some(mut c) = w.child.take() {
                let _ = c.wait();
            }
            let record = work.path().join("record");
            let s = script(
                work.path(),
                "s",
                &format!(
                    "echo \"$CRTOOLS_SCRIPT_ACTION ${{CRTOOLS_INIT_PID:-none}}\" >> {}",
                    record.display()
                ),
            );
            let out = stasis_bin()
                .args(["restore", "-d", "-S", "-D"])
                .arg(dir.path())
                .arg("--action-script")
                .arg(&s)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            let pid = w.pid;
            assert_eq!(
                lines(&record),
                vec![
                    "pre-restore none".to_string(),
                    format!("post-restore {pid}"),
                    format!("pre-resume {pid}"),
                    format!("post-resume {pid}"),
                ]
            );
            // --restore-sibling: the root is our child, not the (exited) restorer's.
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .unwrap()
                .trim()
                .to_string();
            assert_eq!(ppid, std::process::id().to_string(), "{status}");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            // --restore-sibling without -d is refused, as CRIU does.
            let out = stasis_bin()
                .args(["restore", "-S", "-D"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1));
            assert!(
                text(&out).contains("--restore-sibling only makes sense with --restore-detached"),
                "{}",
                text(&out)
            );
        },
    )
}

#[test]
fn listener_with_connection_in_flight_needs_skip_in_flight() {
    let base = 32640;
    let cg = cgroup_path("opt-inflight", base);
    with_deadline(
        90,
        move || kill_cgroup(&cg),
        move || {
            let work = tempfile::tempdir().unwrap();
            let ready = work.path().join("ready");
            let py = work.path().join("inflight.py");
            // A listener with one connection it never accepts (the client is in the tree).
            std::fs::write(
                &py,
                format!(
                    "import socket, time\n\
                     l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(4)\n\
                     c = socket.socket(); c.connect(l.getsockname())\n\
                     c.close()\n\
                     open('{}', 'w').write('ready')\n\
                     while True: time.sleep(1)\n",
                    ready.display()
                ),
            )
            .unwrap();
            let w = launch_cmd(
                "opt-inflight",
                base,
                &format!("setsid python3 {}", py.display()),
                &ready,
            );
            let dir = tempfile::tempdir().unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "-R", "-D"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(text(&out).contains("--skip-in-flight"), "{}", text(&out));
            assert!(all_running(&w));
            let out = stasis_bin()
                .args([
                    "dump",
                    "-t",
                    &w.pid.to_string(),
                    "-R",
                    "--skip-in-flight",
                    "-D",
                ])
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            assert!(all_running(&w));
        },
    )
}

/// A python3 program `code` (it must create `READY`, the path in `$READY`, when set up) in
/// its own session and a fresh cgroup.
fn python_workload(name: &str, base: i32, code: &str, work: &Path) -> Workload {
    let ready = work.join("READY");
    let py = work.join(format!("{name}.py"));
    std::fs::write(
        &py,
        format!(
            "import os, socket, time\nREADY = {:?}\n{code}\nopen(READY, 'w').write('ready')\n\
             while True: time.sleep(1)\n",
            ready.display().to_string()
        ),
    )
    .unwrap();
    launch_cmd(
        name,
        base,
        &format!("setsid python3 {}", py.display()),
        &ready,
    )
}

fn dump_out(pid: i32, dir: &Path, extra: &[&str]) -> Output {
    stasis_bin()
        .args(["dump", "-t", &pid.to_string(), "-R", "-D"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn ghost_limit_and_link_remap() {
    let base = 32660;
    let cg = cgroup_path("opt-ghost", base);
    let cg2 = cgroup_path("opt-linked", base);
    with_deadline(
        90,
        move || {
            kill_cgroup(&cg);
            kill_cgroup(&cg2);
        },
        move || {
            let work = tempfile::tempdir().unwrap();
            let big = work.path().join("big");
            // An unlinked 2 MiB file held open: over CRIU's default 1 MiB ghost limit.
            let w = python_workload(
                "opt-ghost",
                base,
                &format!(
                    "f = open({:?}, 'wb+'); f.write(b'x' * (2 << 20)); f.flush(); os.unlink({:?})",
                    big.display().to_string(),
                    big.display().to_string()
                ),
                work.path(),
            );
            let dir = tempfile::tempdir().unwrap();
            let out = dump_out(w.pid, dir.path(), &[]);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(text(&out).contains("--ghost-limit"), "{}", text(&out));
            let out = dump_out(w.pid, dir.path(), &["--ghost-limit", "3M"]);
            assert!(out.status.success(), "{}", text(&out));
            assert!(dir.path().join("ghost-file-1.img").exists());
            assert!(all_running(&w));

            // A file whose name was unlinked while another link remains: a link remap.
            let work2 = tempfile::tempdir().unwrap();
            let a = work2.path().join("a");
            let b = work2.path().join("b");
            let w2 = python_workload(
                "opt-linked",
                base,
                &format!(
                    "f = open({a:?}, 'w'); os.link({a:?}, {b:?}); os.unlink({a:?})",
                    a = a.display().to_string(),
                    b = b.display().to_string()
                ),
                work2.path(),
            );
            let out = dump_out(w2.pid, dir.path(), &[]);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(
                text(&out).contains("without the --link-remap option"),
                "{}",
                text(&out)
            );
            let out = dump_out(w2.pid, dir.path(), &["--link-remap"]);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(
                text(&out).contains("link remaps (--link-remap) are not built yet"),
                "{}",
                text(&out)
            );
            assert!(all_running(&w2));
        },
    )
}

#[test]
fn tcp_close_dumps_without_repair_and_restores_closed() {
    let base = 32680;
    let cg = cgroup_path("opt-tcpclose", base);
    let _lock = restore_lock();
    with_deadline(
        120,
        move || kill_cgroup(&cg),
        move || {
            let work = tempfile::tempdir().unwrap();
            // Both ends of a loopback connection in the tree, the listener closed.
            let w = python_workload(
                "opt-tcpclose",
                base,
                "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n\
                 c = socket.create_connection(l.getsockname()); s, _ = l.accept(); l.close()",
                work.path(),
            );
            let dir = tempfile::tempdir().unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "-D"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(all_running(&w));
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "--tcp-close", "-D"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            assert!(!dir.path().join("tcp-stream-1.img").exists());
            let pid = w.pid;
            let mut w = w;
            if let Some(mut c) = w.child.take() {
                let _ = c.wait();
            }
            let out = stasis_bin()
                .args(["restore", "-d", "-D"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(text(&out).contains("--tcp-close"), "{}", text(&out));
            let out = stasis_bin()
                .args(["restore", "-d", "--tcp-close", "-D"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            // The two sockets are back, closed: no established connection of this task.
            let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(
                        l.strip_prefix("socket:[")?
                            .trim_end_matches(']')
                            .to_string(),
                    )
                })
                .collect();
            assert_eq!(inodes.len(), 2, "{inodes:?}");
            let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
            for line in tcp.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if inodes.iter().any(|i| f.get(9) == Some(&i.as_str())) {
                    assert_ne!(f[3], "01", "a restored connection is established: {line}");
                }
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        },
    )
}
