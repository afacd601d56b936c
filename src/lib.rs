//! stasis: checkpoint/restore of Linux process trees with CRIU-compatible images.
//!
//! Layers, bottom up:
//! - [`sys`]: the only place with raw syscalls, ptrace and `unsafe`;
//! - [`parasite`]: the embedded no_std blobs (dump parasite, restorer) and their protocols;
//! - [`files`]: fd kinds shared by both engines (eventfd, epoll, sockets, ttys, ...);
//! - [`pages`]: the page pipeline (sinks, packed streams, the page-server protocol);
//! - [`dump`] and [`restore`]: the engines ([`regs_image`]: the register conversion both
//!   share; [`cpuinfo`]: the CPU record and check of `--cpu-cap`);
//! - [`rpc`]: CRIU's RPC (`criu swrk`, `criu service`) over the same options and engines;
//! - [`cli`]: the criu-compatible command line (the `stasis` binary is a thin wrapper).
//!
//! The image format lives in its own crate, re-exported as [`images`].

pub use stasis_images as images;

pub(crate) mod action_scripts;
pub mod migrate;

pub(crate) mod cgroup;
pub mod cli;
pub mod cpuinfo;
pub mod dump;
pub mod files;
pub(crate) mod pages;
pub mod parasite;
pub mod privileges;
pub(crate) mod proc;
pub(crate) mod regs_image;
pub mod restore;
pub mod rpc;
pub mod sys;
/// Where the fixtures are, for unit tests (the integration tests' `tests/common/fixtures.rs`).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../tests/common/fixtures.rs"]
mod test_fixtures;
