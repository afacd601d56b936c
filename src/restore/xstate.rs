//! Filling a thread's XSAVE area (the `NT_X86_XSTATE` regset, standard non-compacted format)
//! from an image's `user_x86_fpregs_entry`.
//!
//! ```text
//! 0    fcw u16 | fsw u16 | ftw u16 | fop u16 | fip u64 | fdp u64 | mxcsr u32 | mask u32
//! 32   st0..7  (8 x 16)           160  xmm0..15 (16 x 16)
//! (components must be enabled in XCR0; 0xa0 etc. come from AVX-512 code such as glibc's EVEX string functions)
//! 512  xstate_bv u64 | xcomp_bv u64 (0) | reserved
//! 576  YMM_Hi128 (bit 2)   others (opmask bit 5, ZMM_Hi256 bit 6, Hi16_ZMM bit 7): CPUID 0xD
//! ```

use super::img::msg::UserX86Fpregs;
use crate::sys::tracee::xfeature_offset;

fn put(area: &mut [u8], off: usize, bytes: &[u8]) -> Result<(), String> {
    area.get_mut(off..off + bytes.len())
        .ok_or_else(|| format!("xsave area of {} bytes has no room at {off}", bytes.len()))?
        .copy_from_slice(bytes);
    Ok(())
}

fn words32(v: &[u32], n: usize, what: &str) -> Result<Vec<u8>, String> {
    if v.len() != n {
        return Err(format!("{what}: {} words, expected {n}", v.len()));
    }
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn words64(v: &[u64], n: usize, what: &str) -> Result<Vec<u8>, String> {
    if v.len() != n {
        return Err(format!("{what}: {} words, expected {n}", v.len()));
    }
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// Overwrites `area` (as read from the thread) with the image's FPU/SSE/AVX state.
pub fn fill(area: &mut [u8], fp: &UserX86Fpregs) -> Result<(), String> {
    if area.len() < 576 {
        return Err(format!("xsave area of {} bytes", area.len()));
    }
    put(area, 0, &(fp.cwd as u16).to_le_bytes())?;
    put(area, 2, &(fp.swd as u16).to_le_bytes())?;
    put(area, 4, &(fp.twd as u16).to_le_bytes())?;
    put(area, 6, &(fp.fop as u16).to_le_bytes())?;
    put(area, 8, &fp.rip.to_le_bytes())?;
    put(area, 16, &fp.rdp.to_le_bytes())?;
    put(area, 24, &fp.mxcsr.to_le_bytes())?;
    put(area, 28, &fp.mxcsr_mask.to_le_bytes())?;
    put(area, 32, &words32(&fp.st_space, 32, "st_space")?)?;
    put(area, 160, &words32(&fp.xmm_space, 64, "xmm_space")?)?;
    let supported = crate::sys::tracee::xcr0();
    let mut bv = 0x3u64;
    if let Some(x) = &fp.xsave {
        bv = x.xstate_bv;
        let unsupported = bv & !supported;
        if unsupported != 0 {
            return Err(format!(
                "xstate components {unsupported:#x} not supported by this CPU (xfeatures {supported:#x})"
            ));
        }
        if bv & (1 << 2) != 0 {
            put(area, 576, &words32(&x.ymmh_space, 64, "ymmh_space")?)?;
        }
        for (bit, data, n, what) in [
            (5u32, &x.opmask_reg, 8usize, "opmask_reg"),
            (6, &x.zmm_upper, 64, "zmm_upper"),
            (7, &x.hi16_zmm, 128, "hi16_zmm"),
        ] {
            if bv & (1 << bit) != 0 {
                let off = xfeature_offset(bit)
                    .ok_or_else(|| format!("no xsave offset for component {bit}"))?;
                put(area, off, &words64(data, n, what)?)?;
            }
        }
        let known = 0x3 | (1 << 2) | (0x7 << 5);
        if bv & !known != 0 {
            return Err(format!(
                "xstate components {:#x} are not restored",
                bv & !known
            ));
        }
    }
    put(area, 512, &bv.to_le_bytes())?;
    put(area, 520, &0u64.to_le_bytes())?;
    Ok(())
}
