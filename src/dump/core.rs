//! `core-TID.img`: one per thread. The thread group leader's carries the process-wide part
//! (`tc`: state, signal dispositions, timers, rlimits, shared pending signals); every thread
//! has `thread_info` (registers) and `thread_core` (creds, mask, sigaltstack, rseq...).
//! A zombie has only `tc` (state DEAD and its exit status).
//!
//! ```text
//!  core_entry { mtype X86_64,
//!    thread_info { clear_tid_addr, gpregs {...,mode NATIVE}, fpregs {...,xsave}, tls[3] },
//!    tc { task_state, exit_code, personality, flags, blk_sigset, comm, timers, rlimits,
//!         signals_s, loginuid, oom_score_adj, sigactions[62], child_subreaper, ... },
//!    thread_core { futex_rla, futex_rla_len, sched_*, blk_sigset, sas, signals_p, creds,
//!                  comm, rseq_entry, cg_set } }
//! ```

use serde_json::{json, Value};

use super::probe::{FpRegs, GpRegs, ProcessProbe, ThreadProbe, TlsDesc};
use crate::proc::misc::Rlimit;
use crate::proc::timers::PosixTimer;

/// `task_state` values.
pub const TASK_ALIVE: u32 = 1;
pub const TASK_DEAD: u32 = 2;
pub const TASK_STOPPED: u32 = 3;

/// `mtype` X86_64.
pub const MARCH_X86_64: u32 = 1;
/// `user_x86_regs_mode` NATIVE.
pub const REGS_NATIVE: u32 = 1;

/// What the core image of a thread is built from, besides the probes.
#[derive(Debug, Clone, Default)]
pub struct ThreadFacts {
    pub tid: i32,
    pub comm: String,
    pub blk_sigset: u64,
    pub sched_policy: u32,
    pub sched_nice: i32,
    pub sched_prio: u32,
    pub creds: Creds,
}

/// Credentials of a thread (from `/proc/PID/task/TID/status`).
#[derive(Debug, Clone, Default)]
pub struct Creds {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub secbits: u32,
    /// `PR_GET_NO_NEW_PRIVS` (NoNewPrivs in /proc).
    pub no_new_privs: bool,
}

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

fn caps(v: u64) -> Value {
    json!([v as u32, (v >> 32) as u32])
}

fn siginfos(list: &[Vec<u8>]) -> Value {
    use base64::Engine as _;
    let sigs: Vec<Value> = list
        .iter()
        .map(|s| json!({"siginfo": base64::engine::general_purpose::STANDARD.encode(s)}))
        .collect();
    if sigs.is_empty() {
        json!({})
    } else {
        json!({ "signals": sigs })
    }
}

fn gpregs(r: &GpRegs) -> Value {
    json!({
        "r15": r.r15, "r14": r.r14, "r13": r.r13, "r12": r.r12, "bp": r.bp, "bx": r.bx,
        "r11": r.r11, "r10": r.r10, "r9": r.r9, "r8": r.r8, "ax": r.ax, "cx": r.cx, "dx": r.dx,
        "si": r.si, "di": r.di, "orig_ax": r.orig_ax, "ip": r.ip, "cs": r.cs, "flags": r.flags,
        "sp": r.sp, "ss": r.ss, "fs_base": r.fs_base, "gs_base": r.gs_base, "ds": r.ds,
        "es": r.es, "fs": r.fs, "gs": r.gs, "mode": REGS_NATIVE,
    })
}

fn pad<T: Copy + Default>(v: &[T], n: usize) -> Vec<T> {
    let mut out = v.to_vec();
    out.resize(n, T::default());
    out
}

fn fpregs(f: &FpRegs) -> Value {
    let mut v = json!({
        "cwd": f.cwd, "swd": f.swd, "twd": f.twd, "fop": f.fop, "rip": f.rip, "rdp": f.rdp,
        "mxcsr": f.mxcsr, "mxcsr_mask": f.mxcsr_mask,
        "st_space": pad(&f.st_space, 32), "xmm_space": pad(&f.xmm_space, 64),
    });
    if let Some(x) = &f.xsave {
        v["xsave"] = json!({
            "xstate_bv": x.xstate_bv,
            "ymmh_space": pad(&x.ymmh_space, 64),
            "opmask_reg": pad(&x.opmask_reg, 8),
            "zmm_upper": pad(&x.zmm_upper, 64),
            "hi16_zmm": pad(&x.hi16_zmm, 128),
        });
    }
    v
}

fn tls(t: &TlsDesc) -> Value {
    json!({
        "entry_number": t.entry_number, "base_addr": t.base_addr, "limit": t.limit,
        "seg_32bit": t.seg_32bit, "contents_h": t.contents & 2 != 0, "contents_l": t.contents & 1 != 0,
        "read_exec_only": t.read_exec_only, "limit_in_pages": t.limit_in_pages,
        "seg_not_present": t.seg_not_present, "usable": t.usable,
    })
}

/// `thread_info`: registers of one thread.
pub fn thread_info(p: &ThreadProbe) -> Value {
    let tls_entries: Vec<TlsDesc> = if p.tls.is_empty() {
        (12..15).map(TlsDesc::empty).collect()
    } else {
        p.tls.clone()
    };
    json!({
        "clear_tid_addr": p.clear_tid_addr,
        "gpregs": gpregs(&p.regs),
        "fpregs": fpregs(&p.fpregs),
        "tls": tls_entries.iter().map(tls).collect::<Vec<_>>(),
    })
}

/// `thread_core` of one thread.
pub fn thread_core(f: &ThreadFacts, p: &ThreadProbe, with_blk_sigset: bool) -> Value {
    let c = &f.creds;
    let mut v = json!({
        "futex_rla": p.futex_rla, "futex_rla_len": p.futex_rla_len,
        "sched_nice": f.sched_nice, "sched_policy": f.sched_policy,
    });
    if f.sched_policy != 0 {
        v["sched_prio"] = json!(f.sched_prio);
    }
    if with_blk_sigset {
        v["blk_sigset"] = json!(f.blk_sigset);
    }
    v["sas"] = json!({"ss_sp": p.sas.0, "ss_size": p.sas.1, "ss_flags": p.sas.2});
    v["signals_p"] = siginfos(&p.pending);
    v["creds"] = json!({
        "uid": c.uid[0], "gid": c.gid[0], "euid": c.uid[1], "egid": c.gid[1],
        "suid": c.uid[2], "sgid": c.gid[2], "fsuid": c.uid[3], "fsgid": c.gid[3],
        "cap_inh": caps(c.cap_inh), "cap_prm": caps(c.cap_prm), "cap_eff": caps(c.cap_eff),
        "cap_bnd": caps(c.cap_bnd), "secbits": c.secbits, "groups": c.groups, "cap_amb": caps(c.cap_amb),
    });
    if c.no_new_privs {
        v["creds"]["no_new_privs"] = json!(1);
    }
    if c.groups.is_empty() {
        if let Some(o) = v["creds"].as_object_mut() {
            o.remove("groups");
        }
    }
    v["comm"] = json!(f.comm);
    if let Some((ptr, size, sig)) = p.rseq {
        v["rseq_entry"] = json!({"rseq_abi_pointer": ptr, "rseq_abi_size": size, "signature": sig});
    }
    if p.pdeath_sig != 0 {
        v["pdeath_sig"] = json!(p.pdeath_sig);
    }
    v["cg_set"] = json!(1);
    v
}

/// `tc`: the process part, in the leader's core.
pub fn task_core(f: &ProcessFacts, p: &ProcessProbe) -> Value {
    let it = |i: usize| {
        let t = p.itimers[i];
        json!({"isec": t.isec, "iusec": t.iusec, "vsec": t.vsec, "vusec": t.vusec})
    };
    let mut timers = json!({"real": it(0), "virt": it(1), "prof": it(2)});
    if !f.posix_timers.is_empty() {
        let posix: Vec<Value> = f
            .posix_timers
            .iter()
            .map(|t| {
                let v = p
                    .posix_timers
                    .iter()
                    .find(|x| x.id == t.id)
                    .copied()
                    .unwrap_or_default();
                let mut e = json!({
                    "it_id": t.id, "clock_id": t.clock_id, "si_signo": t.signo,
                    "it_sigev_notify": t.notify, "sival_ptr": t.sival, "overrun": v.overrun,
                    "isec": v.isec, "insec": v.insec, "vsec": v.vsec, "vnsec": v.vnsec,
                });
                if t.notify & libc::SIGEV_THREAD_ID != 0 {
                    e["notify_thread_id"] = json!(t.notify_pid);
                }
                e
            })
            .collect();
        timers["posix"] = json!(posix);
    }
    let sigactions: Vec<Value> = (1..=64u32)
        .filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32)
        .map(|s| {
            let a = p.sigactions.get(s as usize - 1).copied().unwrap_or_default();
            json!({"sigaction": a.handler, "flags": a.flags, "restorer": a.restorer, "mask": a.mask, "compat_sigaction": false})
        })
        .collect();
    let v = json!({
        "task_state": f.state, "exit_code": f.exit_code, "personality": f.personality,
        "flags": f.flags, "blk_sigset": f.blk_sigset, "comm": f.comm,
        "timers": timers,
        "rlimits": {"rlimits": f.rlimits.iter().map(|r| json!({"cur": r.cur, "max": r.max})).collect::<Vec<_>>()},
        "signals_s": siginfos(&p.shared_pending),
        "loginuid": f.loginuid, "oom_score_adj": f.oom_score_adj,
        "sigactions": sigactions,
        "child_subreaper": p.child_subreaper,
    });
    // Seccomp is per thread (thread_core, added by dump::extras).
    v
}

/// The core of a live thread; `process` is `Some` for the thread group leader.
pub fn core_entry(
    t: &ThreadFacts,
    tp: &ThreadProbe,
    process: Option<(&ProcessFacts, &ProcessProbe)>,
) -> Value {
    let mut v = json!({ "mtype": MARCH_X86_64, "thread_info": thread_info(tp) });
    let leader = process.is_some();
    if let Some((pf, pp)) = process {
        v["tc"] = task_core(pf, pp);
    }
    // The leader's blocked mask is tc.blk_sigset; other threads keep theirs in thread_core.
    v["thread_core"] = thread_core(t, tp, !leader);
    v
}

/// The core of a zombie: only `tc` with its state and exit status.
pub fn zombie_core(comm: &str, exit_code: i32) -> Value {
    json!({
        "mtype": MARCH_X86_64,
        "tc": {"task_state": TASK_DEAD, "exit_code": exit_code, "personality": 0, "flags": 0, "blk_sigset": 0, "comm": comm},
    })
}
