#![no_main]
//! Fuzz target `plan`: one image file planted into a fixture image set, then the restore's
//! planning stage (`stasis::restore::fuzzing`; `tests/plan_corpus.rs` replays the same code).

use std::sync::OnceLock;

static HARNESS: OnceLock<stasis::restore::fuzzing::PlanHarness> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let h = HARNESS.get_or_init(|| {
        let fixtures = std::env::var_os("STASIS_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
            })
            .join("criu-4.2");
        let mut sets: Vec<_> = std::fs::read_dir(&fixtures)
            .expect("fixtures (set STASIS_FIXTURES)")
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        sets.sort();
        let scratch = std::env::temp_dir().join(format!("stasis-fuzz-plan-{}", std::process::id()));
        stasis::restore::fuzzing::PlanHarness::new(&sets, &scratch).expect("scratch copies")
    });
    let _ = h.run(data);
});
