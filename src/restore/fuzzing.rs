//! Fuzzing the planning stage (images → [`super::plan::prepare`]) with the parsers' corpus.
//!
//! ```text
//!  input: one image file (whole)      base: scratch copies of image sets (the fixtures)
//!    the base set: input length mod number of sets (or named, for kept regressions)
//!    the file replaced: the first of the set with the same magic words, else the one the
//!    first byte picks; then prepare() — and the file put back
//!  checked: no panic; a plan that is accepted holds what later steps rely on
//!  (unique pids, parents first, page runs ascending inside the task's VMAs)
//! ```
//! `fuzz/fuzz_targets/plan.rs` and `tests/plan_corpus.rs` call [`PlanHarness::run`].

use std::path::{Path, PathBuf};

use super::error::RestoreError;
use super::plan::{self, Plan};

/// Scratch copies of image sets that inputs are planted into.
pub struct PlanHarness {
    bases: Vec<Base>,
}

struct Base {
    name: String,
    dir: PathBuf,
    /// (file name, original bytes), sorted by name.
    files: Vec<(String, Vec<u8>)>,
}

impl PlanHarness {
    /// Copies every image set of `sets` (their `.img` files) under `scratch`.
    pub fn new(sets: &[PathBuf], scratch: &Path) -> std::io::Result<Self> {
        let mut bases = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let name = set
                .file_name()
                .map_or(format!("set{i}"), |n| n.to_string_lossy().into_owned());
            let dir = scratch.join(&name);
            std::fs::create_dir_all(&dir)?;
            let mut files = Vec::new();
            for e in std::fs::read_dir(set)? {
                let e = e?;
                let file = e.file_name().to_string_lossy().into_owned();
                if !file.ends_with(".img") {
                    continue;
                }
                let bytes = std::fs::read(e.path())?;
                std::fs::write(dir.join(&file), &bytes)?;
                files.push((file, bytes));
            }
            files.sort();
            if !files.is_empty() {
                bases.push(Base { name, dir, files });
            }
        }
        Ok(Self { bases })
    }

    /// Plants `data` into a base set (chosen by its length) and plans it.
    pub fn run(&self, data: &[u8]) -> Result<(), RestoreError> {
        if self.bases.is_empty() {
            return Ok(());
        }
        let base = &self.bases[data.len() % self.bases.len()];
        let same_magic = |b: &[u8]| {
            let n = if b.get(..4) == Some(&0x5831_3116u32.to_le_bytes()[..]) {
                4
            } else {
                8
            };
            data.len() >= n && b.len() >= n && b[..n] == data[..n]
        };
        let victim = base
            .files
            .iter()
            .position(|(_, b)| same_magic(b))
            .unwrap_or(usize::from(data.first().copied().unwrap_or(0)) % base.files.len());
        self.plant(base, victim, data)
    }

    /// Plants `data` as file `file` of the base set `set` and plans it (kept regressions
    /// name both).
    pub fn run_named(
        &self,
        set: &str,
        file: &str,
        data: &[u8],
    ) -> Option<Result<(), RestoreError>> {
        let base = self.bases.iter().find(|b| b.name == set)?;
        let victim = base.files.iter().position(|(f, _)| f == file)?;
        Some(self.plant(base, victim, data))
    }

    fn plant(&self, base: &Base, victim: usize, data: &[u8]) -> Result<(), RestoreError> {
        let (file, original) = &base.files[victim];
        let path = base.dir.join(file);
        if std::fs::write(&path, data).is_err() {
            return Ok(());
        }
        let res = plan::prepare(&base.dir, false, Path::new("/")).map(|p| check_plan(&p));
        let _ = std::fs::write(&path, original);
        res
    }
}

/// What an accepted plan guarantees to the steps after it (a violation is a finding).
fn check_plan(plan: &Plan) {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in plan.tasks.iter().enumerate() {
        assert!(
            t.pid > 0 && seen.insert(t.pid),
            "pid {} twice or bad",
            t.pid
        );
        if i > 0 {
            let parent = plan.index(t.ppid).expect("parent in the tree");
            assert!(parent < i, "parent after child");
        }
        let mut prev = 0;
        for r in &t.pages.runs {
            assert!(r.nr > 0 && r.vaddr >= prev, "runs ascending and non-empty");
            prev = r.vaddr + r.nr * plan::PAGE;
        }
        if let Some(mm) = &t.mm {
            let path = plan.dir.join(format!("mm-{}.img", t.pid));
            super::checks::vmas(&path, mm).expect("accepted vmas pass the vma checks");
            super::checks::runs_in_vmas(&path, &t.pages, mm).expect("runs inside vmas");
        }
    }
    super::checks::groups(plan, false).expect("accepted groups");
}
