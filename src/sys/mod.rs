//! sys (work in progress)
pub mod cpu;
pub mod pod;
pub mod restorer;
#[cfg(test)]
mod restorer_fixture_tests;
#[cfg(test)]
mod restorer_tests;
