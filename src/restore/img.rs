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
use stasis_images::framing::{Entry, ImageReader};

use super::error::RestoreError;

/// The entries of one image file, read one at a time (memory follows the entries decoded,
/// not what the file announces; the file is a regular file within
/// `stasis_images::limits`, its magic checked at open).
pub struct ImageFile {
    /// Path, for error messages.
    pub path: PathBuf,
    reader: ImageReader<std::io::Take<std::fs::File>>,
    /// Index of the next entry.
    pos: usize,
    /// The last entry read (its extra payload is asked for after its message).
    last: Option<Entry>,
}

impl ImageFile {
    /// Opens `dir/name` and checks its magic.
    pub fn open(dir: &Path, name: &str) -> Result<Self, RestoreError> {
        let path = dir.join(name);
        if !path.exists() {
            return Err(RestoreError::Io {
                step: "read image",
                path,
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        let reader = ImageReader::open(&path).map_err(|e| RestoreError::Image {
            path: path.clone(),
            index: 0,
            what: e.to_string(),
        })?;
        Ok(Self {
            path,
            reader,
            pos: 0,
            last: None,
        })
    }

    /// Opens an image that may be absent (returns `None` then).
    pub fn open_opt(dir: &Path, name: &str) -> Result<Option<Self>, RestoreError> {
        if !dir.join(name).exists() {
            return Ok(None);
        }
        Self::open(dir, name).map(Some)
    }

    /// Index of the entry the last `next_msg` returned (for error messages).
    pub fn index(&self) -> usize {
        self.pos.saturating_sub(1)
    }

    /// Decodes the next entry as `M`; `None` at the end of the file.
    pub fn next_msg<M: Message + Default>(&mut self) -> Result<Option<M>, RestoreError> {
        let index = self.pos;
        let err = |what: String| RestoreError::Image {
            path: self.path.clone(),
            index,
            what,
        };
        let Some(entry) = self.reader.next_entry().map_err(|e| err(e.to_string()))? else {
            self.last = None;
            return Ok(None);
        };
        self.pos += 1;
        let msg = M::decode(entry.bytes.as_slice()).map_err(|e| err(e.to_string()))?;
        self.last = Some(entry);
        Ok(Some(msg))
    }

    /// Decodes every remaining entry as `M`, each checked by `check` (with its index) as it
    /// is read, so a file of bad entries fails at the first one.
    pub fn all_checked<M: Message + Default>(
        &mut self,
        mut check: impl FnMut(usize, &M) -> Result<(), String>,
    ) -> Result<Vec<M>, RestoreError> {
        let mut out = Vec::new();
        while let Some(m) = self.next_msg::<M>()? {
            check(self.index(), &m).map_err(|what| RestoreError::Image {
                path: self.path.clone(),
                index: self.index(),
                what,
            })?;
            out.push(m);
        }
        Ok(out)
    }

    /// Decodes every remaining entry as `M`.
    pub fn all<M: Message + Default>(&mut self) -> Result<Vec<M>, RestoreError> {
        self.all_checked(|_, _| Ok(()))
    }

    /// The payload after the last entry read, whatever its length (a ghost file without
    /// chunks: its content is the rest of the image).
    pub fn payload_rest(&self) -> &[u8] {
        self.last
            .as_ref()
            .and_then(|e| e.extra.as_deref())
            .unwrap_or(&[])
    }

    /// The extra payload that followed the last decoded entry; it must hold `len` bytes.
    pub fn payload(&self, len: u64) -> Result<&[u8], RestoreError> {
        let extra = self
            .last
            .as_ref()
            .and_then(|e| e.extra.as_deref())
            .unwrap_or(&[]);
        if extra.len() as u64 != len {
            return Err(RestoreError::Image {
                path: self.path.clone(),
                index: self.index(),
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
pub(crate) mod msg {
    pub use stasis_images::pb::{
        CoreEntry, FdinfoEntry, FileEntry, FsEntry, GhostChunkEntry, GhostFileEntry,
        MemfdInodeEntry, MmEntry, PagemapEntry, PagemapHead, PipeDataEntry, PstreeEntry,
        RemapFilePathEntry, TaskKobjIdsEntry as TaskKobjIds, VmaEntry,
    };
}
