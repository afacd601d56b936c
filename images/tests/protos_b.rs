//! Wire-format checks of the file, socket and fd-kind messages against real CRIU 4.2 images.
//!
//! For every fixture image of these kinds, each entry is decoded with its prost struct and
//! encoded again: the bytes must be identical, which pins field numbers, wire types, labels
//! and packing (prost drops unknown fields, so a missing field also shows up here). The
//! crit 4.2 JSON next to each image is then used to check field names, enum value names
//! and which fields carry a crit display option.
//!
//! ```text
//!  image: head magic u32 | image magic u32 | { len u32 | entry | [raw payload] }*
//!  payload after an entry: pipes-data -> `bytes` bytes; ghost-file chunks -> `len` bytes
//! ```

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::fixtures;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
};
use serde_json::Value;
use stasis_images::framing::Image;
use stasis_images::magic::ImageKind;
use stasis_images::pb;

/// All fixture images whose file name satisfies `pick`, sorted.
fn fixture_images(pick: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    common::fixture_files(|n| n.ends_with(".img") && pick(n))
}

/// Reads an image with the crate's framing module; the whole file must be rebuilt
/// byte-identically from the parsed entries and extras.
fn read_image(path: &Path, kind: ImageKind) -> Image {
    let img = Image::read_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(img.kind, kind, "{}: image kind", path.display());
    let raw = std::fs::read(path).expect("read image");
    assert_eq!(
        img.to_bytes(),
        raw,
        "{}: framing round-trip",
        path.display()
    );
    img
}

/// Decodes one entry as `M`, re-encodes it and requires identical bytes.
fn roundtrip<M: Message + Default>(path: &Path, idx: usize, bytes: &[u8]) -> M {
    let m =
        M::decode(bytes).unwrap_or_else(|e| panic!("{}: entry {idx}: decode: {e}", path.display()));
    let again = m.encode_to_vec();
    assert_eq!(
        again,
        bytes,
        "{}: entry {idx}: re-encoding differs ({} vs {} bytes)",
        path.display(),
        again.len(),
        bytes.len()
    );
    m
}

/// The crit JSON decode stored next to an image (`FILE.img.json`).
fn crit_json(path: &Path) -> Value {
    let mut p = path.as_os_str().to_owned();
    p.push(".json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", PathBuf::from(&p).display()));
    serde_json::from_str(&text).expect("crit json parses")
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(stasis_images::DESCRIPTOR_SET).expect("descriptor set decodes")
}

fn message_desc(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(&format!("criu.{name}"))
        .unwrap_or_else(|| panic!("message criu.{name} is defined"))
}

/// Names of our crit display options set on a field.
fn display_options(pool: &DescriptorPool, f: &FieldDescriptor) -> BTreeSet<&'static str> {
    let opts = f.options();
    let mut set = BTreeSet::new();
    for name in ["hex", "ipadd", "flags", "dev", "odev", "dict", "conv"] {
        let ext = pool
            .get_extension_by_name(&format!("criu.{name}"))
            .unwrap_or_else(|| panic!("extension criu.{name} exists"));
        if opts.has_extension(&ext) {
            set.insert(name);
        }
    }
    set
}

/// Checks one decoded entry against crit's JSON object for it: the same set of present
/// fields under the same names, enum values by name, and display options where crit
/// printed an integer as text.
fn check_json(pool: &DescriptorPool, msg: &DynamicMessage, json: &Value, at: &str) {
    let obj = json
        .as_object()
        .unwrap_or_else(|| panic!("{at}: json entry is an object"));
    let desc = msg.descriptor();
    let present: BTreeSet<String> = desc
        .fields()
        .filter(|f| msg.has_field(f))
        .map(|f| f.name().to_string())
        .collect();
    let keys: BTreeSet<String> = obj.keys().filter(|k| *k != "extra").cloned().collect();
    assert_eq!(
        present,
        keys,
        "{at}: fields of {} vs crit keys",
        desc.full_name()
    );

    for f in desc.fields().filter(|f| msg.has_field(f)) {
        let at = format!("{at}.{}", f.name());
        let jv = &obj[f.name()];
        let value = msg.get_field(&f);
        let opts = display_options(pool, &f);
        let items: Vec<(prost_reflect::Value, &Value)> = if f.is_list() {
            let list = value.as_list().expect("list value");
            let jl = jv.as_array().unwrap_or_else(|| panic!("{at}: json array"));
            assert_eq!(list.len(), jl.len(), "{at}: element count");
            list.iter().cloned().zip(jl.iter()).collect()
        } else {
            vec![(value.into_owned(), jv)]
        };
        for (v, j) in items {
            match f.kind() {
                Kind::Message(_) => {
                    check_json(pool, v.as_message().expect("message value"), j, &at)
                }
                Kind::Enum(e) => {
                    let n = v.as_enum_number().expect("enum value");
                    let name = e.get_value(n).map(|v| v.name().to_string());
                    assert_eq!(j.as_str(), name.as_deref(), "{at}: enum value name");
                }
                Kind::Bytes => {}
                Kind::String => assert!(j.is_string(), "{at}: string"),
                Kind::Bool => assert!(j.is_boolean(), "{at}: bool"),
                _ if j.is_string() => {
                    // crit printed a number as text: only our display options do that
                    assert!(
                        !opts.is_empty(),
                        "{at}: crit shows text {j} but no option set"
                    );
                    if opts.contains("hex") {
                        let s = j.as_str().unwrap_or_default();
                        assert!(s.starts_with("0x"), "{at}: hex text {s}");
                    }
                }
                _ => {
                    assert!(j.is_number(), "{at}: number, got {j}");
                    let mask = ["hex", "flags", "dev", "ipadd", "dict"];
                    assert!(
                        !mask.iter().any(|o| opts.contains(o)),
                        "{at}: option {opts:?} set but crit shows a plain number"
                    );
                }
            }
        }
    }
}

/// Round-trips every entry of an image and cross-checks it with crit's JSON: entry `i` is
/// decoded as `M` (as `First` for entry 0), and an extra payload must equal crit's `extra`.
/// Returns the parsed image.
fn check_image<First, M>(path: &Path, kind: ImageKind) -> Image
where
    First: Message + Default,
    M: Message + Default,
{
    let img = read_image(path, kind);
    let json = crit_json(path);
    assert_eq!(
        json["magic"].as_str(),
        Some(kind.name()),
        "{}: crit magic",
        path.display()
    );
    let entries = json["entries"].as_array().expect("entries array");
    assert_eq!(
        img.entries.len(),
        entries.len(),
        "{}: entry count vs crit",
        path.display()
    );
    let pool = pool();
    let info = kind.info();
    for (i, (e, j)) in img.entries.iter().zip(entries).enumerate() {
        if i == 0 {
            roundtrip::<First>(path, i, &e.bytes);
        } else {
            roundtrip::<M>(path, i, &e.bytes);
        }
        let name = info.message_for(i).expect("kind has messages");
        let desc = message_desc(&pool, name.trim_start_matches("criu."));
        let dynm = DynamicMessage::decode(desc, e.bytes.as_slice()).expect("dynamic decode");
        let at = format!("{}[{i}]", path.display());
        check_json(&pool, &dynm, j, &at);
        match (&e.extra, j.get("extra")) {
            (None, None) => {}
            (Some(x), Some(t)) => {
                let t = t.as_str().unwrap_or_else(|| panic!("{at}: extra is text"));
                assert_eq!(&base64_decode(t), x, "{at}: extra payload");
            }
            (x, t) => panic!(
                "{at}: extra payload {} but crit extra {}",
                x.is_some(),
                t.is_some()
            ),
        }
    }
    img
}

#[test]
fn files_img_roundtrips_and_matches_crit() {
    let imgs = fixture_images(|n| n == "files.img");
    assert_eq!(imgs.len(), 6, "one files.img per fixture");
    let mut kinds = BTreeSet::new();
    for p in &imgs {
        let img = check_image::<pb::FileEntry, pb::FileEntry>(p, ImageKind::Files);
        for e in img.decode::<pb::FileEntry>().expect("decode") {
            kinds.insert(e.r#type().as_str_name());
        }
    }
    // the fixtures exercise regular files, pipes and memfds
    for k in ["REG", "PIPE", "MEMFD"] {
        assert!(
            kinds.contains(k),
            "some files.img has a {k} entry: {kinds:?}"
        );
    }
}

#[test]
fn fx_files_files_img_fields() {
    let p = fixtures().join("criu-4.2/fx-files/files.img");
    let all = read_image(&p, ImageKind::Files)
        .decode::<pb::FileEntry>()
        .expect("decode");
    for e in &all {
        let set = [e.reg.is_some(), e.pipe.is_some(), e.memfd.is_some()];
        assert_eq!(
            set.iter().filter(|s| **s).count(),
            1,
            "one member per file_entry"
        );
    }
    let ro = all
        .iter()
        .filter_map(|e| e.reg.as_ref())
        .find(|r| r.name.ends_with("/ro.dat"))
        .expect("ro.dat entry");
    assert_eq!(ro.pos, 12345);
    assert_eq!(ro.size, Some(65536));
    assert_eq!(ro.mnt_id(), -1, "absent mnt_id reads as the proto default");
    let exe = all
        .iter()
        .find_map(|e| e.reg.as_ref().filter(|r| !r.build_id.is_empty()));
    assert_eq!(exe.expect("an entry with a build-id").build_id.len(), 5);
    let pipes: Vec<_> = all.iter().filter_map(|e| e.pipe.as_ref()).collect();
    assert_eq!(pipes.len(), 2);
    assert_eq!(
        pipes[0].pipe_id, pipes[1].pipe_id,
        "both ends share pipe_id"
    );
    let memfd = all
        .iter()
        .find_map(|e| e.memfd.as_ref().filter(|m| m.pos == 4321));
    assert_eq!(memfd.expect("memfd at 4321").inode_id, 1);
}

#[test]
fn fdinfo_imgs_roundtrip_and_match_crit() {
    let imgs = fixture_images(|n| n.starts_with("fdinfo-"));
    assert!(imgs.len() >= 10, "fdinfo images found: {}", imgs.len());
    for p in &imgs {
        let img = check_image::<pb::FdinfoEntry, pb::FdinfoEntry>(p, ImageKind::Fdinfo);
        assert!(img.entries.len() >= 3, "{}: at least fds 0-2", p.display());
    }
}

#[test]
fn remap_fpath_roundtrips_and_matches_crit() {
    let imgs = fixture_images(|n| n == "remap-fpath.img");
    assert_eq!(imgs.len(), 1);
    let img = check_image::<pb::RemapFilePathEntry, pb::RemapFilePathEntry>(
        &imgs[0],
        ImageKind::RemapFpath,
    );
    let e: pb::RemapFilePathEntry = img.single().expect("one entry");
    assert_eq!(e.remap_type(), pb::RemapType::Ghost);
}

#[test]
fn memfd_inode_roundtrips_and_matches_crit() {
    let imgs = fixture_images(|n| n == "memfd.img");
    assert_eq!(imgs.len(), 2);
    for p in &imgs {
        let img = check_image::<pb::MemfdInodeEntry, pb::MemfdInodeEntry>(p, ImageKind::MemfdInode);
        let e: pb::MemfdInodeEntry = img.single().expect("one entry");
        assert_eq!(e.mode, Some(0o100777), "{}: mode (field 9)", p.display());
    }
}

#[test]
fn pipes_data_roundtrips_with_payload() {
    let imgs = fixture_images(|n| n == "pipes-data.img");
    assert_eq!(imgs.len(), 1);
    let img = check_image::<pb::PipeDataEntry, pb::PipeDataEntry>(&imgs[0], ImageKind::PipesData);
    assert_eq!(img.entries.len(), 1, "fx-files has one pipe with data");
    let e: pb::PipeDataEntry = img.single().expect("one entry");
    assert_eq!(e.bytes, 3000);
    assert_eq!(img.entries[0].extra.as_ref().map(Vec::len), Some(3000));
}

#[test]
fn ghost_file_roundtrips_with_chunks() {
    let imgs = fixture_images(|n| n.starts_with("ghost-file-"));
    assert_eq!(imgs.len(), 1);
    let img =
        check_image::<pb::GhostFileEntry, pb::GhostChunkEntry>(&imgs[0], ImageKind::GhostFile);
    let head: pb::GhostFileEntry = img.decode_entry(0).expect("ghost_file_entry");
    assert_eq!(
        head.chunks,
        Some(true),
        "CRIU 4.2 writes chunked ghost files"
    );
    assert_eq!(head.size, Some(20000));
    let mut total = 0;
    for i in 1..img.entries.len() {
        let c: pb::GhostChunkEntry = img.decode_entry(i).expect("ghost_chunk_entry");
        let extra = img.entries[i].extra.as_ref().expect("chunk data");
        assert_eq!(extra.len() as u64, c.len, "chunk {i}: data length");
        total += c.len;
    }
    assert_eq!(total, 20000, "chunks cover the whole file");
}

/// Every message crit needs for a file-like image is defined, under CRIU's name.
#[test]
fn file_image_messages_are_defined() {
    let pool = pool();
    let names = [
        "file_entry",
        "fdinfo_entry",
        "reg_file_entry",
        "remap_file_path_entry",
        "ghost_file_entry",
        "ghost_chunk_entry",
        "pipe_entry",
        "pipe_data_entry",
        "fifo_entry",
        "unix_sk_entry",
        "inet_sk_entry",
        "netlink_sk_entry",
        "packet_sock_entry",
        "sk_packet_entry",
        "tcp_stream_entry",
        "eventfd_file_entry",
        "eventpoll_file_entry",
        "eventpoll_tfd_entry",
        "signalfd_entry",
        "timerfd_entry",
        "inotify_file_entry",
        "inotify_wd_entry",
        "fanotify_file_entry",
        "fanotify_mark_entry",
        "memfd_file_entry",
        "memfd_inode_entry",
        "tunfile_entry",
        "bpfmap_file_entry",
        "ext_file_entry",
        "file_lock_entry",
        "ns_file_entry",
        "irmap_cache_entry",
        "pidfd_entry",
        "tty_file_entry",
    ];
    for n in names {
        message_desc(&pool, n);
    }
    // and every file-like image kind of the crate's kind table finds its message(s)
    let kinds = [
        ImageKind::Files,
        ImageKind::Fdinfo,
        ImageKind::RegFiles,
        ImageKind::RemapFpath,
        ImageKind::GhostFile,
        ImageKind::Pipes,
        ImageKind::PipesData,
        ImageKind::Fifo,
        ImageKind::FifoData,
        ImageKind::Unixsk,
        ImageKind::Inetsk,
        ImageKind::NetlinkSk,
        ImageKind::Packetsk,
        ImageKind::SkQueues,
        ImageKind::TcpStream,
        ImageKind::EventfdFile,
        ImageKind::EventpollFile,
        ImageKind::EventpollTfd,
        ImageKind::Signalfd,
        ImageKind::Timerfd,
        ImageKind::InotifyFile,
        ImageKind::InotifyWd,
        ImageKind::FanotifyFile,
        ImageKind::FanotifyMark,
        ImageKind::MemfdInode,
        ImageKind::Tunfile,
        ImageKind::BpfmapFile,
        ImageKind::ExtFiles,
        ImageKind::FileLocks,
        ImageKind::NsFiles,
        ImageKind::IrmapCache,
        ImageKind::TtyFiles,
    ];
    for k in kinds {
        let info = k.info();
        for m in [info.message, info.first_message].into_iter().flatten() {
            assert!(
                pool.get_message_by_name(m).is_some(),
                "{}: message {m} is defined",
                k.name()
            );
        }
    }
    // file_entry has one member per fd kind, at CRIU's tag numbers
    let fe = message_desc(&pool, "file_entry");
    let expect = [
        ("reg", 3),
        ("isk", 4),
        ("nsf", 5),
        ("psk", 6),
        ("nlsk", 7),
        ("efd", 8),
        ("epfd", 9),
        ("sgfd", 10),
        ("tunf", 11),
        ("tfd", 12),
        ("ify", 13),
        ("ffy", 14),
        ("ext", 15),
        ("usk", 16),
        ("fifo", 17),
        ("pipe", 18),
        ("tty", 19),
        ("memfd", 20),
        ("bpf", 21),
        ("pidfd", 22),
    ];
    for (name, tag) in expect {
        let f = fe
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("file_entry.{name}"));
        assert_eq!(f.number(), tag, "file_entry.{name}");
    }
    assert_eq!(pb::FdTypes::Pidfd as i32, 20);
    assert_eq!(pb::FdTypes::AutofsPipe as i32, 65535);
}

/// crit's flag tables are looked up by name: the names must be CRIU's.
#[test]
fn flag_table_names_match_crit() {
    let pool = pool();
    let ext = pool
        .get_extension_by_name("criu.flags")
        .expect("criu.flags");
    let table = |msg: &str, field: &str| -> String {
        let f = message_desc(&pool, msg)
            .get_field_by_name(field)
            .expect("field");
        let v = f.options().get_extension(&ext).into_owned();
        v.as_str().unwrap_or_default().to_string()
    };
    assert_eq!(table("reg_file_entry", "flags"), "rfile.flags");
    assert_eq!(table("memfd_file_entry", "flags"), "rfile.flags");
    assert_eq!(table("bpfmap_file_entry", "flags"), "rfile.flags");
    assert_eq!(table("memfd_inode_entry", "seals"), "seals.flags");
    let conv = pool.get_extension_by_name("criu.conv").expect("criu.conv");
    let name = message_desc(&pool, "unix_sk_entry")
        .get_field_by_name("name")
        .expect("name");
    assert_eq!(
        name.options().get_extension(&conv).as_str(),
        Some("unix_name")
    );
}

/// Decodes crit's base64 text (standard alphabet, with line breaks).
fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .expect("valid base64")
}

/// Fields CRIU added after 3.17 (which the 3.17 cross-check cannot vouch for), at the
/// numbers and types CRIU 4.2 writes; none of them occurs in the fixtures except `mode`.
#[test]
fn criu_4x_additions_have_criu_numbers() {
    let pool = pool();
    let expect: &[(&str, &str, u32, &str)] = &[
        ("ip_opts_entry", "pktinfo", 5, "bool"),
        ("ip_opts_entry", "tos", 6, "uint32"),
        ("ip_opts_entry", "ttl", 7, "uint32"),
        ("inet_sk_entry", "tcp_opts", 20, "criu.tcp_opts_entry"),
        ("tcp_opts_entry", "cork", 1, "bool"),
        ("tcp_opts_entry", "nodelay", 2, "bool"),
        ("tcp_opts_entry", "keepcnt", 3, "uint32"),
        ("tcp_opts_entry", "keepidle", 4, "uint32"),
        ("tcp_opts_entry", "keepintvl", 5, "uint32"),
        ("memfd_inode_entry", "mode", 9, "uint32"),
        ("pidfd_entry", "id", 1, "uint32"),
        ("pidfd_entry", "ino", 2, "uint32"),
        ("pidfd_entry", "flags", 3, "uint32"),
        ("pidfd_entry", "nspid", 4, "int32"),
        ("pidfd_entry", "fown", 5, "criu.fown_entry"),
        ("file_entry", "pidfd", 22, "criu.pidfd_entry"),
    ];
    for &(msg, field, number, ty) in expect {
        let f = message_desc(&pool, msg)
            .get_field_by_name(field)
            .unwrap_or_else(|| panic!("{msg}.{field} is defined"));
        assert_eq!(f.number(), number, "{msg}.{field} number");
        let kind = match f.kind() {
            Kind::Message(m) => m.full_name().to_string(),
            Kind::Bool => "bool".into(),
            Kind::Uint32 => "uint32".into(),
            Kind::Int32 => "int32".into(),
            other => format!("{other:?}"),
        };
        assert_eq!(kind, ty, "{msg}.{field} type");
        assert!(!f.is_list(), "{msg}.{field} is not repeated");
    }
}
