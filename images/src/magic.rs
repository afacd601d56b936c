//! The table of every image kind CRIU 4.2 knows.
//!
//! ```text
//!  kind         head magic          image magic   entries                 extra payload
//!  INVENTORY    (none)              0x58313116    inventory_entry         -
//!  CORE, MM...  0x54564319 common   per kind      one message type        per kind (payload.rs)
//!  STATS, IRMAP 0x55105940 service  per kind      stats_entry ...         -
//!  PAGEMAP      common              0x56084025    pagemap_head, then pagemap_entry
//!  GHOST_FILE   common              0x52583605    ghost_file_entry, then ghost_chunk_entry+data
//!                                                 (or, without chunks, the rest of the file)
//!  PAGES ...    (none, raw)         -             raw bytes (pages-N.img, ifaddr, iptables...)
//! ```
//!
//! Names are crit's (`"magic"` of crit's JSON: the C macro name without `_MAGIC`). Where CRIU
//! uses one magic for two file families (`pagemap-N` and `pagemap-shmem-N` are both
//! `PAGEMAP`; `signal-s-N` and `signal-p-N` are both `SIGNAL`), there is one kind, as in crit.
//! Raw kinds have no magic (crit cannot decode them); they are listed so that file names map to
//! something. Not listed: `KDAT` (kernel-feature cache outside image dirs, not protobuf).

use crate::payload::PayloadKind;

/// Head magic of every image but inventory and raw ones.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// Head magic of service files (`stats-dump`, `stats-restore`, `irmap-cache.img`).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// What precedes the image magic in a file of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadMagic {
    /// Only the image magic (inventory.img).
    None,
    /// [`IMG_COMMON_MAGIC`], then the image magic.
    Common,
    /// [`IMG_SERVICE_MAGIC`], then the image magic.
    Service,
    /// No magic at all: raw data.
    Raw,
}

impl HeadMagic {
    /// The head word written before the image magic, if any.
    pub fn value(self) -> Option<u32> {
        match self {
            HeadMagic::Common => Some(IMG_COMMON_MAGIC),
            HeadMagic::Service => Some(IMG_SERVICE_MAGIC),
            HeadMagic::None | HeadMagic::Raw => None,
        }
    }
}

/// Static description of one image kind.
#[derive(Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: ImageKind,
    /// crit's name, e.g. `"PIPES_DATA"`.
    pub name: &'static str,
    /// Image magic (0 for raw kinds).
    pub magic: u32,
    pub head: HeadMagic,
    /// Fully qualified message of the entries (`"criu.core_entry"`); `None` for raw kinds.
    /// For PAGEMAP and GHOST_FILE this is the type of entries 1.. (see `first_message`).
    pub message: Option<&'static str>,
    /// Type of entry 0 when it differs (`pagemap_head`, `ghost_file_entry`).
    pub first_message: Option<&'static str>,
    /// Extra raw data following entries (see [`crate::payload`]).
    pub payload: PayloadKind,
    /// File name patterns: `%u` decimal, `%d` signed decimal, `%x` hex, `%s` any word.
    /// The first one is what CRIU 4.2 writes.
    pub files: &'static [&'static str],
}

impl KindInfo {
    /// Message type of entry `index`.
    pub fn message_for(&self, index: usize) -> Option<&'static str> {
        if index == 0 && self.first_message.is_some() {
            self.first_message
        } else {
            self.message
        }
    }

    /// The file name CRIU gives this kind for object `id` (pid, pages id, ...), from the first
    /// pattern. Kinds without a number ignore `id`.
    pub fn file_name(&self, id: u64) -> String {
        let pat = self.files[0];
        pat.replace("%u", &id.to_string())
            .replace("%d", &id.to_string())
            .replace("%x", &format!("{id:x}"))
            .replace("%s", &id.to_string())
    }
}

macro_rules! kinds {
    ($( $var:ident => $name:literal, $magic:literal, $head:ident, $msg:expr, $first:expr, $pl:ident, [$($f:literal),*]; )*) => {
        /// One variant per image kind (crit's magic names).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ImageKind { $( #[doc = $name] $var, )* }

        /// Every kind, in the order of CRIU's magic.h.
        pub static KINDS: &[KindInfo] = &[ $( KindInfo {
            kind: ImageKind::$var,
            name: $name,
            magic: $magic,
            head: HeadMagic::$head,
            message: $msg,
            first_message: $first,
            payload: PayloadKind::$pl,
            files: &[$($f),*],
        }, )* ];
    };
}

const fn m(s: &'static str) -> Option<&'static str> {
    Some(s)
}

kinds! {
    Inventory => "INVENTORY", 0x5831_3116, None, m("criu.inventory_entry"), None, None, ["inventory.img"];
    Pstree => "PSTREE", 0x5027_3030, Common, m("criu.pstree_entry"), None, None, ["pstree.img"];
    Fdinfo => "FDINFO", 0x5621_3732, Common, m("criu.fdinfo_entry"), None, None, ["fdinfo-%u.img"];
    Pagemap => "PAGEMAP", 0x5608_4025, Common, m("criu.pagemap_entry"), m("criu.pagemap_head"), None, ["pagemap-%u.img", "pagemap-shmem-%u.img"];
    Core => "CORE", 0x5505_3847, Common, m("criu.core_entry"), None, None, ["core-%u.img"];
    Ids => "IDS", 0x5443_2030, Common, m("criu.task_kobj_ids_entry"), None, None, ["ids-%u.img"];
    Vmas => "VMAS", 0x5412_3737, Common, m("criu.vma_entry"), None, None, ["vmas-%u.img"];
    Pipes => "PIPES", 0x5651_3555, Common, m("criu.pipe_entry"), None, None, ["pipes.img"];
    PipesData => "PIPES_DATA", 0x5645_3709, Common, m("criu.pipe_data_entry"), None, PipeData, ["pipes-data.img"];
    Fifo => "FIFO", 0x5836_4939, Common, m("criu.fifo_entry"), None, None, ["fifo.img"];
    FifoData => "FIFO_DATA", 0x5933_3054, Common, m("criu.pipe_data_entry"), None, PipeData, ["fifo-data.img"];
    Sigact => "SIGACT", 0x5534_4201, Common, m("criu.sa_entry"), None, None, ["sigacts-%u.img"];
    Unixsk => "UNIXSK", 0x5437_3943, Common, m("criu.unix_sk_entry"), None, None, ["unixsk.img"];
    Inetsk => "INETSK", 0x5644_3851, Common, m("criu.inet_sk_entry"), None, None, ["inetsk.img"];
    Packetsk => "PACKETSK", 0x6045_4618, Common, m("criu.packet_sock_entry"), None, None, ["packetsk.img"];
    Itimers => "ITIMERS", 0x5746_4056, Common, m("criu.itimer_entry"), None, None, ["itimers-%u.img"];
    PosixTimers => "POSIX_TIMERS", 0x5260_3957, Common, m("criu.posix_timer_entry"), None, None, ["posix-timers-%u.img"];
    SkQueues => "SK_QUEUES", 0x5626_4026, Common, m("criu.sk_packet_entry"), None, SkQueue, ["sk-queues.img"];
    Utsns => "UTSNS", 0x5447_3203, Common, m("criu.utsns_entry"), None, None, ["utsns-%u.img"];
    Creds => "CREDS", 0x5402_3547, Common, m("criu.creds_entry"), None, None, ["creds-%u.img"];
    IpcVar => "IPC_VAR", 0x5311_5007, Common, m("criu.ipc_var_entry"), None, None, ["ipcns-var-%u.img"];
    IpcnsShm => "IPCNS_SHM", 0x4628_3044, Common, m("criu.ipc_shm_entry"), None, IpcShm, ["ipcns-shm-%u.img"];
    IpcnsMsg => "IPCNS_MSG", 0x5545_3737, Common, m("criu.ipc_msg_entry"), None, IpcMsg, ["ipcns-msg-%u.img"];
    IpcnsSem => "IPCNS_SEM", 0x5957_3019, Common, m("criu.ipc_sem_entry"), None, IpcSem, ["ipcns-sem-%u.img"];
    RegFiles => "REG_FILES", 0x5036_3636, Common, m("criu.reg_file_entry"), None, None, ["reg-files.img"];
    ExtFiles => "EXT_FILES", 0x5925_5641, Common, m("criu.ext_file_entry"), None, None, ["ext-files.img"];
    Fs => "FS", 0x5140_3912, Common, m("criu.fs_entry"), None, None, ["fs-%u.img"];
    Mm => "MM", 0x5749_2820, Common, m("criu.mm_entry"), None, None, ["mm-%u.img"];
    RemapFpath => "REMAP_FPATH", 0x5913_3954, Common, m("criu.remap_file_path_entry"), None, None, ["remap-fpath.img"];
    GhostFile => "GHOST_FILE", 0x5258_3605, Common, m("criu.ghost_chunk_entry"), m("criu.ghost_file_entry"), GhostFile, ["ghost-file-%x.img"];
    TcpStream => "TCP_STREAM", 0x5146_5506, Common, m("criu.tcp_stream_entry"), None, TcpStream, ["tcp-stream-%x.img"];
    EventfdFile => "EVENTFD_FILE", 0x4452_3722, Common, m("criu.eventfd_file_entry"), None, None, ["eventfd.img"];
    EventpollFile => "EVENTPOLL_FILE", 0x4502_3858, Common, m("criu.eventpoll_file_entry"), None, None, ["eventpoll.img"];
    EventpollTfd => "EVENTPOLL_TFD", 0x4443_3746, Common, m("criu.eventpoll_tfd_entry"), None, None, ["eventpoll-tfd.img"];
    Signalfd => "SIGNALFD", 0x5732_3820, Common, m("criu.signalfd_entry"), None, None, ["signalfd.img"];
    InotifyFile => "INOTIFY_FILE", 0x4842_4431, Common, m("criu.inotify_file_entry"), None, None, ["inotify.img"];
    InotifyWd => "INOTIFY_WD", 0x5456_2009, Common, m("criu.inotify_wd_entry"), None, None, ["inotify-wd.img"];
    Mnts => "MNTS", 0x5556_3928, Common, m("criu.mnt_entry"), None, None, ["mountpoints-%u.img"];
    Netdev => "NETDEV", 0x5737_3951, Common, m("criu.net_device_entry"), None, None, ["netdev-%u.img"];
    Netns => "NETNS", 0x5593_3752, Common, m("criu.netns_entry"), None, None, ["netns-%u.img"];
    TtyFiles => "TTY_FILES", 0x5943_3025, Common, m("criu.tty_file_entry"), None, None, ["tty.img"];
    TtyInfo => "TTY_INFO", 0x5945_3036, Common, m("criu.tty_info_entry"), None, None, ["tty-info.img"];
    TtyData => "TTY_DATA", 0x5941_3026, Common, m("criu.tty_data_entry"), None, None, ["tty-data.img"];
    FileLocks => "FILE_LOCKS", 0x5432_3616, Common, m("criu.file_lock_entry"), None, None, ["filelocks.img", "filelocks-%d.img"];
    Rlimit => "RLIMIT", 0x5711_3925, Common, m("criu.rlimit_entry"), None, None, ["rlimit-%u.img"];
    FanotifyFile => "FANOTIFY_FILE", 0x5509_6122, Common, m("criu.fanotify_file_entry"), None, None, ["fanotify.img"];
    FanotifyMark => "FANOTIFY_MARK", 0x5650_6035, Common, m("criu.fanotify_mark_entry"), None, None, ["fanotify-mark.img"];
    Signal => "SIGNAL", 0x5925_5647, Common, m("criu.siginfo_entry"), None, None, ["signal-s-%u.img", "signal-p-%u.img"];
    NetlinkSk => "NETLINK_SK", 0x5800_5614, Common, m("criu.netlink_sk_entry"), None, None, ["netlinksk.img"];
    NsFiles => "NS_FILES", 0x6139_4011, Common, m("criu.ns_file_entry"), None, None, ["ns-files.img"];
    Tunfile => "TUNFILE", 0x5714_3751, Common, m("criu.tunfile_entry"), None, None, ["tunfile.img"];
    Cgroup => "CGROUP", 0x5938_3330, Common, m("criu.cgroup_entry"), None, None, ["cgroup.img"];
    Timerfd => "TIMERFD", 0x5049_3712, Common, m("criu.timerfd_entry"), None, None, ["timerfd.img"];
    Cpuinfo => "CPUINFO", 0x6140_4013, Common, m("criu.cpuinfo_entry"), None, None, ["cpuinfo.img"];
    Userns => "USERNS", 0x5547_4906, Common, m("criu.userns_entry"), None, None, ["userns-%u.img"];
    Seccomp => "SECCOMP", 0x6441_3049, Common, m("criu.seccomp_entry"), None, None, ["seccomp.img"];
    BinfmtMisc => "BINFMT_MISC", 0x6734_3323, Common, m("criu.binfmt_misc_entry"), None, None, ["binfmt-misc.img", "binfmt-misc-%u.img"];
    Autofs => "AUTOFS", 0x4935_3943, Common, m("criu.autofs_entry"), None, None, ["autofs-%u.img"];
    Files => "FILES", 0x5630_3138, Common, m("criu.file_entry"), None, None, ["files.img"];
    MemfdInode => "MEMFD_INODE", 0x4845_3499, Common, m("criu.memfd_inode_entry"), None, None, ["memfd.img"];
    Timens => "TIMENS", 0x4311_4433, Common, m("criu.timens_entry"), None, None, ["timens-%u.img"];
    Pidns => "PIDNS", 0x6115_7326, Common, m("criu.pidns_entry"), None, None, ["pidns-%u.img"];
    BpfmapFile => "BPFMAP_FILE", 0x5750_6142, Common, m("criu.bpfmap_file_entry"), None, None, ["bpfmap-file.img"];
    BpfmapData => "BPFMAP_DATA", 0x6432_4033, Common, m("criu.bpfmap_data_entry"), None, BpfmapData, ["bpfmap-data.img"];
    Apparmor => "APPARMOR", 0x5942_3047, Common, m("criu.apparmor_entry"), None, None, ["apparmor.img"];
    Stats => "STATS", 0x5709_3306, Service, m("criu.stats_entry"), None, None, ["stats-%s"];
    IrmapCache => "IRMAP_CACHE", 0x5700_4059, Service, m("criu.irmap_cache_entry"), None, None, ["irmap-cache.img"];
    Pages => "PAGES", 0, Raw, None, None, None, ["pages-%u.img"];
    Ifaddr => "IFADDR", 0, Raw, None, None, None, ["ifaddr-%u.img"];
    Route => "ROUTE", 0, Raw, None, None, None, ["route-%u.img"];
    Route6 => "ROUTE6", 0, Raw, None, None, None, ["route6-%u.img"];
    Rule => "RULE", 0, Raw, None, None, None, ["rule-%u.img"];
    Iptables => "IPTABLES", 0, Raw, None, None, None, ["iptables-%u.img"];
    Ip6tables => "IP6TABLES", 0, Raw, None, None, None, ["ip6tables-%u.img"];
    Nftables => "NFTABLES", 0, Raw, None, None, None, ["nftables-%u.img"];
    TmpfsImg => "TMPFS_IMG", 0, Raw, None, None, None, ["tmpfs-%u.tar.gz"];
    TmpfsDev => "TMPFS_DEV", 0, Raw, None, None, None, ["tmpfs-dev-%u.tar.gz"];
    NetnfCt => "NETNF_CT", 0, Raw, None, None, None, ["netns-ct-%u.img"];
    NetnfExp => "NETNF_EXP", 0, Raw, None, None, None, ["netns-exp-%u.img"];
}

impl ImageKind {
    /// The static description of this kind.
    pub fn info(self) -> &'static KindInfo {
        // The table is in declaration order, so the discriminant is the index.
        &KINDS[self as usize]
    }

    /// crit's name of the kind.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// True for kinds without magic and entries (pages-N.img, ...).
    pub fn is_raw(self) -> bool {
        self.info().head == HeadMagic::Raw
    }

    /// Kind with image magic `magic` (raw kinds are never found: they have no magic).
    pub fn from_magic(magic: u32) -> Option<ImageKind> {
        if magic == 0 {
            return None;
        }
        KINDS.iter().find(|k| k.magic == magic).map(|k| k.kind)
    }

    /// Kind of crit name `name` (`"CORE"`, `"PIPES_DATA"`, ...).
    pub fn from_name(name: &str) -> Option<ImageKind> {
        KINDS.iter().find(|k| k.name == name).map(|k| k.kind)
    }

    /// Kind of a file by its name (no directory part): `core-1.img`, `pagemap-shmem-7.img`,
    /// `pages-3.img`, `stats-dump`, legacy `creds-1.img`, ...
    pub fn from_file_name(name: &str) -> Option<ImageKind> {
        KINDS
            .iter()
            .find(|k| k.files.iter().any(|p| pattern_matches(p, name)))
            .map(|k| k.kind)
    }
}

impl std::fmt::Display for ImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Matches `name` against a pattern with at most one `%u`/`%d`/`%x`/`%s` conversion.
fn pattern_matches(pat: &str, name: &str) -> bool {
    let Some(pos) = pat.find('%') else {
        return pat == name;
    };
    let (prefix, rest) = pat.split_at(pos);
    let conv = rest.as_bytes().get(1).copied().unwrap_or(0);
    let suffix = &rest[2.min(rest.len())..];
    let Some(mid) = name
        .strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(suffix))
    else {
        return false;
    };
    if mid.is_empty() {
        return false;
    }
    match conv {
        b'u' => mid.bytes().all(|b| b.is_ascii_digit()),
        b'd' => {
            let digits = mid.strip_prefix('-').unwrap_or(mid);
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }
        b'x' => mid.bytes().all(|b| b.is_ascii_hexdigit()),
        b's' => !mid.contains('/'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_enum_order_and_magics_unique() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(k.kind as usize, i, "{}", k.name);
            if k.magic != 0 {
                assert_eq!(ImageKind::from_magic(k.magic), Some(k.kind), "{}", k.name);
            }
            assert_eq!(ImageKind::from_name(k.name), Some(k.kind));
            assert_eq!(k.message.is_none(), k.head == HeadMagic::Raw, "{}", k.name);
        }
    }

    #[test]
    fn file_names_map_to_kinds() {
        let cases = [
            ("inventory.img", ImageKind::Inventory),
            ("core-30000.img", ImageKind::Core),
            ("pagemap-shmem-6125.img", ImageKind::Pagemap),
            ("pagemap-1.img", ImageKind::Pagemap),
            ("pages-2.img", ImageKind::Pages),
            ("creds-12.img", ImageKind::Creds),
            ("sigacts-3.img", ImageKind::Sigact),
            ("vmas-3.img", ImageKind::Vmas),
            ("rlimit-3.img", ImageKind::Rlimit),
            ("itimers-3.img", ImageKind::Itimers),
            ("posix-timers-3.img", ImageKind::PosixTimers),
            ("signal-p-3.img", ImageKind::Signal),
            ("signal-s-3.img", ImageKind::Signal),
            ("reg-files.img", ImageKind::RegFiles),
            ("ghost-file-1a.img", ImageKind::GhostFile),
            ("stats-dump", ImageKind::Stats),
            ("stats-restore", ImageKind::Stats),
            ("netns-ct-4.img", ImageKind::NetnfCt),
            ("netns-4.img", ImageKind::Netns),
            ("tmpfs-dev-4.tar.gz", ImageKind::TmpfsDev),
            ("filelocks-12.img", ImageKind::FileLocks),
        ];
        for (name, kind) in cases {
            assert_eq!(ImageKind::from_file_name(name), Some(kind), "{name}");
        }
        for bad in [
            "core-.img",
            "core-x.img",
            "dump.log",
            "core-1.img.json",
            "pages-1",
        ] {
            assert_eq!(ImageKind::from_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_name_formatting() {
        assert_eq!(ImageKind::Core.info().file_name(42), "core-42.img");
        assert_eq!(
            ImageKind::GhostFile.info().file_name(26),
            "ghost-file-1a.img"
        );
        assert_eq!(ImageKind::Files.info().file_name(0), "files.img");
    }
}
