//! `core-TID.img`: one per thread. The thread group leader's carries the process-wide part
//! (`tc`: state, signal dispositions, timers, rlimits, shared pending signals); every thread
//! has `thread_info` (registers) and `thread_core` (creds, mask, sigaltstack, rseq...).
//! A zombie has only `tc` (state DEAD and its exit status). Entries are built as typed
//! `stasis_images::pb` messages (no reflection: 8000 threads make 8000 of them).
//!
//! ```text
//!  core_entry { mtype X86_64,
//!    thread_info { clear_tid_addr, gpregs {...,mode NATIVE}, fpregs {...,xsave}, tls[3] },
//!    tc { task_state, exit_code, personality, flags, blk_sigset, comm, timers, rlimits,
//!         signals_s, loginuid, oom_score_adj, sigactions[62], child_subreaper, ... },
//!    thread_core { futex_rla, futex_rla_len, sched_*, blk_sigset, sas, signals_p, creds,
//!                  comm, rseq_entry, cg_set } }
//! ```

use stasis_images::pb;

use super::images_out;
pub use super::probe::{Creds, ThreadFacts};
use super::probe::{FpRegs, ProcessProbe, ThreadProbe, TlsDesc};
use crate::proc::misc::Rlimit;
use crate::proc::timers::PosixTimer;
use crate::regs_image::regs_to_pb;

/// `task_state` values.
pub const TASK_ALIVE: u32 = 1;
pub const TASK_DEAD: u32 = 2;
pub const TASK_STOPPED: u32 = 3;

/// `mtype` X86_64.
pub const MARCH_X86_64: u32 = 1;

/// What the process part (`tc`) is built from.
#[derive(Debug, Clone, Default)]
pub struct ProcessFacts {
    pub state: u32,
    pub exit_code: i32,
    pub personality: u32,
    pub flags: u32,
    pub comm: String,
    pub blk_sigset: u64,
    pub rlimits: Vec<Rlimit>,
    pub loginuid: u32,
    pub oom_score_adj: i32,
    pub posix_timers: Vec<PosixTimer>,
    pub seccomp_mode: u32,
}

fn caps(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}

fn siginfos(list: &[Vec<u8>]) -> pb::SignalQueueEntry {
    pb::SignalQueueEntry {
        signals: list
            .iter()
            .map(|s| pb::SiginfoEntry { siginfo: s.clone() })
            .collect(),
    }
}

fn pad<T: Copy + Default>(v: &[T], n: usize) -> Vec<T> {
    let mut out = v.to_vec();
    out.resize(n, T::default());
    out
}

fn fpregs(f: &FpRegs) -> pb::UserX86FpregsEntry {
    pb::UserX86FpregsEntry {
        cwd: f.cwd,
        swd: f.swd,
        twd: f.twd,
        fop: f.fop,
        rip: f.rip,
        rdp: f.rdp,
        mxcsr: f.mxcsr,
        mxcsr_mask: f.mxcsr_mask,
        st_space: pad(&f.st_space, 32),
        xmm_space: pad(&f.xmm_space, 64),
        padding: Vec::new(),
        xsave: f.xsave.as_ref().map(|x| pb::UserX86XsaveEntry {
            xstate_bv: x.xstate_bv,
            ymmh_space: pad(&x.ymmh_space, 64),
            opmask_reg: pad(&x.opmask_reg, 8),
            zmm_upper: pad(&x.zmm_upper, 64),
            hi16_zmm: pad(&x.hi16_zmm, 128),
            ..Default::default()
        }),
    }
}

fn tls(t: &TlsDesc) -> pb::UserDescT {
    pb::UserDescT {
        entry_number: t.entry_number,
        base_addr: t.base_addr,
        limit: t.limit,
        seg_32bit: t.seg_32bit,
        contents_h: t.contents & 2 != 0,
        contents_l: t.contents & 1 != 0,
        read_exec_only: t.read_exec_only,
        limit_in_pages: t.limit_in_pages,
        seg_not_present: t.seg_not_present,
        usable: t.usable,
    }
}

/// `thread_info`: registers of one thread.
pub fn thread_info(p: &ThreadProbe) -> pb::ThreadInfoX86 {
    let tls_entries: Vec<TlsDesc> = if p.tls.is_empty() {
        (12..15).map(TlsDesc::empty).collect()
    } else {
        p.tls.clone()
    };
    pb::ThreadInfoX86 {
        clear_tid_addr: p.clear_tid_addr,
        gpregs: regs_to_pb(&p.regs),
        fpregs: fpregs(&p.fpregs),
        tls: tls_entries.iter().map(tls).collect(),
    }
}

/// `thread_core` of one thread.
pub fn thread_core(f: &ThreadFacts, p: &ThreadProbe, with_blk_sigset: bool) -> pb::ThreadCoreEntry {
    let c = &f.creds;
    pb::ThreadCoreEntry {
        futex_rla: p.futex_rla,
        futex_rla_len: p.futex_rla_len,
        sched_nice: Some(f.sched_nice),
        sched_policy: Some(f.sched_policy),
        sched_prio: (f.sched_policy != 0).then_some(f.sched_prio),
        blk_sigset: with_blk_sigset.then_some(f.blk_sigset),
        sas: Some(pb::ThreadSasEntry {
            ss_sp: p.sas.0,
            ss_size: p.sas.1,
            ss_flags: p.sas.2,
        }),
        pdeath_sig: (p.pdeath_sig != 0).then_some(p.pdeath_sig),
        signals_p: Some(siginfos(&p.pending)),
        creds: Some(pb::CredsEntry {
            uid: c.uid[0],
            gid: c.gid[0],
            euid: c.uid[1],
            egid: c.gid[1],
            suid: c.uid[2],
            sgid: c.gid[2],
            fsuid: c.uid[3],
            fsgid: c.gid[3],
            cap_inh: caps(c.cap_inh),
            cap_prm: caps(c.cap_prm),
            cap_eff: caps(c.cap_eff),
            cap_bnd: caps(c.cap_bnd),
            secbits: c.secbits,
            groups: c.groups.clone(),
            cap_amb: caps(c.cap_amb),
            no_new_privs: c.no_new_privs.then_some(1),
            ..Default::default()
        }),
        comm: Some(f.comm.clone()),
        rseq_entry: p.rseq.map(|(ptr, size, sig)| pb::RseqEntry {
            rseq_abi_pointer: ptr,
            rseq_abi_size: size,
            signature: sig,
            rseq_cs_pointer: None,
        }),
        cg_set: Some(1),
        ..Default::default()
    }
}

fn itimer(t: &super::probe::Itimer) -> pb::ItimerEntry {
    pb::ItimerEntry {
        isec: t.isec,
        iusec: t.iusec,
        vsec: t.vsec,
        vusec: t.vusec,
    }
}

/// `tc`: the process part, in the leader's core.
pub fn task_core(f: &ProcessFacts, p: &ProcessProbe) -> pb::TaskCoreEntry {
    let posix = f
        .posix_timers
        .iter()
        .map(|t| {
            let v = p
                .posix_timers
                .iter()
                .find(|x| x.id == t.id)
                .copied()
                .unwrap_or_default();
            pb::PosixTimerEntry {
                it_id: t.id as u32,
                clock_id: t.clock_id as u32,
                si_signo: t.signo as u32,
                it_sigev_notify: t.notify as u32,
                sival_ptr: t.sival,
                overrun: v.overrun as u32,
                isec: v.isec,
                insec: v.insec,
                vsec: v.vsec,
                vnsec: v.vnsec,
                notify_thread_id: (t.notify & libc::SIGEV_THREAD_ID != 0).then_some(t.notify_pid),
            }
        })
        .collect();
    let sigactions = (1..=64u32)
        .filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32)
        .map(|s| {
            let a = p
                .sigactions
                .get(s as usize - 1)
                .copied()
                .unwrap_or_default();
            pb::SaEntry {
                sigaction: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
                compat_sigaction: Some(false),
                mask_extended: None,
            }
        })
        .collect();
    pb::TaskCoreEntry {
        task_state: f.state,
        exit_code: f.exit_code as u32,
        personality: f.personality,
        flags: f.flags,
        blk_sigset: f.blk_sigset,
        comm: f.comm.clone(),
        timers: Some(pb::TaskTimersEntry {
            real: itimer(&p.itimers[0]),
            virt: itimer(&p.itimers[1]),
            prof: itimer(&p.itimers[2]),
            posix,
        }),
        rlimits: Some(pb::TaskRlimitsEntry {
            rlimits: f
                .rlimits
                .iter()
                .map(|r: &Rlimit| pb::RlimitEntry {
                    cur: r.cur,
                    max: r.max,
                })
                .collect(),
        }),
        signals_s: Some(siginfos(&p.shared_pending)),
        loginuid: Some(f.loginuid),
        oom_score_adj: Some(f.oom_score_adj),
        sigactions,
        child_subreaper: Some(p.child_subreaper),
        // Only when registered, like CRIU's images.
        membarrier_registration_mask: (p.membarrier_mask != 0).then_some(p.membarrier_mask),
        ..Default::default()
    }
}

/// The core of a live thread; `process` is `Some` for the thread group leader.
pub fn core_entry(
    t: &ThreadFacts,
    tp: &ThreadProbe,
    process: Option<(&ProcessFacts, &ProcessProbe)>,
) -> pb::CoreEntry {
    let leader = process.is_some();
    // The leader's blocked mask is tc.blk_sigset; other threads keep theirs in thread_core.
    // Seccomp and the cgroup set are per thread (thread_core, from dump::extras).
    pb::CoreEntry {
        mtype: MARCH_X86_64 as i32,
        thread_info: Some(thread_info(tp)),
        tc: process.map(|(pf, pp)| task_core(pf, pp)),
        thread_core: Some(thread_core(t, tp, !leader)),
        ..Default::default()
    }
}

/// The core of a zombie: only `tc` with its state and exit status.
pub fn zombie_core(comm: &str, exit_code: i32) -> pb::CoreEntry {
    pb::CoreEntry {
        mtype: MARCH_X86_64 as i32,
        tc: Some(pb::TaskCoreEntry {
            task_state: TASK_DEAD,
            exit_code: exit_code as u32,
            comm: comm.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The bytes of `core-TID.img` holding `entry`.
pub fn core_file(entry: &pb::CoreEntry) -> Vec<u8> {
    images_out::file_bytes(images_out::CORE, entry)
}
