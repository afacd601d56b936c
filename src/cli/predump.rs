//! `stasis pre-dump`: CRIU's `criu pre-dump` (memory only, the tree keeps running), and the
//! internal `stasis dirty-tracker` the first pre-dump starts (see `dump::dirty`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::common::{self, CommonArgs};
use super::dump::IncrementalArgs;
use crate::dump::{self, DumpOptions};

/// `stasis pre-dump` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "pre-dump",
    about = "copy a running tree's memory ahead of an incremental dump"
)]
pub struct PreDumpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Root of the process tree.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Accepted for CRIU compatibility (a pre-dump never stops the tree).
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// The tree is a shell job.
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Freeze the tree with this cgroup's freezer instead of ptrace alone.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    pub freeze_cgroup: Option<PathBuf>,
    /// Print statistics.
    #[arg(long = "stats")]
    pub stats: bool,
    #[command(flatten)]
    pub incremental: IncrementalArgs,
}

impl PreDumpArgs {
    /// The engine's options.
    pub fn options(&self) -> DumpOptions {
        DumpOptions {
            pid: self.tree,
            images_dir: self.common.images_dir(),
            leave_running: true,
            shell_job: self.shell_job,
            freeze_cgroup: self.freeze_cgroup.clone(),
            stats: self.stats,
            timeout: self.common.timeout(),
            prev_images_dir: self.incremental.prev_images_dir.clone(),
            track_mem: true,
            pre_dump_mode: self.incremental.mode(),
            fault: std::env::var("STASIS_FAULT").ok(),
            ..Default::default()
        }
    }
}

/// `stasis pre-dump ...`: `args[1]` is "pre-dump"; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let a: PreDumpArgs = match common::parse_verb(&args) {
        Ok(a) => a,
        Err(status) => return status,
    };
    if let Err(e) = a.common.init_logging() {
        eprintln!("Error: {e}");
        return 1;
    }
    let opts = a.options();
    let mut backend = dump::ptrace_backend::PtraceBackend;
    match dump::predump::run(&opts, &mut backend) {
        Ok(rep) => {
            if a.stats || a.common.display_stats {
                let s = &rep.stats;
                println!(
                    "frozen {} us, memwrite {} us, pages scanned {} written {} in parent {}, untracked processes {}",
                    s.frozen_time, s.memwrite_time, s.pages.pages_scanned,
                    s.pages.pages_written, s.parent_pages, rep.untracked
                );
            }
            tracing::info!("Pre-dumping finished successfully");
            0
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("Error: {e}");
            1
        }
    }
}

/// `stasis dirty-tracker --socket NAME` arguments (started by pre-dump, not by users).
#[derive(Debug, Parser)]
#[command(name = "dirty-tracker")]
struct TrackerArgs {
    /// Abstract unix socket name to listen on.
    #[arg(long = "socket")]
    socket: String,
}

/// `stasis dirty-tracker`: serves until the chain ends (see `dump::dirty::daemon`).
pub fn run_tracker(args: Vec<OsString>) -> i32 {
    let a: TrackerArgs = match common::parse_verb(&args) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let listener = match dump::dirty::daemon::bind(&a.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("Error: bind @{}: {e}", a.socket);
            return 1;
        }
    };
    match dump::dirty::daemon::serve(listener) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: tracker: {e}");
            1
        }
    }
}
