//! dump (work in progress)
