//! Post-copy restore ("lazy pages") end to end: a workload with 64 MiB of patterned private
//! anonymous memory and reader threads (tests/common/workload_lazy.c) is restored with
//! `restore --lazy-pages` while a `stasis lazy-pages` daemon serves its page faults, and
//! checks every page itself afterwards.
//!
//! ```text
//! local       dump ─► images (PE_PRESENT|PE_LAZY) ─► daemon -D (pages from the images)
//!             ─► restore --lazy-pages ─► verdict; the daemon exits once all pages are in
//! remote      dump --lazy-pages --port P (images without the lazy pages, the tree frozen)
//!             ─► in a fresh pid namespace: daemon --page-server, restore --lazy-pages,
//!             verdict ─► the dump ends, its tree killed
//! CRIU 4.2    the same with `criu dump --lazy-pages` (STASIS_CRIU=/path/to/criu)
//! no daemon   restore --lazy-pages fails at once, naming the socket; nothing runs
//! lost server the daemon's page server dies: the daemon kills the restored tree and says so
//!             (if that happens during the restore, the restore fails naming the dead task)
//! ```

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::dump::*;
use common::lock::restore_lock;
use common::restore::wait_child;

const MIB: u64 = 64;
const THREADS: &str = "4";

/// Launches the lazy workload at a free pid from `base`.
fn launch_lazy(name: &str, base: i32) -> Workload {
    let bin = common::workload::c_program(
        "workload_lazy",
        include_str!("common/workload_lazy.c"),
        &["-pthread"],
    );
    let results = PathBuf::from("/tmp/stasis-dump-tests");
    std::fs::create_dir_all(&results).unwrap();
    let result = results.join(format!("{name}-{}-{base}.result", std::process::id()));
    for suffix in ["", ".ready", ".tmp"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", result.display()));
    }
    let mut w = launch_program(
        name,
        base,
        bin.to_str().unwrap(),
        &[result.to_str().unwrap(), &MIB.to_string(), THREADS],
    );
    w.result = result.clone();
    wait_path(Path::new(&format!("{}.ready", result.display())), 30);
    w
}

fn wait_path(p: &Path, secs: u64) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "no {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pages of `PE_LAZY` entries (with data or not) in the task's pagemap.
fn lazy_pages(dir: &Path, pid: i32) -> (u64, u64) {
    let pm =
        stasis_images::pagemap::Pagemap::read_file(dir.join(format!("pagemap-{pid}.img"))).unwrap();
    let lazy = |present: bool| -> u64 {
        pm.runs
            .iter()
            .filter(|r| r.flags & 2 != 0 && (r.flags & 4 != 0) == present)
            .map(|r| r.nr_pages)
            .sum()
    };
    (lazy(true), lazy(false))
}

/// Starts `stasis lazy-pages -D dir -o lazy.log -v4 EXTRA...`; returns once its socket exists.
fn start_daemon(dir: &Path, extra: &[&str]) -> Child {
    let child = stasis_bin()
        .args(["lazy-pages", "-o", "lazy.log", "-v4", "-D"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_path(&dir.join("lazy-pages.socket"), 20);
    child
}

/// Launches the workload and dumps it (plainly) into a new directory; returns once the dumped
/// tree is gone, with its pids recorded in `restored` (killed if the test fails).
fn launch_and_dump(
    name: &str,
    base: i32,
    restored: &Restored,
) -> (Workload, tempfile::TempDir, Vec<i32>) {
    let w = launch_lazy(name, base);
    let tmp = tempfile::tempdir().unwrap();
    stasis_dump(w.pid, tmp.path(), &[]);
    let pids = pids_of(tmp.path());
    *restored.lock().unwrap() = pids.clone();
    wait_gone(&pids, 10, "the dumped tree");
    (w, tmp, pids)
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

#[test]
fn local_images_served_on_fault_and_in_background() {
    let _lock = restore_lock();
    let (name, base) = ("lazy-local", 38100);
    with_round_trip_deadline(240, cgroup_path(name, base), move |restored| {
        let (w, tmp, pids) = launch_and_dump(name, base, &restored);
        let dir = tmp.path();
        // A plain dump marks private anonymous pages PE_LAZY (with their data), as CRIU.
        let (with_data, without) = lazy_pages(dir, w.pid);
        assert!(
            with_data >= MIB * 256 && without == 0,
            "{with_data} {without}"
        );

        // No daemon: refused up front, nothing started.
        let out = stasis_bin()
            .args(["restore", "-d", "--lazy-pages", "-D"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("no lazy-pages daemon answers on") && err.contains("lazy-pages.socket"),
            "{err}"
        );
        assert!(gone(&pids), "a refused restore started tasks");

        let daemon = start_daemon(dir, &[]);
        stasis_restore_detached(dir, &["--lazy-pages"]);
        let verdict = verify(&w);
        let d = wait_child(daemon, Duration::from_secs(120), "lazy-pages daemon");
        kill_pids(&pids);
        let dlog = log(dir, "lazy.log");
        assert_eq!(verdict, "PASS", "daemon log:\n{dlog}");
        assert!(
            d.status.success(),
            "daemon: {}\n{dlog}",
            String::from_utf8_lossy(&d.stderr)
        );
        assert!(dlog.contains("the tree runs"), "{dlog}");
        let line = dlog
            .lines()
            .find(|l| l.contains("pages on fault"))
            .unwrap_or_else(|| panic!("no summary:\n{dlog}"));
        assert!(
            !line.contains(" 0 pages on fault"),
            "no fault was served: {line}"
        );
    });
}

/// Copies the regular files of `from` into a new directory `to` (the destination machine's
/// images).
fn copy_images(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// In a fresh pid namespace: the daemon (pages from 127.0.0.1:PORT, further arguments its
/// own), the restore, the verdict, the daemon's end.
const NS_SCRIPT: &str = r#"set -u
stasis=$1 dir=$2 port=$3 result=$4
shift 4
"$stasis" lazy-pages -D "$dir" -o lazy.log -v4 --page-server --address 127.0.0.1 --port "$port" "$@" </dev/null >/dev/null 2>"$dir/lazy.err" &
daemon=$!
i=0; while [ ! -S "$dir/lazy-pages.socket" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
"$stasis" restore -D "$dir" -d --lazy-pages -v4 -o restore.log --pidfile "$dir/root.pid" </dev/null || { echo "restore failed"; exit 3; }
rm -f "$result"
kill -USR2 "$(cat "$dir/root.pid")"
i=0; while [ ! -e "$result" ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done
echo "verdict: $(cat "$result" 2>/dev/null || echo none)"
wait $daemon
echo "daemon: $?"
"#;

#[test]
fn remote_from_a_lazy_dump_over_loopback() {
    remote_round_trip("lazy-remote", 38140, None, None, false);
}

/// The same with `--tls` on both sides (a CA and certificate made by the test).
#[test]
fn remote_from_a_lazy_dump_over_tls() {
    remote_round_trip("lazy-tls", 38300, None, None, true);
}

/// STASIS_CRIU=/path/to/criu (CRIU 4.2), or None after saying SKIPPED on the test output.
fn criu(test: &str) -> Option<PathBuf> {
    let c = std::env::var_os("STASIS_CRIU").map(PathBuf::from);
    if c.is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: set STASIS_CRIU=/path/to/criu (CRIU 4.2) to run it"
        );
    }
    c
}

/// `stasis dump --lazy-pages` serves CRIU 4.2's `lazy-pages --page-server` and `restore
/// --lazy-pages`.
#[test]
fn stasis_lazy_dump_to_criu_restore() {
    let Some(c) = criu("stasis_lazy_dump_to_criu_restore") else {
        return;
    };
    remote_round_trip("lazy-to-criu", 38260, None, Some(c), false);
}

/// `criu dump --lazy-pages` serves stasis's daemon and restore.
#[test]
#[ignore = "CRIU 4.2's lazy page server fails here: its page_server_serve ignores the failure \
            of pipe_read_dest_init (F_SETPIPE_SZ above fs.pipe-max-size needs \
            CAP_SYS_RESOURCE, which this machine lacks), so every PS_IOV_GET that does not \
            start a page pipe splices into fd 0 and fails with EBADF"]
fn criu_lazy_dump_to_stasis_restore() {
    let Some(c) = criu("criu_lazy_dump_to_stasis_restore") else {
        return;
    };
    remote_round_trip("lazy-criu", 38220, Some(c), None, false);
}

/// Dumps the workload with `--lazy-pages` on loopback (stasis, or the CRIU binary `criu`),
/// restores a copy of the images in a fresh pid namespace with a lazy-pages daemon taking the
/// pages from the dump, has the workload verify itself, and checks that the dump ends with its
/// tree killed.
/// `restorer`: the CRIU binary whose `lazy-pages` and `restore` take the images instead of
/// stasis. `tls`: the dump and the daemon talk `--tls`.
fn remote_round_trip(
    name: &'static str,
    base: i32,
    criu: Option<PathBuf>,
    restorer: Option<PathBuf>,
    tls: bool,
) {
    let _lock = restore_lock();
    with_round_trip_deadline(300, cgroup_path(name, base), move |_restored| {
        let w = launch_lazy(name, base);
        let tmp = tempfile::tempdir().unwrap();
        let tls: Vec<String> = if tls {
            let ca = common::pki::Ca::new(tmp.path(), "ca");
            let me = ca.leaf("peer", &["127.0.0.1"], 1);
            let p = |p: &Path| p.display().to_string();
            [
                "--tls",
                "--tls-cacert",
                &p(&ca.cert),
                "--tls-cert",
                &p(&me.cert),
            ]
            .into_iter()
            .chain(["--tls-key", &p(&me.key)])
            .map(String::from)
            .collect()
        } else {
            vec![]
        };
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        let port = common::page_server::free_port();
        let (mut cmd, ready) = match &criu {
            Some(c) => (Command::new(c), "Starting lazy pages server"),
            None => (stasis_bin(), "lazy pages: serving on"),
        };
        let mut dump = cmd
            .args(["dump", "-t", &w.pid.to_string(), "--lazy-pages"])
            .args(["--address", "127.0.0.1", "--port", &port.to_string()])
            .args(["-o", "dump.log", "-v4", "-D"])
            .arg(&src)
            .args(&tls)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The images are complete once the dump serves.
        let t0 = Instant::now();
        while !log(&src, "dump.log").contains(ready) {
            if let Some(st) = dump.try_wait().unwrap() {
                let mut e = String::new();
                dump.stderr.take().unwrap().read_to_string(&mut e).unwrap();
                panic!("dump ended ({st}): {e}\n{}", log(&src, "dump.log"));
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "dump never served");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (with_data, without) = lazy_pages(&src, w.pid);
        assert!(
            without >= MIB * 256 && with_data == 0,
            "{with_data} {without}"
        );
        let pages_bytes: u64 = files_with_prefix(&src, "pages-")
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(
            pages_bytes < MIB << 20,
            "a lazy dump wrote {pages_bytes} bytes of pages"
        );
        copy_images(&src, &dst);
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(NS_SCRIPT)
            .arg(name)
            .arg(
                restorer
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stasis"))),
            )
            .arg(&dst)
            .arg(port.to_string())
            .arg(&w.result)
            .args(&tls)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        stasis::sys::pidns::command_in_new_pid_ns(&mut cmd);
        let ns = wait_child(
            cmd.spawn().unwrap(),
            Duration::from_secs(180),
            "restore in a new pid namespace",
        );
        let d = wait_child(dump, Duration::from_secs(60), "the lazy dump");
        let out = String::from_utf8_lossy(&ns.stdout).into_owned();
        let tail = |t: String| t.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        let logs = format!(
            "stdout: {out}\nstderr: {}\ndaemon: {}\n{}\nrestore:\n{}\ndump: {}\n{}",
            String::from_utf8_lossy(&ns.stderr),
            log(&dst, "lazy.err"),
            log(&dst, "lazy.log"),
            tail(log(&dst, "restore.log")),
            String::from_utf8_lossy(&d.stderr),
            tail(log(&src, "dump.log")),
        );
        assert!(out.contains("verdict: PASS"), "{logs}");
        assert!(out.contains("daemon: 0"), "{logs}");
        assert!(d.status.success(), "{logs}");
        let done = if criu.is_some() {
            "Lazy pages transfer finished successfully"
        } else {
            "lazy pages transfer finished"
        };
        assert!(log(&src, "dump.log").contains(done), "{logs}");
        if !tls.is_empty() {
            assert!(
                log(&src, "dump.log").contains("tls: handshake with"),
                "{logs}"
            );
        }
        // The dumped tree is killed once the transfer is over.
        wait_gone(&[w.pid], 10, "the dumped tree after the transfer");
    });
}

#[test]
fn lost_page_server_kills_the_restored_tree() {
    let _lock = restore_lock();
    let (name, base) = ("lazy-lost", 38180);
    with_round_trip_deadline(240, cgroup_path(name, base), move |restored| {
        let (w, tmp, pids) = launch_and_dump(name, base, &restored);
        let dir = tmp.path();
        // A page server that takes the connection, reads the first request and dies.
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut b = [0u8; 32];
            let _ = s.read_exact(&mut b);
            b
        });
        let daemon = start_daemon(
            dir,
            &[
                "--page-server",
                "--address",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ],
        );
        // The tasks fault already inside the restore (the kernel writes rseq and robust-list
        // fields into their memory): the loss may kill them while it still runs, and then
        // the restore fails saying so; or after it returned.
        let r = common::restore::stasis_restore(dir, &["-d", "--lazy-pages"]);
        let rerr = String::from_utf8_lossy(&r.stderr);
        assert!(
            r.status.success() || rerr.contains("died during restore"),
            "restore: {rerr}"
        );
        let d = wait_child(daemon, Duration::from_secs(60), "lazy-pages daemon");
        let first = t.join().unwrap();
        let err = String::from_utf8_lossy(&d.stderr).into_owned();
        assert_eq!(d.status.code(), Some(1), "{err}\n{}", log(dir, "lazy.log"));
        assert!(
            err.contains("page source failed") && err.contains("killed"),
            "{err}"
        );
        // The request was CRIU's PS_IOV_GET for the restored task.
        assert_eq!(u32::from_le_bytes(first[0..4].try_into().unwrap()), 7);
        assert_eq!(
            u64::from_le_bytes(first[24..32].try_into().unwrap()),
            w.pid as u64
        );
        wait_gone(
            &pids,
            10,
            "the restored tree after the page server was lost",
        );
    });
}
