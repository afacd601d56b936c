//! payload (work in progress)
