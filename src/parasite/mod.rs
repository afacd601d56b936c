//! parasite (work in progress)
