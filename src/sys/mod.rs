//! sys (work in progress)
pub mod clone3;
pub mod tracee;
pub mod fds;
