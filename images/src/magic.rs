//! magic (work in progress)
