//! Network links by `ioctl` on any socket of the calling thread's network namespace: a
//! link's index, flags and MTU (`SIOCGIFINDEX`/`SIOCGIFFLAGS`/`SIOCGIFMTU`), setting them
//! (`SIOCSIFFLAGS`/`SIOCSIFMTU`), and the IPv4 addresses (`SIOCGIFCONF`). Enough for the
//! loopback of a network namespace of its own; richer state is netlink's business.

use std::os::fd::RawFd;

use nix::errno::Errno;

use super::errno::check;

/// Index, flags and MTU of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub ifindex: i32,
    pub flags: u32,
    pub mtu: i32,
}

fn ifreq(name: &str) -> Result<libc::ifreq, Errno> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    let b = name.as_bytes();
    if b.len() >= r.ifr_name.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for (d, s) in r.ifr_name.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    Ok(r)
}

fn ioctl(sock: RawFd, req: libc::c_ulong, r: &mut libc::ifreq) -> Result<(), Errno> {
    // SAFETY: the SIOC*IF* requests used here read and write one `struct ifreq`, which `r`
    // is (valid for the call).
    let ret = unsafe { libc::ioctl(sock, req, r as *mut libc::ifreq) };
    check(ret.into()).map(|_| ())
}

/// The state of link `name`.
pub fn link_state(sock: RawFd, name: &str) -> Result<LinkState, Errno> {
    let mut r = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFINDEX, &mut r)?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    let ifindex = unsafe { r.ifr_ifru.ifru_ifindex };
    ioctl(sock, libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    let flags = unsafe { r.ifr_ifru.ifru_flags } as u16 as u32;
    ioctl(sock, libc::SIOCGIFMTU, &mut r)?;
    // SAFETY: SIOCGIFMTU filled the mtu member.
    let mtu = unsafe { r.ifr_ifru.ifru_mtu };
    Ok(LinkState {
        ifindex,
        flags,
        mtu,
    })
}

/// Sets the flags (the settable ones: up, promisc, ...) of link `name`.
pub fn set_flags(sock: RawFd, name: &str, flags: u32) -> Result<(), Errno> {
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_flags = flags as u16 as libc::c_short;
    ioctl(sock, libc::SIOCSIFFLAGS, &mut r)
}

/// Sets the MTU of link `name`.
pub fn set_mtu(sock: RawFd, name: &str, mtu: i32) -> Result<(), Errno> {
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_mtu = mtu;
    ioctl(sock, libc::SIOCSIFMTU, &mut r)
}

/// The IPv4 addresses of the namespace's links that are up: (link name, address).
pub fn ipv4_addrs(sock: RawFd) -> Result<Vec<(String, [u8; 4])>, Errno> {
    const MAX: usize = 64;
    // SAFETY: ifreq is plain old data; all zeroes is valid.
    let mut reqs: Vec<libc::ifreq> = vec![unsafe { std::mem::zeroed() }; MAX];
    let mut conf = libc::ifconf {
        ifc_len: (MAX * std::mem::size_of::<libc::ifreq>()) as libc::c_int,
        ifc_ifcu: libc::__c_anonymous_ifc_ifcu {
            ifcu_req: reqs.as_mut_ptr(),
        },
    };
    // SAFETY: SIOCGIFCONF writes at most ifc_len bytes into the buffer `reqs`, alive for the
    // call, and sets ifc_len to what it wrote.
    let ret = unsafe { libc::ioctl(sock, libc::SIOCGIFCONF, &mut conf as *mut libc::ifconf) };
    check(ret.into())?;
    let n = (conf.ifc_len as usize / std::mem::size_of::<libc::ifreq>()).min(MAX);
    let mut out = Vec::new();
    for r in &reqs[..n] {
        let name: String = r
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8 as char)
            .collect();
        // SAFETY: SIOCGIFCONF filled ifru_addr with a sockaddr_in (AF_INET only).
        let sa = unsafe { r.ifr_ifru.ifru_addr };
        let d = sa.sa_data;
        out.push((name, [d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn loopback_of_this_namespace() {
        let s = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let lo = super::link_state(s.as_raw_fd(), "lo").unwrap();
        assert!(lo.ifindex > 0 && lo.mtu > 0, "{lo:?}");
        assert!(lo.flags & libc::IFF_LOOPBACK as u32 != 0);
        let addrs = super::ipv4_addrs(s.as_raw_fd()).unwrap();
        assert!(
            addrs.iter().any(|(n, a)| n == "lo" && *a == [127, 0, 0, 1]),
            "{addrs:?}"
        );
    }
}
