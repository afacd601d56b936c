//! error (work in progress)
