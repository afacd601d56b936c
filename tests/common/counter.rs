//! A Python counter for round trips: in its own session (no `--shell-job` needed), it writes
//! its count to a file every 50 ms, so a restored one shows it goes on from where it was.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::dump::{launch_cmd, Workload};

/// A python counter in its own session: writes `n` to `out` every 50 ms.
pub fn launch_counter(name: &str, base: i32, dir: &Path) -> (Workload, PathBuf) {
    let out = dir.join("count");
    let script = format!(
        "import os, time\n\
         n = 0\n\
         while True:\n    n += 1\n    open('{o}.tmp', 'w').write(str(n))\n    \
         os.rename('{o}.tmp', '{o}')\n    time.sleep(0.05)\n",
        o = out.display()
    );
    std::fs::write(dir.join("count.py"), script).unwrap();
    let w = launch_cmd(
        name,
        base,
        &format!("setsid python3 {}", dir.join("count.py").display()),
        &out,
    );
    (w, out)
}

pub fn count(out: &Path) -> u64 {
    std::fs::read_to_string(out)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the counter in `out` passes `n`.
pub fn counts_past(out: &Path, n: u64, what: &str) {
    let t0 = Instant::now();
    while count(out) <= n + 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: counter stuck at {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
