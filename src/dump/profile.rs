//! Timing of the dump's phases: per-phase totals for `--stats` and `stats-dump`, and a Chrome
//! trace (`chrome://tracing` / Perfetto JSON: `{"traceEvents":[{"ph":"X",...}]}`) for
//! `--profile`, with one span per phase and per task/thread.

use std::time::Instant;

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub category: &'static str,
    pub tid: i32,
    pub start_us: u64,
    pub dur_us: u64,
}

/// Collects spans relative to the start of the dump.
#[derive(Debug)]
pub struct Profile {
    t0: Instant,
    spans: Vec<Span>,
}

impl Default for Profile {
    fn default() -> Self {
        Self::new()
    }
}

impl Profile {
    pub fn new() -> Self {
        Profile {
            t0: Instant::now(),
            spans: Vec::new(),
        }
    }

    /// Microseconds since the start.
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// Runs `f` inside a span.
    pub fn span<T>(
        &mut self,
        name: &str,
        category: &'static str,
        tid: i32,
        f: impl FnOnce(&mut Self) -> T,
    ) -> T {
        let start = self.now_us();
        let r = f(self);
        let end = self.now_us();
        self.spans.push(Span {
            name: name.to_string(),
            category,
            tid,
            start_us: start,
            dur_us: end - start,
        });
        r
    }

    /// Adds a finished span.
    pub fn record(&mut self, name: &str, category: &'static str, tid: i32, start_us: u64) {
        let end = self.now_us();
        self.spans.push(Span {
            name: name.to_string(),
            category,
            tid,
            start_us,
            dur_us: end.saturating_sub(start_us),
        });
    }

    /// Total microseconds of the spans named `name` in `category`.
    pub fn total_us(&self, category: &str, name: &str) -> u64 {
        self.spans
            .iter()
            .filter(|s| s.category == category && s.name == name)
            .map(|s| s.dur_us)
            .sum()
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// The Chrome trace JSON.
    pub fn chrome_trace(&self) -> serde_json::Value {
        let pid = std::process::id();
        let ev: Vec<serde_json::Value> = self
            .spans
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "cat": s.category, "ph": "X",
                    "ts": s.start_us, "dur": s.dur_us, "pid": pid, "tid": s.tid,
                })
            })
            .collect();
        serde_json::json!({ "traceEvents": ev, "displayTimeUnit": "ms" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_nest_and_serialize() {
        let mut p = Profile::new();
        p.span("outer", "phase", 0, |p| p.span("inner", "task", 7, |_| ()));
        assert_eq!(p.spans().len(), 2);
        let j = p.chrome_trace();
        let ev = j["traceEvents"].as_array().unwrap();
        assert_eq!(ev[0]["name"], "inner");
        assert_eq!(ev[1]["ph"], "X");
        assert!(ev[1]["dur"].as_u64().unwrap() >= ev[0]["dur"].as_u64().unwrap());
    }
}
