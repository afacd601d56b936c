//! Named points where the dumper can be made to stop itself (`SIGSTOP`), so that a test can
//! kill it there: `STASIS_STOP_AT=<point>` (the first time the dumper passes it) or
//! `<point>:<n>` (the n-th time, from 1) in the environment (read once). A killed dumper
//! must leave its target as it was, at every one of these points.
//!
//! ```text
//! frozen    the --freeze-cgroup cgroup is frozen, nothing seized yet
//! seized    every thread of the tree is seized and stopped (the cgroup thawed)
//! remote-frame   a remote syscall (sys::remote; the parasite's mmap is the first, then
//!                socketpair and close; the cure's close and munmap): return frame written,
//!                gadget poked, registers still the task's
//! remote-set     registers and mask set for the call, not resumed
//! remote-entry   the task in the call's syscall-entry stop
//! remote-exit    the call done, the task in its syscall-exit stop
//! remote-parked  the task parked in an event stop, registers still ours
//! remote-mask    its mask back, registers still ours
//! remote-regs    its registers back, the gadget still poked
//! start     the leader's registers point at the parasite's entry, not resumed
//! inject    the parasite's area is mapped and written, its socket made, not started
//! serve     the leader runs the parasite, which waits for commands
//! threads   every other thread ran the thread routine and waits in its final poll
//! pages     the parasite has spliced or pinned the first pages (more batches in flight;
//!           pinned pages of earlier processes may be with the page writers)
//! cure      FINI answered, the leader stopped in the parasite's wait for the hang-up
//! migrate-stopped  `stasis migrate`: the final dump left the tree stopped, its guardian
//!                  runs, nothing sent to the destination yet
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// Stops the calling process (`SIGSTOP`) if `STASIS_STOP_AT` names `point` (and this is the
/// time it asks for).
pub fn stop_point(point: &str) {
    static AT: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static HITS: AtomicU32 = AtomicU32::new(0);
    let at = AT.get_or_init(|| std::env::var("STASIS_STOP_AT").ok().map(|v| parse(&v)));
    let Some((name, nth)) = at else { return };
    if name == point && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *nth {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// `point` or `point:n` (n from 1; anything else counts as 1).
fn parse(v: &str) -> (String, u32) {
    match v.rsplit_once(':') {
        Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1).max(1)),
        None => (v.to_string(), 1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn point_and_count() {
        assert_eq!(super::parse("seized"), ("seized".into(), 1));
        assert_eq!(super::parse("remote-exit:3"), ("remote-exit".into(), 3));
        assert_eq!(super::parse("remote-exit:0"), ("remote-exit".into(), 1));
    }
}
