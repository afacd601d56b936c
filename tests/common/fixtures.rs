//! Where the CRIU 4.2 fixtures are. Shared by the engine's tests, its unit tests and the
//! images crate's tests (included with `#[path]`), so it needs nothing but std.

use std::path::{Path, PathBuf};

/// `$STASIS_FIXTURES`, else the first `shared/fixtures` holding `criu-4.2/` found walking up
/// from the crate (the repository's parent holds `shared/`; worktrees sit one level deeper).
pub fn fixtures() -> PathBuf {
    if let Some(p) = std::env::var_os("STASIS_FIXTURES") {
        let p = PathBuf::from(p);
        assert!(
            p.join("criu-4.2").is_dir(),
            "STASIS_FIXTURES={} holds no criu-4.2/",
            p.display()
        );
        return p;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared/fixtures"))
        .find(|d| d.join("criu-4.2").is_dir())
        .expect("fixtures not found: set STASIS_FIXTURES or provide ../shared/fixtures")
}

/// The image directory of fixture workload `name` (`criu-4.2/<name>`).
pub fn image_dir(name: &str) -> PathBuf {
    fixtures().join("criu-4.2").join(name)
}

/// Runs the fixtures' `install.sh`: binaries, data files and results dir at
/// /tmp/criu-fixtures (again: it also restores data files a test changed).
pub fn install() {
    let out = std::process::Command::new("bash")
        .arg(fixtures().join("install.sh"))
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`install`] unless the fixture binaries are there already.
pub fn install_if_missing() {
    let bin = Path::new("/tmp/criu-fixtures/bin");
    if !(bin.join("fx-launch").exists() && bin.join("fx-tree").exists()) {
        install();
    }
}
