//! pagemap (work in progress)
