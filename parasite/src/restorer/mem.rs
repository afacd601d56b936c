//! Address space switch: unmap the restorer process's own mappings, move vvar/vdso, put every
//! target VMA in place, patch the vdso proxy, and find the two gadgets of the final jump.

use crate::abi::{self, step, KeepRange, SpecialRemap, TaskArgs, VdsoPatch, VmaArgs};
use crate::sys::{self, check, sc, slice};

/// End of the user address space with 4-level paging.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const PROT_READ: u32 = 1;
const PROT_WRITE: u32 = 2;
const PROT_EXEC: u32 = 4;
const MAP_FIXED: u32 = 0x10;
const MAP_LOCKED: u32 = 0x2000;
const MREMAP_MAYMOVE: usize = 1;
const MREMAP_FIXED: usize = 2;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: usize = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

pub fn vmas(a: &TaskArgs) -> &'static [VmaArgs] {
    // SAFETY: the engine wrote nr_vmas VmaArgs at vmas inside the area.
    unsafe { slice(a.vmas, a.nr_vmas) }
}

/// The VMA containing `[start, end)` entirely, if any.
pub fn vma_covering(a: &TaskArgs, start: u64, end: u64) -> Option<&'static VmaArgs> {
    vmas(a).iter().find(|v| v.start <= start && end <= v.end)
}

/// Most special ranges the blob keeps besides the area (vvar, vvar_vclock, vdso, spare).
const MAX_SPECIAL: usize = 7;

/// Step 2: unmaps every range of `[0, TASK_SIZE)` not kept (area, premaps, special sources),
/// in one pass over the `keep` ranges (sorted by the engine) merged with the few others.
pub fn unmap_all_but_kept(a: &TaskArgs) {
    // SAFETY: keep/special arrays were written by the engine inside the area.
    let keep: &[KeepRange] = unsafe { slice(a.keep, a.nr_keep) };
    // SAFETY: as above.
    let special: &[SpecialRemap] = unsafe { slice(a.special, a.nr_special) };
    if special.len() > MAX_SPECIAL || keep.windows(2).any(|w| w[0].start > w[1].start) {
        sys::fail(a, step::BAD_ARGS, 2, 22);
    }
    // The area and the special sources, sorted by start (insertion sort of at most 8).
    let mut extra = [(0u64, 0u64); MAX_SPECIAL + 1];
    let mut n = 0;
    for r in core::iter::once((a.area_start, a.area_start + a.area_len)).chain(special.iter().map(|s| (s.from, s.from + s.len))) {
        let mut k = n;
        while k > 0 && extra[k - 1].0 > r.0 {
            extra[k] = extra[k - 1];
            k -= 1;
        }
        extra[k] = r;
        n += 1;
    }
    let (mut i, mut j, mut cur) = (0usize, 0usize, 0u64);
    loop {
        let next = match (keep.get(i), extra[..n].get(j)) {
            (Some(k), Some(e)) if k.start <= e.0 => {
                i += 1;
                Some((k.start, k.end))
            }
            (Some(k), None) => {
                i += 1;
                Some((k.start, k.end))
            }
            (_, Some(e)) => {
                j += 1;
                Some(*e)
            }
            (None, None) => None,
        };
        let (gap_end, new_cur) = match next {
            Some((s, e)) => (s.min(TASK_SIZE), e),
            None => (TASK_SIZE, TASK_SIZE),
        };
        if gap_end > cur {
            // SAFETY: the range holds nothing the blob uses: the area, premapped memory and
            // the special mappings are all kept ranges.
            let r = unsafe { sc(sys::MUNMAP, cur as usize, (gap_end - cur) as usize, 0, 0, 0, 0) };
            check(a, step::UNMAP, 0, r);
        }
        cur = cur.max(new_cur);
        if next.is_none() || cur >= TASK_SIZE {
            break;
        }
    }
}

fn mremap(from: u64, len: u64, to: u64) -> Result<usize, i32> {
    // SAFETY: moves a whole mapping to a fixed address chosen by the engine outside the area.
    unsafe { sc(sys::MREMAP, from as usize, len as usize, len as usize, MREMAP_MAYMOVE | MREMAP_FIXED, to as usize, 0) }
}

/// Step 3: moves vvar/vdso of the running kernel to their image addresses.
pub fn remap_special(a: &TaskArgs) {
    // SAFETY: written by the engine inside the area.
    let special: &[SpecialRemap] = unsafe { slice(a.special, a.nr_special) };
    for (i, s) in special.iter().enumerate() {
        if s.from != s.to {
            check(a, step::SPECIAL_REMAP, i, mremap(s.from, s.len, s.to));
        }
    }
}

/// Step 4: puts every VMA in place with its final protection and madvise bits.
pub fn restore_vmas(a: &TaskArgs) {
    for (i, v) in vmas(a).iter().enumerate() {
        let len = v.end - v.start;
        match v.kind {
            abi::VMA_PREMAPPED | abi::VMA_PREMAPPED_LAZY => {
                if v.premap != v.start {
                    check(a, step::VMA_MOVE, i, mremap(v.premap, len, v.start));
                }
            }
            abi::VMA_MMAP => {
                // SAFETY: MAP_FIXED replaces [start, end), which belongs to the target layout
                // and overlaps neither the area nor a premap still to move (engine contract).
                let r = unsafe {
                    sc(sys::MMAP, v.start as usize, len as usize, v.prot as usize,
                       (v.flags | MAP_FIXED) as usize, v.fd as isize as usize, v.pgoff as usize)
                };
                if check(a, step::VMA_MMAP, i, r) as u64 != v.start {
                    sys::fail(a, step::VMA_MMAP, i as u32, 17);
                }
            }
            _ => continue,
        }
        for bit in 0..64 {
            if v.madv & (1u64 << bit) != 0 {
                // SAFETY: advice on a range of the target layout only.
                let r = unsafe { sc(sys::MADVISE, v.start as usize, len as usize, bit, 0, 0, 0) };
                check(a, step::VMA_MADVISE, i, r);
            }
        }
        if v.kind == abi::VMA_PREMAPPED || v.kind == abi::VMA_PREMAPPED_LAZY {
            // SAFETY: sets the final protection of a target range.
            let r = unsafe { sc(sys::MPROTECT, v.start as usize, len as usize, v.prot as usize, 0, 0, 0) };
            check(a, step::VMA_PROTECT, i, r);
        }
        if v.kind == abi::VMA_PREMAPPED_LAZY && a.uffd >= 0 {
            // struct uffdio_register { range { start, len }, mode, ioctls }.
            let mut reg: [u64; 4] = [v.start, len, UFFDIO_REGISTER_MODE_MISSING, 0];
            // SAFETY: UFFDIO_REGISTER reads and writes the 32-byte struct on our stack; it
            // only marks a range of the target layout (an anonymous private VMA in place).
            let r = unsafe { sc(sys::IOCTL, a.uffd as usize, UFFDIO_REGISTER, reg.as_mut_ptr() as usize, 0, 0, 0) };
            check(a, step::UFFD_REGISTER, i, r);
        }
        if v.flags & MAP_LOCKED != 0 {
            // SAFETY: locks (and faults in) a range of the target layout; before the creds
            // and rlimits are restored, so a task that locked memory and then dropped its
            // privileges gets its locked ranges back.
            let r = unsafe { sc(sys::MLOCK, v.start as usize, len as usize, 0, 0, 0, 0) };
            check(a, step::VMA_MLOCK, i, r);
        }
    }
}

/// Step 5: writes `movabs $target, %rax; jmp *%rax` at each patch address.
pub fn patch_vdso(a: &TaskArgs) {
    // SAFETY: written by the engine inside the area.
    let patches: &[VdsoPatch] = unsafe { slice(a.vdso_patches, a.nr_vdso_patches) };
    for (i, p) in patches.iter().enumerate() {
        let Some(v) = vma_covering(a, p.at, p.at + 12) else {
            sys::fail(a, step::VDSO_PATCH, i as u32, 14);
        };
        let page = p.at & !4095;
        let plen = ((p.at + 12 + 4095) & !4095) - page;
        // SAFETY: temporarily makes the pages of a target VMA writable.
        let r = unsafe { sc(sys::MPROTECT, page as usize, plen as usize, (v.prot | PROT_WRITE | PROT_READ) as usize, 0, 0, 0) };
        check(a, step::VDSO_PATCH, i, r);
        let mut code = [0u8; 12];
        code[0] = 0x48;
        code[1] = 0xb8;
        code[2..10].copy_from_slice(&p.target.to_le_bytes());
        code[10] = 0xff;
        code[11] = 0xe0;
        // SAFETY: [at, at+12) lies in the VMA made writable above.
        unsafe { core::ptr::copy_nonoverlapping(code.as_ptr(), p.at as *mut u8, 12) };
        // SAFETY: restores the VMA's protection.
        let r = unsafe { sc(sys::MPROTECT, page as usize, plen as usize, v.prot as usize, 0, 0, 0) };
        check(a, step::VDSO_PATCH, i, r);
    }
}

/// `mov $15, %rax; syscall` and `mov $15, %eax; syscall`.
const SIGRETURN_GADGETS: [&[u8]; 2] = [
    &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
    &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
];
/// `syscall; ret`.
const SYSCALL_RET: &[u8] = &[0x0f, 0x05, 0xc3];

/// Readable, executable, not writable (threads already let go cannot change a gadget the
/// leader still needs), and really mapped now (a skipped VMA only if a special remap moved
/// something onto it).
fn readable_exec(a: &TaskArgs, v: &VmaArgs) -> bool {
    if v.prot & (PROT_READ | PROT_EXEC | PROT_WRITE) != (PROT_READ | PROT_EXEC) || v.start >= TASK_SIZE {
        return false;
    }
    if v.kind != abi::VMA_SKIP {
        return true;
    }
    // SAFETY: written by the engine inside the area.
    let special: &[SpecialRemap] = unsafe { slice(a.special, a.nr_special) };
    special.iter().any(|s| s.to <= v.start && v.end <= s.to + s.len)
}

fn matches_at(addr: u64, pat: &[u8]) -> bool {
    // SAFETY: callers pass addresses inside a readable VMA with room for pat.
    let s = unsafe { core::slice::from_raw_parts(addr as *const u8, pat.len()) };
    s == pat
}

fn scan(a: &TaskArgs, pat: &[u8]) -> u64 {
    for v in vmas(a).iter().filter(|v| readable_exec(a, v)) {
        let mut p = v.start;
        while p + pat.len() as u64 <= v.end {
            if matches_at(p, pat) {
                return p;
            }
            p += 1;
        }
    }
    0
}

/// Finds the gadgets (0 when missing): the sigactions' restorers first, then a scan of the
/// readable executable VMAs (now mapped at their final addresses).
pub fn find_gadgets(a: &TaskArgs) -> (u64, u64) {
    let mut sigreturn = 0;
    for sa in a.sigactions.iter() {
        let r = sa.restorer;
        if r == 0 || sigreturn != 0 {
            continue;
        }
        for pat in SIGRETURN_GADGETS {
            if vma_covering(a, r, r + pat.len() as u64).is_some_and(|v| readable_exec(a, v)) && matches_at(r, pat) {
                sigreturn = r;
                break;
            }
        }
    }
    if sigreturn == 0 {
        for pat in SIGRETURN_GADGETS {
            sigreturn = scan(a, pat);
            if sigreturn != 0 {
                break;
            }
        }
    }
    (scan(a, SYSCALL_RET), sigreturn)
}
