//! Wire-format checks for the process-state and namespace messages (`proto/` files
//! inventory, pstree, core, mm, pagemap, fs, seccomp, timens, stats, ...).
//!
//! Every entry of every fixture image written by CRIU 4.2 is decoded with our prost
//! struct and encoded again: the bytes must be identical. A wrong field number, wire
//! type, label or packing, or a field we lack (prost drops unknown fields), changes
//! the bytes. The field names are checked against crit 4.2's JSON of the same file.
//!
//! ```text
//!  file   := head-magic u32 | image-magic u32 | entry*      (inventory: image-magic only)
//!  entry  := len u32 (little endian) | protobuf bytes [len]
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prost::Message;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use stasis_images::pb;

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
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| format!("{what}: {e}").into())
    }
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| format!("{}: {e}", what()).into())
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl std::fmt::Display) -> Result<T> {
        self.ok_or_else(|| format!("{what} missing").into())
    }
    fn with_context<D: std::fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| format!("{} missing", what()).into())
    }
}

const TIMENS_MAGIC: u32 = 0x4311_4433;
const COMMON_MAGIC: u32 = 0x5456_4319;
const SERVICE_MAGIC: u32 = 0x5510_5940;
const INVENTORY_MAGIC: u32 = 0x5831_3116;

/// `$STASIS_FIXTURES`, else `../shared/fixtures` beside the repository (a worktree
/// under `wt/` looks one level higher).
fn fixtures() -> PathBuf {
    if let Some(p) = std::env::var_os("STASIS_FIXTURES") {
        return PathBuf::from(p);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let beside = repo.join("../shared/fixtures");
    if beside.is_dir() {
        beside
    } else {
        repo.join("../../shared/fixtures")
    }
}

fn image_dirs() -> Result<Vec<PathBuf>> {
    let root = fixtures().join("criu-4.2");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("fixtures not found at {}", root.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    dirs.retain(|d| d.is_dir());
    dirs.sort();
    ensure!(
        dirs.len() >= 6,
        "expected six fixture image dirs in {}",
        root.display()
    );
    Ok(dirs)
}

/// Files of every fixture dir whose name starts with `prefix` and ends in `.img`
/// (or equals `prefix` exactly, for `stats-dump`).
fn images(prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for dir in image_dirs()? {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name == prefix || (name.starts_with(prefix) && name.ends_with(".img")) {
                out.push(p);
            }
        }
    }
    out.sort();
    ensure!(!out.is_empty(), "no fixture image named {prefix}*");
    Ok(out)
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
}

/// Splits an image into its entries after checking both magics.
fn entries(path: &Path, head: Option<u32>, magic: u32) -> Result<Vec<Vec<u8>>> {
    let b = std::fs::read(path)?;
    let mut off = 0;
    if let Some(h) = head {
        ensure!(u32_at(&b, 0) == Some(h), "{}: head magic", path.display());
        off = 4;
    }
    ensure!(
        u32_at(&b, off) == Some(magic),
        "{}: image magic",
        path.display()
    );
    off += 4;
    let mut out = Vec::new();
    while off < b.len() {
        let Some(len) = u32_at(&b, off) else {
            bail!("{}: torn length at {off}", path.display())
        };
        let start = off + 4;
        let end = start + len as usize;
        ensure!(
            end <= b.len(),
            "{}: entry at {off} runs past the end",
            path.display()
        );
        out.push(b[start..end].to_vec());
        off = end;
    }
    Ok(out)
}

/// Decodes and re-encodes one entry; returns the decoded message.
fn round_trip<M: Message + Default>(path: &Path, idx: usize, bytes: &[u8]) -> Result<M> {
    let m = M::decode(bytes).with_context(|| format!("{} entry {idx}: decode", path.display()))?;
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

/// Round-trips every entry of every fixture `prefix*` image as message `M`.
fn check_all<M: Message + Default>(prefix: &str, head: Option<u32>, magic: u32) -> Result<usize> {
    let mut n = 0;
    for path in images(prefix)? {
        for (i, e) in entries(&path, head, magic)?.iter().enumerate() {
            round_trip::<M>(&path, i, e)?;
            n += 1;
        }
        check_json_names(&path, message_name::<M>())?;
    }
    ensure!(n > 0, "no entries in {prefix}* images");
    Ok(n)
}

fn message_name<M>() -> &'static str {
    // pb::CoreEntry -> core_entry is what the descriptors know; map by type name.
    let t = std::any::type_name::<M>().rsplit("::").next().unwrap();
    MESSAGE_NAMES
        .iter()
        .find(|(rust, _)| *rust == t)
        .map(|(_, proto)| *proto)
        .unwrap_or_else(|| panic!("add {t} to MESSAGE_NAMES"))
}

const MESSAGE_NAMES: &[(&str, &str)] = &[
    ("InventoryEntry", "criu.inventory_entry"),
    ("PstreeEntry", "criu.pstree_entry"),
    ("CoreEntry", "criu.core_entry"),
    ("TaskKobjIdsEntry", "criu.task_kobj_ids_entry"),
    ("MmEntry", "criu.mm_entry"),
    ("FsEntry", "criu.fs_entry"),
    ("SeccompEntry", "criu.seccomp_entry"),
    ("TimensEntry", "criu.timens_entry"),
    ("StatsEntry", "criu.stats_entry"),
    ("PagemapEntry", "criu.pagemap_entry"),
];

fn pool() -> DescriptorPool {
    DescriptorPool::decode(stasis_images::DESCRIPTOR_SET).expect("descriptor set decodes")
}

/// Every key of crit's JSON for `img` must be a field name of the message
/// (recursively through nested messages). Pagemap files mix two messages, so they
/// are checked against the union of pagemap_head and pagemap_entry.
fn check_json_names(img: &Path, msg: &str) -> Result<()> {
    let json_path = PathBuf::from(format!("{}.json", img.display()));
    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("{} missing", json_path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let pool = pool();
    let entries = v["entries"].as_array().context("no entries array")?;
    for (i, e) in entries.iter().enumerate() {
        let name = if msg == "criu.pagemap_entry" && i == 0 {
            "criu.pagemap_head"
        } else {
            msg
        };
        let d = pool.get_message_by_name(name).context(name.to_string())?;
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
    let n = check_all::<pb::InventoryEntry>("inventory", None, INVENTORY_MAGIC)?;
    assert_eq!(n, 6, "one inventory entry per fixture");
    // Values users rely on: image version 2 (v1.1) and the per-id layouts.
    for path in images("inventory")? {
        let e = &entries(&path, None, INVENTORY_MAGIC)?[0];
        let inv = pb::InventoryEntry::decode(e.as_slice())?;
        assert_eq!(inv.img_version, 2);
        assert_eq!(inv.fdinfo_per_id, Some(true));
        assert_eq!(inv.ns_per_id, Some(true));
        assert_eq!(inv.dump_criu_run_id.as_deref().map(str::len), Some(36));
        assert!(inv.plugins_entry.is_some());
    }
    Ok(())
}

#[test]
fn pstree_round_trips() -> Result<()> {
    check_all::<pb::PstreeEntry>("pstree", Some(COMMON_MAGIC), 0x5027_3030)?;
    let tree = fixtures().join("criu-4.2/fx-tree/pstree.img");
    let pids: BTreeSet<u32> = entries(&tree, Some(COMMON_MAGIC), 0x5027_3030)?
        .iter()
        .map(|e| pb::PstreeEntry::decode(e.as_slice()).map(|p| p.pid))
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(
        pids,
        BTreeSet::from([30400, 30402, 30403, 30404, 30405, 30406])
    );
    Ok(())
}

#[test]
fn core_round_trips() -> Result<()> {
    let n = check_all::<pb::CoreEntry>("core-", Some(COMMON_MAGIC), 0x5505_3847)?;
    assert!(n >= 17 + 6 + 4, "all core images seen, got {n}");
    let path = fixtures().join("criu-4.2/fx-signals/core-30500.img");
    let core =
        pb::CoreEntry::decode(entries(&path, Some(COMMON_MAGIC), 0x5505_3847)?[0].as_slice())?;
    assert_eq!(core.mtype(), pb::core_entry::March::X8664);
    let ti = core.thread_info.as_ref().context("thread_info")?;
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
    Ok(())
}

#[test]
fn ids_round_trip() -> Result<()> {
    check_all::<pb::TaskKobjIdsEntry>("ids-", Some(COMMON_MAGIC), 0x5443_2030)?;
    Ok(())
}

#[test]
fn mm_round_trips() -> Result<()> {
    check_all::<pb::MmEntry>("mm-", Some(COMMON_MAGIC), 0x5749_2820)?;
    Ok(())
}

#[test]
fn pagemap_round_trips() -> Result<()> {
    // Both per-process and shmem pagemaps: a head, then entries.
    let mut pages = 0u64;
    for path in images("pagemap-")? {
        let es = entries(&path, Some(COMMON_MAGIC), 0x5608_4025)?;
        ensure!(!es.is_empty(), "{}: no head", path.display());
        let head: pb::PagemapHead = round_trip(&path, 0, &es[0])?;
        let mut n = 0;
        for (i, e) in es.iter().enumerate().skip(1) {
            let pe: pb::PagemapEntry = round_trip(&path, i, e)?;
            assert_eq!(
                pe.compat_nr_pages, 0,
                "CRIU 4.2 writes the count in field 5"
            );
            n += pe.nr_pages.context("nr_pages")?;
        }
        // The README's invariant: pages of one pagemap fill its pages-N.img.
        let pages_img = path.with_file_name(format!("pages-{}.img", head.pages_id));
        assert_eq!(
            std::fs::metadata(&pages_img)?.len(),
            n * 4096,
            "{}",
            path.display()
        );
        check_json_names(&path, "criu.pagemap_entry")?;
        pages += n;
    }
    assert!(pages > 6000);
    Ok(())
}

#[test]
fn fs_round_trips() -> Result<()> {
    check_all::<pb::FsEntry>("fs-", Some(COMMON_MAGIC), 0x5140_3912)?;
    Ok(())
}

#[test]
fn seccomp_round_trips() -> Result<()> {
    check_all::<pb::SeccompEntry>("seccomp", Some(COMMON_MAGIC), 0x6441_3049)?;
    Ok(())
}

#[test]
fn timens_round_trips() -> Result<()> {
    check_all::<pb::TimensEntry>("timens-", Some(COMMON_MAGIC), TIMENS_MAGIC)?;
    Ok(())
}

#[test]
fn stats_dump_round_trips() -> Result<()> {
    check_all::<pb::StatsEntry>("stats-dump", Some(SERVICE_MAGIC), 0x5709_3306)?;
    Ok(())
}
