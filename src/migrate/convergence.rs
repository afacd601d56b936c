//! When to stop pre-copying: predict the frozen time of the final dump from what the
//! iterations measured, and stop as soon as it meets the budget, or when iterations stop
//! paying, or at the iteration limit (P.Haul's fixed rules, 64 pages / 10 % growth / 8
//! iterations, ignore both the rate and the link).
//!
//! ```text
//!  iteration i (a pre-dump): armed at its freeze; sent pages_i in copy_us_i
//!  window_i  = time between the freezes of i-1 and i    (what accumulated pages_i)
//!  rate      = pages_i / window_i                        (pages dirtied per second, i ≥ 1)
//!  bandwidth = bytes_i / copy_us_i                       (what the link took)
//!  if we stop now, the final dump finds what was dirtied since i's freeze, roughly
//!  rate × (copy_us_i + frozen_us_i), and copies it frozen:
//!  predicted = overhead + dirty × 4096 / bandwidth       (overhead: 2 × frozen_us_i, the
//!                                                         non-memory state and the restore)
//!  stop when: predicted ≤ budget  │  pages_i > 90 % of pages_{i-1}, i ≥ 2 (the dirty set
//!             is not shrinking; iteration 0 copied everything and compares with nothing)
//!             │  i + 1 = max iterations
//! ```

use std::fmt;

/// What one iteration measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Pages sent.
    pub pages: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Time the tree was frozen (µs).
    pub frozen_us: u64,
    /// Time to send the pages after the release (µs).
    pub copy_us: u64,
    /// Time since the previous iteration's freeze (µs; 0 for the first).
    pub window_us: u64,
}

/// The limits given on the command line.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `--max-downtime` (µs).
    pub max_downtime_us: u64,
    /// `--max-iterations` (pre-dumps before the final dump, at least 1).
    pub max_iterations: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_downtime_us: 300_000,
            max_iterations: 8,
        }
    }
}

/// Why the pre-copy stopped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// The predicted frozen time meets the budget.
    Converged { predicted_us: u64 },
    /// The dirty set did not shrink: another iteration would copy as much again.
    NotPaying { pages: u64, previous: u64 },
    /// `--max-iterations` reached.
    MaxIterations { predicted_us: Option<u64> },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Converged { predicted_us } => write!(
                f,
                "converged: predicted downtime {} ms within --max-downtime",
                predicted_us / 1000
            ),
            Stop::NotPaying { pages, previous } => write!(
                f,
                "iterations stopped paying: {pages} dirty pages after {previous} (not shrinking)"
            ),
            Stop::MaxIterations { predicted_us } => match predicted_us {
                Some(p) => write!(
                    f,
                    "--max-iterations reached (predicted downtime {} ms)",
                    p / 1000
                ),
                None => write!(f, "--max-iterations reached"),
            },
        }
    }
}

/// The running decision over the iterations so far.
#[derive(Debug, Default)]
pub struct Convergence {
    policy: Policy,
    samples: Vec<Sample>,
}

impl Convergence {
    pub fn new(policy: Policy) -> Self {
        Convergence {
            policy,
            samples: Vec::new(),
        }
    }

    /// The iterations recorded so far.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Pages dirtied per second, as of the last iteration (None before the second).
    pub fn dirty_rate(&self) -> Option<f64> {
        let s = self.samples.last()?;
        if self.samples.len() < 2 || s.window_us == 0 {
            return None;
        }
        Some(s.pages as f64 * 1e6 / s.window_us as f64)
    }

    /// Bytes per µs the link took, over every iteration (None before anything was timed).
    pub fn bandwidth(&self) -> Option<f64> {
        let (b, t) = self
            .samples
            .iter()
            .fold((0u64, 0u64), |(b, t), s| (b + s.bytes, t + s.copy_us));
        (t > 0 && b > 0).then(|| b as f64 / t as f64)
    }

    /// The frozen time of a final dump started now (µs), when it can be predicted.
    pub fn predicted_downtime_us(&self) -> Option<u64> {
        let s = self.samples.last()?;
        let rate = self.dirty_rate()?;
        let bw = self.bandwidth()?;
        let dirty = rate * (s.copy_us + s.frozen_us) as f64 / 1e6;
        let copy = dirty * 4096.0 / bw;
        Some(2 * s.frozen_us + copy as u64)
    }

    /// Records an iteration; Some(reason) when the pre-copy should stop.
    pub fn record(&mut self, s: Sample) -> Option<Stop> {
        self.samples.push(s);
        let predicted = self.predicted_downtime_us();
        if let Some(p) = predicted {
            if p <= self.policy.max_downtime_us {
                return Some(Stop::Converged { predicted_us: p });
            }
        }
        let n = self.samples.len();
        // Dirty sets compare with dirty sets: the first iteration copied everything.
        if n >= 3 {
            let previous = self.samples[n - 2].pages;
            if s.pages * 10 > previous * 9 {
                return Some(Stop::NotPaying {
                    pages: s.pages,
                    previous,
                });
            }
        }
        if n as u32 >= self.policy.max_iterations.max(1) {
            return Some(Stop::MaxIterations {
                predicted_us: predicted,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pages: u64, copy_ms: u64, window_ms: u64) -> Sample {
        Sample {
            pages,
            bytes: pages * 4096,
            frozen_us: 2_000,
            copy_us: copy_ms * 1000,
            window_us: window_ms * 1000,
        }
    }

    fn policy(ms: u64, n: u32) -> Policy {
        Policy {
            max_downtime_us: ms * 1000,
            max_iterations: n,
        }
    }

    #[test]
    fn a_slow_writer_converges_after_the_second_iteration() {
        let mut c = Convergence::new(policy(50, 8));
        // 1 GiB (262144 pages) in 1 s: 1 GiB/s; no rate yet.
        assert_eq!(c.record(sample(262_144, 1000, 0)), None);
        // 1000 pages dirtied in that 1 s window, sent in 4 ms: 1000 pages/s; stopping now
        // leaves about 6 pages: 4 ms of overhead and nothing to speak of.
        match c.record(sample(1000, 4, 1004)) {
            Some(Stop::Converged { predicted_us }) => assert!(predicted_us < 5_000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_writer_faster_than_the_link_stops_paying() {
        let mut c = Convergence::new(policy(50, 8));
        assert_eq!(c.record(sample(200_000, 800, 0)), None);
        assert_eq!(c.record(sample(100_000, 400, 802)), None);
        // 95000 pages dirtied in 400 ms: the dirty set hardly shrinks, far above budget.
        assert_eq!(
            c.record(sample(95_000, 380, 402)),
            Some(Stop::NotPaying {
                pages: 95_000,
                previous: 100_000
            })
        );
    }

    #[test]
    fn a_shrinking_set_above_budget_iterates_until_the_limit() {
        let mut c = Convergence::new(policy(1, 3));
        assert_eq!(c.record(sample(100_000, 400, 0)), None);
        assert_eq!(c.record(sample(50_000, 200, 402)), None);
        match c.record(sample(25_000, 100, 202)) {
            Some(Stop::MaxIterations {
                predicted_us: Some(p),
            }) => assert!(p > 1000, "{p}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_iteration_allowed_stops_at_once() {
        let mut c = Convergence::new(policy(50, 1));
        assert_eq!(
            c.record(sample(10, 1, 0)),
            Some(Stop::MaxIterations { predicted_us: None })
        );
    }

    #[test]
    fn the_prediction_follows_rate_and_bandwidth() {
        let mut c = Convergence::new(policy(0, 100));
        c.record(sample(262_144, 1000, 0));
        // 10000 pages in a 1 s window: 10000 pages/s; 1 GiB/s link (same bytes per µs).
        c.record(sample(10_000, 40, 1000));
        let rate = c.dirty_rate().unwrap();
        assert!((rate - 10_000.0).abs() < 1.0, "{rate}");
        // dirty after stopping: 10000/s × 42 ms = 420 pages = 1.72 MB at ~1.07 GB/s.
        let p = c.predicted_downtime_us().unwrap();
        assert!((4_000 + 1_500..4_000 + 1_800).contains(&p), "{p}");
    }
}
