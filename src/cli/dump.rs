//! `stasis dump`: CRIU's `criu dump` command line.
//!
//! Options keep CRIU's long and short spellings. CRIU options stasis does not implement are
//! refused by name rather than ignored, so a caller never believes a feature was applied.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::common::{self, CommonArgs};
use crate::dump::{self, DumpOptions};

/// CRIU dump options that stasis knows but does not implement.
pub const UNSUPPORTED: &[&str] = &[
    "--lazy-pages",
    "--pre-dump",
    "--prev-images-dir",
    "--track-mem",
    "--auto-dedup",
    "--network-lock",
    "--external",
    "--manage-cgroups",
    "--cgroup-root",
    "--enable-external-sharing",
    "--enable-external-masters",
    "--link-remap",
    "--ghost-limit",
    "--irmap-scan-path",
    "--action-script",
    "--inherit-fd",
    "--evasive-devices",
    "--lsm-profile",
    "--tcp-close",
    "--skip-in-flight",
    "--ext-mount-map",
    "--root",
    "--pidfile",
    "--stream",
    "--enable-fs",
    "--empty-ns",
    "--force-irmap",
];

/// `stasis dump` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "dump",
    about = "checkpoint a process tree into an image directory"
)]
pub struct DumpArgs {
    /// Options shared by every verb (`-D`, `-o`, `-v`, `--timeout`, ...).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Root of the process tree.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Keep the tree running after the dump.
    #[arg(short = 'R', long = "leave-running")]
    pub leave_running: bool,
    /// The tree is a shell job (its session or tty may be outside).
    #[arg(short = 'j', long = "shell-job")]
    pub shell_job: bool,
    /// Allow unix sockets connected outside the tree.
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// Dump file locks.
    #[arg(short = 'l', long = "file-locks")]
    pub file_locks: bool,
    /// Dump established TCP connections.
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Freeze the tree with this cgroup's freezer instead of ptrace alone.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    pub freeze_cgroup: Option<PathBuf>,
    /// Print dump statistics.
    #[arg(long = "stats")]
    pub stats: bool,
    /// Write a Chrome trace of the dump phases to FILE.
    #[arg(long = "profile", value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Send pagemaps and pages to a page server (criu or stasis page-server) instead of
    /// the images directory.
    #[arg(long = "page-server")]
    pub page_server: bool,
    /// Address of the page server.
    #[arg(long = "address", value_name = "ADDR", requires = "page_server")]
    pub address: Option<String>,
    /// Port of the page server.
    #[arg(long = "port", value_name = "N", requires = "page_server")]
    pub port: Option<u16>,
    /// Use this connected socket to the page server instead of connecting.
    #[arg(long = "ps-socket", value_name = "FD", requires = "page_server")]
    pub ps_socket: Option<i32>,
    /// Compress the pages files in chunks: zstd or zstd:LEVEL (stasis extension; restore,
    /// crit and convert read it, CRIU does not).
    #[arg(long = "compress", value_name = "zstd[:LEVEL]")]
    pub compress: Option<String>,
    /// Encrypt and authenticate the pages files with the 32-byte key in FILE (32 raw bytes or
    /// 64 hex digits; stasis extension).
    #[arg(long = "encrypt-key", value_name = "FILE")]
    pub encrypt_key: Option<PathBuf>,
}

/// Refuses a CRIU option stasis does not implement, naming it.
pub fn refuse_unsupported(args: &[OsString]) -> Result<(), String> {
    for a in args {
        let s = a.to_string_lossy();
        let name = s.split('=').next().unwrap_or("");
        if UNSUPPORTED.contains(&name) {
            return Err(format!("option {name} is not supported by stasis dump"));
        }
    }
    Ok(())
}

impl DumpArgs {
    /// The page pipeline's options: where pages go and how they are packed.
    pub fn page_options(
        &self,
    ) -> Result<
        (
            Option<dump::page_out::PageServerAddr>,
            crate::pages::pack::PackParams,
        ),
        String,
    > {
        use crate::pages::pack::{PackKey, PackParams};
        let mut pack = PackParams::default();
        if let Some(c) = &self.compress {
            pack.zstd = Some(PackParams::parse_compress(c).map_err(|e| e.to_string())?);
        }
        if let Some(k) = &self.encrypt_key {
            pack.key = Some(std::sync::Arc::new(
                PackKey::load(k).map_err(|e| e.to_string())?,
            ));
        }
        let ps = if self.page_server {
            let address = match (&self.address, self.port, self.ps_socket) {
                (_, _, Some(_)) => self.address.clone().unwrap_or_default(),
                (Some(a), Some(_), None) => a.clone(),
                _ => {
                    return Err(
                        "--page-server needs --address and --port (or --ps-socket FD)".into(),
                    )
                }
            };
            Some(dump::page_out::PageServerAddr {
                address,
                port: self.port.unwrap_or(0),
                ps_socket: self.ps_socket,
            })
        } else {
            None
        };
        Ok((ps, pack))
    }

    /// The engine's options.
    pub fn options(&self) -> DumpOptions {
        DumpOptions {
            pid: self.tree,
            images_dir: self.common.images_dir(),
            leave_running: self.leave_running,
            shell_job: self.shell_job,
            ext_unix_sk: self.ext_unix_sk,
            file_locks: self.file_locks,
            tcp_established: self.tcp_established,
            freeze_cgroup: self.freeze_cgroup.clone(),
            stats: self.stats,
            profile: self.profile.clone(),
            timeout: self.common.timeout(),
            prev_images_dir: None,
            track_mem: false,
            fault: std::env::var("STASIS_FAULT").ok(),
            exiting_after: true,
            page_server: None,
            pack: Default::default(),
        }
    }
}

/// `stasis dump ...`: `args[1]` is "dump"; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    if let Err(e) = refuse_unsupported(args.get(2..).unwrap_or(&[])) {
        eprintln!("Error: {e}");
        return 1;
    }
    let a: DumpArgs = match common::parse_verb(&args) {
        Ok(a) => a,
        Err(status) => return status,
    };
    if let Err(e) = a.common.init_logging() {
        eprintln!("Error: {e}");
        return 1;
    }
    let mut opts = a.options();
    match a.page_options() {
        Ok((ps, pack)) => {
            opts.page_server = ps;
            opts.pack = pack;
        }
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    }
    tracing::info!(
        "dumping tree {} into {}",
        opts.pid,
        opts.images_dir.display()
    );
    let mut backend = dump::ptrace_backend::PtraceBackend;
    match dump::run(&opts, &mut backend) {
        Ok(rep) => {
            for f in &rep.images {
                tracing::debug!("wrote {}", f.display());
            }
            if a.stats || a.common.display_stats {
                let s = &rep.stats;
                println!(
                    "freezing {} us, frozen {} us, memdump {} us, memwrite {} us, pages scanned {} written {} (lazy {}), shmem pages {}, {} bytes in {} files",
                    s.freezing_time, s.frozen_time, s.memdump_time, s.memwrite_time,
                    s.pages.pages_scanned, s.pages.pages_written, s.pages.pages_lazy,
                    s.pages.shpages_written, rep.bytes, rep.images.len()
                );
            }
            if let Some(p) = &a.profile {
                let json = rep.profile.chrome_trace().to_string();
                if let Err(e) = std::fs::write(p, json) {
                    tracing::error!("write profile {}: {e}", p.display());
                    eprintln!("Error: write profile {}: {e}", p.display());
                    return 1;
                }
            }
            tracing::info!("Dumping finished successfully");
            0
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("Error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(v: &[&str]) -> Result<DumpArgs, clap::Error> {
        DumpArgs::try_parse_from(std::iter::once("dump").chain(v.iter().copied()))
    }

    #[test]
    fn criu_spellings() {
        let a = parse(&[
            "-t", "42", "-D", "/tmp", "-o", "d.log", "-v4", "-R", "-j", "--stats",
        ])
        .unwrap();
        assert_eq!(a.tree, 42);
        assert!(a.leave_running && a.shell_job && a.stats);
        assert_eq!(a.common.verbosity, Some(4));
        let b = parse(&[
            "--tree",
            "1",
            "--images-dir",
            "/x",
            "--leave-running",
            "--shell-job",
            "--timeout",
            "3",
        ])
        .unwrap();
        assert_eq!(b.options().timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn unknown_and_unsupported_refused() {
        assert!(parse(&["-t", "1", "-D", "/x", "--bogus"])
            .unwrap_err()
            .to_string()
            .contains("--bogus"));
        let e = refuse_unsupported(&["--lazy-pages".into()]).unwrap_err();
        assert!(e.contains("--lazy-pages"), "{e}");
        assert!(parse(&["-D", "/x"]).is_err());
    }

    #[test]
    fn page_pipeline_options() {
        let a = parse(&[
            "-t",
            "1",
            "--page-server",
            "--address",
            "10.0.0.2",
            "--port",
            "9",
        ])
        .unwrap();
        let (ps, pack) = a.page_options().unwrap();
        let ps = ps.unwrap();
        assert_eq!(
            (ps.address.as_str(), ps.port, ps.ps_socket),
            ("10.0.0.2", 9, None)
        );
        assert!(!pack.active());
        let a = parse(&["-t", "1", "--page-server", "--ps-socket", "5"]).unwrap();
        assert_eq!(a.page_options().unwrap().0.unwrap().ps_socket, Some(5));
        let a = parse(&["-t", "1", "--page-server", "--port", "9"]).unwrap();
        assert!(a.page_options().unwrap_err().contains("--address"));
        assert!(parse(&["-t", "1", "--port", "9"]).is_err());
        let a = parse(&["-t", "1", "--compress", "zstd:5"]).unwrap();
        assert_eq!(a.page_options().unwrap().1.zstd, Some(5));
        let a = parse(&["-t", "1", "--compress", "lz4"]).unwrap();
        assert!(a.page_options().is_err());
    }
}
