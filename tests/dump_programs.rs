//! Dumps of real programs: a multi-threaded Python program and redis-server holding data.
//! Every image must decode (our codec and Debian's crit) and describe every thread.

mod common;

use std::path::{Path, PathBuf};

use common::deadline::with_deadline;
use common::dump::*;

fn dump_workload(w: &Workload) -> (tempfile::TempDir, stasis::dump::DumpReport) {
    let mut backend = TestBackend {
        cgroup: w.cgroup.clone(),
    };
    let (dir, rep) = dump_leave_running(w.pid, &mut backend);
    let rep = rep.unwrap_or_else(|e| panic!("dump {}: {e}", w.name));
    (dir, rep)
}

#[test]
fn dump_python_threads() {
    let base = 32100;
    let cg = cgroup_path("python3", base);
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            let ready = PathBuf::from(format!(
                "/tmp/stasis-dump-tests/python-{}.ready",
                std::process::id()
            ));
            std::fs::create_dir_all("/tmp/stasis-dump-tests").unwrap();
            let script = format!(
                "import threading, time, os\n\
                 data = [bytearray(os.urandom(1 << 16)) for _ in range(8)]\n\
                 def work(i):\n    n = 0\n    while True:\n        n += 1\n        data[i][n % 65536] = n & 255\n        time.sleep(0.001)\n\
                 ts = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(8)]\n\
                 [t.start() for t in ts]\n\
                 r, w = os.pipe()\n\
                 os.write(w, b'x' * 100)\n\
                 open('{}', 'w').write('READY')\n\
                 while True: time.sleep(1)\n",
                ready.display()
            );
            let spath = format!("/tmp/stasis-dump-tests/threads-{}.py", std::process::id());
            std::fs::write(&spath, script).unwrap();
            let w = launch_cmd("python3", base, &format!("python3 {spath}"), &ready);
            let (dir, rep) = dump_workload(&w);
            assert_eq!(
                count_files(dir.path(), "core-"),
                9,
                "python main thread + 8 workers"
            );
            assert!(rep.stats.pages.pages_written > 100);
            for e in std::fs::read_dir(dir.path()).unwrap() {
                let p = e.unwrap().path();
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                if !n.starts_with("pages-") && n != "stats-dump" {
                    let _ = decode(&p);
                }
            }
            debian_crit_decodes_all(dir.path());
            assert!(all_running(&w));
        },
    )
}

#[test]
fn dump_redis_with_data() {
    let base = 32140;
    let cg = cgroup_path("redis", base);
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            assert!(
                Path::new("/usr/bin/redis-server").exists(),
                "redis-server is not installed"
            );
            // A free port from the kernel, released just before redis binds it.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let ready = PathBuf::from(format!(
                "/tmp/stasis-dump-tests/redis-{}.ready",
                std::process::id()
            ));
            std::fs::create_dir_all("/tmp/stasis-dump-tests").unwrap();
            let _ = std::fs::remove_file(&ready);
            let cmd = format!("redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize no");
            // Readiness: redis answers PING; then load data and mark ready.
            let waiter = std::thread::spawn({
                let ready = ready.clone();
                move || {
                    use std::io::{Read, Write};
                    for _ in 0..500 {
                        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                            let mut cmds = String::new();
                            for i in 0..1000 {
                                let v = format!("value-{i}-{}", "x".repeat(100));
                                cmds.push_str(&format!(
                                    "*3\r\n$3\r\nSET\r\n${}\r\nkey:{i}\r\n${}\r\n{v}\r\n",
                                    format!("key:{i}").len(),
                                    v.len()
                                ));
                            }
                            c.write_all(cmds.as_bytes()).unwrap();
                            let mut got = Vec::new();
                            let mut b = [0u8; 8192];
                            while got.iter().filter(|&&x| x == b'\n').count() < 1000 {
                                let n = c.read(&mut b).unwrap();
                                assert!(n > 0);
                                got.extend_from_slice(&b[..n]);
                            }
                            std::fs::write(&ready, "READY").unwrap();
                            return;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            });
            let w = launch_cmd("redis", base, &cmd, &ready);
            waiter.join().unwrap();
            wait_connections(port, 0);
            let (dir, rep) = dump_workload(&w);
            assert!(count_files(dir.path(), "core-") >= 1);
            assert!(rep.stats.pages.pages_written > 256, "redis data pages");
            let files = decode(&dir.path().join("files.img"));
            let entries = files["entries"].as_array().unwrap();
            assert!(
                entries
                    .iter()
                    .any(|e| e["type"] == "INETSK" && e["isk"]["state"] == "LISTEN"),
                "{files}"
            );
            assert!(entries.iter().any(|e| e["type"] == "EVENTPOLL"));
            debian_crit_decodes_all(dir.path());
            assert!(all_running(&w));
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            use std::io::{Read, Write};
            c.write_all(b"*2\r\n$3\r\nGET\r\n$7\r\nkey:999\r\n")
                .unwrap();
            let mut b = [0u8; 256];
            let n = c.read(&mut b).unwrap();
            assert!(
                String::from_utf8_lossy(&b[..n]).contains("value-999"),
                "redis still serves its data"
            );
        },
    )
}

/// A connection the peer has closed but the task has not (CLOSE_WAIT) is not dumped, even with
/// --tcp-established: the dump fails naming the state, and the program runs on untouched.
#[test]
fn dump_refuses_half_closed_tcp() {
    let base = 32160;
    let cg = cgroup_path("python3-closewait", base);
    with_deadline(
        60,
        move || kill_cgroup(&cg),
        move || {
            std::fs::create_dir_all("/tmp/stasis-dump-tests").unwrap();
            let ready = PathBuf::from(format!(
                "/tmp/stasis-dump-tests/closewait-{}.ready",
                std::process::id()
            ));
            let port_file = PathBuf::from(format!("{}.port", ready.display()));
            let script = format!(
                "import socket, time\n\
                 l = socket.socket()\n\
                 l.bind(('127.0.0.1', 0))\n\
                 l.listen(1)\n\
                 open('{p}', 'w').write(str(l.getsockname()[1]))\n\
                 c, _ = l.accept()\n\
                 open('{r}', 'w').write('READY')\n\
                 while True: time.sleep(1)\n",
                p = port_file.display(),
                r = ready.display()
            );
            let spath = format!("/tmp/stasis-dump-tests/closewait-{}.py", std::process::id());
            std::fs::write(&spath, script).unwrap();
            let _ = std::fs::remove_file(&port_file);
            let connector = std::thread::spawn({
                let port_file = port_file.clone();
                move || {
                    for _ in 0..1500 {
                        if let Some(port) = std::fs::read_to_string(&port_file)
                            .ok()
                            .and_then(|s| s.parse::<u16>().ok())
                        {
                            // Connect and close at once: the server's side stays in CLOSE_WAIT.
                            drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
                            return port;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    panic!("the python server never wrote its port");
                }
            });
            let w = launch_cmd(
                "python3-closewait",
                base,
                &format!("setsid python3 {spath}"),
                &ready,
            );
            let port = connector.join().unwrap();
            wait_connections(port, 1);
            let images = tempfile::tempdir().unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "--tcp-established", "-D"])
                .arg(images.path())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "dump of a CLOSE_WAIT socket");
            assert!(err.contains("CLOSE_WAIT"), "{err}");
            assert!(all_running(&w), "a failed dump leaves the program running");
        },
    )
}
