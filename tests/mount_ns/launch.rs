//! The mount-namespace workload (workload.c) for tests/mount_ns.rs and tests/criu_compat.rs:
//! `unshare --mount --fork --propagation private workload DIR MODE` in a fresh cgroup; the
//! tree dumped is the workload (the child of unshare), which owns its mount namespace.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::common::dump::{launch_cmd, Workload, TUNABLES};
use super::common::workload::c_program;

/// The options a dump and a restore of the workload need: its namespace holds copies of the
/// host's mounts (found again on the host: `--ext-mount-map auto`), its "/" is the host's.
pub const MOUNT_OPTS: &[&str] = &["--ext-mount-map", "auto", "--root", "/"];

/// Starts the workload in `mode` (exact, sorted, shared) in its own directory; returns it
/// (its pid: the workload, not unshare) with that directory. Its verdict goes to DIR/result.
pub fn launch(name: &str, base: i32, mode: &str) -> (Workload, PathBuf) {
    let bin = c_program("mount_ns_workload", include_str!("workload.c"), &[]);
    let dir = PathBuf::from(format!(
        "/tmp/stasis-dump-tests/{name}-{}-{base}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cmd = format!(
        "env GLIBC_TUNABLES={TUNABLES} unshare --mount --fork --propagation private {} {} {mode}",
        bin.display(),
        dir.display()
    );
    let mut w = launch_cmd(name, base, &cmd, &dir.join("ready"));
    w.pid = child_of(w.pid);
    w.result = dir.join("result");
    (w, dir)
}

/// Lets the workload check itself (DIR/go) and returns its verdict (10 s at most).
pub fn verdict(dir: &Path) -> String {
    let _ = std::fs::remove_file(dir.join("result"));
    std::fs::write(dir.join("go"), "").unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(dir.join("result")) {
            if !s.is_empty() {
                let _ = std::fs::remove_file(dir.join("go"));
                return s;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the mount namespace workload gave no verdict"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `/proc/PID/mountinfo` without ids and device numbers (what a restore keeps).
pub fn mounts_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_string())
        .collect()
}

/// A busybox-static rootfs made here (bin/busybox, bin/sh and bin/sleep links, empty proc and
/// tmp, the counting loop in /loop.sh) and a shell counting in it as a container:
/// `container.c` pivots into it with proc and a tmpfs at /tmp. The count is in its
/// /tmp/count (a tmpfs of the container), `ready` on the rootfs once it counts.
pub fn launch_container(name: &str, base: i32) -> (Workload, PathBuf) {
    let bin = c_program("mount_ns_container", include_str!("container.c"), &[]);
    let rootfs = PathBuf::from(format!(
        "/tmp/stasis-dump-tests/{name}-{}-{base}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&rootfs);
    for d in ["bin", "proc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox-static");
    for l in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(l)).unwrap();
    }
    std::fs::write(
        rootfs.join("loop.sh"),
        "i=0\nwhile :; do i=$((i+1)); echo $i > /tmp/count; [ $i = 3 ] && echo > /ready; \
         sleep 0.05; done\n",
    )
    .unwrap();
    let cmd = format!(
        "env -i PATH=/bin GLIBC_TUNABLES={TUNABLES} unshare --mount --fork --propagation \
         private {} {} /bin/sh /loop.sh",
        bin.display(),
        rootfs.display()
    );
    let mut w = launch_cmd(name, base, &cmd, &rootfs.join("ready"));
    w.pid = child_of(w.pid);
    (w, rootfs)
}

/// The container's count (its /tmp/count, read through /proc/PID/root).
pub fn count(pid: i32) -> u64 {
    for _ in 0..100 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/root/tmp/count")).unwrap_or_default();
        if let Ok(n) = s.trim().parse() {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no count in /proc/{pid}/root/tmp/count")
}

/// The child of unshare (the process that owns the namespace).
fn child_of(pid: i32) -> i32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unshare {pid} has no child"))
}
