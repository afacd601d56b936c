//! Compiles the image message definitions in `proto/` (our own, written from the format's
//! facts) with the pure-Rust `protox` compiler: no `protoc` is needed at build time.
//!
//! Outputs in `OUT_DIR`:
//! - `criu.rs`: prost structs for every message (typed API used by the engine);
//! - `descriptors.bin`: the `FileDescriptorSet`, loaded by `prost-reflect` for the crit JSON
//!   codec (it needs field names, enum names and our custom field options).

use std::path::PathBuf;

fn main() {
    let proto_dir = PathBuf::from("proto");
    println!("cargo:rerun-if-changed=proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)
        .expect("read proto/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    let mut compiler =
        protox::Compiler::new([&proto_dir]).unwrap_or_else(|e| panic!("protox: {e:?}"));
    compiler.include_imports(true).include_source_info(true);
    compiler
        .open_files(&files)
        .unwrap_or_else(|e| panic!("protox: {e:?}"));
    let fds = compiler.file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // Encoded by the compiler itself: prost_types drops extension options such as
    // `(criu.hex)`, which the crit JSON codec reads back through prost-reflect.
    let bytes = compiler.encode_file_descriptor_set();
    std::fs::write(out.join("descriptors.bin"), bytes).expect("write descriptors.bin");
    prost_build::Config::new()
        .out_dir(&out)
        .compile_fds(fds)
        .expect("prost-build");
}
