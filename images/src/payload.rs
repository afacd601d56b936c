//! Extra raw payloads that follow some entries (crit's "extra" handlers).
//!
//! ```text
//!  kind          entry message       extra after the entry
//!  PIPES_DATA,   pipe_data_entry     `bytes` (field 2) bytes of pipe content
//!  FIFO_DATA
//!  SK_QUEUES     sk_packet_entry     `length` (field 2) bytes of packet
//!  TCP_STREAM    tcp_stream_entry    `inq_len` (1) bytes of in-queue, then `outq_len` (3) of out-queue
//!  BPFMAP_DATA   bpfmap_data_entry   `keys_bytes` (2) + `values_bytes` (3) bytes
//!  IPCNS_SHM     ipc_shm_entry       unless `in_pagemaps` (3): `size` (2) bytes, zero-padded to 4
//!                                    (CRIU 4.2 always sets in_pagemaps: pages go to pagemap-shmem)
//!  IPCNS_SEM     ipc_sem_entry       `nsems` (2) u16 values, zero-padded to 8 bytes
//!  IPCNS_MSG     ipc_msg_entry       `qnum` (3) times: u32 len, ipc_msg (len bytes),
//!                                    `msize` (ipc_msg field 2) bytes zero-padded to 8
//!  GHOST_FILE    ghost_file_entry    with `chunks` (9): nothing; each later ghost_chunk_entry is
//!                                    followed by `len` (1) bytes. Without chunks: the rest of
//!                                    the file is the content
//! ```
//!
//! An [`crate::framing::Entry`] keeps its extra exactly as it is in the file (padding
//! included), so writing it back is byte-identical; the helpers here split it into its parts.
//! Field values are read with the schema-free [`crate::wire`] scanner, so this module does not
//! depend on the message definitions.

use crate::wire;

/// Which extra-payload rule a kind follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    None,
    PipeData,
    SkQueue,
    TcpStream,
    GhostFile,
    IpcShm,
    IpcMsg,
    IpcSem,
    BpfmapData,
}

/// How much extra data follows one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraLen {
    /// No extra data.
    None,
    /// Exactly this many bytes.
    Exact(u64),
    /// Everything up to the end of the file (ghost file without chunks).
    RestOfFile,
    /// `count` framed `ipc_msg` records, each followed by its padded data.
    IpcMsgs { count: u64 },
}

/// A payload-sizing field that is missing, of the wrong type, or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field}: {detail}")]
pub struct FieldError {
    pub field: &'static str,
    pub detail: String,
}

fn field_err(field: &'static str, detail: impl Into<String>) -> FieldError {
    FieldError {
        field,
        detail: detail.into(),
    }
}

fn varint(entry: &[u8], number: u32, field: &'static str) -> Result<Option<u64>, FieldError> {
    wire::varint_field(entry, number).map_err(|e| field_err(field, e.detail))
}

fn required(entry: &[u8], number: u32, field: &'static str) -> Result<u64, FieldError> {
    varint(entry, number, field)?.ok_or_else(|| field_err(field, "required field is missing"))
}

/// A uint32 field: protobuf varints of uint32 fields are truncated to 32 bits by decoders.
fn required_u32(entry: &[u8], number: u32, field: &'static str) -> Result<u64, FieldError> {
    Ok(required(entry, number, field)? & 0xffff_ffff)
}

/// `x` rounded up to a multiple of `to` (a power of two), without overflow.
pub fn round_up(x: u64, to: u64) -> Option<u64> {
    x.checked_add(to - 1).map(|v| v & !(to - 1))
}

/// How much extra data follows entry `index` (whose encoded bytes are `entry`).
pub fn extra_len(kind: PayloadKind, index: usize, entry: &[u8]) -> Result<ExtraLen, FieldError> {
    Ok(match kind {
        PayloadKind::None => ExtraLen::None,
        PayloadKind::PipeData => ExtraLen::Exact(required_u32(entry, 2, "bytes")?),
        PayloadKind::SkQueue => ExtraLen::Exact(required_u32(entry, 2, "length")?),
        PayloadKind::TcpStream => {
            let inq = required_u32(entry, 1, "inq_len")?;
            let outq = required_u32(entry, 3, "outq_len")?;
            ExtraLen::Exact(inq + outq)
        }
        PayloadKind::BpfmapData => {
            let k = required_u32(entry, 2, "keys_bytes")?;
            let v = required_u32(entry, 3, "values_bytes")?;
            ExtraLen::Exact(k + v)
        }
        PayloadKind::IpcShm => {
            let in_pagemaps = varint(entry, 3, "in_pagemaps")?.unwrap_or(0) != 0;
            if in_pagemaps {
                ExtraLen::None
            } else {
                let size = required(entry, 2, "size")?;
                ExtraLen::Exact(round_up(size, 4).ok_or_else(|| field_err("size", "too large"))?)
            }
        }
        PayloadKind::IpcSem => {
            let nsems = required_u32(entry, 2, "nsems")?;
            ExtraLen::Exact(round_up(nsems * 2, 8).unwrap_or(u64::MAX))
        }
        PayloadKind::IpcMsg => ExtraLen::IpcMsgs {
            count: required_u32(entry, 3, "qnum")?,
        },
        PayloadKind::GhostFile => {
            if index == 0 {
                if varint(entry, 9, "chunks")?.unwrap_or(0) != 0 {
                    ExtraLen::None
                } else {
                    ExtraLen::RestOfFile
                }
            } else {
                ExtraLen::Exact(required(entry, 1, "len")?)
            }
        }
    })
}

/// Size of the message text of one `ipc_msg` record (`msize`, unpadded).
pub fn ipc_msg_size(msg: &[u8]) -> Result<u64, FieldError> {
    required_u32(msg, 2, "msize")
}

/// Size of the (padded) data following one `ipc_msg` record of an IPCNS_MSG extra.
pub fn ipc_msg_data_len(msg: &[u8]) -> Result<u64, FieldError> {
    Ok(round_up(ipc_msg_size(msg)?, 8).unwrap_or(u64::MAX))
}

/// Splits a TCP_STREAM extra into (in-queue, out-queue).
pub fn tcp_stream_queues<'a>(
    entry: &[u8],
    extra: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), FieldError> {
    let inq = required_u32(entry, 1, "inq_len")? as usize;
    if inq > extra.len() {
        return Err(field_err("inq_len", "larger than the extra payload"));
    }
    Ok(extra.split_at(inq))
}

/// The semaphore values of an IPCNS_SEM extra (padding dropped).
pub fn ipc_sem_values(entry: &[u8], extra: &[u8]) -> Result<Vec<u16>, FieldError> {
    let nsems = required_u32(entry, 2, "nsems")? as usize;
    let bytes = extra
        .get(..nsems * 2)
        .ok_or_else(|| field_err("nsems", "more values than the extra payload holds"))?;
    Ok(bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Builds an IPCNS_SEM extra from values (zero-padded to 8 bytes).
pub fn ipc_sem_extra(values: &[u16]) -> Vec<u8> {
    let mut out: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    out.resize(out.len().div_ceil(8) * 8, 0);
    out
}

/// The segment content of an IPCNS_SHM extra (padding dropped).
pub fn ipc_shm_data<'a>(entry: &[u8], extra: &'a [u8]) -> Result<&'a [u8], FieldError> {
    let size = required(entry, 2, "size")?;
    usize::try_from(size)
        .ok()
        .and_then(|s| extra.get(..s))
        .ok_or_else(|| field_err("size", "larger than the extra payload"))
}

/// Builds an IPCNS_SHM extra from segment content (zero-padded to 4 bytes).
pub fn ipc_shm_extra(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.resize(data.len().div_ceil(4) * 4, 0);
    out
}

/// One message of an IPCNS_MSG extra.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcMsgRecord<'a> {
    /// Encoded `ipc_msg` message.
    pub msg: &'a [u8],
    /// Message text (`msize` bytes, padding dropped).
    pub data: &'a [u8],
}

/// Splits an IPCNS_MSG extra into its records.
pub fn ipc_msgs(extra: &[u8]) -> Result<Vec<IpcMsgRecord<'_>>, FieldError> {
    let mut out = Vec::new();
    let mut rest = extra;
    while !rest.is_empty() {
        let len_bytes = rest
            .get(..4)
            .ok_or_else(|| field_err("ipc_msg", "truncated length"))?;
        let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let msg = rest
            .get(4..4 + len as usize)
            .ok_or_else(|| field_err("ipc_msg", "truncated message"))?;
        let msize = ipc_msg_size(msg)? as usize;
        let padded = msize.div_ceil(8) * 8;
        let start = 4 + len as usize;
        let data = rest
            .get(start..start + msize)
            .ok_or_else(|| field_err("msize", "larger than the extra payload"))?;
        out.push(IpcMsgRecord { msg, data });
        rest = rest.get(start + padded..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Builds an IPCNS_MSG extra from (encoded ipc_msg, data) records.
pub fn ipc_msg_extra(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (msg, data) in records {
        out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
        out.extend_from_slice(msg);
        out.extend_from_slice(data);
        out.resize(out.len() + (data.len().div_ceil(8) * 8 - data.len()), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_and_ghost_rules() {
        // pipe_id=1, bytes=3000
        let e = [0x08, 0x01, 0x10, 0xb8, 0x17];
        assert_eq!(
            extra_len(PayloadKind::PipeData, 0, &e),
            Ok(ExtraLen::Exact(3000))
        );
        assert!(extra_len(PayloadKind::PipeData, 0, &[0x08, 0x01]).is_err());
        // ghost without chunks field → rest of file; with chunks=1 → nothing
        assert_eq!(
            extra_len(PayloadKind::GhostFile, 0, &[0x08, 0x00]),
            Ok(ExtraLen::RestOfFile)
        );
        assert_eq!(
            extra_len(PayloadKind::GhostFile, 0, &[0x48, 0x01]),
            Ok(ExtraLen::None)
        );
        assert_eq!(
            extra_len(PayloadKind::GhostFile, 1, &[0x08, 0x05, 0x10, 0x00]),
            Ok(ExtraLen::Exact(5))
        );
    }

    #[test]
    fn ipc_rules() {
        // nsems = 3 → 6 bytes padded to 8
        assert_eq!(
            extra_len(PayloadKind::IpcSem, 0, &[0x10, 0x03]),
            Ok(ExtraLen::Exact(8))
        );
        let ex = ipc_sem_extra(&[1, 2, 3]);
        assert_eq!(ex.len(), 8);
        assert_eq!(ipc_sem_values(&[0x10, 0x03], &ex), Ok(vec![1, 2, 3]));
        // shm size 5 → 8; in_pagemaps → none
        assert_eq!(
            extra_len(PayloadKind::IpcShm, 0, &[0x10, 0x05]),
            Ok(ExtraLen::Exact(8))
        );
        assert_eq!(
            extra_len(PayloadKind::IpcShm, 0, &[0x10, 0x05, 0x18, 0x01]),
            Ok(ExtraLen::None)
        );
        // one ipc_msg {mtype 1, msize 3} + "abc"
        let msg = [0x08, 0x01, 0x10, 0x03];
        let ex = ipc_msg_extra(&[(&msg, b"abc")]);
        assert_eq!(ex.len(), 4 + 4 + 8);
        let recs = ipc_msgs(&ex).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].data, b"abc");
    }
}
