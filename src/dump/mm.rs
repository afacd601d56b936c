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
//!
//! Entries are built as the typed messages of the images crate (`pb::VmaEntry`,
//! `pb::MmEntry`) and framed by the images crate's writer ([`mm_file`]); a test reads the
//! image of this process back through the images crate.

use stasis_images::pb;

use super::collect_files::Files;
use super::error::{DumpError, Result};
use super::images_out;
use crate::proc::maps::Vma;

pub const VMA_AREA_REGULAR: u32 = 1 << 0;
pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
pub const VMA_AREA_VDSO: u32 = 1 << 3;
pub const VMA_AREA_HEAP: u32 = 1 << 5;
pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
pub const VMA_FILE_SHARED: u32 = 1 << 7;
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;
pub const VMA_AREA_VVAR: u32 = 1 << 12;
pub const VMA_AREA_MEMFD: u32 = 1 << 14;

/// Most words of `mm_saved_auxv`: CRIU's `AT_VECTOR_SIZE` on x86-64. CRIU's dump keeps the
/// first this many words of `/proc/PID/auxv` (dropping the rest, AT_NULL included, when the
/// kernel has more) and its restore rejects an image with more ("Image corrupted").
pub const AUXV_WORDS_MAX: usize = 44;

/// How the pages of a VMA are dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageClass {
    /// Never dumped (vvar, vsyscall, device mappings).
    Skip,
    /// Anonymous private: present or swapped pages, restorable lazily.
    AnonPrivate,
    /// File private: only pages that became anonymous (COW).
    FilePrivate,
    /// vDSO: every page, present or not (CRIU's restore reads the vDSO's ELF from them).
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
    pub entry: pb::VmaEntry,
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
                        && last.entry.status == VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_VVAR
                    {
                        last.end = v.end;
                        last.entry.end = v.end;
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
        // MADV_DONTDUMP keeps a range out of core dumps, not out of a checkpoint: its pages
        // are dumped like any others (as CRIU does). Device mappings (VM_IO/VM_PFNMAP, which
        // the kernel marks DONTDUMP too) have no pages to read and stay skipped.
        let class = if v.has_flag("io") || v.has_flag("pf") {
            PageClass::Skip
        } else {
            class
        };
        let entry = pb::VmaEntry {
            start: v.start,
            end: v.end,
            pgoff: v.pgoff,
            shmid,
            prot: prot(v),
            flags,
            status,
            fd: -1,
            madv: (madv != 0).then_some(madv),
            fdflags,
        };
        out.push(VmaOut {
            start: v.start,
            end: v.end,
            class,
            entry,
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
    /// `mlockall` flags for future mappings, 0: none.
    pub mlockall: u32,
}

/// The `mm_entry` of one process.
pub fn mm_entry(m: &MmFields, vmas: &[VmaOut]) -> pb::MmEntry {
    let s = &m.stat;
    pb::MmEntry {
        mm_start_code: s.start_code,
        mm_end_code: s.end_code,
        mm_start_data: s.start_data,
        mm_end_data: s.end_data,
        mm_start_stack: s.start_stack,
        mm_start_brk: s.start_brk,
        mm_brk: m.brk,
        mm_arg_start: s.arg_start,
        mm_arg_end: s.arg_end,
        mm_env_start: s.env_start,
        mm_env_end: s.env_end,
        exe_file_id: m.exe_file_id,
        mm_saved_auxv: m.auxv[..m.auxv.len().min(AUXV_WORDS_MAX)].to_vec(),
        vmas: vmas.iter().map(|v| v.entry).collect(),
        dumpable: Some(m.dumpable as i32),
        aios: Vec::new(),
        thp_disabled: Some(m.thp_disabled),
        mlockall_flags: (m.mlockall != 0).then_some(m.mlockall),
    }
}

/// The bytes of `mm-PID.img` holding `entry`.
pub fn mm_file(entry: &pb::MmEntry) -> Vec<u8> {
    images_out::file_bytes(images_out::MM, entry)
}

/// The heap end when the task could not be asked for `brk(0)`: the end of `[heap]`, or
/// The readable ranges of `maps`, in address order (what a page copy may read).
pub fn readable_ranges(maps: &[Vma]) -> Vec<(u64, u64)> {
    let mut readable: Vec<(u64, u64)> = maps
        .iter()
        .filter(|v| v.read)
        .map(|v| (v.start, v.end))
        .collect();
    readable.sort_unstable();
    readable
}

/// `start_brk` if there is no heap VMA.
pub fn brk_from_maps(maps: &[Vma], start_brk: u64) -> u64 {
    maps.iter()
        .find(|v| v.path == "[heap]")
        .map(|v| v.end)
        .unwrap_or(start_brk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that the image file of the input reads back, through the images crate's
    /// reader and schema check, as the entry it was built from.
    fn reads_back(m: &MmFields, vmas: &[VmaOut]) {
        let entry = mm_entry(m, vmas);
        let img = stasis_images::framing::Image::parse(&mm_file(&entry)).expect("parse");
        img.check_messages().expect("schema");
        assert_eq!(img.single::<pb::MmEntry>().expect("one mm entry"), entry);
    }

    /// A private anonymous mapping of `pages` pages with `advice` applied (unmapped on drop).
    struct Mapping(*mut libc::c_void, usize);

    impl Mapping {
        fn new(pages: usize, flags: libc::c_int, advice: &[libc::c_int]) -> Self {
            let len = pages * 4096;
            // SAFETY: a fresh anonymous mapping at an address the kernel picks; no memory of
            // this process is touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "mmap");
            for &a in advice {
                // SAFETY: `p..p+len` is the mapping made above, owned by this value.
                assert_eq!(unsafe { libc::madvise(p, len, a) }, 0, "madvise {a}");
            }
            Mapping(p, len)
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, not referenced by anything else.
            unsafe { libc::munmap(self.0, self.1) };
        }
    }

    #[test]
    fn mm_image_of_this_process_reads_back() {
        let _dontdump = Mapping::new(4, 0, &[libc::MADV_DONTDUMP, libc::MADV_RANDOM]);
        let _hugepage = Mapping::new(8, libc::MAP_NORESERVE, &[libc::MADV_NOHUGEPAGE]);
        let _down = Mapping::new(2, libc::MAP_GROWSDOWN, &[]);
        let pid = std::process::id() as i32;
        let maps = crate::proc::maps::read_smaps(pid).expect("smaps");
        let mut files = Files::new();
        let vmas = vmas(pid, &maps, &mut files).expect("vmas");
        assert!(vmas.iter().any(|v| v.entry.madv.is_some()), "no madv VMA");
        assert!(
            vmas.iter().any(|v| v.entry.fdflags.is_some()),
            "no file VMA"
        );
        let dd = vmas
            .iter()
            .find(|v| v.start == _dontdump.0 as u64)
            .expect("the DONTDUMP mapping");
        assert_eq!(
            dd.class,
            PageClass::AnonPrivate,
            "DONTDUMP pages are dumped"
        );
        let stat = crate::proc::stat::read(pid).expect("stat");
        let mut m = MmFields {
            brk: brk_from_maps(&maps, stat.start_brk),
            stat,
            auxv: crate::proc::misc::read_auxv(pid).expect("auxv"),
            exe_file_id: files.exe(pid).expect("exe"),
            dumpable: 1,
            thp_disabled: false,
            mlockall: 0,
        };
        reads_back(&m, &vmas);
        (m.dumpable, m.thp_disabled) = (0, true);
        reads_back(&m, &vmas);
    }

    /// CRIU 4.2's restore rejects more than `AT_VECTOR_SIZE` (44) auxv words; this kernel
    /// gives more (46 on 6.18 x86-64): the image keeps the first 44, as CRIU's dump does.
    #[test]
    fn saved_auxv_is_cut_to_criu_vector_size() {
        let long: Vec<u64> = (1..=46).collect();
        let m = MmFields {
            auxv: long.clone(),
            ..Default::default()
        };
        assert_eq!(mm_entry(&m, &[]).mm_saved_auxv, long[..44].to_vec());
        let short = MmFields {
            auxv: vec![6, 4096, 0, 0],
            ..Default::default()
        };
        assert_eq!(mm_entry(&short, &[]).mm_saved_auxv, vec![6, 4096, 0, 0]);
        let own = crate::proc::misc::read_auxv(std::process::id() as i32).expect("auxv");
        let m = MmFields {
            auxv: own.clone(),
            ..Default::default()
        };
        let saved = mm_entry(&m, &[]).mm_saved_auxv;
        assert!(saved.len() <= AUXV_WORDS_MAX && own.starts_with(&saved));
    }

    fn anon(start: u64, end: u64, path: &str, flags: &[&str]) -> Vma {
        Vma {
            start,
            end,
            read: true,
            write: !path.starts_with("[v"),
            path: path.into(),
            vm_flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn mm_image_of_special_vmas_reads_back() {
        let maps = [
            anon(0x1000, 0x3000, "[heap]", &["rd", "wr", "hg"]),
            anon(0x5000, 0x6000, "", &["rd", "wr", "lo", "dc", "wf", "mg"]),
            anon(0x7000, 0x9000, "[vvar]", &["rd", "dd"]),
            anon(0x9000, 0xa000, "[vvar_vclock]", &["rd", "dd"]),
            anon(0xa000, 0xc000, "[vdso]", &["rd", "ex"]),
            anon(0xd000, 0xe000, "[stack]", &["rd", "wr", "gd", "sr", "nr"]),
            anon(
                0xffff_ffff_ff60_0000,
                0xffff_ffff_ff60_1000,
                "[vsyscall]",
                &[],
            ),
        ];
        let vmas = vmas(1, &maps, &mut Files::new()).expect("vmas");
        assert_eq!(vmas.len(), 6, "[vvar] and [vvar_vclock] are one VMA");
        assert_eq!(
            (vmas[2].start, vmas[2].end, vmas[2].entry.end),
            (0x7000, 0xa000, 0xa000)
        );
        let m = MmFields {
            auxv: vec![33, 0x7fff_0000_0000, 0, u64::MAX],
            exe_file_id: 7,
            dumpable: 2,
            ..Default::default()
        };
        reads_back(&m, &vmas);
        reads_back(&MmFields::default(), &[]);
    }
}
