//! Seizing a whole process tree, every thread, in O(n).
//!
//! ```text
//! round:  for each process not yet stable: list /proc/PID/task,
//!           PTRACE_SEIZE + PTRACE_INTERRUPT every new thread (no waiting)
//!         [first round with a freezer: thaw now, every task is seized and interrupted]
//!         reap: one loop over the pending tids (non-leaders first) feeds a tid -> state
//!           map: waitpid(tid, __WALL) per thread, in O(1) each in the kernel (waitpid(-1)
//!           scans every tracee per event: quadratic, measured in BENCHMARKS.md); signal
//!           stops are delivered and waited again, exits drop the thread
//!         for each newly stopped thread: read /proc/PID/task/TID/children (exact now),
//!           unless its process has no child at all: with many such threads, one pass over
//!           /proc (each process's parent, from task/PID/stat) tells which processes have
//!           children, and those without skip the read (8000 files become ~100)
//! until a round finds no new thread and no new process
//! ```
//!
//! A process is stable once it was listed while all its known threads were stopped and the
//! listing had no new thread: stopped threads cannot clone. Zombie processes are reported,
//! never seized. A thread that exits while we seize it is dropped and reported in
//! [`SeizedTree::died`]; a root that dies is "task N died".
//!
//! All ptrace requests come from the calling thread: the tree is not `Send`. Reading the
//! registers of thousands of threads from several threads would need one tracer per shard
//! (ptrace binds a tracee to the thread that attached it) and every later remote operation
//! routed to the right shard; a register read is a single syscall of about a microsecond, so
//! one tracer thread is kept (see BENCHMARKS.md "Seizing threads").

use super::error::{Error, Result};
use super::freezer::Freezer;
use super::proc_tasks;
use super::ptrace;
use super::task::{stop_kind, SeizedTask};
use super::wait::{self, WaitEvent};
use std::collections::HashMap;

/// One seized process: all its live threads, leader first.
#[derive(Debug)]
pub struct SeizedProcess {
    /// Process id (thread group id).
    pub pid: i32,
    /// The process whose thread's `children` listed it (`None` for the root).
    pub parent: Option<i32>,
    /// Threads, the leader first, then ascending tids.
    pub threads: Vec<SeizedTask>,
}

impl SeizedProcess {
    /// The thread group leader (where the parasite runs).
    pub fn leader(&self) -> &SeizedTask {
        &self.threads[0]
    }
}

/// A zombie found in the tree (not seized).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zombie {
    /// Its pid.
    pub pid: i32,
    /// Its parent in the tree.
    pub parent: i32,
}

/// Every thread of a process tree, stopped; everything detaches on drop.
#[derive(Debug)]
pub struct SeizedTree {
    /// Processes in discovery order (breadth first, the root first).
    pub processes: Vec<SeizedProcess>,
    /// Zombie processes of the tree.
    pub zombies: Vec<Zombie>,
    /// Threads that exited while being seized.
    pub died: Vec<i32>,
}

impl SeizedTree {
    /// The root process.
    pub fn root(&self) -> &SeizedProcess {
        &self.processes[0]
    }

    /// A process by pid.
    pub fn process(&self, pid: i32) -> Option<&SeizedProcess> {
        self.processes.iter().find(|p| p.pid == pid)
    }

    /// Number of seized threads.
    pub fn thread_count(&self) -> usize {
        self.processes.iter().map(|p| p.threads.len()).sum()
    }

    /// All seized threads.
    pub fn tasks(&self) -> impl Iterator<Item = &SeizedTask> {
        self.processes.iter().flat_map(|p| p.threads.iter())
    }

    /// Kills every process of the tree (SIGKILL) and reaps its threads as their tracer, so
    /// that no traced zombie is left holding a pid. Deferred register restores are dropped:
    /// nothing of the tree runs again. Returns the first failure to signal a process.
    pub fn kill(self) -> Result<()> {
        self.kill_and(true)
    }

    /// Kills every process of the tree (SIGKILL) without waiting: the dead threads stay
    /// traced zombies of the calling thread until it waits for them or its process exits
    /// (the kernel releases them then, all at once). For a caller about to exit.
    pub fn kill_unreaped(self) -> Result<()> {
        self.kill_and(false)
    }

    fn kill_and(self, reap: bool) -> Result<()> {
        let mut first = None;
        let mut killed = Vec::with_capacity(self.processes.len());
        for process in &self.processes {
            let sent = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(process.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let refused = match sent {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => false,
                Err(errno) => {
                    first.get_or_insert(Error::task("kill", process.pid, errno));
                    true
                }
            };
            killed.push(!refused);
        }
        for (process, killed) in self.processes.into_iter().zip(killed) {
            if !killed {
                // Not killed: its threads are restored and detached when dropped.
                continue;
            }
            // Other threads first: a leader's exit is reported once they are all reaped.
            let mut threads = process.threads;
            threads.rotate_left(1);
            for task in threads {
                task.discard_restore();
                if reap {
                    reap_killed(&task);
                }
                task.forget();
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Detaches every thread now, returning the first failure (all are tried).
    pub fn detach(self) -> Result<()> {
        let mut first = None;
        for process in self.processes {
            for task in process.threads {
                if let Err(e) = task.detach() {
                    if !e.is_task_died() {
                        first.get_or_insert(e);
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

struct ProcState {
    pid: i32,
    parent: Option<i32>,
    tids: Vec<i32>,
    stable: bool,
    gone: bool,
}

struct TaskSlot {
    task: SeizedTask,
    pending: bool,
    children_read: bool,
}

/// Waits until `task`, sent SIGKILL, is gone (a stop on the way is resumed).
fn reap_killed(task: &SeizedTask) {
    loop {
        match wait::wait_task(task.tgid(), task.tid()) {
            Ok(ev) if ev.is_gone() => return,
            Ok(_) => {
                if ptrace::cont(task.tid(), 0).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// `PTRACE_O_SUSPEND_SECCOMP`: the tracee's seccomp filters do not apply while it is traced
/// with it (needs CAP_SYS_ADMIN).
pub const PTRACE_O_SUSPEND_SECCOMP: u32 = 1 << 21;

/// Seizes every thread of the tree rooted at `root` (see the module doc).
pub fn seize_tree(root: i32) -> Result<SeizedTree> {
    Seizer::default().run(root, None)
}

/// Same as [`seize_tree`] for a tree frozen in a cgroup: all tasks are seized and interrupted
/// while frozen, then the cgroup is thawed (they trap into their ptrace stops at once).
pub fn seize_tree_frozen(root: i32, freezer: Freezer) -> Result<SeizedTree> {
    Seizer::default().run(root, Some(freezer))
}

/// [`seize_tree`] (or [`seize_tree_frozen`] with `freezer`) with seccomp suspended in every
/// thread (`PTRACE_O_SUSPEND_SECCOMP`), so code run inside the tasks (the dump parasite)
/// is not subject to their filters. Without CAP_SYS_ADMIN the kernel refuses the option:
/// then the threads are seized without it.
pub fn seize_tree_suspending_seccomp(root: i32, freezer: Option<Freezer>) -> Result<SeizedTree> {
    Seizer {
        options: PTRACE_O_SUSPEND_SECCOMP,
        ..Seizer::default()
    }
    .run(root, freezer)
}

#[derive(Default)]
struct Seizer {
    procs: Vec<ProcState>,
    index: HashMap<i32, usize>,
    tasks: HashMap<i32, TaskSlot>,
    pending: usize,
    zombies: Vec<Zombie>,
    died: Vec<i32>,
    /// PTRACE_SEIZE options (dropped after the first EPERM).
    options: u32,
    /// PTRACE_O_SUSPEND_SECCOMP was asked for and refused.
    seccomp_unsuspended: bool,
}

/// True when thread `tid` of `pid` runs under seccomp (strict or filters). A status that
/// cannot be read is a thread that died: its PTRACE_SEIZE says so.
fn has_seccomp(pid: i32, tid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"));
    match status {
        Ok(s) => s
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .is_none_or(|m| m.trim() != "0"),
        Err(_) => false,
    }
}

impl Seizer {
    fn run(mut self, root: i32, mut freezer: Option<Freezer>) -> Result<SeizedTree> {
        self.add_process(root, None);
        loop {
            let mut new_threads = 0;
            for i in 0..self.procs.len() {
                if !self.procs[i].stable && !self.procs[i].gone {
                    new_threads += self.scan_process(i)?;
                }
            }
            if let Some(f) = freezer.take() {
                f.thaw()?;
            }
            self.reap()?;
            let procs_before = self.procs.len();
            self.read_children()?;
            if new_threads == 0 && self.procs.len() == procs_before {
                break;
            }
        }
        if self.procs[0].gone || self.procs[0].tids.is_empty() {
            return Err(Error::TaskDied {
                pid: root,
                op: "seize tree",
            });
        }
        Ok(self.finish())
    }

    fn add_process(&mut self, pid: i32, parent: Option<i32>) {
        if self.index.contains_key(&pid) {
            return;
        }
        self.index.insert(pid, self.procs.len());
        self.procs.push(ProcState {
            pid,
            parent,
            tids: Vec::new(),
            stable: false,
            gone: false,
        });
    }

    /// PTRACE_SEIZE of one thread, with the options if the kernel takes them. Without
    /// CAP_SYS_ADMIN it refuses PTRACE_O_SUSPEND_SECCOMP: a thread under seccomp filters is
    /// then refused before it is seized (the parasite's system calls would meet its filters,
    /// which may kill it); the others are seized without.
    fn seize_one(&mut self, pid: i32, tid: i32) -> Result<()> {
        if self.options != 0 {
            match ptrace::seize(tid, self.options) {
                Err(e) if e.errno() == Some(nix::errno::Errno::EPERM) => {
                    tracing::warn!(
                        "PTRACE_SEIZE options {:#x} refused (no CAP_SYS_ADMIN?): seizing without",
                        self.options
                    );
                    self.options = 0;
                    self.seccomp_unsuspended = true;
                }
                r => return r,
            }
        }
        if self.seccomp_unsuspended && has_seccomp(pid, tid) {
            return Err(Error::Task {
                op: "seize tree: the thread has seccomp filters; suspending them for the \
                     parasite (PTRACE_O_SUSPEND_SECCOMP) needs CAP_SYS_ADMIN, which the \
                     dumper lacks",
                pid: tid,
                errno: nix::errno::Errno::EPERM,
            });
        }
        ptrace::seize(tid, 0)
    }

    /// Lists the threads of process `i`, seizes and interrupts the new ones; returns how
    /// many were new.
    fn scan_process(&mut self, i: usize) -> Result<usize> {
        let pid = self.procs[i].pid;
        let all_stopped = self.all_stopped(pid);
        let tids = match proc_tasks::threads(pid) {
            Ok(t) => t,
            Err(Error::TaskDied { .. }) => {
                self.procs[i].gone = true;
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let mut new = 0;
        for &tid in &tids {
            if self.tasks.contains_key(&tid) {
                continue;
            }
            // Only a leader's state matters before seizing (zombie processes); a dead
            // non-leader thread just fails PTRACE_SEIZE.
            let state = if tid == pid {
                proc_tasks::state(pid, tid)?
            } else {
                Some('R')
            };
            match state {
                None => continue,
                Some('Z' | 'X') if tid == pid => {
                    if tids.len() > 1 {
                        return Err(Error::Unexpected {
                            op: "seize tree",
                            pid,
                            what: "the thread group leader is a zombie with live threads".into(),
                        });
                    }
                    self.procs[i].gone = true;
                    if let Some(parent) = self.procs[i].parent {
                        self.zombies.push(Zombie { pid, parent });
                    } else {
                        return Err(Error::TaskDied {
                            pid,
                            op: "seize tree (root is a zombie)",
                        });
                    }
                    return Ok(0);
                }
                Some('Z' | 'X') => continue,
                Some(_) => {}
            }
            match self.seize_one(pid, tid) {
                Ok(()) => {}
                Err(Error::TaskDied { .. }) => {
                    self.died.push(tid);
                    continue;
                }
                Err(e) if tid != pid && proc_tasks::is_exiting(pid, tid) => {
                    tracing::debug!("thread {tid} exits: {e}");
                    self.died.push(tid);
                    continue;
                }
                Err(e) => return Err(e),
            }
            let task = SeizedTask::attached(pid, tid, super::task::StopKind::Interrupted);
            self.tasks.insert(
                tid,
                TaskSlot {
                    task,
                    pending: true,
                    children_read: false,
                },
            );
            self.pending += 1;
            self.procs[i].tids.push(tid);
            new += 1;
            // ESRCH: it is dying; its exit reaches us (we trace it) in the reap loop.
            if let Err(e) = ptrace::interrupt(tid) {
                if !e.is_task_died() {
                    return Err(e);
                }
            }
        }
        if new == 0 && all_stopped {
            self.procs[i].stable = true;
        }
        Ok(new)
    }

    /// Waits for every pending thread to stop or die: threads are waited for by tid (the
    /// interrupts were all sent already, so this costs the slowest stop, not their sum),
    /// non-leaders first (a dead leader is reported only after its threads).
    fn reap(&mut self) -> Result<()> {
        let mut order: Vec<(bool, i32, i32)> = self
            .tasks
            .iter()
            .filter(|(_, s)| s.pending)
            .map(|(&tid, s)| (tid == s.task.tgid(), s.task.tgid(), tid))
            .collect();
        order.sort_unstable();
        for (_, tgid, tid) in order {
            while self.tasks.get(&tid).is_some_and(|s| s.pending) {
                let event = match wait::wait_task(tgid, tid) {
                    Ok(ev) => ev,
                    Err(e) if e.is_task_died() => {
                        self.drop_task(tid);
                        break;
                    }
                    Err(e) => return Err(e),
                };
                self.handle(tid, event)?;
            }
        }
        Ok(())
    }

    fn handle(&mut self, tid: i32, event: WaitEvent) -> Result<()> {
        let Some(slot) = self.tasks.get_mut(&tid) else {
            return Ok(());
        };
        match event {
            WaitEvent::EventStop { sig } => {
                if slot.pending {
                    slot.pending = false;
                    slot.task.set_stop(stop_kind(sig));
                    self.pending -= 1;
                }
            }
            // A signal arrived before our interrupt: let the task take it, the pending
            // interrupt stops it right after.
            WaitEvent::SignalStop { sig } => ptrace::cont(tid, sig).or_else(ignore_died)?,
            WaitEvent::OtherEvent { .. } => ptrace::cont(tid, 0).or_else(ignore_died)?,
            WaitEvent::Exited { .. } | WaitEvent::Killed { .. } => self.drop_task(tid),
        }
        Ok(())
    }

    fn drop_task(&mut self, tid: i32) {
        if let Some(slot) = self.tasks.remove(&tid) {
            slot.task.forget();
            if slot.pending {
                self.pending -= 1;
            }
            self.died.push(tid);
            let pid = slot.task.tgid();
            if let Some(&i) = self.index.get(&pid) {
                self.procs[i].tids.retain(|&t| t != tid);
                if tid == pid {
                    self.procs[i].gone = true;
                }
            }
        }
    }

    /// Reads the children of every thread that stopped since the last round, except those of
    /// processes without any child (see [`Seizer::skip_childless`]). These are plain /proc
    /// reads (no ptrace), so they are spread over a few threads (crossbeam scope): about 5 us
    /// each, the largest share of seizing 8000 threads after the ptrace calls.
    fn read_children(&mut self) -> Result<()> {
        let todo = self.newly_stopped();
        let todo = self.skip_childless(todo);
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        let mut found: Vec<(i32, i32)> = if todo.len() < 256 || workers < 2 {
            children_of(&todo)?
        } else {
            let chunk = todo.len().div_ceil(workers);
            let results: Vec<Result<Vec<(i32, i32)>>> = crossbeam::thread::scope(|s| {
                let handles: Vec<_> = todo
                    .chunks(chunk)
                    .map(|c| s.spawn(move |_| children_of(c)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Ok(Vec::new())))
                    .collect()
            })
            .map_err(|_| Error::Unexpected {
                op: "read children",
                pid: 0,
                what: "worker panicked".into(),
            })?;
            let mut all = Vec::new();
            for r in results {
                all.extend(r?);
            }
            all
        };
        found.sort_unstable();
        for (child, parent) in found {
            self.add_process(child, Some(parent));
        }
        Ok(())
    }

    /// `(pid, tid)` of every thread that stopped since the last round, marked as read.
    fn newly_stopped(&mut self) -> Vec<(i32, i32)> {
        let mut todo = Vec::new();
        for (&tid, slot) in self.tasks.iter_mut() {
            if !slot.pending && !slot.children_read {
                slot.children_read = true;
                todo.push((slot.task.tgid(), tid));
            }
        }
        todo
    }

    /// Drops from `todo` the threads of processes that have no child at all, found by one
    /// pass over `/proc` ([`proc_tasks::with_children`]: a stat file per process) instead of
    /// one `children` file per thread. Runs after the reap, so the pass is trusted for a
    /// process only when all its known threads are stopped (they cannot fork; a thread not
    /// known yet is read when it stops in a later round). When the pass costs more than the
    /// reads, or fails, every file is read.
    fn skip_childless(&self, todo: Vec<(i32, i32)>) -> Vec<(i32, i32)> {
        if todo.len() < proc_tasks::SCAN_MIN_THREADS {
            return todo;
        }
        let parents = match proc_tasks::with_children(todo.len()) {
            Ok(Some(p)) => p,
            Ok(None) => return todo,
            Err(e) => {
                tracing::debug!("listing the parents in /proc: {e}; reading every children file");
                return todo;
            }
        };
        let mut childless: HashMap<i32, bool> = HashMap::new();
        todo.into_iter()
            .filter(|&(pid, _)| {
                !*childless
                    .entry(pid)
                    .or_insert_with(|| !parents.contains(&pid) && self.all_stopped(pid))
            })
            .collect()
    }

    /// True when every known thread of process `pid` is stopped (none pending).
    fn all_stopped(&self, pid: i32) -> bool {
        self.index.get(&pid).is_some_and(|&i| {
            self.procs[i]
                .tids
                .iter()
                .all(|t| self.tasks.get(t).is_none_or(|s| !s.pending))
        })
    }

    fn finish(mut self) -> SeizedTree {
        let mut processes = Vec::with_capacity(self.procs.len());
        for proc in &self.procs {
            if proc.gone && !proc.tids.is_empty() {
                // Leader died but threads were seized: they are dying too; detach them.
                for tid in &proc.tids {
                    self.tasks.remove(tid);
                }
                continue;
            }
            let mut tids = proc.tids.clone();
            tids.sort_unstable_by_key(|&t| (t != proc.pid, t));
            let threads: Vec<SeizedTask> = tids
                .iter()
                .filter_map(|t| self.tasks.remove(t))
                .map(|s| s.task)
                .collect();
            if threads.is_empty() || threads[0].tid() != proc.pid {
                continue;
            }
            processes.push(SeizedProcess {
                pid: proc.pid,
                parent: proc.parent,
                threads,
            });
        }
        SeizedTree {
            processes,
            zombies: self.zombies,
            died: self.died,
        }
    }
}

/// `(child, parent pid)` for the children of each `(pid, tid)`.
fn children_of(threads: &[(i32, i32)]) -> Result<Vec<(i32, i32)>> {
    let mut out = Vec::new();
    for &(pid, tid) in threads {
        for child in proc_tasks::children(pid, tid)? {
            out.push((child, pid));
        }
    }
    Ok(out)
}

fn ignore_died(e: Error) -> Result<()> {
    if e.is_task_died() {
        Ok(())
    } else {
        Err(e)
    }
}
