//! sys (work in progress)
pub mod cpu;
pub mod pod;
pub mod restorer;
#[cfg(test)]
mod restorer_tests;
