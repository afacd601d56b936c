//! CRIU 4.2 in cross tests (`STASIS_CRIU`): running it and showing its errors on failure.

use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `criu ARGS... -D dir -o LOG -v4`; fails with criu's log unless it succeeds.
pub fn criu_ok(criu: &Path, args: &[&str], dir: &Path, log: &str) {
    let out = Command::new(criu)
        .args(args)
        .arg("-D")
        .arg(dir)
        .args(["-o", log, "-v4"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !out.status.success() {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Error") || l.contains("rror ("))
            .collect();
        panic!(
            "criu {args:?} failed ({}): {}\nerror lines:\n{}\nlog: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            errors.join("\n"),
            dir.join(log).display()
        );
    }
}
