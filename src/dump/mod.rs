//! The dump engine: freeze a process tree, collect its state (with the parasite's help) and
//! write CRIU-compatible images.

pub mod options;

pub use options::DumpOptions;
