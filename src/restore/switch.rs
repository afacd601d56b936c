//! The switch: turn a prepared task (a fork of the restorer, blocked in `read`) into the dumped
//! one, driven from the restorer with ptrace.
//!
//! ```text
//! seize + interrupt ─ block all signals ─ unregister the inherited rseq
//!   ─ munmap everything but [vvar]/[vvar_vclock]/[vdso] ─ mremap those to the dumped address
//!   ─ mmap a scratch page ─ mmap every VMA (+PROT_WRITE) ─ write pages via /proc/PID/mem
//!   ─ mprotect/madvise ─ PR_SET_MM_MAP ─ close helper fds ─ sigactions, itimers, personality,
//!   comm, pgid ─ clone3 threads (set_tid) ─ per thread: sigaltstack, rseq, tid address ─ POSIX
//!   timers with their ids ─ pending signals ─ rlimits ─ munmap scratch
//!   ─ per thread: registers, XSAVE area, blocked mask ─ (later, all at once) detach
//! ```
//! Syscalls run at a `syscall` instruction of the task's own vdso, so no code of ours is ever
//! mapped into the restored address space.

use std::os::unix::fs::FileExt;

use nix::sys::ptrace::Options;
use nix::sys::wait::WaitStatus;

use super::error::RestoreError;
use super::files::Opened;
use super::img::msg;
use super::inject::{maps, Mem, Thread};
use super::plan::{vma_status as vs, Plan, TaskPlan};
use super::tree::Ctl;
use crate::sys::tracee;

const PAGE: u64 = 4096;
const SCRATCH: u64 = 64 * 1024;
const SYS_MMAP: i64 = libc::SYS_mmap;

/// A task that is fully restored and stopped, waiting to be let go.
#[derive(Debug)]
pub struct Switched {
    /// PID.
    pub pid: i32,
    /// TIDs, main thread first.
    pub tids: Vec<i32>,
    /// Stop it after release (it was stopped at dump time).
    pub stopped: bool,
}

impl Switched {
    /// Lets every thread run.
    pub fn release(&self) -> Result<(), RestoreError> {
        for &t in self.tids.iter().rev() {
            tracee::detach(t).map_err(|e| RestoreError::sys("detach", t, e))?;
        }
        if self.stopped {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
        Ok(())
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// A free range of `size` bytes that overlaps none of `avoid`.
fn free_gap(size: u64, avoid: &[(u64, u64)]) -> Option<u64> {
    let mut cand = 0x1000_0000_0000u64;
    while cand + size < 0x7ff0_0000_0000 {
        if !avoid.iter().any(|&r| overlaps(r, (cand, cand + size))) {
            return Some(cand);
        }
        cand += 0x10_0000_0000;
    }
    None
}

/// Seizes task `t` (prepared by [`super::tree`]) and restores it; it stays stopped.
pub fn switch_task(
    plan: &Plan,
    t: &TaskPlan,
    opened: &Opened,
    ctl: Ctl,
) -> Result<Switched, RestoreError> {
    let pid = t.pid;
    let mm =
        t.mm.as_ref()
            .ok_or_else(|| RestoreError::Unsupported(format!("task {pid}: no mm")))?;
    let sys = |step: &str, e| RestoreError::sys(step.to_string(), pid, e);
    tracee::seize(
        pid,
        Options::PTRACE_O_TRACECLONE | Options::PTRACE_O_EXITKILL,
    )
    .map_err(|e| sys("seize", e))?;
    tracee::interrupt(pid).map_err(|e| sys("interrupt", e))?;
    match tracee::wait(pid).map_err(|e| sys("wait for stop", e))? {
        WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..) => {}
        st => {
            return Err(RestoreError::TaskDied {
                pid,
                step: "seize".into(),
                status: format!("{st:?}"),
            })
        }
    }
    tracee::set_sigmask(pid, !0).map_err(|e| sys("block signals", e))?;
    let mem = Mem::open(pid)?;

    // Our vdso, and a syscall instruction in it.
    let cur = maps(pid)?;
    let special = |n: &str| matches!(n, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]");
    let vdso = cur
        .iter()
        .find(|m| m.2 == "[vdso]")
        .map(|m| (m.0, m.1))
        .ok_or_else(|| RestoreError::Unsupported("this system has no vdso".into()))?;
    let code = mem.read(vdso.0, (vdso.1 - vdso.0) as usize)?;
    let off = code
        .windows(2)
        .position(|w| w == [0x0f, 0x05])
        .ok_or_else(|| RestoreError::Unsupported("no syscall instruction in the vdso".into()))?;
    let mut main = Thread {
        tid: pid,
        gadget: vdso.0 + off as u64,
    };

    // The inherited rseq registration points into memory we are about to unmap.
    if let Ok(rc) = tracee::rseq_config(pid) {
        if rc.abi_pointer != 0 {
            main.syscall(
                "unregister rseq",
                libc::SYS_rseq,
                [
                    rc.abi_pointer,
                    u64::from(rc.abi_size),
                    1,
                    u64::from(rc.signature),
                    0,
                    0,
                ],
            )?;
        }
    }

    // Unmap everything of the restorer's image.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for m in cur.iter().filter(|m| !special(&m.2)) {
        match ranges.last_mut() {
            Some(l) if l.1 == m.0 => l.1 = m.1,
            _ => ranges.push((m.0, m.1)),
        }
    }
    for r in &ranges {
        main.syscall(
            "munmap restorer memory",
            libc::SYS_munmap,
            [r.0, r.1 - r.0, 0, 0, 0, 0],
        )?;
    }

    // Move [vvar]/[vvar_vclock]/[vdso] to where the images had them.
    let block: Vec<(u64, u64)> = cur
        .iter()
        .filter(|m| matches!(m.2.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]"))
        .map(|m| (m.0, m.1))
        .collect();
    let cur_lo = block.iter().map(|b| b.0).min().unwrap_or(vdso.0);
    let cur_hi = block.iter().map(|b| b.1).max().unwrap_or(vdso.1);
    let img_vdso = mm.vmas.iter().find(|v| v.status & vs::VDSO != 0);
    let img_vvar = mm.vmas.iter().find(|v| v.status & vs::VVAR != 0);
    let img_vmas: Vec<(u64, u64)> = mm
        .vmas
        .iter()
        .filter(|v| v.status & (vs::VDSO | vs::VVAR | vs::VSYSCALL) == 0)
        .map(|v| (v.start, v.end))
        .collect();
    if let Some(iv) = img_vdso {
        if iv.end - iv.start != vdso.1 - vdso.0 {
            return Err(RestoreError::Unsupported(format!(
                "mm-{pid}.img: vdso of {} bytes, this kernel's has {} (vdso proxy not implemented)",
                iv.end - iv.start,
                vdso.1 - vdso.0
            )));
        }
        let target_lo = iv.start - (vdso.0 - cur_lo);
        if let Some(vv) = img_vvar {
            if vv.start != target_lo || vv.end != iv.start {
                return Err(RestoreError::Unsupported(format!(
                    "mm-{pid}.img: [vvar] {:#x}-{:#x} does not match this kernel's layout",
                    vv.start, vv.end
                )));
            }
        }
        let delta = target_lo.wrapping_sub(cur_lo);
        if delta != 0 {
            let mut pieces = block.clone();
            pieces.sort();
            let len = cur_hi - cur_lo;
            let mut from = cur_lo;
            if overlaps((cur_lo, cur_hi), (target_lo, target_lo + len)) {
                let mut avoid = img_vmas.clone();
                avoid.push((target_lo, target_lo + len));
                avoid.push((cur_lo, cur_hi));
                let tmp = free_gap(len, &avoid)
                    .ok_or_else(|| RestoreError::Unsupported("no room to move the vdso".into()))?;
                move_block(&main, &pieces, from, tmp)?;
                for p in pieces.iter_mut() {
                    *p = (p.0 - from + tmp, p.1 - from + tmp);
                }
                from = tmp;
            }
            move_block(&main, &pieces, from, target_lo)?;
            main.gadget = main.gadget - cur_lo + target_lo;
        }
    }

    // Scratch page for syscall arguments.
    let mut avoid = img_vmas.clone();
    if let Some(iv) = img_vdso {
        avoid.push((iv.start - (vdso.0 - cur_lo), iv.end));
    }
    let scratch = free_gap(SCRATCH, &avoid)
        .ok_or_else(|| RestoreError::Unsupported("no room for the scratch area".into()))?;
    main.syscall(
        "mmap scratch",
        SYS_MMAP,
        [
            scratch,
            SCRATCH,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
    )?;

    map_vmas(plan, t, mm, opened, &main, &mem)?;

    // mm fields.
    let auxv: Vec<u8> = mm
        .mm_saved_auxv
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let auxv_at = scratch + 1024;
    if auxv.len() > 4096 {
        return Err(RestoreError::Unsupported(format!(
            "mm-{pid}.img: auxv of {} bytes",
            auxv.len()
        )));
    }
    mem.write(auxv_at, &auxv)?;
    let exe_fd = *opened.maps.get(&mm.exe_file_id).ok_or_else(|| {
        RestoreError::Unsupported(format!(
            "mm-{pid}.img: exe file {} not opened",
            mm.exe_file_id
        ))
    })?;
    let mut map = Vec::new();
    for v in [
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
        auxv_at,
    ] {
        map.extend_from_slice(&v.to_le_bytes());
    }
    map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    mem.write(scratch, &map)?;
    main.syscall(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            scratch,
            map.len() as u64,
            0,
            0,
        ],
    )?;
    if let Some(d) = mm.dumpable {
        main.syscall(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [libc::PR_SET_DUMPABLE as u64, d as u64, 0, 0, 0, 0],
        )?;
    }
    if mm.thp_disabled == Some(true) {
        main.syscall(
            "prctl(PR_SET_THP_DISABLE)",
            libc::SYS_prctl,
            [41, 1, 0, 0, 0, 0],
        )?;
    }

    // Helper descriptors.
    let mut helpers: Vec<i32> = opened.maps.values().copied().collect();
    helpers.extend(opened.shmem.values().copied());
    helpers.extend(opened.pages.values().copied());
    helpers.extend([ctl.ready_w, ctl.hold_r]);
    helpers.sort();
    helpers.dedup();
    for fd in helpers {
        main.syscall(
            "close helper fd",
            libc::SYS_close,
            [fd as u64, 0, 0, 0, 0, 0],
        )?;
    }

    let main_core = &t.threads[0].core;
    let tc = main_core
        .tc
        .as_ref()
        .ok_or_else(|| RestoreError::Unsupported("no tc".into()))?;
    restore_sigactions(&main, &mem, scratch, &tc.sigactions)?;
    main.syscall(
        "personality",
        libc::SYS_personality,
        [u64::from(tc.personality), 0, 0, 0, 0, 0],
    )?;
    if let Some(timers) = &tc.timers {
        for (which, it) in [(0u64, &timers.real), (1, &timers.virt), (2, &timers.prof)] {
            // A periodic timer caught right at expiry has value 0: setitimer would disarm it.
            let vusec = if it.vsec == 0 && it.vusec == 0 && (it.isec != 0 || it.iusec != 0) {
                1
            } else {
                it.vusec
            };
            let v = [it.isec, it.iusec, it.vsec, vusec];
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            mem.write(scratch, &b)?;
            main.syscall(
                "setitimer",
                libc::SYS_setitimer,
                [which, scratch, 0, 0, 0, 0],
            )?;
        }
    }
    // Process group joined after the leader exists (every task exists by now).
    let pgrp = stat_field(pid, 5);
    let root = &plan.tasks[0];
    let outside = plan.shell_job && root.pgid != root.pid && t.pgid == root.pgid;
    if pgrp != Some(t.pgid) && !outside {
        main.syscall("setpgid", libc::SYS_setpgid, [0, t.pgid as u64, 0, 0, 0, 0])?;
    }
    check_creds(pid, main_core)?;
    if tc.child_subreaper == Some(true) {
        main.syscall(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0, 0],
        )?;
    }
    if let Some(adj) = tc.oom_score_adj {
        let path = format!("/proc/{pid}/oom_score_adj");
        let cur: Option<i32> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if cur != Some(adj) {
            std::fs::write(&path, adj.to_string()).map_err(|e| RestoreError::Io {
                step: "write oom_score_adj",
                path: path.into(),
                source: e,
            })?;
        }
    }

    // Threads.
    let main_comm = main_core
        .thread_core
        .as_ref()
        .and_then(|c| c.comm.clone())
        .unwrap_or_else(|| tc.comm.clone());
    per_thread(&main, &mem, scratch, main_core, false, &main_comm)?;
    let mut threads = vec![main];
    for th in t.threads.iter().skip(1) {
        let clear_tid = th
            .core
            .thread_info
            .as_ref()
            .map_or(0, |ti| ti.clear_tid_addr);
        let args = clone3_args(clear_tid, scratch + 512);
        mem.write(scratch, &args)?;
        mem.write(scratch + 512, &(th.tid).to_le_bytes())?;
        let out = main.syscall_ex(
            &format!("clone3 thread {}", th.tid),
            libc::SYS_clone3,
            [scratch, args.len() as u64, 0, 0, 0, 0],
        )?;
        let new = out.new_tid.unwrap_or(out.ret as i32);
        if new != th.tid {
            return Err(RestoreError::Sys {
                step: format!("clone3 thread {}: got tid {new}", th.tid),
                pid,
                errno: nix::errno::Errno::EEXIST,
            });
        }
        match tracee::wait(new).map_err(|e| RestoreError::sys("wait new thread", new, e))? {
            WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..) => {}
            st => {
                return Err(RestoreError::TaskDied {
                    pid: new,
                    step: "start thread".into(),
                    status: format!("{st:?}"),
                })
            }
        }
        threads.push(Thread {
            tid: new,
            gadget: main.gadget,
        });
    }

    for (th, plan_th) in threads.iter().zip(&t.threads).skip(1) {
        per_thread(th, &mem, scratch, &plan_th.core, true, &main_comm)?;
    }
    if let Some(timers) = &tc.timers {
        restore_posix_timers(&main, &mem, scratch, &timers.posix)?;
    }
    // Pending signals: per thread, then shared.
    for (th, plan_th) in threads.iter().zip(&t.threads) {
        if let Some(q) = plan_th
            .core
            .thread_core
            .as_ref()
            .and_then(|c| c.signals_p.as_ref())
        {
            for s in &q.signals {
                let signo = queue_info(&mem, scratch, &s.siginfo)?;
                th.syscall(
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    [pid as u64, th.tid as u64, signo, scratch, 0, 0],
                )?;
            }
        }
    }
    if let Some(q) = &tc.signals_s {
        for s in &q.signals {
            let signo = queue_info(&mem, scratch, &s.siginfo)?;
            main.syscall(
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                [pid as u64, signo, scratch, 0, 0, 0],
            )?;
        }
    }
    if let Some(r) = &tc.rlimits {
        restore_rlimits(pid, &r.rlimits)?;
    }
    main.syscall(
        "munmap scratch",
        libc::SYS_munmap,
        [scratch, SCRATCH, 0, 0, 0, 0],
    )?;

    // Final registers and masks.
    for (i, (th, plan_th)) in threads.iter().zip(&t.threads).enumerate() {
        let mask = if i == 0 {
            tc.blk_sigset
        } else {
            plan_th
                .core
                .thread_core
                .as_ref()
                .and_then(|c| c.blk_sigset)
                .unwrap_or(tc.blk_sigset)
        };
        load_registers(th.tid, &plan_th.core, mask)?;
    }
    Ok(Switched {
        pid,
        tids: threads.iter().map(|t| t.tid).collect(),
        stopped: t.state == super::plan::TASK_STOPPED,
    })
}

fn move_block(
    main: &Thread,
    pieces: &[(u64, u64)],
    from: u64,
    to: u64,
) -> Result<(), RestoreError> {
    for p in pieces {
        let len = p.1 - p.0;
        let dst = p.0 - from + to;
        main.syscall(
            "mremap vdso",
            libc::SYS_mremap,
            [
                p.0,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                dst,
                0,
            ],
        )?;
    }
    Ok(())
}

/// Field `n` (1-based, after the comm) of /proc/PID/stat as a number.
fn stat_field(pid: i32, n: usize) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// mmap every VMA, fill private pages, then apply protections and advice.
fn map_vmas(
    plan: &Plan,
    t: &TaskPlan,
    mm: &msg::MmEntry,
    opened: &Opened,
    main: &Thread,
    mem: &Mem,
) -> Result<(), RestoreError> {
    let pid = t.pid;
    let skip = vs::VDSO | vs::VVAR | vs::VSYSCALL;
    for v in mm.vmas.iter().filter(|v| v.status & skip == 0) {
        let len = v.end - v.start;
        let shared = v.status & (vs::FILE_SHARED | vs::ANON_SHARED) != 0;
        let file = v.status & (vs::FILE_SHARED | vs::FILE_PRIVATE) != 0;
        let prot = if shared {
            v.prot
        } else {
            v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32
        };
        let mut flags = libc::MAP_FIXED as u32 | (v.flags & libc::MAP_GROWSDOWN as u32);
        let (fd, off) = if v.status & vs::ANON_SHARED != 0 {
            let fd = *opened.shmem.get(&v.shmid).ok_or_else(|| {
                RestoreError::Unsupported(format!(
                    "mm-{pid}.img: vma {:#x}: shared memory {} not created",
                    v.start, v.shmid
                ))
            })?;
            flags |= libc::MAP_SHARED as u32;
            (fd as u64, v.pgoff)
        } else if file {
            let fd = *opened.maps.get(&(v.shmid as u32)).ok_or_else(|| {
                RestoreError::Unsupported(format!(
                    "mm-{pid}.img: vma {:#x}: file {} not opened",
                    v.start, v.shmid
                ))
            })?;
            flags |= if shared {
                libc::MAP_SHARED as u32
            } else {
                libc::MAP_PRIVATE as u32
            };
            (fd as u64, v.pgoff)
        } else {
            flags |= (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
            (u64::MAX, 0)
        };
        main.syscall(
            &format!("mmap {:#x}-{:#x}", v.start, v.end),
            SYS_MMAP,
            [v.start, len, u64::from(prot), u64::from(flags), fd, off],
        )?;
        if let Some(madv) = v.madv {
            for bit in [14u64, 15, 16, 10, 18, 12] {
                if madv & (1 << bit) != 0 {
                    let _ =
                        main.syscall("madvise", libc::SYS_madvise, [v.start, len, bit, 0, 0, 0]);
                }
            }
        }
    }
    // Pages.
    if !t.pages.runs.is_empty() {
        let src = std::fs::File::open(&t.pages.file).map_err(|e| RestoreError::Io {
            step: "open pages image",
            path: t.pages.file.clone(),
            source: e,
        })?;
        let targets: Vec<(u64, u64)> = mm
            .vmas
            .iter()
            .filter(|v| v.status & skip == 0 && v.status & (vs::FILE_SHARED | vs::ANON_SHARED) == 0)
            .map(|v| (v.start, v.end))
            .collect();
        let mut buf = vec![0u8; 4 << 20];
        for run in &t.pages.runs {
            let (lo, hi) = (run.vaddr, run.vaddr + run.nr * PAGE);
            for &(s, e) in &targets {
                let a = lo.max(s);
                let b = hi.min(e);
                let mut at = a;
                if let Some(&fd) = opened.pages.get(&t.pages.file) {
                    // The task reads its pages itself: one copy, page cache to its memory.
                    while at < b {
                        let n = (b - at).min(1 << 30);
                        let got = main.syscall(
                            "pread64 pages",
                            libc::SYS_pread64,
                            [fd as u64, at, n, run.offset + (at - lo), 0, 0],
                        )?;
                        if got <= 0 {
                            return Err(RestoreError::Image {
                                path: t.pages.file.clone(),
                                index: 0,
                                what: format!("short read at offset {}", run.offset + (at - lo)),
                            });
                        }
                        at += got as u64;
                    }
                }
                while at < b {
                    let n = (b - at).min(buf.len() as u64) as usize;
                    src.read_exact_at(&mut buf[..n], run.offset + (at - lo))
                        .map_err(|e| RestoreError::Io {
                            step: "read pages image",
                            path: t.pages.file.clone(),
                            source: e,
                        })?;
                    mem.write(at, &buf[..n])?;
                    at += n as u64;
                }
            }
        }
    }
    let _ = plan;
    for v in mm
        .vmas
        .iter()
        .filter(|v| v.status & skip == 0 && v.status & (vs::FILE_SHARED | vs::ANON_SHARED) == 0)
    {
        if v.prot != (v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32) {
            main.syscall(
                "mprotect",
                libc::SYS_mprotect,
                [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
            )?;
        }
    }
    Ok(())
}

fn restore_sigactions(
    main: &Thread,
    mem: &Mem,
    scratch: u64,
    sa: &[msg::SaEntry],
) -> Result<(), RestoreError> {
    let mut sig = 0u64;
    for e in sa {
        sig += 1;
        while sig == 9 || sig == 19 {
            sig += 1;
        }
        if sig > 64 {
            break;
        }
        let b: Vec<u8> = [e.sigaction, e.flags, e.restorer, e.mask]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        mem.write(scratch, &b)?;
        main.syscall(
            &format!("rt_sigaction({sig})"),
            libc::SYS_rt_sigaction,
            [sig, scratch, 0, 8, 0, 0],
        )?;
    }
    Ok(())
}

fn clone3_args(clear_tid: u64, set_tid_at: u64) -> Vec<u8> {
    let mut flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    if clear_tid != 0 {
        flags |= libc::CLONE_CHILD_CLEARTID as u64;
    }
    let v = [flags, 0, clear_tid, 0, 0, 0, 0, 0, set_tid_at, 1, 0];
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Per-thread kernel state. `fresh`: a thread we just cloned (no altstack, no pdeath signal,
/// tid address set by clone3, comm inherited from the main thread), so only what differs is set.
fn per_thread(
    th: &Thread,
    mem: &Mem,
    scratch: u64,
    core: &msg::CoreEntry,
    fresh: bool,
    main_comm: &str,
) -> Result<(), RestoreError> {
    let tcore = core.thread_core.as_ref();
    // sigaltstack
    let (sp, size, flags) = tcore
        .and_then(|c| c.sas.as_ref())
        .map(|s| (s.ss_sp, s.ss_size, s.ss_flags))
        .unwrap_or((0, 0, libc::SS_DISABLE as u32));
    let mut b = Vec::new();
    b.extend_from_slice(&sp.to_le_bytes());
    b.extend_from_slice(&(flags as i32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    if !(fresh && flags & libc::SS_DISABLE as u32 != 0) {
        mem.write(scratch, &b)?;
        th.syscall(
            "sigaltstack",
            libc::SYS_sigaltstack,
            [scratch, 0, 0, 0, 0, 0],
        )?;
    }
    if let Some(r) = tcore.and_then(|c| c.rseq_entry.as_ref()) {
        if r.rseq_abi_pointer != 0 {
            th.syscall(
                "rseq",
                libc::SYS_rseq,
                [
                    r.rseq_abi_pointer,
                    u64::from(r.rseq_abi_size),
                    0,
                    u64::from(r.signature),
                    0,
                    0,
                ],
            )?;
        }
    }
    if let Some(ti) = core.thread_info.as_ref().filter(|_| !fresh) {
        th.syscall(
            "set_tid_address",
            libc::SYS_set_tid_address,
            [ti.clear_tid_addr, 0, 0, 0, 0, 0],
        )?;
    }
    let comm = tcore
        .and_then(|c| c.comm.clone())
        .or_else(|| core.tc.as_ref().map(|t| t.comm.clone()));
    if let Some(comm) = comm.filter(|c| !fresh || c.as_str() != main_comm) {
        let mut b = comm.into_bytes();
        b.truncate(15);
        b.push(0);
        mem.write(scratch, &b)?;
        th.syscall(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0],
        )?;
    }
    let pdeath = tcore.and_then(|c| c.pdeath_sig).unwrap_or(0);
    if !(fresh && pdeath == 0) {
        th.syscall(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [libc::PR_SET_PDEATHSIG as u64, u64::from(pdeath), 0, 0, 0, 0],
        )?;
    }
    if let Some(nice) = tcore.and_then(|c| c.sched_nice) {
        if nice != 0 {
            th.syscall(
                "setpriority",
                libc::SYS_setpriority,
                [libc::PRIO_PROCESS as u64, 0, nice as i64 as u64, 0, 0, 0],
            )?;
        }
    }
    Ok(())
}

fn restore_posix_timers(
    main: &Thread,
    mem: &Mem,
    scratch: u64,
    timers: &[msg::PosixTimerEntry],
) -> Result<(), RestoreError> {
    if timers.is_empty() {
        return Ok(());
    }
    const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
    main.syscall(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, on)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    )?;
    for tm in timers {
        // struct sigevent: value u64, signo i32, notify i32, tid i32, pad.
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&tm.sival_ptr.to_le_bytes());
        ev[8..12].copy_from_slice(&(tm.si_signo as i32).to_le_bytes());
        ev[12..16].copy_from_slice(&(tm.it_sigev_notify as i32).to_le_bytes());
        ev[16..20].copy_from_slice(&tm.notify_thread_id.unwrap_or(0).to_le_bytes());
        mem.write(scratch, &ev)?;
        mem.write(scratch + 128, &(tm.it_id as i32).to_le_bytes())?;
        main.syscall(
            &format!("timer_create(id {})", tm.it_id),
            libc::SYS_timer_create,
            [u64::from(tm.clock_id), scratch, scratch + 128, 0, 0, 0],
        )?;
        let got = i32::from_le_bytes(mem.read(scratch + 128, 4)?.try_into().unwrap_or([0; 4]));
        if got != tm.it_id as i32 {
            return Err(RestoreError::Sys {
                step: format!("timer_create: wanted id {}, got {got}", tm.it_id),
                pid: main.tid,
                errno: nix::errno::Errno::EEXIST,
            });
        }
        let (mut vs_, mut vn) = (tm.vsec, tm.vnsec);
        if vs_ == 0 && vn == 0 && (tm.isec != 0 || tm.insec != 0) {
            vn = 1; // armed timer about to fire
            vs_ = 0;
        }
        let spec: Vec<u8> = [tm.isec, tm.insec, vs_, vn]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        mem.write(scratch, &spec)?;
        main.syscall(
            "timer_settime",
            libc::SYS_timer_settime,
            [u64::from(tm.it_id), 0, scratch, 0, 0, 0],
        )?;
    }
    main.syscall(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, off)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
    )?;
    Ok(())
}

/// Writes a raw siginfo to scratch; returns its signal number.
fn queue_info(mem: &Mem, scratch: u64, info: &[u8]) -> Result<u64, RestoreError> {
    if info.len() != 128 {
        return Err(RestoreError::Unsupported(format!(
            "siginfo of {} bytes",
            info.len()
        )));
    }
    mem.write(scratch, info)?;
    Ok(u64::from(u32::from_le_bytes([
        info[0], info[1], info[2], info[3],
    ])))
}

fn restore_rlimits(pid: i32, lims: &[msg::RlimitEntry]) -> Result<(), RestoreError> {
    for (res, l) in lims.iter().enumerate() {
        let res = res as u32;
        let (_, cur_max) =
            tracee::get_rlimit(pid, res).map_err(|e| RestoreError::sys("prlimit read", pid, e))?;
        let mut max = l.max;
        if max > cur_max {
            tracing::warn!(
                pid,
                res,
                want = l.max,
                have = cur_max,
                "cannot raise a hard rlimit; keeping the current one"
            );
            max = cur_max;
        }
        let cur = l.cur.min(max);
        tracee::set_rlimit(pid, res, cur, max)
            .map_err(|e| RestoreError::sys(format!("prlimit({res})"), pid, e))?;
    }
    Ok(())
}

/// The creds of the images must equal the restorer's (changing them is not implemented).
fn check_creds(pid: i32, core: &msg::CoreEntry) -> Result<(), RestoreError> {
    let Some(c) = core.thread_core.as_ref().and_then(|t| t.creds.as_ref()) else {
        return Ok(());
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Vec<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let caps = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| u64::from_str_radix(l[name.len()..].trim(), 16).ok())
            .unwrap_or(0)
    };
    let uids = field("Uid:");
    let gids = field("Gid:");
    let want_u = [c.uid, c.euid, c.suid, c.fsuid].map(u64::from);
    let want_g = [c.gid, c.egid, c.sgid, c.fsgid].map(u64::from);
    let cap64 = |v: &Vec<u32>| {
        v.first().copied().map(u64::from).unwrap_or(0)
            | (v.get(1).copied().map(u64::from).unwrap_or(0) << 32)
    };
    if uids != want_u || gids != want_g {
        return Err(RestoreError::Unsupported(format!(
            "core-{pid}.img: uids {want_u:?}/gids {want_g:?} differ from the restorer's (changing creds is not implemented)"
        )));
    }
    if cap64(&c.cap_eff) & !caps("CapEff:") != 0 || cap64(&c.cap_prm) & !caps("CapPrm:") != 0 {
        return Err(RestoreError::Unsupported(format!(
            "core-{pid}.img: capabilities {:#x} exceed the restorer's",
            cap64(&c.cap_eff)
        )));
    }
    Ok(())
}

/// Loads a thread's saved registers, FPU/SSE/AVX state and blocked mask.
fn load_registers(tid: i32, core: &msg::CoreEntry, mask: u64) -> Result<(), RestoreError> {
    let err = |s: &str, e| RestoreError::sys(s.to_string(), tid, e);
    let ti = core
        .thread_info
        .as_ref()
        .ok_or_else(|| RestoreError::Unsupported("no thread_info".into()))?;
    let g = &ti.gpregs;
    if g.mode.unwrap_or(1) != 1 {
        return Err(RestoreError::Unsupported(format!(
            "thread {tid}: 32-bit (compat) registers"
        )));
    }
    let mut r = tracee::get_regs(tid).map_err(|e| err("get registers", e))?;
    r.r15 = g.r15;
    r.r14 = g.r14;
    r.r13 = g.r13;
    r.r12 = g.r12;
    r.rbp = g.bp;
    r.rbx = g.bx;
    r.r11 = g.r11;
    r.r10 = g.r10;
    r.r9 = g.r9;
    r.r8 = g.r8;
    r.rax = g.ax;
    r.rcx = g.cx;
    r.rdx = g.dx;
    r.rsi = g.si;
    r.rdi = g.di;
    r.orig_rax = u64::MAX;
    r.rip = g.ip;
    r.cs = g.cs;
    r.eflags = g.flags & !0x100;
    r.rsp = g.sp;
    r.ss = g.ss;
    r.fs_base = g.fs_base;
    r.gs_base = g.gs_base;
    r.ds = g.ds;
    r.es = g.es;
    r.fs = g.fs;
    r.gs = g.gs;
    {
        let fp = &ti.fpregs;
        let mut area = tracee::get_xstate(tid, 16384).map_err(|e| err("get xstate", e))?;
        super::xstate::fill(&mut area, fp)
            .map_err(|w| RestoreError::Unsupported(format!("thread {tid}: {w}")))?;
        tracee::set_xstate(tid, &area).map_err(|e| err("set xstate", e))?;
    }
    tracee::set_regs(tid, r).map_err(|e| err("set registers", e))?;
    tracee::set_sigmask(tid, mask).map_err(|e| err("set blocked signals", e))?;
    Ok(())
}
