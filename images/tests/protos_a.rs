//! Wire-format checks for the process-state and namespace messages (`proto/` files
//! inventory, pstree, core*, creds, sa, timer, rlimit, rseq, siginfo, mm, vma, pagemap,
//! fs, seccomp, timens, stats, cgroup, namespaces, ipc, mnt, netdev, tty, ...).
//!
//! Every entry of every fixture image written by CRIU 4.2 is decoded with our prost
//! struct and encoded again: the bytes must be identical. A wrong field number, wire
//! type, label or packing, or a field we lack (prost drops unknown fields), changes
//! the bytes. The field names are checked against crit 4.2's JSON of the same file,
//! and the message of every image kind of this half must exist in the descriptors.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{fixture_dirs, fixtures};
use prost::Message;
use prost_reflect::MessageDescriptor;
use stasis_images::framing::Image;
use stasis_images::magic::ImageKind;
use stasis_images::{pb, schema};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

macro_rules! bail {
    ($($t:tt)*) => { return Err(format!($($t)*).into()) };
}

macro_rules! ensure {
    ($c:expr, $($t:tt)*) => { if !$c { bail!($($t)*) } };
}

/// `anyhow::Context` in miniature (the images crate has no anyhow).
trait Context<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}").into())
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| format!("{what} missing").into())
    }
}

/// Fixture files named `prefix*.img` (or exactly `prefix`, for `stats-dump`).
fn images(prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for dir in fixture_dirs() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let name = p
                .file_name()
                .context("file name")?
                .to_string_lossy()
                .into_owned();
            if name == prefix || (name.starts_with(prefix) && name.ends_with(".img")) {
                out.push(p);
            }
        }
    }
    out.sort();
    ensure!(!out.is_empty(), "no fixture image named {prefix}*");
    Ok(out)
}

fn read(path: &Path, kind: ImageKind) -> Result<Image> {
    let img = Image::read_file(path).context(path.display())?;
    ensure!(
        img.kind == kind,
        "{}: kind {:?}, expected {kind:?}",
        path.display(),
        img.kind
    );
    Ok(img)
}

/// Decodes and re-encodes one entry; returns the decoded message.
fn round_trip<M: Message + Default>(path: &Path, idx: usize, bytes: &[u8]) -> Result<M> {
    let m = M::decode(bytes).context(format!("{} entry {idx}", path.display()))?;
    let again = m.encode_to_vec();
    ensure!(
        again == bytes,
        "{} entry {idx}: re-encoding differs ({} vs {} bytes)\n ours: {:02x?}\n file: {:02x?}",
        path.display(),
        again.len(),
        bytes.len(),
        again,
        bytes
    );
    Ok(m)
}

/// Round-trips every entry of every fixture `prefix*` image (all of kind `kind`, whose
/// entries are `M`), checks crit's JSON keys; returns the messages.
fn check_all<M: Message + Default>(prefix: &str, kind: ImageKind) -> Result<Vec<M>> {
    let mut out = Vec::new();
    for path in images(prefix)? {
        let img = read(&path, kind)?;
        for (i, e) in img.entries.iter().enumerate() {
            out.push(round_trip::<M>(&path, i, &e.bytes)?);
        }
        check_json_names(&path, kind)?;
    }
    ensure!(!out.is_empty(), "no entries in {prefix}* images");
    Ok(out)
}

/// Every key of crit's JSON for `img` must be a field name of the kind's message
/// (recursively through nested messages).
fn check_json_names(img: &Path, kind: ImageKind) -> Result<()> {
    let json_path = PathBuf::from(format!("{}.json", img.display()));
    let text = std::fs::read_to_string(&json_path).context(json_path.display())?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    ensure!(
        v["magic"] == kind.name(),
        "{}: magic {}",
        json_path.display(),
        v["magic"]
    );
    let entries = v["entries"].as_array().context("entries array")?;
    for (i, e) in entries.iter().enumerate() {
        let name = kind.info().message_for(i).context("message of kind")?;
        let d = schema::message(name).context(name)?;
        check_keys(&d, e, &format!("{}[{i}]", json_path.display()))?;
    }
    Ok(())
}

fn check_keys(d: &MessageDescriptor, v: &serde_json::Value, at: &str) -> Result<()> {
    let Some(obj) = v.as_object() else {
        return Ok(());
    };
    for (k, val) in obj {
        if k == "extra" {
            continue;
        }
        let Some(f) = d.get_field_by_name(k) else {
            bail!("{at}: crit key {k:?} is not a field of {}", d.full_name())
        };
        if let Some(sub) = f.kind().as_message() {
            match val {
                serde_json::Value::Array(items) => {
                    for (j, it) in items.iter().enumerate() {
                        check_keys(sub, it, &format!("{at}.{k}[{j}]"))?;
                    }
                }
                other => check_keys(sub, other, &format!("{at}.{k}"))?,
            }
        }
    }
    Ok(())
}

#[test]
fn inventory_round_trips() -> Result<()> {
    let invs = check_all::<pb::InventoryEntry>("inventory", ImageKind::Inventory)?;
    assert_eq!(invs.len(), 6, "one inventory entry per fixture");
    for inv in invs {
        assert_eq!(inv.img_version, 2, "images v1.1");
        assert_eq!(inv.fdinfo_per_id, Some(true));
        assert_eq!(inv.ns_per_id, Some(true));
        assert_eq!(inv.dump_criu_run_id.as_deref().map(str::len), Some(36));
        assert!(inv.plugins_entry.is_some());
        assert_eq!(inv.root_ids.context("root_ids")?.time_ns_id, Some(5));
    }
    Ok(())
}

#[test]
fn pstree_round_trips() -> Result<()> {
    check_all::<pb::PstreeEntry>("pstree", ImageKind::Pstree)?;
    let tree = read(
        &fixtures().join("criu-4.2/fx-tree/pstree.img"),
        ImageKind::Pstree,
    )?;
    let pids: BTreeSet<u32> = tree
        .decode::<pb::PstreeEntry>()?
        .iter()
        .map(|p| p.pid)
        .collect();
    assert_eq!(
        pids,
        BTreeSet::from([30400, 30402, 30403, 30404, 30405, 30406])
    );
    Ok(())
}

#[test]
fn core_round_trips() -> Result<()> {
    let cores = check_all::<pb::CoreEntry>("core-", ImageKind::Core)?;
    assert_eq!(cores.len(), 17 + 6 + 4, "every core image seen");
    let path = fixtures().join("criu-4.2/fx-signals/core-30500.img");
    let core: pb::CoreEntry = read(&path, ImageKind::Core)?.single()?;
    assert_eq!(core.mtype(), pb::core_entry::March::X8664);
    let ti = core.thread_info.as_ref().context("thread_info")?;
    assert_eq!(ti.gpregs.mode(), pb::UserX86RegsMode::Native);
    let xsave = ti.fpregs.xsave.as_ref().context("xsave")?;
    assert_eq!(xsave.hi16_zmm.len(), 128, "AVX-512 zmm16-31 present");
    let tc = core.tc.as_ref().context("tc")?;
    assert_eq!(tc.comm, "fx-signals");
    assert_eq!(tc.sigactions.len(), 62);
    assert_eq!(tc.timers.as_ref().context("timers")?.posix.len(), 1);
    let th = core.thread_core.as_ref().context("thread_core")?;
    assert_eq!(
        th.rseq_entry.as_ref().context("rseq")?.signature,
        0x5305_3053
    );
    assert_eq!(th.creds.as_ref().context("creds")?.cap_amb.len(), 2);
    assert_eq!(th.cg_set, Some(1));
    // The zombie's core holds only the task part: state TASK_DEAD, exit status 42.
    let zpath = fixtures().join("criu-4.2/fx-tree/core-30406.img");
    let z: pb::CoreEntry = read(&zpath, ImageKind::Core)?.single()?;
    let ztc = z.tc.context("zombie tc")?;
    assert_eq!((ztc.task_state, ztc.exit_code), (2, 42 << 8));
    Ok(())
}

#[test]
fn ids_round_trip() -> Result<()> {
    check_all::<pb::TaskKobjIdsEntry>("ids-", ImageKind::Ids)?;
    Ok(())
}

#[test]
fn mm_round_trips() -> Result<()> {
    let mms = check_all::<pb::MmEntry>("mm-", ImageKind::Mm)?;
    for mm in &mms {
        assert!(!mm.vmas.is_empty() && !mm.mm_saved_auxv.is_empty());
    }
    Ok(())
}

#[test]
fn pagemap_round_trips() -> Result<()> {
    // Both per-process and shmem pagemaps: a head, then entries.
    let mut pages = 0u64;
    for path in images("pagemap-")? {
        let img = read(&path, ImageKind::Pagemap)?;
        let first = img.entries.first().context("pagemap head")?;
        let head: pb::PagemapHead = round_trip(&path, 0, &first.bytes)?;
        let mut n = 0;
        for (i, e) in img.entries.iter().enumerate().skip(1) {
            let pe: pb::PagemapEntry = round_trip(&path, i, &e.bytes)?;
            assert_eq!(
                pe.compat_nr_pages, 0,
                "CRIU 4.2 writes the count in field 5"
            );
            n += pe.nr_pages.context("nr_pages")?;
        }
        // The README's invariant: the pages of one pagemap fill its pages-N.img.
        let pages_img = path.with_file_name(format!("pages-{}.img", head.pages_id));
        assert_eq!(
            std::fs::metadata(&pages_img)?.len(),
            n * 4096,
            "{}",
            path.display()
        );
        check_json_names(&path, ImageKind::Pagemap)?;
        pages += n;
    }
    assert!(pages > 6000);
    Ok(())
}

#[test]
fn fs_round_trips() -> Result<()> {
    let fss = check_all::<pb::FsEntry>("fs-", ImageKind::Fs)?;
    assert!(fss.iter().all(|f| f.umask == Some(0o22)));
    Ok(())
}

#[test]
fn seccomp_round_trips() -> Result<()> {
    check_all::<pb::SeccompEntry>("seccomp", ImageKind::Seccomp)?;
    Ok(())
}

#[test]
fn timens_round_trips() -> Result<()> {
    check_all::<pb::TimensEntry>("timens-", ImageKind::Timens)?;
    Ok(())
}

#[test]
fn stats_dump_round_trips() -> Result<()> {
    let st = check_all::<pb::StatsEntry>("stats-dump", ImageKind::Stats)?;
    assert!(st.iter().all(|s| s.dump.is_some() && s.restore.is_none()));
    Ok(())
}

/// Kinds whose messages this half defines: every one must resolve in the descriptors
/// (crit JSON and `Image::check_messages` look them up by name).
const OUR_KINDS: &[ImageKind] = &[
    ImageKind::Inventory,
    ImageKind::Pstree,
    ImageKind::Pagemap,
    ImageKind::Core,
    ImageKind::Ids,
    ImageKind::Vmas,
    ImageKind::Sigact,
    ImageKind::Itimers,
    ImageKind::PosixTimers,
    ImageKind::Utsns,
    ImageKind::Creds,
    ImageKind::IpcVar,
    ImageKind::IpcnsShm,
    ImageKind::IpcnsMsg,
    ImageKind::IpcnsSem,
    ImageKind::Fs,
    ImageKind::Mm,
    ImageKind::Mnts,
    ImageKind::Netdev,
    ImageKind::Netns,
    ImageKind::Rlimit,
    ImageKind::Signal,
    ImageKind::Cgroup,
    ImageKind::Cpuinfo,
    ImageKind::Userns,
    ImageKind::Seccomp,
    ImageKind::BinfmtMisc,
    ImageKind::Autofs,
    ImageKind::Timens,
    ImageKind::Pidns,
    ImageKind::BpfmapData,
    ImageKind::Apparmor,
    ImageKind::Stats,
];

#[test]
fn every_kind_of_this_half_has_its_messages() {
    for kind in OUR_KINDS {
        let info = kind.info();
        for name in [info.message, info.first_message].into_iter().flatten() {
            assert!(
                schema::message(name).is_some(),
                "{}: {name} not defined",
                info.name
            );
        }
    }
    // Messages carried inside others or by payload handlers rather than named by a kind.
    for name in [
        "criu.ipc_msg",
        "criu.tty_info_entry",
        "criu.tty_data_entry",
        "criu.cipher_entry",
        "criu.sysctl_entry",
        "criu.sit_entry",
        "criu.macvlan_link_entry",
    ] {
        assert!(schema::message(name).is_some(), "{name} not defined");
    }
}

// ---------------------------------------------------------------------------------------
// Cross-check against the descriptors of CRIU 3.17, as shipped compiled (protoc's Python
// output) in Debian's `criu` package. Every message and enum CRIU 3.17 had must exist
// here with the same fields: number, name, type, label, packing, default and crit
// options. Fields added since (4.x) are allowed; the few 4.x changes to 3.17 fields
// are listed in `CHANGED_SINCE_3_17`. This covers the messages no fixture exercises.

const PYCRIU: &str = "/usr/lib/python3/dist-packages/pycriu";

/// (message, field number): fields CRIU changed after 3.17.
const CHANGED_SINCE_3_17: &[(&str, u32)] = &[
    // renamed when the 64-bit nr_pages (field 5) replaced it
    ("pagemap_entry", 2),
    // gained `[default = -1]` when images_dir (68) was added
    ("criu_opts", 1),
];

/// 3.17 messages this project does not need (image streamer protocol) or that are
/// replaced by our own option extensions.
const NOT_NEEDED_FROM_3_17: &[&str] = &[
    "img_streamer_request_entry",
    "img_streamer_reply_entry",
    "CRIU_Opts",
];

/// The bytes of a Python bytes literal body (the text between `b'` and `'`).
fn unescape_py_bytes(s: &str) -> Result<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = *b.get(i + 1).context("escape at end")?;
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'\\' | b'\'' | b'"' => out.push(c),
            b'x' => {
                let h = s.get(i..i + 2).context("\\x escape")?;
                out.push(u8::from_str_radix(h, 16).context("\\x escape")?);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(u8::try_from(v).context("octal escape")?);
            }
            other => bail!("unknown escape \\{}", other as char),
        }
    }
    Ok(out)
}

/// Serialized FileDescriptorProto embedded in one `*_pb2.py`.
fn pb2_descriptor(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).context(path.display())?;
    let start = text
        .find("AddSerializedFile(b'")
        .context("serialized descriptor")?;
    let body = &text[start + "AddSerializedFile(b'".len()..];
    // The literal ends at the first unescaped quote.
    let bytes = body.as_bytes();
    let mut end = 0;
    while end < bytes.len() {
        match bytes[end] {
            b'\\' => end += 2,
            b'\'' => break,
            _ => end += 1,
        }
    }
    unescape_py_bytes(&body[..end])
}

/// Appends `bytes` as field 1 (a FileDescriptorProto) of a FileDescriptorSet.
fn push_file(set: &mut Vec<u8>, bytes: &[u8]) {
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, set);
    prost::encoding::encode_varint(bytes.len() as u64, set);
    set.extend_from_slice(bytes);
}

/// CRIU 3.17's descriptors as a pool (with google/protobuf/descriptor.proto, which its
/// opts.proto imports, taken from our own set).
fn criu_3_17_pool() -> Result<prost_reflect::DescriptorPool> {
    let mut set = Vec::new();
    let desc = schema::pool()
        .get_file_by_name("google/protobuf/descriptor.proto")
        .context("descriptor.proto in our descriptor set")?;
    push_file(&mut set, &desc.file_descriptor_proto().encode_to_vec());
    let mut files = Vec::new();
    for dir in [format!("{PYCRIU}/images"), PYCRIU.to_string()] {
        for e in std::fs::read_dir(&dir).context(format!("{dir} (Debian package criu)"))? {
            let p = e?.path();
            if p.to_string_lossy().ends_with("_pb2.py") {
                files.push(p);
            }
        }
    }
    files.sort();
    ensure!(files.len() > 60, "too few _pb2.py files under {PYCRIU}");
    for f in &files {
        push_file(&mut set, &pb2_descriptor(f)?);
    }
    Ok(prost_reflect::DescriptorPool::decode(set.as_slice())?)
}

/// crit options of a field as (name, value text), from either option encoding.
fn crit_options(
    f: &prost_reflect::FieldDescriptor,
    ext: &[prost_reflect::ExtensionDescriptor],
) -> Vec<String> {
    let opts = f.options();
    let mut out = Vec::new();
    for e in ext {
        if !opts.has_extension(e) {
            continue;
        }
        match &*opts.get_extension(e) {
            prost_reflect::Value::Message(m) => {
                for (fd, v) in m.fields() {
                    out.push(format!("{}={v:?}", fd.name()));
                }
            }
            v => out.push(format!("{}={v:?}", e.name())),
        }
    }
    out.sort();
    out
}

fn kind_name(k: &prost_reflect::Kind) -> String {
    match k {
        prost_reflect::Kind::Message(m) => format!("message {}", strip_pkg(m.full_name())),
        prost_reflect::Kind::Enum(e) => format!("enum {}", strip_pkg(e.full_name())),
        other => format!("{other:?}"),
    }
}

fn strip_pkg(name: &str) -> &str {
    name.strip_prefix("criu.").unwrap_or(name)
}

#[test]
fn definitions_match_criu_3_17() -> Result<()> {
    let old = criu_3_17_pool()?;
    let ours = schema::pool();
    let old_ext: Vec<_> = old.all_extensions().collect();
    let our_ext: Vec<_> = ours.all_extensions().collect();
    let mut problems = Vec::new();
    for m in old.all_messages() {
        let name = m.full_name();
        if name.starts_with("google.") || NOT_NEEDED_FROM_3_17.contains(&name) {
            continue;
        }
        let Some(our) = ours.get_message_by_name(&format!("criu.{name}")) else {
            problems.push(format!("message {name} missing"));
            continue;
        };
        for f in m.fields() {
            if CHANGED_SINCE_3_17.contains(&(name, f.number())) {
                continue;
            }
            let Some(g) = our.get_field(f.number()) else {
                problems.push(format!(
                    "{name}: field {} ({}) missing",
                    f.number(),
                    f.name()
                ));
                continue;
            };
            let describe = |x: &prost_reflect::FieldDescriptor, e| {
                format!(
                    "{} {:?} {} packed={} default={:?} opts={:?}",
                    x.name(),
                    x.cardinality(),
                    kind_name(&x.kind()),
                    x.is_packed(),
                    x.field_descriptor_proto().default_value,
                    crit_options(x, e)
                )
            };
            let (a, b) = (describe(&f, &old_ext), describe(&g, &our_ext));
            if a != b {
                problems.push(format!(
                    "{name} field {}: 3.17 `{a}`, ours `{b}`",
                    f.number()
                ));
            }
        }
    }
    for e in old.all_enums() {
        let name = e.full_name();
        if name.starts_with("google.") {
            continue;
        }
        let Some(our) = ours.get_enum_by_name(&format!("criu.{name}")) else {
            problems.push(format!("enum {name} missing"));
            continue;
        };
        for v in e.values() {
            match our.get_value(v.number()) {
                Some(w) if w.name() == v.name() => {}
                other => problems.push(format!(
                    "enum {name}: {} = {} is {other:?}",
                    v.name(),
                    v.number()
                )),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "differences from CRIU 3.17:\n{}",
        problems.join("\n")
    );
    Ok(())
}
