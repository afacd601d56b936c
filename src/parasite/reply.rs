//! Decoding of what the dump parasite sends: every byte comes from the task being dumped, and a
//! task can replace the parasite's code or data (another thread of it runs while the leader
//! serves), so each reply is hostile input. The decoders here are pure functions of the bytes
//! and what was asked; they return [`ReplyError`], never panic, and allocate only by counts
//! the dumper chose (what it asked), never by a count read from a reply.
//!
//! ```text
//!  message ──header(cmd)──> payload          size >= 16, cmd echoed, len == rest, status 0
//!                                            or a -errno in -4095..-1
//!  payload ──byte_count(asked)               exactly 8 bytes, == the bytes asked
//!          ──pipe_fd                         exactly 4 bytes, a descriptor number
//!          ──fd_opts(asked fds, fds got)     one FdOpts per asked fd, same fd, known bits
//!          ──sigactions                      exactly 64 KSigaction, user-space addresses
//!          ──misc                            exactly one MiscState, values in range
//!          ──posix_timers(asked ids)         one per asked id, same id, times in range
//!          ──thread_state                    exactly one ThreadState, values in range
//!  slot    ──thread_slot(tid)                the routine's ThreadState, done == DONE ^ tid
//!  note    ──thread_note                     8 bytes: the tid of a thread that finished
//! ```
//! The fuzz target `parasite` (fuzz/) runs every decoder on arbitrary bytes through
//! [`decode_any`]; `tests/parasite_replies.rs` replays its kept inputs.

use super::proto::{self, *};
use nix::errno::Errno;

/// What is wrong with a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The reply does not have the form the protocol gives it, or a value is out of range.
    #[error("{0}")]
    Malformed(String),
    /// The command failed in the task with this errno.
    #[error("{0}")]
    Failed(Errno),
}

/// Result of a decoder.
pub type Result<T> = std::result::Result<T, ReplyError>;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(ReplyError::Malformed(what.into()))
}

/// Highest user-space address on x86-64 (5-level paging; 4-level tasks stay far below).
pub const USER_END: u64 = 1 << 56;

/// Largest descriptor number the kernel hands out (`fs.nr_open` is at most 1 << 30).
const MAX_FD: i32 = 1 << 30;

/// Largest supplementary group count (`NGROUPS_MAX`).
const NGROUPS_MAX: i32 = 65536;

/// `address` is 0 or a user-space address.
fn user_addr(what: &str, address: u64) -> Result<()> {
    if address >= USER_END {
        return bad(format!("{what} {address:#x} is outside user space"));
    }
    Ok(())
}

fn in_range<T: PartialOrd + std::fmt::Display>(what: &str, v: T, lo: T, hi: T) -> Result<()> {
    if v < lo || v > hi {
        return bad(format!("{what} {v} is outside {lo}..={hi}"));
    }
    Ok(())
}

/// An interval and a value of `what`: seconds >= 0, fractions in `0..=max_frac`.
fn times_in_range(what: &str, times: [(i64, i64); 2], max_frac: i64) -> Result<()> {
    for (sec, frac) in times {
        in_range(&format!("{what} seconds"), sec, 0, i64::MAX)?;
        in_range(&format!("{what} fraction"), frac, 0, max_frac)?;
    }
    Ok(())
}

/// An errno sent as a negative status: -4095..-1.
fn errno_of(status: i32) -> Result<Errno> {
    if (-4095..0).contains(&status) {
        Ok(Errno::from_raw(-status))
    } else {
        bad(format!("status {status} is not a -errno"))
    }
}

/// Exactly one `T` in `payload`.
fn exactly<T: Wire>(payload: &[u8]) -> Result<T> {
    let want = std::mem::size_of::<T>();
    if payload.len() != want {
        return bad(format!("{}-byte reply, {want} expected", payload.len()));
    }
    proto::read::<T>(payload).ok_or_else(|| ReplyError::Malformed("short reply".into()))
}

/// Exactly `n` values of `T` in `payload` (`n` is what the dumper asked for).
fn exactly_n<T: Wire>(payload: &[u8], n: usize) -> Result<Vec<T>> {
    let want = std::mem::size_of::<T>().checked_mul(n);
    if want != Some(payload.len()) {
        return bad(format!(
            "{}-byte reply, {n} entries of {} bytes expected",
            payload.len(),
            std::mem::size_of::<T>()
        ));
    }
    (0..n)
        .map(|i| {
            proto::read_at::<T>(payload, i)
                .ok_or_else(|| ReplyError::Malformed("short reply".into()))
        })
        .collect()
}

/// The payload of `msg`, a reply to command `cmd` (see the module doc).
pub fn header(cmd: u32, msg: &[u8]) -> Result<&[u8]> {
    let hlen = std::mem::size_of::<ReplyHeader>();
    let Some(h) = proto::read::<ReplyHeader>(msg) else {
        return bad(format!("{}-byte reply", msg.len()));
    };
    if h.cmd != cmd {
        return bad(format!("reply to command {} instead of {cmd}", h.cmd));
    }
    let payload = &msg[hlen..];
    if h.len as usize != payload.len() {
        return bad(format!(
            "reply says {} bytes of payload and has {}",
            h.len,
            payload.len()
        ));
    }
    if h.status != 0 {
        let errno = errno_of(h.status)?;
        if !payload.is_empty() {
            return bad(format!("failed reply ({errno}) with a payload"));
        }
        return Err(ReplyError::Failed(errno));
    }
    Ok(payload)
}

/// The tid of a thread-routine note (`THREAD_DONE ^ tid`, 8 bytes), if `msg` is one.
pub fn thread_note(msg: &[u8]) -> Option<i32> {
    let word: [u8; 8] = msg.try_into().ok()?;
    let tid = u64::from_le_bytes(word) ^ THREAD_DONE;
    i32::try_from(tid).ok().filter(|&t| t > 0)
}

/// DUMP_PAGES(_TO): the bytes vmspliced, which must be `asked`.
pub fn byte_count(payload: &[u8], asked: u64) -> Result<u64> {
    let got: u64 = exactly(payload)?;
    if got != asked {
        return bad(format!("vmspliced {got} of {asked} bytes"));
    }
    Ok(got)
}

/// SET_PIPE: the descriptor number the pipe got in the task.
pub fn pipe_fd(payload: &[u8]) -> Result<i32> {
    let fd: i32 = exactly(payload)?;
    in_range("descriptor", fd, 0, MAX_FD)?;
    Ok(fd)
}

/// DRAIN_FDS: what the task knows of each descriptor of `asked` (`got` descriptors came with
/// the reply).
pub fn fd_opts(payload: &[u8], asked: &[i32], got: usize) -> Result<Vec<FdOpts>> {
    if got != asked.len() {
        return bad(format!("asked {} descriptors, got {got}", asked.len()));
    }
    let opts: Vec<FdOpts> = exactly_n(payload, asked.len())?;
    for (o, &fd) in opts.iter().zip(asked) {
        if o.fd != fd {
            return bad(format!("options of descriptor {} for {fd}", o.fd));
        }
        if o.fd_flags & !libc::FD_CLOEXEC != 0 {
            return bad(format!("descriptor flags {:#x} of {fd}", o.fd_flags));
        }
        in_range("owner type", o.owner_type, 0, 2)?;
        in_range("owner pid", o.owner_pid, 0, i32::MAX)?;
        in_range("signal", o.signum, 0, 64)?;
    }
    Ok(opts)
}

/// SIGACTIONS: the 64 dispositions, index `sig - 1`.
pub fn sigactions(payload: &[u8]) -> Result<Vec<KSigaction>> {
    let acts: Vec<KSigaction> = exactly_n(payload, 64)?;
    for a in &acts {
        user_addr("signal handler", a.handler)?;
        user_addr("signal restorer", a.restorer)?;
    }
    Ok(acts)
}

/// MISC: the per-process state.
pub fn misc(payload: &[u8]) -> Result<MiscState> {
    let m: MiscState = exactly(payload)?;
    user_addr("brk", m.brk)?;
    in_range("pid", m.pid, 1, i32::MAX)?;
    for (what, v) in [("ppid", m.ppid), ("sid", m.sid), ("pgid", m.pgid)] {
        in_range(what, v, 0, i32::MAX)?;
    }
    in_range("umask", m.umask, 0, 0o777)?;
    in_range("dumpable", m.dumpable, 0, 2)?;
    // PR_GET_THP_DISABLE: 1, with flag bits on kernels that have them.
    in_range("thp_disabled", m.thp_disabled, 0, 0xff)?;
    for (what, v) in [
        ("child_subreaper", m.child_subreaper),
        ("no_new_privs", m.no_new_privs),
    ] {
        in_range(what, v, 0, 1)?;
    }
    for t in &m.itimers {
        let times = [
            (t.interval_sec, t.interval_usec),
            (t.value_sec, t.value_usec),
        ];
        times_in_range("itimer", times, 999_999)?;
    }
    Ok(m)
}

/// POSIX_TIMERS: one state per id of `asked`, in order.
pub fn posix_timers(payload: &[u8], asked: &[i32]) -> Result<Vec<PosixTimerState>> {
    let timers: Vec<PosixTimerState> = exactly_n(payload, asked.len())?;
    for (t, &id) in timers.iter().zip(asked) {
        if t.id != id {
            return bad(format!("state of timer {} for timer {id}", t.id));
        }
        in_range("timer overrun", t.overrun, 0, i32::MAX)?;
        let times = [
            (t.interval_sec, t.interval_nsec),
            (t.value_sec, t.value_nsec),
        ];
        times_in_range("timer", times, 999_999_999)?;
    }
    Ok(timers)
}

/// Checks the values of a [`ThreadState`] (from THREAD_STATE or a thread slot).
fn check_thread(s: &ThreadState) -> Result<()> {
    user_addr("clear_child_tid address", s.tid_address)?;
    user_addr("sigaltstack", s.altstack_sp)?;
    if s.altstack_sp
        .checked_add(s.altstack_size)
        .is_none_or(|end| end > USER_END)
    {
        return bad(format!(
            "sigaltstack {:#x}+{:#x} is outside user space",
            s.altstack_sp, s.altstack_size
        ));
    }
    user_addr("robust list", s.robust_head)?;
    in_range("pdeath signal", s.pdeath_sig, 0, 64)?;
    if !s.comm.contains(&0) {
        return bad("thread name without its NUL");
    }
    in_range("group count", s.ngroups, 0, NGROUPS_MAX)?;
    in_range("scheduling policy", s.sched_policy, 0, 7)?;
    in_range("scheduling priority", s.sched_prio, 0, 99)?;
    in_range("nice value", s.sched_nice, -20, 19)?;
    in_range("no_new_privs", s.no_new_privs, 0, 1)?;
    in_range("seccomp mode", s.seccomp_mode, 0, 2)?;
    Ok(())
}

/// THREAD_STATE: the state of the parasite's own thread.
pub fn thread_state(payload: &[u8]) -> Result<ThreadState> {
    let s: ThreadState = exactly(payload)?;
    check_thread(&s)?;
    Ok(s)
}

/// The [`ThreadState`] the thread routine of thread `tid` wrote at the start of its slot
/// `slot` (bytes read back from the task); `xsave_span` is the XSAVE size it was asked for
/// (0: none).
pub fn thread_slot(slot: &[u8], tid: i32, xsave_span: usize) -> Result<ThreadState> {
    let Some(s) = proto::read::<ThreadState>(slot) else {
        return bad(format!("{}-byte thread slot", slot.len()));
    };
    if s.done != THREAD_DONE ^ tid as u64 {
        return bad("the thread stopped without filling its slot");
    }
    if s.status != 0 {
        return Err(ReplyError::Failed(errno_of(s.status)?));
    }
    if s.xsave_len != 0 && s.xsave_len as usize != xsave_span {
        return bad(format!(
            "XSAVE area of {} bytes, {xsave_span} asked",
            s.xsave_len
        ));
    }
    check_thread(&s)?;
    Ok(s)
}

/// Runs one decoder on `data` (the fuzz target `parasite` and `tests/parasite_replies.rs`):
/// `data[0]` picks it, `data[1]` is how many entries were asked (fds, timers) or the tid, and
/// `data[2..]` is the reply; the asked fds or timer ids are `data[1] + i`. Returns whether
/// the reply was accepted.
pub fn decode_any(data: &[u8]) -> bool {
    let (Some(&pick), Some(&n)) = (data.first(), data.get(1)) else {
        return false;
    };
    let body = &data[2..];
    let asked: Vec<i32> = (0..i32::from(n)).map(|i| i32::from(n) + i).collect();
    match pick % 10 {
        0 => header(u32::from(n), body).is_ok(),
        1 => byte_count(body, u64::from(n) * 4096).is_ok(),
        2 => pipe_fd(body).is_ok(),
        3 => fd_opts(body, &asked, usize::from(n)).is_ok(),
        4 => sigactions(body).is_ok(),
        5 => misc(body).is_ok(),
        6 => posix_timers(body, &asked).is_ok(),
        7 => thread_state(body).is_ok(),
        8 => thread_slot(body, i32::from(n), usize::from(n) * 64).is_ok(),
        _ => thread_note(body).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(cmd: u32, status: i32, len: u32, payload: &[u8]) -> Vec<u8> {
        let h = ReplyHeader {
            cmd,
            status,
            len,
            pad: 0,
        };
        let mut v = bytes_of(&h).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn headers_that_lie_are_errors() {
        assert_eq!(header(5, &msg(5, 0, 3, b"abc")), Ok(&b"abc"[..]));
        assert_eq!(
            header(5, &msg(5, -13, 0, b"")),
            Err(ReplyError::Failed(Errno::EACCES))
        );
        for m in [
            msg(6, 0, 3, b"abc"),        // another command
            msg(5, 0, 4, b"abc"),        // length too long
            msg(5, 0, 2, b"abc"),        // too short
            msg(5, 0, u32::MAX, b"abc"), // huge
            msg(5, i32::MIN, 0, b""),    // not an errno (-i32::MIN overflows)
            msg(5, 7, 0, b""),           // positive status
            msg(5, -4096, 0, b""),       // past the errno range
            msg(5, -1, 3, b"abc"),       // failure with a payload
            vec![0; 15],                 // shorter than a header
        ] {
            assert!(
                matches!(header(5, &m), Err(ReplyError::Malformed(_))),
                "{m:?}"
            );
        }
    }

    #[test]
    fn counts_and_sizes_must_match_the_request() {
        assert_eq!(byte_count(&8192u64.to_le_bytes(), 8192), Ok(8192));
        assert!(byte_count(&4096u64.to_le_bytes(), 8192).is_err());
        assert!(byte_count(&8192u64.to_le_bytes()[..7], 8192).is_err());
        assert!(byte_count(&[0; 16], 0).is_err());
        assert_eq!(pipe_fd(&7i32.to_le_bytes()), Ok(7));
        assert!(pipe_fd(&(-1i32).to_le_bytes()).is_err());
        assert!(pipe_fd(&[]).is_err());
        let opts = [FdOpts {
            fd: 3,
            fd_flags: 1,
            ..Default::default()
        }];
        assert!(fd_opts(bytes_of_slice(&opts), &[3], 1).is_ok());
        assert!(fd_opts(bytes_of_slice(&opts), &[3], 2).is_err(), "fd count");
        assert!(
            fd_opts(bytes_of_slice(&opts), &[4], 1).is_err(),
            "another fd"
        );
        assert!(
            fd_opts(bytes_of_slice(&opts), &[3, 4], 2).is_err(),
            "entry count"
        );
        let wild = [FdOpts {
            fd: 3,
            signum: 1000,
            ..Default::default()
        }];
        assert!(fd_opts(bytes_of_slice(&wild), &[3], 1).is_err());
        assert!(sigactions(&[0; 64 * 32]).is_ok());
        assert!(sigactions(&[0; 63 * 32]).is_err());
        assert!(sigactions(&[0xff; 64 * 32]).is_err(), "kernel addresses");
        let t = [PosixTimerState {
            id: 9,
            ..Default::default()
        }];
        assert!(posix_timers(bytes_of_slice(&t), &[9]).is_ok());
        assert!(posix_timers(bytes_of_slice(&t), &[8]).is_err());
        assert!(posix_timers(bytes_of_slice(&t), &[9, 9]).is_err());
        assert!(posix_timers(&[], &[]).unwrap().is_empty());
    }

    fn good_thread() -> ThreadState {
        let mut s = ThreadState {
            tid_address: 0x7fff_0000,
            ..Default::default()
        };
        s.comm[..4].copy_from_slice(b"a/..");
        s
    }

    #[test]
    fn thread_states_out_of_range_are_errors() {
        // A name with '/' and '..' is a valid name: it is never used as a path.
        assert!(thread_state(bytes_of(&good_thread())).is_ok());
        let mut s = good_thread();
        s.tid_address = 0xffff_8000_0000_0000;
        assert!(thread_state(bytes_of(&s)).is_err());
        let mut s = good_thread();
        s.altstack_sp = 0x7fff_0000;
        s.altstack_size = u64::MAX;
        assert!(thread_state(bytes_of(&s)).is_err(), "overflowing altstack");
        let mut s = good_thread();
        s.comm = [b'x'; 16];
        assert!(thread_state(bytes_of(&s)).is_err(), "name without NUL");
        let mut s = good_thread();
        s.ngroups = -1;
        assert!(thread_state(bytes_of(&s)).is_err());
        assert!(thread_state(&bytes_of(&good_thread())[1..]).is_err());
    }

    #[test]
    fn thread_slots_name_their_thread() {
        let mut s = good_thread();
        s.done = THREAD_DONE ^ 42;
        let mut slot = bytes_of(&s).to_vec();
        slot.resize(4096, 0);
        assert!(thread_slot(&slot, 42, 0).is_ok());
        assert!(thread_slot(&slot, 43, 0).is_err(), "another thread's slot");
        assert!(thread_slot(&slot[..100], 42, 0).is_err());
        s.xsave_len = 4096;
        assert!(thread_slot(bytes_of(&s), 42, 832).is_err());
        s.xsave_len = 0;
        s.status = i32::MIN;
        assert!(matches!(
            thread_slot(bytes_of(&s), 42, 0),
            Err(ReplyError::Malformed(_))
        ));
        assert_eq!(thread_note(&(THREAD_DONE ^ 42).to_le_bytes()), Some(42));
        assert_eq!(thread_note(&THREAD_DONE.to_le_bytes()), None);
        assert_eq!(thread_note(&[0; 9]), None);
    }
}
