//! sys (work in progress)
pub mod cpu;
pub mod pod;
pub mod restorer;
