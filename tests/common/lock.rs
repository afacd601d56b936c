//! The cross-process lock `/tmp/stasis-restore-tests.lock` (flock, exclusive) taken by every
//! test that restores, or launches workloads at fixed PIDs, so parallel tests and test binaries
//! don't collide on PIDs or result files. Separate opens of the file conflict with each other
//! even in one process, so it serializes the tests of one binary too. Shared with the engine's
//! unit tests (included with `#[path]`).
//!
//! Taking the lock also widens the PID space (`kernel.pid_max` to 4194304, the x86-64 limit)
//! when it is narrower: the fixtures restore at fixed PIDs near 30000, and with the default
//! 32768 the kernel hands PIDs of that range to ordinary processes (compilers, other tests)
//! every few thousand forks on a busy machine. With a wide space, new PIDs stay above the
//! fixed ranges until the counter wraps at four million.

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

/// The PID space the fixed-PID tests want (the largest `pid_max` on 64-bit kernels).
const WIDE_PID_MAX: u64 = 4 * 1024 * 1024;

/// Raises `kernel.pid_max` to [`WIDE_PID_MAX`] when it is lower.
fn widen_pid_space() {
    const PATH: &str = "/proc/sys/kernel/pid_max";
    let now: u64 = std::fs::read_to_string(PATH)
        .expect("read kernel.pid_max")
        .trim()
        .parse()
        .expect("kernel.pid_max is a number");
    if now < WIDE_PID_MAX {
        std::fs::write(PATH, WIDE_PID_MAX.to_string())
            .unwrap_or_else(|e| panic!("raise kernel.pid_max from {now} (needs root): {e}"));
    }
}

/// Blocks until this test holds the lock.
pub fn restore_lock() -> RestoreLock {
    widen_pid_space();
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
