#![no_main]
//! Fuzz target `parasite`: the dumper's decoding of dump-parasite replies
//! (`stasis::parasite::reply`; the first byte picks the decoder). Never panics, never
//! allocates by a count read from the input; `tests/parasite_replies.rs` replays the same code.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = stasis::parasite::reply::decode_any(data);
});
