//! The dumper's decoding of dump-parasite replies is hostile input (`stasis::parasite::reply`):
//!
//! ```text
//! kept inputs    fuzz/regressions/parasite/DECODER__CASE: a lying reply (wrong sizes and
//!                counts, out-of-range addresses and values, another command's or thread's
//!                answer), each refused; crash-* (fuzzer findings) must only not panic
//! mutations      truncations and bit flips of every kept input, and pseudo-random inputs:
//!                no panic
//! names          a task whose threads are named "../../escape" and "x/../../y" dumps with
//!                those names in its core images, and the dump writes only inside -D
//! ```

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::deadline::with_deadline;
use common::dump::{stasis_bin, stasis_dump};
use common::workload::c_program;
use stasis::parasite::reply::decode_any;

fn kept() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/parasite");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 30, "the kept inputs are there");
    v
}

#[test]
fn every_kept_lying_reply_is_refused() {
    for (name, data) in kept() {
        let accepted = decode_any(&data);
        if !name.starts_with("crash-") {
            assert!(!accepted, "{name} was accepted");
        }
    }
}

#[test]
fn mutations_and_random_input_never_panic() {
    for (_, data) in kept() {
        for n in 0..data.len() {
            decode_any(&data[..n]);
        }
        for bit in 0..data.len() * 8 {
            let mut d = data.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            decode_any(&d);
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 2200) as usize;
        let d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        decode_any(&d);
    }
}

const NAMES_SRC: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
static void *run(void *a) { (void)a; prctl(PR_SET_NAME, "x/../../y"); for (;;) pause(); }
int main(int argc, char **argv) {
    pthread_t t;
    pthread_create(&t, NULL, run, NULL);
    prctl(PR_SET_NAME, "../../escape");
    FILE *f = fopen(argv[1], "w"); fputs("READY", f); fclose(f);
    for (;;) pause();
}
"#;

/// Every path under `dir`.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                todo.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

#[test]
fn names_from_the_task_never_become_paths() {
    let scratch = tempfile::tempdir().unwrap();
    let images = scratch.path().join("a/b/images");
    std::fs::create_dir_all(&images).unwrap();
    let ready = scratch.path().join("ready");
    let bin = c_program("fx-names", NAMES_SRC, &["-pthread"]);
    let mut child = std::process::Command::new(&bin)
        .arg(&ready)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        assert!(t0.elapsed().as_secs() < 20, "fx-names not ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::remove_file(&ready).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = tree(scratch.path());
    let dir = images.clone();
    with_deadline(
        60,
        move || {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        },
        move || stasis_dump(pid, &dir, &["--shell-job"]),
    );
    let _ = child.wait();
    let after = tree(scratch.path());
    let new: Vec<_> = after.difference(&before).collect();
    assert!(
        new.iter().all(|p| p.parent() == Some(images.as_path())),
        "written outside -D: {new:?}"
    );
    for escaped in ["escape", "y", "../escape", "../y"] {
        let tmp = std::env::temp_dir();
        assert!(
            !tmp.join(escaped).exists() && !Path::new(escaped).exists(),
            "{escaped}"
        );
    }
    // The names are kept as they were, as names.
    let core = stasis_bin()
        .args(["crit", "show"])
        .arg(images.join(format!("core-{pid}.img")))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&core.stdout);
    assert!(text.contains("../../escape"), "{text}");
    let all: String = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("core-")
        })
        .map(|p| {
            String::from_utf8_lossy(
                &stasis_bin()
                    .args(["crit", "show"])
                    .arg(&p)
                    .output()
                    .unwrap()
                    .stdout,
            )
            .into_owned()
        })
        .collect();
    assert!(all.contains("x/../../y"), "{all}");
}
