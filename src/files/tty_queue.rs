//! Data queued in a pty pair (`tty-data.img`), both directions, as CRIU keeps it.
//!
//! ```text
//!   master ──write──▶ [slave's input queue]  ──read── slave      entry {tty_id = slave's id}
//!   master ──read──── [master's input queue] ◀──write── slave    entry {tty_id = master's id}
//!
//!  dump (tree frozen, both sides of the pair in the dump):
//!    what each side has ready to read is read out (FIONREAD, zero-timeout poll; a packet-mode
//!    master's status byte dropped), then written back at once through the other side, so
//!    the tree finds its queues again whether it runs on or is killed; the kernel has no
//!    peek for tty queues (CRIU reads and writes back the same way)
//!  restore (the first slave of a pair, its termios in place):
//!    the master's data is written through the slave, the slave's through the master
//! ```
//! The data goes through the line discipline again on the way back: with output processing
//! (OPOST) on the slave or echo/input processing on it, bytes can change, as with CRIU. A
//! canonical-mode slave gives only complete lines; a partial line stays in the kernel and is
//! lost by a restore. More than [`MAX_DATA`] bytes on one side is refused.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use stasis_images::pb;

use super::error::{sys, unsupported, At, Result};
use crate::sys::tty as t;

const KIND: &str = "tty";

/// Most bytes kept for one side (CRIU's limit too).
pub const MAX_DATA: usize = 16384;

/// Reads the queues of every pair in `sides` (tty_info id -> the dumper's descriptor of that
/// side, packet mode) and writes them back; returns the tty-data entries.
pub fn dump(sides: &BTreeMap<u32, (OwnedFd, bool)>) -> Result<Vec<pb::TtyDataEntry>> {
    let mut out = Vec::new();
    for (&mid, (master, packet)) in sides.iter().filter(|(id, _)| *id & 1 == 1) {
        let Some((slave, _)) = sides.get(&(mid & !1)) else {
            continue;
        };
        let at = At::Id(mid);
        let index = mid >> 1;
        let from_master = t::drain_ready(master, MAX_DATA + 1, *packet).map_err(sys(
            KIND,
            at,
            format!("read the queue of pty {index}'s master"),
        ))?;
        let from_slave = t::drain_ready(slave, MAX_DATA + 1, false).map_err(sys(
            KIND,
            at,
            format!("read the queue of pty {index}'s slave"),
        ))?;
        t::write_all(slave, &from_master).map_err(sys(
            KIND,
            at,
            format!("write back pty {index}'s master queue"),
        ))?;
        t::write_all(master, &from_slave).map_err(sys(
            KIND,
            at,
            format!("write back pty {index}'s slave queue"),
        ))?;
        for (id, data) in [(mid, from_master), (mid & !1, from_slave)] {
            if data.len() > MAX_DATA {
                return Err(unsupported(
                    KIND,
                    at,
                    format!("more than {MAX_DATA} bytes queued in pty {index}"),
                ));
            }
            if !data.is_empty() {
                out.push(pb::TtyDataEntry { tty_id: id, data });
            }
        }
    }
    Ok(out)
}

/// Puts the queued data of pty `index` back: the master's through `slave`, the slave's
/// through `master`.
pub fn restore(
    at: At,
    extra: &super::Extra,
    index: u32,
    master: BorrowedFd<'_>,
    slave: BorrowedFd<'_>,
) -> Result<()> {
    for d in &extra.tty_data {
        let through = if d.tty_id == (index << 1) | 1 {
            slave.as_fd()
        } else if d.tty_id == index << 1 {
            master.as_fd()
        } else {
            continue;
        };
        t::write_all(through, &d.data).map_err(sys(
            KIND,
            at,
            format!("write the queued data of pty {index}"),
        ))?;
    }
    Ok(())
}
