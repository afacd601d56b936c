//! The cgroup set in each thread's core is what that thread's own
//! `/proc/PID/task/TID/cgroup` says, although the engine learns most threads' memberships
//! from the thread lists of the leader's cgroups (v1 `tasks`, v2 `cgroup.threads`, the lists
//! below a root cgroup): a process wholly in a v1 cgroup; one with a single thread moved to
//! another v1 cgroup; one in the v1 root with a single thread moved out of it; one with a
//! single thread in a v2 threaded cgroup. The engine must not have fallen back to every
//! thread's own file (its debug log says so when it does).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::dump::{decode, dump_leave_running};
use common::log::Log;
use common::workload::Workload;
use stasis::dump::ptrace_backend::PtraceBackend;

const V1: &str = "/sys/fs/cgroup/freezer";
const V2: &str = "/sys/fs/cgroup/unified";

/// Cgroup directories removed on drop (deepest last in the list, removed first), retried
/// while the killed workload leaves them.
struct CgDirs(Vec<PathBuf>);

impl CgDirs {
    fn create(dirs: &[PathBuf]) -> Self {
        for d in dirs {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        CgDirs(dirs.to_vec())
    }
}

impl Drop for CgDirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let t0 = Instant::now();
            while std::fs::remove_dir(d).is_err() && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn write(file: PathBuf, what: &str) {
    std::fs::write(&file, what)
        .unwrap_or_else(|e| panic!("write {what} to {}: {e}", file.display()));
}

/// The log of every thread of this test binary (the engine reads cgroups in a thread of
/// its own), from the first call on.
fn log() -> &'static Log {
    static LOG: OnceLock<Log> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Log::default();
        tracing::subscriber::set_global_default(log.subscriber(tracing::Level::DEBUG))
            .expect("first subscriber");
        log
    })
}

/// The hierarchies of this process (`/proc/self/cgroup` names) that no cgroup mount of
/// this mount namespace shows.
fn unmounted_hierarchies() -> Vec<String> {
    let mut mounted: Vec<Vec<String>> = Vec::new();
    for l in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
    {
        let Some((_, tail)) = l.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = tail.split_whitespace().collect();
        match f.first() {
            Some(&"cgroup2") => mounted.push(Vec::new()),
            Some(&"cgroup") => {
                // Super options: controllers and name=X among mount flags.
                let flags = ["rw", "ro", "none", "xattr", "noprefix", "clone_children"];
                let mut names: Vec<String> = f
                    .get(2)
                    .copied()
                    .unwrap_or_default()
                    .split(',')
                    .filter(|o| {
                        o.starts_with("name=")
                            || (!o.contains('=') && !flags.contains(o) && !o.contains("_v2_"))
                    })
                    .map(String::from)
                    .collect();
                names.sort();
                mounted.push(names);
            }
            _ => {}
        }
    }
    members(&std::fs::read_to_string("/proc/self/cgroup").unwrap())
        .into_iter()
        .map(|(ctls, _)| ctls)
        .filter(|ctls| {
            let mut want: Vec<String> = ctls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect();
            want.sort();
            !mounted.contains(&want)
        })
        .collect()
}

/// Sorted (controllers, path) of a `/proc/.../cgroup` text.
fn members(text: &str) -> Vec<(String, String)> {
    let mut m: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut it = l.splitn(3, ':');
            let _ = it.next();
            (it.next().unwrap().into(), it.next().unwrap().into())
        })
        .collect();
    m.sort();
    m
}

/// Every thread's own `/proc` cgroup text, parsed.
fn own_members(w: &Workload) -> HashMap<i32, Vec<(String, String)>> {
    w.threads()
        .into_iter()
        .map(|t| {
            let text = std::fs::read_to_string(format!("/proc/{}/task/{t}/cgroup", w.pid));
            (t, members(&text.unwrap()))
        })
        .collect()
}

/// Dumps `w` (left running) and returns, per thread, the members of the cgroup set its core
/// names (the dumper's own set is not in cgroup.img: it is this process's).
fn dumped_members(w: &Workload) -> HashMap<i32, Vec<(String, String)>> {
    log();
    let (dir, rep) = dump_leave_running(w.pid, &mut PtraceBackend);
    rep.expect("dump");
    w.assert_in_time();
    let text = log().text();
    let fell_back = text.contains(&format!("cgroups of {}: every thread's own file", w.pid));
    // A hierarchy not mounted here (a named v1 hierarchy some tool left behind) has no
    // membership files: then the engine must read every thread's own file instead.
    let unmounted = unmounted_hierarchies();
    if unmounted.is_empty() {
        assert!(!fell_back, "membership files not used: {text}");
    } else {
        assert!(
            fell_back,
            "hierarchies {unmounted:?} are not mounted: {text}"
        );
    }
    let img = dir.path().join("cgroup.img");
    let mut sets: HashMap<u64, Vec<(String, String)>> = HashMap::new();
    if img.exists() {
        for s in decode(&img)["entries"][0]["sets"].as_array().unwrap() {
            let ctls = s["ctls"].as_array().unwrap().iter();
            let mut m: Vec<(String, String)> = ctls
                .map(|c| {
                    let f = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                    (f("name"), f("path"))
                })
                .collect();
            m.sort();
            sets.insert(s["id"].as_u64().unwrap(), m);
        }
    }
    let mine = members(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
    w.threads()
        .into_iter()
        .map(|t| {
            let core = decode(&dir.path().join(format!("core-{t}.img")));
            let id = core["entries"][0]["thread_core"]["cg_set"]
                .as_u64()
                .unwrap();
            (t, sets.get(&id).cloned().unwrap_or_else(|| mine.clone()))
        })
        .collect()
}

/// The workload's `n` threads, wholly moved into the cgroup `home`.
fn workload_in(home: &Path, n: usize) -> Workload {
    let w = Workload::stateful(n, 1, Duration::from_secs(90));
    write(home.join("cgroup.procs"), &w.pid.to_string());
    w
}

fn has(m: &[(String, String)], name: &str, path: &str) -> bool {
    m.iter().any(|(n, p)| n == name && p == path)
}

/// Dumps `w` and checks that every thread's dumped set is what its own `/proc` file says;
/// returns the sets.
fn dumped_as_own(w: &Workload) -> HashMap<i32, Vec<(String, String)>> {
    let own = own_members(w);
    let dumped = dumped_members(w);
    assert_eq!(dumped, own);
    dumped
}

/// [`dumped_as_own`], and the set of thread `moved` has controller `ctl` at `moved_path`,
/// every other thread's at `path`.
fn check_one_moved(w: &Workload, ctl: &str, moved: i32, moved_path: &str, path: &str) {
    for (t, m) in &dumped_as_own(w) {
        let want = if *t == moved { moved_path } else { path };
        assert!(has(m, ctl, want), "thread {t}: {m:?}");
    }
}

#[test]
fn threads_in_one_v1_cgroup_share_one_set() {
    let name = format!("stasis-cgthreads-{}-one", std::process::id());
    let cg = CgDirs::create(&[Path::new(V1).join(&name)]);
    let w = workload_in(&cg.0[0], 6);
    let dumped = dumped_as_own(&w);
    assert_eq!(dumped.len(), 6);
    for m in dumped.values() {
        assert!(has(m, "freezer", &format!("/{name}")), "{m:?}");
    }
}

#[test]
fn a_thread_moved_to_another_v1_cgroup_gets_its_own_set() {
    let name = format!("stasis-cgthreads-{}-moved", std::process::id());
    let home = Path::new(V1).join(&name);
    let cg = CgDirs::create(&[home.clone(), home.join("moved")]);
    let w = workload_in(&home, 5);
    let moved = w.threads()[2];
    write(cg.0[1].join("tasks"), &moved.to_string());
    check_one_moved(
        &w,
        "freezer",
        moved,
        &format!("/{name}/moved"),
        &format!("/{name}"),
    );
}

#[test]
fn a_thread_in_a_v2_threaded_cgroup_gets_its_own_set() {
    let name = format!("stasis-cgthreads-{}-v2", std::process::id());
    let domain = Path::new(V2).join(&name);
    let cg = CgDirs::create(&[domain.clone(), domain.join("t")]);
    write(cg.0[1].join("cgroup.type"), "threaded");
    let w = workload_in(&domain, 4);
    let moved = w.threads()[1];
    write(cg.0[1].join("cgroup.threads"), &moved.to_string());
    check_one_moved(&w, "", moved, &format!("/{name}/t"), &format!("/{name}"));
}

#[test]
fn a_thread_moved_out_of_the_v1_root_cgroup_gets_its_own_set() {
    let name = format!("stasis-cgthreads-{}-root", std::process::id());
    let cg = CgDirs::create(&[Path::new(V1).join(&name)]);
    let w = workload_in(Path::new(V1), 4);
    let moved = w.threads()[3];
    write(cg.0[0].join("tasks"), &moved.to_string());
    check_one_moved(&w, "freezer", moved, &format!("/{name}"), "/");
}
