//! Framing against real CRIU 4.2 images: every fixture parses, writes back byte-identically
//! (both through `Image::to_bytes` and the checking `ImageWriter`), and matches crit's view
//! (magic name and number of entries of the `FILE.json` decode made by crit 4.2).

use std::path::Path;

use stasis_images::framing::{Image, ImageReader};
use stasis_images::magic::ImageKind;

mod common;
use common::fixture_images;

fn crit_json(path: &Path) -> serde_json::Value {
    let mut j = path.as_os_str().to_owned();
    j.push(".json");
    let text =
        std::fs::read_to_string(&j).unwrap_or_else(|e| panic!("{}: {e}", Path::new(&j).display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_fixture_round_trips_byte_identically() {
    let mut framed = 0;
    for path in fixture_images() {
        let name = path.file_name().unwrap().to_str().unwrap();
        let kind = ImageKind::from_file_name(name)
            .unwrap_or_else(|| panic!("{name}: no kind for this file name"));
        if kind.is_raw() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let img = Image::read_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(img.kind, kind, "{}", path.display());
        assert_eq!(
            img.to_bytes(),
            bytes,
            "{}: to_bytes differs",
            path.display()
        );
        let written = img.write_to(Vec::new(), Default::default()).unwrap();
        assert_eq!(
            written,
            bytes,
            "{}: ImageWriter output differs",
            path.display()
        );
        framed += 1;
    }
    assert!(framed > 80, "only {framed} framed images");
}

#[test]
fn every_fixture_matches_crit_magic_and_entry_count() {
    for path in fixture_images() {
        let kind = ImageKind::from_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
        if kind.is_raw() {
            continue;
        }
        let img = Image::read_file(&path).unwrap();
        let j = crit_json(&path);
        assert_eq!(j["magic"], kind.name(), "{}", path.display());
        let n = j["entries"].as_array().unwrap().len();
        assert_eq!(img.entries.len(), n, "{}: entry count", path.display());
        // crit shows an "extra" exactly where we found an extra payload.
        for (i, e) in img.entries.iter().enumerate() {
            let has = j["entries"][i].get("extra").is_some();
            assert_eq!(
                e.extra.is_some(),
                has,
                "{} entry {i}: extra",
                path.display()
            );
        }
    }
}

#[test]
fn streaming_reader_agrees_with_in_memory_parse() {
    for path in fixture_images() {
        let kind = ImageKind::from_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
        if kind.is_raw() {
            continue;
        }
        let img = Image::read_file(&path).unwrap();
        let r = ImageReader::open(&path).unwrap();
        assert_eq!(r.kind(), img.kind);
        let entries: Vec<_> = r.collect::<Result<_, _>>().unwrap();
        assert_eq!(entries, img.entries, "{}", path.display());
    }
}

#[test]
fn every_entry_decodes_with_its_message_type() {
    for path in fixture_images() {
        let kind = ImageKind::from_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
        if kind.is_raw() {
            continue;
        }
        let img = Image::read_file(&path).unwrap();
        img.check_messages()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn every_kind_message_is_defined() {
    for k in stasis_images::magic::KINDS {
        for name in [k.message, k.first_message].into_iter().flatten() {
            assert!(
                stasis_images::schema::message(name).is_some(),
                "{}: {name} is not defined in proto/",
                k.name
            );
        }
    }
}
