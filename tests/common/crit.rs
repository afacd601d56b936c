//! Debian's crit (CRIU 3.17), the independent decoder the crit tests compare with. Shared with
//! the images crate's tests (included with `#[path]`), so it needs nothing but std.

use std::path::PathBuf;

/// `$STASIS_CRIT`, else `/usr/bin/crit`; fails the test when it is not installed.
pub fn debian_crit() -> PathBuf {
    let crit = std::env::var_os("STASIS_CRIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/crit"));
    assert!(
        crit.is_file(),
        "{} not found: install Debian's criu package (it ships crit) or set STASIS_CRIT",
        crit.display()
    );
    crit
}
