//! userfaultfd for post-copy ("lazy pages") restore: the restored task's handle, created in the
//! task, handed to the lazy-pages daemon, which serves its page faults.
//!
//! ```text
//!  restored task (before its restorer blob)           lazy-pages daemon
//!  open_lazy(): userfaultfd(O_CLOEXEC|O_NONBLOCK)
//!   UFFDIO_API {EVENT_FORK|REMAP|REMOVE|UNMAP}
//!  send_handle(sock, pid, fd) ── i32 pid ───────────► recv_handle(sock) -> (pid, Uffd)
//!                             ── 1 byte + SCM_RIGHTS ►
//!  blob: mremap the VMA in place, UFFDIO_REGISTER
//!        (MISSING) on the lazy ones, close the fd
//!  task faults on a missing page ─── uffd_msg ──────► Uffd::read_event -> Event::Fault
//!                                 ◄── UFFDIO_COPY ─── Uffd::copy (wakes the task)
//!                                 ◄── UFFDIO_ZEROPAGE  Uffd::zero (not in the images)
//! ```
//! The wire form of the hand-over is CRIU 4.2's (`criu/uffd.c`): the pid as an `int`, then
//! one message of one dummy byte carrying the descriptor; a zombie sends `-pid` and no
//! descriptor.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
/// `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;

const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// The events CRIU's restore asks for (`NEED_UFFD_API_FEATURES`): without them a fork, an
/// `mremap`, `MADV_DONTNEED` or `munmap` of the restored task would silently drop the
/// registration (missing pages would then read as zeros).
pub const LAZY_FEATURES: u64 = UFFD_FEATURE_EVENT_FORK
    | UFFD_FEATURE_EVENT_REMAP
    | UFFD_FEATURE_EVENT_REMOVE
    | UFFD_FEATURE_EVENT_UNMAP;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;

const PAGE: u64 = 4096;

/// Opens the userfaultfd of a lazily restored task (in the task itself).
pub fn open_lazy() -> Result<OwnedFd, Errno> {
    // SAFETY: userfaultfd takes flags only and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct uffdio_api { api, features, ioctls }.
    let mut api: [u64; 3] = [UFFD_API, LAZY_FEATURES, 0];
    // SAFETY: UFFDIO_API reads and writes the 24-byte struct we pass, nothing else.
    if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, api.as_mut_ptr()) } < 0 {
        return Err(Errno::last());
    }
    Ok(fd)
}

/// Sends task `pid`'s handle `fd` (None: a zombie, sent as `-pid`) over `sock`, CRIU's way.
pub fn send_handle(
    sock: BorrowedFd<'_>,
    pid: i32,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), Errno> {
    let p = if fd.is_some() { pid } else { -pid };
    let n = super::socket::send(sock, &p.to_ne_bytes(), libc::MSG_NOSIGNAL)?;
    if n != 4 {
        return Err(Errno::EPIPE);
    }
    if let Some(fd) = fd {
        super::channel::send_msg(sock, &[&[0u8]], &[fd.as_raw_fd()])
            .map_err(|e| e.errno().unwrap_or(Errno::EIO))?;
    }
    Ok(())
}

/// Receives one task's handle: (pid, handle); a zombie gives (pid, None).
pub fn recv_handle(sock: BorrowedFd<'_>) -> Result<(i32, Option<Uffd>), Errno> {
    let mut b = [0u8; 4];
    let n = super::socket::recv(sock, &mut b, libc::MSG_WAITALL)?;
    if n != 4 {
        return Err(Errno::ECONNRESET);
    }
    let pid = i32::from_ne_bytes(b);
    if pid < 0 {
        return Ok((-pid, None));
    }
    let mut one = [0u8; 1];
    let (_, mut fds) = super::socket::recv_with_rights(sock, &mut one, 0)?;
    let fd = fds.pop().ok_or(Errno::EBADMSG)?;
    Ok((pid, Some(Uffd { fd })))
}

/// What a restored task's userfaultfd reports.
#[derive(Debug)]
pub enum Event {
    /// A thread waits for the page at `addr` (page aligned).
    Fault { addr: u64 },
    /// The task forked: the child's handle (its registered ranges are the parent's).
    Fork { child: Uffd },
    /// `mremap` moved `[from, from+len)` to `to`.
    Remap { from: u64, to: u64, len: u64 },
    /// `[start, end)` was discarded (`MADV_DONTNEED`/`MADV_REMOVE`) or unmapped: its pages
    /// must not be filled any more.
    Remove { start: u64, end: u64 },
}

/// The daemon's side of a restored task's userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Uffd {
    /// Reads the next event; None when there is none now (the descriptor is non-blocking).
    pub fn read_event(&self) -> Result<Option<Event>, Errno> {
        let mut m = [0u8; 32];
        // SAFETY: reads at most 32 bytes into our buffer.
        let r = unsafe { libc::read(self.fd.as_raw_fd(), m.as_mut_ptr().cast(), m.len()) };
        if r < 0 {
            return match Errno::last() {
                Errno::EAGAIN => Ok(None),
                e => Err(e),
            };
        }
        if r != 32 {
            return Err(Errno::EIO);
        }
        let u64_at = |i: usize| u64::from_ne_bytes(m[i..i + 8].try_into().unwrap_or([0; 8]));
        // struct uffd_msg { u8 event; u8, u16, u32 reserved; union arg (at 8) }.
        Ok(Some(match m[0] {
            // pagefault { u64 flags; u64 address; ... }.
            UFFD_EVENT_PAGEFAULT => Event::Fault {
                addr: u64_at(16) & !(PAGE - 1),
            },
            UFFD_EVENT_FORK => {
                let ufd = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]) as i32;
                // SAFETY: the kernel installed this new descriptor in our table for us.
                let fd = unsafe { OwnedFd::from_raw_fd(ufd) };
                Event::Fork { child: Uffd { fd } }
            }
            UFFD_EVENT_REMAP => Event::Remap {
                from: u64_at(8),
                to: u64_at(16),
                len: u64_at(24),
            },
            UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => Event::Remove {
                start: u64_at(8),
                end: u64_at(16),
            },
            _ => return Err(Errno::EPROTO),
        }))
    }

    /// Copies `src` (whole pages) to `dst` and wakes the threads waiting there. Pages already
    /// present are skipped. Errors: `EAGAIN` (an event is pending: read it, retry), `ENOENT`
    /// (not registered: the range went away), `ESRCH` (the task exited).
    pub fn copy(&self, dst: u64, src: &[u8]) -> Result<(), Errno> {
        let len = src.len() as u64;
        let mut done = 0u64;
        while done < len {
            // struct uffdio_copy { dst, src, len, mode, copy (s64) }.
            let mut c: [u64; 5] = [
                dst + done,
                src[done as usize..].as_ptr() as u64,
                len - done,
                0,
                0,
            ];
            // SAFETY: UFFDIO_COPY reads `len - done` bytes of `src` and fills missing pages of
            // a range registered on this descriptor in another process; it writes `copy`.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, c.as_mut_ptr()) };
            let copied = c[4] as i64;
            if r == 0 {
                return Ok(());
            }
            let e = Errno::last();
            if copied > 0 {
                done += copied as u64;
                continue;
            }
            match e {
                // The page at dst + done is there already (a fault raced us): skip it.
                Errno::EEXIST => {
                    self.wake(dst + done, PAGE);
                    done += PAGE;
                }
                e => return Err(e),
            }
        }
        Ok(())
    }

    /// Maps zero pages at `[dst, dst+len)` (pages that are in no image) and wakes the waiters.
    pub fn zero(&self, dst: u64, len: u64) -> Result<(), Errno> {
        // struct uffdio_zeropage { range { start, len }, mode, zeropage (s64) }.
        let mut z: [u64; 4] = [dst, len, 0, 0];
        // SAFETY: UFFDIO_ZEROPAGE maps the zero page in missing pages of a registered range
        // of another process; it writes `zeropage`.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE, z.as_mut_ptr()) };
        if r < 0 {
            return match Errno::last() {
                Errno::EEXIST => {
                    self.wake(dst, len);
                    Ok(())
                }
                e => Err(e),
            };
        }
        Ok(())
    }

    /// Wakes threads waiting on `[dst, dst+len)` (their page is there already).
    pub fn wake(&self, dst: u64, len: u64) {
        let mut w: [u64; 2] = [dst, len];
        // SAFETY: UFFDIO_WAKE only reads the 16-byte range.
        unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, w.as_mut_ptr()) };
    }
}
