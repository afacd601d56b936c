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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
};
use serde_json::Value;
use stasis_images::pb;

const HEAD_MAGIC: u32 = 0x5456_4319;
const FILES_MAGIC: u32 = 0x5630_3138;
const FDINFO_MAGIC: u32 = 0x5621_3732;
const REMAP_FPATH_MAGIC: u32 = 0x5913_3954;
const GHOST_FILE_MAGIC: u32 = 0x5258_3605;
const PIPES_DATA_MAGIC: u32 = 0x5645_3709;
const MEMFD_INODE_MAGIC: u32 = 0x4845_3499;

/// Where the fixtures live: `$STASIS_FIXTURES`, else `shared/fixtures` next to the repo.
fn fixtures_root() -> PathBuf {
    let dir = match std::env::var_os("STASIS_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    };
    assert!(
        dir.join("criu-4.2").is_dir(),
        "fixtures not found at {} (set STASIS_FIXTURES)",
        dir.display()
    );
    dir
}

/// All fixture images whose file name satisfies `pick`, sorted.
fn fixture_images(pick: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let root = fixtures_root().join("criu-4.2");
    let mut out = Vec::new();
    for set in std::fs::read_dir(&root).expect("read fixture root") {
        let set = set.expect("dir entry").path();
        if !set.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&set).expect("read image dir") {
            let p = f.expect("dir entry").path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".img") && pick(name) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Minimal reader of the image framing (test-local; the crate's framing module is separate).
struct Frames<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Frames<'a> {
    fn open(path: &'a Path, buf: &'a [u8], magic: u32) -> Self {
        let mut f = Frames { path, buf, pos: 0 };
        assert_eq!(f.u32(), HEAD_MAGIC, "{}: head magic", path.display());
        assert_eq!(f.u32(), magic, "{}: image magic", path.display());
        f
    }

    fn u32(&mut self) -> u32 {
        let b = self.take(4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.unwrap_or_else(|| {
            panic!(
                "{}: truncated at offset {} (want {n} bytes)",
                self.path.display(),
                self.pos
            )
        });
        let s = &self.buf[self.pos..end];
        self.pos = end;
        s
    }

    /// The next entry's protobuf bytes, or None at the end of the image.
    fn entry(&mut self) -> Option<&'a [u8]> {
        if self.pos == self.buf.len() {
            return None;
        }
        let len = self.u32() as usize;
        Some(self.take(len))
    }
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

/// Round-trips every entry of a plain image (no payloads) and cross-checks it with the JSON.
fn check_plain_image<M: Message + Default>(path: &Path, magic: u32, msg_name: &str) -> usize {
    let buf = std::fs::read(path).expect("read image");
    let mut frames = Frames::open(path, &buf, magic);
    let json = crit_json(path);
    let entries = json["entries"].as_array().expect("entries array");
    let pool = pool();
    let desc = message_desc(&pool, msg_name);
    let mut n = 0;
    while let Some(bytes) = frames.entry() {
        roundtrip::<M>(path, n, bytes);
        let dynm = DynamicMessage::decode(desc.clone(), bytes).expect("dynamic decode");
        let j = entries
            .get(n)
            .unwrap_or_else(|| panic!("{}: entry {n} in json", path.display()));
        check_json(&pool, &dynm, j, &format!("{}[{n}]", path.display()));
        n += 1;
    }
    assert_eq!(n, entries.len(), "{}: entry count vs crit", path.display());
    n
}

#[test]
fn files_img_roundtrips_and_matches_crit() {
    let imgs = fixture_images(|n| n == "files.img");
    assert_eq!(imgs.len(), 6, "one files.img per fixture");
    let mut kinds = BTreeSet::new();
    for p in &imgs {
        check_plain_image::<pb::FileEntry>(p, FILES_MAGIC, "file_entry");
        let buf = std::fs::read(p).expect("read image");
        let mut frames = Frames::open(p, &buf, FILES_MAGIC);
        while let Some(bytes) = frames.entry() {
            let e = pb::FileEntry::decode(bytes).expect("decode");
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
    let p = fixtures_root().join("criu-4.2/fx-files/files.img");
    let buf = std::fs::read(&p).expect("read image");
    let mut frames = Frames::open(&p, &buf, FILES_MAGIC);
    let mut all = Vec::new();
    while let Some(bytes) = frames.entry() {
        all.push(pb::FileEntry::decode(bytes).expect("decode"));
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
        let n = check_plain_image::<pb::FdinfoEntry>(p, FDINFO_MAGIC, "fdinfo_entry");
        assert!(n >= 3, "{}: at least stdin/stdout/stderr", p.display());
    }
}

#[test]
fn remap_fpath_roundtrips_and_matches_crit() {
    let imgs = fixture_images(|n| n == "remap-fpath.img");
    assert_eq!(imgs.len(), 1);
    check_plain_image::<pb::RemapFilePathEntry>(
        &imgs[0],
        REMAP_FPATH_MAGIC,
        "remap_file_path_entry",
    );
    let buf = std::fs::read(&imgs[0]).expect("read image");
    let mut frames = Frames::open(&imgs[0], &buf, REMAP_FPATH_MAGIC);
    let e = pb::RemapFilePathEntry::decode(frames.entry().expect("one entry")).expect("decode");
    assert_eq!(e.remap_type(), pb::RemapType::Ghost);
}

#[test]
fn memfd_inode_roundtrips_and_matches_crit() {
    let imgs = fixture_images(|n| n == "memfd.img");
    assert_eq!(imgs.len(), 2);
    for p in &imgs {
        check_plain_image::<pb::MemfdInodeEntry>(p, MEMFD_INODE_MAGIC, "memfd_inode_entry");
        let buf = std::fs::read(p).expect("read image");
        let mut frames = Frames::open(p, &buf, MEMFD_INODE_MAGIC);
        let e = pb::MemfdInodeEntry::decode(frames.entry().expect("entry")).expect("decode");
        assert_eq!(e.mode, Some(0o100777), "{}: mode (field 9)", p.display());
    }
}

#[test]
fn pipes_data_roundtrips_with_payload() {
    let imgs = fixture_images(|n| n == "pipes-data.img");
    assert_eq!(imgs.len(), 1);
    let p = &imgs[0];
    let buf = std::fs::read(p).expect("read image");
    let json = crit_json(p);
    let entries = json["entries"].as_array().expect("entries");
    let pool = pool();
    let desc = message_desc(&pool, "pipe_data_entry");
    let mut frames = Frames::open(p, &buf, PIPES_DATA_MAGIC);
    let mut n = 0;
    while let Some(bytes) = frames.entry() {
        let e: pb::PipeDataEntry = roundtrip(p, n, bytes);
        let data = frames.take(e.bytes as usize);
        let dynm = DynamicMessage::decode(desc.clone(), bytes).expect("dynamic decode");
        check_json(&pool, &dynm, &entries[n], &format!("{}[{n}]", p.display()));
        let extra = entries[n]["extra"].as_str().expect("extra payload");
        assert_eq!(
            base64_decode(extra),
            data,
            "{}: entry {n}: payload",
            p.display()
        );
        n += 1;
    }
    assert_eq!(n, entries.len());
    assert_eq!(n, 1, "fx-files has one pipe with data");
}

#[test]
fn ghost_file_roundtrips_with_chunks() {
    let imgs = fixture_images(|n| n.starts_with("ghost-file-"));
    assert_eq!(imgs.len(), 1);
    let p = &imgs[0];
    let buf = std::fs::read(p).expect("read image");
    let json = crit_json(p);
    let entries = json["entries"].as_array().expect("entries");
    let pool = pool();
    let mut frames = Frames::open(p, &buf, GHOST_FILE_MAGIC);

    let head_bytes = frames.entry().expect("ghost_file_entry");
    let head: pb::GhostFileEntry = roundtrip(p, 0, head_bytes);
    let dynm = DynamicMessage::decode(message_desc(&pool, "ghost_file_entry"), head_bytes)
        .expect("dynamic decode");
    check_json(&pool, &dynm, &entries[0], &format!("{}[0]", p.display()));
    assert_eq!(
        head.chunks,
        Some(true),
        "CRIU 4.2 writes chunked ghost files"
    );
    assert_eq!(head.size, Some(20000));

    let chunk_desc = message_desc(&pool, "ghost_chunk_entry");
    let mut n = 1;
    let mut total = 0u64;
    while let Some(bytes) = frames.entry() {
        let c: pb::GhostChunkEntry = roundtrip(p, n, bytes);
        let data = frames.take(usize::try_from(c.len).expect("chunk length fits"));
        let dynm = DynamicMessage::decode(chunk_desc.clone(), bytes).expect("dynamic decode");
        check_json(&pool, &dynm, &entries[n], &format!("{}[{n}]", p.display()));
        let extra = entries[n]["extra"].as_str().expect("extra payload");
        assert_eq!(
            base64_decode(extra),
            data,
            "{}: chunk {n}: payload",
            p.display()
        );
        total += c.len;
        n += 1;
    }
    assert_eq!(n, entries.len());
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
