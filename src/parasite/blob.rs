//! Flat blob images produced by `build.rs` and their relocation at a load address.

/// A blob as built: flat bytes, relocation slots, size.
#[derive(Debug, Clone, Copy)]
pub struct Blob {
    /// Flat image from offset 0 (bss included as zeros).
    pub bytes: &'static [u8],
    /// Offsets of u64 slots that hold an image offset; loading adds the base address.
    pub relocs: &'static [u32],
}

impl Blob {
    /// The image relocated for loading at `base`.
    pub fn relocated(&self, base: u64) -> Vec<u8> {
        let mut image = self.bytes.to_vec();
        for &off in self.relocs {
            let off = off as usize;
            let mut slot = [0u8; 8];
            slot.copy_from_slice(&image[off..off + 8]);
            let value = u64::from_le_bytes(slot).wrapping_add(base);
            image[off..off + 8].copy_from_slice(&value.to_le_bytes());
        }
        image
    }
}

/// Generated constants of the dump parasite blob (every export is listed; the engine uses
/// some).
#[allow(dead_code)]
pub(crate) mod dump {
    include!(concat!(env!("OUT_DIR"), "/blob_dump.rs"));
}

/// Generated constants of the restorer blob (every export is listed).
#[allow(dead_code)]
pub(crate) mod restorer {
    include!(concat!(env!("OUT_DIR"), "/blob_restorer.rs"));
}

/// The dump parasite.
pub const DUMP: Blob = Blob {
    bytes: dump::BYTES,
    relocs: dump::RELOCS,
};
/// The restorer.
pub const RESTORER: Blob = Blob {
    bytes: restorer::BYTES,
    relocs: restorer::RELOCS,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_page_sized_and_start_with_entry() {
        for (blob, entry) in [
            (DUMP, dump::EXPORT_ENTRY),
            (RESTORER, restorer::EXPORT_ENTRY),
        ] {
            assert_eq!(blob.bytes.len() % 4096, 0);
            assert_eq!(entry, 0);
            for &r in blob.relocs {
                assert!(r as usize + 8 <= blob.bytes.len());
            }
        }
    }
}
