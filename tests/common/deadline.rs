//! Test bodies under a timeout: the body runs on its own thread; a body that does not finish
//! in time fails the test instead of hanging it (after `on_fail` killed what it waits on).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Runs `body` with a deadline of `secs` seconds and returns its result. When the body
/// panics or runs out of time, `on_fail` runs first (kill the workload), then the test fails
/// with the body's own panic or with a timeout.
pub fn with_deadline<T: Send + 'static>(
    secs: u64,
    on_fail: impl FnOnce(),
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(RecvTimeoutError::Disconnected) => {
            on_fail();
            match handle.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => panic!("test body ended without a result"),
            }
        }
        Err(RecvTimeoutError::Timeout) => {
            on_fail();
            panic!("test timed out after {secs} s");
        }
    }
}

/// [`with_deadline`] with nothing to kill on failure.
pub fn with_timeout<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    with_deadline(secs, || {}, body)
}
