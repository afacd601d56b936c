//! Stable-toolchain replay of the fuzz targets: every input kept in `fuzz/regressions/<target>/`
//! (each crash the fuzzer ever found, kept forever) and seeds made from the fixture images
//! go through the same entry functions as `cargo fuzz` (`stasis_images::fuzzing`).

use std::path::Path;

use stasis_images::fuzzing;

mod common;

#[test]
fn regressions_replay_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut n = 0;
    for target in fuzzing::TARGETS {
        let dir = root.join(target);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in rd {
            let f = f.unwrap().path();
            let data = std::fs::read(&f).unwrap();
            eprintln!("replaying {}", f.display());
            assert!(fuzzing::run(target, &data));
            n += 1;
        }
    }
    // every directory under regressions/ is a target name
    for d in std::fs::read_dir(&root).unwrap() {
        let name = d.unwrap().file_name().into_string().unwrap();
        // `plan` (images → restore plan) and `parasite` (the dumper's decoding of parasite
        // replies) are the engine's targets, replayed by its own tests.
        if name != "README.md" && name != "plan" && name != "parasite" {
            assert!(
                fuzzing::TARGETS.contains(&name.as_str()),
                "unknown target dir {name}"
            );
        }
    }
    eprintln!("{n} regression inputs replayed");
}

#[test]
fn fixture_seeds_replay_without_panic() {
    let mut per_target = std::collections::BTreeMap::new();
    for dir in common::fixture_dirs() {
        for (target, data) in fuzzing::seeds_from_dir(&dir) {
            assert!(fuzzing::run(target, &data));
            *per_target.entry(target).or_insert(0) += 1;
        }
    }
    for t in ["framing", "core", "mm", "pagemap", "all"] {
        assert!(
            per_target.get(t).copied().unwrap_or(0) > 0,
            "no seeds for {t}: {per_target:?}"
        );
    }
}

#[test]
fn synthetic_payload_images_parse_and_pass_every_target() {
    for (kind, bytes) in fuzzing::synthetic_images() {
        let img =
            stasis_images::framing::Image::parse(&bytes).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(img.kind, kind);
        img.check_messages()
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        fuzzing::framing(&bytes);
        fuzzing::json(&bytes);
        // the crit JSON codec agrees with the framing layer on these payload layouts
        let codec = stasis_images::json::Codec::criu().unwrap();
        let doc = stasis_images::json::decode_image(codec, &bytes, true)
            .unwrap_or_else(|e| panic!("{kind}: json decode: {e}"));
        let back = stasis_images::json::encode_image(codec, &doc).unwrap();
        assert_eq!(back, bytes, "{kind}: json encode differs");
    }
}

#[test]
fn truncations_of_fixtures_never_panic() {
    // Cheap deterministic stand-in for fuzzing on stable: every prefix of a few images.
    let dir = common::fixture_dirs()
        .into_iter()
        .find(|d| d.ends_with("fx-files"))
        .unwrap();
    for name in [
        "pipes-data.img",
        "ghost-file-1.img",
        "pagemap-30300.img",
        "files.img",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        for cut in 0..bytes.len().min(4096) {
            fuzzing::framing(&bytes[..cut]);
        }
    }
}
