//! restore (work in progress)
