//! vdso and vvar: keep the image's addresses working on the running kernel.
//!
//! ```text
//! running kernel (this process)        image                      plan
//! [vvar][vvar_vclock][vdso]            [vvar][vdso] (or no vvar)
//!   same vdso size, same vvar size and offset, same symbol offsets → Move: each running
//!     piece is mremapped so that the vdso lands on the image's vdso (SpecialRemap list,
//!     ordered so that no move clobbers a piece still to move)
//!   otherwise → Proxy: the running pieces move as a block to `proxy_at` (a free place,
//!     `free_block`); the image's vdso is restored from its dumped pages (`image_bytes`) like
//!     any private VMA and its [vvar], if any, as anonymous memory with the image's
//!     protection (`restore::blob`); each function symbol of the image's vdso gets a 12-byte
//!     jump to the same symbol of the running vdso (VdsoPatch list, written by the blob)
//! ```
//! The comparison is CRIU's: vdso size, symbol offsets (by name), vvar size and order; equal
//! bytes short-cut it. Callers keep whatever pointers into the old vdso they had (libc caches
//! them), which is why the old copy stays at its address and only its entry points change.

use super::blob_args::abi::{SpecialRemap, VdsoPatch};
use super::blob_args::TaskSpec;
use super::img::msg::VmaEntry;
use super::plan::vma_status as vs;
use std::os::unix::fs::FileExt;

/// Errors of the vdso planning.
#[derive(Debug, thiserror::Error)]
pub enum VdsoError {
    #[error("read {path}: {source}")]
    Io {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("the running process has no [vdso] mapping")]
    NoRuntimeVdso,
    #[error("vdso ELF: {0}")]
    BadElf(&'static str),
    #[error("vdso ELF: {0}")]
    Elf(#[from] object::read::Error),
    #[error("vdso layouts differ and the image has no vdso pages to proxy")]
    NoImageBytes,
}

/// Bytes of the jump the blob writes at each entry point (`movabs rax, imm64; jmp rax`).
pub const PATCH_LEN: u64 = 12;

/// A half-open address range.
pub type Range = (u64, u64);

/// The vdso and vvar pieces of the running kernel, in address order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVdso {
    pub vdso: Range,
    /// `[vvar]`, `[vvar_vclock]` (whatever the kernel shows), sorted.
    pub vvars: Vec<Range>,
}

/// The image's vdso, its `[vvar]` (if the image has one) and the dumped vdso pages.
#[derive(Debug, Clone, Default)]
pub struct ImageVdso {
    pub vdso: Range,
    pub vvar: Option<Range>,
    pub bytes: Option<Vec<u8>>,
}

/// What the restorer must do (fill `TaskSpec::special` / `vdso_patches` with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VdsoPlan {
    Move {
        special: Vec<SpecialRemap>,
    },
    Proxy {
        special: Vec<SpecialRemap>,
        patches: Vec<VdsoPatch>,
    },
}

/// Status bits of the image VMAs the running kernel provides when the vdso is moved (and
/// when the image has no vdso): the blob skips them in the premap.
pub const MOVED_SPECIAL: u32 = vs::VDSO | vs::VVAR | vs::VSYSCALL;

impl ImageVdso {
    /// The image's `[vdso]` and `[vvar]` VMAs (no bytes yet); `None` when it has no vdso.
    pub fn from_vmas(vmas: &[VmaEntry]) -> Option<Self> {
        let mut image = ImageVdso::default();
        let mut has_vdso = false;
        for v in vmas {
            if v.status & vs::VDSO != 0 {
                image.vdso = (v.start, v.end);
                has_vdso = true;
            }
            if v.status & vs::VVAR != 0 {
                image.vvar = Some((v.start, v.end));
            }
        }
        has_vdso.then_some(image)
    }
}

impl VdsoPlan {
    /// Status bits of the image VMAs the premap skips. A move puts the running pieces in
    /// place of the vdso and vvar ([`MOVED_SPECIAL`]); with a proxy only vsyscall stays
    /// special: the image's vdso is restored from its pages like any private mapping (then
    /// patched) and its vvar as anonymous memory.
    pub fn skipped_status(&self) -> u32 {
        match self {
            VdsoPlan::Move { .. } => MOVED_SPECIAL,
            VdsoPlan::Proxy { .. } => vs::VSYSCALL,
        }
    }

    /// Hands the plan to the blob: the moves of the running pieces and the proxy's jumps.
    pub fn apply(self, spec: &mut TaskSpec) {
        match self {
            VdsoPlan::Move { special } => spec.special = special,
            VdsoPlan::Proxy { special, patches } => {
                spec.special = special;
                spec.vdso_patches = patches;
            }
        }
    }
}

impl RuntimeVdso {
    /// Reads the pieces from `/proc/self/maps`.
    pub fn current() -> Result<Self, VdsoError> {
        let maps = std::fs::read_to_string("/proc/self/maps").map_err(|source| VdsoError::Io {
            path: "/proc/self/maps",
            source,
        })?;
        Self::parse(&maps)
    }

    /// Parses the pieces out of a maps text.
    pub fn parse(maps: &str) -> Result<Self, VdsoError> {
        let mut vdso = None;
        let mut vvars = Vec::new();
        for l in maps.lines() {
            let name = l.split_whitespace().nth(5).unwrap_or("");
            let Some((s, e)) = l.split_whitespace().next().and_then(|r| r.split_once('-')) else {
                continue;
            };
            let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
                continue;
            };
            match name {
                "[vdso]" => vdso = Some((s, e)),
                n if n.starts_with("[vvar") => vvars.push((s, e)),
                _ => {}
            }
        }
        vvars.sort_unstable();
        Ok(RuntimeVdso {
            vdso: vdso.ok_or(VdsoError::NoRuntimeVdso)?,
            vvars,
        })
    }

    /// The running vdso's bytes (through /proc/self/mem).
    pub fn read_bytes(&self) -> Result<Vec<u8>, VdsoError> {
        let io = |source| VdsoError::Io {
            path: "/proc/self/mem",
            source,
        };
        let f = std::fs::File::open("/proc/self/mem").map_err(io)?;
        let mut b = vec![0u8; (self.vdso.1 - self.vdso.0) as usize];
        f.read_exact_at(&mut b, self.vdso.0).map_err(io)?;
        Ok(b)
    }

    fn pieces(&self) -> Vec<Range> {
        let mut v = self.vvars.clone();
        v.push(self.vdso);
        v.sort_unstable();
        v
    }
}

/// Defined function symbols of a vdso ELF image as `(name, offset from the vdso start)`,
/// sorted by name: the `STT_FUNC` entries of its dynamic symbol table (at most 4096), each
/// relative to the address of its first `PT_LOAD`.
pub fn vdso_symbols(elf: &[u8]) -> Result<Vec<(String, u64)>, VdsoError> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    use object::{Object, ObjectSymbol};
    let file = ElfFile64::<object::Endianness>::parse(elf)?;
    let endian = file.endian();
    let load_base = file
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
        .map(|ph| ph.p_vaddr(endian))
        .ok_or(VdsoError::BadElf("no PT_LOAD"))?;
    let mut out = Vec::new();
    for sym in file.dynamic_symbols().take(4096) {
        let raw = sym.elf_symbol();
        if raw.st_type() != object::elf::STT_FUNC || sym.is_undefined() {
            continue; // functions defined in the vdso only
        }
        let name = String::from_utf8_lossy(sym.name_bytes()?).into_owned();
        out.push((name, sym.address().wrapping_sub(load_base)));
    }
    if out.is_empty() {
        return Err(VdsoError::BadElf("no function symbols"));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Largest vdso the engine reads out of an image (the kernel's are 2 to 4 pages).
pub const MAX_IMAGE_VDSO: u64 = 64 * 4096;

/// The bytes of `range` out of the dumped pages: `runs` are `(vaddr, pages, offset in the
/// pages file)` and `read(buf, offset)` fills `buf` from the pages file. `None` unless every
/// page of the range was dumped (or it is larger than [`MAX_IMAGE_VDSO`]).
pub fn image_bytes(
    range: Range,
    runs: impl IntoIterator<Item = (u64, u64, u64)>,
    mut read: impl FnMut(&mut [u8], u64) -> bool,
) -> Option<Vec<u8>> {
    let (start, end) = range;
    if end <= start || end - start > MAX_IMAGE_VDSO || start % 4096 != 0 {
        return None;
    }
    let mut out = vec![0u8; (end - start) as usize];
    let mut covered = 0u64;
    for (vaddr, nr, offset) in runs {
        let run_end = vaddr.checked_add(nr.checked_mul(4096)?)?;
        let (a, b) = (vaddr.max(start), run_end.min(end));
        if a >= b {
            continue;
        }
        let dst = &mut out[(a - start) as usize..(b - start) as usize];
        if !read(dst, offset + (a - vaddr)) {
            return None;
        }
        covered += b - a;
    }
    (covered == end - start).then_some(out)
}

/// The first page-aligned address from `from` where `len` bytes overlap none of `avoid`.
pub fn free_block(avoid: &[Range], from: u64, len: u64) -> Option<u64> {
    let mut at = from;
    // Each step moves past one range (upwards only): at most one step per range.
    for _ in 0..=avoid.len() {
        let end = at.checked_add(len)?;
        match avoid.iter().find(|&&(s, e)| s < end && at < e) {
            None => return Some(at),
            Some(&(_, e)) => at = e.checked_add(0xffff_ffff)? & !0xffff_ffff,
        }
    }
    None
}

impl RuntimeVdso {
    /// Bytes from the first to the end of the last running piece (what a proxy moves).
    pub fn span(&self) -> u64 {
        let p = self.pieces();
        p[p.len() - 1].1 - p[0].0
    }
}

/// Moves of all running pieces by the same delta, ordered so none overwrites a piece still
/// to move (ascending when moving down, descending when moving up).
fn shifted(pieces: &[Range], from_start: u64, to_start: u64) -> Vec<SpecialRemap> {
    let mut v: Vec<SpecialRemap> = pieces
        .iter()
        .map(|&(s, e)| SpecialRemap {
            from: s,
            to: to_start.wrapping_add(s - from_start),
            len: e - s,
        })
        .collect();
    if to_start > from_start {
        v.reverse();
    }
    v
}

/// Chooses between moving the running vdso to the image's place and proxying it.
/// `vvar_free(start, end)` tells whether a range is free in the target layout (used when the
/// image has no [vvar] of its own); `proxy_at` is a free, page-aligned address outside the
/// target layout with room for all running pieces (used for a proxy).
pub fn plan(
    image: &ImageVdso,
    rt: &RuntimeVdso,
    rt_bytes: &[u8],
    vvar_free: impl Fn(u64, u64) -> bool,
    proxy_at: u64,
) -> Result<VdsoPlan, VdsoError> {
    let pieces = rt.pieces();
    let first = pieces[0].0;
    let rt_vvar_len: u64 = rt.vvars.iter().map(|r| r.1 - r.0).sum();
    let same_size = image.vdso.1 - image.vdso.0 == rt.vdso.1 - rt.vdso.0;
    let lead = rt.vdso.0 - first; // bytes of vvar before the vdso
    let new_first = image.vdso.0.wrapping_sub(lead);
    let vvar_ok = match image.vvar {
        Some((s, e)) => e - s == rt_vvar_len && s == new_first,
        None => lead == 0 || vvar_free(new_first, image.vdso.0),
    };
    let rt_syms = vdso_symbols(rt_bytes)?;
    let symbols_ok = match &image.bytes {
        Some(b) if b.as_slice() == rt_bytes => true,
        Some(b) => vdso_symbols(b)?.iter().all(|s| rt_syms.contains(s)),
        None => true,
    };
    if same_size && vvar_ok && symbols_ok {
        return Ok(VdsoPlan::Move {
            special: shifted(&pieces, first, new_first),
        });
    }
    let old = image.bytes.as_ref().ok_or(VdsoError::NoImageBytes)?;
    let new_vdso = proxy_at + lead;
    let old_len = image.vdso.1 - image.vdso.0;
    let mut patches: Vec<VdsoPatch> = Vec::new();
    for (name, off) in vdso_symbols(old)? {
        if let Some((_, new_off)) = rt_syms.iter().find(|(n, _)| *n == name) {
            // A jump must fit inside the image's vdso (symbols come from the image).
            if off.checked_add(PATCH_LEN).is_none_or(|e| e > old_len) {
                return Err(VdsoError::BadElf(
                    "vdso symbol too close to the end for a jump",
                ));
            }
            let at = image.vdso.0 + off;
            if !patches.iter().any(|p| p.at == at) {
                patches.push(VdsoPatch {
                    at,
                    target: new_vdso + new_off,
                });
            }
        }
    }
    patches.sort_unstable_by_key(|p| p.at);
    if patches.windows(2).any(|w| w[1].at - w[0].at < PATCH_LEN) {
        return Err(VdsoError::BadElf("vdso entry points closer than a jump"));
    }
    Ok(VdsoPlan::Proxy {
        special: shifted(&pieces, first, proxy_at),
        patches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vdso of this machine, as bytes.
    fn running_bytes() -> Vec<u8> {
        RuntimeVdso::current().unwrap().read_bytes().unwrap()
    }

    /// A running vdso of three pieces from 0x7f00_0000_0000: [vvar] 16 KiB, [vvar_vclock]
    /// 8 KiB, [vdso] 8 KiB.
    fn three_piece_runtime() -> RuntimeVdso {
        RuntimeVdso::parse(
            "7f0000000000-7f0000004000 r--p 0 00:00 0 [vvar]\n\
             7f0000004000-7f0000006000 r--p 0 00:00 0 [vvar_vclock]\n\
             7f0000006000-7f0000008000 r-xp 0 00:00 0 [vdso]\n",
        )
        .unwrap()
    }

    /// A running vdso of one 8 KiB piece, no vvar.
    fn vdso_only_runtime() -> RuntimeVdso {
        RuntimeVdso::parse("7f0000006000-7f0000008000 r-xp 0 00:00 0 [vdso]\n").unwrap()
    }

    /// An image's 8 KiB vdso at 0x7e00_0000_6000 holding `bytes`, its 24 KiB [vvar] just below.
    fn image_below(bytes: Vec<u8>) -> ImageVdso {
        ImageVdso {
            vdso: (0x7e00_0000_6000, 0x7e00_0000_8000),
            vvar: Some((0x7e00_0000_0000, 0x7e00_0000_6000)),
            bytes: Some(bytes),
        }
    }

    #[test]
    fn parses_maps_and_running_vdso_symbols() {
        let rt = RuntimeVdso::current().unwrap();
        assert!(rt.vdso.1 > rt.vdso.0);
        let syms = vdso_symbols(&rt.read_bytes().unwrap()).unwrap();
        assert!(
            syms.iter().any(|(n, _)| n == "__vdso_clock_gettime"),
            "{syms:?}"
        );
        assert!(syms.iter().all(|(_, off)| *off < rt.vdso.1 - rt.vdso.0));
    }

    #[test]
    fn same_vdso_moves_every_piece_by_the_same_delta() {
        let rt = three_piece_runtime();
        let bytes = running_bytes();
        let image = image_below(bytes.clone());
        let plan = plan(&image, &rt, &bytes, |_, _| false, 0).unwrap();
        let VdsoPlan::Move { special } = plan else {
            panic!("expected a move: {plan:?}")
        };
        assert_eq!(special.len(), 3);
        assert_eq!(
            special[0],
            SpecialRemap {
                from: 0x7f00_0000_0000,
                to: 0x7e00_0000_0000,
                len: 0x4000
            }
        );
        assert_eq!(
            special[2],
            SpecialRemap {
                from: 0x7f00_0000_6000,
                to: 0x7e00_0000_6000,
                len: 0x2000
            }
        );
    }

    #[test]
    fn different_layout_proxies_with_jumps() {
        let rt = vdso_only_runtime();
        let bytes = running_bytes();
        // A one-page-larger image vdso: sizes differ, so proxy.
        let image = ImageVdso {
            vdso: (0x5000_0000, 0x5000_3000),
            vvar: None,
            bytes: Some(bytes.clone()),
        };
        let plan = plan(&image, &rt, &bytes, |_, _| true, 0x6000_0000).unwrap();
        let VdsoPlan::Proxy { special, patches } = plan else {
            panic!("expected a proxy: {plan:?}")
        };
        assert_eq!(
            special,
            vec![SpecialRemap {
                from: 0x7f00_0000_6000,
                to: 0x6000_0000,
                len: 0x2000
            }]
        );
        let syms = vdso_symbols(&bytes).unwrap();
        let (_, off) = syms
            .iter()
            .find(|(n, _)| n == "__vdso_clock_gettime")
            .unwrap();
        assert!(patches.contains(&VdsoPatch {
            at: 0x5000_0000 + off,
            target: 0x6000_0000 + off
        }));
        let image = ImageVdso {
            bytes: None,
            ..image
        };
        assert!(matches!(
            super::plan(&image, &rt, &bytes, |_, _| true, 0x6000_0000),
            Err(VdsoError::NoImageBytes)
        ));
    }

    /// The running vdso with `__vdso_clock_gettime` (and its alias) moved by `delta` bytes in
    /// the symbol table: same size, different symbol offsets.
    fn with_moved_clock_gettime(bytes: &[u8], delta: u64) -> Vec<u8> {
        use object::read::elf::ElfFile64;
        use object::{Object, ObjectSection, ObjectSymbol};
        let file = ElfFile64::<object::Endianness>::parse(bytes).unwrap();
        let (dynsym, _) = file
            .section_by_name(".dynsym")
            .unwrap()
            .file_range()
            .unwrap();
        let at: Vec<usize> = file
            .dynamic_symbols()
            .filter(|s| matches!(s.name(), Ok("__vdso_clock_gettime" | "clock_gettime")))
            .map(|s| (dynsym + s.index().0 as u64 * 24) as usize + 8)
            .collect();
        let mut b = bytes.to_vec();
        for a in at {
            let v = u64::from_le_bytes(b[a..a + 8].try_into().unwrap()).wrapping_add(delta);
            b[a..a + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn moved_symbols_proxy_even_with_the_same_size_and_vvar() {
        let rt = three_piece_runtime();
        let bytes = running_bytes();
        let old = with_moved_clock_gettime(&bytes, 0x40);
        let rt_syms = vdso_symbols(&bytes).unwrap();
        let old_syms = vdso_symbols(&old).unwrap();
        assert_ne!(rt_syms, old_syms);
        let image = image_below(old);
        let VdsoPlan::Proxy { special, patches } =
            plan(&image, &rt, &bytes, |_, _| false, 0x6000_0000).unwrap()
        else {
            panic!("moved symbols must proxy")
        };
        // Every running piece moves as one block, vvar first.
        assert_eq!(special.len(), 3);
        assert!(special
            .iter()
            .all(|s| s.to - 0x6000_0000 == s.from - 0x7f00_0000_0000));
        let off = |syms: &[(String, u64)], n: &str| syms.iter().find(|s| s.0 == n).unwrap().1;
        let (old_off, new_off) = (
            off(&old_syms, "__vdso_clock_gettime"),
            off(&rt_syms, "__vdso_clock_gettime"),
        );
        assert_eq!(old_off, new_off + 0x40);
        // The image's entry jumps to the running vdso (after the 0x6000 bytes of vvar).
        assert!(patches.contains(&VdsoPatch {
            at: 0x7e00_0000_6000 + old_off,
            target: 0x6000_0000 + 0x6000 + new_off,
        }));
        // Every other function keeps its offset and is patched too, each address once.
        let other = off(&rt_syms, "__vdso_gettimeofday");
        assert!(patches.contains(&VdsoPatch {
            at: 0x7e00_0000_6000 + other,
            target: 0x6000_6000 + other,
        }));
        let mut at: Vec<u64> = patches.iter().map(|p| p.at).collect();
        at.sort_unstable();
        at.dedup();
        assert_eq!(at.len(), patches.len());
    }

    #[test]
    fn jumps_that_do_not_fit_are_refused() {
        let rt = vdso_only_runtime();
        let bytes = running_bytes();
        let syms = vdso_symbols(&bytes).unwrap();
        let off = |n: &str| syms.iter().find(|s| s.0 == n).unwrap().1;
        let cgt = off("__vdso_clock_gettime");
        let image = |b: Vec<u8>| ImageVdso {
            vdso: (0x5000_0000, 0x5000_0000 + bytes.len() as u64),
            vvar: None,
            bytes: Some(b),
        };
        // An entry point 4 bytes after another one: the jumps would overlap.
        let close = off("__vdso_gettimeofday").wrapping_add(4).wrapping_sub(cgt);
        let img = image(with_moved_clock_gettime(&bytes, close));
        assert!(matches!(
            plan(&img, &rt, &bytes, |_, _| true, 0x6000_0000),
            Err(VdsoError::BadElf(_))
        ));
        // An entry point in the last bytes of the vdso: the jump would leave it.
        let end = (bytes.len() as u64 - 4).wrapping_sub(cgt);
        let img = image(with_moved_clock_gettime(&bytes, end));
        assert!(matches!(
            plan(&img, &rt, &bytes, |_, _| true, 0x6000_0000),
            Err(VdsoError::BadElf(_))
        ));
    }

    #[test]
    fn a_different_vvar_size_proxies_and_no_vvar_moves_when_free() {
        let rt = RuntimeVdso::parse(
            "7f0000000000-7f0000004000 r--p 0 00:00 0 [vvar]\n\
             7f0000004000-7f0000006000 r-xp 0 00:00 0 [vdso]\n",
        )
        .unwrap();
        let bytes = running_bytes();
        let mut image = image_below(bytes.clone());
        let p = plan(&image, &rt, &bytes, |_, _| false, 0x6000_0000).unwrap();
        assert!(matches!(p, VdsoPlan::Proxy { .. }), "{p:?}");
        // No [vvar] in the image: moving works if the room before the vdso is free.
        image.vvar = None;
        let p = plan(&image, &rt, &bytes, |_, _| true, 0x6000_0000).unwrap();
        let VdsoPlan::Move { special } = p else {
            panic!("expected a move: {p:?}")
        };
        assert_eq!(special[1].to, 0x7e00_0000_6000);
        assert_eq!(special[0].to, 0x7e00_0000_2000);
        let p = plan(&image, &rt, &bytes, |_, _| false, 0x6000_0000).unwrap();
        assert!(matches!(p, VdsoPlan::Proxy { .. }), "{p:?}");
    }

    #[test]
    fn image_bytes_need_every_page_and_free_block_skips_ranges() {
        let data: Vec<u8> = (0..4 * 4096).map(|i| (i / 4096) as u8).collect();
        let read = |buf: &mut [u8], off: u64| {
            buf.copy_from_slice(&data[off as usize..off as usize + buf.len()]);
            true
        };
        // Runs: page 0x10000 at offset 0, pages 0x11000..0x13000 at offset 2 pages.
        let runs = [(0x10000, 1, 0), (0x11000, 2, 2 * 4096)];
        let b = image_bytes((0x10000, 0x13000), runs, read).unwrap();
        assert_eq!((b[0], b[4096], b[2 * 4096]), (0, 2, 3));
        assert!(image_bytes((0x10000, 0x14000), runs, read).is_none());
        assert!(image_bytes((0x10000, 0x10000 + MAX_IMAGE_VDSO + 4096), runs, read).is_none());
        assert!(image_bytes((0x10000, 0x11000), runs, |_, _| false).is_none());
        let avoid = [
            (0x5800_0000_0000, 0x5800_0000_1000),
            (0x5801_0000_0000, 0x5801_0000_2000),
        ];
        assert_eq!(
            free_block(&avoid, 0x5700_0000_0000, 0x1000),
            Some(0x5700_0000_0000)
        );
        let at = free_block(&avoid, 0x5800_0000_0000, 0x1000).unwrap();
        assert!(at >= 0x5800_0000_1000 && !avoid.iter().any(|&(s, e)| s < at + 0x1000 && at < e));
        // A range reaching the top of the address space: no room, and no endless wrap-around.
        let top = [(0x1000, 0x2000), (0x5800_0000_0000, 0xffff_ffff_ffff_f000)];
        assert_eq!(free_block(&top, 0x5800_0000_0000, 0x1000), None);
    }

    #[test]
    fn image_vmas_and_what_each_plan_leaves_to_the_blob() {
        let vma = |start: u64, end: u64, status: u32| VmaEntry {
            start,
            end,
            status,
            ..Default::default()
        };
        let heap = vma(0x1000, 0x2000, vs::REGULAR | vs::HEAP);
        assert!(ImageVdso::from_vmas(std::slice::from_ref(&heap)).is_none());
        let vvar = vma(0x7e00_0000_0000, 0x7e00_0000_6000, vs::REGULAR | vs::VVAR);
        let vdso = vma(0x7e00_0000_6000, 0x7e00_0000_8000, vs::REGULAR | vs::VDSO);
        let image = ImageVdso::from_vmas(&[heap, vvar, vdso]).unwrap();
        assert_eq!(image.vdso, (0x7e00_0000_6000, 0x7e00_0000_8000));
        assert_eq!(image.vvar, Some((0x7e00_0000_0000, 0x7e00_0000_6000)));
        assert!(image.bytes.is_none());
        let remap = SpecialRemap {
            from: 0x7f00_0000_0000,
            to: 0x6000_0000,
            len: 0x2000,
        };
        let patch = VdsoPatch {
            at: 0x7e00_0000_6100,
            target: 0x6000_0100,
        };
        let moved = VdsoPlan::Move {
            special: vec![remap],
        };
        assert_eq!(moved.skipped_status(), MOVED_SPECIAL);
        let mut spec = TaskSpec::new();
        moved.apply(&mut spec);
        assert_eq!((spec.special.len(), spec.vdso_patches.len()), (1, 0));
        let proxy = VdsoPlan::Proxy {
            special: vec![remap],
            patches: vec![patch],
        };
        assert_eq!(proxy.skipped_status(), vs::VSYSCALL);
        let mut spec = TaskSpec::new();
        proxy.apply(&mut spec);
        assert_eq!(
            (spec.special, spec.vdso_patches),
            (vec![remap], vec![patch])
        );
    }

    #[test]
    fn rejects_garbage_elf() {
        assert!(vdso_symbols(b"nope").is_err());
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[0x20] = 0xff; // phoff far out
        b[0x38] = 1;
        assert!(vdso_symbols(&b).is_err());
    }
}
