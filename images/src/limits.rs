//! Caps on what is read from image files, checked before anything is allocated.
//!
//! ```text
//!  open(path) ──fstat──► regular file? ──► size <= MAX_IMAGE_FILE? ──► magic words ok? ──► read
//!                        (no: NotRegular)   (no: TooLarge)             (no: BadHeadMagic ...)
//! ```
//!
//! | cap | value | applies to |
//! |---|---|---|
//! | [`MAX_IMAGE_FILE`] | 1 GiB | a framed image file (every kind but the raw `pages-*.img`) |
//! | [`crate::framing::MAX_ENTRY_LEN`] | 64 MiB | one entry (its length word is checked before reading it) |
//! | [`MAX_JSON_TEXT`] | 1 GiB | crit JSON text given to `crit encode` |
//!
//! Only regular files are read (a device, FIFO or directory is refused, whatever its name);
//! crit's standard input is the one exception, read up to the same cap. Readers stream entry
//! by entry, so memory follows the entries that are valid, not the entries a file announces.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::error::{FileName, ImageError, Result};

/// Largest framed image file read (1 GiB): CRIU's largest framed images (ghost files under
/// its 1 MiB ghost limit, pipe data, unix socket queues) stay far below it.
pub const MAX_IMAGE_FILE: u64 = 1 << 30;

/// Largest crit JSON text read (1 GiB).
pub const MAX_JSON_TEXT: u64 = 1 << 30;

/// What a path is, for the "not a regular file" error.
fn describe(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file of at most `cap` bytes (symlinks are
/// followed, then the target is checked); returns the file and its size.
pub fn open_regular(path: &Path, cap: u64) -> Result<(File, u64)> {
    let name = FileName::path(path);
    let f = File::open(path).map_err(|e| ImageError::io(&name, "open", e))?;
    let meta = f.metadata().map_err(|e| ImageError::io(&name, "stat", e))?;
    if !meta.file_type().is_file() {
        return Err(ImageError::NotRegular {
            file: name,
            what: describe(meta.file_type()),
        });
    }
    if meta.len() > cap {
        return Err(ImageError::TooLarge {
            file: name,
            size: meta.len(),
            cap,
        });
    }
    Ok((f, meta.len()))
}

/// Reads all of `r` if it holds at most `cap` bytes; `TooLarge` as soon as it holds more
/// (the buffer never grows past `cap + 1` bytes).
pub fn read_capped(r: impl Read, cap: u64, file: &FileName) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    r.take(cap.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| ImageError::io(file, "read", e))?;
    if data.len() as u64 > cap {
        return Err(ImageError::TooLarge {
            file: file.clone(),
            size: data.len() as u64,
            cap,
        });
    }
    Ok(data)
}

/// Reads the regular file `path` (at most `cap` bytes) whole.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let (f, _) = open_regular(path, cap)?;
    read_capped(f, cap, &FileName::path(path))
}
