//! Round trips of the fd kinds of `stasis::files`, in process: create the object, dump it
//! to its files.img entry (through the protobuf bytes and the side images on disk), restore
//! it from there, and check what a program would observe.
//!
//! Every test runs under a timeout (a stuck syscall fails the test instead of hanging).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use prost::Message;
use stasis::files::{self, DumpFd, DumpOptions, DumpState, Extra, RestoreCtx, RestoreOptions};
use stasis::images::pb;
use stasis::sys::{fdkinds, socket};

use common::deadline::with_timeout;

/// Dumps one of our own fds the way the dump engine does for a task's fd, with `fdinfo` as
/// its fdinfo text (the kernel's when `None`); the error as text.
fn try_dump_own(
    fd: &impl AsFd,
    id: u32,
    st: &mut DumpState,
    fdinfo: Option<&str>,
) -> Result<pb::FileEntry, String> {
    let n = fd.as_fd().as_raw_fd();
    let link = std::fs::read_link(format!("/proc/self/fd/{n}")).unwrap();
    let link = link.to_string_lossy().into_owned();
    let kernel_fdinfo;
    let fdinfo = match fdinfo {
        Some(text) => text,
        None => {
            kernel_fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).unwrap();
            &kernel_fdinfo
        }
    };
    let d = DumpFd {
        pid: std::process::id() as i32,
        fd: n,
        file: fd.as_fd(),
        link: &link,
        fdinfo,
        id,
    };
    files::dump_fd(&d, st).map_err(|e| format!("dump {link}: {e}"))
}

/// Dumps one of our own fds (see [`try_dump_own`]), through the wire format.
fn dump_own(fd: &impl AsFd, id: u32, st: &mut DumpState) -> pb::FileEntry {
    let e = try_dump_own(fd, id, st, None).unwrap_or_else(|e| panic!("{e}"));
    // Through the wire format, as the images would carry it.
    pb::FileEntry::decode(e.encode_to_vec().as_slice()).unwrap()
}

/// Writes and reads back the side images.
fn through_disk(extra: &Extra, tcp_inos: &[u32]) -> Extra {
    let dir = tempfile::tempdir().unwrap();
    extra.write_dir(dir.path()).unwrap();
    Extra::read_dir(dir.path(), tcp_inos).unwrap()
}

fn no_targets(_: u32) -> Option<RawFd> {
    None
}

fn restore(e: &pb::FileEntry, extra: &Extra) -> OwnedFd {
    let mut ctx = RestoreCtx::new(RestoreOptions::default(), extra, [e]);
    files::restore_fd(e, &mut ctx, &no_targets).unwrap_or_else(|err| panic!("restore: {err}"))
}

fn fl(fd: &impl AsFd) -> i32 {
    fdkinds::get_fl(fd).unwrap()
}

fn read_u64(fd: &impl AsFd) -> u64 {
    let mut b = [0u8; 8];
    assert_eq!(fdkinds::read(fd, &mut b).unwrap(), 8);
    u64::from_ne_bytes(b)
}

#[test]
fn eventfd_count_and_flags() {
    with_timeout(10, || {
        let fd = fdkinds::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).unwrap();
        fdkinds::write(&fd, &42u64.to_ne_bytes()).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&fd, 7, &mut st);
        assert_eq!(e.r#type, pb::FdTypes::Eventfd as i32);
        let efd = e.efd.as_ref().unwrap();
        assert_eq!((efd.id, efd.counter), (7, 42));
        assert_eq!(
            efd.flags & libc::O_CLOEXEC as u32,
            0,
            "O_CLOEXEC belongs to fdinfo, not the file"
        );
        let r = restore(&e, &Extra::default());
        assert_ne!(fl(&r) & libc::O_NONBLOCK, 0);
        assert_eq!(read_u64(&r), 42);
        // The original keeps its count (dumping does not consume).
        assert_eq!(read_u64(&fd), 42);
        // Empty now, and non-blocking like the original.
        assert_eq!(
            fdkinds::read(&r, &mut [0u8; 8]).unwrap_err(),
            nix::errno::Errno::EAGAIN
        );
    });
}

#[test]
fn timerfd_fires_after_restore_with_ticks() {
    with_timeout(20, || {
        let fd = fdkinds::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC).unwrap();
        let ms = |m: i64| libc::timespec {
            tv_sec: 0,
            tv_nsec: m * 1_000_000,
        };
        let spec = libc::itimerspec {
            it_interval: ms(20),
            it_value: ms(1),
        };
        fdkinds::timerfd_settime(&fd, 0, &spec).unwrap();
        // Let it expire a few times without reading.
        std::thread::sleep(Duration::from_millis(70));
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&fd, 3, &mut st);
        let t = e.tfd.as_ref().unwrap();
        assert_eq!(t.clockid, libc::CLOCK_MONOTONIC as u32);
        assert_eq!((t.isec, t.insec), (0, 20_000_000));
        // The kernel counts overruns of an unread periodic timer only when it is read.
        assert!(t.ticks >= 1, "ticks {}", t.ticks);
        assert!(t.vsec == 0 && t.vnsec <= 20_000_000);
        let r = restore(&e, &Extra::default());
        let cur = fdkinds::timerfd_gettime(&r).unwrap();
        assert_eq!(cur.it_interval.tv_nsec, 20_000_000);
        // The pending expirations are there at once...
        assert!(read_u64(&r) >= t.ticks);
        // ...and it keeps firing (blocking read returns on the next expiration).
        assert!(read_u64(&r) >= 1);
    });
}

#[test]
fn timerfd_disarmed_and_abstime() {
    with_timeout(10, || {
        let fd =
            fdkinds::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
                .unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&fd, 1, &mut st);
        let r = restore(&e, &Extra::default());
        let cur = fdkinds::timerfd_gettime(&r).unwrap();
        assert_eq!(
            (cur.it_value.tv_sec, cur.it_value.tv_nsec),
            (0, 0),
            "disarmed stays disarmed"
        );
        assert_ne!(fl(&r) & libc::O_NONBLOCK, 0);

        let now = fdkinds::clock_gettime(libc::CLOCK_REALTIME).unwrap();
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: now.tv_sec + 100,
                tv_nsec: 0,
            },
        };
        fdkinds::timerfd_settime(&fd, libc::TFD_TIMER_ABSTIME, &spec).unwrap();
        let e = dump_own(&fd, 1, &mut st);
        assert_eq!(
            e.tfd.as_ref().unwrap().settime_flags,
            libc::TFD_TIMER_ABSTIME as u32
        );
        let r = restore(&e, &Extra::default());
        let left = fdkinds::timerfd_gettime(&r).unwrap().it_value.tv_sec;
        assert!((98..=100).contains(&left), "time left {left}");
    });
}

fn fdinfo_field(fd: &impl AsFd, key: &str) -> String {
    let t =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd())).unwrap();
    t.lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .map(|v| v.trim_start_matches(':').trim().to_string())
        })
        .unwrap()
}

#[test]
fn signalfd_mask_and_flags() {
    with_timeout(10, || {
        let mask: u64 = (1 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGRTMIN() + 2 - 1));
        let fd = fdkinds::signalfd(mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&fd, 9, &mut st);
        assert_eq!(e.sgfd.as_ref().unwrap().sigmask, mask);
        let r = restore(&e, &Extra::default());
        assert_eq!(fdinfo_field(&r, "sigmask"), fdinfo_field(&fd, "sigmask"));
        assert_ne!(fl(&r) & libc::O_NONBLOCK, 0);
        // Nothing pending: a non-blocking read says so.
        assert_eq!(
            fdkinds::read(&r, &mut [0u8; 128]).unwrap_err(),
            nix::errno::Errno::EAGAIN
        );
    });
}

#[test]
fn epoll_reports_restored_targets() {
    with_timeout(10, || {
        let ep = fdkinds::epoll_create(libc::EPOLL_CLOEXEC).unwrap();
        let ev = fdkinds::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).unwrap();
        let (a, b) = socket::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        fdkinds::epoll_add(&ep, &ev, libc::EPOLLIN as u32, 0xdead_beef_0000_0001).unwrap();
        fdkinds::epoll_add(&ep, &b, (libc::EPOLLIN | libc::EPOLLET) as u32, 77).unwrap();
        fdkinds::write(&ev, &1u64.to_ne_bytes()).unwrap();

        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&ep, 5, &mut st);
        let tfd = &e.epfd.as_ref().unwrap().tfd;
        assert_eq!(tfd.len(), 2);
        let t_ev = tfd.iter().find(|t| t.tfd == ev.as_raw_fd() as u32).unwrap();
        // The kernel always adds EPOLLERR | EPOLLHUP to the recorded events.
        let always = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        assert_eq!(
            (t_ev.id, t_ev.events & !always, t_ev.data),
            (5, libc::EPOLLIN as u32, 0xdead_beef_0000_0001)
        );
        assert!(t_ev.inode.is_some() && t_ev.dev.is_some() && t_ev.pos.is_some());
        let t_b = tfd.iter().find(|t| t.tfd == b.as_raw_fd() as u32).unwrap();
        assert_eq!(t_b.events & !always, (libc::EPOLLIN | libc::EPOLLET) as u32);
        assert_eq!(files::restore_stage(&e), 2, "epoll after its targets");

        // "Restored" targets: the eventfd reopened with its count, the socket end itself.
        let ev2 = restore(&dump_own(&ev, 6, &mut st), &Extra::default());
        let map: HashMap<u32, RawFd> = [
            (ev.as_raw_fd() as u32, ev2.as_raw_fd()),
            (b.as_raw_fd() as u32, b.as_raw_fd()),
        ]
        .into();
        let extra = Extra::default();
        let mut ctx = RestoreCtx::new(RestoreOptions::default(), &extra, [&e]);
        let r = files::restore_fd(&e, &mut ctx, &|n| map.get(&n).copied()).unwrap();
        assert_eq!(
            fdkinds::epoll_poll(&r, 8).unwrap(),
            vec![(libc::EPOLLIN as u32, 0xdead_beef_0000_0001)]
        );
        socket::send(&a, b"x", 0).unwrap();
        let mut got = fdkinds::epoll_poll(&r, 8).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                (libc::EPOLLIN as u32, 77),
                (libc::EPOLLIN as u32, 0xdead_beef_0000_0001)
            ]
        );

        // A target that was not restored is an error naming it.
        let mut ctx = RestoreCtx::new(RestoreOptions::default(), &extra, [&e]);
        let err = files::restore_fd(&e, &mut ctx, &no_targets)
            .unwrap_err()
            .to_string();
        assert!(err.contains("was not restored"), "{err}");
    });
}

#[test]
fn inotify_watches_keep_wd_and_fire() {
    with_timeout(10, || {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let fd = fdkinds::inotify_init(libc::IN_CLOEXEC | libc::IN_NONBLOCK).unwrap();
        let w1 =
            fdkinds::inotify_add_watch(&fd, d1.path().to_str().unwrap(), libc::IN_CREATE).unwrap();
        let w2 = fdkinds::inotify_add_watch(
            &fd,
            d2.path().to_str().unwrap(),
            libc::IN_CREATE | libc::IN_DELETE,
        )
        .unwrap();
        let w3 = fdkinds::inotify_add_watch(
            &fd,
            d1.path().parent().unwrap().to_str().unwrap(),
            libc::IN_ATTRIB,
        )
        .unwrap();
        fdkinds::inotify_rm_watch(&fd, w1).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&fd, 4, &mut st);
        let wds = &e.ify.as_ref().unwrap().wd;
        assert_eq!(wds.len(), 2);
        let e2 = wds.iter().find(|w| w.wd == w2 as u32).unwrap();
        assert_eq!(
            e2.mask & (libc::IN_CREATE | libc::IN_DELETE),
            libc::IN_CREATE | libc::IN_DELETE
        );
        assert_eq!(e2.f_handle.handle.len(), 16);
        assert!(e2.f_handle.bytes > 0);
        let r = restore(&e, &Extra::default());
        assert_ne!(fl(&r) & libc::O_NONBLOCK, 0);
        // No leftover events from re-adding watches.
        assert_eq!(
            fdkinds::read(&r, &mut [0u8; 4096]).unwrap_err(),
            nix::errno::Errno::EAGAIN
        );
        std::fs::write(d2.path().join("new"), b"x").unwrap();
        let mut buf = [0u8; 4096];
        let n = fdkinds::read(&r, &mut buf).unwrap();
        assert!(n >= 16);
        let wd = i32::from_ne_bytes(buf[0..4].try_into().unwrap());
        let mask = u32::from_ne_bytes(buf[4..8].try_into().unwrap());
        assert_eq!((wd, mask & libc::IN_CREATE), (w2, libc::IN_CREATE));
        // Both watches exist with their old numbers.
        let again = dump_own(&r, 4, &mut st);
        let mut got: Vec<u32> = again.ify.unwrap().wd.iter().map(|w| w.wd).collect();
        got.sort();
        assert_eq!(got, vec![w2 as u32, w3 as u32]);
    });
}

#[test]
fn extra_images_round_trip() {
    let mut x = Extra::default();
    x.sk_queues.push((
        pb::SkPacketEntry {
            id_for: 3,
            length: 5,
            scm: vec![],
        },
        b"hello".to_vec(),
    ));
    x.sk_queues.push((
        pb::SkPacketEntry {
            id_for: 4,
            length: 0,
            scm: vec![],
        },
        vec![],
    ));
    let tcp = pb::TcpStreamEntry {
        inq_len: 2,
        outq_len: 3,
        inq_seq: 10,
        outq_seq: 20,
        ..Default::default()
    };
    x.tcp_streams
        .insert(0x1234, (tcp, b"in".to_vec(), b"out".to_vec()));
    x.tty_info.push(pb::TtyInfoEntry {
        id: 1,
        rdev: 5,
        ..Default::default()
    });
    let y = through_disk(&x, &[0x1234]);
    assert_eq!(x, y);
    assert_eq!(
        y.queue_for(3).collect::<Vec<_>>(),
        vec![b"hello".as_slice()]
    );
}

#[test]
fn unknown_links_are_not_ours() {
    let f = std::fs::File::open("/proc/self/stat").unwrap();
    assert!(files::kind_of("/proc/1/stat", f.as_fd()).is_none());
    assert!(files::kind_of("pipe:[5]", f.as_fd()).is_none());
    let e = pb::FileEntry {
        r#type: pb::FdTypes::Reg as i32,
        id: 1,
        ..Default::default()
    };
    assert!(!files::handles(&e));
    let extra = Extra::default();
    let mut ctx = RestoreCtx::new(RestoreOptions::default(), &extra, [&e]);
    assert!(files::restore_fd(&e, &mut ctx, &no_targets).is_err());
    // A kind entry without its member is an image error, not a panic.
    let e = pb::FileEntry {
        r#type: pb::FdTypes::Eventfd as i32,
        id: 2,
        ..Default::default()
    };
    let err = files::restore_fd(&e, &mut ctx, &no_targets)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no efd member"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// unix sockets

fn ino_of(fd: &impl AsFd) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let p = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    std::fs::metadata(p).unwrap().ino() as u32
}

fn unix_addr(name: &[u8]) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(name);
    a
}

/// Restores `entries` in stage order; returns the descriptors by files.img id.
fn restore_all(
    entries: &[pb::FileEntry],
    extra: &Extra,
    opts: RestoreOptions,
) -> HashMap<u32, OwnedFd> {
    let mut sorted: Vec<&pb::FileEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| files::restore_stage(e));
    let mut ctx = RestoreCtx::new(opts, extra, entries);
    let mut out = HashMap::new();
    for e in sorted {
        let fd = files::restore_fd(e, &mut ctx, &no_targets)
            .unwrap_or_else(|err| panic!("restore: {err}"));
        out.insert(e.id, fd);
    }
    assert!(ctx.unclaimed().is_empty());
    ctx.finish().unwrap();
    out
}

fn recv_all(fd: &impl AsFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match socket::recv(fd, &mut buf, libc::MSG_DONTWAIT) {
            Ok(0) | Err(nix::errno::Errno::EAGAIN) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn unix_socketpair_queues_both_ways() {
    with_timeout(10, || {
        let (a, b) = socket::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        socket::send(&a, b"to b: hello", 0).unwrap();
        socket::send(&a, b" and more", 0).unwrap();
        socket::send(&b, b"to a", 0).unwrap();
        fdkinds::set_fl(&b, fl(&b) | libc::O_NONBLOCK).unwrap();
        socket::setsockopt_int(&a, libc::SOL_SOCKET, libc::SO_SNDBUF, 65536).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let ea = dump_own(&a, 1, &mut st);
        let eb = dump_own(&b, 2, &mut st);
        assert!(files::finish_dump(&mut st, &mut || 100).unwrap().is_empty());
        let (ua, ub) = (ea.usk.clone().unwrap(), eb.usk.clone().unwrap());
        assert_eq!((ua.peer, ub.peer), (ino_of(&b), ino_of(&a)));
        assert_eq!((ua.state, ua.r#type), (1, libc::SOCK_STREAM as u32));
        assert_eq!(ua.opts.so_sndbuf, 131072);
        // Peeking left the data in place.
        assert_eq!(recv_all(&b), b"to b: hello and more");
        let extra = through_disk(&st.extra, &[]);
        assert_eq!(
            extra.queue_for(1).collect::<Vec<_>>(),
            vec![b"to a".as_slice()]
        );
        drop((a, b));
        let fds = restore_all(&[ea, eb], &extra, RestoreOptions::default());
        let (ra, rb) = (&fds[&1], &fds[&2]);
        assert_ne!(fl(rb) & libc::O_NONBLOCK, 0);
        assert_eq!(fl(ra) & libc::O_NONBLOCK, 0);
        assert_eq!(
            socket::getsockopt_int(ra, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap(),
            131072
        );
        assert_eq!(recv_all(rb), b"to b: hello and more");
        assert_eq!(recv_all(ra), b"to a");
        socket::send(ra, b"new", 0).unwrap();
        assert_eq!(recv_all(rb), b"new");
    });
}

#[test]
fn unix_unlinked_name_is_deleted_with_its_perms() {
    with_timeout(10, || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone.sock");
        let l = socket::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&l, &unix_addr(path.to_str().unwrap().as_bytes())).unwrap();
        socket::listen(&l, 2).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&l, 1, &mut st);
        let u = e.usk.as_ref().unwrap();
        assert_eq!(u.deleted, Some(true));
        assert_eq!(u.file_perms.as_ref().unwrap().mode & 0o777, 0o640);
        drop(l);
        // Restored listening under no name: the name is bound, then removed again.
        let r = restore(&e, &Extra::default());
        assert!(!path.exists());
        assert_eq!(
            socket::getsockopt_int(&r, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap(),
            1
        );
    });
}

#[test]
fn unix_listener_and_bound_dgram_with_queue() {
    with_timeout(10, || {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dgram.sock");
        let l = socket::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        let abs = format!("\0stasis-test-listen-{}", std::process::id());
        socket::bind(&l, &unix_addr(abs.as_bytes())).unwrap();
        socket::listen(&l, 5).unwrap();
        let d = socket::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&d, &unix_addr(path.to_str().unwrap().as_bytes())).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let c = socket::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&c, &unix_addr(path.to_str().unwrap().as_bytes())).unwrap();
        socket::send(&c, b"one", 0).unwrap();
        socket::send(&c, b"two!", 0).unwrap();

        let mut st = DumpState::new(DumpOptions::default());
        let el = dump_own(&l, 1, &mut st);
        let ed = dump_own(&d, 2, &mut st);
        let ul = el.usk.as_ref().unwrap();
        assert_eq!((ul.state, ul.backlog), (10, 5));
        assert_eq!(ul.name, abs.as_bytes());
        let ud = ed.usk.as_ref().unwrap();
        assert_eq!(ud.name, path.to_str().unwrap().as_bytes());
        assert_eq!(ud.file_perms.as_ref().unwrap().mode & 0o777, 0o600);
        let extra = through_disk(&st.extra, &[]);
        assert_eq!(
            extra.queue_for(2).collect::<Vec<_>>(),
            vec![b"one".as_slice(), b"two!".as_slice()]
        );
        drop((l, d, c));
        let fds = restore_all(&[el, ed], &extra, RestoreOptions::default());
        let (rl, rd) = (&fds[&1], &fds[&2]);
        assert_eq!(socket::getsockname(rl).unwrap(), unix_addr(abs.as_bytes()));
        let diag = stasis::sys::sock_diag::unix_by_ino(ino_of(rl)).unwrap();
        assert_eq!((diag.state, diag.rqlen.unwrap().1), (10, 5));
        // The listener accepts connections again.
        let c2 = socket::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&c2, &unix_addr(abs.as_bytes())).unwrap();
        socket::accept(rl, libc::SOCK_CLOEXEC).unwrap();
        // Datagrams keep their boundaries and order; the file keeps its mode.
        let mut buf = [0u8; 16];
        assert_eq!(socket::recv(rd, &mut buf, libc::MSG_DONTWAIT).unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        assert_eq!(socket::recv(rd, &mut buf, libc::MSG_DONTWAIT).unwrap(), 4);
        assert_eq!(&buf[..4], b"two!");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    });
}

#[test]
fn unix_dgram_client_reconnects_to_restored_server() {
    with_timeout(10, || {
        let name = format!("\0stasis-test-dgram-{}", std::process::id());
        let srv = socket::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&srv, &unix_addr(name.as_bytes())).unwrap();
        let cli = socket::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&cli, &unix_addr(name.as_bytes())).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let ec = dump_own(&cli, 1, &mut st);
        let es = dump_own(&srv, 2, &mut st);
        assert_eq!(ec.usk.as_ref().unwrap().peer, ino_of(&srv));
        assert_eq!(es.usk.as_ref().unwrap().peer, 0);
        assert!(files::restore_stage(&ec) > files::restore_stage(&es));
        drop((cli, srv));
        let fds = restore_all(&[ec, es], &Extra::default(), RestoreOptions::default());
        socket::send(&fds[&1], b"ping", 0).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            socket::recv(&fds[&2], &mut buf, libc::MSG_DONTWAIT).unwrap(),
            4
        );
    });
}

#[test]
fn unix_closed_peer_gives_data_then_eof() {
    with_timeout(10, || {
        let (a, b) = socket::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        socket::send(&b, b"last words", 0).unwrap();
        drop(b);
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&a, 1, &mut st);
        assert_eq!(e.usk.as_ref().unwrap().peer, 0);
        let extra = through_disk(&st.extra, &[]);
        drop(a);
        let fds = restore_all(&[e], &extra, RestoreOptions::default());
        let mut buf = [0u8; 32];
        let n = socket::recv(&fds[&1], &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"last words");
        assert_eq!(
            socket::recv(&fds[&1], &mut buf, 0).unwrap(),
            0,
            "EOF after the data"
        );
    });
}

#[test]
fn unix_external_peers_need_ext_unix_sk() {
    with_timeout(10, || {
        let (a, _outside) = socket::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        dump_own(&a, 1, &mut st);
        let err = files::finish_dump(&mut st, &mut || 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ext-unix-sk"), "{err}");

        let mut st = DumpState::new(DumpOptions {
            ext_unix_sk: true,
            ..Default::default()
        });
        dump_own(&a, 1, &mut st);
        let changed = files::finish_dump(&mut st, &mut || 100).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(
            changed[0].usk.as_ref().unwrap().uflags,
            stasis::files::unix::USK_EXTERN
        );
        let opts = RestoreOptions {
            ext_unix_sk: true,
            ..Default::default()
        };
        let fds = restore_all(&changed, &Extra::default(), opts);
        assert_eq!(
            socket::recv(&fds[&1], &mut [0u8; 4], libc::MSG_DONTWAIT).unwrap(),
            0
        );

        // A named external peer becomes its own entry; the socket reconnects to it by name.
        let name = format!("\0stasis-test-ext-{}", std::process::id());
        let srv = socket::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&srv, &unix_addr(name.as_bytes())).unwrap();
        let cli = socket::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&cli, &unix_addr(name.as_bytes())).unwrap();
        let mut st = DumpState::new(DumpOptions {
            ext_unix_sk: true,
            ..Default::default()
        });
        let ec = dump_own(&cli, 1, &mut st);
        let added = files::finish_dump(&mut st, &mut || 100).unwrap();
        assert_eq!(added.len(), 1);
        let ext = added[0].usk.as_ref().unwrap();
        assert_eq!(
            (added[0].id, ext.ino, ext.uflags),
            (100, ino_of(&srv), stasis::files::unix::USK_EXTERN)
        );
        assert_eq!(ext.name, name.as_bytes());
        drop(cli);
        let none = Extra::default();
        let mut ctx = RestoreCtx::new(opts, &none, [&ec, &added[0]]);
        let rc = files::restore_fd(&ec, &mut ctx, &no_targets).unwrap();
        socket::send(&rc, b"hi", 0).unwrap();
        assert_eq!(
            socket::recv(&srv, &mut [0u8; 4], libc::MSG_DONTWAIT).unwrap(),
            2
        );
    });
}

// ---------------------------------------------------------------------------------------------
// inet sockets

fn v4(port: u16) -> Vec<u8> {
    stasis::files::inet::make_addr(
        libc::AF_INET,
        &[u32::from_ne_bytes([127, 0, 0, 1])],
        u32::from(port),
    )
}

fn port_of(fd: &impl AsFd) -> u16 {
    let a = socket::getsockname(fd).unwrap();
    u16::from_be_bytes([a[2], a[3]])
}

fn tcp_info(fd: &impl AsFd) -> Vec<u8> {
    stasis::files::inet::tcp_info(fd.as_fd()).unwrap()
}

#[test]
fn tcp_listener_keeps_port_backlog_and_options() {
    with_timeout(10, || {
        let l = socket::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::setsockopt_int(&l, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).unwrap();
        socket::setsockopt_int(&l, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1).unwrap();
        socket::setsockopt_int(&l, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77).unwrap();
        socket::setsockopt_int(&l, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1).unwrap();
        socket::bind(&l, &v4(0)).unwrap();
        socket::listen(&l, 9).unwrap();
        let port = port_of(&l);
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&l, 1, &mut st);
        let s = e.isk.as_ref().unwrap();
        assert_eq!((s.family, s.r#type, s.proto, s.state), (2, 1, 6, 10));
        assert_eq!((s.src_port, s.backlog), (u32::from(port), 9));
        assert_eq!(s.src_addr, vec![u32::from_ne_bytes([127, 0, 0, 1])]);
        assert_eq!(s.opts.reuseaddr, Some(true));
        assert_eq!(s.tcp_opts.as_ref().unwrap().keepidle, Some(77));
        drop(l);
        let r = restore(&e, &Extra::default());
        assert_eq!(port_of(&r), port);
        let ti = tcp_info(&r);
        assert_eq!(ti[0], 10, "LISTEN");
        assert_eq!(
            u32::from_ne_bytes(ti[28..32].try_into().unwrap()),
            9,
            "backlog"
        );
        assert_eq!(
            socket::getsockopt_int(&r, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE).unwrap(),
            77
        );
        assert_eq!(
            socket::getsockopt_int(&r, libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap(),
            1
        );
        assert_eq!(
            socket::getsockopt_int(&r, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap(),
            1
        );
        let c = socket::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&c, &v4(port)).unwrap();
        socket::accept(&r, libc::SOCK_CLOEXEC).unwrap();
    });
}

#[test]
fn tcp6_v6only_listener() {
    with_timeout(10, || {
        // The port is free only while nobody else takes it between the dump (listener
        // closed) and the restore: another test may, so try again with a new one.
        for attempt in 0..5 {
            let l =
                socket::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
            socket::setsockopt_int(&l, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1).unwrap();
            let any6 = stasis::files::inet::make_addr(libc::AF_INET6, &[0, 0, 0, 0], 0);
            socket::bind(&l, &any6).unwrap();
            socket::listen(&l, 3).unwrap();
            let port = port_of(&l);
            let mut st = DumpState::new(DumpOptions::default());
            let e = dump_own(&l, 1, &mut st);
            assert_eq!(e.isk.as_ref().unwrap().v6only, Some(true));
            assert_eq!(e.isk.as_ref().unwrap().src_addr.len(), 4);
            drop(l);
            let extra = Extra::default();
            let mut ctx = RestoreCtx::new(RestoreOptions::default(), &extra, [&e]);
            let r = match files::restore_fd(&e, &mut ctx, &no_targets) {
                Ok(r) => r,
                Err(err) if err.errno() == Some(libc::EADDRINUSE) && attempt < 4 => continue,
                Err(err) => panic!("restore: {err}"),
            };
            assert_eq!(port_of(&r), port);
            assert_eq!(
                socket::getsockopt_int(&r, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap(),
                1
            );
            assert_eq!(tcp_info(&r)[0], 10);
            return;
        }
    });
}

#[test]
fn udp_bound_and_connected() {
    with_timeout(10, || {
        let peer = socket::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&peer, &v4(0)).unwrap();
        let u = socket::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&u, &v4(0)).unwrap();
        socket::connect(&u, &v4(port_of(&peer))).unwrap();
        let port = port_of(&u);
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&u, 1, &mut st);
        let s = e.isk.as_ref().unwrap();
        assert_eq!(
            (s.proto, s.state, s.dst_port),
            (17, 1, u32::from(port_of(&peer)))
        );
        drop(u);
        let r = restore(&e, &Extra::default());
        assert_eq!(port_of(&r), port);
        socket::send(&r, b"dgram", 0).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(socket::recv(&peer, &mut buf, 0).unwrap(), 5);
        let reply =
            socket::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&reply, &v4(port)).unwrap();
        assert_eq!(
            socket::recv(&r, &mut buf, libc::MSG_DONTWAIT).unwrap_err(),
            nix::errno::Errno::EAGAIN
        );
    });
}

#[test]
fn tcp_established_via_repair() {
    with_timeout(20, || {
        let l = socket::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&l, &v4(0)).unwrap();
        socket::listen(&l, 1).unwrap();
        let c = socket::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&c, &v4(port_of(&l))).unwrap();
        let s = socket::accept(&l, libc::SOCK_CLOEXEC).unwrap();
        socket::send(&c, b"hello server", 0).unwrap();
        socket::send(&s, b"hello client", 0).unwrap();
        // Wait until the data has arrived (a blocking peek of the whole message).
        let mut buf = [0u8; 64];
        assert_eq!(
            socket::recv(&s, &mut buf[..12], libc::MSG_PEEK | libc::MSG_WAITALL).unwrap(),
            12
        );

        let mut st = DumpState::new(DumpOptions::default());
        let err = try_dump_own(&s, 1, &mut st, None).unwrap_err();
        assert!(err.contains("--tcp-established"), "{err}");

        let mut st = DumpState::new(DumpOptions {
            tcp_established: true,
            ..Default::default()
        });
        let e = dump_own(&s, 1, &mut st);
        let ino = e.isk.as_ref().unwrap().ino;
        let (t, inq, outq) = st.extra.tcp_streams.get(&ino).unwrap().clone();
        assert_eq!(
            (t.inq_len, inq.as_slice()),
            (12, b"hello server".as_slice())
        );
        assert_eq!(t.outq_len as usize, outq.len());
        assert!(t.mss_clamp > 0);
        let extra = through_disk(&st.extra, &[ino]);
        // The task "dies": its socket goes away silently (no FIN/RST to the client).
        st.close_tcp_in_repair();
        drop(s);
        // The listener stays: the restored connection shares its port (as after accept).
        let opts = RestoreOptions {
            tcp_established: true,
            ..Default::default()
        };
        let mut ctx = RestoreCtx::new(opts, &extra, [&e]);
        let r = files::restore_fd(&e, &mut ctx, &no_targets).unwrap();
        assert_eq!(tcp_info(&r)[0], 1, "ESTABLISHED");
        ctx.finish().unwrap();
        // The receive queue is back, and both directions keep working with the old sequence.
        let n = socket::recv(&r, &mut buf, libc::MSG_DONTWAIT).unwrap();
        assert_eq!(&buf[..n], b"hello server");
        socket::send(&r, b" and more", 0).unwrap();
        let mut got = Vec::new();
        while got.len() < 21 {
            let n = socket::recv(&c, &mut buf, 0).unwrap();
            assert!(n > 0, "client saw EOF");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello client and more");
        socket::send(&c, b"ping", 0).unwrap();
        let n = socket::recv(&r, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"ping");
    });
}

// ---------------------------------------------------------------------------------------------
// ttys

#[test]
fn pty_pair_keeps_index_termios_winsize_packet_mode() {
    use stasis::sys::tty;
    with_timeout(10, || {
        let m =
            fdkinds::open("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        tty::set_int(&m, tty::TIOCSPTLCK, 0).unwrap();
        let s = tty::open_peer(
            &m,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
        .unwrap();
        let index = tty::get_int(&m, tty::TIOCGPTN).unwrap() as u32;
        tty::set_winsize(&s, [33, 101, 0, 0]).unwrap();
        let mut term = tty::get_termios(&s, tty::TCGETS).unwrap();
        term.lflag &= !(libc::ECHO | libc::ICANON);
        term.cc[libc::VMIN] = 1;
        tty::set_termios(&s, tty::TCSETS, term).unwrap();
        tty::set_int(&m, tty::TIOCPKT, 1).unwrap();

        let mut st = DumpState::new(DumpOptions::default());
        let em = dump_own(&m, 1, &mut st);
        let es = dump_own(&s, 2, &mut st);
        assert_eq!(em.r#type, pb::FdTypes::Tty as i32);
        assert_eq!(em.tty.as_ref().unwrap().tty_info_id, index << 1 | 1);
        assert_eq!(es.tty.as_ref().unwrap().tty_info_id, index << 1);
        assert_eq!(st.extra.tty_info.len(), 2);
        let si = st
            .extra
            .tty_info
            .iter()
            .find(|i| i.id == index << 1)
            .unwrap();
        assert_eq!(si.winsize.as_ref().unwrap().ws_col, 101);
        assert_eq!(si.termios.as_ref().unwrap().c_cc.len(), 19);
        let mi = st
            .extra
            .tty_info
            .iter()
            .find(|i| i.id == index << 1 | 1)
            .unwrap();
        assert!(mi.packet_mode && !mi.locked);
        let extra = through_disk(&st.extra, &[]);
        // The dump state holds copies of both sides (for the queued data) until it goes.
        drop((m, s, st));

        let fds = restore_all(&[es, em], &extra, RestoreOptions::default());
        let (rm, rs) = (&fds[&1], &fds[&2]);
        assert_eq!(tty::get_int(rm, tty::TIOCGPTN).unwrap() as u32, index);
        assert_eq!(tty::get_winsize(rs).unwrap(), [33, 101, 0, 0]);
        assert_eq!(tty::get_termios(rs, tty::TCGETS).unwrap(), term);
        assert_eq!(tty::get_int(rm, tty::TIOCGPKT).unwrap(), 1);
        assert_ne!(fl(rs) & libc::O_NONBLOCK, 0);
        // The pair is connected: slave output reaches the master (packet mode: a 0 header).
        fdkinds::write(rs, b"hello").unwrap();
        let mut buf = [0u8; 16];
        let n = fdkinds::read(rm, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"\0hello");
    });
}

#[test]
fn pty_slave_without_master_needs_shell_job() {
    use stasis::sys::tty;
    with_timeout(10, || {
        let m =
            fdkinds::open("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        tty::set_int(&m, tty::TIOCSPTLCK, 0).unwrap();
        let s = tty::open_peer(&m, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        let mut st = DumpState::new(DumpOptions {
            shell_job: true,
            ..Default::default()
        });
        let es = dump_own(&s, 2, &mut st);
        let extra = through_disk(&st.extra, &[]);
        let mut ctx = RestoreCtx::new(RestoreOptions::default(), &extra, [&es]);
        let err = files::restore_fd(&es, &mut ctx, &no_targets)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--shell-job"), "{err}");
        let opts = RestoreOptions {
            shell_job: true,
            ..Default::default()
        };
        let mut ctx = RestoreCtx::new(opts, &extra, [&es]);
        let res = files::restore_fd(&es, &mut ctx, &no_targets);
        if tty::is_tty(std::io::stdin()) {
            assert!(tty::is_tty(res.unwrap()), "our own terminal");
        } else {
            let err = res.unwrap_err().to_string();
            assert!(err.contains("needs a terminal on fd 0"), "{err}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// another task's fds, as the dump engine sees them

/// Kills and reaps the child when the test ends, whatever happens.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn task_fds_via_pidfd_getfd_and_engine_json() {
    with_timeout(20, || {
        let (mine, theirs) = socket::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        socket::send(&mine, b"queued for the child", 0).unwrap();
        let ev = fdkinds::eventfd(5, libc::EFD_CLOEXEC).unwrap();
        let child = Child(
            std::process::Command::new("sleep")
                .arg("30")
                .stdin(std::process::Stdio::from(theirs))
                .stdout(std::process::Stdio::from(ev))
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id() as i32;
        // Wait until the child runs sleep (its fds are then exactly ours).
        while !std::fs::read_link(format!("/proc/{pid}/exe"))
            .unwrap()
            .ends_with("sleep")
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut st = DumpState::new(DumpOptions::default());
        let mut next = 10;
        let mut ids = || {
            next += 1;
            next
        };
        let (e0, k0) = files::task::dump_task_fd(pid, 0, &mut ids, &mut st)
            .unwrap()
            .unwrap();
        let (e1, k1) = files::task::dump_task_fd(pid, 1, &mut ids, &mut st)
            .unwrap()
            .unwrap();
        assert_eq!((k0, k1), ("UNIXSK", "EVENTFD"));
        assert_eq!((e0.id, e1.id), (11, 12));
        assert_eq!(e1.efd.as_ref().unwrap().counter, 5);
        assert_eq!(
            st.extra.queue_for(11).collect::<Vec<_>>(),
            vec![b"queued for the child".as_slice()]
        );
        // The child's stderr (inherited from the test) is not ours to dump: no id is taken.
        let mut other = DumpState::new(DumpOptions::default());
        let mut taken = 0;
        let r = files::task::dump_task_fd(
            pid,
            2,
            &mut || {
                taken += 1;
                taken
            },
            &mut other,
        )
        .unwrap();
        if r.is_none() {
            assert_eq!(taken, 0);
        }
        drop(child);
    });
}

/// Every malformed fdinfo is an error naming the kind, the fd and the field; never a panic.
#[test]
fn malformed_fdinfo_is_rejected_naming_the_field() {
    with_timeout(10, || {
        let efd = fdkinds::eventfd(0, libc::EFD_CLOEXEC).unwrap();
        let tfd = fdkinds::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC).unwrap();
        let sfd = fdkinds::signalfd(1, libc::SFD_CLOEXEC).unwrap();
        let ep = fdkinds::epoll_create(libc::EPOLL_CLOEXEC).unwrap();
        let ino = fdkinds::inotify_init(libc::IN_CLOEXEC).unwrap();
        let long = format!(
            "flags: 0\ninotify wd:1 ino:2 sdev:3 mask:4 ignored_mask:0 fhandle-bytes:90 \
             fhandle-type:1 f_handle:{}\n",
            "ab".repeat(129)
        );
        let cases: Vec<(&OwnedFd, &str, &str)> = vec![
            (&efd, "pos: 0\n", "field flags: missing"),
            (&efd, "flags: 02\n", "field eventfd-count: missing"),
            (&efd, "flags: 02\neventfd-count: zz\n", "field eventfd-count: invalid digit"),
            (&sfd, "flags: 02\nsigmask: xyz\n", "field sigmask"),
            (&tfd, "flags: 02\nclockid: 1\n", "field ticks: missing"),
            (
                &tfd,
                "flags: 02\nclockid: 1\nticks: 0\nsettime flags: 0\nit_value: (0 0)\nit_interval: (0, 0)\n",
                "field it_value: not (sec, nsec)",
            ),
            (&ep, "flags: 02\ntfd: 5 events: 19\n", "needs tfd, events and data"),
            (&ep, "flags: 02\ntfd: x events: 19 data: 1\n", "field tfd: tfd:"),
            (&ino, "flags: 0\ninotify wd:1 ino:2 sdev:3 mask:4 ignored_mask:0\n", "incomplete watch line"),
            (
                &ino,
                "flags: 0\ninotify wd:1 ino:2 sdev:3 mask:4 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:xyz\n",
                "not a hex handle",
            ),
            (
                &ino,
                long.as_str(),
                "not a hex handle",
            ),
        ];
        for (fd, text, want) in cases {
            let n = fd.as_raw_fd();
            let mut st = DumpState::new(DumpOptions::default());
            let err = try_dump_own(fd, 1, &mut st, Some(text)).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains(&format!("fd {n} of task")), "{err}");
        }
    });
}

#[test]
fn tcp_unsent_data_of_a_corked_socket_survives() {
    with_timeout(20, || {
        let l = socket::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&l, &v4(0)).unwrap();
        socket::listen(&l, 1).unwrap();
        let c = socket::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&c, &v4(port_of(&l))).unwrap();
        let s = socket::accept(&l, libc::SOCK_CLOEXEC).unwrap();
        socket::setsockopt_int(&c, libc::IPPROTO_TCP, libc::TCP_CORK, 1).unwrap();
        socket::send(&c, b"corked bytes", 0).unwrap();
        let mut st = DumpState::new(DumpOptions {
            tcp_established: true,
            ..Default::default()
        });
        let e = dump_own(&c, 1, &mut st);
        let s_entry = e.isk.as_ref().unwrap();
        assert_eq!(s_entry.tcp_opts.as_ref().unwrap().cork, Some(true));
        let (t, _, outq) = st.extra.tcp_streams.get(&s_entry.ino).unwrap().clone();
        assert_eq!(outq, b"corked bytes");
        assert_eq!(t.unsq_len, Some(12), "nothing was sent yet");
        let extra = through_disk(&st.extra, &[s_entry.ino]);
        st.close_tcp_in_repair();
        drop(c);
        let opts = RestoreOptions {
            tcp_established: true,
            ..Default::default()
        };
        let mut ctx = RestoreCtx::new(opts, &extra, [&e]);
        let r = files::restore_fd(&e, &mut ctx, &no_targets).unwrap();
        ctx.finish().unwrap();
        assert_eq!(
            socket::getsockopt_int(&r, libc::IPPROTO_TCP, libc::TCP_CORK).unwrap(),
            1
        );
        // Uncorking sends the data, exactly once.
        socket::setsockopt_int(&r, libc::IPPROTO_TCP, libc::TCP_CORK, 0).unwrap();
        let mut buf = [0u8; 12];
        assert_eq!(socket::recv(&s, &mut buf, libc::MSG_WAITALL).unwrap(), 12);
        assert_eq!(&buf, b"corked bytes");
        socket::send(&r, b"!", 0).unwrap();
        assert_eq!(socket::recv(&s, &mut buf[..1], 0).unwrap(), 1);
        assert_eq!(buf[0], b'!');
    });
}

#[test]
fn unix_connection_waiting_in_accept_queue() {
    with_timeout(10, || {
        let name = format!("\0stasis-test-embryo-{}", std::process::id());
        let l = socket::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::bind(&l, &unix_addr(name.as_bytes())).unwrap();
        socket::listen(&l, 2).unwrap();
        let c = socket::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).unwrap();
        socket::connect(&c, &unix_addr(name.as_bytes())).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let el = dump_own(&l, 1, &mut st);
        dump_own(&c, 2, &mut st);
        assert_eq!(el.usk.as_ref().unwrap().state, 10);
        let changed = files::finish_dump(&mut st, &mut || 100).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].id, 2);
        assert_eq!(
            changed[0].usk.as_ref().unwrap().peer,
            ino_of(&l),
            "the listener is the peer now"
        );
        // Data already sent on such a connection cannot be kept: refused, not lost.
        socket::send(&c, b"early", 0).unwrap();
        let mut st2 = DumpState::new(DumpOptions::default());
        dump_own(&l, 1, &mut st2);
        dump_own(&c, 2, &mut st2);
        let err = files::finish_dump(&mut st2, &mut || 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not accepted yet"), "{err}");
        drop((l, c));
        let fds = restore_all(
            &[el, changed[0].clone()],
            &Extra::default(),
            RestoreOptions::default(),
        );
        let a = socket::accept(&fds[&1], libc::SOCK_CLOEXEC).unwrap();
        socket::send(&fds[&2], b"hello", 0).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(socket::recv(&a, &mut buf, 0).unwrap(), 5);
    });
}

#[test]
fn unix_queue_with_descriptors_in_flight_keeps_them() {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    with_timeout(10, || {
        let (a, b) = socket::socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        let passed = fdkinds::eventfd(0, libc::EFD_CLOEXEC).unwrap();
        let fds = [passed.as_raw_fd()];
        let iov = [std::io::IoSlice::new(b"with an fd")];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<UnixAddr>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        try_dump_own(&b, 1, &mut st, None).unwrap();
        // The packet is queued with a copy of its descriptor, to be dumped as a file.
        assert_eq!(st.extra.sk_queues.len(), 1);
        assert_eq!(st.extra.sk_queues[0].1, b"with an fd");
        let inflight = st.take_in_flight();
        assert_eq!(inflight.len(), 1);
        assert_eq!((inflight[0].index, inflight[0].fds.len()), (0, 1));
        assert!(fdkinds::same_file(
            std::process::id() as i32,
            inflight[0].fds[0].as_raw_fd(),
            std::process::id() as i32,
            passed.as_raw_fd()
        )
        .unwrap());
        st.set_rights(0, vec![7]);
        assert_eq!(st.extra.sk_queues[0].0.scm[0].rights, vec![7]);
        // The message is still there, with its descriptor, and the peek offset is off again.
        assert_eq!(
            socket::getsockopt_int(&b, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
            -1
        );
        let mut buf = [0u8; 32];
        let (got, fds) = socket::recv_with_rights(&b, &mut buf, libc::MSG_DONTWAIT).unwrap();
        assert_eq!((&buf[..got], fds.len()), (b"with an fd".as_slice(), 1));
    });
}

/// A fanotify group with an inode mark (mask and ignored mask) and a mount mark: dumped,
/// restored with the same flags and marks (dumped again, equal), and the inode mark fires.
#[test]
fn fanotify_group_and_marks() {
    with_timeout(10, || {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("watched");
        std::fs::write(&file, b"x").unwrap();
        let fd = fdkinds::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            libc::O_RDONLY as u32 | libc::O_LARGEFILE as u32,
        )
        .unwrap();
        let f = file.to_str().unwrap();
        fdkinds::fanotify_mark(&fd, libc::FAN_MARK_ADD, libc::FAN_MODIFY, f).unwrap();
        fdkinds::fanotify_mark(
            &fd,
            libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORED_MASK,
            libc::FAN_CLOSE_NOWRITE,
            f,
        )
        .unwrap();
        fdkinds::fanotify_mark(
            &fd,
            libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
            libc::FAN_OPEN_EXEC,
            d.path().to_str().unwrap(),
        )
        .unwrap();
        let mut st = DumpState::new(DumpOptions::default());
        let e = dump_own(&fd, 6, &mut st);
        let ffy = e.ffy.as_ref().unwrap();
        assert_eq!(ffy.mark.len(), 2, "{ffy:?}");
        assert_ne!(ffy.faflags & libc::FAN_NONBLOCK, 0);
        let inode = ffy.mark.iter().find(|m| m.ie.is_some()).unwrap();
        assert_eq!(
            (inode.mask as u64, inode.ignored_mask as u64),
            (libc::FAN_MODIFY, libc::FAN_CLOSE_NOWRITE)
        );
        // The inode's path, as CRIU records it (its restore opens it first).
        assert_eq!(
            inode.ie.as_ref().unwrap().f_handle.path.as_deref(),
            Some(f),
            "{inode:?}"
        );
        let mount = ffy.mark.iter().find(|m| m.me.is_some()).unwrap();
        assert!(mount.me.as_ref().unwrap().path.is_some());
        drop(fd);
        let r = restore(&e, &Extra::default());
        let again = dump_own(&r, 6, &mut st);
        let mut a = again.ffy.unwrap();
        let mut b = ffy.clone();
        for x in [&mut a, &mut b] {
            x.mark.sort_by_key(|m| m.r#type);
            x.fown = Default::default();
        }
        assert_eq!(a, b);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(b"y")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = fdkinds::read(&r, &mut buf).unwrap();
        // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8, metadata_len
        // u16, mask u64, fd i32, pid i32.
        assert!(n >= 24);
        let mask = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        assert_ne!(mask & libc::FAN_MODIFY, 0, "mask {mask:#x}");
        let efd = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
        if efd >= 0 {
            // SAFETY: the event's descriptor was just given to this process; nothing else owns it.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) });
        }
    });
}
