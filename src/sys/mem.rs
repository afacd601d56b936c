//! Reading and writing another task's memory through `/proc/PID/mem` (`pread`/`pwrite`):
//! works on any mapping the kernel lets a tracer force (read-only and executable private
//! mappings included), unlike `process_vm_writev`.

use super::error::{Error, Result};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

/// Writes `data` at `addr` in process `pid`.
pub fn write(pid: i32, addr: u64, data: &[u8]) -> Result<()> {
    let path = format!("/proc/{pid}/mem");
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, &e))?;
    file.write_all_at(data, addr)
        .map_err(|e| Error::io("pwrite", &path, &e))
}

/// Reads `buf.len()` bytes at `addr` of process `pid`.
pub fn read(pid: i32, addr: u64, buf: &mut [u8]) -> Result<()> {
    let path = format!("/proc/{pid}/mem");
    let file = OpenOptions::new()
        .read(true)
        .open(&path)
        .map_err(|e| Error::io("open", &path, &e))?;
    file.read_exact_at(buf, addr)
        .map_err(|e| Error::io("pread", &path, &e))
}
