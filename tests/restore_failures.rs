//! Every rejection class of `stasis restore`: the error names the image or file and the step,
//! the exit status is 1, and no task of the tree is left alive.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::restore::*;
use stasis::images::pb;

#[test]
fn corrupt_image_is_rejected() {
    let run = fixture_run("fx-loop");
    let dir = &run.dir;
    let core = dir.join("core-30000.img");
    let mut b = std::fs::read(&core).unwrap();
    for x in &mut b[12..60] {
        *x = 0xff;
    }
    std::fs::write(&core, b).unwrap();
    let out = stasis_restore(dir, &["-d"]);
    assert_failed(&out, "fx-loop", &["core-30000.img", "entry 0"]);
}

#[test]
fn truncated_image_is_rejected() {
    let run = fixture_run("fx-loop");
    let dir = &run.dir;
    let mm = dir.join("mm-30000.img");
    let b = std::fs::read(&mm).unwrap();
    std::fs::write(&mm, &b[..b.len() - 10]).unwrap();
    let out = stasis_restore(dir, &["-d"]);
    assert_failed(&out, "fx-loop", &["mm-30000.img", "truncated"]);
}

#[test]
fn truncated_pages_are_rejected() {
    let run = fixture_run("fx-mem");
    let dir = &run.dir;
    let pages = dir.join("pages-2.img");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap();
    f.set_len(4096 * 100).unwrap();
    let out = stasis_restore(dir, &["-d"]);
    assert_failed(&out, "fx-mem", &["pages-2.img", "truncated"]);
}

#[test]
fn missing_image_is_rejected() {
    let run = fixture_run("fx-loop");
    let dir = &run.dir;
    std::fs::remove_file(dir.join("pagemap-30000.img")).unwrap();
    let out = stasis_restore(dir, &["-d"]);
    assert_failed(&out, "fx-loop", &["pagemap-30000.img", "No such file"]);
}

#[test]
fn missing_file_is_rejected() {
    let run = fixture_run("fx-files");
    let dir = &run.dir;
    std::fs::remove_file("/tmp/criu-fixtures/data/fx-files/ro.dat").unwrap();
    let out = stasis_restore(dir, &["-d"]);
    reinstall();
    assert_failed(
        &out,
        "fx-files",
        &["/tmp/criu-fixtures/data/fx-files/ro.dat", "cannot stat"],
    );
}

#[test]
fn changed_file_size_is_rejected() {
    let run = fixture_run("fx-files");
    let dir = &run.dir;
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open("/tmp/criu-fixtures/data/fx-files/rw.dat")
        .unwrap();
    f.set_len(32769).unwrap();
    let out = stasis_restore(dir, &["-d"]);
    reinstall();
    assert_failed(
        &out,
        "fx-files",
        &["rw.dat", "size 32769, the images expect 32768"],
    );
}

#[test]
fn changed_file_mode_is_rejected() {
    let run = fixture_run("fx-files");
    let dir = &run.dir;
    std::fs::set_permissions(
        "/tmp/criu-fixtures/data/fx-files/ro.dat",
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let out = stasis_restore(dir, &["-d"]);
    reinstall();
    assert_failed(
        &out,
        "fx-files",
        &["ro.dat", "mode 100666, the images expect 100644"],
    );
}

#[test]
fn taken_pid_is_named_with_its_owner() {
    let run = fixture_run("fx-loop");
    let dir = &run.dir;
    // launch_at puts `sleep` at PID 30000 (it prints the PID and exits), with the pid
    // allocator past it so that no fork takes it first.
    common::dump::allocator_past(30000, 1);
    let launcher = common::dump::launch_at(None, 30000, "/bin/sleep", &["60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn launch_at");
    let out = wait_child(launcher, Duration::from_secs(10), "launch_at");
    assert!(
        out.status.success(),
        "launch_at: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restore = stasis_restore(dir, &["-d"]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(30000),
        nix::sys::signal::Signal::SIGKILL,
    );
    wait_pids_free(&[30000], Duration::from_secs(10));
    let err = String::from_utf8_lossy(&restore.stderr).into_owned();
    assert_eq!(restore.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("pid 30000 is taken by sleep (/bin/sleep 60)"),
        "got: {err}"
    );
}

/// A PID the images need held by a thread of another process: the error names the PID, the
/// thread's comm and the process (tgid) it belongs to.
#[test]
fn taken_pid_held_by_a_thread_names_its_tgid() {
    let run = fixture_run("fx-loop");
    let dir = &run.dir;
    // A thread of another process at TID 30000 (clone3 set_tid: no race with forks elsewhere).
    let bin = common::workload::c_program("thread_at", include_str!("common/thread_at.c"), &[]);
    let mut holder = std::process::Command::new(bin)
        .args(["30000", "pid-holder"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn thread_at");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read thread_at");
    let Some(tgid) = line.strip_prefix("ready ") else {
        let out = holder.wait_with_output().expect("thread_at");
        panic!(
            "thread_at: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let tgid: i32 = tgid.trim().parse().expect("thread_at pid");
    let restore = stasis_restore(dir, &["-d"]);
    drop(holder.stdin.take());
    holder.wait().expect("wait thread_at");
    let err = assert_failed(&restore, "fx-loop", &["pid 30000 is taken by pid-holder ("]);
    assert!(
        err.contains(&format!("(a thread of tgid {tgid})")),
        "error should name the owning process {tgid}; got: {err}"
    );
}

/// A failure after the tree exists (mmap of a grandchild fails during the switch) kills every
/// task already created: root, children, grandchild, zombie.
#[test]
fn failure_after_tree_creation_kills_the_tree() {
    let run = fixture_run("fx-tree");
    let dir = &run.dir;
    let path = dir.join("mm-30404.img");
    edit_single(&path, |mm: &mut pb::MmEntry| {
        let v = mm
            .vmas
            .iter_mut()
            .find(|v| v.status & (1 << 6) != 0)
            .expect("a private file vma");
        v.pgoff += 1; // not page aligned: mmap fails with EINVAL
    });
    let out = stasis_restore(dir, &["-d"]);
    assert_failed(&out, "fx-tree", &["premap", "pid 30404", "EINVAL"]);
}

/// A failure inside a task's restorer blob (its StatusRecord reports the step) kills the tree.
#[test]
fn failure_in_the_restorer_blob_kills_the_tree() {
    let run = fixture_run("fx-tree");
    let dir = &run.dir;
    let path = dir.join("mm-30404.img");
    edit_single(&path, |mm: &mut pb::MmEntry| {
        let v = mm
            .vmas
            .iter_mut()
            .find(|v| v.status & (1 << 9) != 0)
            .expect("a private anonymous vma");
        v.prot |= 0x100; // not a PROT_* bit: the blob's mprotect fails with EINVAL
    });
    let out = stasis_restore(dir, &["-d"]);
    assert_failed(
        &out,
        "fx-tree",
        &["restorer blob: mprotect", "pid 30404", "EINVAL"],
    );
}
