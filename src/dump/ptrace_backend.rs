//! The backend `stasis dump` uses: every thread of the tree seized with `PTRACE_SEIZE` +
//! `PTRACE_INTERRUPT` by [`crate::sys::tree::seize_tree`] (one event loop, O(n) in threads),
//! and the dump parasite injected into each process while the engine works on it.
//!
//! ```text
//!  freeze        seize_tree with PTRACE_O_SUSPEND_SECCOMP (the tasks' seccomp filters do
//!                not apply to the parasite), after freezing --freeze-cgroup if given
//!  per process   inject the parasite into the leader (one thread slot per thread, up to
//!                MAX_SLOTS at once)
//!    process()   MISC, SIGACTIONS, POSIX_TIMERS (ids from /proc/PID/timers);
//!                PTRACE_PEEKSIGINFO of the shared queue
//!    threads()   leader: THREAD_STATE + the registers the parasite saved;
//!                others: the blob's thread routine in all of them at once (set up all,
//!                resume all, then reap all: no per-thread round trip);
//!                the routine saves the XSAVE area and confirms the rseq registration;
//!                each thread sends a note on the parasite's socket and waits there, is
//!                stopped, has its GDT TLS slots read (ptrace) and its mask and registers
//!                written back at once;
//!                PTRACE_PEEKSIGINFO only when the routine saw a pending signal
//!    pages       DUMP_PAGES (vmsplice in the task, splice into the image); /proc/PID/mem
//!                for PROT_NONE pieces, or for everything if the parasite failed (logged)
//!  cure          after the process (also on every error path: Parasite's drop)
//!  release       detach every thread (SeizedTree), thaw nothing: seize_tree_frozen thawed
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use super::core_image::{Creds, ThreadFacts};
use super::error::{DumpError, Result};
use super::freeze::{Backend, FrozenTree};
use super::options::DumpOptions;
use super::probe::{
    Itimer, PosixTimerValue, ProcessAccess, ProcessProbe, SigAction, TaskProbe, ThreadProbe,
    TlsDesc,
};
use crate::parasite::proto::{ThreadState, MAX_GROUPS};
use crate::parasite::{Parasite, ThreadDump};
use crate::proc;
use crate::sys::ptrace::UserDesc;
use crate::sys::task::SeizedTask;
use crate::sys::tree::{SeizedProcess, SeizedTree};

/// Seizes with ptrace and injects the parasite (see the module doc).
#[derive(Debug, Default)]
pub struct PtraceBackend;

/// A tree held by ptrace.
pub struct PtraceFrozen {
    tree: Option<SeizedTree>,
    /// A killed tree is left to the kernel at the dumper's exit (`DumpOptions::exiting_after`).
    unreaped_kill: bool,
}

fn parasite_err(step: &'static str, pid: i32, e: crate::parasite::Error) -> DumpError {
    match e {
        crate::parasite::Error::Sys(e) => DumpError::sys(step, pid, e),
        crate::parasite::Error::Command { errno, .. } => {
            DumpError::new(step, pid, Some(errno as i32), e.to_string())
        }
        other => DumpError::new(step, pid, None, other.to_string()),
    }
}

impl Backend for PtraceBackend {
    fn freeze(&mut self, opts: &DumpOptions) -> Result<Box<dyn FrozenTree>> {
        let timeout = opts.timeout.unwrap_or(Duration::from_secs(10));
        // Seccomp suspended: the parasite's system calls must not meet the tasks' filters.
        let tree = match &opts.freeze_cgroup {
            Some(cg) => crate::sys::freezer::Freezer::freeze(cg, timeout)
                .and_then(|f| crate::sys::tree::seize_tree_suspending_seccomp(opts.pid, Some(f))),
            None => crate::sys::tree::seize_tree_suspending_seccomp(opts.pid, None),
        }
        .map_err(|e| DumpError::sys("seize", opts.pid, e))?;
        crate::sys::stop_point::stop_point("seized");
        Ok(Box::new(PtraceFrozen {
            tree: Some(tree),
            unreaped_kill: opts.exiting_after,
        }))
    }
}

/// A pending SIGTRAP cannot be dumped: the parasite stops at its end with `int3`, whose
/// forced SIGTRAP unblocks SIGTRAP and would deliver (and lose) the pending one, or take
/// its place. CRIU refuses it too; the refusal comes before anything runs in the task, which
/// keeps its signal pending.
fn refuse_pending_sigtrap(pid: i32, tids: &[i32]) -> Result<()> {
    const TRAP: u64 = 1 << (libc::SIGTRAP - 1);
    for &tid in tids {
        let st = proc::status::read_thread(pid, tid)
            .map_err(|e| DumpError::proc("collect-task", pid, e))?;
        let pending = st.sig_pnd().unwrap_or(0) | st.shd_pnd().unwrap_or(0);
        if pending & TRAP != 0 {
            return Err(DumpError::new(
                "collect-task",
                tid,
                None,
                format!(
                    "thread {tid} of process {pid} has a pending SIGTRAP, which cannot be \
                     dumped (the parasite's traps would consume it; CRIU refuses it too)"
                ),
            ));
        }
    }
    Ok(())
}

impl TaskProbe for PtraceFrozen {
    fn with_process(
        &mut self,
        pid: i32,
        tids: &[i32],
        f: &mut dyn FnMut(&mut dyn ProcessAccess) -> Result<()>,
    ) -> Result<()> {
        let tree = self
            .tree
            .as_ref()
            .ok_or_else(|| DumpError::new("collect-task", pid, None, "the tree was released"))?;
        let process = tree.process(pid).ok_or_else(|| {
            DumpError::new("collect-task", pid, Some(libc::ESRCH), "process not seized")
        })?;
        let by_tid: HashMap<i32, &SeizedTask> =
            process.threads.iter().map(|t| (t.tid(), t)).collect();
        let mut threads = Vec::with_capacity(tids.len());
        for tid in tids {
            threads.push(*by_tid.get(tid).ok_or_else(|| {
                DumpError::new("collect-task", *tid, Some(libc::ESRCH), "thread not seized")
            })?);
        }
        refuse_pending_sigtrap(pid, tids)?;
        // ptrace answers only for stopped threads: read the leader's part before the
        // parasite runs in it.
        let leader = process.leader();
        let sys = |e| DumpError::sys("collect-task", pid, e);
        let pre = LeaderPre {
            rseq: leader.rseq().map_err(sys)?,
            pending: leader.pending_signals(false).map_err(sys)?,
            shared: leader.pending_signals(true).map_err(sys)?,
            tls: leader.tls().map_err(sys)?,
        };
        let slots = tids.len().saturating_sub(1).max(1);
        let mut parasite = Parasite::inject_with_slots(process.leader(), slots)
            .map_err(|e| parasite_err("collect-task", pid, e))?;
        parasite.set_leader_rseq(pre.rseq);
        let mut open = OpenProcess {
            pid,
            process,
            threads,
            parasite,
            mem: None,
            pre,
        };
        let r = f(&mut open);
        let OpenProcess { parasite, .. } = open;
        match r {
            Ok(()) => parasite
                .cure()
                .map_err(|e| parasite_err("collect-task", pid, e)),
            // Dropping the parasite cures it (errors logged).
            Err(e) => Err(e),
        }
    }
}

/// One process with the parasite in it.
struct OpenProcess<'a> {
    pid: i32,
    process: &'a SeizedProcess,
    /// The threads asked for, leader first.
    threads: Vec<&'a SeizedTask>,
    parasite: Parasite<'a>,
    mem: Option<File>,
    pre: LeaderPre,
}

/// What ptrace says about the leader, read before the parasite started in it.
struct LeaderPre {
    rseq: crate::sys::ptrace::RseqConfig,
    pending: Vec<[u8; crate::sys::ptrace::SIGINFO_SIZE]>,
    shared: Vec<[u8; crate::sys::ptrace::SIGINFO_SIZE]>,
    tls: [UserDesc; 3],
}

fn tls_of(descs: &[UserDesc]) -> Vec<TlsDesc> {
    descs
        .iter()
        .map(|u| TlsDesc {
            entry_number: u.entry_number,
            base_addr: u.base_addr,
            limit: u.limit,
            seg_32bit: u.seg_32bit(),
            contents: u.contents(),
            read_exec_only: u.read_exec_only(),
            limit_in_pages: u.limit_in_pages(),
            seg_not_present: u.seg_not_present(),
            usable: u.useable(),
        })
        .collect()
}

fn comm_of(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

impl OpenProcess<'_> {
    fn thread_probe(&self, task: &SeizedTask, dump: ThreadDump) -> Result<ThreadProbe> {
        let tid = task.tid();
        let st: ThreadState = dump.state;
        let sys = |e| DumpError::sys("core", tid, e);
        let leader = tid == self.pid;
        // The leader's comes from before the parasite; another thread's is confirmed by the
        // routine, or asked of ptrace.
        let rseq = match dump.rseq {
            Some(known) => known,
            None => task.rseq().map_err(sys)?,
        };
        let pending = if leader {
            self.pre.pending.iter().map(|s| s.to_vec()).collect()
        } else if st.sigpending != 0 {
            task.pending_signals(false)
                .map_err(sys)?
                .iter()
                .map(|s| s.to_vec())
                .collect()
        } else {
            Vec::new()
        };
        let tls = tls_of(&dump.tls);
        let groups = if st.ngroups as usize <= MAX_GROUPS {
            st.groups[..st.ngroups.max(0) as usize].to_vec()
        } else {
            proc::status::read_thread(self.pid, tid)
                .and_then(|s| s.groups())
                .map_err(|e| DumpError::proc("core", tid, e))?
        };
        let facts = ThreadFacts {
            tid,
            comm: comm_of(&st.comm),
            blk_sigset: dump.sigmask,
            sched_policy: st.sched_policy as u32,
            sched_nice: st.sched_nice,
            sched_prio: st.sched_prio as u32,
            creds: Creds {
                uid: st.uids,
                gid: st.gids,
                groups,
                cap_inh: st.cap_inh,
                cap_prm: st.cap_prm,
                cap_eff: st.cap_eff,
                cap_bnd: st.cap_bnd,
                cap_amb: st.cap_amb,
                secbits: st.secbits,
                no_new_privs: st.no_new_privs != 0,
            },
        };
        Ok(ThreadProbe {
            regs: dump.regs.regs.for_image(),
            fpregs: super::xsave::fpregs_from_xsave(dump.regs.xstate.as_bytes()),
            tls,
            clear_tid_addr: st.tid_address,
            futex_rla: st.robust_head,
            futex_rla_len: st.robust_len as u32,
            sas: (st.altstack_sp, st.altstack_size, st.altstack_flags as u32),
            rseq: (rseq.rseq_abi_pointer != 0).then_some((
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size,
                rseq.signature,
            )),
            pending,
            pdeath_sig: st.pdeath_sig as u32,
            facts: Some(facts),
            seccomp_mode: Some(st.seccomp_mode as u32),
        })
    }

    fn mem(&mut self) -> Result<&File> {
        if self.mem.is_none() {
            let f = File::open(proc::path(self.pid, "mem"))
                .map_err(|e| DumpError::io("pages", self.pid, "open /proc/PID/mem", e))?;
            self.mem = Some(f);
        }
        Ok(self.mem.as_ref().expect("opened above"))
    }
}

impl ProcessAccess for OpenProcess<'_> {
    fn process(&mut self) -> Result<ProcessProbe> {
        let pid = self.pid;
        let perr = |e| parasite_err("collect-task", pid, e);
        let timers =
            proc::timers::read(pid).map_err(|e| DumpError::proc("collect-task", pid, e))?;
        let misc = self.parasite.misc().map_err(perr)?;
        let acts = self.parasite.sigactions().map_err(perr)?;
        let ids: Vec<i32> = timers.iter().map(|t| t.id).collect();
        let values = self.parasite.posix_timers(&ids).map_err(perr)?;
        let shared = &self.pre.shared;
        let it = |i: usize| {
            let t = misc.itimers[i];
            Itimer {
                isec: t.interval_sec as u64,
                iusec: t.interval_usec as u64,
                vsec: t.value_sec as u64,
                vusec: t.value_usec as u64,
            }
        };
        Ok(ProcessProbe {
            sigactions: acts
                .iter()
                .map(|a| SigAction {
                    handler: a.handler,
                    flags: a.flags,
                    restorer: a.restorer,
                    mask: a.mask,
                })
                .collect(),
            itimers: [it(0), it(1), it(2)],
            posix_timers: values
                .iter()
                .map(|v| PosixTimerValue {
                    id: v.id,
                    overrun: v.overrun.max(0),
                    isec: v.interval_sec as u64,
                    insec: v.interval_nsec as u64,
                    vsec: v.value_sec as u64,
                    vnsec: v.value_nsec as u64,
                })
                .collect(),
            shared_pending: shared.iter().map(|s| s.to_vec()).collect(),
            child_subreaper: misc.child_subreaper != 0,
            dumpable: misc.dumpable.max(0) as u32,
            thp_disabled: misc.thp_disabled > 0,
            membarrier_mask: misc.membarrier_mask,
            brk: misc.brk,
            mlockall: self.parasite.mlockall_future(),
        })
    }

    fn threads(&mut self) -> Result<Vec<ThreadProbe>> {
        let pid = self.pid;
        let perr = |e| parasite_err("core", pid, e);
        let leader = self.process.leader();
        let mut out = Vec::with_capacity(self.threads.len());
        let others: Vec<&SeizedTask> = self
            .threads
            .iter()
            .copied()
            .filter(|t| t.tid() != pid)
            .collect();
        let mut dumps = self
            .parasite
            .threads_state(&others)
            .map_err(perr)?
            .into_iter();
        for &t in &self.threads {
            let dump = if t.tid() == pid {
                ThreadDump {
                    rseq: Some(self.pre.rseq),
                    tls: self.pre.tls,
                    state: self.parasite.thread_state(leader).map_err(perr)?,
                    regs: self.parasite.leader_regs().clone(),
                    sigmask: self.parasite.leader_sigmask(),
                }
            } else {
                dumps.next().ok_or_else(|| {
                    DumpError::new("core", t.tid(), None, "thread routine result missing")
                })?
            };
            out.push(self.thread_probe(t, dump)?);
        }
        Ok(out)
    }

    fn hidden_areas(&self) -> Vec<(u64, u64)> {
        let (base, len) = self.parasite.area();
        vec![(base, base + len)]
    }

    fn pin_pages(
        &mut self,
        regions: &[(u64, u64)],
    ) -> Result<Option<Vec<(std::os::fd::OwnedFd, u64)>>> {
        let iovs: Vec<crate::parasite::proto::RemoteIov> = regions
            .iter()
            .map(|&(base, len)| crate::parasite::proto::RemoteIov { base, len })
            .collect();
        self.parasite
            .pin_pages(&iovs)
            .map(Some)
            .map_err(|e| parasite_err("pages", self.pid, e))
    }

    fn userfaultfd(&mut self, flags: u32) -> Result<Option<std::os::fd::OwnedFd>> {
        self.parasite
            .userfaultfd(flags)
            .map(Some)
            .map_err(|e| parasite_err("dirty-track", self.pid, e))
    }

    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let pid = self.pid;
        self.mem()?.read_exact_at(buf, addr).map_err(|e| {
            DumpError::io(
                "pages",
                pid,
                &format!("read memory at {addr:#x}+{:#x}", buf.len()),
                e,
            )
        })
    }

    fn dump_pages(
        &mut self,
        regions: &[(u64, u64)],
        readable: &[(u64, u64)],
        out: &mut File,
    ) -> Result<Option<u64>> {
        super::parasite_pages::dump(&mut self.parasite, self.pid, regions, readable, out)
    }
}

impl FrozenTree for PtraceFrozen {
    fn group_stopped(&self, pid: i32) -> bool {
        self.tree
            .as_ref()
            .and_then(|t| t.process(pid))
            .is_some_and(|p| {
                matches!(
                    p.leader().stop_kind(),
                    crate::sys::task::StopKind::GroupStop { .. }
                )
            })
    }

    fn kill(&mut self, pids: &[i32]) -> Result<()> {
        match self.tree.take() {
            // Killed and reaped as their tracer: no register restore, no detach.
            Some(tree) => {
                let root = tree.root().pid;
                let killed = if self.unreaped_kill {
                    tree.kill_unreaped()
                } else {
                    tree.kill()
                };
                killed.map_err(|e| DumpError::sys("kill", root, e))
            }
            None => super::freeze::kill_all(pids),
        }
    }

    fn release(mut self: Box<Self>) -> Result<()> {
        match self.tree.take() {
            Some(t) => t.detach().map_err(|e| DumpError::sys("release", 0, e)),
            None => Ok(()),
        }
    }
}
