//! Cross compatibility with CRIU 4.2, both directions, on real workloads:
//!
//! ```text
//!  stasis-to-criu   launch → stasis dump (tree killed) → criu restore -d → workload checks itself
//!  criu-to-stasis   launch → criu dump   (tree killed) → stasis restore -d → workload checks itself
//! ```
//!
//! Workloads: the fixtures' six programs (verdict on SIGUSR2), the dump tests' C programs
//! (unix sockets, seccomp, terminals), a multi-threaded Python program (every thread's counter goes on)
//! and redis-server holding data (every key answers after the restore).
//!
//! It needs a CRIU binary: `STASIS_CRIU=/path/to/criu cargo test --test criu_compat`
//! (`-- NAME...` runs the cases whose name contains a NAME). Without `STASIS_CRIU` it runs
//! nothing and says so on stdout (`criu_compat: N skipped: STASIS_CRIU unset`): a harness of
//! its own (`harness = false`), so the skip is a visible line, not a silent pass. Results are
//! recorded in COMPATIBILITY.md. The incompatibilities found here each have a plain test that
//! needs no CRIU (tests/criu_compat_images.rs).

mod common;
#[path = "mount_ns/launch.rs"]
mod mount_ns;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::criu::criu_ok;
use common::dump::*;
use common::lock::restore_lock;
use common::workload::c_program;

/// Who dumps and who restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    StasisToCriu,
    CriuToStasis,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::StasisToCriu => "stasis-to-criu",
            Way::CriuToStasis => "criu-to-stasis",
        }
    }
}

/// Extra options of a case, for both dump and restore: to both tools, and to CRIU only.
#[derive(Clone, Copy, Default)]
struct Extra<'a> {
    both: &'a [&'a str],
    criu: &'a [&'a str],
}

impl Extra<'_> {
    fn criu_args<'b>(&'b self, head: &[&'b str]) -> Vec<&'b str> {
        head.iter()
            .chain(self.both)
            .chain(self.criu)
            .copied()
            .collect()
    }
}

/// Dumps the tree of `w` into `images` with `extra` options (the tree is killed), then waits
/// until its pids are free; returns the pids of the images' tree.
fn dump(way: Way, criu: &Path, w: &mut Workload, images: &Path, extra: Extra) -> Vec<i32> {
    match way {
        Way::StasisToCriu => stasis_dump(w.pid, images, extra.both),
        Way::CriuToStasis => {
            let pid = w.pid.to_string();
            let args = extra.criu_args(&["dump", "-t", &pid]);
            criu_ok(criu, &args, images, "dump.log")
        }
    }
    reap_dumped(w);
    let pids = pids_of(images);
    wait_gone(&pids, 10, "the dumped tree");
    pids
}

/// Restores `images` detached with the restorer of `way` and `extra` options.
fn restore(way: Way, criu: &Path, images: &Path, extra: Extra) {
    match way {
        Way::StasisToCriu => criu_ok(
            criu,
            &extra.criu_args(&["restore", "-d"]),
            images,
            "restore.log",
        ),
        Way::CriuToStasis => stasis_restore_detached(images, extra.both),
    }
}

/// One workload of the cross test.
struct Case {
    name: &'static str,
    /// What it launches: with `base`, the name of its cgroup.
    program: &'static str,
    /// Pid base of its launch.
    base: i32,
    run: fn(Way, &Path, &Restored, i32),
}

/// Dumps `w`, restores it, runs `check` on the restored tree and kills it.
fn cross(way: Way, criu: &Path, restored: &Restored, w: Workload, check: impl FnOnce(&Workload)) {
    cross_with(way, criu, restored, w, Extra::default(), |_| {}, check)
}

/// [`cross`] with `extra` options to both dump and restore, and `images_check` run on the
/// images between them.
fn cross_with(
    way: Way,
    criu: &Path,
    restored: &Restored,
    mut w: Workload,
    extra: Extra,
    images_check: impl FnOnce(&Path),
    check: impl FnOnce(&Workload),
) {
    // Kept when the case fails (the panic message names it), removed when it passes.
    let images = tempfile::Builder::new()
        .prefix(&format!("criu-compat-{}-{}-", w.name, way.label()))
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    println!("criu_compat: images in {}", images.display());
    let pids = dump(way, criu, &mut w, &images, extra);
    *restored.lock().unwrap() = pids.clone();
    images_check(&images);
    restore(way, criu, &images, extra);
    std::thread::sleep(Duration::from_millis(300));
    check(&w);
    kill_pids(&pids);
    wait_gone(&pids, 10, "the restored tree");
    let _ = std::fs::remove_dir_all(&images);
}

/// Fixture `name` (with `args` after its result path): restored, it says PASS on SIGUSR2.
fn fixture(way: Way, criu: &Path, restored: &Restored, name: &str, base: i32, args: &[&str]) {
    let w = launch(name, base, args);
    cross(way, criu, restored, w, |w| {
        assert_eq!(verify(w), "PASS", "{name} restored ({})", way.label())
    });
}

fn fx_loop(way: Way, criu: &Path, r: &Restored, base: i32) {
    fixture(way, criu, r, "fx-loop", base, &[]);
}

fn fx_mem(way: Way, criu: &Path, r: &Restored, base: i32) {
    fixture(way, criu, r, "fx-mem", base, &[]);
}

fn fx_threads(way: Way, criu: &Path, r: &Restored, base: i32) {
    fixture(way, criu, r, "fx-threads", base, &["16"]);
}

fn fx_tree(way: Way, criu: &Path, r: &Restored, base: i32) {
    fixture(way, criu, r, "fx-tree", base, &[]);
}

fn fx_signals(way: Way, criu: &Path, r: &Restored, base: i32) {
    fixture(way, criu, r, "fx-signals", base, &[]);
}

/// fx-loop dumped and restored with `--cpu-cap` on both sides: `cpuinfo.img` is the same
/// bytes whoever wrote it, and each restorer checks the other's.
fn cpu_cap(way: Way, criu: &Path, r: &Restored, base: i32) {
    let w = launch("fx-loop", base, &[]);
    let ours = stasis::images::framing::Image::from_messages(
        stasis::images::magic::ImageKind::Cpuinfo,
        &[stasis::cpuinfo::entry(&stasis::sys::cpu::CpuId::host())],
    )
    .to_bytes();
    let same = |dir: &Path| {
        assert!(
            std::fs::read(dir.join("cpuinfo.img")).unwrap() == ours,
            "cpuinfo.img of this host differs between CRIU and stasis"
        )
    };
    let extra = Extra {
        both: &["--cpu-cap"],
        criu: &[],
    };
    cross_with(way, criu, r, w, extra, same, |w| {
        assert_eq!(
            verify(w),
            "PASS",
            "fx-loop restored with --cpu-cap ({})",
            way.label()
        )
    });
}

fn fx_files(way: Way, criu: &Path, r: &Restored, base: i32) {
    let data = fx_files_data("compat-fx-files");
    fixture(way, criu, r, "fx-files", base, &[&data]);
    let _ = std::fs::remove_dir_all(&data);
}

/// A C program of the dump tests, built static and started in its own session (glibc tuned
/// like the fixtures) with its verdict file and `args`; restored, it says PASS on SIGUSR2.
fn c_workload(
    way: Way,
    criu: &Path,
    r: &Restored,
    base: i32,
    name: &'static str,
    src: &'static str,
    args: &[&Path],
) {
    let bin = c_program(name, src, &["-static", "-pthread"]);
    let work = tempfile::tempdir().unwrap();
    let result = work.path().join("result");
    let mut all = vec![result.as_path()];
    all.extend_from_slice(args);
    let w = launch_cmd(
        name,
        base,
        &format!("setsid {}", tuned_cmd(&bin, &all)),
        &result,
    );
    cross(way, criu, r, w, |w| {
        assert_eq!(verify(w), "PASS", "{name} restored ({})", way.label())
    });
}

fn fx_unix(way: Way, criu: &Path, r: &Restored, base: i32) {
    let socks = tempfile::tempdir().unwrap();
    let src = include_str!("dump_state_e2e/fx-unix.c");
    c_workload(way, criu, r, base, "fx-unix", src, &[socks.path()]);
}

/// Terminals (tests/tty_e2e/fx-tty.c): a pty pair with data queued both ways, changed
/// termios and window size, a packet-mode locked master. Its exclusive mode is not checked:
/// CRIU 4.2 dumps it but never sets it again (see COMPATIBILITY.md).
fn tty_pair(way: Way, criu: &Path, r: &Restored, base: i32) {
    let src = include_str!("tty_e2e/fx-tty.c");
    let args = [Path::new("pair"), Path::new("criu-limits")];
    c_workload(way, criu, r, base, "fx-tty", src, &args);
}

/// A session leader with a pty slave as its controlling terminal, and its child's group in
/// the foreground. The child does not check that the terminal is its own too: CRIU 4.2's
/// restore (also of its own images) leaves it without one (see COMPATIBILITY.md).
fn tty_session(way: Way, criu: &Path, r: &Restored, base: i32) {
    let src = include_str!("tty_e2e/fx-tty.c");
    let args = [Path::new("session"), Path::new("criu-limits")];
    c_workload(way, criu, r, base, "fx-tty", src, &args);
}

fn fx_seccomp(way: Way, criu: &Path, r: &Restored, base: i32) {
    let src = include_str!("dump_state_e2e/fx-seccomp.c");
    c_workload(way, criu, r, base, "fx-seccomp", src, &[]);
}

/// A parent and three workers sharing 64 MiB copy-on-write (`common::cow`): restored, each
/// sees its own content and the untouched pages are shared again (CRIU restores the sharing
/// too).
fn fx_cow(way: Way, criu: &Path, r: &Restored, base: i32) {
    let work = tempfile::tempdir().unwrap();
    let w = common::cow::launch("fx-cow", base, work.path());
    let tree = common::cow::CowTree::of(&w);
    tree.assert_shared("before the dump", true);
    cross(way, criu, r, w, |w| {
        let tree = common::cow::CowTree::of(w);
        tree.assert_shared(&format!("restored ({})", way.label()), false);
        let pss = tree.pss_kb();
        println!(
            "criu_compat: fx-cow {}: Pss of the tree {pss} KiB",
            way.label()
        );
        assert!(
            pss < 2 * common::cow::AREA_KB,
            "fx-cow restored ({}): Pss {pss} KiB",
            way.label()
        );
        assert_eq!(verify(w), "PASS", "fx-cow restored ({})", way.label())
    });
}

/// Python with four threads counting: after the restore every count goes on from where it
/// was, twice.
fn python_threads(way: Way, criu: &Path, r: &Restored, base: i32) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = format!(
        "import threading, time, os\n\
         counts = [0] * 4\n\
         def work(i):\n    while True:\n        counts[i] += 1\n        time.sleep(0.005)\n\
         for i in range(4):\n    threading.Thread(target=work, args=(i,), daemon=True).start()\n\
         while True:\n    open('{o}.tmp', 'w').write(' '.join(map(str, counts)))\n    os.rename('{o}.tmp', '{o}')\n    time.sleep(0.05)\n",
        o = out.display()
    );
    std::fs::write(dir.path().join("t.py"), script).unwrap();
    let cmd = format!("setsid python3 {}", dir.path().join("t.py").display());
    let w = launch_cmd("python-threads", base, &cmd, &out);
    let counts = |p: &Path| -> Vec<u64> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let out2 = out.clone();
    let pid = w.pid;
    let mut last = Vec::new();
    cross(way, criu, r, w, move |_| {
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .count();
        assert_eq!(threads, 5, "python main thread + 4 workers restored");
        let t0 = Instant::now();
        for round in 0..3 {
            loop {
                let now = counts(&out2);
                if now.len() == 4 && (last.is_empty() || now.iter().zip(&last).all(|(n, o)| n > o))
                {
                    last = now;
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "threads did not go on (round {round}): {last:?} -> {now:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
}

/// Python holding both ends of a TCP connection on 127.0.0.1 with data queued each way,
/// dumped and restored with `--tcp-established` (CRIU also with `--network-lock skip`: this
/// host has no iptables); on SIGUSR2 it reads both queues and sends once more: PASS.
fn python_tcp(way: Way, criu: &Path, r: &Restored, base: i32) {
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result");
    let script = format!(
        "import socket, time, signal, sys\n\
         l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n\
         c = socket.create_connection(l.getsockname()); s, _ = l.accept()\n\
         c.sendall(b'to-server' * 200); s.sendall(b'to-client' * 50)\n\
         def check(*a):\n    \
             try:\n        \
                 got = b''\n        \
                 while len(got) < 1800: got += s.recv(4096)\n        \
                 back = b''\n        \
                 while len(back) < 450: back += c.recv(4096)\n        \
                 c.sendall(b'after'); x = s.recv(16)\n        \
                 ok = got == b'to-server' * 200 and back == b'to-client' * 50 and x == b'after'\n        \
                 v = 'PASS' if ok else 'FAIL: data %r %r %r' % (got[:20], back[:20], x)\n    \
             except Exception as e:\n        \
                 v = 'FAIL: %r' % e\n    \
             open('{r}.tmp', 'w').write(v); import os; os.rename('{r}.tmp', '{r}'); sys.exit(0)\n\
         signal.signal(signal.SIGUSR2, check)\n\
         open('{r}', 'w').write('READY')\n\
         while True: time.sleep(1)\n",
        r = result.display()
    );
    std::fs::write(dir.path().join("t.py"), script).unwrap();
    let cmd = format!("setsid python3 {}", dir.path().join("t.py").display());
    let w = launch_cmd("python-tcp", base, &cmd, &result);
    let extra = Extra {
        both: &["--tcp-established"],
        criu: &["--network-lock", "skip"],
    };
    cross_with(
        way,
        criu,
        r,
        w,
        extra,
        |_| {},
        |w| assert_eq!(verify(w), "PASS", "python-tcp restored ({})", way.label()),
    );
}

/// The `i`-th value stored in redis.
fn redis_value(i: usize) -> String {
    format!("value-{i}-{}", "x".repeat(100 + i % 50))
}

/// Sends RESP commands and reads until the answers hold `lines` CRLF-ended lines (a GET
/// answer is two, SET and DBSIZE one). The connection stays open for writing meanwhile:
/// redis drops the unsent answers of a client that half-closed.
fn redis_roundtrip(port: u16, cmds: &[Vec<String>], lines: usize) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to redis");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = String::new();
    for cmd in cmds {
        out.push_str(&format!("*{}\r\n", cmd.len()));
        for a in cmd {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
    }
    c.write_all(out.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while got.windows(2).filter(|w| w == b"\r\n").count() < lines {
        let n = c.read(&mut buf).expect("read from redis");
        assert!(n > 0, "redis closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// redis-server holding 1000 keys: after the restore every key answers with its value.
fn redis(way: Way, criu: &Path, r: &Restored, base: i32) {
    assert!(
        Path::new("/usr/bin/redis-server").exists(),
        "redis-server is not installed"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let cmd = format!(
        "setsid redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no \
         --daemonize no --dir {}",
        dir.path().display()
    );
    let sets: Vec<Vec<String>> = (0..1000)
        .map(|i| vec!["SET".into(), format!("key:{i}"), redis_value(i)])
        .collect();
    let loader = std::thread::spawn({
        let ready = ready.clone();
        move || {
            for _ in 0..1500 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let got = redis_roundtrip(port, &sets, 1000);
                    assert_eq!(got.matches("+OK\r\n").count(), 1000, "SETs: {got:.200}");
                    std::fs::write(&ready, "READY").unwrap();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let w = launch_cmd("redis", base, &cmd, &ready);
    loader.join().unwrap();
    wait_connections(port, 0);
    cross(way, criu, r, w, move |_| {
        let gets: Vec<Vec<String>> = (0..1000)
            .map(|i| vec!["GET".into(), format!("key:{i}")])
            .chain(std::iter::once(vec!["DBSIZE".into()]))
            .collect();
        let got = redis_roundtrip(port, &gets, 2001);
        for i in 0..1000 {
            let v = redis_value(i);
            assert!(
                got.contains(&format!("${}\r\n{v}\r\n", v.len())),
                "key:{i} lost after the restore"
            );
        }
        assert!(
            got.ends_with(":1000\r\n"),
            "DBSIZE: {:.100}",
            &got[got.len().saturating_sub(100)..]
        );
    });
}

/// A tree owning a mount namespace (tests/mount_ns/workload.c): its tmpfs, binds, read-only
/// bind and proc come back (in the restorer's mount order: compared as a set), fd 3 in the
/// tmpfs reads on.
fn mount_ns(way: Way, criu: &Path, r: &Restored, base: i32) {
    let (w, dir) = mount_ns::launch("mount-ns", base, "sorted");
    let extra = Extra {
        both: mount_ns::MOUNT_OPTS,
        criu: &[],
    };
    let mut before = mount_ns::mounts_of(w.pid);
    before.sort();
    let pid = w.pid;
    cross_with(
        way,
        criu,
        r,
        w,
        extra,
        |img| assert_eq!(count_files(img, "mountpoints-"), 1),
        |_| {
            let mut after = mount_ns::mounts_of(pid);
            after.sort();
            assert_eq!(
                after,
                before,
                "mountinfo after the restore ({})",
                way.label()
            );
            assert_eq!(
                mount_ns::verdict(&dir),
                "PASS",
                "mount-ns ({})",
                way.label()
            );
        },
    );
}

/// What runc builds (tests/mount_ns/container.c): a busybox shell pivoted into its own rootfs
/// with proc and a tmpfs at /tmp, dumped and restored with `--root ROOTFS`: same mount tree,
/// the count goes on.
fn container(way: Way, criu: &Path, r: &Restored, base: i32) {
    let (w, rootfs) = mount_ns::launch_container("container", base);
    let root: &'static str = Box::leak(rootfs.to_str().unwrap().to_string().into_boxed_str());
    let both: &'static [&'static str] = Box::leak(vec!["--root", root].into_boxed_slice());
    let extra = Extra { both, criu: &[] };
    // As a set: CRIU mounts siblings in another order.
    let mut before = mount_ns::mounts_of(w.pid);
    before.sort();
    let counted = mount_ns::count(w.pid);
    let pid = w.pid;
    cross_with(
        way,
        criu,
        r,
        w,
        extra,
        |_| {},
        |_| {
            let mut after = mount_ns::mounts_of(pid);
            after.sort();
            assert_eq!(after, before, "mountinfo ({})", way.label());
            let first = mount_ns::count(pid);
            assert!(first >= counted, "the count went back ({})", way.label());
            let t0 = Instant::now();
            while mount_ns::count(pid) <= first {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no count ({})",
                    way.label()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        },
    );
    let _ = std::fs::remove_dir_all(&rootfs);
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "fx-loop",
            program: "fx-loop",
            base: 34000,
            run: fx_loop,
        },
        Case {
            name: "fx-mem",
            program: "fx-mem",
            base: 34040,
            run: fx_mem,
        },
        Case {
            name: "fx-threads",
            program: "fx-threads",
            base: 34080,
            run: fx_threads,
        },
        Case {
            name: "fx-files",
            program: "fx-files",
            base: 34120,
            run: fx_files,
        },
        Case {
            name: "fx-tree",
            program: "fx-tree",
            base: 34160,
            run: fx_tree,
        },
        Case {
            name: "fx-signals",
            program: "fx-signals",
            base: 34200,
            run: fx_signals,
        },
        Case {
            name: "fx-unix",
            program: "fx-unix",
            base: 34240,
            run: fx_unix,
        },
        Case {
            name: "fx-seccomp",
            program: "fx-seccomp",
            base: 34280,
            run: fx_seccomp,
        },
        Case {
            name: "python-threads",
            program: "python-threads",
            base: 34320,
            run: python_threads,
        },
        Case {
            name: "redis",
            program: "redis",
            base: 34360,
            run: redis,
        },
        Case {
            name: "python-tcp",
            program: "python-tcp",
            base: 34440,
            run: python_tcp,
        },
        Case {
            name: "tty-pair",
            program: "fx-tty",
            base: 34560,
            run: tty_pair,
        },
        Case {
            name: "tty-session",
            program: "fx-tty",
            base: 34600,
            run: tty_session,
        },
        Case {
            name: "mount-ns",
            program: "mount-ns",
            base: 34640,
            run: mount_ns,
        },
        Case {
            name: "container",
            program: "container",
            base: 34680,
            run: container,
        },
        Case {
            name: "cpu-cap",
            program: "fx-loop",
            base: 34480,
            run: cpu_cap,
        },
        Case {
            name: "fx-cow",
            program: "fx-cow",
            base: 34720,
            run: fx_cow,
        },
    ]
}

fn main() {
    let cases = cases();
    let ways = [Way::StasisToCriu, Way::CriuToStasis];
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let Some(criu) = std::env::var_os("STASIS_CRIU").map(PathBuf::from) else {
        println!(
            "criu_compat: {} skipped: STASIS_CRIU unset (set it to a CRIU 4.2 binary to run \
             the cross tests with CRIU)",
            cases.len() * ways.len()
        );
        return;
    };
    assert!(
        criu.is_file(),
        "STASIS_CRIU={} is not a file",
        criu.display()
    );
    let (mut passed, mut failed) = (Vec::new(), Vec::new());
    for c in &cases {
        for way in ways {
            let id = format!("{} {}", c.name, way.label());
            if !filters.is_empty() && !filters.iter().any(|f| id.contains(f.as_str())) {
                continue;
            }
            println!("criu_compat: {id} ...");
            let lock = restore_lock();
            let (criu, run, base) = (criu.clone(), c.run, c.base);
            let cg = cgroup_path(c.program, base);
            let res = std::panic::catch_unwind(move || {
                with_round_trip_deadline(180, cg, move |restored| run(way, &criu, &restored, base))
            });
            drop(lock);
            match res {
                Ok(()) => {
                    println!("criu_compat: {id} ok");
                    passed.push(id);
                }
                Err(_) => {
                    println!("criu_compat: {id} FAILED");
                    failed.push(id);
                }
            }
        }
    }
    println!(
        "criu_compat: {} passed, {} failed{}",
        passed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join(", "))
        }
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
