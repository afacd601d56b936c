//! Builds the xsave image a restored thread's `rt_sigframe` points to (`uc_mcontext.fpstate`),
//! from the FPU registers stored in CRIU's `user_x86_fpregs_entry` / `user_x86_xsave_entry`.
//!
//! ```text
//! 0    legacy FXSAVE area (512): fcw fsw ftw fop fip fdp mxcsr mxcsr_mask st[8] xmm[16]
//! 464    sw_reserved: magic1 FP_XSTATE_MAGIC1, extended_size, xfeatures, xstate_size
//! 512  xsave header (64): xstate_bv, xcomp_bv = 0 (standard format)
//! 576+ components at their CPUID(0xD, i) offsets: 2 AVX (ymm high halves), 5 opmask,
//!      6 ZMM_Hi256, 7 Hi16_ZMM, 9 PKRU
//! xstate_size  FP_XSTATE_MAGIC2 (u32)
//! ```
//!
//! The kernel's rt_sigreturn checks the two magics and `xstate_size` and then `xrstor`s the
//! components in `xfeatures`, taking those with a clear `xstate_bv` bit, and every user
//! component outside `xfeatures`, from the init state.

use crate::sys::cpu;

const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Components this builder knows: x87, SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM, PKRU.
const KNOWN: u64 = 0b10_1110_0111;

/// FPU state of one thread as CRIU stores it (u32/u64 words, little endian lanes).
#[derive(Debug, Clone, Default)]
pub struct FpuRegs<'a> {
    pub cwd: u16,
    pub swd: u16,
    /// Abridged tag word (FXSAVE format).
    pub twd: u16,
    pub fop: u16,
    pub rip: u64,
    pub rdp: u64,
    pub mxcsr: u32,
    pub mxcsr_mask: u32,
    /// 32 words: 8 x87 registers of 16 bytes.
    pub st_space: &'a [u32],
    /// 64 words: 16 xmm registers.
    pub xmm_space: &'a [u32],
    /// Components present (0 when the image has no xsave part: x87|SSE assumed).
    pub xstate_bv: u64,
    /// 64 words: upper halves of ymm0-15.
    pub ymmh: &'a [u32],
    /// 8 words: k0-k7.
    pub opmask: &'a [u64],
    /// 64 words: upper 256 bits of zmm0-15.
    pub zmm_upper: &'a [u64],
    /// 128 words: zmm16-31.
    pub hi16_zmm: &'a [u64],
    pub pkru: Option<u32>,
}

fn put_words<T: Copy>(
    dst: &mut [u8],
    off: usize,
    words: &[T],
    max_bytes: usize,
    to_le: impl Fn(T) -> Vec<u8>,
) {
    let mut at = off;
    for w in words {
        let b = to_le(*w);
        if at + b.len() > off + max_bytes || at + b.len() > dst.len() {
            break;
        }
        dst[at..at + b.len()].copy_from_slice(&b);
        at += b.len();
    }
}

/// XCR0 and the (offset, size) of components 0..10, read once: CPUID traps to the hypervisor
/// in a VM (microseconds each), and thousands of threads need the same answer.
fn cpu_layout() -> (u64, [(u32, u32); 10]) {
    static LAYOUT: std::sync::OnceLock<(u64, [(u32, u32); 10])> = std::sync::OnceLock::new();
    *LAYOUT.get_or_init(|| {
        let xcr0 = cpu::xcr0();
        let mut comps = [(0, 0); 10];
        for (i, c) in comps.iter_mut().enumerate().skip(2) {
            if xcr0 & KNOWN & (1 << i) != 0 {
                *c = cpu::xsave_component(i as u32);
            }
        }
        (xcr0, comps)
    })
}

/// The xsave image for this CPU: only the components present in `xstate_bv` (plus x87/SSE)
/// and enabled by the OS are included, so the image (and the signal frame holding it) stays
/// small; the kernel puts every other component in its init state.
pub fn xsave_image(f: &FpuRegs<'_>) -> Vec<u8> {
    let (xcr0, layout) = cpu_layout();
    let present = if f.xstate_bv == 0 { 3 } else { f.xstate_bv | 3 };
    let xfeatures = xcr0 & KNOWN & present;
    let mut size = 576usize;
    let mut comps = Vec::new();
    for i in 2..10u32 {
        if xfeatures & (1 << i) != 0 {
            let (off, len) = layout[i as usize];
            size = size.max((off + len) as usize);
            comps.push((i, off as usize, len as usize));
        }
    }
    let mut b = vec![0u8; size + 4];
    b[0..2].copy_from_slice(&f.cwd.to_le_bytes());
    b[2..4].copy_from_slice(&f.swd.to_le_bytes());
    b[4..6].copy_from_slice(&f.twd.to_le_bytes());
    b[6..8].copy_from_slice(&f.fop.to_le_bytes());
    b[8..16].copy_from_slice(&f.rip.to_le_bytes());
    b[16..24].copy_from_slice(&f.rdp.to_le_bytes());
    let mask = if f.mxcsr_mask != 0 {
        f.mxcsr_mask
    } else {
        0xffbf
    };
    b[24..28].copy_from_slice(&(f.mxcsr & mask).to_le_bytes());
    b[28..32].copy_from_slice(&f.mxcsr_mask.to_le_bytes());
    let le32 = |w: u32| w.to_le_bytes().to_vec();
    let le64 = |w: u64| w.to_le_bytes().to_vec();
    put_words(&mut b, 32, f.st_space, 128, le32);
    put_words(&mut b, 160, f.xmm_space, 256, le32);
    // sw_reserved
    b[464..468].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    b[468..472].copy_from_slice(&((size + 4) as u32).to_le_bytes());
    b[472..480].copy_from_slice(&xfeatures.to_le_bytes());
    b[480..484].copy_from_slice(&(size as u32).to_le_bytes());
    let bv = present & xfeatures;
    b[512..520].copy_from_slice(&bv.to_le_bytes());
    for (i, off, len) in comps {
        match i {
            2 => put_words(&mut b, off, f.ymmh, len, le32),
            5 => put_words(&mut b, off, f.opmask, len, le64),
            6 => put_words(&mut b, off, f.zmm_upper, len, le64),
            7 => put_words(&mut b, off, f.hi16_zmm, len, le64),
            9 => put_words(&mut b, off, &[f.pkru.unwrap_or(0)], len, le32),
            _ => {}
        }
    }
    b[size..size + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_and_sizes() {
        let st = [7u32; 32];
        let xmm = [9u32; 64];
        let img = xsave_image(&FpuRegs {
            cwd: 0x37f,
            mxcsr: 0x1f80,
            st_space: &st,
            xmm_space: &xmm,
            ..Default::default()
        });
        let u32_at = |o: usize| u32::from_le_bytes(img[o..o + 4].try_into().unwrap());
        let size = u32_at(480) as usize;
        assert_eq!(img.len(), size + 4);
        assert_eq!(u32_at(464), FP_XSTATE_MAGIC1);
        assert_eq!(u32_at(468) as usize, size + 4);
        assert_eq!(u32_at(size), FP_XSTATE_MAGIC2);
        assert_eq!(u32_at(24), 0x1f80);
        assert_eq!(u32_at(160), 9);
        assert_eq!(u64::from_le_bytes(img[512..520].try_into().unwrap()), 3);
    }
}
