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

    /// The state letter of `pid` of this host (None: no such process).
    fn state(&self, pid: i32) -> Option<char> {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/root/proc/{pid}/stat", self.init)).ok()?;
        stat[stat.rfind(')')? + 1..].trim_start().chars().next()
    }

    /// Whether `pid` of this host runs: exists, neither stopped nor a zombie (the host's init
    /// never reaps).
    fn runs(&self, pid: i32) -> bool {
        matches!(self.state(pid), Some('R' | 'S' | 'D'))
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
        self.receive_on(&format!("{ADDR_B}:{PORT}"), extra)
    }

    /// [`Self::receive`] listening on `listen` (`--restore` is left out when `extra` says
    /// `--images-only`).
    fn receive_on(&self, listen: &str, extra: &[&str]) -> (Child, PathBuf) {
        let restore = !extra.contains(&"--images-only");
        let extra: Vec<&str> = extra
            .iter()
            .copied()
            .filter(|a| *a != "--images-only")
            .collect();
        let dir = self.path("dest");
        std::fs::create_dir_all(&dir).unwrap();
        let log = self.path("receive.log");
        let child = self
            .b
            .cmd(stasis())
            .args(["migrate-receive", "--listen", listen])
            .args(["-D", dir.to_str().unwrap(), "-v4"])
            .args(restore.then_some("--restore"))
            .args(["-o", log.to_str().unwrap()])
            .args(&extra)
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

/// fx-threads migrated from A to B with `EXTRA` on both sides: it runs (and passes) on B
/// only; with `packed`, its pages files are compressed and sealed there.
fn threads_move(tag: &'static str, packed: bool) {
    with_timeout(180, move || {
        let h = Hosts::new(tag);
        let result = h.launch(&h.a, tag);
        let key = h.path("key");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let k = key.to_str().unwrap();
        let key_args = ["--encrypt-key", k];
        let (recv, dest) = h.receive(if packed { &key_args[..] } else { &[] });
        let mut extra = vec!["--max-downtime", "50", "--max-iterations", "4"];
        if packed {
            extra.extend(["--compress", "zstd", "--encrypt-key", k]);
        }
        let out = h.migrate(&extra);
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
        let packs = common::dump::count_files(&dest.join("final"), "pages-");
        let sealed = std::fs::read_dir(dest.join("final"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".pack.img"));
        assert!(
            packs > 0 && sealed == packed,
            "packed pages files: {sealed}"
        );
    })
}

#[test]
fn threads_move_to_the_other_host() {
    threads_move("m", false);
}

#[test]
fn threads_move_compressed_and_encrypted() {
    threads_move("p", true);
}

#[test]
fn without_restore_the_images_arrive_and_the_source_runs_on() {
    with_timeout(180, || {
        let h = Hosts::new("i");
        let result = h.launch(&h.a, "imagesonly");
        let (recv, dest) = h.receive(&["--images-only"]);
        let out = h.migrate(&["--max-iterations", "2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(wait_exit(recv, 60).success(), "{}", h.log("receive.log"));
        assert!(dest.join("final/pstree.img").exists());
        assert!(dest.join("final/pagemap-1001.img").exists());
        assert!(h.a.runs(ROOT_PID), "the source copy does not run");
        assert_eq!(verdict(&h.a, &result), "PASS");
        assert!(!h.b.runs(ROOT_PID), "a copy runs on the destination");
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

/// A proxy in host B between the source (B:PORT) and migrate-receive (127.0.0.1:PORT+1) that
/// cuts both connections: `early` after 100 KB from the source (inside the first
/// iteration's pages), `final` when the source's Final frame passes (the source tree is
/// stopped then and must be resumed). Writes READY to argv[2] once listening.
const CUT_PROXY: &str = r#"
import socket, sys, threading
mode, ready, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
FINAL = bytes([7, 9, 0, 0, 0, 5, 0, 0, 0]) + b"final"
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("198.18.0.2", port)); l.listen(1)
open(ready, "w").write("READY")
src, _ = l.accept()
dst = socket.create_connection(("127.0.0.1", port + 1))
def back():
    try:
        while True:
            b = dst.recv(65536)
            if not b: break
            src.sendall(b)
    except OSError: pass
threading.Thread(target=back, daemon=True).start()
seen, tail = 0, b""
while True:
    b = src.recv(65536)
    if not b: break
    if mode == "early" and seen + len(b) >= 100000:
        dst.sendall(b[: 100000 - seen]); break
    w = tail + b
    if mode == "final" and FINAL in w:
        dst.sendall(b[: max(0, w.index(FINAL) - len(tail))]); break
    dst.sendall(b); seen += len(b); tail = w[-len(FINAL):]
for s in (src, dst):
    s.shutdown(socket.SHUT_RDWR); s.close()
"#;

/// The stream cut (`mode`: see [`CUT_PROXY`]): the source keeps (or gets back) the only
/// running copy, and the destination removes everything it received.
fn cut_stream(tag: &'static str, mode: &'static str) {
    with_timeout(180, move || {
        let h = Hosts::new(tag);
        let result = h.launch(&h.a, tag);
        let (recv, dest) = h.receive_on(&format!("127.0.0.1:{}", PORT + 1), &[]);
        let ready = h.path("proxy.ready");
        let mut proxy =
            h.b.cmd("python3")
                .args(["-c", CUT_PROXY, mode, ready.to_str().unwrap()])
                .arg(PORT.to_string())
                .spawn()
                .unwrap();
        wait_for(ready.to_str().unwrap(), 20);
        let out = h.migrate(&["--max-downtime", "0", "--max-iterations", "3"]);
        let _ = proxy.kill();
        let _ = proxy.wait();
        assert!(
            !out.status.success(),
            "{mode}: migrate succeeded through a cut stream"
        );
        assert!(
            !wait_exit(recv, 30).success(),
            "{mode}: the receiver succeeded"
        );
        let rlog = h.log("receive.log");
        assert!(rlog.contains("Error"), "{mode}: {rlog}");
        if mode == "final" {
            // The tree was dumped and stopped: the source resumed it.
            let slog = h.log("migrate.last.log");
            assert!(slog.contains("the source tree runs again"), "{slog}");
        }
        source_runs_alone(&h, &result, &dest, mode);
    })
}

#[test]
fn a_stream_cut_inside_the_pages_leaves_the_source_running() {
    cut_stream("c", "early");
}

#[test]
fn a_stream_cut_before_final_resumes_the_stopped_source() {
    cut_stream("f", "final");
}

/// The state letter of (global) `pid`.
fn global_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[test]
fn a_source_killed_with_the_tree_stopped_leaves_it_running() {
    with_timeout(180, || {
        let h = Hosts::new("d");
        let result = h.launch(&h.a, "diesource");
        let (recv, dest) = h.receive(&[]);
        // The source stops itself right after the final dump left the tree stopped.
        let mut nsenter =
            h.a.cmd(stasis())
                .args(["migrate", "-t", &ROOT_PID.to_string()])
                .args(["--to", &format!("{ADDR_B}:{PORT}"), "--max-iterations", "1"])
                // Its scratch directory inside ours: a killed source cannot remove it.
                .args(["-D", h.scratch.path().to_str().unwrap()])
                .env("STASIS_STOP_AT", "migrate-stopped")
                .spawn()
                .unwrap();
        let n = nsenter.id();
        let t0 = Instant::now();
        let source = loop {
            let kids =
                std::fs::read_to_string(format!("/proc/{n}/task/{n}/children")).unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                if global_state(p) == Some('T') {
                    break p;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the source never stopped"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(h.a.state(ROOT_PID), Some('T'), "the tree is not stopped");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(source),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // nsenter stopped itself when its child stopped (job control): it goes too.
        let _ = nsenter.kill();
        let _ = nsenter.wait();
        assert!(!wait_exit(recv, 30).success(), "the receiver succeeded");
        // The guardian resumed the tree: it runs on the source, alone.
        let t0 = Instant::now();
        while !h.a.runs(ROOT_PID) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        source_runs_alone(&h, &result, &dest, "source killed");
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
