//! Restore of features the CRIU fixtures do not contain, on images derived from fx-loop (its
//! own PASS checks the main thread is untouched): a FIFO with queued data, an eventfd, an epoll
//! watching it, and shared anonymous memory (`VMA_ANON_SHARED` + `pagemap-shmem`).

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::restore::*;
use stasis::images::framing::Image;
use stasis::images::magic::ImageKind;
use stasis::images::pb;

const SHM: u64 = 0x3000_0000;
const FIFO: &str = "/tmp/stasis-restore-test.fifo";

fn fown() -> pb::FownEntry {
    pb::FownEntry {
        uid: 0,
        euid: 0,
        signum: 0,
        pid_type: 0,
        pid: 0,
    }
}

fn add_features(dir: &Path) {
    // files.img: fifo (+ its path entry), eventfd, epoll.
    let (fimg, mut files) = {
        let i = Image::read_file(dir.join("files.img")).unwrap();
        let v: Vec<pb::FileEntry> = i.decode().unwrap();
        (i, v)
    };
    let base = files.iter().map(|f| f.id).max().unwrap() + 1;
    let (path_id, fifo_id, efd_id, ep_id) = (base, base + 1, base + 2, base + 3);
    let empty = |ty: pb::FdTypes, id: u32| pb::FileEntry {
        r#type: ty as i32,
        id,
        ..Default::default()
    };
    let mut path = empty(pb::FdTypes::Reg, path_id);
    path.reg = Some(pb::RegFileEntry {
        id: path_id,
        flags: (libc::O_RDONLY | libc::O_NONBLOCK) as u32,
        pos: 0,
        fown: fown(),
        name: FIFO.into(),
        mode: Some(libc::S_IFIFO | 0o600),
        ..Default::default()
    });
    let mut fifo = empty(pb::FdTypes::Fifo, fifo_id);
    fifo.fifo = Some(pb::FifoEntry {
        id: fifo_id,
        pipe_id: 777,
        regf_id: Some(path_id),
    });
    let mut efd = empty(pb::FdTypes::Eventfd, efd_id);
    efd.efd = Some(pb::EventfdFileEntry {
        id: efd_id,
        flags: 0,
        fown: fown(),
        counter: 42,
    });
    let mut ep = empty(pb::FdTypes::Eventpoll, ep_id);
    ep.epfd = Some(pb::EventpollFileEntry {
        id: ep_id,
        flags: 0,
        fown: fown(),
        tfd: vec![pb::EventpollTfdEntry {
            id: efd_id,
            tfd: 21,
            events: libc::EPOLLIN as u32,
            data: 0x1234,
            ..Default::default()
        }],
    });
    files.extend([path, fifo, efd, ep]);
    Image::from_messages(fimg.kind, &files)
        .write_file(dir.join("files.img"))
        .unwrap();
    // fdinfo: fds 20, 21, 22.
    let fdi = dir.join("fdinfo-2.img");
    let i = Image::read_file(&fdi).unwrap();
    let mut fds: Vec<pb::FdinfoEntry> = i.decode().unwrap();
    for (fd, id, ty) in [
        (20, fifo_id, pb::FdTypes::Fifo),
        (21, efd_id, pb::FdTypes::Eventfd),
        (22, ep_id, pb::FdTypes::Eventpoll),
    ] {
        fds.push(pb::FdinfoEntry {
            id,
            flags: 0,
            r#type: ty as i32,
            fd,
            ..Default::default()
        });
    }
    Image::from_messages(i.kind, &fds).write_file(&fdi).unwrap();
    // fifo-data.img
    let mut fd_img = Image::new(ImageKind::FifoData);
    fd_img.entries.push(stasis::images::framing::Entry {
        bytes: prost::Message::encode_to_vec(&pb::PipeDataEntry {
            pipe_id: 777,
            bytes: 10,
            size: Some(65536),
        }),
        extra: Some(b"hello fifo".to_vec()),
    });
    fd_img.write_file(dir.join("fifo-data.img")).unwrap();
    // Shared anonymous page at SHM, shmid 99, content in pagemap-shmem-99.img + pages-9.img.
    let mi = Image::read_file(dir.join("mm-30000.img")).unwrap();
    let mut mm: pb::MmEntry = mi.single().unwrap();
    let pos = mm.vmas.iter().position(|v| v.start > SHM).unwrap();
    mm.vmas.insert(
        pos,
        pb::VmaEntry {
            start: SHM,
            end: SHM + 4096,
            pgoff: 0,
            shmid: 99,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            flags: (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32,
            status: 1 | (1 << 8),
            fd: -1,
            madv: None,
            fdflags: None,
        },
    );
    Image::from_messages(mi.kind, &[mm])
        .write_file(dir.join("mm-30000.img"))
        .unwrap();
    let mut pm = Image::new(ImageKind::Pagemap);
    pm.push(&pb::PagemapHead { pages_id: 9 });
    pm.push(&pb::PagemapEntry {
        vaddr: 0,
        compat_nr_pages: 0,
        in_parent: None,
        flags: Some(4),
        nr_pages: Some(1),
    });
    pm.write_file(dir.join("pagemap-shmem-99.img")).unwrap();
    let mut page = b"shared!".to_vec();
    page.resize(4096, 0);
    std::fs::write(dir.join("pages-9.img"), page).unwrap();
}

#[test]
fn fifo_eventfd_epoll_and_shared_anon_memory() {
    let s = serial();
    pids_ready("fx-loop");
    let _l = Leftovers("fx-loop");
    let dir = scratch_copy(&s, "fx-loop");
    let _ = std::fs::remove_file(FIFO);
    nix::unistd::mkfifo(FIFO, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    add_features(&dir);
    let pidfile = dir.join("root.pid");
    let out = stasis_restore(&dir, &["-d", "--pidfile", pidfile.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        std::fs::read_link("/proc/30000/fd/20").unwrap().to_str(),
        Some(FIFO)
    );
    let info20 = std::fs::read_to_string("/proc/30000/fdinfo/20").unwrap();
    assert!(
        info20.contains("flags:\t0104000"),
        "fifo flags (O_RDONLY|O_NONBLOCK|O_LARGEFILE): {info20}"
    );
    let mut data = [0u8; 32];
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/proc/30000/fd/20")
        .unwrap();
    let n = f.read(&mut data).unwrap();
    assert_eq!(&data[..n], b"hello fifo");

    let info21 = std::fs::read_to_string("/proc/30000/fdinfo/21").unwrap();
    assert!(
        info21.contains("eventfd-count:               2a"),
        "{info21}"
    );
    let info22 = std::fs::read_to_string("/proc/30000/fdinfo/22").unwrap();
    let words: Vec<&str> = info22.split_whitespace().collect();
    let after = |k: &str| words.iter().position(|w| *w == k).map(|i| words[i + 1]);
    assert_eq!(
        (after("tfd:"), after("data:")),
        (Some("21"), Some("1234")),
        "{info22}"
    );

    let maps = std::fs::read_to_string("/proc/30000/maps").unwrap();
    assert!(
        maps.lines()
            .any(|l| l.starts_with("30000000-30001000 rw-s")),
        "{maps}"
    );
    let mem = std::fs::File::open("/proc/30000/mem").unwrap();
    let mut got = [0u8; 7];
    mem.read_exact_at(&mut got, SHM).unwrap();
    assert_eq!(&got, b"shared!");

    let (ok, text) = verify("fx-loop", &pidfile);
    assert!(ok, "fx-loop after restore with extra fds: {text}");
    let _ = std::fs::remove_file(FIFO);
}

use std::os::unix::fs::OpenOptionsExt;
