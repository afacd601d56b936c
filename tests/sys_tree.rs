//! Seizing whole trees (processes, threads, zombies, group-stopped children) and freezing
//! them through cgroup v1 and v2 freezers. Workloads run under a watchdog.

mod common;

use common::workload::{Watchdog, Workload};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use stasis::sys::freezer::{Freezer, FreezerVersion};
use stasis::sys::task::StopKind;
use stasis::sys::tree::{seize_tree, seize_tree_frozen, Zombie};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

const TREE: &str = r#"
import os, time
def sleeper():
    while True:
        time.sleep(0.01)
a = os.fork()
if a == 0:
    if os.fork() == 0:
        sleeper()
    sleeper()
z = os.fork()
if z == 0:
    os._exit(0)
while open("/proc/%d/stat" % z).read().rsplit(")", 1)[1].split()[0] != "Z":
    time.sleep(0.001)
# a forks its child on its own: ready only once it has.
while not open("/proc/%d/task/%d/children" % (a, a)).read().split():
    time.sleep(0.001)
print("ready", os.getpid(), a, z, flush=True)
sleeper()
"#;

/// A process in its own process group, killed (whole group) on drop or when the test runs too
/// long.
struct Group {
    child: Child,
    root: i32,
    _watchdog: Watchdog,
}

/// Spawns `cmd` (`what` in a failure) in its own process group and reads its first line,
/// `ready ROOT ...`: the group, watched from then on, the numbers after `ready` and the line.
fn spawn_group(cmd: &mut Command, what: &str) -> (Group, Vec<i32>, String) {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .expect(what);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let f: Vec<i32> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let root = *f.first().unwrap_or_else(|| panic!("{what} said {line:?}"));
    let group = Group {
        child,
        root,
        // The whole process group.
        _watchdog: Watchdog::start(-root, TIMEOUT),
    };
    (group, f, line)
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-self.root), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Children of thread `tid` of `pid` (`/proc/PID/task/TID/children`).
fn task_children(pid: i32, tid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

/// A python process tree ([`TREE`]) in its own process group.
struct PyTree {
    _group: Group,
    root: i32,
    a: i32,
    z: i32,
}

impl PyTree {
    fn start() -> Self {
        let (group, f, _) = spawn_group(Command::new("python3").args(["-c", TREE]), "python3");
        PyTree {
            _group: group,
            root: f[0],
            a: f[1],
            z: f[2],
        }
    }

    fn children(&self, pid: i32) -> Vec<i32> {
        task_children(pid, pid)
    }
}

fn state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

fn wait_state(pid: i32, want: char) {
    let end = Instant::now() + TIMEOUT;
    while state(pid) != want {
        assert!(Instant::now() < end, "{pid} never reached state {want}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn tree_with_children_zombie_and_stopped_child() {
    let t = PyTree::start();
    let b = t.children(t.a)[0];
    kill(Pid::from_raw(t.a), Signal::SIGSTOP).unwrap();
    wait_state(t.a, 'T');
    let tree = seize_tree(t.root).expect("seize tree");
    let pids: Vec<i32> = tree.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, vec![t.root, t.a, b], "breadth first, root first");
    assert_eq!(tree.process(t.a).unwrap().parent, Some(t.root));
    assert_eq!(tree.process(b).unwrap().parent, Some(t.a));
    assert_eq!(
        tree.zombies,
        vec![Zombie {
            pid: t.z,
            parent: t.root
        }]
    );
    assert_eq!(
        tree.process(t.a).unwrap().leader().stop_kind(),
        StopKind::GroupStop { sig: libc::SIGSTOP }
    );
    assert_eq!(tree.root().leader().stop_kind(), StopKind::Interrupted);
    for task in tree.tasks() {
        assert_eq!(state(task.tid()), 't');
    }
    tree.detach().unwrap();
    wait_state(t.a, 'T');
    kill(Pid::from_raw(t.a), Signal::SIGCONT).unwrap();
    for pid in [t.root, t.a, b] {
        let end = Instant::now() + TIMEOUT;
        while !matches!(state(pid), 'S' | 'R') {
            assert!(Instant::now() < end, "{pid} did not resume");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn tree_of_a_multithreaded_process_has_every_thread() {
    let w = Workload::ptrace(16, false, TIMEOUT);
    let tree = seize_tree(w.pid).unwrap();
    assert_eq!(tree.processes.len(), 1);
    let tids: Vec<i32> = tree.root().threads.iter().map(|t| t.tid()).collect();
    assert_eq!(tids, w.threads());
    assert!(tree.root().leader().is_leader());
    let before = w.counter();
    drop(tree);
    w.wait_counting(before);
}

#[test]
fn dead_root_is_task_died() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    let err = seize_tree(pid).unwrap_err();
    assert!(err.is_task_died(), "{err}");
}

/// A cgroup made for one test, removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(root: &str, name: &str, pid: i32) -> Self {
        let dir = PathBuf::from(root).join(format!("stasis-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        Cgroup(dir)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn freeze_and_seize(root: &str, name: &str, version: FreezerVersion) {
    let w = Workload::ptrace(4, false, TIMEOUT);
    let cg = Cgroup::new(root, name, w.pid);
    // Freeze and thaw by drop.
    {
        let f = Freezer::freeze(&cg.0, Duration::from_secs(10)).expect("freeze");
        assert_eq!(f.version(), version);
        assert!(f.is_frozen().unwrap());
        let frozen = w.counter();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(w.counter(), frozen, "a frozen task counted");
    }
    let before = w.counter();
    w.wait_counting(before);
    // Seize a frozen tree: seized and interrupted while frozen, thawed, stopped.
    let f = Freezer::freeze(&cg.0, Duration::from_secs(10)).unwrap();
    let tree = seize_tree_frozen(w.pid, f).expect("seize frozen tree");
    assert_eq!(tree.thread_count(), 4);
    for t in tree.tasks() {
        assert_eq!(w.state(t.tid()), 't');
    }
    let before = w.counter();
    drop(tree);
    w.wait_counting(before);
    drop(w);
}

#[test]
fn freezer_v1_freezes_thaws_and_seizes() {
    freeze_and_seize("/sys/fs/cgroup/freezer", "v1", FreezerVersion::V1);
}

#[test]
fn freezer_v2_freezes_thaws_and_seizes() {
    freeze_and_seize("/sys/fs/cgroup/unified", "v2", FreezerVersion::V2);
}

#[test]
fn threads_dying_and_appearing_while_seizing() {
    let w = Workload::ptrace_mode(2, "churn", TIMEOUT);
    for _ in 0..20 {
        let tree = seize_tree(w.pid).expect("seize a churning process");
        let root = tree.root();
        assert!(root.leader().is_leader());
        // Every thread we hold is stopped; the set is complete (stopped threads cannot clone).
        let listed = w.threads();
        let held: Vec<i32> = root.threads.iter().map(|t| t.tid()).collect();
        for tid in listed.iter().filter(|t| !held.contains(t)) {
            // Not held: it must be dead (a zombie on its way out, or already gone).
            let stat = std::fs::read_to_string(format!("/proc/{}/task/{tid}/stat", w.pid));
            if let Ok(stat) = stat {
                // Fields after the command: state, ppid, pgrp, session, tty, tpgid, flags.
                let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
                    .split_whitespace()
                    .collect();
                let st = fields[0].chars().next().unwrap();
                // PF_EXITING: past the point of no return, still 'R' or 'D' until it is a
                // zombie (the kernel refuses to attach to it).
                const PF_EXITING: u64 = 0x4;
                let exiting = fields[6].parse::<u64>().unwrap() & PF_EXITING != 0;
                assert!(
                    matches!(st, 'Z' | 'X') || exiting,
                    "thread {tid} ({st}) not seized"
                );
            }
        }
        for t in &root.threads {
            assert_eq!(w.state(t.tid()), 't');
        }
        let before = w.counter();
        drop(tree);
        w.wait_counting(before);
    }
}

/// `forker NTHREADS FORK_AT CHILD_THREADS`: NTHREADS threads in all, idle; unless FORK_AT is 0,
/// thread number FORK_AT (not the leader) forks X (which execs `forker child CHILD_THREADS FD`:
/// that many idle threads, no child) and Z (exits at once, a zombie never reaped), then the
/// leader forks Y (idle, one thread). Prints `ready ROOT FORKER_TID X Z Y` (0s without forks).
const FORKER: &str = r#"
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static sem_t go, forked;
static pid_t x, z, forker_tid;
static int ready_pipe[2];
static char *self_path;
static const char *child_threads;

static void *idle(void *arg) { for (;;) pause(); return arg; }

static void *fork_thread(void *arg) {
    sem_wait(&go);
    forker_tid = syscall(SYS_gettid);
    x = fork();
    if (x == 0) {
        char fd[16];
        snprintf(fd, sizeof fd, "%d", ready_pipe[1]);
        execl(self_path, self_path, "child", child_threads, fd, (char *)0);
        _exit(127);
    }
    z = fork();
    if (z == 0) _exit(0);
    sem_post(&forked);
    return idle(arg);
}

static void start_threads(int n, void *(*fn)(void *), int special, pthread_attr_t *at) {
    for (int i = 1; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, at, i == special ? fn : idle, 0)) { perror("pthread_create"); exit(1); }
    }
}

static char state_of(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] ? p[2] : '?';
}

int main(int argc, char **argv) {
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 64 << 10);
    if (argc == 4 && !strcmp(argv[1], "child")) {
        start_threads(atoi(argv[2]), idle, 0, &at);
        if (write(atoi(argv[3]), "r", 1) != 1) return 1;
        for (;;) pause();
    }
    int n = atoi(argv[1]), fork_at = atoi(argv[2]);
    child_threads = argv[3];
    self_path = realpath("/proc/self/exe", 0);
    sem_init(&go, 0, 0);
    sem_init(&forked, 0, 0);
    if (pipe(ready_pipe)) return 1;
    start_threads(n, fork_thread, fork_at, &at);
    pid_t y = 0;
    if (fork_at) {
        sem_post(&go);
        sem_wait(&forked);
        char c;
        if (read(ready_pipe[0], &c, 1) != 1) return 1;
        while (state_of(z) != 'Z') usleep(1000);
        y = fork();
        if (y == 0) for (;;) pause();
    }
    printf("ready %d %d %d %d %d\n", getpid(), forker_tid, x, z, y);
    fflush(stdout);
    for (;;) pause();
}
"#;

/// A running `forker` in its own process group.
struct Forker {
    _group: Group,
    root: i32,
    forker_tid: i32,
    x: i32,
    z: i32,
    y: i32,
}

impl Forker {
    fn start(threads: usize, fork_at: usize, child_threads: usize) -> Self {
        let bin = common::workload::c_program("forker", FORKER, &["-pthread"]);
        let (group, f, line) = spawn_group(
            Command::new(bin).args([threads, fork_at, child_threads].map(|n| n.to_string())),
            "forker",
        );
        assert_eq!(f.len(), 5, "forker said {line:?}");
        Forker {
            _group: group,
            root: f[0],
            forker_tid: f[1],
            x: f[2],
            z: f[3],
            y: f[4],
        }
    }
}

/// Thread ids of `pid` from /proc, the leader first, then ascending.
fn proc_threads(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    tids.sort_unstable_by_key(|&t| (t != pid, t));
    tids
}

fn seized_tids(tree: &stasis::sys::tree::SeizedTree, pid: i32) -> Vec<i32> {
    let p = tree
        .process(pid)
        .unwrap_or_else(|| panic!("{pid} not seized"));
    p.threads.iter().map(|t| t.tid()).collect()
}

#[test]
fn non_leader_thread_forks_in_a_many_threaded_process() {
    // Enough threads in the root and in X that the /proc pass replaces their children files.
    let f = Forker::start(1000, 500, 600);
    assert_ne!(f.forker_tid, f.root);
    let kids = |tid: i32| task_children(f.root, tid);
    assert_eq!(
        kids(f.forker_tid),
        vec![f.x, f.z],
        "the forking thread's children"
    );
    assert_eq!(kids(f.root), vec![f.y], "the leader's children");
    let tree = seize_tree(f.root).expect("seize tree");
    let mut later = vec![f.x, f.y];
    later.sort_unstable();
    let pids: Vec<i32> = tree.processes.iter().map(|p| p.pid).collect();
    assert_eq!(
        pids,
        [vec![f.root], later].concat(),
        "breadth first, by pid"
    );
    assert_eq!(tree.process(f.x).unwrap().parent, Some(f.root));
    assert_eq!(tree.process(f.y).unwrap().parent, Some(f.root));
    assert_eq!(
        tree.zombies,
        vec![Zombie {
            pid: f.z,
            parent: f.root
        }]
    );
    for pid in [f.root, f.x, f.y] {
        assert_eq!(
            seized_tids(&tree, pid),
            proc_threads(pid),
            "threads of {pid}"
        );
    }
    assert_eq!(seized_tids(&tree, f.x).len(), 600);
    // CRIU's order while the tree is held: depth first, the leader's children first.
    let order = stasis::dump::tree::collect(f.root).expect("collect tree");
    let got: Vec<(i32, i32, bool)> = order.iter().map(|p| (p.pid, p.ppid, p.zombie)).collect();
    assert_eq!(
        got,
        vec![
            (f.root, 0, false),
            (f.y, f.root, false),
            (f.x, f.root, false),
            (f.z, f.root, true)
        ]
    );
    assert_eq!(order[0].threads, proc_threads(f.root));
    assert_eq!(order[2].threads, proc_threads(f.x));
    tree.detach().unwrap();
}

#[test]
fn many_threaded_process_without_children() {
    let f = Forker::start(1000, 0, 0);
    let tree = seize_tree(f.root).expect("seize tree");
    assert_eq!(tree.processes.len(), 1);
    assert!(tree.zombies.is_empty());
    assert_eq!(seized_tids(&tree, f.root), proc_threads(f.root));
    assert_eq!(tree.thread_count(), 1000);
    let order = stasis::dump::tree::collect(f.root).expect("collect tree");
    assert_eq!(order.len(), 1);
    assert_eq!(order[0].threads, proc_threads(f.root));
    tree.detach().unwrap();
    assert_ne!(state(f.root), 't', "detached");
}
