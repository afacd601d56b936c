//! CRIU's own Python RPC client (`lib/pycriu/criu.py` of CRIU's source tree) driving stasis:
//! `criu.use_binary(stasis)` starts `stasis swrk FD` the way libcriu does, then CHECK, a
//! DUMP left running, a DUMP of a PID no task has (pycriu's ESRCH error), a DUMP that kills
//! the counter and a RESTORE of it (`rst_sibling`), which counts on.
//!
//! It needs CRIU's source tree, named by `STASIS_CRIU_SRC` (nothing of it is kept in this
//! repository: the client is assembled in a temporary directory at test time, its
//! `rpc_pb2.py` generated with `protoc` from CRIU's `images/rpc.proto`), `protoc` and a
//! python3 with the protobuf module (Debian: protobuf-compiler, python3-protobuf). Without
//! `STASIS_CRIU_SRC` it runs nothing and says so on stdout (a harness of its own,
//! `harness = false`, so the skip is a visible line, not a silent pass).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::counter::{count, counts_past, launch_counter};
use common::dump::*;
use common::lock::restore_lock;

/// The Python side: one JSON-ish line per step on stdout.
const CLIENT: &str = r#"
import os, sys
sys.path.insert(0, sys.argv[1])
import pycriu.criu as pc
stasis, pid, gone, running, images = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]

def client(log):
    c = pc.criu()
    c.use_binary(stasis)
    c.opts.log_level = 4
    c.opts.log_file = log
    return c

c = client('check.log')
c.check()
print('check ok', flush=True)

c = client('dump.log')
c.opts.images_dir_fd = os.open(running, os.O_DIRECTORY)
c.opts.pid = pid
c.opts.leave_running = True
r = c.dump()
print('dump-running restored=%s' % r.restored, flush=True)

c = client('gone.log')
c.opts.images_dir_fd = os.open(running, os.O_DIRECTORY)
c.opts.pid = gone
try:
    c.dump()
    print('dump-gone succeeded', flush=True)
except pc.CRIUExceptionExternal as e:
    print('dump-gone errno=%d: %s' % (e.errno, e), flush=True)

c = client('dump.log')
c.opts.images_dir_fd = os.open(images, os.O_DIRECTORY)
c.opts.pid = pid
c.dump()
print('dump-killed', flush=True)
"#;

/// The restore, from a second client process that stays alive until told (the restored
/// root is its child with `rst_sibling`).
const RESTORER: &str = r#"
import os, sys
sys.path.insert(0, sys.argv[1])
import pycriu.criu as pc
c = pc.criu()
c.use_binary(sys.argv[2])
c.opts.log_level = 4
c.opts.log_file = 'restore.log'
c.opts.images_dir_fd = os.open(sys.argv[3], os.O_DIRECTORY)
c.opts.rst_sibling = True
r = c.restore()
print('restored pid=%d' % r.pid, flush=True)
"#;

/// Assembles `pycriu` (CRIU's criu.py, a generated rpc_pb2.py, a minimal `__init__.py`) in
/// `dir`; returns the directory to put on python's path.
fn assemble_pycriu(src: &Path, dir: &Path) -> PathBuf {
    let pkg = dir.join("pycriu");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::copy(src.join("lib/pycriu/criu.py"), pkg.join("criu.py"))
        .expect("CRIU's lib/pycriu/criu.py under STASIS_CRIU_SRC");
    // Only the RPC client: the image modules of pycriu's own __init__ need generated code
    // this test does not use.
    std::fs::write(pkg.join("__init__.py"), "").unwrap();
    let out = Command::new("protoc")
        .arg(format!("-I={}", src.join("images").display()))
        .arg(format!("--python_out={}", pkg.display()))
        .arg(src.join("images/rpc.proto"))
        .output()
        .expect("protoc (Debian: protobuf-compiler)");
    assert!(
        out.status.success(),
        "protoc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pycriu client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn round_trip(src: PathBuf) {
    let _lock = restore_lock();
    let base = 33400;
    with_round_trip_deadline(120, cgroup_path("pycriu", base), move |restored| {
        let dir = PathBuf::from(format!(
            "/tmp/stasis-dump-tests/rpc-pycriu-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lib = assemble_pycriu(&src, &dir.join("py"));
        let (mut w, out) = launch_counter("pycriu", base, &dir);
        let (running, images) = (dir.join("running"), dir.join("img"));
        std::fs::create_dir_all(&running).unwrap();
        std::fs::create_dir_all(&images).unwrap();
        let mut gone = Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let stasis = PathBuf::from(env!("CARGO_BIN_EXE_stasis"));
        let pid = w.pid.to_string();
        let gone_pid = gone_pid.to_string();
        let said = python(
            CLIENT,
            &[
                &lib,
                &stasis,
                Path::new(&pid),
                Path::new(&gone_pid),
                &running,
                &images,
            ],
        );
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(lines[0], "check ok", "{said}");
        assert_eq!(lines[1], "dump-running restored=False", "{said}");
        assert!(
            lines[2].starts_with(&format!("dump-gone errno={}: ", libc::ESRCH))
                && lines[2].contains("No process with such pid"),
            "pycriu reads CRIU's errno: {said}"
        );
        assert_eq!(lines[3], "dump-killed", "{said}");
        assert!(running.join("dump.log").exists());
        let before = count(&out);
        reap_dumped(&mut w);
        let pids = pids_of(&images);
        *restored.lock().unwrap() = pids.clone();
        let said = python(RESTORER, &[&lib, &stasis, &images]);
        assert_eq!(said.trim(), format!("restored pid={}", w.pid), "{said}");
        counts_past(&out, before, "restored through pycriu");
        kill_pids(&pids);
        kill_cgroup(&w.cgroup);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

fn main() {
    let Some(src) = std::env::var_os("STASIS_CRIU_SRC").map(PathBuf::from) else {
        println!("rpc_pycriu: 1 skipped: STASIS_CRIU_SRC unset (CRIU's source tree)");
        return;
    };
    round_trip(src);
    println!("rpc_pycriu: 1 passed");
}
