#![no_main]
//! Fuzz target `migrate_control`: the destination's (and source's) decoding of the live
//! migration's control stream (`stasis::migrate::control`). Never panics, never allocates by
//! a length read from the input; the library's unit tests cover truncations and lies.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = stasis::migrate::control::decode_all(data);
});
