//! The `stasis` binary: a thin wrapper around [`stasis::cli`]. Invoked as `criu` it behaves the
//! same, so tools that drive CRIU can drive stasis unchanged.
//!
//! The allocator is mimalloc: the dump's collector allocates per-thread state that the image
//! writer threads free, and glibc's arena locks made the two wait on each other (about 40 ms
//! of an 8000-thread dump; BENCHMARKS.md). mimalloc frees across threads without a lock.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(stasis::cli::main_with_args(std::env::args_os().collect()));
}
