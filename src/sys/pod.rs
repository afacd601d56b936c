//! Plain-old-data views: the `#[repr(C)]` restorer ABI structs as bytes and back.
//!
//! Only types listed here (no padding, every bit pattern valid) are [`Pod`].

use super::restorer::abi;

/// A `#[repr(C)]` type without padding bytes for which every bit pattern is a valid value.
///
/// # Safety
/// Implement only for such types: [`bytes_of`] reads every byte and [`read_pod`] creates a
/// value from arbitrary bytes.
pub unsafe trait Pod: Copy + 'static {}

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        // SAFETY: each type is #[repr(C)], built only from u8/u32/i32/u64/i64 fields and arrays
        // of them with explicit padding fields, and its size is asserted in the ABI module.
        $(unsafe impl Pod for $t {})*
    };
}

pod!(
    u8,
    u32,
    u64,
    abi::MmArgs,
    abi::SigactionArgs,
    abi::ItimerArgs,
    abi::PosixTimerArgs,
    abi::RlimitArgs,
    abi::SigInfo,
    abi::RseqArgs,
    abi::UserRegs,
    abi::CredsArgs,
    abi::ThreadArgs,
    abi::VmaArgs,
    abi::KeepRange,
    abi::SpecialRemap,
    abi::VdsoPatch,
    abi::SeccompFilterArgs,
    abi::SyncArgs,
    abi::TaskArgs,
    abi::StatusRecord,
);

/// The bytes of a slice of [`Pod`] values.
pub fn slice_bytes<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: T is Pod (no padding, so every byte is initialized); the length is the slice's
    // size in bytes and the lifetime is tied to the input.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// The bytes of one [`Pod`] value.
pub fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    slice_bytes(std::slice::from_ref(v))
}

/// Reads a [`Pod`] value from the start of `b`, or `None` if `b` is too short.
pub fn read_pod<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: b holds at least size_of::<T>() bytes, read_unaligned has no alignment
    // requirement, and every bit pattern is a valid T (Pod).
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}
