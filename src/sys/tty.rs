//! Terminal ioctls for dumping and restoring ptys: termios, window size, pty index, lock,
//! packet mode, exclusive mode, session and foreground group, and opening a master's peer.
//!
//! `struct termios` here is the kernel's (TCGETS/TCSETS), 36 bytes on x86-64:
//! `c_iflag u32 | c_oflag u32 | c_cflag u32 | c_lflag u32 | c_line u8 | c_cc [u8; 19]`.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::errno::check_int as check;

pub const TCGETS: libc::c_ulong = 0x5401;
pub const TCSETS: libc::c_ulong = 0x5402;
pub const TIOCEXCL: libc::c_ulong = 0x540C;
pub const TIOCSCTTY: libc::c_ulong = 0x540E;
pub const FIONREAD: libc::c_ulong = 0x541B;
pub const TIOCGPGRP: libc::c_ulong = 0x540F;
pub const TIOCSPGRP: libc::c_ulong = 0x5410;
pub const TIOCGWINSZ: libc::c_ulong = 0x5413;
pub const TIOCSWINSZ: libc::c_ulong = 0x5414;
pub const TIOCPKT: libc::c_ulong = 0x5420;
pub const TIOCGSID: libc::c_ulong = 0x5429;
pub const TIOCGPTN: libc::c_ulong = 0x8004_5430;
pub const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
pub const TIOCGPKT: libc::c_ulong = 0x8004_5438;
pub const TIOCGPTLCK: libc::c_ulong = 0x8004_5439;
pub const TIOCGEXCL: libc::c_ulong = 0x8004_5440;
pub const TIOCGPTPEER: libc::c_ulong = 0x5441;
pub const TIOCGLCKTRMIOS: libc::c_ulong = 0x5456;
pub const TIOCSLCKTRMIOS: libc::c_ulong = 0x5457;

/// Size of the kernel's `struct termios`.
pub const TERMIOS_LEN: usize = 36;
/// Number of control characters in it.
pub const NCCS: usize = 19;

/// The kernel's termios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; NCCS],
}

impl Termios {
    fn from_bytes(b: &[u8; TERMIOS_LEN]) -> Self {
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut cc = [0u8; NCCS];
        cc.copy_from_slice(&b[17..17 + NCCS]);
        Termios {
            iflag: w(0),
            oflag: w(4),
            cflag: w(8),
            lflag: w(12),
            line: b[16],
            cc,
        }
    }

    fn to_bytes(self) -> [u8; TERMIOS_LEN] {
        let mut b = [0u8; TERMIOS_LEN];
        b[0..4].copy_from_slice(&self.iflag.to_ne_bytes());
        b[4..8].copy_from_slice(&self.oflag.to_ne_bytes());
        b[8..12].copy_from_slice(&self.cflag.to_ne_bytes());
        b[12..16].copy_from_slice(&self.lflag.to_ne_bytes());
        b[16] = self.line;
        b[17..].copy_from_slice(&self.cc);
        b
    }
}

/// An ioctl that writes one int.
pub fn get_int(fd: impl AsFd, req: libc::c_ulong) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int through the pointer, which is valid.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req, &mut v as *mut libc::c_int) })?;
    Ok(v)
}

/// An ioctl that reads one int through a pointer.
pub fn set_int(fd: impl AsFd, req: libc::c_ulong, v: i32) -> Result<(), Errno> {
    // SAFETY: the request reads one int through the pointer, which is valid.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req, &v as *const libc::c_int) }).map(drop)
}

/// An ioctl without argument (`TIOCEXCL`).
pub fn no_arg(fd: impl AsFd, req: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: the request takes no argument.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req, 0) }).map(drop)
}

/// `TCGETS` or `TIOCGLCKTRMIOS`.
pub fn get_termios(fd: impl AsFd, req: libc::c_ulong) -> Result<Termios, Errno> {
    let mut b = [0u8; TERMIOS_LEN];
    // SAFETY: the request writes a kernel termios (TERMIOS_LEN bytes) into `b`.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req, b.as_mut_ptr()) })?;
    Ok(Termios::from_bytes(&b))
}

/// `TCSETS` or `TIOCSLCKTRMIOS`.
pub fn set_termios(fd: impl AsFd, req: libc::c_ulong, t: Termios) -> Result<(), Errno> {
    let b = t.to_bytes();
    // SAFETY: the request reads a kernel termios (TERMIOS_LEN bytes) from `b`.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req, b.as_ptr()) }).map(drop)
}

/// `TIOCGWINSZ`: (rows, cols, xpixel, ypixel).
pub fn get_winsize(fd: impl AsFd) -> Result<[u16; 4], Errno> {
    let mut w = [0u16; 4];
    // SAFETY: the request writes a struct winsize (four u16) into `w`.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), TIOCGWINSZ, w.as_mut_ptr()) })?;
    Ok(w)
}

/// `TIOCSWINSZ`.
pub fn set_winsize(fd: impl AsFd, w: [u16; 4]) -> Result<(), Errno> {
    // SAFETY: the request reads a struct winsize (four u16) from `w`.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), TIOCSWINSZ, w.as_ptr()) }).map(drop)
}

/// `TIOCGPTPEER`: opens the slave of a pty master.
pub fn open_peer(master: impl AsFd, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: the request takes open flags by value and returns a new descriptor.
    let r = check(unsafe { libc::ioctl(master.as_fd().as_raw_fd(), TIOCGPTPEER, flags) })?;
    // SAFETY: `r` is a descriptor the kernel just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Makes process group `pgrp` the foreground group of the terminal on descriptor `fd` if it
/// is the caller's controlling terminal (returns whether it did; a terminal that is not the
/// caller's has no foreground group to give). SIGTTOU, which the kernel sends to a background
/// caller, is blocked for the call.
pub fn set_foreground(fd: std::os::fd::RawFd, pgrp: i32) -> Result<bool, Errno> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal};
    let mut sid: libc::pid_t = 0;
    // SAFETY: TIOCGSID writes one pid_t through the pointer, which is valid.
    let r = unsafe { libc::ioctl(fd, TIOCGSID, &mut sid as *mut libc::pid_t) };
    if r < 0 || Some(sid) != nix::unistd::getsid(None).ok().map(|p| p.as_raw()) {
        return Ok(false);
    }
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old))?;
    // SAFETY: TIOCSPGRP reads one pid_t through the pointer, which is valid.
    let r = check(unsafe { libc::ioctl(fd, TIOCSPGRP, &pgrp as *const i32) });
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    r.map(|_| true)
}

/// `TIOCSCTTY`: makes the terminal of `fd` the controlling terminal of the caller, which
/// leads a session without one (no stealing from another session).
pub fn set_ctty(fd: impl AsFd) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an int by value (0: do not steal).
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), TIOCSCTTY, 0) }).map(drop)
}

/// Reads what the terminal of `fd` has ready for reading now, at most `max` bytes, without
/// waiting and without changing the description's flags (a zero-timeout poll before every
/// read; in canonical mode only complete lines are ready). The bytes are gone from the queue.
/// `packet`: a pty master in packet mode, whose reads start with a status byte (dropped).
pub fn drain_ready(fd: impl AsFd, max: usize, packet: bool) -> Result<Vec<u8>, Errno> {
    let fd = fd.as_fd();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let ready = get_int(fd, FIONREAD)?;
        if ready <= 0 || out.len() >= max {
            break;
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        if check(unsafe { libc::poll(&mut p, 1, 0) })? == 0 || p.revents & libc::POLLIN == 0 {
            break;
        }
        let want = buf.len().min(max - out.len() + usize::from(packet));
        let n = nix::unistd::read(fd, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        let skip = usize::from(packet).min(n);
        out.extend_from_slice(&buf[skip..n]);
    }
    Ok(out)
}

/// Writes all of `data` to the terminal of `fd` (blocking).
pub fn write_all(fd: impl AsFd, data: &[u8]) -> Result<(), Errno> {
    let mut off = 0;
    while off < data.len() {
        match nix::unistd::write(fd.as_fd(), &data[off..]) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => off += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `isatty(fd)`.
pub fn is_tty(fd: impl AsFd) -> bool {
    get_termios(fd, TCGETS).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_basics() {
        let m =
            crate::sys::fdkinds::open("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
                .unwrap();
        assert_eq!(get_int(&m, TIOCGPTLCK).unwrap(), 1, "locked until unlockpt");
        set_int(&m, TIOCSPTLCK, 0).unwrap();
        let s = open_peer(&m, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC).unwrap();
        set_winsize(&s, [24, 80, 0, 0]).unwrap();
        assert_eq!(get_winsize(&m).unwrap(), [24, 80, 0, 0]);
        let mut t = get_termios(&s, TCGETS).unwrap();
        t.lflag &= !libc::ECHO;
        set_termios(&s, TCSETS, t).unwrap();
        assert_eq!(get_termios(&s, TCGETS).unwrap(), t);
        assert!(is_tty(&s));
        // Not our controlling terminal: nothing to do, not an error.
        assert_eq!(
            set_foreground(s.as_raw_fd(), nix::unistd::getpgrp().as_raw()),
            Ok(false)
        );
    }
}
