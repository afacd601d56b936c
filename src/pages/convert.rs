//! Packed image directories back to plain CRIU images: `stasis convert -D IN -o OUT`, and the
//! plain view `stasis restore` reads a packed directory through.
//!
//! ```text
//!  IN/pages-N.pack.img  ─ decode_to (checked, zero runs as holes) ─►  OUT/pages-N.img
//!  IN/inventory.img     ─ img_version INVENTORY_MARK → 2 ──────────►  OUT/inventory.img
//!  IN/parent -> P       ─ P plain: link to P's absolute path; P packed: P converted into
//!                         OUT-parent (recursively) and linked ────────►  OUT/parent
//!  IN/* (every other file)  ─ copied (convert) or symlinked (restore view) ─► OUT/*
//! ```
//! Every packed file is decoded and checked before anything else uses the output, so a
//! tampered, truncated or reordered stream, or a wrong or missing key, stops a restore before
//! any task exists. The restore view lives in a private directory under `/dev/shm` (tmpfs,
//! like the memfds restore maps: its pages cost memory while the restore runs) and is removed
//! when the restore returns.

use std::fs::File;
use std::path::{Path, PathBuf};

use stasis_images::framing::Image;
use stasis_images::magic::ImageKind;
use stasis_images::pb::InventoryEntry;

use super::error::{PagesError, Result};
use super::pack::{self, PackKey};

/// Whether `dir` has packed pages files or a packed inventory.
pub fn is_packed_dir(dir: &Path) -> bool {
    let any_pack = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(pack::parse_file_name)
                    .is_some()
            })
        })
        .unwrap_or(false);
    any_pack || inventory_version(dir) == Some(pack::INVENTORY_MARK)
}

fn inventory_version(dir: &Path) -> Option<u32> {
    let img = Image::read_file(dir.join("inventory.img")).ok()?;
    img.single::<InventoryEntry>().ok().map(|i| i.img_version)
}

/// How other files reach the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Others {
    /// Copied: the output stands alone.
    Copy,
    /// Symbolic links to the input's files (a temporary view).
    Link,
}

/// What a conversion did.
#[derive(Debug, Clone, Default)]
pub struct ConvertReport {
    /// Packed files decoded.
    pub decoded: usize,
    /// Plain pages written.
    pub pages: u64,
    /// Other files copied or linked.
    pub others: usize,
    /// Parent directories converted too.
    pub parents: Vec<PathBuf>,
}

/// Converts image directory `src` into plain images in `dst` (created; must not exist or be
/// empty).
pub fn convert_dir(
    src: &Path,
    dst: &Path,
    key: Option<&PackKey>,
    others: Others,
) -> Result<ConvertReport> {
    if !src.is_dir() {
        return Err(PagesError::io(
            "images directory",
            src,
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ));
    }
    match std::fs::read_dir(dst) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(PagesError::io(
                    "output directory",
                    dst,
                    std::io::Error::from_raw_os_error(libc::ENOTEMPTY),
                ));
            }
        }
        Err(_) => std::fs::create_dir_all(dst).map_err(|e| PagesError::io("create", dst, e))?,
    }
    let src_abs = std::fs::canonicalize(src).map_err(|e| PagesError::io("resolve", src, e))?;
    let mut report = ConvertReport::default();
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| PagesError::io("read directory", src, e))?
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    // Packed pages first: nothing else is written before they all check out.
    for e in &entries {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(pack::parse_file_name) else {
            continue;
        };
        let path = e.path();
        let out_path = dst.join(format!("pages-{id}.img"));
        let out = File::create(&out_path).map_err(|e| PagesError::io("create", &out_path, e))?;
        report.pages += pack::decode_to(&path, Some(id), key, &out, &out_path)?;
        report.decoded += 1;
    }
    for e in &entries {
        let name = e.file_name();
        let Some(s) = name.to_str() else { continue };
        if pack::parse_file_name(s).is_some() {
            continue;
        }
        let path = e.path();
        let out = dst.join(&name);
        if s == "parent" {
            let target =
                std::fs::canonicalize(&path).map_err(|e| PagesError::io("resolve", &path, e))?;
            let link_to = if is_packed_dir(&target) {
                let mut pdst = dst.as_os_str().to_owned();
                pdst.push("-parent");
                let pdst = PathBuf::from(pdst);
                let sub = convert_dir(&target, &pdst, key, others)?;
                report.parents.push(pdst.clone());
                report.parents.extend(sub.parents);
                std::fs::canonicalize(&pdst).map_err(|e| PagesError::io("resolve", &pdst, e))?
            } else {
                target
            };
            std::os::unix::fs::symlink(&link_to, &out)
                .map_err(|e| PagesError::io("link", &out, e))?;
            continue;
        }
        if s == "inventory.img" && inventory_version(src) == Some(pack::INVENTORY_MARK) {
            let img = Image::read_file(&path).map_err(|e| PagesError::image(&path, e))?;
            let mut inv: InventoryEntry = img.single().map_err(|e| PagesError::image(&path, e))?;
            inv.img_version = pack::CRIU_IMG_VERSION;
            Image::from_messages(ImageKind::Inventory, &[inv])
                .write_file(&out)
                .map_err(|e| PagesError::image(&out, e))?;
            report.others += 1;
            continue;
        }
        let ft = e
            .file_type()
            .map_err(|e| PagesError::io("stat", &path, e))?;
        if ft.is_dir() {
            tracing::warn!("convert: skipping directory {}", path.display());
            continue;
        }
        match others {
            Others::Copy => {
                std::fs::copy(&path, &out).map_err(|e| PagesError::io("copy", &path, e))?;
            }
            Others::Link => {
                std::os::unix::fs::symlink(src_abs.join(&name), &out)
                    .map_err(|e| PagesError::io("link", &out, e))?;
            }
        }
        report.others += 1;
    }
    Ok(report)
}

/// An image directory as plain CRIU images: the directory itself when it is plain, else a
/// checked, converted temporary copy (removed on drop).
#[derive(Debug)]
pub struct PlainView {
    dir: PathBuf,
    temp: Option<PathBuf>,
}

impl PlainView {
    /// The plain view of `dir`; `key`: the key file for sealed pages.
    pub fn of(dir: &Path, key: Option<&Path>) -> Result<PlainView> {
        let parent_packed = std::fs::canonicalize(dir.join("parent"))
            .map(|p| is_packed_dir(&p))
            .unwrap_or(false);
        if !is_packed_dir(dir) && !parent_packed {
            return Ok(PlainView {
                dir: dir.to_path_buf(),
                temp: None,
            });
        }
        let key = key.map(PackKey::load).transpose()?;
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let temp = unique_dir(&base)?;
        let view = PlainView {
            dir: temp.join("images"),
            temp: Some(temp),
        };
        let r = convert_dir(dir, &view.dir, key.as_ref(), Others::Link)?;
        tracing::info!(
            "packed images {}: {} files decoded ({} pages) into {}",
            dir.display(),
            r.decoded,
            r.pages,
            view.dir.display()
        );
        Ok(view)
    }

    /// The directory to read plain images from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PlainView {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            if let Err(e) = std::fs::remove_dir_all(&t) {
                tracing::warn!("remove {}: {e}", t.display());
            }
        }
    }
}

fn unique_dir(base: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| {
        PagesError::io("random name in", base, std::io::Error::other(e.to_string()))
    })?;
    let d = base.join(format!(
        "stasis-plain-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(rnd)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&d)
        .map_err(|e| PagesError::io("create", &d, e))?;
    Ok(d)
}
