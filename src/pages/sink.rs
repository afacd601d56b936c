//! Local sinks: pagemaps and pages files in an image directory.
//!
//! ```text
//!  open(target)  ─► pagemap-ID.img: head {pages_id N}        pages_id: first_id, first_id + 1 ...
//!  entry(run)    ─►                 entry {vaddr, nr_pages, flags}
//!  pages(bytes)  ─► pages-N.img (plain; or spliced into by the parasite)
//!                   or pages-N.pack.img (PackWriter: zstd / sealed chunks)
//! ```
//! Files are flushed on close, not synced: the dump syncs its directory once (`syncfs`), the
//! page server syncs its directory at the end of the session.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use stasis_images::framing::ImageWriter;
use stasis_images::magic::ImageKind;
use stasis_images::pb::{PagemapEntry, PagemapHead};

use super::error::{PagesError, Result};
use super::pack::{PackParams, PackWriter};
use super::{PageSink, Run, SinkReport, Target};

/// Where pages of the open pagemap go.
enum PagesOut {
    Plain { file: File, path: PathBuf },
    Pack(Box<PackWriter>),
}

struct Open {
    target: Target,
    pm: ImageWriter<BufWriter<File>>,
    pm_path: PathBuf,
    pages: PagesOut,
    /// Page bytes the entries so far announced, and bytes received.
    want: u64,
    got: u64,
}

/// Writes pagemaps and pages into a directory.
pub struct LocalSink {
    dir: PathBuf,
    next_id: u32,
    pack: PackParams,
    open: Option<Open>,
    report: SinkReport,
}

impl LocalSink {
    /// Writes into `dir`, numbering pages files from `first_id` (the dump: 1; a page server:
    /// 0x10001, as CRIU's, so that its files never collide with a dump's in one directory).
    pub fn new(dir: &Path, first_id: u32, pack: PackParams) -> LocalSink {
        LocalSink {
            dir: dir.to_path_buf(),
            next_id: first_id,
            pack,
            open: None,
            report: SinkReport::default(),
        }
    }
}

/// Whether `dir/parent` has the pagemap of `target`.
pub fn parent_has(dir: &Path, target: Target) -> bool {
    dir.join("parent").join(target.pagemap_name()).exists()
}

impl PageSink for LocalSink {
    fn open(&mut self, target: Target) -> Result<bool> {
        self.close()?;
        let pages_id = self.next_id;
        self.next_id += 1;
        let pm_path = self.dir.join(target.pagemap_name());
        let mut pm = ImageWriter::create(&pm_path, ImageKind::Pagemap)
            .map_err(|e| PagesError::image(&pm_path, e))?;
        pm.write_message(&PagemapHead { pages_id })
            .map_err(|e| PagesError::image(&pm_path, e))?;
        let pages = if self.pack.active() {
            let w = PackWriter::create(&self.dir, pages_id, &self.pack)?;
            self.report.files.push(w.path().to_path_buf());
            PagesOut::Pack(Box::new(w))
        } else {
            let path = self.dir.join(format!("pages-{pages_id}.img"));
            let file = File::create(&path).map_err(|e| PagesError::io("create", &path, e))?;
            self.report.files.push(path.clone());
            PagesOut::Plain { file, path }
        };
        self.report.files.push(pm_path.clone());
        self.report.pagemaps += 1;
        self.open = Some(Open {
            target,
            pm,
            pm_path,
            pages,
            want: 0,
            got: 0,
        });
        Ok(parent_has(&self.dir, target))
    }

    #[cfg(test)]
    fn parent_has(&mut self, target: Target) -> Result<bool> {
        Ok(parent_has(&self.dir, target))
    }

    fn entry(&mut self, run: &Run) -> Result<()> {
        let o = self
            .open
            .as_mut()
            .ok_or_else(|| PagesError::Usage("pagemap entry with no pagemap open".into()))?;
        o.pm.write_message(&PagemapEntry {
            vaddr: run.vaddr,
            compat_nr_pages: 0,
            in_parent: None,
            flags: Some(run.flags),
            nr_pages: Some(run.nr_pages),
        })
        .map_err(|e| PagesError::image(&o.pm_path, e))?;
        o.want += run.data_len();
        Ok(())
    }

    fn pages(&mut self, data: &[u8]) -> Result<()> {
        let o = self
            .open
            .as_mut()
            .ok_or_else(|| PagesError::Usage("pages with no pagemap open".into()))?;
        match &mut o.pages {
            PagesOut::Plain { file, path } => file
                .write_all(data)
                .map_err(|e| PagesError::io("write", &*path, e))?,
            PagesOut::Pack(w) => w.write(data)?,
        }
        o.got += data.len() as u64;
        Ok(())
    }

    fn splice_file(&mut self) -> Result<Option<&mut File>> {
        Ok(match self.open.as_mut().map(|o| &mut o.pages) {
            Some(PagesOut::Plain { file, .. }) => Some(file),
            _ => None,
        })
    }

    fn spliced(&mut self, bytes: u64) {
        if let Some(o) = self.open.as_mut() {
            o.got += bytes;
        }
    }

    fn close(&mut self) -> Result<()> {
        let Some(o) = self.open.take() else {
            return Ok(());
        };
        let pages_bytes = match o.pages {
            PagesOut::Plain { path, .. } => {
                if o.want != o.got {
                    return Err(PagesError::image(
                        &path,
                        format!(
                            "{} got {} bytes of pages for {}",
                            o.target.pagemap_name(),
                            o.got,
                            o.want
                        ),
                    ));
                }
                o.got
            }
            PagesOut::Pack(w) => {
                if o.want != o.got {
                    return Err(PagesError::image(
                        w.path(),
                        format!(
                            "{} got {} bytes of pages for {}",
                            o.target.pagemap_name(),
                            o.got,
                            o.want
                        ),
                    ));
                }
                w.finish()?
            }
        };
        let pm =
            o.pm.finish()
                .map_err(|e| PagesError::image(&o.pm_path, e))?;
        let pm_len = pm
            .into_inner()
            .map_err(|e| PagesError::io("flush", &o.pm_path, e.into_error()))?
            .metadata()
            .map_err(|e| PagesError::io("stat", &o.pm_path, e))?
            .len();
        self.report.bytes += pages_bytes + pm_len;
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkReport> {
        self.close()?;
        Ok(std::mem::take(&mut self.report))
    }
}
