//! The cross-process lock `/tmp/stasis-restore-tests.lock` (flock, exclusive) taken by every
//! test that restores, or launches workloads at fixed PIDs, so parallel tests and test binaries
//! don't collide on PIDs or result files. Separate opens of the file conflict with each other
//! even in one process, so it serializes the tests of one binary too. Shared with the engine's
//! unit tests (included with `#[path]`).

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// Path of the lock file.
pub const LOCK_PATH: &str = "/tmp/stasis-restore-tests.lock";

/// How many locks this process holds (for [`held`]).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The lock, held until dropped.
pub struct RestoreLock {
    _flock: Flock<File>,
}

/// Blocks until this test holds the lock.
pub fn restore_lock() -> RestoreLock {
    let f = File::create(LOCK_PATH).expect("create the restore lock file");
    let flock = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock the restore lock file");
    HELD.fetch_add(1, Ordering::SeqCst);
    RestoreLock { _flock: flock }
}

impl Drop for RestoreLock {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether some test of this process holds the lock (launchers assert it).
pub fn held() -> bool {
    HELD.load(Ordering::SeqCst) > 0
}
