//! The GNU build-id of an ELF file (CRIU stores it in `reg_file_entry.build_id` to check at
//! restore that the file is the same), read with the `object` crate from the `PT_NOTE`
//! segments: only the ELF header, the program headers and the notes are read from the file.
//!
//! ```text
//!  Elf64_Ehdr -> Elf64_Phdr[e_phnum] -> PT_NOTE segments
//!  note: namesz u32 | descsz u32 | type u32 (NT_GNU_BUILD_ID = 3) | "GNU\0" | desc (padded)
//! ```

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::read::ReadCache;
use std::fs::File;

/// Largest note segment read (build-id notes are tens of bytes).
const MAX_NOTE: u64 = 1 << 16;

/// The build-id as little-endian u32 words, or `None` if the file is not a 64-bit ELF with
/// one. Never fails otherwise: a file we cannot parse simply has no build-id.
pub fn build_id(f: &File) -> Option<Vec<u32>> {
    let data = ReadCache::new(f);
    let header = elf::FileHeader64::<object::Endianness>::parse(&data).ok()?;
    let endian = header.endian().ok()?;
    for ph in header.program_headers(endian, &data).ok()? {
        if ph.p_filesz(endian) > MAX_NOTE {
            continue;
        }
        let Ok(Some(mut notes)) = ph.notes(endian, &data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                return Some(
                    note.desc()
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                );
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixture_binary_build_id() {
        let p = crate::test_fixtures::fixtures().join("bin/fx-files");
        let f = std::fs::File::open(&p).unwrap();
        assert_eq!(
            super::build_id(&f).unwrap(),
            vec![1216944901, 2641211230, 3693899896, 3754432731, 1383379865]
        );
        let not_elf = std::fs::File::open("/proc/self/status").unwrap();
        assert!(super::build_id(&not_elf).is_none());
    }
}
