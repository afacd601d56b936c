//! Glue for the engines: dump an fd of another task by number, and turn entries into the
//! JSON trees the dump engine's image writer encodes (field names, numbers, byte arrays).
//!
//! ```text
//!  dump_task_fd(pid, fd, next_id, state)
//!    readlink /proc/PID/fd/FD, read /proc/PID/fdinfo/FD
//!    kind_of(link)?  no -> Ok(None)   (the engine's own kinds, or unsupported)
//!    pidfd_open(pid) + pidfd_getfd(FD) -> our copy of the descriptor (same open file)
//!    dump_fd(..) -> (file_entry, "EVENTFD" | "UNIXSK" | ...)
//! ```

use std::os::fd::AsFd;

use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage, Value as PValue};
use serde_json::{json, Value};
use stasis_images::pb;

use super::error::{sys, At, Result};
use super::{DumpFd, DumpState};
use crate::sys::fdkinds;

fn io_errno(e: std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Dumps fd `fd` of task `pid` if it is of a kind of [`super::KINDS`]; `Ok(None)` otherwise
/// (no id is taken then). Returns the entry and its fd type name for fdinfo-N.img.
pub fn dump_task_fd(
    pid: i32,
    fd: i32,
    next_id: &mut dyn FnMut() -> u32,
    st: &mut DumpState,
) -> Result<Option<(pb::FileEntry, &'static str)>> {
    let at = At::Fd { pid, fd };
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|e| sys("file", at, "readlink")(io_errno(e)))?;
    let link = link.to_string_lossy().into_owned();
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .map_err(|e| sys("file", at, "read fdinfo")(io_errno(e)))?;
    let pidfd = fdkinds::pidfd_open(pid).map_err(sys("file", at, "pidfd_open"))?;
    let file = fdkinds::pidfd_getfd(&pidfd, fd).map_err(sys("file", at, "pidfd_getfd"))?;
    let Some(kind) = super::kind_of(&link, file.as_fd()) else {
        return Ok(None);
    };
    let d = DumpFd {
        pid,
        fd,
        file: file.as_fd(),
        link: &link,
        fdinfo: &fdinfo,
        id: next_id(),
    };
    let e = (kind.dump)(&d, st)?;
    Ok(Some((e, kind.fd_type.as_str_name())))
}

fn value_json(v: &PValue) -> Value {
    match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(x) => json!(x),
        PValue::I64(x) => json!(x),
        PValue::U32(x) => json!(x),
        PValue::U64(x) => json!(x),
        PValue::F32(x) => json!(x),
        PValue::F64(x) => json!(x),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => json!(b.to_vec()),
        PValue::EnumNumber(n) => json!(n),
        PValue::Message(m) => message_json(m),
        PValue::List(l) => Value::Array(l.iter().map(value_json).collect()),
        PValue::Map(_) => Value::Null,
    }
}

fn message_json(m: &DynamicMessage) -> Value {
    let mut obj = serde_json::Map::new();
    for (f, v) in m.fields() {
        obj.insert(f.name().to_string(), value_json(v));
    }
    Value::Object(obj)
}

/// A message as a JSON tree keyed by proto field names, set fields only (enums as numbers,
/// bytes as arrays): the form the dump engine's `images_out::encode` takes.
pub fn to_json<M: Message>(msg: &M, message: &str) -> Result<Value> {
    let pool = prost_reflect::DescriptorPool::decode(stasis_images::DESCRIPTOR_SET)
        .map_err(|e| super::error::image("file", At::Id(0), format!("descriptor set: {e}")))?;
    let desc = pool
        .get_message_by_name(&format!("criu.{message}"))
        .ok_or_else(|| super::error::image("file", At::Id(0), format!("no message {message}")))?;
    let m = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| super::error::image("file", At::Id(0), format!("{message}: {e}")))?;
    debug_assert_eq!(m.descriptor().name(), message);
    Ok(message_json(&m))
}

/// A files.img entry as JSON (see [`to_json`]).
pub fn entry_json(e: &pb::FileEntry) -> Result<Value> {
    to_json(e, "file_entry")
}
