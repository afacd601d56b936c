//! `seccomp.img`: the classic-BPF filter chains of every thread, shared chains stored once.
//!
//! ```text
//!  thread A: f0 <- f1            seccomp.img  [0] f0
//!  thread B: f0 <- f1 <- f2                   [1] f1  prev 0
//!  thread C: g0                               [2] f2  prev 1
//!                                             [3] g0
//!  core-A.thread_core {seccomp_mode 2, seccomp_filter 1}, B -> 2, C -> 3
//! ```
//!
//! A filter is identified by its program, its flags and the filter before it, so threads
//! (and processes, after fork) that inherited a chain point into the same entries, like CRIU.
//! Filters are read with PTRACE_SECCOMP_GET_FILTER: the thread must be ptrace-stopped by the
//! dumping thread. Threads without filters get no seccomp fields in their core.

use std::collections::HashMap;

use stasis_images::pb;

use super::error::{DumpError, Result};
use crate::sys::seccomp as sys;

/// `SECCOMP_MODE_STRICT`, `SECCOMP_MODE_FILTER`.
pub const MODE_STRICT: u32 = 1;
pub const MODE_FILTER: u32 = 2;

/// The seccomp fields of one thread's `thread_core`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadSeccomp {
    /// [`MODE_STRICT`] or [`MODE_FILTER`].
    pub mode: u32,
    /// Index of its newest filter in `seccomp.img` (filter mode).
    pub filter: Option<u32>,
}

impl ThreadSeccomp {
    /// Sets the fields in `tc`.
    pub fn apply(self, tc: &mut pb::ThreadCoreEntry) {
        // The modes are 1 and 2.
        tc.seccomp_mode = Some(self.mode as i32);
        tc.seccomp_filter = self.filter;
    }
}

/// All filters seen so far, in image order.
#[derive(Debug, Default)]
pub struct Filters {
    /// (program, flags, prev).
    entries: Vec<(Vec<u8>, u64, Option<u32>)>,
    by_key: HashMap<(Vec<u8>, u64, Option<u32>), u32>,
}

impl Filters {
    pub fn new() -> Self {
        Filters::default()
    }

    /// Adds a chain (oldest first); returns the index of its newest filter.
    pub fn add_chain(&mut self, chain: &[sys::Filter]) -> Option<u32> {
        let mut prev = None;
        for f in chain {
            let key = (f.prog.clone(), f.flags, prev);
            let idx = match self.by_key.get(&key) {
                Some(&i) => i,
                None => {
                    let i = self.entries.len() as u32;
                    self.entries.push(key.clone());
                    self.by_key.insert(key, i);
                    i
                }
            };
            prev = Some(idx);
        }
        prev
    }

    /// The seccomp fields of thread `tid` of `pid` in seccomp mode `mode` (from its
    /// /proc status), to merge into its `thread_core`: none for mode 0.
    pub fn thread(&mut self, pid: i32, tid: i32, mode: u32) -> Result<Option<ThreadSeccomp>> {
        match mode {
            0 => Ok(None),
            MODE_STRICT => Ok(Some(ThreadSeccomp {
                mode: MODE_STRICT,
                filter: None,
            })),
            MODE_FILTER => {
                let chain = sys::filters(tid).map_err(|e| {
                    let errno = e.errno().map(|x| x as i32);
                    let why = match e {
                        crate::sys::error::Error::TaskDied { .. }
                            if std::path::Path::new(&format!("/proc/{pid}/task/{tid}"))
                                .exists() =>
                        {
                            "the thread is not ptrace-stopped by the dumper".to_string()
                        }
                        ref e => e.to_string(),
                    };
                    DumpError::new(
                        "seccomp",
                        pid,
                        errno,
                        format!("thread {tid}: PTRACE_SECCOMP_GET_FILTER: {why}"),
                    )
                })?;
                if let Some(f) = chain.iter().find(|f| u32::try_from(f.flags).is_err()) {
                    return Err(DumpError::new(
                        "seccomp",
                        pid,
                        Some(libc::EINVAL),
                        format!(
                            "thread {tid}: filter flags {:#x} do not fit the image",
                            f.flags
                        ),
                    ));
                }
                let newest = self.add_chain(&chain).ok_or_else(|| {
                    DumpError::new(
                        "seccomp",
                        pid,
                        None,
                        format!("thread {tid} is in seccomp filter mode but has no filter"),
                    )
                })?;
                Ok(Some(ThreadSeccomp {
                    mode: MODE_FILTER,
                    filter: Some(newest),
                }))
            }
            m => Err(DumpError::new(
                "seccomp",
                pid,
                Some(libc::EINVAL),
                format!("thread {tid}: unknown seccomp mode {m}"),
            )),
        }
    }

    /// The `seccomp_entry` (empty when no thread has filters, as CRIU writes it).
    pub fn entry(&self) -> pb::SeccompEntry {
        pb::SeccompEntry {
            seccomp_filters: self
                .entries
                .iter()
                .map(|(prog, flags, prev)| pb::SeccompFilter {
                    filter: prog.clone(),
                    prev: *prev,
                    // Checked to fit by `thread`.
                    flags: (*flags != 0).then(|| u32::try_from(*flags).unwrap_or(u32::MAX)),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(b: u8) -> sys::Filter {
        sys::Filter {
            prog: vec![b; 8],
            flags: 0,
        }
    }

    #[test]
    fn shared_chains_are_stored_once() {
        let mut t = Filters::new();
        assert_eq!(t.add_chain(&[f(1), f(2)]), Some(1));
        assert_eq!(t.add_chain(&[f(1), f(2), f(3)]), Some(2));
        assert_eq!(t.add_chain(&[f(9)]), Some(3));
        assert_eq!(t.add_chain(&[f(1), f(2)]), Some(1));
        // Same program after a different filter is another entry.
        assert_eq!(t.add_chain(&[f(9), f(2)]), Some(4));
        let l = t.entry().seccomp_filters;
        assert_eq!(l.len(), 5);
        assert_eq!(l[0].prev, None);
        assert_eq!(l[2].prev, Some(1));
        assert_eq!(l[4].prev, Some(3));
        assert_eq!(Filters::new().entry(), pb::SeccompEntry::default());
        assert_eq!(t.add_chain(&[]), None);
    }
}
