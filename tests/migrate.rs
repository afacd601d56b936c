//! `stasis migrate` → `stasis migrate-receive --restore` between two "hosts" made here: each
//! host is its own pid, net, mount and uts namespaces (`unshare ... sleep infinity`, stasis run
//! in it with `nsenter -a`), the two joined by a veth pair with addresses of the benchmarking
//! range 198.18.0.0/15 (traffic never leaves the namespaces made here).
//!
//! ```text
//!  host A (198.18.0.1)                         host B (198.18.0.2)
//!  fx-threads at PID 1001 (fx-launch)          stasis migrate-receive --listen .2:4700 --restore
//!  stasis migrate -t 1001 --to .2:4700  ──►    fx-threads at PID 1001 again, verified (PASS)
//! ```
//! Every case ends with exactly one running copy: migrated (B runs it, A's is gone), or refused
//! / cut / failed (A runs it, B has none). Everything is removed by [`Hosts`]'s drop (the
//! namespaces' init processes die, with them every process and the veth pair).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::deadline::with_timeout;

const FX: &str = "/tmp/criu-fixtures/bin";
const ROOT_PID: i32 = 1001;
const ADDR_A: &str = "198.18.0.1";
const ADDR_B: &str = "198.18.0.2";
const PORT: u16 = 4700;

fn stasis() -> &'static str {
    env!("CARGO_BIN_EXE_stasis")
}

/// One host: the `unshare` process and the init of its namespaces (`sleep infinity`).
struct Host {
    unshare: Child,
    init: i32,
}

impl Host {
    fn new() -> Host {
        let mut unshare = Command::new("unshare")
            .args([
                "--pid",
                "--net",
                "--mount",
                "--uts",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "sleep",
                "infinity",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        let me = unshare.id();
        let t0 = Instant::now();
        let init = loop {
            let kids = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
                .unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next() {
                // The child is in the new namespaces once it runs sleep.
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                if comm.trim() == "sleep" {
                    break p.parse().unwrap();
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = unshare.kill();
                panic!("unshare made no host");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Host { unshare, init }
    }

    /// A command run inside every namespace of the host.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.init.to_string(), "-a", program]);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    fn sh(&self, script: &str) {
        let out = self
            .cmd("sh")
            .args(["-c", script])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether `pid` of this host runs (exists and is no zombie; the host's init never reaps).
    fn runs(&self, pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/root/proc/{pid}/stat", self.init))
            .unwrap_or_default();
        match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        }
    }

    fn comm(&self, pid: i32) -> String {
        std::fs::read_to_string(format!("/proc/{}/root/proc/{pid}/comm", self.init))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The init's death ends the pid namespace (every process in it) and the net namespace
        // with its end of the veth pair (and so the pair).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.init),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// Two hosts joined by a veth pair, A = 198.18.0.1, B = 198.18.0.2 (/24).
struct Hosts {
    a: Host,
    b: Host,
    veth: String,
    scratch: tempfile::TempDir,
}

impl Hosts {
    fn new(tag: &str) -> Hosts {
        common::fixtures::install_if_missing();
        let a = Host::new();
        let b = Host::new();
        let veth = format!("mg{}{tag}", std::process::id() % 100_000);
        let peer = format!("{veth}b");
        let hosts = Hosts {
            a,
            b,
            veth: veth.clone(),
            scratch: tempfile::tempdir().unwrap(),
        };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &veth, "netns", &hosts.a.init.to_string()]);
        ip(&["link", "set", &peer, "netns", &hosts.b.init.to_string()]);
        hosts.a.sh(&format!(
            "ip addr add {ADDR_A}/24 dev {veth} && ip link set {veth} up && ip link set lo up"
        ));
        hosts.b.sh(&format!(
            "ip addr add {ADDR_B}/24 dev {peer} && ip link set {peer} up && ip link set lo up"
        ));
        hosts
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// fx-threads (17 threads, self-checking) at PID 1001 of `host`; its result file.
    fn launch(&self, host: &Host, tag: &str) -> PathBuf {
        let result = self.path(&format!("{tag}.result"));
        let st = host
            .cmd(&format!("{FX}/fx-launch"))
            .args([
                &ROOT_PID.to_string(),
                &format!("{FX}/fx-threads"),
                result.to_str().unwrap(),
                "16",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "fx-launch in the host");
        wait_for(&format!("{}.ready", result.display()), 20);
        result
    }

    /// `stasis migrate-receive --listen B:PORT -D DIR --restore EXTRA...` in host B, once it
    /// listens.
    fn receive(&self, extra: &[&str]) -> (Child, PathBuf) {
        let dir = self.path("dest");
        std::fs::create_dir_all(&dir).unwrap();
        let log = self.path("receive.log");
        let child = self
            .b
            .cmd(stasis())
            .args(["migrate-receive", "--listen", &format!("{ADDR_B}:{PORT}")])
            .args(["-D", dir.to_str().unwrap(), "--restore", "-v4"])
            .args(["-o", log.to_str().unwrap()])
            .args(extra)
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "migrate-receive did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (child, dir)
    }

    /// `stasis migrate -t 1001 --to B:PORT EXTRA...` in host A.
    fn migrate(&self, extra: &[&str]) -> Output {
        let log = self.path("migrate.log");
        let out = self
            .a
            .cmd(stasis())
            .args(["migrate", "-t", &ROOT_PID.to_string()])
            .args(["--to", &format!("{ADDR_B}:{PORT}")])
            .args(["-v4", "-o", log.to_str().unwrap()])
            .args(extra)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let _ = std::fs::copy(&log, self.path("migrate.last.log"));
        out
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Only left in this namespace when the setup failed before moving it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
    }
}

fn wait_for(path: &str, secs: u64) {
    let t0 = Instant::now();
    while !Path::new(path).exists() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "no {path}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGUSR2 to the workload at 1001 of `host` and its verdict.
fn verdict(host: &Host, result: &Path) -> String {
    let _ = std::fs::remove_file(result);
    let st = host
        .cmd("kill")
        .args(["-USR2", &ROOT_PID.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -USR2 {ROOT_PID}");
    wait_for(result.to_str().unwrap(), 20);
    std::thread::sleep(Duration::from_millis(50));
    std::fs::read_to_string(result).unwrap().trim().to_string()
}

fn wait_exit(mut c: Child, secs: u64) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            let _ = c.kill();
            panic!("migrate-receive did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The source keeps running its copy (verified by the workload itself), the destination has
/// none and no images left.
fn source_runs_alone(h: &Hosts, result: &Path, dest: &Path, what: &str) {
    assert!(h.a.runs(ROOT_PID), "{what}: the source copy does not run");
    assert_eq!(verdict(&h.a, result), "PASS", "{what}: the source copy");
    assert!(
        h.b.comm(ROOT_PID) != "fx-threads",
        "{what}: a copy runs on the destination too"
    );
    let left: Vec<_> = std::fs::read_dir(dest)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{what}: the destination kept {left:?}");
}

#[test]
fn threads_move_to_the_other_host() {
    with_timeout(180, || {
        let h = Hosts::new("m");
        let result = h.launch(&h.a, "threads");
        let (recv, _dest) = h.receive(&[]);
        let out = h.migrate(&["--max-downtime", "50", "--max-iterations", "4"]);
        assert!(
            out.status.success(),
            "migrate: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            h.log("migrate.last.log")
        );
        assert!(wait_exit(recv, 60).success(), "{}", h.log("receive.log"));
        let log = h.log("migrate.last.log");
        assert!(log.contains("pre-copy stopped after"), "{log}");
        // Exactly one copy: the destination's, which checks itself.
        assert!(!h.a.runs(ROOT_PID), "the source copy is still there");
        assert!(h.b.runs(ROOT_PID), "no copy on the destination");
        assert_eq!(h.b.comm(ROOT_PID), "fx-threads");
        assert_eq!(verdict(&h.b, &result), "PASS");
    })
}

#[test]
fn nothing_listening_leaves_the_source_running() {
    with_timeout(120, || {
        let h = Hosts::new("n");
        let result = h.launch(&h.a, "nolisten");
        let out = h.migrate(&[]);
        assert!(!out.status.success(), "migrate to nobody succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("connect to"), "{err}");
        source_runs_alone(&h, &result, &h.path("dest"), "nothing listening");
    })
}

#[test]
fn a_wrong_key_is_refused_before_anything_moves() {
    with_timeout(120, || {
        let h = Hosts::new("k");
        let result = h.launch(&h.a, "wrongkey");
        let (k1, k2) = (h.path("k1"), h.path("k2"));
        std::fs::write(&k1, [1u8; 32]).unwrap();
        std::fs::write(&k2, [2u8; 32]).unwrap();
        let (recv, dest) = h.receive(&["--encrypt-key", k1.to_str().unwrap()]);
        let out = h.migrate(&["--encrypt-key", k2.to_str().unwrap()]);
        assert!(!out.status.success(), "migrate with a wrong key succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("wrong key"), "{err}");
        assert!(!wait_exit(recv, 30).success());
        assert!(h.log("receive.log").contains("wrong key"));
        source_runs_alone(&h, &result, &dest, "wrong key");
    })
}

#[test]
fn a_source_that_gives_up_leaves_nothing_on_the_destination() {
    with_timeout(120, || {
        let h = Hosts::new("g");
        let (recv, dest) = h.receive(&[]);
        // No such tree: the source fails its first pre-dump after the handshake.
        let log = h.path("giveup.log");
        let out =
            h.a.cmd(stasis())
                .args(["migrate", "-t", "4242", "--to", &format!("{ADDR_B}:{PORT}")])
                .args(["-o", log.to_str().unwrap()])
                .stderr(Stdio::piped())
                .output()
                .unwrap();
        assert!(!out.status.success());
        assert!(!wait_exit(recv, 30).success());
        let rlog = h.log("receive.log");
        assert!(rlog.contains("the source gave up"), "{rlog}");
        let left: Vec<_> = std::fs::read_dir(&dest).unwrap().flatten().collect();
        assert!(left.is_empty(), "the destination kept {left:?}");
    })
}

#[test]
fn a_cut_stream_leaves_the_source_running() {
    with_timeout(180, || {
        let h = Hosts::new("c");
        let result = h.launch(&h.a, "cut");
        let (mut recv, dest) = h.receive(&[]);
        // Kill the destination as soon as the first iteration is in (the source goes on
        // iterating: a zero budget is never met).
        let killer = {
            let log = h.path("receive.log");
            let pid = recv.id();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("iteration 0 (")
                {
                    if t0.elapsed() > Duration::from_secs(60) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                true
            })
        };
        let out = h.migrate(&["--max-downtime", "0", "--max-iterations", "8"]);
        assert!(killer.join().unwrap(), "the first iteration never arrived");
        let _ = recv.wait();
        assert!(
            !out.status.success(),
            "migrate succeeded without its destination"
        );
        assert!(!h.b.runs(ROOT_PID) || h.b.comm(ROOT_PID) != "fx-threads");
        assert!(h.a.runs(ROOT_PID), "the source copy does not run");
        assert_eq!(
            verdict(&h.a, &result),
            "PASS",
            "the source copy after a cut"
        );
        // The killed receiver removed nothing itself: its files are there, no process.
        let _ = dest;
    })
}

#[test]
fn a_failed_restore_resumes_the_source() {
    with_timeout(180, || {
        let h = Hosts::new("r");
        let result = h.launch(&h.a, "restorefail");
        // PID 1001 of the destination is taken: the restore there fails.
        let st =
            h.b.cmd(&format!("{FX}/fx-launch"))
                .args([&ROOT_PID.to_string(), "/bin/sleep", "1000"])
                .status()
                .unwrap();
        assert!(st.success());
        let (recv, _dest) = h.receive(&[]);
        let out = h.migrate(&["--max-iterations", "1"]);
        assert!(!out.status.success(), "migrate succeeded onto a taken PID");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("restore on the destination"), "{err}");
        assert!(!wait_exit(recv, 30).success());
        assert_eq!(
            h.b.comm(ROOT_PID),
            "sleep",
            "the destination's PID 1001 changed"
        );
        assert!(h.a.runs(ROOT_PID), "the source copy does not run");
        assert_eq!(verdict(&h.a, &result), "PASS", "the resumed source copy");
    })
}
