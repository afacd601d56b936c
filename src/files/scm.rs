//! Descriptors in flight: files passed with `SCM_RIGHTS` that wait, not yet received, in a
//! unix socket's receive queue.
//!
//! ```text
//!  dump:    peek of the queue (unix.rs) -> each packet's bytes + copies of its descriptors
//!           (the kernel installs them in the dumper on MSG_PEEK); the copies wait here
//!           until every task's fds are dumped, then the dump engine dumps each as a file of
//!           its own (same open file description as a task's fd: same id) and puts the ids
//!           in the packet's entry
//!  image:   sk-queues.img {id_for, length, scm [{type SCM_RIGHTS, rights [file ids]}]} + bytes
//!  restore: a queue with such a packet is written once every file is open
//!           ([`RestoreCtx::finish_in_flight`]): sendmsg of the bytes with the restored
//!           descriptions attached, packets in their order
//! ```

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use stasis_images::pb;

use super::error::{image, sys, At, Result};
use super::{DumpState, RestoreCtx};
use crate::sys::socket as so;

/// `scm_entry.type` of passed descriptors (the kernel's `SCM_RIGHTS`).
pub const SCM_RIGHTS: u32 = libc::SCM_RIGHTS as u32;

/// One queued packet for the restore: its bytes and the files.img ids passed with it.
pub type Packet = (Vec<u8>, Vec<u32>);

/// Copies of the descriptors in flight of one packet (`sk_queues[index]`), waiting to be
/// dumped as files.
#[derive(Debug)]
pub struct InFlight {
    pub index: usize,
    pub fds: Vec<OwnedFd>,
}

impl DumpState {
    /// The descriptors in flight found since the last call (see the module doc).
    pub fn take_in_flight(&mut self) -> Vec<InFlight> {
        std::mem::take(&mut self.in_flight)
    }

    /// Records the files.img ids of the descriptors passed with packet `index`.
    pub fn set_rights(&mut self, index: usize, ids: Vec<u32>) {
        if let Some((e, _)) = self.extra.sk_queues.get_mut(index) {
            e.scm = vec![pb::ScmEntry {
                r#type: SCM_RIGHTS,
                rights: ids,
            }];
        }
    }
}

/// The files.img ids of every descriptor in flight in `extra` (they must be opened even when
/// no task has them).
pub fn in_flight_ids(extra: &super::Extra) -> impl Iterator<Item = u32> + '_ {
    extra
        .sk_queues
        .iter()
        .flat_map(|(e, _)| e.scm.iter())
        .filter(|s| s.r#type == SCM_RIGHTS)
        .flat_map(|s| s.rights.iter().copied())
}

/// The packets queued for socket `id`, in order, with the ids passed with them. Control
/// messages other than `SCM_RIGHTS` are refused (CRIU writes none).
pub fn packets_for(ctx: &RestoreCtx<'_>, kind: &'static str, id: u32) -> Result<Vec<Packet>> {
    let mut out = Vec::new();
    for (e, d) in ctx.extra.sk_queues.iter().filter(|(e, _)| e.id_for == id) {
        let mut rights = Vec::new();
        for s in &e.scm {
            if s.r#type != SCM_RIGHTS {
                return Err(image(
                    kind,
                    At::Id(id),
                    format!("queued control message type {}", s.r#type),
                ));
            }
            rights.extend_from_slice(&s.rights);
        }
        out.push((d.clone(), rights));
    }
    Ok(out)
}

/// Writes `packets` so they are queued on the socket at the other end of `via`; a queue
/// that passes descriptors is written later, once every file is open
/// ([`RestoreCtx::finish_in_flight`]).
pub fn fill(
    kind: &'static str,
    at: At,
    via: BorrowedFd<'_>,
    packets: Vec<Packet>,
    ctx: &mut RestoreCtx<'_>,
) -> Result<()> {
    if packets.iter().any(|(_, r)| !r.is_empty()) {
        let keep = via.try_clone_to_owned().map_err(|e| {
            sys(kind, at, "dup a socket")(nix::errno::Errno::from_raw(
                e.raw_os_error().unwrap_or(libc::EMFILE),
            ))
        })?;
        ctx.scm_fills.push((at, keep, packets));
        return Ok(());
    }
    send_all(kind, at, via, &packets, &HashMap::new())
}

fn send_all(
    kind: &'static str,
    at: At,
    via: BorrowedFd<'_>,
    packets: &[Packet],
    desc: &HashMap<u32, RawFd>,
) -> Result<()> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    for (p, rights) in packets {
        let fds = rights
            .iter()
            .map(|id| {
                desc.get(id).copied().ok_or_else(|| {
                    image(kind, at, format!("descriptor in flight: no file id {id}"))
                })
            })
            .collect::<Result<Vec<RawFd>>>()?;
        // The descriptors go with the first bytes (a stream keeps them with those bytes).
        let mut off =
            so::send_with_rights(via, p, &fds, flags).map_err(sys(kind, at, "requeue data"))?;
        while off < p.len() {
            off += so::send(via, &p[off..], flags).map_err(sys(kind, at, "requeue data"))?;
        }
    }
    Ok(())
}

impl RestoreCtx<'_> {
    /// Writes the queues that pass descriptors, with the restored descriptions (`desc`:
    /// files.img id -> descriptor). Call once every file is open.
    pub fn finish_in_flight(&mut self, desc: &HashMap<u32, RawFd>) -> Result<()> {
        for (at, via, packets) in std::mem::take(&mut self.scm_fills) {
            send_all("unix", at, via.as_fd(), &packets, desc)?;
        }
        Ok(())
    }
}
