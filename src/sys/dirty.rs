//! Kernel interfaces of dirty-page tracking: userfaultfd write-protect in asynchronous mode
//! armed and read with the `PAGEMAP_SCAN` ioctl, and soft-dirty (`clear_refs` + pagemap bit
//! 55) where the kernel has it.
//!
//! ```text
//!  uffd (made in the target by the parasite, handed over)
//!    api(fd)                      UFFDIO_API {UFFD_API, WP_ASYNC | WP_UNPOPULATED}
//!    register_wp(fd, start, len)  UFFDIO_REGISTER mode WP (EBUSY: another userfaultfd has it)
//!  /proc/PID/pagemap
//!    scan_written(pm, s, e, arm)  PAGEMAP_SCAN category_mask = return_mask = PAGE_IS_WRITTEN
//!                                 [| PM_SCAN_WP_MATCHING: write-protect what it reports, in
//!                                 the same walk] | PM_SCAN_CHECK_WPASYNC (EPERM when a VMA
//!                                 of the range is not armed for async write-protect)
//!  /proc/PID/clear_refs           "4": clear the soft-dirty bits
//! ```

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// `UFFD_API`.
const UFFD_API: u64 = 0xAA;
/// `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
/// `UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
/// `UFFDIO_REGISTER_MODE_WP`.
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
/// `UFFD_FEATURE_WP_UNPOPULATED`: never-touched pages are write-protected too.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself (no reader).
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `userfaultfd(2)` flag: only faults from user mode (allowed without privilege).
pub const UFFD_USER_MODE_ONLY: u32 = 1;
/// `O_CLOEXEC | O_NONBLOCK` for `userfaultfd(2)`.
pub const UFFD_OPEN_FLAGS: u32 = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u32;

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
/// `PAGE_IS_WRITTEN`: written since write-protected (or never protected).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail (EPERM) on a VMA not armed for async write-protect.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// Enables asynchronous write-protect (`WP_ASYNC | WP_UNPOPULATED`) on a fresh userfaultfd.
pub fn api(uffd: BorrowedFd<'_>) -> Result<(), Errno> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `a` is.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut a) };
    Errno::result(r).map(drop)
}

/// Registers `[start, start + len)` (one VMA) of the userfaultfd's mm in write-protect mode.
/// Registering a range the same userfaultfd holds already is a no-op.
pub fn register_wp(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut r = UffdioRegister {
        start,
        len,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register`, which `r` is.
    let ret = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut r) };
    Errno::result(ret).map(drop)
}

/// Regions reported per `PAGEMAP_SCAN` call.
const SCAN_VEC: usize = 512;

/// The written ranges (start, end; sorted, merged) of `[start, end)` in the task whose
/// `/proc/PID/pagemap` is `pagemap`; with `arm`, the same walk write-protects them again.
/// EPERM: part of the range is not armed for asynchronous write-protect.
pub fn scan_written(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    arm: bool,
) -> Result<Vec<(u64, u64)>, Errno> {
    scan(
        pagemap,
        start,
        end,
        PmScanArg {
            flags: PM_SCAN_CHECK_WPASYNC | if arm { PM_SCAN_WP_MATCHING } else { 0 },
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..Default::default()
        },
    )
}

/// The matching ranges (start, end; sorted, merged) of `[start, end)` by `PAGEMAP_SCAN`
/// calls of `query` (its flags and category masks; the walk fields are set here).
fn scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    query: PmScanArg,
) -> Result<Vec<(u64, u64)>, Errno> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut vec = vec![PageRegion::default(); SCAN_VEC];
    let mut at = start;
    while at < end {
        let mut a = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end,
            vec: vec.as_mut_ptr() as u64,
            vec_len: SCAN_VEC as u64,
            ..query
        };
        // SAFETY: PAGEMAP_SCAN reads `a` and writes up to `vec_len` page_regions into `vec`,
        // which has that many; it writes `walk_end` back into `a`.
        let n = Errno::result(unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut a) })?;
        for r in &vec[..(n as usize).min(SCAN_VEC)] {
            match out.last_mut() {
                Some(l) if l.1 == r.start => l.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if a.walk_end <= at {
            return Err(Errno::EIO);
        }
        at = a.walk_end;
    }
    Ok(out)
}

/// `PAGE_IS_FILE`: a file page (or shared anonymous memory), as pagemap's `PM_FILE`.
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// `PAGE_IS_PRESENT`: in memory, as pagemap's `PM_PRESENT`.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`: swapped out, as pagemap's `PM_SWAP`.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// Which pages a [`scan_ranges`] reports: those whose categories, with `inverted` flipped,
/// have every bit of `all` and (when not 0) one bit of `any`.
#[derive(Debug, Clone, Copy)]
pub struct ScanFilter {
    pub inverted: u64,
    pub all: u64,
    pub any: u64,
}

/// The ranges (start, end; merged) of [start, end) matching `filter`, by `PAGEMAP_SCAN` on
/// an open `/proc/PID/pagemap`: one ioctl per 1024 ranges instead of 8 bytes read per page.
/// ENOTTY/EINVAL: the kernel has no PAGEMAP_SCAN (before 6.7).
pub fn scan_ranges(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    filter: ScanFilter,
) -> Result<Vec<(u64, u64)>, Errno> {
    scan(
        pagemap,
        start,
        end,
        PmScanArg {
            category_inverted: filter.inverted,
            category_mask: filter.all,
            category_anyof_mask: filter.any,
            return_mask: filter.all | filter.any,
            ..Default::default()
        },
    )
}

/// Clears the soft-dirty bits of every page of `pid` (`echo 4 > /proc/PID/clear_refs`).
pub fn clear_soft_dirty(pid: i32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "4")
}
