//! Fuzz entry points, shared by the cargo-fuzz targets (`fuzz/`) and the stable replay test
//! (`images/tests/fuzz_corpus.rs`), so a crash found by the fuzzer is replayed by the same code.
//!
//! Every function takes arbitrary bytes and must neither panic nor allocate without bound;
//! it panics only when an invariant of the image layer is broken (that is the finding).
//!
//! ```text
//!  target     input                        checks
//!  framing    whole file                   parse; to_bytes == input; stream == slice parse
//!             | kind byte + body           parse_body; to_bytes == magic + body
//!  core, mm,  member byte + message bytes  typed (prost) and reflective decode; re-encoding
//!  files,                                  is a fixed point of decode/encode
//!  sockets,
//!  all
//!  json       image bytes | JSON text      crit JSON decode (plain, pretty) → text → parse →
//!                                          encode → decode is a fixed point; text encodes
//!                                          without panic
//!  pagemap    pagemap body (no magic)      Pagemap::from_image; lookups agree with a linear
//!                                          scan; offsets inside the present bytes; to_image
//!                                          reads back to the same runs
//! ```

use prost::Message;

use crate::framing::{head_bytes, Image, ImageReader};
use crate::magic::{ImageKind, KINDS};
use crate::pagemap::{Pagemap, PAGE_SIZE};
use crate::pb;

/// Framing target: the bytes as a whole file, and (first byte = kind) as a body of that kind.
pub fn framing(data: &[u8]) {
    if let Ok(img) = Image::parse(data) {
        assert_eq!(
            img.to_bytes(),
            data,
            "parsed image must write back identically"
        );
        let streamed: Vec<_> = ImageReader::new(data, Default::default())
            .expect("stream head parses when the slice parse did")
            .collect::<Result<_, _>>()
            .expect("stream parses when the slice parse did");
        assert_eq!(streamed, img.entries, "stream and slice parses differ");
        let rewritten = img
            .write_to(Vec::new(), Default::default())
            .expect("checked writer accepts what the reader produced");
        assert_eq!(rewritten, data);
    }
    if let Some((&sel, body)) = data.split_first() {
        let kind = KINDS[usize::from(sel) % KINDS.len()].kind;
        if let Ok(img) = Image::parse_body(kind, body) {
            let bytes = img.to_bytes();
            let head = head_bytes(kind);
            assert_eq!(&bytes[..head.len()], &head[..]);
            assert_eq!(
                &bytes[head.len()..],
                body,
                "body must write back identically"
            );
            let again = Image::parse(&bytes).expect("written image parses");
            assert_eq!(again, img);
        }
    }
}

/// A message type a family target exercises: its full name and, when it has a generated
/// struct, the typed round trip.
pub struct Member {
    pub name: &'static str,
    pub typed: Option<fn(&[u8])>,
}

const fn typed(name: &'static str, f: fn(&[u8])) -> Member {
    Member {
        name,
        typed: Some(f),
    }
}

/// prost decode → encode → decode: the second encoding equals the first.
fn roundtrip<M: Message + Default>(data: &[u8]) {
    if let Ok(m) = M::decode(data) {
        let enc = m.encode_to_vec();
        assert_eq!(enc.len(), m.encoded_len(), "encoded_len disagrees");
        let again = M::decode(enc.as_slice()).expect("re-encoded message decodes");
        assert_eq!(
            again.encode_to_vec(),
            enc,
            "re-encoding is not a fixed point"
        );
    }
}

/// Reflective (prost-reflect) round trip of message `name`, if defined.
fn reflect_roundtrip(name: &str, data: &[u8]) {
    let Some(desc) = crate::schema::message(name) else {
        return;
    };
    if let Ok(m) = prost_reflect::DynamicMessage::decode(desc.clone(), data) {
        let enc = m.encode_to_vec();
        let again =
            prost_reflect::DynamicMessage::decode(desc, enc.as_slice()).expect("re-decodes");
        assert_eq!(
            again.encode_to_vec(),
            enc,
            "reflective re-encoding is not a fixed point"
        );
    }
}

/// Task state: core and what goes with it.
pub static CORE: &[Member] = &[
    typed("criu.core_entry", roundtrip::<pb::CoreEntry>),
    typed(
        "criu.task_kobj_ids_entry",
        roundtrip::<pb::TaskKobjIdsEntry>,
    ),
    typed("criu.creds_entry", roundtrip::<pb::CredsEntry>),
    typed("criu.sa_entry", roundtrip::<pb::SaEntry>),
    typed("criu.itimer_entry", roundtrip::<pb::ItimerEntry>),
    typed("criu.posix_timer_entry", roundtrip::<pb::PosixTimerEntry>),
    typed("criu.rlimit_entry", roundtrip::<pb::RlimitEntry>),
    typed("criu.siginfo_entry", roundtrip::<pb::SiginfoEntry>),
    typed("criu.pstree_entry", roundtrip::<pb::PstreeEntry>),
    typed("criu.inventory_entry", roundtrip::<pb::InventoryEntry>),
    typed("criu.fs_entry", roundtrip::<pb::FsEntry>),
    typed("criu.seccomp_entry", roundtrip::<pb::SeccompEntry>),
    typed("criu.timens_entry", roundtrip::<pb::TimensEntry>),
    typed("criu.stats_entry", roundtrip::<pb::StatsEntry>),
];

/// Memory: mm, vmas, pagemaps.
pub static MM: &[Member] = &[
    typed("criu.mm_entry", roundtrip::<pb::MmEntry>),
    typed("criu.vma_entry", roundtrip::<pb::VmaEntry>),
    typed("criu.pagemap_head", roundtrip::<pb::PagemapHead>),
    typed("criu.pagemap_entry", roundtrip::<pb::PagemapEntry>),
];

/// Files and file-like objects.
pub static FILES: &[Member] = &[
    typed("criu.file_entry", roundtrip::<pb::FileEntry>),
    typed("criu.fdinfo_entry", roundtrip::<pb::FdinfoEntry>),
    typed("criu.reg_file_entry", roundtrip::<pb::RegFileEntry>),
    typed("criu.pipe_entry", roundtrip::<pb::PipeEntry>),
    typed("criu.pipe_data_entry", roundtrip::<pb::PipeDataEntry>),
    typed("criu.fifo_entry", roundtrip::<pb::FifoEntry>),
    typed("criu.ghost_file_entry", roundtrip::<pb::GhostFileEntry>),
    typed("criu.ghost_chunk_entry", roundtrip::<pb::GhostChunkEntry>),
    typed(
        "criu.remap_file_path_entry",
        roundtrip::<pb::RemapFilePathEntry>,
    ),
    typed("criu.memfd_inode_entry", roundtrip::<pb::MemfdInodeEntry>),
    typed("criu.eventfd_file_entry", roundtrip::<pb::EventfdFileEntry>),
    typed(
        "criu.eventpoll_file_entry",
        roundtrip::<pb::EventpollFileEntry>,
    ),
    typed("criu.signalfd_entry", roundtrip::<pb::SignalfdEntry>),
    typed("criu.timerfd_entry", roundtrip::<pb::TimerfdEntry>),
    typed("criu.inotify_file_entry", roundtrip::<pb::InotifyFileEntry>),
    typed(
        "criu.fanotify_file_entry",
        roundtrip::<pb::FanotifyFileEntry>,
    ),
    typed("criu.tty_file_entry", roundtrip::<pb::TtyFileEntry>),
    typed("criu.tty_info_entry", roundtrip::<pb::TtyInfoEntry>),
    typed("criu.ext_file_entry", roundtrip::<pb::ExtFileEntry>),
    typed("criu.file_lock_entry", roundtrip::<pb::FileLockEntry>),
];

/// Sockets.
pub static SOCKETS: &[Member] = &[
    typed("criu.unix_sk_entry", roundtrip::<pb::UnixSkEntry>),
    typed("criu.inet_sk_entry", roundtrip::<pb::InetSkEntry>),
    typed("criu.packet_sock_entry", roundtrip::<pb::PacketSockEntry>),
    typed("criu.netlink_sk_entry", roundtrip::<pb::NetlinkSkEntry>),
    typed("criu.sk_packet_entry", roundtrip::<pb::SkPacketEntry>),
    typed("criu.tcp_stream_entry", roundtrip::<pb::TcpStreamEntry>),
];

/// Message family target: first byte selects the member, the rest is its encoded message.
pub fn messages(family: &[Member], data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let m = &family[usize::from(sel) % family.len()];
    if let Some(f) = m.typed {
        f(body);
    }
    reflect_roundtrip(m.name, body);
}

/// Every message of the descriptor pool, reflectively: two selector bytes (LE) pick it.
pub fn all_messages(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let pool = crate::schema::pool();
    let n = pool.all_messages().len();
    if n == 0 {
        return;
    }
    let sel = usize::from(u16::from_le_bytes([data[0], data[1]])) % n;
    if let Some(desc) = pool.all_messages().nth(sel) {
        reflect_roundtrip(desc.full_name(), &data[2..]);
    }
}

/// Pagemap target: the bytes are the body of a pagemap image (entries, no magic).
pub fn pagemap(data: &[u8]) {
    let Ok(img) = Image::parse_body(ImageKind::Pagemap, data) else {
        return;
    };
    let Ok(pm) = Pagemap::from_image(&img) else {
        return;
    };
    let total = pm.present_pages() * PAGE_SIZE;
    let mut probes = Vec::new();
    for r in &pm.runs {
        assert!(r.vaddr % PAGE_SIZE == 0);
        if r.is_present() {
            assert!(
                r.offset + r.nr_pages * PAGE_SIZE <= total,
                "run outside the pages"
            );
        }
        probes.extend([
            r.vaddr,
            r.end().wrapping_sub(1),
            r.end(),
            r.vaddr.wrapping_sub(1),
        ]);
    }
    for a in probes {
        let fast = pm.find(a);
        let slow = pm.runs.iter().find(|r| r.contains(a));
        if let Some(r) = fast {
            assert!(
                r.contains(a),
                "find returned a run not containing the address"
            );
        }
        // Overlapping runs (hostile) may make both pick different ones; both must contain a.
        assert_eq!(
            fast.is_some(),
            slow.is_some(),
            "binary and linear lookups disagree"
        );
    }
    let again = Pagemap::new(
        pm.pages_id,
        pm.runs.iter().map(|r| (r.vaddr, r.nr_pages, r.flags)),
    );
    assert_eq!(again, pm);
    let back = Pagemap::from_image(&pm.to_image()).expect("written pagemap reads back");
    assert_eq!(back, pm);
}

/// JSON target: the bytes as an image decoded to crit JSON (plain and pretty), printed,
/// re-parsed, encoded back and decoded again (a fixed point); and, when they are UTF-8, as
/// JSON text to encode (must not panic).
pub fn json(data: &[u8]) {
    use crate::json;
    let Ok(codec) = json::Codec::criu() else {
        return;
    };
    for pretty in [false, true] {
        let Ok(doc) = json::decode_image(codec, data, pretty) else {
            continue;
        };
        let text = json::to_text(&doc, pretty);
        let parsed = json::parse_text(&text).expect("our own JSON text parses");
        assert_eq!(
            parsed, doc,
            "JSON text does not read back to the same document"
        );
        // The streamed text is the document's text.
        let streamed = json::decode_to_text(codec, data, pretty, &mut |_, _| {})
            .expect("what decodes whole decodes streamed");
        assert_eq!(streamed, text, "streamed decode differs");
        let bytes = match json::encode_image(codec, &doc) {
            Ok(b) => b,
            // crit decodes a message missing a required field but refuses to encode it.
            Err(e) if e.to_string().contains("required field") => {
                assert!(json::encode_text(codec, &text).is_err());
                continue;
            }
            Err(e) => panic!("a decoded document does not encode: {e}"),
        };
        let streamed = json::encode_text(codec, &text).expect("streamed encode");
        assert_eq!(streamed, bytes, "streamed encode differs");
        let again = json::decode_image(codec, &bytes, pretty).expect("re-encoded image decodes");
        assert_eq!(again, doc, "decode(encode(doc)) != doc");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(doc) = json::parse_text(text) {
            let whole = json::encode_image(codec, &doc);
            let streamed = json::encode_text(codec, text);
            if let (Ok(a), Ok(b)) = (&whole, &streamed) {
                assert_eq!(a, b, "streamed encode differs");
            }
        }
    }
}

/// Seeds for every target from an image directory's files: `(target, bytes)`.
pub fn seeds_from_dir(dir: &std::path::Path) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (kind, bytes) in synthetic_images() {
        let mut body = vec![kind as u8];
        body.extend_from_slice(&bytes[head_bytes(kind).len()..]);
        out.push(("framing", body));
        out.push(("framing", bytes.clone()));
        out.push(("json", bytes));
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    for path in files {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(kind) = ImageKind::from_file_name(name) else {
            continue;
        };
        if kind.is_raw() {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(img) = Image::parse(&bytes) else {
            continue;
        };
        let head = head_bytes(kind).len();
        out.push(("framing", bytes.clone()));
        out.push(("json", bytes.clone()));
        let mut json_text = path.clone().into_os_string();
        json_text.push(".json");
        if let Ok(text) = std::fs::read(&json_text) {
            if text.len() <= 64 * 1024 {
                out.push(("json", text));
            }
        }
        let mut body = vec![kind as u8];
        body.extend_from_slice(&bytes[head..]);
        out.push(("framing", body));
        if kind == ImageKind::Pagemap {
            out.push(("pagemap", bytes[head..].to_vec()));
        }
        let pool = crate::schema::pool();
        for (i, e) in img.entries.iter().enumerate() {
            let Some(msg) = kind.info().message_for(i) else {
                continue;
            };
            for (target, fam) in [
                ("core", CORE),
                ("mm", MM),
                ("files", FILES),
                ("sockets", SOCKETS),
            ] {
                if let Some(pos) = fam.iter().position(|m| m.name == msg) {
                    let mut s = vec![pos as u8];
                    s.extend_from_slice(&e.bytes);
                    out.push((target, s));
                }
            }
            if let Some(pos) = pool.all_messages().position(|d| d.full_name() == msg) {
                let mut s = (pos as u16).to_le_bytes().to_vec();
                s.extend_from_slice(&e.bytes);
                out.push(("all", s));
            }
        }
    }
    out
}

/// Synthetic images of the kinds with extra payloads the fixtures lack (IPC, sockets, BPF,
/// FIFO, ghost file without chunks): seeds for `framing` and `json`.
pub fn synthetic_images() -> Vec<(ImageKind, Vec<u8>)> {
    use crate::payload::{ipc_msg_extra, ipc_sem_extra, ipc_shm_extra};
    // ipc_desc_entry with its seven required fields (key, uid, gid, cuid, cgid, mode, id).
    let desc: &[u8] = &[
        0x0a, 0x0e, 0x08, 0x00, 0x10, 0x00, 0x18, 0x00, 0x20, 0x00, 0x28, 0x00, 0x30, 0x00, 0x38,
        0x00,
    ];
    let cat = |parts: &[&[u8]]| parts.concat();
    let one = |kind: ImageKind, entry: Vec<u8>, extra: Vec<u8>| {
        let mut img = Image::new(kind);
        img.entries.push(crate::framing::Entry {
            bytes: entry,
            extra: Some(extra),
        });
        (kind, img.to_bytes())
    };
    let msg1: &[u8] = &[0x08, 0x01, 0x10, 0x03];
    let msg2: &[u8] = &[0x08, 0x02, 0x10, 0x09];
    vec![
        one(
            ImageKind::IpcnsSem,
            cat(&[desc, &[0x10, 0x03]]),
            ipc_sem_extra(&[1, 2, 3]),
        ),
        one(
            ImageKind::IpcnsShm,
            cat(&[desc, &[0x10, 0x05]]),
            ipc_shm_extra(b"hello"),
        ),
        one(
            ImageKind::IpcnsMsg,
            cat(&[desc, &[0x10, 0x0c, 0x18, 0x02]]),
            ipc_msg_extra(&[(msg1, b"abc"), (msg2, b"defghijkl")]),
        ),
        one(
            ImageKind::TcpStream,
            vec![
                0x08, 0x03, 0x10, 0x07, 0x18, 0x02, 0x20, 0x09, 0x28, 0x00, 0x30, 0x07, 0x38, 0x80,
                0x0b,
            ],
            b"inqOQ".to_vec(),
        ),
        one(
            ImageKind::SkQueues,
            vec![0x08, 0x01, 0x10, 0x04],
            b"pkt!".to_vec(),
        ),
        one(
            ImageKind::BpfmapData,
            vec![0x08, 0x01, 0x10, 0x02, 0x18, 0x03, 0x20, 0x01],
            b"kkvvv".to_vec(),
        ),
        one(
            ImageKind::FifoData,
            vec![0x08, 0x05, 0x10, 0x03, 0x18, 0x80, 0x80, 0x04],
            b"xyz".to_vec(),
        ),
        one(
            ImageKind::GhostFile,
            vec![0x08, 0x00, 0x10, 0x00, 0x18, 0xa4, 0x83, 0x02],
            b"ghost content".to_vec(),
        ),
    ]
}

/// Runs target `name` on `data` (names as in `fuzz/fuzz_targets/`).
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "framing" => framing(data),
        "core" => messages(CORE, data),
        "mm" => messages(MM, data),
        "files" => messages(FILES, data),
        "sockets" => messages(SOCKETS, data),
        "all" => all_messages(data),
        "pagemap" => pagemap(data),
        "json" => json(data),
        _ => return false,
    }
    true
}

/// Names of every target.
pub const TARGETS: &[&str] = &[
    "framing", "core", "mm", "files", "sockets", "all", "pagemap",
];
