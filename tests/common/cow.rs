//! The forked-server workload of the copy-on-write tests (`restore_cow/fx-cow.c`: a parent
//! with 64 MiB of private memory and three workers sharing it) and what the outside sees of
//! its sharing: Pss, and which physical page backs an address (/proc/PID/pagemap, root).

use std::os::unix::fs::FileExt;
use std::path::Path;

use super::dump::{launch_cmd, tuned_cmd, Workload};
use super::workload::c_program;

/// The workload's source.
pub const SRC: &str = include_str!("../restore_cow/fx-cow.c");
/// Its area, in KiB.
pub const AREA_KB: u64 = 64 << 10;

/// Builds fx-cow (static, glibc tuned) and starts it in a cgroup of its own with its verdict
/// file in `work`; returns once it wrote READY.
pub fn launch(name: &str, base: i32, work: &Path) -> Workload {
    let bin = c_program("fx-cow", SRC, &["-static"]);
    let result = work.join("result");
    let cmd = format!("setsid {}", tuned_cmd(&bin, &[&result]));
    launch_cmd(name, base, &cmd, &result)
}

/// The tree as the workload reported it.
#[derive(Debug, Clone)]
pub struct CowTree {
    /// Start of the 64 MiB area.
    pub addr: u64,
    /// Parent first, then the three workers.
    pub pids: Vec<i32>,
}

impl CowTree {
    /// From the READY line in the workload's verdict file.
    pub fn of(w: &Workload) -> Self {
        let text = std::fs::read_to_string(&w.result).unwrap_or_default();
        let f: Vec<&str> = text.split_whitespace().collect();
        assert!(f.len() == 5 && f[0] == "READY", "fx-cow said {text:?}");
        let addr = u64::from_str_radix(f[1], 16).unwrap();
        let mut pids = vec![w.pid];
        pids.extend(f[2..].iter().map(|p| p.parse::<i32>().unwrap()));
        CowTree { addr, pids }
    }

    /// Sum of the Pss of the tree's processes, in KiB (the memory they use together).
    pub fn pss_kb(&self) -> u64 {
        self.pids.iter().map(|&p| rollup_kb(p, "Pss:")).sum()
    }

    /// Sum of their Rss, in KiB.
    pub fn rss_kb(&self) -> u64 {
        self.pids.iter().map(|&p| rollup_kb(p, "Rss:")).sum()
    }

    /// The physical page behind page `page` of the area in process `i` of [`Self::pids`].
    pub fn pfn(&self, i: usize, page: u64) -> Option<u64> {
        pfn(self.pids[i], self.addr + page * 4096)
    }

    /// Asserts the sharing the workload set up: untouched pages are one physical page in all
    /// four; a page a worker rewrote is its own; the parent's rewritten pages are its own;
    /// the range worker 3 dropped is not present in it. `siblings`: the workers also share
    /// the original of the pages the parent rewrote, as after the fork (a restore shares
    /// only what the parent has: there each worker has its own copy, as with CRIU).
    pub fn assert_shared(&self, when: &str, siblings: bool) {
        for page in [0, 5000, 9999, 16383] {
            let p: Vec<_> = (0..4).map(|i| self.pfn(i, page)).collect();
            assert!(
                p[0].is_some() && p.iter().all(|x| *x == p[0]),
                "{when}: page {page} is not one shared page: {p:?}"
            );
        }
        let own = |i: usize, page: u64| {
            let mine = self.pfn(i, page);
            assert!(
                mine.is_some(),
                "{when}: page {page} of process {i} is not present"
            );
            for j in (0..4).filter(|&j| j != i) {
                assert_ne!(
                    mine,
                    self.pfn(j, page),
                    "{when}: page {page} of process {i} is shared with {j}"
                );
            }
        };
        own(0, 10);
        own(1, 100);
        own(2, 16001);
        if siblings {
            assert_eq!(
                self.pfn(1, 10),
                self.pfn(3, 10),
                "{when}: the workers do not share the page the parent rewrote"
            );
        }
        assert_eq!(
            self.pfn(3, 3010),
            None,
            "{when}: a page worker 3 dropped is present in it"
        );
    }
}

/// A `smaps_rollup` field of `pid` in KiB (0 if unreadable).
fn rollup_kb(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The page frame number behind `addr` in `pid` (None: not present, or the zero page).
pub fn pfn(pid: i32, addr: u64) -> Option<u64> {
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).ok()?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr / 4096 * 8).ok()?;
    let e = u64::from_le_bytes(b);
    let pfn = e & ((1 << 55) - 1);
    (e >> 63 == 1 && pfn != 0 && Some(pfn) != zero_pfn()).then_some(pfn)
}

/// The zero page's frame number (a read fault of an untouched anonymous page maps it).
fn zero_pfn() -> Option<u64> {
    static ZERO: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| {
        // SAFETY: a fresh private anonymous mapping of our own, read once, then unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return None;
            }
            let _ = std::ptr::read_volatile(p as *const u8);
            let r = pfn_raw(p as u64);
            libc::munmap(p, 4096);
            r
        }
    })
}

fn pfn_raw(addr: u64) -> Option<u64> {
    let f = std::fs::File::open("/proc/self/pagemap").ok()?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr / 4096 * 8).ok()?;
    let e = u64::from_le_bytes(b);
    (e >> 63 == 1).then_some(e & ((1 << 55) - 1))
}
