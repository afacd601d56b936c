//! `stasis migrate` (source) and `stasis migrate-receive` (destination): live migration, see
//! [`crate::migrate`]. Thin: options → the library's options → one call → exit status.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use super::common::{self, CommonArgs, Verb};
use crate::migrate::convergence::Policy;
use crate::migrate::destination::{self, ReceiveOptions};
use crate::migrate::source::{self, MigrateOptions};
use crate::pages::pack::{PackKey, PackParams};

/// `stasis migrate` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "migrate",
    about = "move a running tree to `stasis migrate-receive` on another host (pre-copy)"
)]
pub struct MigrateArgs {
    /// Options shared by every verb: `-t PID` (the tree), `--timeout`,
    /// `-o`/`-v` (log); `-D` is the scratch directory of the non-memory images (default: a
    /// temporary directory).
    #[command(flatten)]
    pub common: CommonArgs,
    /// The destination, ADDR:PORT of `stasis migrate-receive --listen`.
    #[arg(long = "to", value_name = "ADDR:PORT")]
    pub to: String,
    /// Stop pre-copying once the predicted frozen time is at most MS milliseconds.
    #[arg(long = "max-downtime", value_name = "MS", default_value_t = 300)]
    pub max_downtime: u64,
    /// Pre-copy iterations at most before the final dump.
    #[arg(long = "max-iterations", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_iterations: u32,
    /// The destination packs its pages files with zstd (zstd or zstd:LEVEL).
    #[arg(long = "compress", value_name = "zstd[:LEVEL]")]
    pub compress: Option<String>,
    /// Prove this 32-byte key to the destination (which must hold the same) and have it
    /// seal its pages files with it.
    #[arg(long = "encrypt-key", value_name = "FILE")]
    pub encrypt_key: Option<PathBuf>,
    /// Write the Chrome trace of the migration to FILE.
    #[arg(long = "profile", value_name = "FILE")]
    pub profile: Option<PathBuf>,
}

impl common::VerbArgs for MigrateArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

/// `stasis migrate-receive` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "migrate-receive",
    about = "receive a tree from `stasis migrate` (and restore it with --restore)"
)]
pub struct ReceiveArgs {
    /// Options shared by every verb: `-D` (where the images go, must exist), `--pidfile`
    /// (the restored root's PID), `--status-fd` (one zero byte once listening),
    /// `--timeout`, `-o`/`-v`.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Listen on ADDR:PORT (IPv4 or [IPv6]).
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: String,
    /// Restore the tree once the final iteration is in, report "running" to the source.
    #[arg(long = "restore")]
    pub restore: bool,
    /// The key the source must prove; pages files are sealed with it.
    #[arg(long = "encrypt-key", value_name = "FILE")]
    pub encrypt_key: Option<PathBuf>,
}

impl common::VerbArgs for ReceiveArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

fn load_key(p: &Option<PathBuf>) -> Result<Option<Arc<PackKey>>, String> {
    p.as_deref()
        .map(|p| PackKey::load(p).map(Arc::new).map_err(|e| e.to_string()))
        .transpose()
}

/// `stasis migrate ...`; returns the exit status.
pub fn run_migrate(args: Vec<OsString>) -> i32 {
    let a: MigrateArgs = match common::start(&args, Verb::Dump) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let c = &a.common.criu;
    let fail = |e: String| {
        common::report(&a.common, &e);
        if a.common.log_file.is_none() {
            eprintln!("Error (migrate): {e}");
        }
        1
    };
    let Some(pid) = c.tree.filter(|&p| p > 0) else {
        return fail("No pid specified (-t option missing)".into());
    };
    if c.lazy_pages {
        return fail("--lazy-pages (post-copy migration) is not built yet".into());
    }
    if c.tcp_established {
        // The dump and restore handle the sockets, but nothing holds the peers' packets
        // (network lock) or moves the address while the tree is stopped: a peer could see a
        // reset. Refused rather than half done.
        return fail(
            "--tcp-established is not built yet for migrate (network lock and address move)".into(),
        );
    }
    let compress = match a
        .compress
        .as_deref()
        .map(PackParams::parse_compress)
        .transpose()
    {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let key = match load_key(&a.encrypt_key) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    if let Err(e) = crate::privileges::Privileges::current().require(crate::privileges::Verb::Dump)
    {
        return fail(e.to_string());
    }
    // A fresh name: PIDs repeat across pid namespaces sharing one /tmp.
    let mut rnd = [0u8; 8];
    if let Err(e) = getrandom::fill(&mut rnd) {
        return fail(format!("random scratch name: {e}"));
    }
    let name = format!(
        "stasis-migrate-{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(rnd)
    );
    let scratch = match &a.common.images_dir {
        Some(d) => d.join(name),
        None => std::env::temp_dir().join(name),
    };
    let o = MigrateOptions {
        pid,
        to: a.to.clone(),
        policy: Policy {
            max_downtime_us: a.max_downtime.saturating_mul(1000),
            max_iterations: a.max_iterations,
        },
        compress,
        key,
        tcp_established: c.tcp_established,
        work_dir: scratch,
        timeout: a.common.timeout(),
        progress: std::io::stderr().is_terminal(),
        profile: a.profile.clone(),
    };
    match source::migrate(&o) {
        Ok(r) => {
            tracing::info!(
                "migrated: {} iterations ({}), final frozen {} ms, downtime {} ms, total {} ms; destination: {}",
                r.iterations.len(),
                r.stop,
                r.final_frozen_us / 1000,
                r.downtime_us / 1000,
                r.total_us / 1000,
                r.remote
            );
            if a.common.display_stats {
                for (i, s) in r.iterations.iter().enumerate() {
                    println!(
                        "iteration {i}: {} pages, {} bytes, frozen {} us, copy {} us",
                        s.pages, s.bytes, s.frozen_us, s.copy_us
                    );
                }
                println!("stop: {}", r.stop);
                println!(
                    "final frozen {} us, downtime {} us, total {} us",
                    r.final_frozen_us, r.downtime_us, r.total_us
                );
            }
            0
        }
        Err(e) => fail(e.to_string()),
    }
}

/// `stasis migrate-receive ...`; returns the exit status.
pub fn run_receive(args: Vec<OsString>) -> i32 {
    let a: ReceiveArgs = match common::start(&args, Verb::Restore) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let fail = |e: String| {
        common::report(&a.common, &e);
        if a.common.log_file.is_none() {
            eprintln!("Error (migrate-receive): {e}");
        }
        1
    };
    let key = match load_key(&a.encrypt_key) {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let status = match a.common.criu.take_status_fd() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let listener = match std::net::TcpListener::bind(a.listen.as_str()) {
        Ok(l) => l,
        Err(e) => return fail(format!("listen on {}: {e}", a.listen)),
    };
    tracing::info!("migrate-receive listening on {}", a.listen);
    if let Some(fd) = status {
        let mut f = std::fs::File::from(fd);
        if let Err(e) = std::io::Write::write_all(&mut f, &[0]) {
            return fail(format!("--status-fd: {e}"));
        }
    }
    let o = ReceiveOptions {
        images_dir: a.common.images_dir(),
        restore: a.restore,
        pidfile: a.common.pidfile.clone(),
        key_file: a.encrypt_key.clone(),
        key,
        timeout: a.common.timeout(),
    };
    match destination::receive(&listener, &o) {
        Ok(r) => {
            tracing::info!(
                "received {} iterations into {}{}",
                r.iterations,
                r.final_dir.display(),
                r.root
                    .map_or(String::new(), |p| format!("; running, root PID {p}"))
            );
            0
        }
        Err(e) => fail(e.to_string()),
    }
}
