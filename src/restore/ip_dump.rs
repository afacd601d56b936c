//! The `ip ... save` dumps CRIU keeps of a network namespace (`ifaddr-ID.img`,
//! `route-ID.img`, `route6-ID.img`, `rule-ID.img`) and its `iptables-save` text: which of
//! them hold only what a fresh namespace with its loopback up has anyway (then nothing is
//! to be restored); anything else is named, for the restore to refuse.
//!
//! ```text
//! ip save file := magic u32 | nlmsg*        nlmsg := len u32 | type u16 | flags u16 |
//!                                                    seq u32 | pid u32 | body (4-aligned)
//! RTM_NEWADDR  ifaddrmsg {family, prefixlen, flags, scope, index u32} rtattr*
//! RTM_NEWROUTE any: a route of its own
//! RTM_NEWRULE  fib_rule_hdr {family, dst_len, src_len, tos, table, _, _, action, flags u32}
//!              rtattr* (FRA_PRIORITY 6, FRA_TABLE 15)
//! ```

const RTM_NEWADDR: u16 = 20;
const RTM_NEWRULE: u16 = 32;
const NLMSG_HDR: usize = 16;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const FRA_PRIORITY: u16 = 6;
const FRA_TABLE: u16 = 15;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// The (type, body) of each message after the 4-byte magic.
fn messages(data: &[u8]) -> Result<Vec<(u16, &[u8])>, String> {
    let mut out = Vec::new();
    let mut o = 4.min(data.len());
    while o < data.len() {
        let len = u32_at(data, o).ok_or("truncated netlink header")? as usize;
        let ty = u16_at(data, o + 4).ok_or("truncated netlink header")?;
        if len < NLMSG_HDR || o + len > data.len() {
            return Err(format!("netlink message of length {len} at {o}"));
        }
        out.push((ty, &data[o + NLMSG_HDR..o + len]));
        o += (len + 3) & !3;
    }
    Ok(out)
}

/// The (type, value) attributes from offset `from` of a message body.
fn attrs(body: &[u8], from: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut o = from;
    while let (Some(len), Some(ty)) = (u16_at(body, o), u16_at(body, o + 2)) {
        let len = len as usize;
        if len < 4 || o + len > body.len() {
            break;
        }
        out.push((ty & 0x3fff, &body[o + 4..o + len]));
        o += (len + 3) & !3;
    }
    out
}

/// `ifaddr-ID.img`: only 127.0.0.1/8 and ::1/128 on the loopback (`lo_index`).
pub fn addrs_default(data: &[u8], lo_index: u32) -> Result<(), String> {
    for (ty, body) in messages(data)? {
        if ty != RTM_NEWADDR {
            return Err(format!("netlink message type {ty} in an address dump"));
        }
        let (family, prefix) = (body.first().copied(), body.get(1).copied());
        let index = u32_at(body, 4);
        let addr = attrs(body, 8)
            .into_iter()
            .find(|(t, _)| *t == IFA_LOCAL || *t == IFA_ADDRESS)
            .map(|(_, v)| v.to_vec())
            .unwrap_or_default();
        let loopback = match (family.map(i32::from), prefix) {
            (Some(libc::AF_INET), Some(8)) => addr == [127, 0, 0, 1],
            (Some(libc::AF_INET6), Some(128)) => {
                addr.len() == 16 && addr[..15].iter().all(|&b| b == 0) && addr[15] == 1
            }
            _ => false,
        };
        if !loopback || index != Some(lo_index) {
            return Err(format!(
                "address {addr:?}/{} (family {family:?}) on link {index:?}",
                prefix.unwrap_or(0)
            ));
        }
    }
    Ok(())
}

/// `route-ID.img`, `route6-ID.img`: no route at all (the loopback's are the kernel's).
pub fn routes_default(data: &[u8]) -> Result<(), String> {
    match messages(data)?.len() {
        0 => Ok(()),
        n => Err(format!("{n} route(s)")),
    }
}

/// `rule-ID.img`: the kernel's default rules (0 local, 32766 main, 32767 default).
pub fn rules_default(data: &[u8]) -> Result<(), String> {
    for (ty, body) in messages(data)? {
        if ty != RTM_NEWRULE {
            return Err(format!("netlink message type {ty} in a rule dump"));
        }
        let (dst_len, src_len, action) = (body.get(1), body.get(2), body.get(7));
        let a = attrs(body, 12);
        let get = |t: u16| {
            a.iter()
                .find(|(x, _)| *x == t)
                .and_then(|(_, v)| u32_at(v, 0))
        };
        let rule = (get(FRA_PRIORITY).unwrap_or(0), get(FRA_TABLE));
        let default = matches!(
            rule,
            (0, Some(255)) | (32766, Some(254)) | (32767, Some(253))
        );
        if !default || dst_len != Some(&0) || src_len != Some(&0) || action != Some(&1) {
            return Err(format!("rule {rule:?}"));
        }
    }
    Ok(())
}

/// `iptables-ID.img`/`ip6tables-ID.img` (`iptables-save` text): no rule, no chain of its own,
/// every policy ACCEPT, but for CRIU's network lock (its `CRIU` chain, which CRIU's own
/// restore removes once the tree runs).
pub fn iptables_default(text: &str) -> Result<(), String> {
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') || l.starts_with('*') || l == "COMMIT" {
            continue;
        }
        if l == ":CRIU - [0:0]"
            || l == "-A INPUT -j CRIU"
            || l == "-A OUTPUT -j CRIU"
            || l.starts_with("-A CRIU ")
        {
            continue;
        }
        match l.strip_prefix(':').map(|r| r.split_whitespace().nth(1)) {
            Some(Some("ACCEPT")) => continue,
            _ => return Err(format!("iptables line {l:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDR + body.len()) as u32;
        let mut v = len.to_ne_bytes().to_vec();
        v.extend(ty.to_ne_bytes());
        v.extend([0u8; 10]);
        v.extend(body);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn attr(ty: u16, val: &[u8]) -> Vec<u8> {
        let mut v = ((4 + val.len()) as u16).to_ne_bytes().to_vec();
        v.extend(ty.to_ne_bytes());
        v.extend(val);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn loopback_addresses_only() {
        let mut body = vec![libc::AF_INET as u8, 8, 0x80, 0xfe, 1, 0, 0, 0];
        body.extend(attr(IFA_LOCAL, &[127, 0, 0, 1]));
        let mut f = vec![0x22, 0x12, 0x36, 0x47];
        f.extend(msg(RTM_NEWADDR, &body));
        assert!(addrs_default(&f, 1).is_ok());
        assert!(addrs_default(&f, 2).is_err());
        let mut other = vec![libc::AF_INET as u8, 24, 0, 0, 1, 0, 0, 0];
        other.extend(attr(IFA_LOCAL, &[10, 0, 0, 1]));
        f.extend(msg(RTM_NEWADDR, &other));
        assert!(addrs_default(&f, 1).unwrap_err().contains("10, 0, 0, 1"));
    }

    #[test]
    fn default_rules_and_no_routes() {
        let mut f = vec![0x86, 0x69, 0x70, 0x71];
        for (prio, table) in [(0u32, 255u32), (32766, 254), (32767, 253)] {
            let mut body = vec![2, 0, 0, 0, table as u8, 0, 0, 1, 0, 0, 0, 0];
            body.extend(attr(FRA_TABLE, &table.to_ne_bytes()));
            if prio != 0 {
                body.extend(attr(FRA_PRIORITY, &prio.to_ne_bytes()));
            }
            f.extend(msg(RTM_NEWRULE, &body));
        }
        assert!(rules_default(&f).is_ok());
        assert!(routes_default(&[0x24, 0x12, 0x31, 0x45]).is_ok());
        assert!(routes_default(&f).is_err());
        assert!(iptables_default("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n").is_ok());
        assert!(iptables_default("*filter\n-A INPUT -j DROP\n").is_err());
        let locked = "*filter\n:INPUT ACCEPT [0:0]\n:CRIU - [0:0]\n-A INPUT -j CRIU\n\
                      -A CRIU -m mark --mark 0xc114 -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n";
        assert!(iptables_default(locked).is_ok());
    }
}
