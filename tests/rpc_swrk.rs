//! CRIU's RPC, driven the way runc and libcriu drive it: `stasis swrk FD` on one end of a
//! SOCK_SEQPACKET socketpair, a client here on the other end speaking `rpc.proto` with the
//! images crate's prost messages. The images directory is passed as a descriptor of ours
//! (`images_dir_fd`), which the service opens as `/proc/<our pid>/fd/N`.
//!
//! Requests: VERSION, FEATURE_CHECK, CHECK; DUMP (left running and killed) with the
//! notifications answered here and their order checked; RESTORE with `rst_sibling` (the
//! restored root is our child, its PID in the response); a PRE_DUMP + DUMP chain; failures
//! (a nonexistent PID, an option not built, a refused notification) answered cleanly.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use prost::Message;
use stasis::images::pb::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};

use common::counter::{count, counts_past, launch_counter};
use common::dump::*;
use common::lock::restore_lock;

/// A `stasis swrk` and our end of its socket (or a connection to `stasis service`).
struct Swrk {
    child: Option<Child>,
    sk: OwnedFd,
}

impl Swrk {
    fn start() -> Swrk {
        Swrk::start_as(Path::new(env!("CARGO_BIN_EXE_stasis")))
    }

    /// `PROGRAM swrk FD` (the stasis binary under another name: `criu`).
    fn start_as(program: &Path) -> Swrk {
        let (ours, theirs) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.arg("swrk")
            .arg(fd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec the closure only calls fcntl (async-signal-safe) to
        // let the child inherit its end of the socket.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(theirs);
        Swrk {
            child: Some(child),
            sk: ours,
        }
    }

    /// A connection to `stasis service` at `path`.
    fn connect(path: &Path) -> Swrk {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::connect(fd.as_raw_fd(), &socket::UnixAddr::new(path).unwrap()).unwrap();
        Swrk {
            child: None,
            sk: fd,
        }
    }

    fn send(&self, req: &CriuReq) {
        let buf = req.encode_to_vec();
        let n = socket::send(self.sk.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL).unwrap();
        assert_eq!(n, buf.len());
    }

    /// The next message from the service (`None`: it closed the connection).
    fn recv(&self) -> Option<CriuResp> {
        let mut buf = vec![0u8; 1 << 16];
        let n = socket::recv(self.sk.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        (n > 0).then(|| CriuResp::decode(&buf[..n]).unwrap())
    }

    /// Sends `req`, answers notifications with `answer(script)` (recording their names and
    /// PIDs), and returns the response with the notifications seen.
    fn call_with(
        &self,
        req: &CriuReq,
        mut answer: impl FnMut(&str) -> bool,
    ) -> (CriuResp, Vec<(String, Option<i32>)>) {
        self.send(req);
        let mut seen = Vec::new();
        loop {
            let resp = self.recv().expect("the service closed the connection");
            if resp.r#type != CriuReqType::Notify as i32 {
                return (resp, seen);
            }
            let n = resp.notify.unwrap();
            let script = n.script.unwrap_or_default();
            let ok = answer(&script);
            seen.push((script, n.pid));
            self.send(&CriuReq {
                r#type: CriuReqType::Notify as i32,
                notify_success: Some(ok),
                ..Default::default()
            });
        }
    }

    fn call(&self, req: &CriuReq) -> (CriuResp, Vec<(String, Option<i32>)>) {
        self.call_with(req, |_| true)
    }

    /// Waits for `stasis swrk` to exit; its exit status.
    fn exit_status(self) -> i32 {
        drop(self.sk);
        let mut child = self.child.expect("a stasis swrk of ours");
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st
                    .code()
                    .unwrap_or_else(|| panic!("stasis swrk killed: {st:?}"));
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "stasis swrk did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn req(ty: CriuReqType, opts: Option<CriuOpts>) -> CriuReq {
    CriuReq {
        r#type: ty as i32,
        opts,
        ..Default::default()
    }
}

/// Options of a request on the images directory opened as `dir_fd`.
fn opts(dir_fd: &std::fs::File, log: &str) -> CriuOpts {
    CriuOpts {
        images_dir_fd: dir_fd.as_raw_fd(),
        log_file: Some(log.into()),
        log_level: Some(4),
        ..Default::default()
    }
}

fn open_dir(p: &Path) -> std::fs::File {
    std::fs::create_dir_all(p).unwrap();
    std::fs::File::open(p).unwrap()
}

fn failed(resp: &CriuResp, dir: &Path, log: &str) -> String {
    format!(
        "{resp:?}\nlog:\n{}",
        std::fs::read_to_string(dir.join(log)).unwrap_or_default()
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(format!(
        "/tmp/stasis-dump-tests/rpc-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Under the restore lock and a deadline: a counter workload `name` (launched in a scratch
/// directory) for `body(dir, workload, counter file, restored pids)`; its cgroup is killed and
/// the directory removed afterwards.
fn with_counter(
    name: &'static str,
    base: i32,
    secs: u64,
    body: impl FnOnce(&Path, &mut Workload, &Path, Restored) + Send + 'static,
) {
    let _lock = restore_lock();
    with_round_trip_deadline(secs, cgroup_path(name, base), move |restored| {
        let dir = scratch(name);
        let (mut w, out) = launch_counter(name, base, &dir);
        body(&dir, &mut w, &out, restored);
        kill_cgroup(&w.cgroup);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn version_features_and_check() {
    common::deadline::with_timeout(60, || {
        // As libcriu and runc find it: a binary named criu (`ln -s stasis criu`).
        let dir = scratch("as-criu");
        let criu = dir.join("criu");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stasis"), &criu).unwrap();
        let s = Swrk::start_as(&criu);
        let mut v = req(CriuReqType::Version, None);
        v.keep_open = Some(true);
        let (r, _) = s.call(&v);
        assert!(r.success, "{r:?}");
        assert_eq!(r.r#type, CriuReqType::Version as i32);
        let ver = r.version.unwrap();
        assert_eq!((ver.major_number, ver.minor_number), (4, 2));

        let mut f = req(CriuReqType::FeatureCheck, None);
        f.keep_open = Some(true);
        f.features = Some(CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(true),
            pidfd_store: Some(true),
        });
        let (r, _) = s.call(&f);
        assert!(r.success, "{r:?}");
        let feat = r.features.unwrap();
        // This machine tracks dirty pages with userfaultfd WP_ASYNC; lazy pages and the
        // pidfd store are not built.
        assert_eq!(feat.mem_track, Some(true));
        assert_eq!(feat.lazy_pages, Some(false));
        assert_eq!(feat.pidfd_store, Some(false));

        let (r, _) = s.call(&req(CriuReqType::Check, None));
        assert!(r.success, "{r:?}");
        assert_eq!(r.r#type, CriuReqType::Check as i32);
        assert_eq!(s.exit_status(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn dump_left_running_then_killed_then_restored_with_notifications() {
    with_counter("rpc-counter", 33100, 120, |dir, w, out, restored| {
        // DUMP, left running: pre-dump, query-ext-files, post-dump, then the answer.
        let running = dir.join("running");
        let running_fd = open_dir(&running);
        let mut o = opts(&running_fd, "dump.log");
        o.pid = Some(w.pid);
        o.leave_running = Some(true);
        o.notify_scripts = Some(true);
        let s = Swrk::start();
        let (r, seen) = s.call(&req(CriuReqType::Dump, Some(o)));
        assert!(r.success, "{}", failed(&r, &running, "dump.log"));
        assert_eq!(r.r#type, CriuReqType::Dump as i32);
        assert_eq!(r.dump.unwrap().restored, Some(false));
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["pre-dump", "query-ext-files", "post-dump"]);
        assert!(seen.iter().all(|(_, pid)| pid.is_none()), "{seen:?}");
        assert_eq!(s.exit_status(), 0);
        assert!(running.join("pstree.img").exists());
        assert!(
            running.join("dump.log").exists(),
            "the log is in the work directory"
        );
        let n = count(out);
        counts_past(out, n, "left running");

        // DUMP, killed.
        let images = dir.join("img");
        let images_fd = open_dir(&images);
        let mut o = opts(&images_fd, "dump.log");
        o.pid = Some(w.pid);
        let s = Swrk::start();
        let (r, seen) = s.call(&req(CriuReqType::Dump, Some(o)));
        assert!(r.success, "{}", failed(&r, &images, "dump.log"));
        assert!(seen.is_empty(), "no notifications unless asked: {seen:?}");
        assert_eq!(s.exit_status(), 0);
        let before = count(out);
        reap_dumped(w);
        let pids = pids_of(&images);
        *restored.lock().unwrap() = pids.clone();

        // RESTORE as our child (rst_sibling): pre-restore, post-restore (with the root's
        // PID), pre-resume, post-resume, then the answer with the root's PID.
        let mut o = opts(&images_fd, "restore.log");
        o.notify_scripts = Some(true);
        o.rst_sibling = Some(true);
        let s = Swrk::start();
        let mut root_ran_at_post_restore = None;
        let (r, seen) = s.call_with(&req(CriuReqType::Restore, Some(o)), |script| {
            if script == "post-restore" {
                // Restored but not yet resumed: the counter has not moved.
                root_ran_at_post_restore = Some(count(out) != before);
            }
            true
        });
        assert!(r.success, "{}", failed(&r, &images, "restore.log"));
        assert_eq!(r.r#type, CriuReqType::Restore as i32);
        assert_eq!(r.restore.unwrap().pid, w.pid, "the root keeps its PID");
        assert_eq!(
            seen,
            [
                ("pre-restore".to_string(), None),
                ("post-restore".to_string(), Some(w.pid)),
                ("pre-resume".to_string(), None),
                ("post-resume".to_string(), None),
            ]
        );
        assert_eq!(root_ran_at_post_restore, Some(false));
        assert_eq!(s.exit_status(), 0);
        // It counts on from where it was, as our child.
        counts_past(out, before, "restored");
        let ppid = std::fs::read_to_string(format!("/proc/{}/stat", w.pid))
            .unwrap()
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u32>()
            .unwrap();
        assert_eq!(
            ppid,
            std::process::id(),
            "rst_sibling: the root is the client's child"
        );
        kill_pids(&pids);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(w.pid), None);
    });
}

#[test]
fn pre_dump_then_dump_in_one_session() {
    with_counter("rpc-chain", 33200, 120, |dir, w, out, _| {
        let pre = dir.join("pre");
        let pre_fd = open_dir(&pre);
        let fin = dir.join("final");
        let fin_fd = open_dir(&fin);
        let s = Swrk::start();
        let mut o = opts(&pre_fd, "pre-dump.log");
        o.pid = Some(w.pid);
        o.track_mem = Some(true);
        let (r, _) = s.call(&req(CriuReqType::PreDump, Some(o)));
        assert!(r.success, "{}", failed(&r, &pre, "pre-dump.log"));
        assert_eq!(r.r#type, CriuReqType::PreDump as i32);
        assert!(pre
            .join("pagemap-".to_string() + &w.pid.to_string() + ".img")
            .exists());
        let n = count(out);
        counts_past(out, n, "after the pre-dump");

        let mut o = opts(&fin_fd, "dump.log");
        o.pid = Some(w.pid);
        o.track_mem = Some(true);
        o.parent_img = Some("../pre".into());
        o.leave_running = Some(true);
        let (r, _) = s.call(&req(CriuReqType::Dump, Some(o)));
        assert!(r.success, "{}", failed(&r, &fin, "dump.log"));
        assert_eq!(s.exit_status(), 0);
        assert_eq!(
            std::fs::read_link(fin.join("parent")).unwrap(),
            Path::new("../pre")
        );
        // The final dump references the pre-dump's pages instead of copying them all.
        let pagemap = decode(&fin.join(format!("pagemap-{}.img", w.pid)));
        assert!(
            pagemap.to_string().to_lowercase().contains("parent"),
            "no page of the final dump is in the parent: {pagemap}"
        );
    });
}

#[test]
fn failures_are_answered() {
    common::deadline::with_timeout(60, || {
        let dir = scratch("fail");
        let dir_fd = open_dir(&dir);
        // A PID no task has: a child of ours, reaped.
        let mut gone = Command::new("true").spawn().unwrap();
        let pid = gone.id() as i32;
        gone.wait().unwrap();
        let mut o = opts(&dir_fd, "dump.log");
        o.pid = Some(pid);
        // runc always names /etc/criu/runc.conf; one that does not exist is skipped.
        o.config_file = Some(dir.join("absent.conf").to_string_lossy().into_owned());
        let s = Swrk::start();
        let (r, _) = s.call(&req(CriuReqType::Dump, Some(o)));
        assert!(!r.success);
        assert_eq!(r.r#type, CriuReqType::Dump as i32);
        let msg = r.cr_errmsg.clone().unwrap_or_default();
        assert!(msg.contains(&pid.to_string()), "names the task: {r:?}");
        assert_eq!(
            r.cr_errno,
            Some(libc::ESRCH),
            "CRIU's errno for no such task"
        );
        let log = std::fs::read_to_string(dir.join("dump.log")).unwrap();
        assert!(log.contains("Error ("), "an Error line in the log: {log}");
        assert_eq!(s.exit_status(), 1, "a failed request, not a crash");

        // An option not built is refused by its CRIU name.
        let mut o = opts(&dir_fd, "dump2.log");
        o.pid = Some(std::process::id() as i32);
        o.lazy_pages = Some(true);
        let s = Swrk::start();
        let (r, _) = s.call(&req(CriuReqType::Dump, Some(o)));
        assert!(!r.success);
        assert!(
            r.cr_errmsg
                .as_deref()
                .unwrap_or("")
                .contains("--lazy-pages"),
            "{r:?}"
        );
        assert_eq!(r.cr_errno, Some(56), "EBADRQC, as CRIU");
        assert_eq!(s.exit_status(), 1);

        // The request's config file is read after its options (so it overrides them).
        let conf = dir.join("rpc.conf");
        std::fs::write(&conf, "# as runc.conf\nlazy-pages\n").unwrap();
        let mut o = opts(&dir_fd, "dump3.log");
        o.pid = Some(std::process::id() as i32);
        o.config_file = Some(conf.to_string_lossy().into_owned());
        let s = Swrk::start();
        let (r, _) = s.call(&req(CriuReqType::Dump, Some(o)));
        assert!(!r.success);
        assert!(
            r.cr_errmsg
                .as_deref()
                .unwrap_or("")
                .contains("--lazy-pages"),
            "{r:?}"
        );
        assert_eq!(s.exit_status(), 1);

        // Neither images_dir_fd nor images_dir.
        let s = Swrk::start();
        let (r, _) = s.call(&req(
            CriuReqType::Restore,
            Some(CriuOpts {
                images_dir_fd: -1,
                ..Default::default()
            }),
        ));
        assert!(!r.success);
        assert!(r.cr_errmsg.unwrap().contains("images_dir"));
        assert_eq!(r.restore.unwrap().pid, -1);
        assert_eq!(s.exit_status(), 1);

        // keep_open on a DUMP is refused (CRIU allows it only for requests that leave
        // nothing behind).
        let s = Swrk::start();
        let mut d = req(CriuReqType::Dump, Some(opts(&dir_fd, "x.log")));
        d.keep_open = Some(true);
        let (r, _) = s.call(&d);
        assert!(!r.success);
        assert_eq!(r.r#type, CriuReqType::Empty as i32);
        assert_eq!(s.exit_status(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn refused_notification_stops_the_dump_and_leaves_the_tree_running() {
    with_counter("rpc-refuse", 33300, 60, |dir, w, out, _| {
        let img = dir.join("img");
        let img_fd = open_dir(&img);
        let mut o = opts(&img_fd, "dump.log");
        o.pid = Some(w.pid);
        o.notify_scripts = Some(true);
        let s = Swrk::start();
        let (r, seen) = s.call_with(&req(CriuReqType::Dump, Some(o)), |script| {
            script != "post-dump"
        });
        assert!(!r.success, "{r:?}");
        assert!(
            r.cr_errmsg.as_deref().unwrap_or("").contains("post-dump"),
            "{r:?}"
        );
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["pre-dump", "query-ext-files", "post-dump"]);
        assert_eq!(s.exit_status(), 1);
        // CRIU: a refused post-dump resumes the tree, whatever leave_running says.
        let n = count(out);
        counts_past(out, n, "after a refused post-dump");
    });
}

#[test]
fn cpuinfo_dump_then_check() {
    common::deadline::with_timeout(60, || {
        let dir = scratch("cpuinfo");
        let dir_fd = open_dir(&dir);
        let s = Swrk::start();
        let mut d = req(CriuReqType::CpuinfoDump, Some(opts(&dir_fd, "cpuinfo.log")));
        d.keep_open = Some(true);
        let (r, _) = s.call(&d);
        assert!(r.success, "{}", failed(&r, &dir, "cpuinfo.log"));
        assert_eq!(r.r#type, CriuReqType::CpuinfoDump as i32);
        assert!(dir.join("cpuinfo.img").exists());
        let (r, _) = s.call(&req(
            CriuReqType::CpuinfoCheck,
            Some(opts(&dir_fd, "cpuinfo-check.log")),
        ));
        assert!(r.success, "{}", failed(&r, &dir, "cpuinfo-check.log"));
        assert_eq!(s.exit_status(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn page_server_request_then_dump_to_it() {
    with_counter("rpc-ps", 33500, 90, |dir, w, _, _| {
        let (srv, local) = (dir.join("server"), dir.join("local"));
        let (srv_fd, local_fd) = (open_dir(&srv), open_dir(&local));
        let port = common::page_server::free_port();
        let ps = |pid| stasis::images::pb::CriuPageServerInfo {
            address: Some("127.0.0.1".into()),
            port: Some(port as i32),
            pid,
            fd: None,
        };
        let mut o = opts(&srv_fd, "page-server.log");
        o.ps = Some(ps(None));
        let s = Swrk::start();
        let (r, _) = s.call(&req(CriuReqType::PageServer, Some(o)));
        assert!(r.success, "{}", failed(&r, &srv, "page-server.log"));
        let info = r.ps.unwrap();
        assert_eq!(info.port, Some(port as i32));
        let server_pid = info.pid.expect("the page server's pid");
        assert!(Path::new(&format!("/proc/{server_pid}")).exists());
        assert_eq!(s.exit_status(), 0);

        let mut o = opts(&local_fd, "dump.log");
        o.pid = Some(w.pid);
        o.leave_running = Some(true);
        o.ps = Some(ps(None));
        let s = Swrk::start();
        let (r, _) = s.call(&req(CriuReqType::Dump, Some(o)));
        assert!(r.success, "{}", failed(&r, &local, "dump.log"));
        assert_eq!(s.exit_status(), 0);
        // The pages went to the server; the rest stayed here.
        assert!(srv.join(format!("pagemap-{}.img", w.pid)).exists());
        assert!(!local.join(format!("pagemap-{}.img", w.pid)).exists());
        assert!(local.join("pstree.img").exists());
        wait_gone(&[server_pid], 10, "the page server after its session");
    });
}

#[test]
fn service_serves_each_connection() {
    common::deadline::with_timeout(60, || {
        let dir = scratch("service");
        let sock = dir.join("criu.sock");
        let mut service = Command::new(env!("CARGO_BIN_EXE_stasis"))
            .args(["service", "--address"])
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "no service socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..2 {
            let c = Swrk::connect(&sock);
            let (r, _) = c.call(&req(CriuReqType::Version, None));
            assert!(r.success, "{r:?}");
            assert_eq!(r.version.unwrap().major_number, 4);
            assert!(
                c.recv().is_none(),
                "the session ends after a request without keep_open"
            );
        }
        // rst_sibling needs the client to be our parent: swrk only, as CRIU.
        let dir_fd = open_dir(&dir);
        let mut o = opts(&dir_fd, "restore.log");
        o.rst_sibling = Some(true);
        let c = Swrk::connect(&sock);
        let (r, _) = c.call(&req(CriuReqType::Restore, Some(o)));
        assert!(!r.success);
        assert!(r.cr_errmsg.unwrap().contains("rst_sibling"));
        assert!(service.try_wait().unwrap().is_none(), "the service goes on");
        service.kill().unwrap();
        service.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
