//! End to end for file and socket state: one self-verifying C workload
//! (`tests/file_state_e2e/fx-files.c`) sets up one kind of state per run, is dumped with
//! `stasis dump` (the tree is killed), restored with `stasis restore -d`, and checks the state
//! itself the way its user would: PASS. Kinds the kernel does not let us restore are refused by
//! name at dump time, and the dumped task runs on unharmed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::dump::*;
use common::lock::restore_lock;
use common::workload::c_program;

/// Pid bases (cgroup names only) of this file's tests.
const BASE: i32 = 33400;

/// Starts scenario `name` of fx-files in its own cgroup, with its work directory.
fn start(name: &str, base: i32, work: &Path) -> Workload {
    let bin = c_program(
        "fx-files",
        include_str!("file_state_e2e/fx-files.c"),
        &["-static"],
    );
    let result = work.join("result");
    let cmd = format!(
        "{} {name}",
        tuned_cmd(&bin, &[result.as_path(), &work.join("w")])
    );
    std::fs::create_dir(work.join("w")).unwrap();
    launch_cmd(&format!("fx-files-{name}"), base, &cmd, &result)
}

/// Dumps scenario `name` (with `dump_args`), restores it (with `restore_args`) and has it
/// verify itself.
fn round_trip(name: &'static str, base: i32, dump_args: &'static [&'static str]) {
    round_trip_with(name, base, dump_args, dump_args)
}

fn round_trip_with(
    name: &'static str,
    base: i32,
    dump_args: &'static [&'static str],
    restore_args: &'static [&'static str],
) {
    round_trip_by(
        name,
        base,
        stasis_dumps,
        dump_args,
        restore_args,
        stasis_restore_detached,
    )
}

/// Dumps with `stasis dump` (the workload's cgroup frozen); Debian's crit decodes every image.
fn stasis_dumps(w: &Workload, dir: &Path, dump_args: &[&str]) {
    let cgroup = w.cgroup.to_string_lossy().into_owned();
    let mut args = vec!["--freeze-cgroup", cgroup.as_str()];
    args.extend_from_slice(dump_args);
    stasis_dump(w.pid, dir, &args);
    debian_crit_decodes_all(dir);
}

/// Dumps with CRIU (`STASIS_CRIU`).
fn criu_dumps(w: &Workload, dir: &Path, dump_args: &[&str]) {
    let criu = std::env::var("STASIS_CRIU").expect("STASIS_CRIU=<path of a criu 4.2 binary>");
    let out = std::process::Command::new(criu)
        .args(["dump", "-t", &w.pid.to_string(), "-D"])
        .arg(dir)
        .args(["-o", "dump.log", "-v4"])
        .args(dump_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "criu dump of {}: {}",
        w.name,
        std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default()
    );
}

/// Restores with CRIU (`STASIS_CRIU`), detached.
fn criu_restores(dir: &Path, restore_args: &[&str]) {
    let criu = std::env::var("STASIS_CRIU").expect("STASIS_CRIU=<path of a criu 4.2 binary>");
    let out = std::process::Command::new(criu)
        .args(["restore", "-d", "-D"])
        .arg(dir)
        .args(["-o", "restore.log", "-v4"])
        .args(restore_args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        out.success(),
        "criu restore of {}: {}",
        dir.display(),
        std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default()
    );
}

/// Starts scenario `name`, dumps it with `dump` (which kills it), restores it with `restore`
/// and has it verify itself.
fn round_trip_by(
    name: &'static str,
    base: i32,
    dump: fn(&Workload, &Path, &[&str]),
    dump_args: &'static [&'static str],
    restore_args: &'static [&'static str],
    restore: fn(&Path, &[&str]),
) {
    let _lock = restore_lock();
    with_round_trip_deadline(
        90,
        cgroup_path(&format!("fx-files-{name}"), base),
        move |restored| {
            let work = tempfile::tempdir().unwrap();
            let (w, images, pids) =
                start_and_dump(name, base, work.path(), dump, dump_args, &restored);
            restore(images.path(), restore_args);
            std::thread::sleep(Duration::from_millis(300));
            verify_then_kill(&w, &pids, &format!("fx-files {name} restored"));
        },
    )
}

/// The scenarios CRIU 4.2 dumps (all but the deleted root, where its parasite finds no /proc),
/// with their dump options.
const CRIU_SCENARIOS: &[(&str, &[&str])] = &[
    ("ghost", &[]),
    ("ghost_dir", &[]),
    ("ghost_sparse", &[]),
    ("cwd_gone", &[]),
    ("ghost_map", &[]),
    ("fown", &[]),
    ("attrs", &[]),
    ("memfd", &[]),
    ("pipesz", &[]),
    ("filter", &[]),
    ("udp_shut", &[]),
    ("fifo", &[]),
    ("opath", &[]),
    ("devzero", &[]),
    ("inotify_gone", &[]),
    ("unix_gone", &[]),
    ("reuseport", &[]),
    ("unix_unconn", &[]),
    ("locks", &["--file-locks"]),
    ("fdshare", &[]),
    ("scm", &[]),
    ("pidfd", &[]),
    ("fanotify", &[]),
    ("ghost_link", &[]),
    ("ghost_dev", &[]),
];

/// Images made by CRIU 4.2 (`STASIS_CRIU=path` to its binary) restore the same state: each
/// scenario dumped by CRIU, restored by stasis, verified.
#[test]
#[ignore = "needs STASIS_CRIU=<path of a criu 4.2 binary>"]
fn criu_images_restore() {
    for (i, &(name, dump_args)) in CRIU_SCENARIOS.iter().enumerate() {
        round_trip_by(
            name,
            BASE + 40 + i as i32,
            criu_dumps,
            dump_args,
            &[],
            stasis_restore_detached,
        );
    }
}

/// Kinds stasis dumps that CRIU 4.2 restores from stasis's images (`STASIS_CRIU=path`).
const STASIS_TO_CRIU: &[&str] = &[
    "fdshare",
    "scm",
    "pidfd",
    "fanotify",
    "ghost_link",
    "ghost_dev",
];

/// Images stasis makes of these kinds restore with CRIU 4.2 and verify.
#[test]
#[ignore = "needs STASIS_CRIU=<path of a criu 4.2 binary>"]
fn criu_restores_stasis_images() {
    for (i, &name) in STASIS_TO_CRIU.iter().enumerate() {
        round_trip_by(
            name,
            BASE + 70 + i as i32,
            stasis_dumps,
            &[],
            &[],
            criu_restores,
        );
    }
}

/// Starts scenario `name` in `work`, dumps it with `dump` (which kills it) and waits until
/// it is gone: the workload, the images and the dumped pids (also put in `restored`).
fn start_and_dump(
    name: &str,
    base: i32,
    work: &Path,
    dump: fn(&Workload, &Path, &[&str]),
    dump_args: &[&str],
    restored: &Restored,
) -> (Workload, tempfile::TempDir, Vec<i32>) {
    let mut w = start(name, base, work);
    *restored.lock().unwrap() = vec![w.pid];
    let images = tempfile::tempdir().unwrap();
    dump(&w, images.path(), dump_args);
    let pids = pids_of(images.path());
    *restored.lock().unwrap() = pids.clone();
    reap_dumped(&mut w);
    wait_gone(&pids, 10, "the dumped tree");
    (w, images, pids)
}

/// The dump of scenario `name` fails naming `what`, and the task runs on and verifies.
fn refused(name: &'static str, base: i32, what: &'static str) {
    let _lock = restore_lock();
    with_round_trip_deadline(
        60,
        cgroup_path(&format!("fx-files-{name}"), base),
        move |_| {
            let work = tempfile::tempdir().unwrap();
            let w = start(name, base, work.path());
            let images = tempfile::tempdir().unwrap();
            let out = stasis_bin()
                .args(["dump", "-t", &w.pid.to_string(), "-D"])
                .arg(images.path())
                .args(["-o", "dump.log", "-v4"])
                .output()
                .unwrap();
            let log = std::fs::read_to_string(images.path().join("dump.log")).unwrap_or_default();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "dump of {name} succeeded");
            assert!(
                err.contains(what) || log.contains(what),
                "dump of {name} does not name {what:?}: {err}\n{log}"
            );
            assert_eq!(verify(&w), "PASS", "{name} after the refused dump");
        },
    )
}

#[test]
fn unlinked_open_file() {
    round_trip("ghost", BASE, &[]);
}

#[test]
fn unlinked_file_under_deleted_directories() {
    round_trip("ghost_dir", BASE + 1, &[]);
}

#[test]
fn unlinked_sparse_file() {
    round_trip("ghost_sparse", BASE + 2, &[]);
}

#[test]
fn deleted_cwd() {
    round_trip("cwd_gone", BASE + 3, &[]);
}

#[test]
fn deleted_root() {
    round_trip("root_gone", BASE + 4, &[]);
}

#[test]
fn unlinked_file_mapped() {
    round_trip("ghost_map", BASE + 5, &[]);
}

/// A descriptor table shared by a parent and its child (`CLONE_FILES`) is one table again:
/// a descriptor one opens is seen by the other, one the child closes is closed for both.
#[test]
fn fd_table_shared_with_child() {
    round_trip("fdshare", BASE + 6, &[]);
}

#[test]
fn file_owner_and_signal() {
    round_trip("fown", BASE + 7, &[]);
}

#[test]
fn file_flags_and_positions() {
    round_trip("attrs", BASE + 8, &[]);
}

#[test]
fn memfd_content_seals_name() {
    round_trip("memfd", BASE + 9, &[]);
}

#[test]
fn pipe_buffer_sizes() {
    round_trip("pipesz", BASE + 10, &[]);
}

#[test]
fn socket_filter() {
    round_trip("filter", BASE + 11, &[]);
}

#[test]
fn udp_after_shutdown() {
    round_trip("udp_shut", BASE + 12, &[]);
}

#[test]
fn fifos() {
    round_trip("fifo", BASE + 13, &[]);
}

#[test]
fn o_path_descriptors() {
    round_trip("opath", BASE + 14, &[]);
}

#[test]
fn shared_dev_zero() {
    round_trip("devzero", BASE + 15, &[]);
}

#[test]
fn inotify_watch_of_unlinked_file() {
    round_trip("inotify_gone", BASE + 16, &[]);
}

#[test]
fn unix_socket_under_removed_directory() {
    round_trip("unix_gone", BASE + 17, &[]);
}

#[test]
fn listeners_reuseport_freebind() {
    round_trip("reuseport", BASE + 18, &[]);
}

#[test]
fn unconnected_unix_sockets() {
    round_trip("unix_unconn", BASE + 19, &[]);
}

#[test]
fn file_locks() {
    // Restore needs no option: the locks are in the images.
    round_trip_with("locks", BASE + 20, &["--file-locks"], &[]);
}

#[test]
fn file_locks_need_the_option() {
    refused("locks", BASE + 21, "--file-locks");
}

/// Descriptors in flight in a unix queue (SCM_RIGHTS) arrive with their message after the
/// restore: a pipe only the queue held, and a file still open in the process (one open file
/// description again).
#[test]
fn descriptors_in_flight() {
    round_trip("scm", BASE + 22, &[]);
}

/// A pty slave taken as controlling terminal and a descriptor of `/dev/tty` (once refused by
/// name; the terminal cases themselves are in tests/tty_e2e.rs).
#[test]
fn controlling_terminal() {
    round_trip("devtty", BASE + 23, &[]);
}

/// pidfds of tasks of the tree (itself, a child it signals and waits for through the pidfd)
/// and of a child already reaped.
#[test]
fn pidfds() {
    round_trip("pidfd", BASE + 24, &[]);
}

/// A fanotify group and its inode mark: a write after the restore is reported.
#[test]
fn fanotify_marks() {
    round_trip("fanotify", BASE + 25, &[]);
}

/// A file owned by one thread (`F_SETOWN_EX` `F_OWNER_TID`): the owner is set once the
/// restored thread exists, and the file's signal goes to that thread.
#[test]
fn file_owned_by_a_thread() {
    round_trip("fown_tid", BASE + 50, &[]);
}

/// An `O_PATH|O_NOFOLLOW` descriptor of a symlink that was then removed: restored as a
/// symlink with the same target, still unlinked.
#[test]
fn unlinked_symlink() {
    round_trip("ghost_link", BASE + 51, &[]);
}

/// A character device node made with mknod (1:3, the null device), opened and removed:
/// restored as a node of the same mode and rdev, still unlinked, and it still works.
#[test]
fn unlinked_device_node() {
    round_trip("ghost_dev", BASE + 52, &[]);
}

/// With `--root` other than `/`, a unix socket bound to a path name is bound under the root
/// (the name made and looked up there, `getsockname` still the image's path; see
/// `sys::socket::in_root`), and the workload checks its sockets. The root here is another name
/// of `/` so that every other file of the images is found; the unit test
/// `sys::socket::tests::bind_and_connect_under_a_root` shows the file lands under the root.
#[test]
fn unix_socket_path_under_another_root() {
    let _lock = restore_lock();
    let name = "unix_gone";
    let base = BASE + 53;
    with_round_trip_deadline(
        90,
        cgroup_path(&format!("fx-files-{name}"), base),
        move |restored| {
            let work = tempfile::tempdir().unwrap();
            let (w, images, pids) =
                start_and_dump(name, base, work.path(), stasis_dumps, &[], &restored);
            let root = work.path().join("root");
            std::os::unix::fs::symlink("/", &root).unwrap();
            stasis_restore_detached(images.path(), &["--root", root.to_str().unwrap()]);
            std::thread::sleep(Duration::from_millis(300));
            verify_then_kill(&w, &pids, "fx-files unix_gone restored under --root");
        },
    )
}
