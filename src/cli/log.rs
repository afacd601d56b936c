//! The log's line format, as CRIU writes it (criu/log.c, criu/include/log.h):
//!
//! ```text
//!  (00.012345) Error (src/dump/engine.rs:123): collect-tree: task 42: ...   level 1, errors
//!  (00.012400) Warn  (src/restore/mod.rs:88): the restorer area stays ...   level 2
//!  (00.012500) every task is in its restorer blob, ready, after 3ms          levels 3, 4
//! ```
//!
//! The `(seconds.microseconds)` prefix, time since the log opened, appears at `-v3` and
//! above, as with CRIU. Tools that drive CRIU (runc, for one) look for `Error` lines in the log.

use std::fmt;
use std::time::Instant;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// CRIU's line format.
pub struct CriuFormat {
    start: Instant,
    timestamps: bool,
}

impl CriuFormat {
    /// With `(ss.uuuuuu)` timestamps when `timestamps` (CRIU: log level 3 and above).
    pub fn new(timestamps: bool) -> Self {
        CriuFormat {
            start: Instant::now(),
            timestamps,
        }
    }
}

impl<S, N> FormatEvent<S, N> for CriuFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.timestamps {
            let t = self.start.elapsed();
            write!(w, "({:02}.{:06}) ", t.as_secs(), t.subsec_micros())?;
        }
        let m = event.metadata();
        let file = m.file().unwrap_or("?");
        let line = m.line().unwrap_or(0);
        match *m.level() {
            Level::ERROR => write!(w, "Error ({file}:{line}): ")?,
            Level::WARN => write!(w, "Warn  ({file}:{line}): ")?,
            _ => {}
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
