//! The dump engine: freeze a process tree, collect its state (from /proc, ptrace and system
//! calls run inside the stopped tasks) and write CRIU-compatible images.
//!
//! Modules: [`engine`] drives the phases; [`tree`], [`core`], [`mm`], [`pages`], [`files`]
//! (regular files, pipes, memfd, ghosts; every other fd kind goes to [`crate::files`], the
//! table the restore engine uses too), [`misc_images`] turn collected state into image
//! entries; [`images_out`] is the only place that knows the file framing; [`freeze`] and [`probe`] are the boundary to the layers that
//! stop tasks and look inside them, [`ptrace_backend`] the backend `stasis dump` uses (to be
//! replaced by the parasite for in-task state and pages); [`xsave`] converts the XSAVE area;
//! [`fault`] injects failures and turns stop signals into errors; [`profile`] times phases for
//! `--stats` and `--profile`.

pub mod core;
pub mod dedup;
pub mod dirty;
pub mod elf;
pub mod engine;
pub mod error;
pub mod extras;
pub mod fault;
pub mod files;
pub mod freeze;
pub mod images_out;
pub mod lazy;
pub mod misc_images;
pub mod mm;
pub mod options;
pub mod page_out;
pub mod page_writers;
pub mod pages;
pub mod parasite_pages;
pub mod predump;
pub mod probe;
pub mod profile;
pub mod ptrace_backend;
pub mod seccomp;
pub mod tree;
pub mod xsave;

pub use engine::{run, DumpReport};
pub use error::DumpError;
pub use options::DumpOptions;
