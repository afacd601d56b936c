//! A stage in front of a remote sink (a page server): keeps, in the dump's own directory, the
//! pagemaps it sent, so that the next dump of a chain knows which pages its parent holds.
//!
//! ```text
//!  dump ──► RecordedSink ──► PageServerSink ──► page server: pagemap-ID.img + pages-N.img
//!               │
//!               └─► DIR/sent-pagemap-ID.img   (the same entries; pages_id 0, no pages file)
//! ```
//! The page server writes the pagemaps where the dump cannot read them; a later
//! `dump --prev-images-dir REL` reads `REL/sent-pagemap-ID.img` when `REL/pagemap-ID.img` is
//! absent (see `dump::dirty::parent`). A `PE_PARENT` entry sent for a pagemap whose parent the
//! server does not have (a server started without `--prev-images-dir`) fails the dump: the
//! server's image set would not restore.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use stasis_images::framing::ImageWriter;
use stasis_images::magic::ImageKind;
use stasis_images::pb::{PagemapEntry, PagemapHead};

use super::error::{PagesError, Result};
use super::{PageSink, Run, SinkReport, Target, PE_PARENT};

/// Name of the record of the pagemap of `t` sent to a page server.
pub fn sent_name(t: Target) -> String {
    format!("sent-{}", t.pagemap_name())
}

struct Open {
    target: Target,
    has_parent: bool,
    pm: ImageWriter<BufWriter<File>>,
    path: PathBuf,
}

/// Records what goes to `inner` (see the module documentation).
pub struct RecordedSink {
    inner: Box<dyn PageSink>,
    dir: PathBuf,
    open: Option<Open>,
    files: Vec<PathBuf>,
}

impl RecordedSink {
    /// Records into `dir` what is sent to `inner`.
    pub fn new(inner: Box<dyn PageSink>, dir: &Path) -> RecordedSink {
        RecordedSink {
            inner,
            dir: dir.to_path_buf(),
            open: None,
            files: Vec::new(),
        }
    }

    fn end_record(&mut self) -> Result<()> {
        if let Some(o) = self.open.take() {
            o.pm.finish()
                .map_err(|e| PagesError::image(&o.path, e))?
                .into_inner()
                .map_err(|e| PagesError::io("flush", &o.path, e.into_error()))?;
        }
        Ok(())
    }
}

impl PageSink for RecordedSink {
    fn open(&mut self, target: Target) -> Result<bool> {
        self.end_record()?;
        let has_parent = self.inner.open(target)?;
        let path = self.dir.join(sent_name(target));
        let mut pm = ImageWriter::create(&path, ImageKind::Pagemap)
            .map_err(|e| PagesError::image(&path, e))?;
        pm.write_message(&PagemapHead { pages_id: 0 })
            .map_err(|e| PagesError::image(&path, e))?;
        self.files.push(path.clone());
        self.open = Some(Open {
            target,
            has_parent,
            pm,
            path,
        });
        Ok(has_parent)
    }

    #[cfg(test)]
    fn parent_has(&mut self, target: Target) -> Result<bool> {
        self.inner.parent_has(target)
    }

    fn entry(&mut self, run: &Run) -> Result<()> {
        let o = self
            .open
            .as_mut()
            .ok_or_else(|| PagesError::Usage("pagemap entry with no pagemap open".into()))?;
        if run.flags & PE_PARENT != 0 && !o.has_parent {
            return Err(PagesError::Usage(format!(
                "the page server has no parent images for {}: start it with \
                 --prev-images-dir naming the previous dump's pages",
                o.target.pagemap_name()
            )));
        }
        o.pm.write_message(&PagemapEntry {
            vaddr: run.vaddr,
            compat_nr_pages: 0,
            in_parent: None,
            flags: Some(run.flags),
            nr_pages: Some(run.nr_pages),
        })
        .map_err(|e| PagesError::image(&o.path, e))?;
        self.inner.entry(run)
    }

    fn pages(&mut self, data: &[u8]) -> Result<()> {
        self.inner.pages(data)
    }

    fn splice_file(&mut self) -> Result<Option<&mut File>> {
        self.inner.splice_file()
    }

    fn spliced(&mut self, bytes: u64) {
        self.inner.spliced(bytes)
    }

    fn close(&mut self) -> Result<()> {
        self.end_record()?;
        self.inner.close()
    }

    fn finish(&mut self) -> Result<SinkReport> {
        self.end_record()?;
        let mut r = self.inner.finish()?;
        r.files.append(&mut self.files);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::sink::LocalSink;
    use crate::pages::PE_PRESENT;

    #[test]
    fn records_what_it_sends_and_refuses_parent_entries_without_a_parent() {
        let server = tempfile::tempdir().unwrap();
        let dump = tempfile::tempdir().unwrap();
        let inner = Box::new(LocalSink::new(server.path(), 0x10001, Default::default()));
        let mut s = RecordedSink::new(inner, dump.path());
        assert!(!s.open(Target::Process(7)).unwrap());
        let run = Run {
            vaddr: 0x1000,
            nr_pages: 1,
            flags: PE_PRESENT,
        };
        s.entry(&run).unwrap();
        s.pages(&[1u8; 4096]).unwrap();
        let e = s
            .entry(&Run {
                vaddr: 0x2000,
                nr_pages: 1,
                flags: PE_PARENT,
            })
            .unwrap_err();
        assert!(e.to_string().contains("--prev-images-dir"), "{e}");
        let r = s.finish().unwrap();
        let sent = dump.path().join("sent-pagemap-7.img");
        assert!(r.files.contains(&sent));
        let mut rd = stasis_images::framing::ImageReader::open(&sent).unwrap();
        assert_eq!(
            rd.next_message::<PagemapHead>().unwrap().unwrap().pages_id,
            0
        );
        let e = rd.next_message::<PagemapEntry>().unwrap().unwrap();
        assert_eq!((e.vaddr, e.nr_pages, e.flags), (0x1000, Some(1), Some(4)));
        assert!(server.path().join("pagemap-7.img").exists());
    }
}
