//! sys (work in progress)
pub mod clone3;
pub mod cpu;
pub mod fdkinds;
pub mod fds;
pub mod pod;
pub mod restorer;
#[cfg(test)]
mod restorer_fixture_tests;
#[cfg(test)]
mod restorer_tests;
pub mod sock_diag;
pub mod socket;
pub mod tracee;
pub mod tty;
