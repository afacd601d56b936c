//! Memory helpers.
//!
//! - Reading and writing another task's memory through `/proc/PID/mem` (`pread`/`pwrite`):
//!   works on any mapping the kernel lets a tracer force (read-only and executable private
//!   mappings included), unlike `process_vm_writev`.
//! - Filling fresh anonymous memory of our own from a file without faults and without zeroing
//!   (the restore of private pages):
//!
//! ```text
//! Userfault::new()                        userfaultfd (one per task)
//! uf.register(start, len) -> MissingFill  MISSING mode, on an empty anonymous range
//! pread_buf(pages_fd, &mut buf, off)      a chunk of the pages image into a small buffer
//! fill.copy(dst, &buf)                    UFFDIO_COPY: the kernel allocates each page and
//!                                         copies into it (no clear_page, no fault)
//! drop(fill)                              UFFDIO_UNREGISTER: the VMA's flags are as before
//! ```

use super::error::{Error, Result};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;

/// Writes `data` at `addr` in process `pid`.
pub fn write(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    let path = format!("/proc/{pid}/mem");
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, &e))?;
    file.write_all_at(data, addr)
        .map_err(|e| Error::io("pwrite", &path, &e))
}

/// Reads `buf.len()` bytes at `addr` of process `pid`.
pub fn read(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let path = format!("/proc/{pid}/mem");
    let file = OpenOptions::new()
        .read(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, &e))?;
    file.read_exact_at(buf, addr)
        .map_err(|e| Error::io("pread", &path, &e))
}

// userfaultfd ABI (linux/userfaultfd.h), x86-64.
const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A userfaultfd of our own address space (no features, user faults only).
#[derive(Debug)]
pub struct Userfault {
    fd: OwnedFd,
}

impl Userfault {
    /// Creates the userfaultfd and handshakes the API.
    pub fn new() -> std::result::Result<Self, Errno> {
        // SAFETY: creates a new descriptor; no memory is touched.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | UFFD_USER_MODE_ONLY) };
        if raw < 0 {
            return Err(Errno::last());
        }
        // SAFETY: `raw` is a descriptor we just created and own alone.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes the struct we pass, nothing else.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } < 0 {
            return Err(Errno::last());
        }
        Ok(Self { fd })
    }

    /// Registers the private anonymous range `[start, start + len)` of our own address space
    /// for missing pages, until the returned [`MissingFill`] drops. The caller guarantees no
    /// Rust object refers to the range (a premapped VMA of a forked task). Pages already
    /// present stay as they are; [`MissingFill::copy`] only creates missing ones.
    pub fn register(&self, start: u64, len: u64) -> std::result::Result<MissingFill<'_>, Errno> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: registering changes no memory contents; a missing-page fault in the range
        // would block until filled, and only the range's owner (our caller) touches it.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } < 0 {
            return Err(Errno::last());
        }
        Ok(MissingFill {
            fd: &self.fd,
            range: (start, len),
        })
    }
}

/// A range registered on a [`Userfault`]; unregistered on drop, which leaves the VMA's flags
/// as they were.
#[derive(Debug)]
pub struct MissingFill<'a> {
    fd: &'a OwnedFd,
    range: (u64, u64),
}

impl MissingFill<'_> {
    /// Creates the pages of `[dst, dst + src.len())` (inside the registered range, page
    /// aligned) holding `src`.
    pub fn copy(&self, dst: u64, src: &[u8]) -> std::result::Result<(), Errno> {
        let (len, src) = (src.len() as u64, src.as_ptr() as u64);
        let (start, rlen) = self.range;
        if dst < start || dst + len > start + rlen || (dst | len) & 4095 != 0 {
            return Err(Errno::EINVAL);
        }
        let mut done = 0u64;
        while done < len {
            let mut c = UffdioCopy {
                dst: dst + done,
                src: src + done,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY only fills pages that are missing in the registered range
            // (EEXIST otherwise), which no Rust object refers to (register's contract); it
            // reads the source, a slice we borrow.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut c) };
            if c.copy > 0 {
                done += c.copy as u64;
            }
            if r < 0 {
                let e = Errno::last();
                if e != Errno::EAGAIN && e != Errno::EINTR {
                    return Err(e);
                }
            } else if c.copy <= 0 {
                done = len;
            }
        }
        Ok(())
    }
}

impl Drop for MissingFill<'_> {
    fn drop(&mut self) {
        let mut r = UffdioRange {
            start: self.range.0,
            len: self.range.1,
        };
        // SAFETY: unregisters the range we registered; memory contents are unchanged.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut r) };
    }
}

/// `mmap(addr, len, prot, flags | MAP_FIXED_NOREPLACE, fd, off)`: a new mapping at `addr`
/// exactly, or an error if anything is mapped there.
pub fn map_noreplace(
    addr: u64,
    len: u64,
    prot: i32,
    flags: i32,
    fd: RawFd,
    off: u64,
) -> std::result::Result<u64, Errno> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory Rust uses
    // is affected; the new range is not referenced by any Rust object.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            prot,
            flags | libc::MAP_FIXED_NOREPLACE,
            fd,
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(p as u64)
}

/// `madvise(addr, len, MADV_HUGEPAGE)`: later faults in the range may allocate huge pages.
/// The caller guarantees the range is a mapping of its own that no Rust object refers to.
pub fn advise_hugepage(addr: u64, len: u64) -> std::result::Result<(), Errno> {
    // SAFETY: MADV_HUGEPAGE changes only how future faults allocate; contents stay.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_HUGEPAGE) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `madvise(addr, len, MADV_DONTNEED)` on a private mapping of the caller's own that no Rust
/// object refers to: its pages are dropped (anonymous ones read as zero again, private file
/// ones as the file's page).
pub fn discard(addr: u64, len: u64) -> std::result::Result<(), Errno> {
    // SAFETY: caller's contract: nothing Rust uses lives in the range.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Whether the `data.len()` bytes at `addr`, a readable mapping of the caller's own that no
/// Rust object refers to and nothing writes meanwhile (a premap of a forked task), equal
/// `data`. A missing page is read as a fault would map it (never in a range registered on a
/// [`Userfault`]: the read would wait for a fill).
pub fn same_as_mapped(addr: u64, data: &[u8]) -> bool {
    // SAFETY: caller's contract: the range is mapped readable and not written while the
    // shared slice lives (only within this call).
    let mapped = unsafe { std::slice::from_raw_parts(addr as *const u8, data.len()) };
    mapped == data
}

/// `mprotect(addr, len, prot)` on a mapping of the caller's own that no Rust object refers to
/// (a premapped VMA of a forked task).
pub fn protect(addr: u64, len: u64, prot: i32) -> std::result::Result<(), Errno> {
    // SAFETY: caller's contract: nothing Rust uses lives in the range.
    let r = unsafe { libc::mprotect(addr as *mut libc::c_void, len as usize, prot) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `pread(fd, buf, off)` on a raw descriptor.
pub fn pread_buf(fd: RawFd, buf: &mut [u8], off: u64) -> std::result::Result<usize, Errno> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf, which we borrow mutably.
    let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as libc::off_t) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r as usize)
}

/// Writes `data` at `addr` of our own address space through `/proc/self/mem` (`mem`, opened
/// read-write): forces the write into a read-only private mapping (copy on write), as a
/// debugger would. The caller guarantees no Rust object refers to the range.
pub fn force_write_self(mem: &std::fs::File, addr: u64, data: &[u8]) -> std::io::Result<()> {
    mem.write_all_at(data, addr)
}

/// A private anonymous mapping used as a buffer (unmapped on drop). In a task forked from a
/// big process its pages are fresh: writing them costs no copy-on-write of the parent's heap
/// and no zeroing pass of an allocator.
#[derive(Debug)]
pub struct AnonBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl AnonBuf {
    /// Maps `len` bytes (a multiple of the page size), readable and writable.
    pub fn new(len: usize) -> std::result::Result<Self, Errno> {
        let n = std::num::NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a new anonymous mapping at an address the kernel picks: it aliases nothing.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                n,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_PRIVATE,
            )?
        };
        Ok(AnonBuf {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, owned by self alone
        // (the &mut borrow of self keeps it exclusive) until drop.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AnonBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(); no slice of it outlives self.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: AnonBuf owns its mapping exclusively (like a Box<[u8]>); moving it to another
// thread moves that ownership.
unsafe impl Send for AnonBuf {}
