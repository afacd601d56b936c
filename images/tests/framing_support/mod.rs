//! Shared helpers of the images tests: where the CRIU 4.2 fixtures are.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `$STASIS_FIXTURES`, else the first `shared/fixtures` found walking up from the crate
/// (the repository's parent holds `shared/`; worktrees sit one level deeper).
pub fn fixtures() -> PathBuf {
    if let Some(p) = std::env::var_os("STASIS_FIXTURES") {
        return PathBuf::from(p);
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in here.ancestors() {
        let cand = dir.join("shared/fixtures");
        if cand.join("criu-4.2").is_dir() {
            return cand;
        }
    }
    panic!("fixtures not found: set STASIS_FIXTURES or provide ../shared/fixtures")
}

/// The image directories of the fixtures (`criu-4.2/<name>`), sorted.
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

/// Every image file of every fixture directory (not dump.log nor the JSON decodes).
pub fn fixture_images() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fixture_dirs() {
        for f in std::fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_str().unwrap().to_string();
            if name.ends_with(".json") || name.ends_with(".log") {
                continue;
            }
            out.push(f);
        }
    }
    out.sort();
    assert!(out.len() > 100, "only {} fixture images found", out.len());
    out
}
