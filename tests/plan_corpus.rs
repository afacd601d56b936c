//! Stable-toolchain replay of the `plan` fuzz target (images → restore plan): the kept
//! regressions of `fuzz/regressions/plan/` (each a finding: it must be refused, naming its
//! file), the parsers' seeds made from the fixtures, and deterministic damage of every
//! fixture image, all through `stasis::restore::fuzzing::PlanHarness` as `cargo fuzz` runs it.

mod common;

use std::path::{Path, PathBuf};

use stasis::restore::fuzzing::PlanHarness;

fn sets() -> Vec<PathBuf> {
    let root = common::fixtures::fixtures().join("criu-4.2");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert_eq!(out.len(), 6, "six fixture image sets in {}", root.display());
    out
}

fn harness(scratch: &Path) -> PlanHarness {
    PlanHarness::new(&sets(), scratch).expect("copy the fixture sets")
}

#[test]
fn unchanged_fixtures_plan() {
    let scratch = tempfile::tempdir().unwrap();
    for set in sets() {
        stasis::restore::plan::prepare(&set, false, Path::new("/"))
            .unwrap_or_else(|e| panic!("{}: {e}", set.display()));
    }
    // A whole fixture file planted into its own set changes nothing.
    let h = harness(scratch.path());
    let mm = std::fs::read(common::fixtures::image_dir("fx-loop").join("mm-30000.img")).unwrap();
    h.run_named("fx-loop", "mm-30000.img", &mm)
        .unwrap()
        .unwrap();
}

#[test]
fn kept_findings_are_refused_naming_their_file() {
    let scratch = tempfile::tempdir().unwrap();
    let h = harness(scratch.path());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/plan");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let f = f.unwrap().path();
        let data = std::fs::read(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        match name.split("__").collect::<Vec<_>>()[..] {
            [set, file, case] => {
                let err = h
                    .run_named(set, file, &data)
                    .unwrap_or_else(|| panic!("{name}: no {set}/{file}"))
                    .expect_err(&format!("{name} must be refused"))
                    .to_string();
                // pstree's group check names pstree.img; the rest name their own file
                assert!(err.contains(file), "{case}: {err}");
                eprintln!("{name}: {err}");
            }
            // A crash input of `cargo fuzz` (crash-<hash>): it must not panic any more.
            _ => {
                let _ = h.run(&data);
            }
        }
        n += 1;
    }
    assert!(n >= 10, "{n} kept inputs");
}

#[test]
fn parser_seeds_and_damaged_images_never_panic() {
    let scratch = tempfile::tempdir().unwrap();
    let h = harness(scratch.path());
    let mut runs = 0;
    for set in sets() {
        for (target, data) in stasis::images::fuzzing::seeds_from_dir(&set) {
            if target == "framing" || target == "json" {
                let _ = h.run(&data);
                runs += 1;
            }
        }
    }
    // Damage: truncations and bit flips of every image of every set, in place.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for set in sets() {
        let set_name = set.file_name().unwrap().to_string_lossy().into_owned();
        let mut files: Vec<_> = std::fs::read_dir(&set)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "img"))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let orig = std::fs::read(&f).unwrap();
            if orig.is_empty() || name.starts_with("pages-") {
                continue;
            }
            for cut in [0, 4, 8, 12, orig.len() / 2, orig.len() - 1] {
                let _ = h.run_named(&set_name, &name, &orig[..cut.min(orig.len())]);
                runs += 1;
            }
            for _ in 0..12 {
                let mut bad = orig.clone();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % bad.len() as u64) as usize;
                    bad[at] ^= 1 << (next() % 8);
                }
                let _ = h.run_named(&set_name, &name, &bad);
                runs += 1;
            }
        }
    }
    eprintln!("{runs} planning runs");
}
