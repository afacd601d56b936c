#![no_main]
//! Fuzz target `files`: see `stasis_images::fuzzing` (the stable replay test calls the same code).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stasis_images::fuzzing::run("files", data);
});
