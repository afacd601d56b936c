//! The magic table the codec uses for whole images: [`crate::magic`] (every kind CRIU 4.2
//! knows, with crit's names, entry messages and extra payload rules).

use super::image::{MagicEntry, MagicTable};
use crate::magic::ImageKind;

/// CRIU's image kinds, by magic and crit name.
#[derive(Debug, Clone, Copy, Default)]
pub struct CriuMagic;

fn entry(kind: ImageKind) -> MagicEntry {
    let info = kind.info();
    MagicEntry {
        name: info.name.to_string(),
        magic: info.magic,
        message: info.message.map(str::to_string),
        first_message: info.first_message.map(str::to_string),
        payload: info.payload,
    }
}

impl MagicTable for CriuMagic {
    fn by_magic(&self, magic: u32) -> Option<MagicEntry> {
        ImageKind::from_magic(magic).map(entry)
    }

    fn by_name(&self, name: &str) -> Option<MagicEntry> {
        ImageKind::from_name(name).map(entry)
    }
}
