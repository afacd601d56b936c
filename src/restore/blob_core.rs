//! From image entries to the restorer's arguments: CRIU's `core-*.img` (registers, FPU,
//! signals, creds, rseq, timers, rlimits, sigactions) and `mm-*.img` (mm fields, auxv) into
//! [`ThreadSpec`] and [`TaskSpec`] fields. VMAs, premaps, fds and vdso are the engine's.

use super::blob_args::abi::*;
use super::blob_args::{TaskSpec, ThreadSpec};
use super::xsave::{xsave_image, FpuRegs};
use crate::images::pb;
pub use crate::regs_image::regs_from_pb;

/// Errors converting image entries.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobCoreError {
    #[error("core of task {tid}: no {what}")]
    Missing { tid: u32, what: &'static str },
    #[error("core of task {tid}: seccomp filter {index} is missing, malformed or in a loop")]
    BadSeccomp { tid: u32, index: u32 },
    #[error("core of task {tid}: {what} is not supported by the restorer")]
    Unsupported { tid: u32, what: &'static str },
    #[error("core of task {tid}: siginfo {index} is {len} bytes, not 128")]
    BadSiginfo { tid: u32, index: usize, len: usize },
}

/// `user_x86_fpregs_entry` as the xsave image of the sigframe.
pub fn fpu_from_pb(f: &pb::UserX86FpregsEntry) -> Vec<u8> {
    let x = f.xsave.clone().unwrap_or_default();
    xsave_image(&FpuRegs {
        cwd: f.cwd as u16,
        swd: f.swd as u16,
        twd: f.twd as u16,
        fop: f.fop as u16,
        rip: f.rip,
        rdp: f.rdp,
        mxcsr: f.mxcsr,
        mxcsr_mask: f.mxcsr_mask,
        st_space: &f.st_space,
        xmm_space: &f.xmm_space,
        xstate_bv: x.xstate_bv,
        ymmh: &x.ymmh_space,
        opmask: &x.opmask_reg,
        zmm_upper: &x.zmm_upper,
        hi16_zmm: &x.hi16_zmm,
        pkru: x.pkru.first().copied(),
    })
}

fn words(v: &[u32]) -> [u32; 2] {
    [
        v.first().copied().unwrap_or(0),
        v.get(1).copied().unwrap_or(0),
    ]
}

/// `creds_entry` as CredsArgs plus the supplementary groups.
pub fn creds_from_pb(c: &pb::CredsEntry) -> (CredsArgs, Vec<u32>) {
    let a = CredsArgs {
        uid: c.uid,
        gid: c.gid,
        euid: c.euid,
        egid: c.egid,
        suid: c.suid,
        sgid: c.sgid,
        fsuid: c.fsuid,
        fsgid: c.fsgid,
        cap_inh: words(&c.cap_inh),
        cap_prm: words(&c.cap_prm),
        cap_eff: words(&c.cap_eff),
        cap_bnd: words(&c.cap_bnd),
        cap_amb: words(&c.cap_amb),
        secbits: c.secbits,
        no_new_privs: c.no_new_privs.unwrap_or(0),
        ..Default::default()
    };
    (a, c.groups.clone())
}

fn siginfos(tid: u32, q: Option<&pb::SignalQueueEntry>) -> Result<Vec<SigInfo>, BlobCoreError> {
    let mut out = Vec::new();
    for (index, s) in q
        .map(|q| q.signals.as_slice())
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let bytes: [u8; 128] =
            s.siginfo
                .as_slice()
                .try_into()
                .map_err(|_| BlobCoreError::BadSiginfo {
                    tid,
                    index,
                    len: s.siginfo.len(),
                })?;
        out.push(SigInfo { bytes });
    }
    Ok(out)
}

/// The seccomp filter chain ending at filter `newest` of `seccomp.img`, oldest first.
pub fn seccomp_chain(
    tid: u32,
    entry: &pb::SeccompEntry,
    newest: u32,
) -> Result<Vec<(Vec<u8>, u32)>, BlobCoreError> {
    let mut chain = Vec::new();
    let mut at = Some(newest);
    while let Some(i) = at {
        let f = entry
            .seccomp_filters
            .get(i as usize)
            .filter(|f| f.filter.len() % 8 == 0 && chain.len() < entry.seccomp_filters.len())
            .ok_or(BlobCoreError::BadSeccomp { tid, index: i })?;
        chain.push((f.filter.clone(), f.flags.unwrap_or(0)));
        at = f.prev;
    }
    chain.reverse();
    Ok(chain)
}

/// One thread from its `core-TID.img` (and `seccomp.img` if the task has one); `leader` takes
/// the blocked mask from `tc` (CRIU stores the main thread's there).
pub fn thread_from_core(
    tid: u32,
    core: &pb::CoreEntry,
    leader: bool,
    seccomp: Option<&pb::SeccompEntry>,
) -> Result<ThreadSpec, BlobCoreError> {
    let ti = core.thread_info.as_ref().ok_or(BlobCoreError::Missing {
        tid,
        what: "thread_info",
    })?;
    let tcore = core.thread_core.clone().unwrap_or_default();
    let blocked = if leader {
        core.tc
            .as_ref()
            .map(|tc| tc.blk_sigset)
            .or(tcore.blk_sigset)
    } else {
        tcore.blk_sigset
    }
    .unwrap_or(0);
    let sas = tcore.sas.unwrap_or(pb::ThreadSasEntry {
        ss_sp: 0,
        ss_size: 0,
        ss_flags: 2,
    });
    let rseq = tcore
        .rseq_entry
        .as_ref()
        .map(|r| RseqArgs {
            ptr: r.rseq_abi_pointer,
            len: r.rseq_abi_size,
            sig: r.signature,
        })
        .unwrap_or_default();
    Ok(ThreadSpec {
        args: ThreadArgs {
            tid,
            regs: regs_from_pb(&ti.gpregs),
            blocked,
            sas_sp: sas.ss_sp,
            sas_flags: sas.ss_flags,
            sas_size: sas.ss_size,
            rseq,
            clear_tid_addr: ti.clear_tid_addr,
            robust_list: tcore.futex_rla,
            robust_list_len: u64::from(tcore.futex_rla_len),
            pdeath_sig: tcore.pdeath_sig.unwrap_or(0),
            set_sched: u32::from(tcore.sched_policy.is_some()),
            sched_policy: tcore.sched_policy.unwrap_or(0),
            sched_prio: tcore.sched_prio.unwrap_or(0),
            sched_nice: tcore.sched_nice.unwrap_or(0),
            comm: comm_bytes(
                tcore
                    .comm
                    .as_deref()
                    .or(core.tc.as_ref().map(|tc| tc.comm.as_str())),
            ),
            ..Default::default()
        },
        fpu: fpu_from_pb(&ti.fpregs),
        creds: tcore.creds.as_ref().map(creds_from_pb),
        signals: siginfos(tid, tcore.signals_p.as_ref())?,
        seccomp: match (tcore.seccomp_mode, tcore.seccomp_filter, seccomp) {
            (Some(2), Some(newest), Some(entry)) => seccomp_chain(tid, entry, newest)?,
            (Some(2), _, _) => {
                return Err(BlobCoreError::Missing {
                    tid,
                    what: "seccomp filters",
                })
            }
            (Some(m), _, _) if m != 0 => {
                return Err(BlobCoreError::Unsupported {
                    tid,
                    what: "strict seccomp mode",
                })
            }
            _ => Vec::new(),
        },
    })
}

/// A thread name as the 16 NUL-padded bytes of `PR_SET_NAME` (at most 15 characters).
fn comm_bytes(name: Option<&str>) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, b) in out.iter_mut().zip(name.unwrap_or("").bytes().take(15)) {
        *o = b;
    }
    out
}

fn itimer(e: &pb::ItimerEntry) -> ItimerArgs {
    ItimerArgs {
        interval: Timeval {
            sec: e.isec as i64,
            usec: e.iusec as i64,
        },
        value: Timeval {
            sec: e.vsec as i64,
            usec: e.vusec as i64,
        },
    }
}

/// Task-wide state of the leader's core: sigactions, itimers, POSIX timers, rlimits,
/// personality, child subreaper, membarrier registrations, shared pending signals.
pub fn task_from_core(
    spec: &mut TaskSpec,
    tid: u32,
    core: &pb::CoreEntry,
) -> Result<(), BlobCoreError> {
    let tc = core
        .tc
        .as_ref()
        .ok_or(BlobCoreError::Missing { tid, what: "tc" })?;
    // Entry i: signals 1..=64 without SIGKILL (9) and SIGSTOP (19).
    let signals = (1..=64usize).filter(|&s| s != 9 && s != 19);
    for (sa, sig) in tc.sigactions.iter().zip(signals) {
        spec.task.sigactions[sig - 1] = SigactionArgs {
            handler: sa.sigaction,
            flags: sa.flags,
            restorer: sa.restorer,
            mask: sa.mask,
        };
    }
    if let Some(t) = &tc.timers {
        spec.task.itimers = [itimer(&t.real), itimer(&t.virt), itimer(&t.prof)];
        spec.posix_timers = t
            .posix
            .iter()
            .map(|p| PosixTimerArgs {
                id: p.it_id as i32,
                clock_id: p.clock_id as i32,
                sigev_notify: p.it_sigev_notify as i32,
                sigev_signo: p.si_signo as i32,
                sigev_value: p.sival_ptr,
                notify_tid: p.notify_thread_id.unwrap_or(0),
                _pad: 0,
                interval: Timespec {
                    sec: p.isec as i64,
                    nsec: p.insec as i64,
                },
                value: Timespec {
                    sec: p.vsec as i64,
                    nsec: p.vnsec as i64,
                },
            })
            .collect();
    }
    if let Some(r) = &tc.rlimits {
        for (dst, src) in spec.task.rlimits.iter_mut().zip(&r.rlimits) {
            *dst = RlimitArgs {
                cur: src.cur,
                max: src.max,
            };
        }
        spec.task.nr_rlimits = r.rlimits.len().min(NR_RLIMITS) as u32;
    }
    spec.task.personality = tc.personality;
    spec.task.child_subreaper = u32::from(tc.child_subreaper.unwrap_or(false));
    spec.task.membarrier_mask = tc.membarrier_registration_mask.unwrap_or(0);
    spec.shared_signals = siginfos(tid, tc.signals_s.as_ref())?;
    Ok(())
}

/// The mm fields and auxv of `mm-PID.img`; `exe_fd` is the opened executable (or `u32::MAX`).
pub fn mm_from_pb(spec: &mut TaskSpec, mm: &pb::MmEntry, exe_fd: u32) {
    spec.task.mm = MmArgs {
        start_code: mm.mm_start_code,
        end_code: mm.mm_end_code,
        start_data: mm.mm_start_data,
        end_data: mm.mm_end_data,
        start_brk: mm.mm_start_brk,
        brk: mm.mm_brk,
        start_stack: mm.mm_start_stack,
        arg_start: mm.mm_arg_start,
        arg_end: mm.mm_arg_end,
        env_start: mm.mm_env_start,
        env_end: mm.mm_env_end,
        auxv: 0,
        auxv_size: 0,
        exe_fd,
    };
    spec.auxv = mm.mm_saved_auxv.clone();
    spec.task.set_mm = 1;
    spec.task.dumpable = mm.dumpable.map_or(u32::MAX, |d| d as u32);
    spec.task.thp_disabled = mm.thp_disabled.map_or(u32::MAX, u32::from);
    spec.task.mlockall = mm.mlockall_flags.unwrap_or(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::framing::read_single;
    use crate::test_fixtures::fixtures;

    #[test]
    fn fx_loop_core_converts() {
        let dir = fixtures().join("criu-4.2/fx-loop");
        let core: pb::CoreEntry = read_single(dir.join("core-30000.img")).expect("core image");
        let t = thread_from_core(30000, &core, true, None).expect("thread");
        assert_eq!(t.args.regs.ip, 0x4015b1);
        assert_eq!(t.args.regs.sp, 0x7fff0db05e70);
        assert_eq!(t.args.regs.fs_base, 0x1935380);
        assert_eq!(t.args.clear_tid_addr, 0x1935650);
        assert_eq!(t.args.rseq.sig, 0x5305_3053);
        assert_eq!(&t.args.comm[..8], b"fx-loop\0");
        let fpu = &t.fpu;
        assert_eq!(
            u32::from_le_bytes(fpu[464..468].try_into().unwrap()),
            0x4650_5853
        );
        assert_eq!(u16::from_le_bytes(fpu[0..2].try_into().unwrap()), 3967);
        assert_eq!(u32::from_le_bytes(fpu[24..28].try_into().unwrap()), 32640);
        let mut spec = TaskSpec::new();
        task_from_core(&mut spec, 30000, &core).expect("task");
        // Image entry 10 is signal 12 (SIGUSR2: entries skip SIGKILL).
        assert_eq!(spec.task.sigactions[11].handler, 0x401a00);
        assert_eq!(spec.task.sigactions[11].restorer, 0x408d00);
        assert_eq!(spec.task.nr_rlimits, 16);
        assert_eq!(
            spec.task.rlimits[7],
            RlimitArgs {
                cur: 20000,
                max: 20000
            }
        );
        let mm: pb::MmEntry = read_single(dir.join("mm-30000.img")).expect("mm image");
        mm_from_pb(&mut spec, &mm, u32::MAX);
        assert_eq!(spec.task.mm.start_code, 0x401000);
        assert_eq!(spec.auxv.len(), 44);
    }

    #[test]
    fn seccomp_chain_is_oldest_first_and_rejects_loops() {
        let f = |b: u8, prev: Option<u32>| pb::SeccompFilter {
            filter: vec![b; 8],
            prev,
            flags: None,
        };
        let entry = pb::SeccompEntry {
            seccomp_filters: vec![f(1, None), f(2, Some(0)), f(3, Some(1))],
        };
        let chain = seccomp_chain(1, &entry, 2).unwrap();
        assert_eq!(
            chain.iter().map(|c| c.0[0]).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let looped = pb::SeccompEntry {
            seccomp_filters: vec![f(1, Some(1)), f(2, Some(0))],
        };
        assert!(matches!(
            seccomp_chain(1, &looped, 1),
            Err(BlobCoreError::BadSeccomp { .. })
        ));
        assert!(matches!(
            seccomp_chain(1, &entry, 7),
            Err(BlobCoreError::BadSeccomp { index: 7, .. })
        ));
    }

    #[test]
    fn fx_threads_thread_core_converts() {
        let dir = fixtures().join("criu-4.2/fx-threads");
        let core: pb::CoreEntry = read_single(dir.join("core-30201.img")).expect("core image");
        let t = thread_from_core(30201, &core, false, None).expect("thread");
        assert_ne!(t.args.blocked, 0);
        assert!(t.creds.is_some());
        assert_ne!(t.args.rseq.ptr, 0);
    }
}
