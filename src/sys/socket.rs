//! Raw socket calls for dumping and restoring sockets: options as raw bytes or ints,
//! addresses as raw `sockaddr` bytes, peeking queues without consuming them, and the
//! `SIOCINQ`/`SIOCOUTQ` queue sizes. `TCP_REPAIR` and its companions are plain options here.
//!
//! Addresses travel as the raw `struct sockaddr_*` bytes the kernel gave (`getsockname`
//! length included), so unix names keep their exact length (abstract names, unnamed).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;

use super::errno::{check, new_fd};

/// `SIOCOUTQNSD`: bytes in the send queue not yet sent.
pub const SIOCOUTQNSD: libc::c_ulong = 0x894B;

fn raw(fd: &impl AsFd) -> libc::c_int {
    fd.as_fd().as_raw_fd()
}

/// `socket(domain, type, protocol)`.
pub fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: socket takes no pointers.
    new_fd(unsafe { libc::socket(domain, ty, proto) })
}

/// `socketpair(AF_UNIX, type, 0)`.
pub fn socketpair(ty: i32) -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors the kernel writes.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
    check(r.into())?;
    Ok((new_fd(fds[0])?, new_fd(fds[1])?))
}

/// `getsockopt(fd, level, name)` into a buffer of `cap` bytes; returns the bytes written.
pub fn getsockopt_bytes(
    fd: impl AsFd,
    level: i32,
    name: i32,
    cap: usize,
) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; cap.min(1 << 16)];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is writable for `len` bytes and `len` is writable.
    let r = unsafe { libc::getsockopt(raw(&fd), level, name, buf.as_mut_ptr().cast(), &mut len) };
    check(r.into())?;
    buf.truncate((len as usize).min(buf.len()));
    Ok(buf)
}

/// `setsockopt(fd, level, name, bytes)`.
/// Largest classic BPF program the kernel attaches (`BPF_MAXINSNS`).
pub const BPF_MAXINSNS: usize = 4096;

/// The classic BPF filter attached to a socket (`SO_GET_FILTER`, whose length counts
/// instructions), each instruction packed as CRIU stores it: `code << 48 | jt << 40 |
/// jf << 32 | k`. Empty when there is none.
pub fn get_filter(fd: impl AsFd) -> Result<Vec<u64>, Errno> {
    let mut n: libc::socklen_t = 0;
    // SAFETY: a zero length asks for the instruction count only; `n` is writable.
    let r = unsafe {
        libc::getsockopt(
            raw(&fd),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::null_mut(),
            &mut n,
        )
    };
    check(r.into())?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let n = (n as usize).min(BPF_MAXINSNS);
    let mut prog = vec![
        libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0
        };
        n
    ];
    let mut len = n as libc::socklen_t;
    // SAFETY: `prog` is writable for `len` instructions, the unit SO_GET_FILTER counts in.
    let r = unsafe {
        libc::getsockopt(
            raw(&fd),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            prog.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check(r.into())?;
    prog.truncate((len as usize).min(n));
    Ok(prog
        .iter()
        .map(|f| {
            (u64::from(f.code) << 48)
                | (u64::from(f.jt) << 40)
                | (u64::from(f.jf) << 32)
                | u64::from(f.k)
        })
        .collect())
}

/// Attaches a classic BPF filter packed as [`get_filter`] returns it (`SO_ATTACH_FILTER`).
pub fn attach_filter(fd: impl AsFd, packed: &[u64]) -> Result<(), Errno> {
    if packed.is_empty() || packed.len() > BPF_MAXINSNS {
        return Err(Errno::EINVAL);
    }
    let mut prog: Vec<libc::sock_filter> = packed
        .iter()
        .map(|&v| libc::sock_filter {
            code: (v >> 48) as u16,
            jt: (v >> 40) as u8,
            jf: (v >> 32) as u8,
            k: v as u32,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points to `prog`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            raw(&fd),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    check(r.into()).map(drop)
}

pub fn setsockopt_bytes(fd: impl AsFd, level: i32, name: i32, val: &[u8]) -> Result<(), Errno> {
    // SAFETY: `val` is readable for its length for the call.
    let r = unsafe {
        libc::setsockopt(
            raw(&fd),
            level,
            name,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    };
    check(r.into()).map(drop)
}

/// An int-valued socket option.
pub fn getsockopt_int(fd: impl AsFd, level: i32, name: i32) -> Result<i32, Errno> {
    let b = getsockopt_bytes(fd, level, name, 4)?;
    let mut v = [0u8; 4];
    v[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    Ok(i32::from_ne_bytes(v))
}

/// Sets an int-valued socket option.
pub fn setsockopt_int(fd: impl AsFd, level: i32, name: i32, v: i32) -> Result<(), Errno> {
    setsockopt_bytes(fd, level, name, &v.to_ne_bytes())
}

fn addr_call(
    fd: &impl AsFd,
    f: unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> Result<Vec<u8>, Errno> {
    // SAFETY: sockaddr_storage is plain bytes; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let cap = std::mem::size_of::<libc::sockaddr_storage>();
    let mut len = cap as libc::socklen_t;
    // SAFETY: `ss` is writable for `len` bytes; `f` is getsockname or getpeername.
    let r = unsafe {
        f(
            raw(fd),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    check(r.into())?;
    // SAFETY: `ss` is `cap` initialized bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), cap)
    };
    Ok(bytes[..(len as usize).min(cap)].to_vec())
}

/// `getsockname(fd)` as raw sockaddr bytes.
pub fn getsockname(fd: impl AsFd) -> Result<Vec<u8>, Errno> {
    addr_call(&fd, libc::getsockname)
}

/// `getpeername(fd)` as raw sockaddr bytes.
pub fn getpeername(fd: impl AsFd) -> Result<Vec<u8>, Errno> {
    addr_call(&fd, libc::getpeername)
}

/// `bind(fd, addr)` with raw sockaddr bytes.
pub fn bind(fd: impl AsFd, addr: &[u8]) -> Result<(), Errno> {
    // SAFETY: `addr` is readable for its length; the kernel validates the contents.
    let r = unsafe {
        libc::bind(
            raw(&fd),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    check(r.into()).map(drop)
}

/// Runs `op` (a `bind` or `connect` by path name) as if chrooted into `root`: on a thread of
/// its own that unshares its file-system context (CLONE_FS) and chroots, so that a unix
/// socket's name is created and looked up under `root` while the kernel keeps the name as
/// given (what `getsockname` returns stays the image's path). The process and its other
/// threads keep their root. `root` `/`: `op` runs here.
pub fn in_root(
    root: &std::path::Path,
    op: impl FnOnce() -> Result<(), Errno> + Send,
) -> Result<(), Errno> {
    if root == std::path::Path::new("/") {
        return op();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::unistd::chroot(root)?;
            nix::unistd::chdir("/")?;
            op()
        })
        .join()
        .unwrap_or(Err(Errno::EIO))
    })
}

/// `connect(fd, addr)` with raw sockaddr bytes.
pub fn connect(fd: impl AsFd, addr: &[u8]) -> Result<(), Errno> {
    // SAFETY: `addr` is readable for its length; the kernel validates the contents.
    let r = unsafe {
        libc::connect(
            raw(&fd),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    check(r.into()).map(drop)
}

/// `listen(fd, backlog)`.
pub fn listen(fd: impl AsFd, backlog: i32) -> Result<(), Errno> {
    // SAFETY: plain integers.
    let r = unsafe { libc::listen(raw(&fd), backlog) };
    check(r.into()).map(drop)
}

/// `accept4(fd, NULL, NULL, flags)`.
pub fn accept(fd: impl AsFd, flags: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: no address is requested (null pointers are allowed).
    new_fd(unsafe { libc::accept4(raw(&fd), std::ptr::null_mut(), std::ptr::null_mut(), flags) })
}

/// `shutdown(fd, how)`.
pub fn shutdown(fd: impl AsFd, how: i32) -> Result<(), Errno> {
    // SAFETY: plain integers.
    let r = unsafe { libc::shutdown(raw(&fd), how) };
    check(r.into()).map(drop)
}

/// `recv(fd, buf, flags)`: returns the bytes received (with `MSG_TRUNC`, the real length).
pub fn recv(fd: impl AsFd, buf: &mut [u8], flags: i32) -> Result<usize, Errno> {
    // SAFETY: `buf` is writable for its length.
    let r = unsafe { libc::recv(raw(&fd), buf.as_mut_ptr().cast(), buf.len(), flags) };
    Ok(check(r as libc::c_long)? as usize)
}

/// `recvmsg(fd, buf, flags)` with room for control messages: the bytes received and the
/// descriptors passed with them (`SCM_RIGHTS`; with `MSG_PEEK` the kernel installs copies).
pub fn recv_with_rights(
    fd: impl AsFd,
    buf: &mut [u8],
    flags: i32,
) -> Result<(usize, Vec<OwnedFd>), Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for 253 descriptors (SCM_MAX_FD) in one SCM_RIGHTS message.
    let mut ctl = vec![0u64; 136];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.as_mut_ptr().cast();
    msg.msg_controllen = ctl.len() * 8;
    // SAFETY: `msg` points to `iov` (valid for buf.len() bytes) and `ctl` (valid for
    // msg_controllen bytes), all alive for the call; the kernel writes within those bounds.
    let r = unsafe { libc::recvmsg(raw(&fd), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    let n = check(r as libc::c_long)? as usize;
    let mut fds = Vec::new();
    let total = (msg.msg_controllen).min(ctl.len() * 8);
    // SAFETY: `ctl` holds `total` bytes the kernel wrote; the bytes are read only.
    let bytes = unsafe { std::slice::from_raw_parts(ctl.as_ptr().cast::<u8>(), ctl.len() * 8) };
    let mut off = 0usize;
    let hdr = std::mem::size_of::<libc::cmsghdr>();
    while off + hdr <= total {
        let len = usize::from_ne_bytes(bytes[off..off + 8].try_into().unwrap_or([0; 8]));
        let level = i32::from_ne_bytes(bytes[off + 8..off + 12].try_into().unwrap_or([0; 4]));
        let ty = i32::from_ne_bytes(bytes[off + 12..off + 16].try_into().unwrap_or([0; 4]));
        if len < hdr || off + len > total {
            break;
        }
        if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
            for c in bytes[off + hdr..off + len].chunks_exact(4) {
                let raw_fd = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                fds.push(new_fd(raw_fd)?);
            }
        }
        off += (len + 7) & !7;
    }
    Ok((n, fds))
}

/// Points `msg`'s control data at `ctl`, filled with one `SCM_RIGHTS` message carrying
/// `fds` (no control data when `fds` is empty). `ctl` must outlive every use of `msg`.
pub(crate) fn put_rights(msg: &mut libc::msghdr, ctl: &mut Vec<u64>, fds: &[std::os::fd::RawFd]) {
    if fds.is_empty() {
        return;
    }
    let data_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
    *ctl = vec![0u64; space.div_ceil(8)];
    msg.msg_control = ctl.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `ctl` is 8-aligned and `space` bytes long, room for one cmsghdr with
    // `data_len` bytes of data; CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr().cast::<u8>(),
            libc::CMSG_DATA(cmsg),
            data_len as usize,
        );
    }
}

/// `sendmsg(fd, buf, flags)` with `fds` attached as one `SCM_RIGHTS` message (none if
/// empty): the bytes sent.
pub fn send_with_rights(
    fd: impl AsFd,
    buf: &[u8],
    fds: &[std::os::fd::RawFd],
    flags: i32,
) -> Result<usize, Errno> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let mut ctl = Vec::new();
    put_rights(&mut msg, &mut ctl, fds);
    // SAFETY: `msg` points to `iov` (over `buf`, only read) and `ctl`, alive for the call.
    let r = unsafe { libc::sendmsg(raw(&fd), &msg, flags) };
    Ok(check(r as libc::c_long)? as usize)
}

/// `send(fd, buf, flags)`.
pub fn send(fd: impl AsFd, buf: &[u8], flags: i32) -> Result<usize, Errno> {
    // SAFETY: `buf` is readable for its length.
    let r = unsafe { libc::send(raw(&fd), buf.as_ptr().cast(), buf.len(), flags) };
    Ok(check(r as libc::c_long)? as usize)
}

/// An int-returning ioctl (`SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD`).
pub fn ioctl_int(fd: impl AsFd, req: libc::c_ulong) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int through the pointer, which is valid.
    let r = unsafe { libc::ioctl(raw(&fd), req, &mut v as *mut libc::c_int) };
    check(r.into())?;
    Ok(v)
}

/// `SIOCUNIXFILE`: an `O_PATH` descriptor of the file a unix socket is bound to (Linux 4.10).
pub const SIOCUNIXFILE: libc::c_ulong = 0x89E0;

/// The file a bound unix socket owns (even when its name was unlinked or replaced since):
/// `fstat` gives its mode and owner, `/proc/self/fd/N` its path with " (deleted)" if gone.
pub fn unix_file(fd: impl AsFd) -> Result<OwnedFd, Errno> {
    // SAFETY: SIOCUNIXFILE takes no argument and returns a new descriptor.
    new_fd(unsafe { libc::ioctl(raw(&fd), SIOCUNIXFILE as _, 0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_peek_and_names() {
        let (a, b) = socketpair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC).unwrap();
        send(&a, b"abc", 0).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            recv(&b, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT).unwrap(),
            3
        );
        assert_eq!(ioctl_int(&b, libc::FIONREAD).unwrap(), 3);
        assert_eq!(
            getsockname(&a).unwrap().len(),
            2,
            "unnamed unix socket: family only"
        );
        assert_eq!(
            getsockopt_int(&a, libc::SOL_SOCKET, libc::SO_TYPE).unwrap(),
            libc::SOCK_STREAM
        );
    }
}
