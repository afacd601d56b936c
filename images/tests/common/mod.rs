//! Support shared by the images tests (`mod common;`): where the CRIU 4.2 fixtures are (the
//! same file as the engine's tests use) and which of their files to walk, and Debian's crit.

#![allow(dead_code, unused_imports)]

#[path = "../../../tests/common/crit.rs"]
mod crit;
#[path = "../../../tests/common/fixtures.rs"]
mod fixtures;

use std::path::PathBuf;

pub use crit::debian_crit;
pub use fixtures::fixtures;

/// The image directories of the fixtures (`criu-4.2/<name>`), sorted; all six of them.
pub fn fixture_dirs() -> Vec<PathBuf> {
    let root = fixtures().join("criu-4.2");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert_eq!(
        out.len(),
        6,
        "expected six fixture dirs in {}",
        root.display()
    );
    out
}

/// The files of every fixture directory whose name satisfies `pick`, sorted.
pub fn fixture_files(pick: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fixture_dirs() {
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            if f.file_name().and_then(|n| n.to_str()).is_some_and(&pick) {
                out.push(f);
            }
        }
    }
    out.sort();
    out
}

/// Every image file of every fixture directory (not dump.log nor the JSON decodes).
pub fn fixture_images() -> Vec<PathBuf> {
    let out = fixture_files(|n| !n.ends_with(".json") && !n.ends_with(".log"));
    assert!(out.len() > 100, "only {} fixture images found", out.len());
    out
}

/// Every fixture image that has crit 4.2's decode `IMAGE.json` beside it, as (image, json).
pub fn golden_pairs() -> Vec<(PathBuf, PathBuf)> {
    let pairs: Vec<(PathBuf, PathBuf)> = fixture_files(|n| n.ends_with(".json"))
        .into_iter()
        .map(|json| {
            let image = json.with_extension("");
            assert!(image.is_file(), "{} has no image beside it", json.display());
            (image, json)
        })
        .collect();
    assert!(pairs.len() > 100, "only {} golden pairs found", pairs.len());
    pairs
}
