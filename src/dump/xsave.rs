//! The FPU/SSE/AVX state of a thread as `PTRACE_GETREGSET(NT_X86_XSTATE)` returns it (the
//! standard, non-compacted XSAVE layout), converted to CRIU's `user_x86_fpregs_entry`.
//!
//! ```text
//!  0    fcw u16 | fsw u16 | ftw u8 (abridged) | - | fop u16
//!  8    rip u64 | 16 rdp u64 | 24 mxcsr u32 | 28 mxcsr_mask u32
//!  32   st0-7   (8 x 16 bytes)      160  xmm0-15 (16 x 16 bytes)
//!  512  XSAVE header: xstate_bv u64 | xcomp_bv u64 | ...
//!  576  YMM_Hi128 (component 2, 256 bytes)
//!  1088 opmask k0-7 (component 5, 64 bytes)
//!  1152 ZMM_Hi256 (component 6, 512 bytes)
//!  1664 Hi16_ZMM (component 7, 1024 bytes)
//! ```
//! Components whose bit is clear in `xstate_bv` are in their initial state (zero) whatever
//! the buffer holds there; missing bytes (a shorter buffer) read as zero.

use super::probe::{FpRegs, Xsave};

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2)
        .map(|x| u16::from_le_bytes([x[0], x[1]]))
        .unwrap_or(0)
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .unwrap_or(0)
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8)
        .map(|x| u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]))
        .unwrap_or(0)
}

fn words32(b: &[u8], o: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| u32_at(b, o + 4 * i)).collect()
}

fn words64(b: &[u8], o: usize, n: usize, present: bool) -> Vec<u64> {
    (0..n)
        .map(|i| if present { u64_at(b, o + 8 * i) } else { 0 })
        .collect()
}

/// Converts an XSAVE buffer (at least the 512-byte legacy area) to the image's FPU state.
pub fn fpregs_from_xsave(b: &[u8]) -> FpRegs {
    let bv = u64_at(b, 512);
    let has_xsave = b.len() >= 576;
    let ymm = bv & (1 << 2) != 0;
    FpRegs {
        cwd: u16_at(b, 0) as u32,
        swd: u16_at(b, 2) as u32,
        twd: u16_at(b, 4) as u32,
        fop: u16_at(b, 6) as u32,
        rip: u64_at(b, 8),
        rdp: u64_at(b, 16),
        mxcsr: u32_at(b, 24),
        mxcsr_mask: u32_at(b, 28),
        st_space: words32(b, 32, 32),
        xmm_space: words32(b, 160, 64),
        xsave: has_xsave.then(|| Xsave {
            xstate_bv: bv,
            ymmh_space: (0..64)
                .map(|i| if ymm { u32_at(b, 576 + 4 * i) } else { 0 })
                .collect(),
            opmask_reg: words64(b, 1088, 8, bv & (1 << 5) != 0),
            zmm_upper: words64(b, 1152, 64, bv & (1 << 6) != 0),
            hi16_zmm: words64(b, 1664, 128, bv & (1 << 7) != 0),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_components() {
        let mut b = vec![0u8; 2688];
        b[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        b[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        b[160..164].copy_from_slice(&7u32.to_le_bytes());
        b[512..520].copy_from_slice(&0b110u64.to_le_bytes());
        b[576..580].copy_from_slice(&9u32.to_le_bytes());
        b[1088..1096].copy_from_slice(&5u64.to_le_bytes()); // opmask bit clear: ignored
        let f = fpregs_from_xsave(&b);
        assert_eq!((f.cwd, f.mxcsr, f.mxcsr_mask), (0x37f, 0x1f80, 0xffff));
        assert_eq!(f.xmm_space[0], 7);
        let x = f.xsave.unwrap();
        assert_eq!(x.xstate_bv, 6);
        assert_eq!(x.ymmh_space[0], 9);
        assert_eq!(x.opmask_reg[0], 0);
        assert_eq!(
            (
                x.ymmh_space.len(),
                x.opmask_reg.len(),
                x.zmm_upper.len(),
                x.hi16_zmm.len()
            ),
            (64, 8, 64, 128)
        );
    }

    #[test]
    fn short_buffers_do_not_panic() {
        let f = fpregs_from_xsave(&[1, 2, 3]);
        assert_eq!(f.cwd, 0x201);
        assert!(f.xsave.is_none());
        assert_eq!(f.st_space.len(), 32);
    }
}
