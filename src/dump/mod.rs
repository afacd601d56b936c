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

pub(crate) mod collect_files;
pub(crate) mod core_image;
pub mod dedup;
pub mod dirty;
pub(crate) mod elf;
pub(crate) mod engine;
pub mod error;
pub(crate) mod extras;
pub mod fault;
pub mod freeze;
pub mod images_out;
pub mod lazy;
pub(crate) mod misc_images;
pub(crate) mod mm;
pub(crate) mod namespaces;
pub(crate) mod options;
pub(crate) mod page_out;
pub mod page_writers;
pub(crate) mod pages;
pub(crate) mod parasite_pages;
pub(crate) mod predump;
pub mod probe;
pub(crate) mod profile;
pub mod ptrace_backend;
pub(crate) mod seccomp;
pub mod tree;
pub(crate) mod xsave;

pub use engine::{run, DumpReport};
pub use error::DumpError;
pub use options::DumpOptions;
