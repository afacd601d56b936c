//! `mm-PID.img`: the address space layout. Each `/proc/PID/smaps` VMA becomes a `vma_entry`
//! with CRIU's status bits, mmap flags, protections and madvise bits.
//!
//! ```text
//!  maps path            status                                      flags
//!  /bin/x (private)     REGULAR|FILE_PRIVATE            shmid=file  MAP_PRIVATE
//!  /memfd:n, /dev/zero  REGULAR|FILE_SHARED|MEMFD       shmid=file  MAP_SHARED
//!  anon, [stack]        REGULAR|ANON_PRIVATE                        MAP_PRIVATE|MAP_ANON(|GROWSDOWN)
//!  [heap]               REGULAR|HEAP|ANON_PRIVATE
//!  [vdso]               REGULAR|VDSO|ANON_PRIVATE
//!  [vvar]+[vvar_vclock] REGULAR|ANON_PRIVATE|VVAR (merged into one)   madv DONTDUMP
//!  [vsyscall]           VSYSCALL|ANON_PRIVATE
//! ```

use serde_json::{json, Value};

use super::error::{DumpError, Result};
use super::files::Files;
use crate::proc::maps::Vma;

pub const VMA_AREA_REGULAR: u32 = 1 << 0;
pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
pub const VMA_AREA_VDSO: u32 = 1 << 3;
pub const VMA_AREA_HEAP: u32 = 1 << 5;
pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
pub const VMA_FILE_SHARED: u32 = 1 << 7;
pub const VMA_ANON_SHARED: u32 = 1 << 8;
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;
pub const VMA_AREA_VVAR: u32 = 1 << 12;
pub const VMA_AREA_MEMFD: u32 = 1 << 14;

/// How the pages of a VMA are dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageClass {
    /// Never dumped (vvar, vsyscall, DONTDUMP).
    Skip,
    /// Anonymous private: present or swapped pages, restorable lazily.
    AnonPrivate,
    /// File private: only pages that became anonymous (COW).
    FilePrivate,
    /// vDSO: every present page.
    Vdso,
    /// Shared memory: dumped once per object as shmem, not here.
    Shared,
}

/// One classified VMA.
#[derive(Debug, Clone)]
pub struct VmaOut {
    pub start: u64,
    pub end: u64,
    pub class: PageClass,
    pub entry: Value,
}

fn madv_bits(v: &Vma) -> u64 {
    let mut m = 0u64;
    for (flag, advice) in [
        ("sr", libc::MADV_SEQUENTIAL),
        ("rr", libc::MADV_RANDOM),
        ("dc", libc::MADV_DONTFORK),
        ("mg", libc::MADV_MERGEABLE),
        ("hg", libc::MADV_HUGEPAGE),
        ("nh", libc::MADV_NOHUGEPAGE),
        ("dd", libc::MADV_DONTDUMP),
        ("wf", libc::MADV_WIPEONFORK),
    ] {
        if v.has_flag(flag) {
            m |= 1u64 << advice;
        }
    }
    m
}

fn prot(v: &Vma) -> u32 {
    let mut p = 0;
    if v.read {
        p |= libc::PROT_READ;
    }
    if v.write {
        p |= libc::PROT_WRITE;
    }
    if v.exec {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

/// Status (with `extra_status`), mmap flags, open flags of the file and page class of a
/// file-backed VMA: shared ones map the file as the VMA may write it, private ones read only.
fn file_vma(v: &Vma, extra_status: u32) -> (u32, u32, u32, PageClass) {
    if v.shared {
        let open = if v.write {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        (
            VMA_AREA_REGULAR | VMA_FILE_SHARED | extra_status,
            libc::MAP_SHARED as u32,
            open as u32,
            PageClass::Shared,
        )
    } else {
        (
            VMA_AREA_REGULAR | VMA_FILE_PRIVATE | extra_status,
            libc::MAP_PRIVATE as u32,
            libc::O_RDONLY as u32,
            PageClass::FilePrivate,
        )
    }
}

/// Classifies the VMAs of `pid` (merging `[vvar]` with `[vvar_vclock]`) and registers the
/// files they map in `files`.
pub fn vmas(pid: i32, maps: &[Vma], files: &mut Files) -> Result<Vec<VmaOut>> {
    let mut out: Vec<VmaOut> = Vec::new();
    for v in maps {
        let (path, _) = v.path_deleted();
        let status;
        let mut flags: u32;
        let mut shmid = 0u64;
        let mut fdflags: Option<u32> = None;
        let class;
        let anon_flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
        match path {
            "[vsyscall]" => {
                status = VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE;
                flags = anon_flags;
                class = PageClass::Skip;
            }
            "[vdso]" => {
                status = VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE;
                flags = anon_flags;
                class = PageClass::Vdso;
            }
            "[vvar]" | "[vvar_vclock]" => {
                if let Some(last) = out.last_mut() {
                    if last.end == v.start
                        && last.entry["status"].as_u64()
                            == Some((VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_VVAR) as u64)
                    {
                        last.end = v.end;
                        last.entry["end"] = json!(v.end);
                        continue;
                    }
                }
                status = VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_VVAR;
                flags = anon_flags;
                class = PageClass::Skip;
            }
            "[heap]" => {
                status = VMA_AREA_REGULAR | VMA_AREA_HEAP | VMA_ANON_PRIVATE;
                flags = anon_flags;
                class = PageClass::AnonPrivate;
            }
            _ if v.ino == 0 && (path.is_empty() || path.starts_with('[')) => {
                if v.shared {
                    return Err(DumpError::new(
                        "mm",
                        pid,
                        Some(libc::ENOTSUP),
                        format!(
                            "shared anonymous VMA {:x}-{:x} without an inode",
                            v.start, v.end
                        ),
                    ));
                }
                status = VMA_AREA_REGULAR | VMA_ANON_PRIVATE;
                flags = anon_flags;
                class = PageClass::AnonPrivate;
            }
            _ if path.starts_with("/memfd:")
                || (v.shared && path == "/dev/zero")
                || path.starts_with("/SYSV") =>
            {
                if path.starts_with("/SYSV") {
                    return Err(DumpError::new(
                        "mm",
                        pid,
                        Some(libc::ENOTSUP),
                        format!("SysV shared memory VMA {:x}-{:x}", v.start, v.end),
                    ));
                }
                shmid = files.vma_memfd(pid, v)? as u64;
                let f = file_vma(v, VMA_AREA_MEMFD);
                (status, flags, class) = (f.0, f.1, f.3);
                fdflags = Some(f.2);
            }
            _ => {
                shmid = files.vma_file(pid, v)? as u64;
                let f = file_vma(v, 0);
                (status, flags, class) = (f.0, f.1, f.3);
                fdflags = Some(f.2);
            }
        }
        if v.has_flag("gd") {
            flags |= libc::MAP_GROWSDOWN as u32;
        }
        if v.has_flag("lo") {
            flags |= libc::MAP_LOCKED as u32;
        }
        if v.has_flag("nr") {
            flags |= libc::MAP_NORESERVE as u32;
        }
        let madv = madv_bits(v);
        let class = if madv & (1u64 << libc::MADV_DONTDUMP) != 0 && class != PageClass::Vdso {
            PageClass::Skip
        } else {
            class
        };
        let mut e = json!({
            "start": v.start, "end": v.end, "pgoff": v.pgoff, "shmid": shmid,
            "prot": prot(v), "flags": flags, "status": status, "fd": -1,
        });
        if madv != 0 {
            e["madv"] = json!(madv);
        }
        if let Some(f) = fdflags {
            e["fdflags"] = json!(f);
        }
        out.push(VmaOut {
            start: v.start,
            end: v.end,
            class,
            entry: e,
        });
    }
    Ok(out)
}

/// Inputs of the `mm_entry` besides the VMAs.
#[derive(Debug, Clone, Default)]
pub struct MmFields {
    pub stat: crate::proc::stat::Stat,
    pub brk: u64,
    pub auxv: Vec<u64>,
    pub exe_file_id: u32,
    pub dumpable: u32,
    pub thp_disabled: bool,
}

/// The `mm_entry` of one process.
pub fn mm_entry(m: &MmFields, vmas: &[VmaOut]) -> Value {
    let s = &m.stat;
    json!({
        "mm_start_code": s.start_code, "mm_end_code": s.end_code,
        "mm_start_data": s.start_data, "mm_end_data": s.end_data,
        "mm_start_stack": s.start_stack, "mm_start_brk": s.start_brk, "mm_brk": m.brk,
        "mm_arg_start": s.arg_start, "mm_arg_end": s.arg_end,
        "mm_env_start": s.env_start, "mm_env_end": s.env_end,
        "exe_file_id": m.exe_file_id,
        "mm_saved_auxv": m.auxv,
        "vmas": vmas.iter().map(|v| v.entry.clone()).collect::<Vec<_>>(),
        "dumpable": m.dumpable,
        "thp_disabled": m.thp_disabled,
    })
}

/// The heap end when the task could not be asked for `brk(0)`: the end of `[heap]`, or
/// `start_brk` if there is no heap VMA.
pub fn brk_from_maps(maps: &[Vma], start_brk: u64) -> u64 {
    maps.iter()
        .find(|v| v.path == "[heap]")
        .map(|v| v.end)
        .unwrap_or(start_brk)
}
