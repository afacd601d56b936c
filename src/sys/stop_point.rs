//! Named points where the dumper can be made to stop itself (`SIGSTOP`), so that a test can
//! kill it there: `STASIS_STOP_AT=<point>` in the environment (read once). A killed dumper
//! must leave its target as it was, at every one of these points.
//!
//! ```text
//! frozen    the --freeze-cgroup cgroup is frozen, nothing seized yet
//! seized    every thread of the tree is seized and stopped (the cgroup thawed)
//! inject    the parasite's area is mapped and written, its socket made, not started
//! serve     the leader runs the parasite, which waits for commands
//! threads   every other thread ran the thread routine and waits in its final poll
//! pages     the parasite has spliced or pinned the first pages (more batches in flight;
//!           pinned pages of earlier processes may be with the page writers)
//! cure      FINI answered, the leader stopped in the parasite's wait for the hang-up
//! ```

use std::sync::OnceLock;

/// Stops the calling process (`SIGSTOP`) if `STASIS_STOP_AT` names `point`.
pub fn stop_point(point: &str) {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("STASIS_STOP_AT").ok());
    if at.as_deref() == Some(point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}
