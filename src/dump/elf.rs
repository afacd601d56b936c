//! The GNU build-id of an ELF file (CRIU stores it in `reg_file_entry.build_id` to check at
//! restore that the file is the same).
//!
//! ```text
//!  Elf64_Ehdr: e_phoff @32 (u64), e_phentsize @54 (u16), e_phnum @56 (u16)
//!  Elf64_Phdr: p_type @0 (u32, PT_NOTE = 4), p_offset @8 (u64), p_filesz @32 (u64)
//!  note: namesz u32 | descsz u32 | type u32 (NT_GNU_BUILD_ID = 3) | "GNU\0" | desc (padded to 4)
//! ```

use std::fs::File;
use std::os::unix::fs::FileExt;

const MAX_PHNUM: usize = 256;
const MAX_NOTE: u64 = 1 << 16;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The build-id as little-endian u32 words, or `None` if the file is not a 64-bit ELF with
/// one. Never fails otherwise: a file we cannot parse simply has no build-id.
pub fn build_id(f: &File) -> Option<Vec<u32>> {
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).ok()?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let phoff = u64_at(&eh, 32)?;
    let phentsize = u16_at(&eh, 54)? as usize;
    let phnum = (u16_at(&eh, 56)? as usize).min(MAX_PHNUM);
    if phentsize < 56 {
        return None;
    }
    let mut ph = vec![0u8; phentsize * phnum];
    f.read_exact_at(&mut ph, phoff).ok()?;
    for i in 0..phnum {
        let p = &ph[i * phentsize..(i + 1) * phentsize];
        if u32_at(p, 0)? != 4 {
            continue;
        }
        let off = u64_at(p, 8)?;
        let size = u64_at(p, 32)?.min(MAX_NOTE) as usize;
        let mut notes = vec![0u8; size];
        f.read_exact_at(&mut notes, off).ok()?;
        let mut o = 0usize;
        while o + 12 <= notes.len() {
            let namesz = u32_at(&notes, o)? as usize;
            let descsz = u32_at(&notes, o + 4)? as usize;
            let ty = u32_at(&notes, o + 8)?;
            let name_end = o + 12 + namesz;
            let desc = name_end.checked_add(3)? & !3;
            let next = desc.checked_add(descsz)?.checked_add(3)? & !3;
            if ty == 3 && notes.get(o + 12..name_end) == Some(b"GNU\0") {
                let d = notes.get(desc..desc + descsz)?;
                return Some(
                    d.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                );
            }
            o = next;
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
