//! `stasis pre-dump`: CRIU's `criu pre-dump` (memory only, the tree keeps running), and the
//! internal `stasis dirty-tracker` the first pre-dump starts (see `dump::dirty`).

use std::ffi::OsString;

use clap::Parser;

use super::common::{self, CommonArgs, Verb};
use crate::dump::{self, DumpOptions};

/// `stasis pre-dump` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "pre-dump",
    about = "copy a running tree's memory ahead of an incremental dump"
)]
pub struct PreDumpArgs {
    /// Options shared by every verb (`-t`, `-D`, `-j`, `--freeze-cgroup`, ...; `-R` is
    /// accepted: a pre-dump never stops the tree).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print statistics.
    #[arg(long = "stats")]
    pub stats: bool,
    /// Compress the pages files in chunks: zstd or zstd:LEVEL (stasis extension).
    #[arg(long = "compress", value_name = "zstd[:LEVEL]")]
    pub compress: Option<String>,
    /// Encrypt and authenticate the pages files with the 32-byte key in FILE (stasis
    /// extension).
    #[arg(long = "encrypt-key", value_name = "FILE")]
    pub encrypt_key: Option<std::path::PathBuf>,
}

impl PreDumpArgs {
    /// The engine's options.
    pub fn options(&self) -> Result<DumpOptions, String> {
        let c = &self.common.criu;
        let pid = c.tree.ok_or("No pid specified (-t option missing)")?;
        if pid <= 0 {
            return Err(format!("invalid argument for -t: {pid}"));
        }
        // Pages to a page server (`--page-server --address A --port N [--ps-socket FD]`) or
        // packed local files, as `dump`.
        let (page_server, pack) =
            super::dump::page_options(c, self.compress.as_deref(), self.encrypt_key.as_deref())?;
        Ok(DumpOptions {
            pid,
            images_dir: self.common.images_dir(),
            leave_running: true,
            shell_job: c.shell_job,
            freeze_cgroup: c.freeze_cgroup.clone(),
            stats: self.stats,
            timeout: self.common.timeout(),
            prev_images_dir: c.incremental.prev_images_dir.clone(),
            track_mem: true,
            pre_dump_mode: c.incremental.mode(),
            fault: std::env::var("STASIS_FAULT").ok(),
            page_server,
            pack,
            ..Default::default()
        })
    }
}

/// `stasis pre-dump ...`: `args[1]` is "pre-dump"; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let a: PreDumpArgs = match common::start(&args, Verb::Dump) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let opts = match a.options() {
        Ok(o) => o,
        Err(e) => {
            common::report(&a.common, e);
            return 1;
        }
    };
    if let Err(e) = crate::privileges::Privileges::current().require(crate::privileges::Verb::Dump)
    {
        common::report(&a.common, e);
        return 1;
    }
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
            if !a.common.criu.incremental.dedup(&a.common, &opts.images_dir) {
                return 1;
            }
            tracing::info!("Pre-dumping finished successfully");
            0
        }
        Err(e) => {
            common::report(&a.common, e);
            1
        }
    }
}

impl common::VerbArgs for PreDumpArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
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
