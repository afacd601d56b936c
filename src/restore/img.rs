//! Image access for the restorer: a cursor over an image file read with `stasis_images`
//! (framing, extra payloads, `pb` messages) whose errors name the file and entry.
//!
//! ```text
//! file  := head_magic u32 [image_magic u32] entry*      (inventory.img: one magic only)
//! entry := len u32 | message bytes[len] | extra payload (pipes-data, ghost-file chunks)
//! pages-N.img: raw pages, consumed in pagemap order by PE_PRESENT entries
//! ```

use std::path::{Path, PathBuf};

use prost::Message;
use stasis_images::framing::Image;

use super::error::RestoreError;

/// The entries of one image file, read in order.
pub struct ImageFile {
    /// Path, for error messages.
    pub path: PathBuf,
    img: Image,
    pos: usize,
}

impl ImageFile {
    /// Reads and frames `dir/name` (magic, entries, extra payloads).
    pub fn open(dir: &Path, name: &str) -> Result<Self, RestoreError> {
        let path = dir.join(name);
        if !path.exists() {
            return Err(RestoreError::Io {
                step: "read image",
                path,
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        let img = Image::read_file(&path).map_err(|e| RestoreError::Image {
            path: path.clone(),
            index: 0,
            what: e.to_string(),
        })?;
        Ok(Self { path, img, pos: 0 })
    }

    /// Opens an image that may be absent (returns `None` then).
    pub fn open_opt(dir: &Path, name: &str) -> Result<Option<Self>, RestoreError> {
        if !dir.join(name).exists() {
            return Ok(None);
        }
        Self::open(dir, name).map(Some)
    }

    /// Decodes the next entry as `M`; `None` at the end of the file.
    pub fn next_msg<M: Message + Default>(&mut self) -> Result<Option<M>, RestoreError> {
        if self.pos == self.img.entries.len() {
            return Ok(None);
        }
        let index = self.pos;
        self.pos += 1;
        self.img
            .decode_entry(index)
            .map(Some)
            .map_err(|e| RestoreError::Image {
                path: self.path.clone(),
                index,
                what: e.to_string(),
            })
    }

    /// Decodes every remaining entry as `M`.
    pub fn all<M: Message + Default>(&mut self) -> Result<Vec<M>, RestoreError> {
        let mut out = Vec::new();
        while let Some(m) = self.next_msg::<M>()? {
            out.push(m);
        }
        Ok(out)
    }

    /// The extra payload that followed the last decoded entry; it must hold `len` bytes.
    /// The payload after the last entry read, whatever its length (a ghost file without
    /// chunks: its content is the rest of the image).
    pub fn payload_rest(&self) -> &[u8] {
        let index = self.pos.saturating_sub(1);
        self.img
            .entries
            .get(index)
            .and_then(|e| e.extra.as_deref())
            .unwrap_or(&[])
    }

    pub fn payload(&self, len: u64) -> Result<&[u8], RestoreError> {
        let index = self.pos.saturating_sub(1);
        let extra = self
            .img
            .entries
            .get(index)
            .and_then(|e| e.extra.as_deref())
            .unwrap_or(&[]);
        if extra.len() as u64 != len {
            return Err(RestoreError::Image {
                path: self.path.clone(),
                index,
                what: format!(
                    "payload of {} bytes, the entry announces {len}",
                    extra.len()
                ),
            });
        }
        Ok(extra)
    }
}

/// Decodes the single entry of `dir/name`.
pub fn one<M: Message + Default>(dir: &Path, name: &str) -> Result<M, RestoreError> {
    let mut f = ImageFile::open(dir, name)?;
    f.next_msg::<M>()?.ok_or_else(|| RestoreError::Image {
        path: f.path.clone(),
        index: 0,
        what: "no entry".into(),
    })
}

/// The messages restore reads (from `stasis_images::pb`), under short names.
pub mod msg {
    pub use stasis_images::pb::{
        CoreEntry, CredsEntry, FdinfoEntry, FileEntry, FsEntry, GhostChunkEntry, GhostFileEntry,
        ItimerEntry, MemfdInodeEntry, MmEntry, PagemapEntry, PagemapHead, PipeDataEntry,
        PosixTimerEntry, PstreeEntry, RemapFilePathEntry, RlimitEntry, SaEntry,
        TaskKobjIdsEntry as TaskKobjIds, ThreadInfoX86, UserX86FpregsEntry as UserX86Fpregs,
        VmaEntry,
    };
}
