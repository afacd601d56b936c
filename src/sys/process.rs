//! Small helpers about processes that are not ptrace (ptrace requests live in
//! [`super::ptrace`]): another process's resource limits, the calling task's parent-death
//! signal and exits of a forked task.

use nix::errno::Errno;

/// `prlimit64(pid, resource, &{cur, max}, NULL)`: set another process's limit.
pub fn set_rlimit(pid: i32, resource: u32, cur: u64, max: u64) -> Result<(), Errno> {
    let lim = libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: `lim` is a valid rlimit64 alive across the call; the old-value pointer is NULL.
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            &lim,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `prlimit64(pid, resource, NULL, &old)`: read a process's limit as (cur, max).
pub fn get_rlimit(pid: i32, resource: u32) -> Result<(u64, u64), Errno> {
    let mut lim = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the new-value pointer is NULL; `lim` is valid for the kernel to write.
    let r = unsafe {
        libc::prlimit64(
            pid,
            resource as libc::__rlimit_resource_t,
            std::ptr::null(),
            &mut lim,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// `prctl(PR_SET_PDEATHSIG, sig)` for the calling task.
pub fn set_pdeathsig(sig: i32) -> Result<(), Errno> {
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `_exit(code)`: leave without running destructors or atexit handlers (a forked task).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// Ends the calling (forked) process the way a zombie of the images ended: `status` is its
/// recorded wait status (`tc.exit_code`). A signal death is repeated with the signal at its
/// default action and unblocked (the restorer's own dispositions, e.g. an ignored SIGPIPE,
/// are inherited), the dumpable flag off so no core file is written; a signal whose default
/// action does not kill becomes SIGABRT (as CRIU does). Otherwise `_exit(status >> 8)`.
pub fn exit_like(status: u32) -> ! {
    let sig = (status & 0x7f) as i32;
    if sig != 0 {
        let _ = nix::sys::prctl::set_dumpable(false);
        let kills = !matches!(sig, 17..=23 | 28) && sig <= 64;
        let sig = if kills { sig } else { libc::SIGABRT };
        for s in (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
            // SAFETY: a zeroed sigaction is SIG_DFL with no flags; no handler of ours runs.
            unsafe {
                let sa: libc::sigaction = std::mem::zeroed();
                libc::sigaction(s, &sa, std::ptr::null_mut());
            }
        }
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        );
        // SAFETY: sends a signal to this process only (raw: real-time signals included).
        unsafe { libc::kill(libc::getpid(), sig) };
    }
    exit_now(((status >> 8) & 0xff) as i32)
}
