//! Real-world round trips: Debian's redis-server (a main thread, bio threads, jemalloc
//! background threads, epoll, pipes, listening inet sockets on 127.0.0.1 and ::1, a listening
//! unix socket, an open append-only file) filled with data, dumped by
//! `stasis dump -t PID -D DIR` and restored by `stasis restore -D DIR -d`; a client then finds
//! every value it stored, writes new ones, reads INFO, has a bio thread free an unlinked value,
//! and shuts the server down; the AOF it wrote across both reloads into a fresh server.
//! Variants: the dump kills the tree, `--leave-running`, `--freeze-cgroup`, and
//! `--tcp-established` with clients connected across dump and restore.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::dump::*;
use common::lock::restore_lock;

const REDIS: &str = "/usr/bin/redis-server";

/// One reply of the RESP protocol.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn text(&self) -> String {
        match self {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Status(s) => s.clone(),
            other => panic!("not a string reply: {other:?}"),
        }
    }

    fn int(&self) -> i64 {
        match self {
            Reply::Int(n) => *n,
            other => panic!("not an integer reply: {other:?}"),
        }
    }

    fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(Some(v)) => v.iter().map(Reply::text).collect(),
            other => panic!("not an array reply: {other:?}"),
        }
    }
}

/// A minimal RESP client with a read timeout (a hung server fails the test, never hangs it).
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        Ok(Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("read from redis");
        assert!(n > 0, "redis closed the connection");
        assert!(l.ends_with("\r\n"), "bad RESP line {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    fn reply(&mut self) -> Reply {
        let l = self.line();
        let (t, rest) = l.split_at(1);
        match t {
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut b = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut b).expect("read bulk from redis");
                b.truncate(n as usize);
                Reply::Bulk(Some(b))
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Array(None);
                }
                Reply::Array(Some((0..n).map(|_| self.reply()).collect()))
            }
            _ => panic!("bad RESP reply {l:?}"),
        }
    }

    /// Sends many commands at once and reads all their replies.
    fn pipeline(&mut self, cmds: &[Vec<Vec<u8>>]) -> Vec<Reply> {
        let mut out = Vec::new();
        for c in cmds {
            let args: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
            Self::encode(&mut out, &args);
        }
        self.w.write_all(&out).expect("write to redis");
        cmds.iter().map(|_| self.reply()).collect()
    }

    fn cmd(&mut self, args: &[&str]) -> Reply {
        let c: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        let r = self.pipeline(&[c]).remove(0);
        if let Reply::Error(e) = &r {
            panic!("redis {args:?}: {e}");
        }
        r
    }
}

fn cmdv(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

/// What the test stored, to compare with what the restored server serves.
struct Data {
    strings: BTreeMap<String, Vec<u8>>,
    list: Vec<String>,
    hash: BTreeMap<String, String>,
    expiring_ttl: i64,
}

const N_KEYS: usize = 1500;

/// A deterministic value of varying size (some large, so jemalloc uses many pages and size
/// classes).
fn value(i: usize) -> Vec<u8> {
    let len = match i % 10 {
        0 => 20_000,
        1..=3 => 1_000,
        _ => 40 + i % 200,
    };
    (0..len)
        .map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + j * 13) % 36])
        .collect()
}

fn load(c: &mut Client) -> Data {
    let mut strings = BTreeMap::new();
    let mut cmds = Vec::new();
    for i in 0..N_KEYS {
        let k = format!("key:{i}");
        let v = value(i);
        cmds.push(cmdv(&[b"SET", k.as_bytes(), &v]));
        strings.insert(k, v);
    }
    for r in c.pipeline(&cmds) {
        assert_eq!(r, Reply::Status("OK".into()));
    }
    let list: Vec<String> = (0..300).map(|i| format!("item-{i}")).collect();
    let mut args: Vec<&str> = vec!["RPUSH", "list:a"];
    args.extend(list.iter().map(|s| s.as_str()));
    assert_eq!(c.cmd(&args).int(), list.len() as i64);
    let hash: BTreeMap<String, String> = (0..100)
        .map(|i| (format!("field-{i}"), format!("hval-{i}-{}", "h".repeat(i))))
        .collect();
    let mut args: Vec<&str> = vec!["HSET", "hash:a"];
    for (f, v) in &hash {
        args.push(f);
        args.push(v);
    }
    assert_eq!(c.cmd(&args).int(), hash.len() as i64);
    // An expiring key: far enough in the future to outlive the test.
    c.cmd(&["SET", "exp:a", "expiring-value", "EX", "100000"]);
    let expiring_ttl = c.cmd(&["TTL", "exp:a"]).int();
    assert!(expiring_ttl > 0);
    assert_eq!(
        c.cmd(&["DBSIZE"]).int(),
        N_KEYS as i64 + 3,
        "keys loaded before the dump"
    );
    Data {
        strings,
        list,
        hash,
        expiring_ttl,
    }
}

/// Everything stored is served again; new writes work; INFO works.
fn check(c: &mut Client, d: &Data, label: &str) {
    assert_eq!(
        c.cmd(&["DBSIZE"]).int(),
        d.strings.len() as i64 + 3,
        "{label}: DBSIZE"
    );
    let cmds: Vec<_> = d
        .strings
        .keys()
        .map(|k| cmdv(&[b"GET", k.as_bytes()]))
        .collect();
    for ((k, v), r) in d.strings.iter().zip(c.pipeline(&cmds)) {
        assert!(r == Reply::Bulk(Some(v.clone())), "{label}: value of {k}");
    }
    assert_eq!(
        c.cmd(&["LRANGE", "list:a", "0", "-1"]).strings(),
        d.list,
        "{label}: list"
    );
    let flat = c.cmd(&["HGETALL", "hash:a"]).strings();
    let got: BTreeMap<String, String> = flat
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    assert_eq!(got, d.hash, "{label}: hash");
    assert_eq!(
        c.cmd(&["GET", "exp:a"]).text(),
        "expiring-value",
        "{label}: expiring key"
    );
    let ttl = c.cmd(&["TTL", "exp:a"]).int();
    assert!(
        ttl > 0 && ttl <= d.expiring_ttl,
        "{label}: TTL {ttl} (was {})",
        d.expiring_ttl
    );
    c.cmd(&["SET", "new:key", "new-value"]);
    assert_eq!(c.cmd(&["GET", "new:key"]).text(), "new-value", "{label}");
    assert_eq!(c.cmd(&["INCR", "new:counter"]).int(), 1, "{label}");
    assert_eq!(c.cmd(&["DEL", "new:key", "new:counter"]).int(), 2);
    bio_frees(c, label);
    let info = c.cmd(&["INFO"]).text();
    assert!(
        info.contains("redis_version:") && info.contains("db0:keys="),
        "{label}: INFO: {info}"
    );
}

fn info_field(c: &mut Client, section: &str, field: &str) -> i64 {
    let info = c.cmd(&["INFO", section]).text();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}: {info}"))
        .trim()
        .parse()
        .unwrap()
}

/// UNLINK of a large hash hands the value to the lazyfree bio thread: it must free it (the
/// background threads work).
fn bio_frees(c: &mut Client, label: &str) {
    let before = info_field(c, "memory", "lazyfreed_objects");
    let fields: Vec<String> = (0..1000).map(|i| format!("f{i}")).collect();
    let mut args: Vec<&str> = vec!["HSET", "big:hash"];
    for f in &fields {
        args.push(f);
        args.push("v");
    }
    assert_eq!(c.cmd(&args).int(), 1000);
    assert_eq!(c.cmd(&["UNLINK", "big:hash"]).int(), 1);
    // Hang guard only (the bio thread frees it in microseconds when it runs at all).
    let t0 = Instant::now();
    while info_field(c, "memory", "lazyfreed_objects") <= before {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{label}: the lazyfree bio thread never freed the unlinked hash"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// A port the kernel says is free (released just before redis binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server started as fx-launch would (`launch_program`) at a known pid range, in its
/// own cgroup, listening on 127.0.0.1 and ::1.
struct Redis {
    w: Workload,
    port: u16,
    log: PathBuf,
    dir: PathBuf,
}

impl Redis {
    fn start(name: &str, base: i32, dir: &Path) -> Redis {
        assert!(
            Path::new(REDIS).exists(),
            "{REDIS} is not installed (apt-get install redis-server; .ci/run does)"
        );
        assert!(
            ipv6_loopback(),
            "no IPv6 loopback (::1) on this machine to bind redis to"
        );
        let port = free_port().to_string();
        let log = dir.join("redis.log");
        let logs = log.display().to_string();
        let dirs = dir.display().to_string();
        let sock = dir.join("redis.sock").display().to_string();
        // Through env: fx-launch keeps glibc off AVX (for its portable fixtures); redis runs
        // here as users run it, with glibc's AVX2/AVX-512 string functions.
        let args = [
            "-u",
            "GLIBC_TUNABLES",
            REDIS,
            "--port",
            &port,
            "--bind",
            "127.0.0.1 ::1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--unixsocket",
            &sock,
            "--daemonize",
            "no",
            "--logfile",
            &logs,
            "--dir",
            &dirs,
        ];
        let w = launch_program(name, base, "/usr/bin/env", &args);
        let r = Redis {
            w,
            port: port.parse().unwrap(),
            log,
            dir: dir.to_path_buf(),
        };
        // Ready when it answers PING (30 s at most).
        let t0 = Instant::now();
        loop {
            let pong = Client::connect(&r.addr4())
                .ok()
                .map(|mut c| c.pipeline(&[cmdv(&[b"PING"])]).remove(0));
            // -LOADING: still reading its AOF.
            if pong == Some(Reply::Status("PONG".into())) {
                let env = std::fs::read(format!("/proc/{}/environ", r.w.pid)).unwrap();
                assert!(
                    !String::from_utf8_lossy(&env).contains("GLIBC_TUNABLES"),
                    "redis runs with glibc's own CPU feature choice"
                );
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30) && alive(r.w.pid),
                "redis-server did not come up: {}",
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn addr4(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn addr6(&self) -> String {
        format!("[::1]:{}", self.port)
    }

    fn client(&self) -> Client {
        Client::connect(&self.addr4()).expect("connect to redis on 127.0.0.1")
    }
}

fn alive(pid: i32) -> bool {
    !gone(&[pid])
}

/// The names of a process' threads, sorted.
fn thread_names(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                .map(|s| s.trim_end().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The thread names the core images of an image directory record, sorted.
fn image_thread_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = files_with_prefix(dir, "core-")
        .into_iter()
        .map(|p| {
            let doc = decode(&p);
            let tc = &doc["entries"][0]["thread_core"];
            let comm = tc["comm"].as_str().map(str::to_string);
            comm.unwrap_or_else(|| panic!("no thread comm in {}: {doc}", p.display()))
        })
        .collect();
    v.sort();
    v
}

/// Every dumped thread is back under its name; the only newcomers may be jemalloc's lazily
/// started background threads.
fn assert_restored_threads(now: &[String], dumped: &[String]) {
    let mut extra = now.to_vec();
    for d in dumped {
        let i = extra
            .iter()
            .position(|n| n == d)
            .unwrap_or_else(|| panic!("thread {d} not restored: {now:?} vs dumped {dumped:?}"));
        extra.remove(i);
    }
    assert!(
        extra.iter().all(|n| n == "jemalloc_bg_thd"),
        "unexpected threads after the restore: {extra:?} (dumped {dumped:?})"
    );
}

fn untraced(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .any(|l| l == "TracerPid:\t0")
}

fn run_stasis(args: &[&str], images: &Path, log: &str, what: &str) {
    let out = stasis_bin()
        .args(args)
        .arg("-D")
        .arg(images)
        .args(["-o", log, "-v4"])
        .output()
        .unwrap();
    let tail: String = std::fs::read_to_string(images.join(log))
        .unwrap_or_default()
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "{what}: {}\n{tail}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// DBSIZE over redis' unix socket.
fn unix_dbsize(r: &Redis, want: i64) {
    let s = std::os::unix::net::UnixStream::connect(r.dir.join("redis.sock"))
        .expect("connect to redis' unix socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    (&s).write_all(b"*1\r\n$6\r\nDBSIZE\r\n").unwrap();
    let mut l = String::new();
    BufReader::new(&s).read_line(&mut l).unwrap();
    assert_eq!(l, format!(":{want}\r\n"), "DBSIZE over the unix socket");
}

/// Sends SHUTDOWN NOSAVE: redis closes the connection and exits, logging its farewell.
fn shutdown(r: &Redis, pid: i32, farewells: usize) {
    let mut c = r.client();
    c.w.write_all(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        .unwrap();
    let mut rest = Vec::new();
    match c.r.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "SHUTDOWN answered {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    wait_gone(&[pid], 20, "redis after SHUTDOWN NOSAVE");
    let log = std::fs::read_to_string(&r.log).unwrap();
    assert_eq!(
        log.matches("Redis is now ready to exit, bye bye").count(),
        farewells,
        "redis exits cleanly: {log}"
    );
}

const BIG_CHUNK: usize = 1 << 20;
const BIG_CHUNKS: usize = 16;

fn big_chunk(i: usize) -> Vec<u8> {
    (0..BIG_CHUNK)
        .map(|j| b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(i * 11 + j * 7 + j / 1000) % 36])
        .collect()
}

fn big_value() -> Vec<u8> {
    (0..BIG_CHUNKS).flat_map(big_chunk).collect()
}

/// Stores `big:value` and asks for it on a fresh connection that does not read: returns once
/// redis holds part of the reply in its own output buffer (it cannot write more).
fn stuck_reader(r: &Redis) -> Client {
    let mut c = r.client();
    for i in 0..BIG_CHUNKS {
        let reply = c.pipeline(&[cmdv(&[b"APPEND", b"big:value", &big_chunk(i)])]);
        assert_eq!(reply, vec![Reply::Int(((i + 1) * BIG_CHUNK) as i64)]);
    }
    let mut rd = r.client();
    nix::sys::socket::setsockopt(&rd.w, nix::sys::socket::sockopt::RcvBuf, &65536).unwrap();
    rd.cmd(&["CLIENT", "SETNAME", "stuck-reader"]);
    rd.w.write_all(b"*2\r\n$3\r\nGET\r\n$9\r\nbig:value\r\n")
        .unwrap();
    // Hang guard only: redis fills the socket at once.
    let t0 = Instant::now();
    loop {
        let list = c.cmd(&["CLIENT", "LIST"]).text();
        let line = list
            .lines()
            .find(|l| l.contains("name=stuck-reader"))
            .unwrap_or_else(|| panic!("no stuck-reader in {list}"))
            .to_string();
        let omem: u64 = line
            .split(' ')
            .find_map(|f| f.strip_prefix("omem="))
            .unwrap()
            .parse()
            .unwrap();
        if omem > 0 && line.contains("cmd=get") {
            return rd;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "redis never had to hold back the big reply: {line}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `body(dir, restored)` holding the restore lock, in an emptied scratch directory
/// `/tmp/stasis-dump-tests/NAME-PID` (removed afterwards), under a `secs` deadline that kills
/// redis' cgroup and the restored PIDs `body` records.
fn in_scratch(
    name: &'static str,
    base: i32,
    secs: u64,
    body: impl FnOnce(PathBuf, Restored) + Send + 'static,
) {
    let _lock = restore_lock();
    let dir = PathBuf::from(format!(
        "/tmp/stasis-dump-tests/{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d2 = dir.clone();
    with_round_trip_deadline(secs, cgroup_path(name, base), move |restored| {
        body(d2, restored)
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// How the round trip dumps redis.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `stasis dump` kills the tree.
    Kill,
    /// `--leave-running`, then the test kills redis.
    LeaveRunning,
    /// `--freeze-cgroup` (the cgroup v2 freezer holds the tree still), the tree is killed.
    FreezeCgroup,
    /// `--tcp-established` on dump and restore, with a client connected across both.
    TcpEstablished,
}

/// Starts redis, loads data, dumps it with the command line, restores it and checks it serves
/// everything.
fn round_trip(name: &'static str, base: i32, mode: Mode) {
    let leave_running = mode == Mode::LeaveRunning;
    in_scratch(name, base, 180, move |d2, restored| {
        let r = Redis::start(name, base, &d2);
        let pid = r.w.pid;
        *restored.lock().unwrap() = vec![pid];
        let data = {
            let mut c = r.client();
            let d = load(&mut c);
            check(&mut c, &d, "before the dump");
            d
        };
        // A client connected across the dump and the restore (with --tcp-established).
        let mut held = (mode == Mode::TcpEstablished).then(|| {
            let mut c = r.client();
            c.cmd(&["CLIENT", "SETNAME", "held-across"]);
            c.cmd(&["SET", "held:key", "held-value"]);
            c
        });
        // A client whose big reply is stuck in flight: it asked for a 16 MiB value and reads
        // nothing, with a small receive buffer, so the reply sits in its socket, in redis'
        // TCP send queue and in redis' own output buffer across the dump and the restore.
        let mut reader = (mode == Mode::TcpEstablished).then(|| stuck_reader(&r));
        let names = thread_names(pid);
        for t in ["bio_close_file", "bio_aof_fsync", "bio_lazy_free"] {
            assert!(names.iter().any(|n| n == t), "redis runs {t}: {names:?}");
        }
        let images = d2.join("img");
        std::fs::create_dir_all(&images).unwrap();
        let pids = pid.to_string();
        let mut args = vec!["dump", "-t", &pids];
        if leave_running {
            args.push("--leave-running");
        }
        if mode == Mode::TcpEstablished {
            args.push("--tcp-established");
        }
        let cgs = r.w.cgroup.display().to_string();
        if mode == Mode::FreezeCgroup {
            args.extend(["--freeze-cgroup", &cgs]);
        }
        let expect = if mode == Mode::TcpEstablished { 2 } else { 0 };
        wait_connections(r.port, expect);
        run_stasis(&args, &images, "dump.log", "stasis dump redis");
        assert_eq!(pids_of(&images), vec![pid]);
        // jemalloc starts background threads lazily: compare with the images, not `names`.
        let dumped = image_thread_names(&images);
        assert!(dumped.len() >= names.len(), "{dumped:?} vs {names:?}");
        if mode == Mode::TcpEstablished {
            let outq: Vec<u64> = files_with_prefix(&images, "tcp-stream-")
                .into_iter()
                .map(|p| decode(&p)["entries"][0]["outq_len"].as_u64().unwrap_or(0))
                .collect();
            assert_eq!(outq.len(), 2, "two established connections dumped");
            assert!(
                outq.iter().any(|&n| n > 0),
                "the stuck reply is in a dumped send queue: {outq:?}"
            );
        }
        if leave_running {
            assert!(alive(pid) && untraced(pid), "redis left running");
            let mut c = r.client();
            check(&mut c, &data, "after the --leave-running dump");
            // Written after the dump: the restored server must not have it.
            c.cmd(&["SET", "after:dump", "1"]);
            drop(c);
            kill_pids(&[pid]);
        }
        wait_gone(&[pid], 10, "the dumped redis");
        let mut args = vec!["restore", "-d"];
        if mode == Mode::TcpEstablished {
            args.push("--tcp-established");
        }
        run_stasis(&args, &images, "restore.log", "stasis restore redis");
        assert!(alive(pid) && untraced(pid), "restored redis runs untraced");
        assert_restored_threads(&thread_names(pid), &dumped);
        if let Some(rd) = reader.as_mut() {
            let got = rd.reply();
            assert!(
                got == Reply::Bulk(Some(big_value())),
                "the big reply arrives whole"
            );
            assert_eq!(rd.cmd(&["CLIENT", "GETNAME"]).text(), "stuck-reader");
            assert_eq!(rd.cmd(&["DEL", "big:value"]).int(), 1);
        }
        drop(reader);
        if let Some(h) = held.as_mut() {
            // The same connection, and the server still knows this client.
            assert_eq!(h.cmd(&["CLIENT", "GETNAME"]).text(), "held-across");
            assert_eq!(h.cmd(&["GET", "held:key"]).text(), "held-value");
            assert_eq!(h.cmd(&["DEL", "held:key"]).int(), 1);
            check(h, &data, "restored, over the held connection");
        }
        drop(held);
        let mut c = r.client();
        check(&mut c, &data, "restored");
        assert_eq!(c.cmd(&["GET", "after:dump"]), Reply::Bulk(None));
        let info = c.cmd(&["INFO", "server"]).text();
        assert!(info.contains(&format!("process_id:{pid}")), "{info}");
        drop(c);
        let mut c6 = Client::connect(&r.addr6()).expect("connect to redis on ::1");
        assert_eq!(c6.cmd(&["DBSIZE"]).int(), N_KEYS as i64 + 3, "over ::1");
        assert_eq!(c6.cmd(&["GET", "key:7"]), Reply::Bulk(Some(value(7))));
        drop(c6);
        unix_dbsize(&r, N_KEYS as i64 + 3);
        shutdown(&r, pid, 1);
        if !leave_running {
            // What the restored server appended to its AOF (before the dump, then after the
            // restore) loads into a fresh redis as the same data.
            let fresh = Redis::start(&format!("{name}-aof"), base, &d2);
            let mut c = fresh.client();
            check(&mut c, &data, "reloaded from the AOF");
            drop(c);
            shutdown(&fresh, fresh.w.pid, 2);
        }
    });
}

#[test]
fn redis_round_trip_dump_kills() {
    round_trip("redis-rt", 29000, Mode::Kill);
}

#[test]
fn redis_round_trip_leave_running() {
    round_trip("redis-rt-lr", 29000, Mode::LeaveRunning);
}

#[test]
fn redis_round_trip_tcp_established_client() {
    round_trip("redis-rt-tcp", 29000, Mode::TcpEstablished);
}

/// Without `--tcp-established` a connected client makes the dump fail with an error naming the
/// option, and redis goes on as if nothing happened.
#[test]
fn redis_dump_refuses_connected_client_without_tcp_established() {
    let name = "redis-refuse";
    let base = 29000;
    in_scratch(name, base, 120, move |d2, _| {
        let r = Redis::start(name, base, &d2);
        let pid = r.w.pid;
        let mut c = r.client();
        let data = load(&mut c);
        let images = d2.join("img");
        std::fs::create_dir_all(&images).unwrap();
        wait_connections(r.port, 1);
        let out = stasis_bin()
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(&images)
            .args(["-o", "dump.log", "-v4"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "dump with a connected client");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--tcp-established"), "{err}");
        assert!(
            alive(pid) && untraced(pid) && all_running(&r.w),
            "a failed dump leaves redis running"
        );
        check(&mut c, &data, "after the refused dump");
        drop(c);
        shutdown(&r, pid, 1);
    });
}

#[test]
fn redis_round_trip_freeze_cgroup() {
    round_trip("redis-rt-fz", 29000, Mode::FreezeCgroup);
}

/// `--leave-running --tcp-established`: the dump takes the connections out of repair mode
/// again, and connected clients (one with a big reply in flight) carry on as if nothing
/// happened.
#[test]
fn redis_leave_running_tcp_established_clients_carry_on() {
    let name = "redis-lr-tcp";
    let base = 29000;
    in_scratch(name, base, 120, move |d2, _| {
        let r = Redis::start(name, base, &d2);
        let pid = r.w.pid;
        let mut held = r.client();
        let data = load(&mut held);
        held.cmd(&["CLIENT", "SETNAME", "held-across"]);
        let mut reader = stuck_reader(&r);
        wait_connections(r.port, 2);
        let images = d2.join("img");
        std::fs::create_dir_all(&images).unwrap();
        let pids = pid.to_string();
        run_stasis(
            &["dump", "-t", &pids, "--leave-running", "--tcp-established"],
            &images,
            "dump.log",
            "stasis dump --leave-running --tcp-established redis",
        );
        assert!(alive(pid) && untraced(pid), "redis left running");
        let got = reader.reply();
        assert!(
            got == Reply::Bulk(Some(big_value())),
            "the big reply arrives whole"
        );
        assert_eq!(reader.cmd(&["DEL", "big:value"]).int(), 1);
        drop(reader);
        assert_eq!(held.cmd(&["CLIENT", "GETNAME"]).text(), "held-across");
        check(&mut held, &data, "after the dump, over the held connection");
        drop(held);
        shutdown(&r, pid, 1);
    });
}
