//! Dirty-page tracking between dumps: which pages a process wrote since the previous
//! (pre-)dump, so that an incremental dump copies only those and points at its parent image
//! (`PE_PARENT`) for the rest.
//!
//! # Methods
//!
//! ```text
//!  uffd-wp   userfaultfd write-protect, asynchronous mode (kernel >= 6.7): the parasite makes
//!            a userfaultfd in the target (WP_ASYNC | WP_UNPOPULATED; UFFD_USER_MODE_ONLY when
//!            the kernel refuses the plain one), sends it over SCM_RIGHTS and closes its copy:
//!            the target's descriptor table is unchanged. The tracker registers every VMA in
//!            WP mode and arms/reads it with PAGEMAP_SCAN on /proc/PID/pagemap (PAGE_IS_WRITTEN,
//!            PM_SCAN_WP_MATCHING). The kernel resolves the write faults itself: the target
//!            never waits for anybody, even when the tracker is gone.
//!  soft-dirty where the kernel has it (CONFIG_MEM_SOFT_DIRTY): clear_refs "4", pagemap bit 55.
//!            Same interface ([`track::Handle::SoftDirty`]); not testable on kernels without it.
//! ```
//! `stasis check --feature mem_dirty_track` says which one works here ([`detect`]).
//!
//! # Where the handles live between commands
//!
//! A userfaultfd's write-protection lasts only while a reference to it is open (closing the
//! last one unregisters every VMA: every page then reads as written). `pre-dump` and `dump`
//! are separate commands, so the handles live in a small **tracker process**:
//!
//! ```text
//!  pre-dump #1 (no tracker in the parent) ── spawns `stasis dirty-tracker` (own session,
//!       │      stdio closed), listening on the abstract unix socket "@stasis-dirty-<pid>-<n>"
//!       │      (only its own uid or root may talk: SO_PEERCRED)
//!       │      per process: uffd from the parasite ── adopt(pid, identity) + fd ──► tracker
//!       │                   collect(vmas) ──► tracker registers + arms; answer: all dirty
//!       └─ writes DIR/dirty-tracker.json {"socket": name, "pid": tracker pid}
//!  pre-dump #2 / dump --prev-images-dir ../1 (reads ../1/dirty-tracker.json)
//!       │      per process: collect(vmas) ──► written ranges per VMA, re-armed in the same
//!       │      walk (a process the tracker does not know is adopted: all dirty)
//!       └─ writes DIR/dirty-tracker.json again (the chain goes on)
//!  final dump without --track-mem ── stop ──► the tracker exits (its handles close)
//!  the tracker exits by itself when every process it tracks is gone (checked each second)
//! ```
//! If the tracker is gone (killed, machine rebooted), the next dump finds no tracker and
//! dumps everything: never a stale page.
//!
//! # Limits
//!
//! - While a process is tracked, its VMAs are registered with the tracker's userfaultfd: an
//!   application that registers its own userfaultfd on one of them afterwards gets EBUSY
//!   (one registered before tracking starts is simply never tracked).
//! - The soft-dirty path is written to the same interface but cannot be tested on kernels
//!   without CONFIG_MEM_SOFT_DIRTY (such as the one this was developed on).
//! - The tracker serves one dump command at a time.
//!
//! # What counts as dirty
//!
//! Everything that cannot be proven clean ([`Dirt::All`]): VMAs new or moved since the last
//! arming (mmap, mremap), a VMA another userfaultfd holds (UFFDIO_REGISTER answers EBUSY), a
//! process the tracker does not know (a child forked after arming), a process whose
//! identity changed (exec, a reused pid: start time and code/stack addresses differ), a lost
//! handle. A page is written as `PE_PARENT` only if it is clean **and** the parent's pagemap
//! has it ([`parent::ParentPages`]).

pub mod client;
pub(crate) mod daemon;
pub(crate) mod parent;
pub(crate) mod session;
pub mod track;

/// How pages of one VMA changed since the last arming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dirt {
    /// Not tracked: every page counts as written.
    All,
    /// Tracked: these ranges (start, end; sorted) were written.
    Written(Vec<(u64, u64)>),
}

/// A tracking method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// userfaultfd write-protect (async) + PAGEMAP_SCAN.
    UffdWp,
    /// Soft-dirty bits.
    SoftDirty,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::UffdWp => "uffd-wp-async",
            Method::SoftDirty => "soft-dirty",
        }
    }
}

/// Written pages of one process, by VMA: what the page source asks.
#[derive(Debug, Clone, Default)]
pub struct DirtyMap {
    /// (start, end, dirt), sorted by start. Addresses outside every VMA listed are dirty.
    vmas: Vec<(u64, u64, Dirt)>,
}

impl DirtyMap {
    /// Everything dirty.
    pub fn all() -> Self {
        DirtyMap::default()
    }

    /// From the tracker's answer for `vmas`.
    pub fn new(vmas: &[(u64, u64)], dirt: Vec<Dirt>) -> Self {
        let mut v: Vec<(u64, u64, Dirt)> = vmas
            .iter()
            .zip(dirt)
            .map(|(&(s, e), d)| (s, e, d))
            .collect();
        v.sort_by_key(|x| x.0);
        DirtyMap { vmas: v }
    }

    /// The clean sub-ranges of `[start, end)` (sorted).
    pub fn clean_in(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let i = self.vmas.partition_point(|v| v.1 <= start);
        for (vs, ve, d) in &self.vmas[i..] {
            if *vs >= end {
                break;
            }
            let (s, e) = ((*vs).max(start), (*ve).min(end));
            let Dirt::Written(w) = d else { continue };
            // The complement of `w` inside [s, e).
            let mut at = s;
            let j = w.partition_point(|r| r.1 <= s);
            for &(ws, we) in &w[j..] {
                if ws >= e {
                    break;
                }
                if ws > at {
                    out.push((at, ws));
                }
                at = at.max(we);
            }
            if at < e {
                out.push((at, e));
            }
        }
        out
    }

    /// Pages reported written (for the log and tests); `None` for untracked VMAs.
    pub fn written_pages(&self) -> (u64, u64) {
        let mut tracked = 0;
        let mut untracked = 0;
        for (s, e, d) in &self.vmas {
            match d {
                Dirt::All => untracked += (e - s) / 4096,
                Dirt::Written(w) => tracked += w.iter().map(|r| (r.1 - r.0) / 4096).sum::<u64>(),
            }
        }
        (tracked, untracked)
    }
}

/// Which tracking method works on this kernel, tried on a private mapping of this process.
pub fn detect() -> Result<Method, String> {
    use crate::sys::dirty as kd;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let try_uffd = || -> Result<(), String> {
        let mut fd = -1;
        for flags in [
            kd::UFFD_OPEN_FLAGS,
            kd::UFFD_OPEN_FLAGS | kd::UFFD_USER_MODE_ONLY,
        ] {
            // SAFETY: userfaultfd(2) takes flags only and returns a new descriptor.
            fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as i32;
            if fd >= 0 {
                break;
            }
        }
        if fd < 0 {
            return Err(format!("userfaultfd: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor owned by nobody else.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
        kd::api(uffd.as_fd()).map_err(|e| format!("UFFDIO_API WP_ASYNC: {e}"))?;
        let len = 4 * 4096u64;
        // SAFETY: a new private anonymous mapping wherever the kernel puts it: no memory in
        // use is affected; only this function touches it, and unmaps it below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let map = p as u64;
        let r = (|| {
            kd::register_wp(uffd.as_fd(), map, len).map_err(|e| format!("register: {e}"))?;
            let pm = std::fs::File::open("/proc/self/pagemap").map_err(|e| e.to_string())?;
            kd::scan_written(pm.as_fd(), map, map + len, true)
                .map_err(|e| format!("PAGEMAP_SCAN: {e}"))?;
            // SAFETY: `map` is our own writable mapping of `len` bytes.
            unsafe { std::ptr::write_volatile((map + 4096) as *mut u8, 1) };
            let w = kd::scan_written(pm.as_fd(), map, map + len, false)
                .map_err(|e| format!("PAGEMAP_SCAN: {e}"))?;
            if w == vec![(map + 4096, map + 8192)] {
                Ok(())
            } else {
                Err(format!("PAGEMAP_SCAN reported {w:x?} after one write"))
            }
        })();
        // SAFETY: unmapping the mapping made above, which nothing else references.
        unsafe { libc::munmap(map as *mut libc::c_void, len as usize) };
        r
    };
    let uffd_err = match try_uffd() {
        Ok(()) => return Ok(Method::UffdWp),
        Err(e) => e,
    };
    let sd = std::fs::File::open("/proc/self/pagemap").is_ok()
        && kd::clear_soft_dirty(std::process::id() as i32).is_ok()
        && soft_dirty_works();
    if sd {
        return Ok(Method::SoftDirty);
    }
    Err(format!(
        "no dirty-page tracking: uffd-wp: {uffd_err}; soft-dirty: not in this kernel"
    ))
}

/// A page written after clear_refs reads soft-dirty (kernels without CONFIG_MEM_SOFT_DIRTY
/// accept clear_refs 4 but never set the bit).
pub(crate) fn soft_dirty_works() -> bool {
    use crate::proc::pagemap::{PagemapReader, PM_SOFT_DIRTY};
    let mut page = vec![0u8; 8192];
    let addr = (page.as_ptr() as u64 + 4095) & !4095;
    let _ = crate::sys::dirty::clear_soft_dirty(std::process::id() as i32);
    // SAFETY: addr lies inside `page`, which we own.
    unsafe { std::ptr::write_volatile(addr as *mut u8, 7) };
    let me = std::process::id() as i32;
    let mut dirty = false;
    if let Ok(pm) = PagemapReader::open(me) {
        let _ = pm.for_each(addr, addr + 4096, |_, e| dirty = e & PM_SOFT_DIRTY != 0);
    }
    page[0] = 1;
    dirty
}

/// `ranges` sorted and merged (overlapping or adjacent ranges joined).
pub fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(l) if l.1 >= s => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The system's uptime in microseconds, as CRIU stores it in the inventory's `dump_uptime`.
pub fn uptime_us() -> u64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let first = text.split_whitespace().next().unwrap_or("0");
    let (sec, frac) = first.split_once('.').unwrap_or((first, "0"));
    let sec: u64 = sec.parse().unwrap_or(0);
    let cs: u64 = frac.get(..2).unwrap_or(frac).parse().unwrap_or(0);
    sec * 1_000_000 + cs * 10_000
}

/// `DIR/parent -> REL` for `--prev-images-dir REL`, as CRIU makes it (an existing link is
/// replaced).
pub fn link_parent(opts: &crate::dump::DumpOptions) -> crate::dump::error::Result<()> {
    let Some(rel) = &opts.prev_images_dir else {
        return Ok(());
    };
    let link = opts.images_dir.join("parent");
    if link.symlink_metadata().is_ok() {
        let _ = std::fs::remove_file(&link);
    }
    std::os::unix::fs::symlink(rel, &link).map_err(|e| {
        crate::dump::error::DumpError::io(
            "images",
            opts.pid,
            &format!("link {} -> {}", link.display(), rel.display()),
            e,
        )
    })
}
