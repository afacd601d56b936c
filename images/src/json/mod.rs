//! crit-compatible JSON (work in progress)
