//! `--cgroup-props` and `--cgroup-props-file` (CRIU's format): the controller properties a dump
//! records in `cgroup.img`. A workload in its own cgroup v2 directory is dumped (left running)
//! with the built-in table, with the unified hierarchy's list replaced, with a list merged in,
//! and with a malformed file (refused by name, the workload still running).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::dump::*;
use common::lock::restore_lock;

/// Property names of the unified hierarchy's directories in `dir`'s cgroup.img.
fn unified_props(dir: &Path) -> BTreeSet<String> {
    let img = decode(&dir.join("cgroup.img"));
    let mut out = BTreeSet::new();
    for c in img["entries"][0]["controllers"].as_array().unwrap() {
        if c["cnames"] != serde_json::json!([""]) {
            continue;
        }
        let mut stack: Vec<&serde_json::Value> = c["dirs"]
            .as_array()
            .map(|d| d.iter().collect())
            .unwrap_or_default();
        while let Some(d) = stack.pop() {
            for p in d["properties"].as_array().into_iter().flatten() {
                out.insert(p["name"].as_str().unwrap().to_string());
            }
            stack.extend(d["children"].as_array().into_iter().flatten());
        }
    }
    out
}

fn dump(pid: i32, extra: &[&str]) -> (tempfile::TempDir, std::process::Output) {
    let dir = tempfile::tempdir().unwrap();
    let out = stasis_bin()
        .args(["dump", "-R", "-j", "-t", &pid.to_string(), "-D"])
        .arg(dir.path())
        .args(["-o", "dump.log", "-v4"])
        .args(extra)
        .output()
        .unwrap();
    (dir, out)
}

fn dump_ok(pid: i32, extra: &[&str]) -> tempfile::TempDir {
    let (dir, out) = dump(pid, extra);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("dump.log")).unwrap_or_default()
    );
    dir
}

#[test]
fn cgroup_props_choose_what_the_dump_records() {
    let _lock = restore_lock();
    with_round_trip_deadline(120, cgroup_path("fx-loop", 37400), move |_| {
        let w = launch("fx-loop", 37400, &[]);
        let globals: BTreeSet<String> = [
            "cgroup.subtree_control",
            "cgroup.max.descendants",
            "cgroup.max.depth",
            "cgroup.type",
            "cgroup.procs",
        ]
        .map(String::from)
        .into();

        // Built-in table: the globals, and the v2 limits the directory has.
        let d = dump_ok(w.pid, &[]);
        let all = unified_props(d.path());
        assert!(all.is_superset(&globals), "{all:?}");
        let has_max = w.cgroup.join("pids.max").exists() || w.cgroup.join("memory.max").exists();
        assert_eq!(all.len() > globals.len(), has_max, "{all:?}");

        // Replace the unified hierarchy's list: only the globals and what was given.
        let d = dump_ok(
            w.pid,
            &[
                "--cgroup-props",
                "\"unified\":\n - \"strategy\": \"replace\"\n - \"properties\": [\"cgroup.controllers\"]\n",
            ],
        );
        let mut want = globals.clone();
        want.insert("cgroup.controllers".into());
        assert_eq!(unified_props(d.path()), want);

        // Merge from a file, after the text: the text's list plus the file's.
        let f = d.path().join("props.yaml");
        std::fs::write(
            &f,
            "\"unified\":\n - \"strategy\": \"merge\"\n - \"properties\": [\"cgroup.stat\"]\n",
        )
        .unwrap();
        let d2 = dump_ok(
            w.pid,
            &[
                "--cgroup-props",
                "\"unified\":\n - \"strategy\": \"replace\"\n - \"properties\": []\n",
                "--cgroup-props-file",
                f.to_str().unwrap(),
            ],
        );
        let mut want = globals.clone();
        want.insert("cgroup.stat".into());
        assert_eq!(unified_props(d2.path()), want);

        // A malformed file is refused by name; the workload runs on.
        std::fs::write(&f, "\"unified\":\n - \"strategy\": \"often\"\n").unwrap();
        let (_d, out) = dump(w.pid, &["--cgroup-props-file", f.to_str().unwrap()]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            e.contains("--cgroup-props-file") && e.contains("often"),
            "{e}"
        );
        assert!(all_running(&w));
        verify_then_kill(&w, &[], "fx-loop after the dumps");
    })
}
