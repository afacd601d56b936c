//! x86-64 general registers between ptrace's `user_regs_struct` ([`UserRegs`]) and CRIU's
//! `user_x86_regs_entry` ([`pb::UserX86RegsEntry`]), the `gpregs` of a thread's core image.
//!
//! One field list drives both directions: the dump writes [`regs_to_pb`], the restore reads
//! [`regs_from_pb`]. Both are exhaustive struct literals, so a field missing from the list
//! fails to compile on either side.
//!
//! ```text
//! UserRegs.f  <->  user_x86_regs_entry.f   for the 27 fields (same names, same order)
//! mode        written NATIVE, not read (only native x86-64 tasks are dumped and restored)
//! ```

use crate::images::pb;
use crate::sys::regs::UserRegs;

/// `user_x86_regs_mode` NATIVE.
pub const REGS_NATIVE: u32 = 1;

/// Defines [`regs_to_pb`] and [`regs_from_pb`] from the fields both structs share by name.
macro_rules! regs_conversions {
    ($($field:ident),* $(,)?) => {
        /// `user_regs_struct` as `user_x86_regs_entry`, mode NATIVE.
        pub fn regs_to_pb(r: &UserRegs) -> pb::UserX86RegsEntry {
            pb::UserX86RegsEntry {
                $($field: r.$field,)*
                mode: Some(REGS_NATIVE as i32),
            }
        }

        /// `user_x86_regs_entry` as `struct user_regs_struct` (the mode is not looked at).
        pub fn regs_from_pb(r: &pb::UserX86RegsEntry) -> UserRegs {
            UserRegs {
                $($field: r.$field,)*
            }
        }
    };
}

regs_conversions!(
    r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp,
    ss, fs_base, gs_base, ds, es, fs, gs,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pod::bytes_of;

    /// Every field a distinct value (its index + 1, in the high and low bytes), so a swapped
    /// pair of fields shows. The 27 borrows are of 27 different fields (the borrow checker
    /// refuses two of one field), i.e. of all of them.
    fn distinct_regs() -> UserRegs {
        let mut r = UserRegs::default();
        let fields: [&mut u64; 27] = [
            &mut r.r15,
            &mut r.r14,
            &mut r.r13,
            &mut r.r12,
            &mut r.bp,
            &mut r.bx,
            &mut r.r11,
            &mut r.r10,
            &mut r.r9,
            &mut r.r8,
            &mut r.ax,
            &mut r.cx,
            &mut r.dx,
            &mut r.si,
            &mut r.di,
            &mut r.orig_ax,
            &mut r.ip,
            &mut r.cs,
            &mut r.flags,
            &mut r.sp,
            &mut r.ss,
            &mut r.fs_base,
            &mut r.gs_base,
            &mut r.ds,
            &mut r.es,
            &mut r.fs,
            &mut r.gs,
        ];
        for (i, f) in fields.into_iter().enumerate() {
            let n = i as u64 + 1;
            *f = (n << 56) | n;
        }
        r
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let regs = distinct_regs();
        let img = regs_to_pb(&regs);
        assert_eq!(img.mode, Some(REGS_NATIVE as i32));
        assert_eq!((img.r15, img.gs), (regs.r15, regs.gs));
        assert_eq!(img.fs_base, regs.fs_base);
        assert_eq!(regs_from_pb(&img), regs);
    }

    #[test]
    fn test_values_are_distinct() {
        let regs = distinct_regs();
        let words: Vec<u64> = bytes_of(&regs)
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        let mut sorted = words.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 27, "{words:?}");
    }
}
