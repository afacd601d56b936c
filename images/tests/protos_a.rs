//! Wire-format checks for the process-state and namespace messages (`proto/` files
//! inventory, pstree, core*, creds, sa, timer, rlimit, rseq, siginfo, mm, vma, pagemap,
//! fs, seccomp, timens, stats, cgroup, namespaces, ipc, mnt, netdev, tty, ...).
//!
//! Every entry of every fixture image written by CRIU 4.2 is decoded with our prost
//! struct and encoded again: the bytes must be identical. A wrong field number, wire
//! type, label or packing, or a field we lack (prost drops unknown fields), changes
//! the bytes. The field names are checked against crit 4.2's JSON of the same file,
//! and the message of every image kind of this half must exist in the descriptors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
    let mut dirs = Vec::new();
    for e in std::fs::read_dir(&root).context(format!("fixtures at {}", root.display()))? {
        let p = e?.path();
        if p.is_dir() {
            dirs.push(p);
        }
    }
    dirs.sort();
    ensure!(
        dirs.len() >= 6,
        "expected six fixture image dirs in {}",
        root.display()
    );
    Ok(dirs)
}

/// Fixture files named `prefix*.img` (or exactly `prefix`, for `stats-dump`).
fn images(prefix: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for dir in image_dirs()? {
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
