//! The `stasis` binary: a thin wrapper around [`stasis::cli`]. Invoked as `criu` it behaves the
//! same, so tools that drive CRIU can drive stasis unchanged.

fn main() {
    std::process::exit(stasis::cli::main_with_args(std::env::args_os().collect()));
}
