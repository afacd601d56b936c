//! The magic table the codec uses for whole images.
//!
//! Interim: the kinds present in the CRIU 4.2 fixtures, until `crate::magic` (the full
//! table) is available; then this delegates to it.

use super::image::{MagicEntry, MagicTable};

/// CRIU's image kinds, by magic and crit name.
#[derive(Debug, Clone, Copy, Default)]
pub struct CriuMagic;

const KINDS: &[(&str, u32, &str)] = &[
    ("INVENTORY", 0x5831_3116, "inventory_entry"),
    ("CORE", 0x5505_3847, "core_entry"),
    ("FDINFO", 0x5621_3732, "fdinfo_entry"),
    ("FILES", 0x5630_3138, "file_entry"),
    ("FS", 0x5140_3912, "fs_entry"),
    ("GHOST_FILE", 0x5258_3605, "ghost_chunk_entry"),
    ("IDS", 0x5443_2030, "task_kobj_ids_entry"),
    ("MEMFD_INODE", 0x4845_3499, "memfd_inode_entry"),
    ("MM", 0x5749_2820, "mm_entry"),
    ("PAGEMAP", 0x5608_4025, "pagemap_entry"),
    ("PIPES_DATA", 0x5645_3709, "pipe_data_entry"),
    ("PSTREE", 0x5027_3030, "pstree_entry"),
    ("REMAP_FPATH", 0x5913_3954, "remap_file_path_entry"),
    ("SECCOMP", 0x6441_3049, "seccomp_entry"),
    ("TIMENS", 0x4311_4433, "timens_entry"),
    ("STATS", 0x5709_3306, "stats_entry"),
];

fn entry(k: &(&str, u32, &str)) -> MagicEntry {
    MagicEntry {
        name: k.0.to_string(),
        magic: k.1,
        message: Some(k.2.to_string()),
    }
}

impl MagicTable for CriuMagic {
    fn by_magic(&self, magic: u32) -> Option<MagicEntry> {
        KINDS.iter().find(|k| k.1 == magic).map(entry)
    }

    fn by_name(&self, name: &str) -> Option<MagicEntry> {
        KINDS.iter().find(|k| k.0 == name).map(entry)
    }
}
