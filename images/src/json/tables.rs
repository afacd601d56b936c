//! Name tables of crit's `--pretty` mode: flag tables (`(criu.flags)`) and value
//! dictionaries (`(criu.dict)`).
//!
//! A flag value is shown as the names of its set bits in table order, joined by `" | "`,
//! followed by the leftover bits as `0x..`; zero is the empty string:
//!
//! ```text
//!  0x4222 with mmap.status  ->  "VMA_AREA_HEAP | VMA_ANON_PRIVATE | 0x4002"  (if unnamed)
//!  0                         ->  ""
//! ```
//!
//! Reading back, each `|`-separated part is a name or an integer literal, and the parts are
//! added up.

use super::number::{format_hex, parse_int_literal};

type FlagTable = &'static [(&'static str, i128)];

const MMAP_PROT: FlagTable = &[("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)];

const MMAP_FLAGS: FlagTable = &[
    ("MAP_SHARED", 0x1),
    ("MAP_PRIVATE", 0x2),
    ("MAP_DROPPABLE", 0x08),
    ("MAP_ANON", 0x20),
    ("MAP_GROWSDOWN", 0x100),
];

const MMAP_STATUS: FlagTable = &[
    ("VMA_AREA_NONE", 0),
    ("VMA_AREA_REGULAR", 1 << 0),
    ("VMA_AREA_STACK", 1 << 1),
    ("VMA_AREA_VSYSCALL", 1 << 2),
    ("VMA_AREA_VDSO", 1 << 3),
    ("VMA_AREA_HEAP", 1 << 5),
    ("VMA_FILE_PRIVATE", 1 << 6),
    ("VMA_FILE_SHARED", 1 << 7),
    ("VMA_ANON_SHARED", 1 << 8),
    ("VMA_ANON_PRIVATE", 1 << 9),
    ("VMA_AREA_SYSVIPC", 1 << 10),
    ("VMA_AREA_SOCKET", 1 << 11),
    ("VMA_AREA_VVAR", 1 << 12),
    ("VMA_AREA_AIORING", 1 << 13),
    ("VMA_AREA_MEMFD", 1 << 14),
    ("VMA_AREA_SHSTK", 1 << 15),
    ("VMA_AREA_UPROBES", 1 << 17),
    ("VMA_UNSUPP", 1 << 31),
];

/// open(2) flags, octal as in the kernel's asm-generic/fcntl.h.
const RFILE_FLAGS: FlagTable = &[
    ("O_WRONLY", 0o1),
    ("O_RDWR", 0o2),
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000),
    ("FASYNC", 0o20000),
    ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000),
    ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000),
    ("O_CLOEXEC", 0o2000000),
];

const PMAP_FLAGS: FlagTable = &[("PE_PARENT", 1), ("PE_LAZY", 2), ("PE_PRESENT", 4)];

const SEALS_FLAGS: FlagTable = &[
    ("F_SEAL_SEAL", 0x1),
    ("F_SEAL_SHRINK", 0x2),
    ("F_SEAL_GROW", 0x4),
    ("F_SEAL_WRITE", 0x8),
    ("F_SEAL_FUTURE_WRITE", 0x10),
];

/// The flag table called `name` in `(criu.flags)`, if crit knows it.
pub(crate) fn flag_table(name: &str) -> Option<FlagTable> {
    Some(match name {
        "mmap.prot" => MMAP_PROT,
        "mmap.flags" => MMAP_FLAGS,
        "mmap.status" => MMAP_STATUS,
        "rfile.flags" => RFILE_FLAGS,
        "pmap.flags" => PMAP_FLAGS,
        "seals.flags" => SEALS_FLAGS,
        _ => return None,
    })
}

/// Renders `value` with `table` (see the module docs).
pub(crate) fn map_flags(value: i128, table: FlagTable) -> String {
    let mut parts: Vec<String> = table
        .iter()
        .filter(|(_, bit)| value & bit != 0)
        .map(|(name, _)| name.to_string())
        .collect();
    let all: i128 = table.iter().map(|(_, bit)| bit).sum();
    let rest = value & !all;
    if rest != 0 {
        parts.push(format_hex(rest));
    }
    parts.join(" | ")
}

/// Parses a flag string back (names or integer literals joined by `|`).
pub(crate) fn unmap_flags(text: &str, table: FlagTable) -> Result<i128, String> {
    if text.is_empty() {
        return Ok(0);
    }
    let mut sum: i128 = 0;
    for part in text.split('|').map(str::trim) {
        let v = match table.iter().find(|(name, _)| *name == part) {
            Some((_, bit)) => *bit,
            None => parse_int_literal(part)
                .ok_or_else(|| format!("{part:?} is neither a flag name nor a number"))?,
        };
        sum = sum
            .checked_add(v)
            .ok_or_else(|| format!("flag value {text:?} overflows"))?;
    }
    Ok(sum)
}

type DictTable = &'static [(i128, &'static str)];

/// crit 4.2's `task_state` names (numbers it does not name stay numbers, e.g. 2).
const GEN_TASK_STATE: DictTable = &[(1, "Alive"), (3, "Zombie"), (6, "Stopped")];

const SK_FAMILY: DictTable = &[
    (1, "UNIX"),
    (2, "INET"),
    (10, "INET6"),
    (16, "NETLINK"),
    (17, "PACKET"),
];
const SK_TYPE: DictTable = &[
    (1, "STREAM"),
    (2, "DGRAM"),
    (3, "RAW"),
    (5, "SEQPACKET"),
    (10, "PACKET"),
];
const SK_STATE: DictTable = &[
    (1, "ESTABLISHED"),
    (2, "SYN_SENT"),
    (3, "SYN_RECV"),
    (4, "FIN_WAIT1"),
    (5, "FIN_WAIT2"),
    (6, "TIME_WAIT"),
    (7, "CLOSE"),
    (8, "CLOSE_WAIT"),
    (9, "LAST_ACK"),
    (10, "LISTEN"),
];
const SK_PROTO: DictTable = &[(0, "IP"), (6, "TCP"), (17, "UDP"), (136, "UDPLITE")];

/// The dictionary `dict` (from `(criu.dict)`) for the field called `field`.
pub(crate) fn dict_table(dict: &str, field: &str) -> Option<DictTable> {
    Some(match (dict, field) {
        ("gen", "task_state") => GEN_TASK_STATE,
        ("sk", "family") => SK_FAMILY,
        ("sk", "type") => SK_TYPE,
        ("sk", "state") => SK_STATE,
        ("sk", "proto") => SK_PROTO,
        _ => return None,
    })
}

/// The name of `value` in `table`, if any.
pub(crate) fn dict_name(value: i128, table: DictTable) -> Option<&'static str> {
    table.iter().find(|(v, _)| *v == value).map(|(_, n)| *n)
}

/// The value named `name` in `table`, if any.
pub(crate) fn dict_value(name: &str, table: DictTable) -> Option<i128> {
    table.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_like_crit() {
        let status = flag_table("mmap.status").unwrap();
        assert_eq!(
            map_flags(0x1 | 0x80 | 0x4000, status),
            "VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_AREA_MEMFD"
        );
        assert_eq!(map_flags(0, status), "");
        let prot = flag_table("mmap.prot").unwrap();
        assert_eq!(map_flags(0x1 | 0x40, prot), "PROT_READ | 0x40");
        assert_eq!(unmap_flags("PROT_READ | 0x40", prot).unwrap(), 0x41);
        assert_eq!(unmap_flags("", prot).unwrap(), 0);
        assert!(unmap_flags("PROT_BOGUS", prot).is_err());
        let rfile = flag_table("rfile.flags").unwrap();
        assert_eq!(
            map_flags(0o102001, rfile),
            "O_WRONLY | O_APPEND | O_LARGEFILE"
        );
    }

    #[test]
    fn dicts() {
        let t = dict_table("gen", "task_state").unwrap();
        assert_eq!(dict_name(1, t), Some("Alive"));
        assert_eq!(dict_name(2, t), None);
        assert_eq!(dict_value("Zombie", t), Some(3));
    }
}
