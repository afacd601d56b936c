//! The restore engine: recreate a process tree from CRIU-compatible images (written by stasis
//! or by CRIU) with its PIDs, memory, threads, files and signals.

pub mod options;

pub use options::RestoreOptions;
pub mod blob_args;
pub mod blob_core;
pub mod vdso;
pub mod xsave;
