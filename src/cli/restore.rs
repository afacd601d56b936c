//! `stasis restore`: restore a process tree from an image directory (CRIU's `criu restore`).
//!
//! Without `-d` the command waits for the root task and exits with its status (exit code, or
//! 128 + signal number); with `-d` it returns once the tree runs.

use std::ffi::OsString;

use clap::Parser;

use super::common::{self, CommonArgs};
use crate::restore::{self, RestoreOptions};

/// Options of `restore`.
#[derive(Debug, Parser)]
#[command(name = "restore", about = "restore a process tree from images")]
struct RestoreArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Detach once the tree runs instead of waiting for the root task
    #[arg(short = 'd', long = "restore-detached")]
    detached: bool,
    /// Restore a shell job (attach to the current terminal)
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Restore established TCP connections
    #[arg(long = "tcp-established")]
    tcp_established: bool,
    /// Allow external unix socket peers
    #[arg(long = "ext-unix-sk")]
    ext_unix_sk: bool,
    /// Key file of encrypted pages (stasis extension)
    #[arg(long = "encrypt-key", value_name = "FILE")]
    encrypt_key: Option<std::path::PathBuf>,
}

/// Runs `restore`; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let parsed: RestoreArgs = match common::parse_verb(&args) {
        Ok(p) => p,
        Err(status) => return status,
    };
    if let Err(e) = parsed.common.init_logging() {
        eprintln!("Error: {e}");
        return 1;
    }
    let opts = RestoreOptions {
        images_dir: parsed.common.images_dir(),
        detached: parsed.detached,
        pidfile: parsed.common.pidfile.clone(),
        shell_job: parsed.shell_job,
        tcp_established: parsed.tcp_established,
        ext_unix_sk: parsed.ext_unix_sk,
        timeout: parsed.common.timeout(),
        encrypt_key: parsed.encrypt_key.clone(),
    };
    let restored = match restore::restore(&opts) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("restore failed: {e}");
            if parsed.common.log_path().is_some() {
                eprintln!("Error (restore): {e}");
            }
            return 1;
        }
    };
    if opts.detached {
        return 0;
    }
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(restored.root), None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("Error (restore): wait for root {}: {e}", restored.root);
                return 1;
            }
        }
    }
}
