//! timerfd: clock, settime flags, time left, interval and unread expirations.
//!
//! ```text
//!  fdinfo:  clockid: 1
//!           ticks: 0
//!           settime flags: 01          (octal; TFD_TIMER_ABSTIME 1)
//!           it_value: (0, 49406829)    (time left, sec + nsec)
//!           it_interval: (1, 0)
//!  image:   file_entry {type TIMERFD, tfd {id, flags, fown, clockid, ticks, settime_flags,
//!                                          vsec, vnsec, isec, insec}}
//! ```
//! Restore arms the timer with the time left (made absolute again for `TFD_TIMER_ABSTIME`
//! timers) and puts the unread expirations back with `TFD_IOC_SET_TICKS`. A periodic timer
//! that expired unread shows no time left; it is re-armed one interval ahead.

use std::os::fd::{BorrowedFd, OwnedFd};

use stasis_images::pb;

use super::common::{self, FdInfo};
use super::error::{image, sys, At, Result};
use super::{DumpFd, DumpState, KindOps, RestoreCtx, Targets};
use crate::sys::fdkinds;

const KIND: &str = "timerfd";
const NSEC: u64 = 1_000_000_000;

pub const OPS: KindOps = KindOps {
    name: KIND,
    fd_type: pb::FdTypes::Timerfd,
    matches,
    dump,
    restore,
    stage: super::stage0,
};

fn matches(link: &str, _: BorrowedFd<'_>) -> bool {
    super::anon(link) == Some("[timerfd]")
}

/// `(a, b)` → (a, b).
fn pair(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')?
        .split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// Dumps a timerfd.
pub fn dump(d: &DumpFd<'_>, _st: &mut DumpState) -> Result<pb::FileEntry> {
    let at = d.at();
    let info = FdInfo::parse(KIND, at, d.fdinfo)?;
    let num = |key: &'static str, radix: u32| -> Result<u64> {
        let (line, v) = info.first(KIND, at, key)?;
        u64::from_str_radix(v, radix).map_err(|e| common::bad(KIND, at, line, key, e))
    };
    let clockid = num("clockid", 10)?;
    let ticks = num("ticks", 10)?;
    let settime_flags = num("settime flags", 8)?;
    let times = |key: &'static str| -> Result<(u64, u64)> {
        let (line, v) = info.first(KIND, at, key)?;
        pair(v).ok_or_else(|| common::bad(KIND, at, line, key, format!("not (sec, nsec): {v:?}")))
    };
    let (vsec, vnsec) = times("it_value")?;
    let (isec, insec) = times("it_interval")?;
    let mut e = super::file_entry(pb::FdTypes::Timerfd, d.id);
    e.tfd = Some(pb::TimerfdEntry {
        id: d.id,
        flags: info.flags,
        fown: common::dump_fown(KIND, at, d.file)?,
        clockid: clockid as u32,
        ticks,
        settime_flags: settime_flags as u32,
        vsec,
        vnsec,
        isec,
        insec,
    });
    Ok(e)
}

fn ts(sec: u64, nsec: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec.min(i64::MAX as u64) as i64,
        tv_nsec: (nsec % NSEC) as i64,
    }
}

/// Restores a timerfd (armed, with its pending expirations).
pub fn restore(e: &pb::FileEntry, _ctx: &mut RestoreCtx<'_>, _: Targets<'_>) -> Result<OwnedFd> {
    let at = At::Id(e.id);
    let t = e
        .tfd
        .as_ref()
        .ok_or_else(|| image(KIND, at, "no tfd member"))?;
    let clock = t.clockid as i32;
    if ![
        libc::CLOCK_REALTIME,
        libc::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME,
    ]
    .contains(&clock)
    {
        return Err(image(
            KIND,
            at,
            format!("clock {clock} is not a timerfd clock"),
        ));
    }
    if t.vnsec >= NSEC || t.insec >= NSEC {
        return Err(image(KIND, at, "nanoseconds out of range"));
    }
    let fd = fdkinds::timerfd_create(clock, libc::TFD_CLOEXEC).map_err(sys(
        KIND,
        at,
        "timerfd_create",
    ))?;
    common::restore_params(KIND, e.id, &fd, t.flags, &t.fown)?;
    let mut value = ts(t.vsec, t.vnsec);
    let mut flags = t.settime_flags as i32;
    if t.vsec == 0 && t.vnsec == 0 && (t.isec != 0 || t.insec != 0) {
        // A periodic timer that expired and was not read shows no time left: a zero value
        // would disarm it, so it next fires one interval from now.
        value = ts(t.isec, t.insec);
        flags &= !libc::TFD_TIMER_ABSTIME;
    }
    if flags & libc::TFD_TIMER_ABSTIME != 0 && (t.vsec != 0 || t.vnsec != 0) {
        let now = fdkinds::clock_gettime(clock).map_err(sys(KIND, at, "clock_gettime"))?;
        let ns = value.tv_nsec + now.tv_nsec;
        value.tv_sec = value
            .tv_sec
            .saturating_add(now.tv_sec)
            .saturating_add(ns / NSEC as i64);
        value.tv_nsec = ns % NSEC as i64;
    }
    let spec = libc::itimerspec {
        it_interval: ts(t.isec, t.insec),
        it_value: value,
    };
    fdkinds::timerfd_settime(&fd, flags, &spec).map_err(sys(KIND, at, "timerfd_settime"))?;
    if t.ticks != 0 {
        fdkinds::timerfd_set_ticks(&fd, t.ticks).map_err(sys(KIND, at, "TFD_IOC_SET_TICKS"))?;
    }
    Ok(fd)
}
