//! Builds the no_std parasite blobs in `parasite/src/*.rs` (one crate root per blob) with the
//! stable toolchain's `rustc`, links each as a static PIE with `parasite/blob.lds`, and turns
//! the ELF into a flat image the engine can copy anywhere:
//!
//! ```text
//! OUT_DIR/blob_<name>.bin   bytes [0, __blob_end): .text (entry first), .rodata, .data, .bss (zeros)
//! OUT_DIR/blob_<name>.rs    SIZE, RELOCS (offsets of u64 slots holding an offset: add the load
//!                           base), and one EXPORT_<SYM> offset per `__export_<sym>` symbol
//! ```
//!
//! The build fails on an undefined symbol, on any dynamic relocation other than
//! `R_X86_64_RELATIVE`, or on a loadable section outside the flat image.

use object::read::elf::{ElfFile64, FileHeader, Rela, SectionHeader};
use object::{elf, Endianness, Object, ObjectSection, ObjectSymbol};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const BLOBS: &[&str] = &["dump", "restorer"];

fn main() {
    println!("cargo:rerun-if-changed=parasite");
    // Blobs are compiled with `--cfg stasis_blob`; files shared with the engine test it.
    println!("cargo::rustc-check-cfg=cfg(stasis_blob)");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    for name in BLOBS {
        let elf_path = out.join(format!("blob_{name}.elf"));
        compile(&rustc, name, &elf_path);
        let data = std::fs::read(&elf_path).expect("read blob ELF");
        let (image, relocs, exports) = flatten(name, &data);
        std::fs::write(out.join(format!("blob_{name}.bin")), &image).expect("write blob");
        let mut rs = String::new();
        writeln!(
            rs,
            "/// Size of the flat image in bytes (page aligned, .bss included)."
        )
        .unwrap();
        writeln!(rs, "pub const SIZE: usize = {};", image.len()).unwrap();
        writeln!(rs, "/// The flat image (.bss as zeros).").unwrap();
        writeln!(rs, "pub static BYTES: &[u8] = include_bytes!(concat!(env!(\"OUT_DIR\"), \"/blob_{name}.bin\"));").unwrap();
        writeln!(
            rs,
            "/// Offsets of u64 slots to which the load address must be added."
        )
        .unwrap();
        writeln!(rs, "pub static RELOCS: &[u32] = &{relocs:?};").unwrap();
        for (sym, off) in exports {
            writeln!(rs, "/// Offset of `__export_{sym}`.").unwrap();
            writeln!(
                rs,
                "pub const EXPORT_{}: usize = {off};",
                sym.to_uppercase()
            )
            .unwrap();
        }
        std::fs::write(out.join(format!("blob_{name}.rs")), rs).expect("write blob rs");
    }
}

fn compile(rustc: &str, name: &str, elf_path: &Path) {
    let lds = Path::new("parasite/blob.lds");
    let status = Command::new(rustc)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["--cfg", "stasis_blob"])
        .args(["--edition", "2021", "--crate-type", "bin", "--crate-name"])
        .arg(format!("stasis_blob_{name}"))
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "relocation-model=pie",
        ])
        .args(["-C", "debuginfo=0", "-C", "codegen-units=1"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args([
            "-C",
            "link-arg=-static-pie",
            "-C",
            "link-arg=-Wl,--build-id=none",
        ])
        .args([
            "-C",
            "link-arg=-Wl,--gc-sections",
            "-C",
            "link-arg=-Wl,-z,norelro",
        ])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", lds.display()))
        .arg(format!("parasite/src/{name}.rs"))
        .arg("-o")
        .arg(elf_path)
        .status()
        .expect("run rustc for a parasite blob");
    assert!(status.success(), "building parasite blob `{name}` failed");
}

/// Returns the flat image, the relocation slots and the exported symbols of blob `name`.
fn flatten(name: &str, data: &[u8]) -> (Vec<u8>, Vec<u32>, Vec<(String, u64)>) {
    let file = ElfFile64::<Endianness>::parse(data).expect("parse blob ELF");
    let end = file
        .symbols()
        .find(|s| s.name() == Ok("__blob_end"))
        .map(|s| s.address())
        .unwrap_or_else(|| panic!("blob `{name}`: no __blob_end symbol"));
    for sym in file.symbols() {
        if sym.is_undefined() && !sym.name().unwrap_or("").is_empty() {
            panic!("blob `{name}`: undefined symbol {:?}", sym.name());
        }
    }
    let mut image = vec![0u8; end as usize];
    for section in file.sections() {
        let header = section.elf_section_header();
        let flags = header.sh_flags(file.endian());
        if flags & u64::from(elf::SHF_ALLOC) == 0 || section.size() == 0 {
            continue;
        }
        let sname = section.name().unwrap_or("?");
        if matches!(
            sname,
            ".rela.dyn" | ".dynamic" | ".dynsym" | ".dynstr" | ".hash"
        ) {
            continue;
        }
        let (addr, size) = (section.address(), section.size());
        assert!(
            addr + size <= end,
            "blob `{name}`: section {sname} lies outside the image"
        );
        if header.sh_type(file.endian()) == elf::SHT_NOBITS {
            continue;
        }
        let bytes = section.data().expect("section data");
        image[addr as usize..(addr + size) as usize].copy_from_slice(bytes);
    }
    let mut relocs = Vec::new();
    let header = file.elf_header();
    let endian = file.endian();
    for section in header.sections(endian, data).expect("sections").iter() {
        if section.sh_type(endian) != elf::SHT_RELA {
            continue;
        }
        let relas = section
            .data_as_array::<elf::Rela64<Endianness>, _>(endian, data)
            .expect("rela entries");
        for rela in relas {
            let kind = rela.r_type(endian, false);
            assert_eq!(
                kind,
                elf::R_X86_64_RELATIVE,
                "blob `{name}`: unexpected relocation type {kind}"
            );
            let off = rela.r_offset(endian);
            let addend = rela.r_addend(endian) as u64;
            assert!(
                off + 8 <= end,
                "blob `{name}`: relocation outside the image"
            );
            image[off as usize..off as usize + 8].copy_from_slice(&addend.to_le_bytes());
            relocs.push(u32::try_from(off).expect("small blob"));
        }
    }
    let exports = file
        .symbols()
        .filter_map(|s| {
            let n = s.name().ok()?;
            n.strip_prefix("__export_")
                .map(|e| (e.to_string(), s.address()))
        })
        .collect();
    (image, relocs, exports)
}
