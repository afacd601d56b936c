//! Small images: `inventory.img`, `ids-PID.img`, `fs-PID.img`, `seccomp.img`, `timens-0.img`,
//! `stats-dump`.

use std::collections::HashMap;

use stasis_images::pb;

use crate::proc::ns::NsIds;

/// `inventory.img` format version CRIU 4.2 writes.
pub const IMG_VERSION: u32 = 2;

/// Assigns CRIU's small ids to namespaces (first seen, first numbered) and to per-process
/// kernel objects (mm, files table, fs, sighand: one per process here).
#[derive(Debug, Default)]
pub struct IdAllocator {
    ns: HashMap<(&'static str, u64), u32>,
    next_ns: u32,
    next_obj: u32,
}

impl IdAllocator {
    pub fn new() -> Self {
        // Object id 1 is the dumper's own (inventory.root_ids); tasks start at 2.
        IdAllocator {
            ns: HashMap::new(),
            next_ns: 0,
            next_obj: 1,
        }
    }

    fn ns_id(&mut self, kind: &'static str, ino: Option<u64>) -> Option<u32> {
        let ino = ino?;
        if let Some(&id) = self.ns.get(&(kind, ino)) {
            return Some(id);
        }
        self.next_ns += 1;
        self.ns.insert((kind, ino), self.next_ns);
        Some(self.next_ns)
    }

    /// A fresh object id (vm/files/fs/sighand of one process).
    pub fn object(&mut self) -> u32 {
        self.next_obj += 1;
        self.next_obj
    }

    /// The `task_kobj_ids_entry` with the namespace ids and object ids `obj`.
    pub fn ids_entry(&mut self, ns: &NsIds, obj: [u32; 4]) -> pb::TaskKobjIdsEntry {
        // CRIU numbers namespaces in this order (a struct literal's fields are evaluated in
        // the order written).
        pb::TaskKobjIdsEntry {
            vm_id: obj[0],
            files_id: obj[1],
            fs_id: obj[2],
            sighand_id: obj[3],
            pid_ns_id: self.ns_id("pid", ns.pid),
            net_ns_id: self.ns_id("net", ns.net),
            ipc_ns_id: self.ns_id("ipc", ns.ipc),
            uts_ns_id: self.ns_id("uts", ns.uts),
            time_ns_id: self.ns_id("time", ns.time),
            mnt_ns_id: self.ns_id("mnt", ns.mnt),
            user_ns_id: self.ns_id("user", ns.user),
            cgroup_ns_id: self.ns_id("cgroup", ns.cgroup),
        }
    }
}

/// A random version-4 UUID for `dump_criu_run_id`.
pub fn run_id() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (t ^ (std::process::id() as u128) << 64).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The `inventory_entry`.
pub fn inventory(root_ids: pb::TaskKobjIdsEntry, root_cg_set: u32) -> pb::InventoryEntry {
    pb::InventoryEntry {
        img_version: IMG_VERSION,
        fdinfo_per_id: Some(true),
        root_ids: Some(root_ids),
        ns_per_id: Some(true),
        root_cg_set: Some(root_cg_set),
        lsmtype: Some(0),
        network_lock_method: Some(0),
        plugins_entry: Some(pb::PluginsEntry::default()),
        dump_criu_run_id: Some(run_id()),
        ..Default::default()
    }
}

/// The `fs_entry`.
pub fn fs_entry(cwd_id: u32, root_id: u32, umask: u32) -> pb::FsEntry {
    pb::FsEntry {
        cwd_id,
        root_id,
        umask: Some(umask),
    }
}

/// The `timens_entry`: the host's monotonic and boottime clocks now.
pub fn timens() -> pb::TimensEntry {
    use nix::time::{clock_gettime, ClockId};
    // Both clocks count from boot: never negative.
    let ts = |c| {
        clock_gettime(c)
            .map(|t| pb::Timespec {
                tv_sec: t.tv_sec().unsigned_abs(),
                tv_nsec: t.tv_nsec().unsigned_abs(),
            })
            .unwrap_or_default()
    };
    pb::TimensEntry {
        monotonic: ts(ClockId::CLOCK_MONOTONIC),
        boottime: ts(ClockId::CLOCK_BOOTTIME),
    }
}

/// Times and counters of one dump for `stats-dump` (microseconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpStats {
    pub freezing_time: u64,
    pub frozen_time: u64,
    pub memdump_time: u64,
    pub memwrite_time: u64,
    pub pages: super::pages::PageStats,
    pub page_pipes: u64,
    /// Pages left to the parent image (`PE_PARENT`).
    pub parent_pages: u64,
}

/// A time for a 32-bit field of `stats-dump` (microseconds: 71 minutes at most), saturated.
fn stat_time(us: u64) -> u32 {
    u32::try_from(us).unwrap_or(u32::MAX)
}

/// The `stats_entry`.
pub fn stats(s: &DumpStats) -> pb::StatsEntry {
    pb::StatsEntry {
        dump: Some(pb::DumpStatsEntry {
            freezing_time: stat_time(s.freezing_time),
            frozen_time: stat_time(s.frozen_time),
            memdump_time: stat_time(s.memdump_time),
            memwrite_time: stat_time(s.memwrite_time),
            pages_scanned: s.pages.pages_scanned,
            pages_skipped_parent: s.parent_pages,
            pages_written: s.pages.pages_written,
            irmap_resolve: Some(0),
            pages_lazy: s.pages.pages_lazy,
            page_pipes: Some(s.page_pipes),
            page_pipe_bufs: Some(s.page_pipes),
            shpages_scanned: Some(s.pages.shpages_scanned),
            shpages_skipped_parent: Some(0),
            shpages_written: Some(s.pages.shpages_written),
        }),
        restore: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_ids_first_seen_first_numbered() {
        let mut a = IdAllocator::new();
        let ns = crate::proc::ns::read(std::process::id() as i32).unwrap();
        let o = [a.object(), a.object(), a.object(), a.object()];
        let e = a.ids_entry(&ns, o);
        assert_eq!(e.vm_id, 2);
        assert_eq!(e.pid_ns_id, Some(1));
        assert_eq!(e.net_ns_id, Some(2));
        assert_eq!(e.mnt_ns_id, Some(6));
        let e2 = a.ids_entry(&ns, o);
        assert_eq!(e, e2);
    }

    #[test]
    fn uuid_shape() {
        let u = run_id();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
