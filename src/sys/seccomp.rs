//! Reading a stopped tracee's seccomp filters (the caller must be its tracer, with
//! CAP_SYS_ADMIN, and the tracee in a ptrace stop).
//!
//! ```text
//!  PTRACE_SECCOMP_GET_FILTER (0x420c)   addr = index (0 = the newest filter), data = buffer
//!      returns the number of sock_filter instructions (8 bytes each: code u16, jt u8,
//!      jf u8, k u32); ENOENT past the oldest filter; data = NULL asks for the count only
//!  PTRACE_SECCOMP_GET_METADATA (0x420d) addr = sizeof(struct), data = {filter_off u64 (in:
//!      index), flags u64 (out: SECCOMP_FILTER_FLAG_LOG ...)}
//! ```

use nix::errno::Errno;

use super::error::{Error, Result};

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// `BPF_MAXINSNS`: the longest classic BPF program the kernel accepts.
pub const BPF_MAXINSNS: usize = 4096;
/// Bytes of one `struct sock_filter`.
pub const INSN: usize = 8;
/// Most filters one thread may carry here (the kernel caps the total instructions at 32768).
pub const MAX_FILTERS: usize = 1024;

/// One filter of a thread: its instructions (raw `sock_filter` bytes) and flags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Filter {
    pub prog: Vec<u8>,
    pub flags: u64,
}

fn filter_at(tid: i32, index: usize) -> Result<Option<Filter>> {
    let mut buf = vec![0u8; BPF_MAXINSNS * INSN];
    // SAFETY: PTRACE_SECCOMP_GET_FILTER writes at most BPF_MAXINSNS instructions of 8 bytes
    // into `data`, and `buf` is that large and lives across the call.
    let n = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index,
            buf.as_mut_ptr() as usize,
        )
    };
    if n < 0 {
        return match Errno::last() {
            Errno::ENOENT => Ok(None),
            e => Err(Error::task("PTRACE_SECCOMP_GET_FILTER", tid, e)),
        };
    }
    let n = (n as usize).min(BPF_MAXINSNS);
    buf.truncate(n * INSN);
    let mut meta = [index as u64, 0u64];
    // SAFETY: the kernel reads and writes `struct seccomp_metadata` (two u64) at `data`;
    // `addr` is its size.
    let r = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_METADATA,
            tid,
            std::mem::size_of_val(&meta),
            meta.as_mut_ptr() as usize,
        )
    };
    let flags = if r < 0 { 0 } else { meta[1] };
    Ok(Some(Filter { prog: buf, flags }))
}

/// Every seccomp filter of thread `tid`, oldest first (the order they were installed in).
pub fn filters(tid: i32) -> Result<Vec<Filter>> {
    let mut out = Vec::new();
    for i in 0..MAX_FILTERS {
        match filter_at(tid, i)? {
            Some(f) => out.push(f),
            None => {
                out.reverse();
                return Ok(out);
            }
        }
    }
    Err(Error::task("PTRACE_SECCOMP_GET_FILTER", tid, Errno::E2BIG))
}
