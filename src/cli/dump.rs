//! `stasis dump`: CRIU's `criu dump` command line.
//!
//! Options keep CRIU's long and short spellings; every CRIU option is accepted
//! ([`super::criu_options`]), and the ones stasis has not built yet are refused by name rather
//! than ignored, so a caller never believes a feature was applied. Exit status as CRIU's: 0,
//! 1 on failure, 255 when a post-dump action script failed (the tree was resumed).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::common::{self, CommonArgs, Verb};
use crate::dump::{self, DumpOptions};

/// `stasis dump` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "dump",
    about = "checkpoint a process tree into an image directory"
)]
pub struct DumpArgs {
    /// Options shared by every verb (`-D`, `-o`, `-v`, `-t`, `-R`, `--timeout`, ...).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print dump statistics.
    #[arg(long = "stats")]
    pub stats: bool,
    /// Write a Chrome trace of the dump phases to FILE.
    #[arg(long = "profile", value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Compress the pages files in chunks: zstd or zstd:LEVEL (stasis extension; restore,
    /// crit and convert read it, CRIU does not).
    #[arg(long = "compress", value_name = "zstd[:LEVEL]")]
    pub compress: Option<String>,
    /// Encrypt and authenticate the pages files with the 32-byte key in FILE (32 raw bytes or
    /// 64 hex digits; stasis extension).
    #[arg(long = "encrypt-key", value_name = "FILE")]
    pub encrypt_key: Option<PathBuf>,
}

/// `--track-mem`, `--prev-images-dir`, `--pre-dump-mode` (dump and pre-dump; accepted and
/// ignored by the other verbs, as CRIU).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IncrementalArgs {
    /// Keep tracking written pages for a later dump with --prev-images-dir.
    #[arg(long = "track-mem")]
    pub track_mem: bool,
    /// The previous (pre-)dump, relative to the images directory: its pages are referenced.
    #[arg(long = "prev-images-dir", value_name = "REL")]
    pub prev_images_dir: Option<PathBuf>,
    /// How a pre-dump copies pages after the tree runs again: splice or read.
    #[arg(long = "pre-dump-mode", value_name = "MODE", value_parser = ["splice", "read"])]
    pub pre_dump_mode: Option<String>,
    /// With --prev-images-dir: punch the pages this dump wrote again out of the parents'
    /// pages images
    #[arg(long = "auto-dedup")]
    pub auto_dedup: bool,
}

impl IncrementalArgs {
    /// `--auto-dedup` after a successful (pre-)dump into `images_dir` (nothing to do without
    /// a parent or when the pages went to a page server); false when it failed (reported).
    pub fn dedup(&self, common: &CommonArgs, images_dir: &std::path::Path) -> bool {
        if !self.auto_dedup || self.prev_images_dir.is_none() {
            return true;
        }
        match dump::dedup::punch_parents(images_dir) {
            Ok(d) => {
                tracing::info!(
                    "auto-dedup: {} bytes in {} holes punched out of parent images",
                    d.punched,
                    d.holes
                );
                true
            }
            Err(e) => {
                common::report(common, e);
                false
            }
        }
    }
}

impl IncrementalArgs {
    /// The pre-dump mode chosen (splice by default, as CRIU).
    pub fn mode(&self) -> dump::options::PreDumpMode {
        match self.pre_dump_mode.as_deref() {
            Some("read") => dump::options::PreDumpMode::Read,
            _ => dump::options::PreDumpMode::Splice,
        }
    }
}

impl common::VerbArgs for DumpArgs {
    fn common(&self) -> &CommonArgs {
        &self.common
    }
}

#[cfg(test)]
/// Refuses a CRIU option stasis has not built yet, naming it.
pub fn refuse_unsupported(args: &[OsString]) -> Result<(), String> {
    super::criu_options::refuse_not_built(args)
}

/// The page pipeline's options of `dump` and `pre-dump`: where pages go (`--page-server
/// --address A --port N [--ps-socket FD]`) and how they are packed (`--compress`,
/// `--encrypt-key`).
pub fn page_options(
    c: &super::criu_args::CriuArgs,
    compress: Option<&str>,
    encrypt_key: Option<&std::path::Path>,
) -> Result<
    (
        Option<dump::page_out::PageServerAddr>,
        crate::pages::pack::PackParams,
    ),
    String,
> {
    use crate::pages::pack::{PackKey, PackParams};
    let mut pack = PackParams::default();
    if let Some(c) = compress {
        pack.zstd = Some(PackParams::parse_compress(c).map_err(|e| e.to_string())?);
    }
    if let Some(k) = encrypt_key {
        pack.key = Some(std::sync::Arc::new(
            PackKey::load(k).map_err(|e| e.to_string())?,
        ));
    }
    let ps = if c.page_server {
        let address = match (&c.address, c.port, c.ps_socket) {
            (_, _, Some(_)) => c.address.clone().unwrap_or_default(),
            (Some(a), Some(_), None) => a.clone(),
            _ => return Err("--page-server needs --address and --port (or --ps-socket FD)".into()),
        };
        Some(dump::page_out::PageServerAddr {
            address,
            port: c.port.unwrap_or(0),
            ps_socket: c.ps_socket,
            tls: c.tls.options(),
        })
    } else {
        None
    };
    Ok((ps, pack))
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
        page_options(
            &self.common.criu,
            self.compress.as_deref(),
            self.encrypt_key.as_deref(),
        )
    }

    /// `--lazy-pages [--address A] --port N`: where the lazy pages are served.
    fn lazy_serve(&self) -> Result<Option<dump::lazy::LazyServe>, String> {
        let c = &self.common.criu;
        if !c.lazy_pages {
            return Ok(None);
        }
        if c.page_server {
            return Err(
                "--lazy-pages with --page-server: the pages a lazy dump writes go to \
                        the images directory (not built yet to a page server)"
                    .into(),
            );
        }
        if c.incremental.prev_images_dir.is_some() || c.incremental.track_mem {
            return Err("--lazy-pages with an incremental dump is not built yet".into());
        }
        let port = c
            .port
            .ok_or("--lazy-pages needs --port N (and --address A) to serve the pages on")?;
        Ok(Some(dump::lazy::LazyServe {
            address: c.address.clone(),
            port,
            tls: c.tls.options(),
        }))
    }

    /// The engine's options (`--pidfile` is ignored on dump, as CRIU does).
    pub fn options(&self) -> Result<DumpOptions, String> {
        let c = &self.common.criu;
        let pid = c.tree.ok_or("No pid specified (-t option missing)")?;
        if pid <= 0 {
            return Err(format!("invalid argument for -t: {pid}"));
        }
        let images_dir = self.common.images_dir();
        let scripts =
            crate::action_scripts::ActionScripts::new(c.action_script.clone(), &images_dir)
                .map_err(|e| e.to_string())?;
        Ok(DumpOptions {
            pid,
            images_dir,
            leave_running: c.leave_running || c.leave_stopped,
            leave_stopped: c.leave_stopped,
            cgroup_dump_controllers: c.cgroup_dump_controller.clone(),
            cgroup_props: crate::cgroup::props::Props::from_options(
                c.cgroup_props.as_deref(),
                c.cgroup_props_file.as_deref(),
            )?,
            shell_job: c.shell_job,
            external_ttys: c.external_ttys(),
            ext_unix_sk: c.ext_unix_sk.is_some(),
            file_locks: c.file_locks,
            tcp_established: c.tcp_established,
            freeze_cgroup: c.freeze_cgroup.clone(),
            stats: self.stats,
            profile: self.profile.clone(),
            timeout: self.common.timeout(),
            prev_images_dir: c.incremental.prev_images_dir.clone(),
            track_mem: c.incremental.track_mem,
            pre_dump_mode: c.incremental.mode(),
            tracker_exe: None,
            fault: std::env::var("STASIS_FAULT").ok(),
            exiting_after: true,
            page_server: None,
            pack: Default::default(),
            scripts,
            ghost_limit: Some(c.ghost_limit()?),
            link_remap: c.link_remap,
            tcp_close: c.tcp_close,
            skip_in_flight: c.skip_in_flight,
            lazy_pages: self.lazy_serve()?,
            mounts: crate::dump::mounts::MountOptions::from_args(
                &c.external,
                &c.ext_mount_map,
                c.enable_external_sharing,
                c.enable_external_masters,
            ),
        })
    }
}

impl DumpArgs {
    /// Everything before the engine runs: the engine's options with the page pipeline's,
    /// and `cpuinfo.img` when `--cpu-cap` asks for it (the command line and the RPC server).
    pub fn prepare(&self) -> Result<DumpOptions, String> {
        let mut opts = self.options()?;
        crate::privileges::Privileges::current()
            .require(crate::privileges::Verb::Dump)
            .map_err(|e| e.to_string())?;
        let cpu_cap = self.common.criu.cpu_cap.clone().map(Some);
        crate::cpuinfo::option_caps(&cpu_cap)
            .and_then(|caps| match caps & crate::cpuinfo::CAP_IMAGE {
                0 => Ok(()),
                _ => crate::cpuinfo::write(&opts.images_dir),
            })
            .map_err(|e| e.to_string())?;
        let (ps, pack) = self.page_options()?;
        opts.page_server = ps;
        opts.pack = pack;
        Ok(opts)
    }
}

/// `stasis dump ...`: `args[1]` is "dump"; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let a: DumpArgs = match common::start(&args, Verb::Dump) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let opts = match a.prepare() {
        Ok(o) => o,
        Err(e) => {
            common::report(&a.common, e);
            return 1;
        }
    };
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
            if a.common.display_stats {
                // CRIU's display_stats, on standard output.
                let s = &rep.stats;
                let hex = |n: u64| format!("{n} (0x{n:x})");
                print!(
                    "Displaying dump stats:\nFreezing time: {} us\nFrozen time: {} us\n\
                     Memory dump time: {} us\nMemory write time: {} us\n\
                     Memory pages scanned: {}\nMemory pages skipped from parent: {}\n\
                     Memory pages written: {}\nLazy memory pages: {}\n",
                    s.freezing_time,
                    s.frozen_time,
                    s.memdump_time,
                    s.memwrite_time,
                    hex(s.pages.pages_scanned),
                    hex(s.parent_pages),
                    hex(s.pages.pages_written),
                    hex(s.pages.pages_lazy)
                );
            }
            if a.stats {
                let s = &rep.stats;
                println!(
                    "freezing {} us, frozen {} us, memdump {} us, memwrite {} us, pages scanned {} written {} (lazy {}), shmem pages {}, {} bytes in {} files",
                    s.freezing_time, s.frozen_time, s.memdump_time, s.memwrite_time,
                    s.pages.pages_scanned, s.pages.pages_written, s.pages.pages_lazy,
                    s.pages.shpages_written, rep.bytes, rep.images.len()
                );
                if s.parent_pages > 0 {
                    println!("pages in the parent image {}", s.parent_pages);
                }
            }
            if let Some(p) = &a.profile {
                let json = rep.profile.chrome_trace().to_string();
                if let Err(e) = std::fs::write(p, json) {
                    common::report(&a.common, format!("write profile {}: {e}", p.display()));
                    return 1;
                }
            }
            if opts.page_server.is_none()
                && !a.common.criu.incremental.dedup(&a.common, &opts.images_dir)
            {
                return 1;
            }
            tracing::info!("Dumping finished successfully");
            0
        }
        Err(e) => {
            common::report(&a.common, &e);
            tracing::error!("Dumping FAILED.");
            if e.step == dump::engine::POST_DUMP_STEP {
                255
            } else {
                1
            }
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
        assert_eq!(a.common.criu.tree, Some(42));
        assert!(a.common.criu.leave_running && a.common.criu.shell_job && a.stats);
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
        assert_eq!(b.options().unwrap().timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn unknown_and_unsupported_refused() {
        assert!(parse(&["-t", "1", "-D", "/x", "--bogus"])
            .unwrap_err()
            .to_string()
            .contains("--bogus"));
        let e = refuse_unsupported(&["--stream".into()]).unwrap_err();
        assert!(e.contains("--stream"), "{e}");
        assert!(parse(&["-D", "/x"]).unwrap().options().is_err());
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
        // CRIU accepts --port without --page-server and ignores it.
        let a = parse(&["-t", "1", "--port", "9"]).unwrap();
        assert!(a.page_options().unwrap().0.is_none());
        let a = parse(&["-t", "1", "--compress", "zstd:5"]).unwrap();
        assert_eq!(a.page_options().unwrap().1.zstd, Some(5));
        let a = parse(&["-t", "1", "--compress", "lz4"]).unwrap();
        assert!(a.page_options().is_err());
    }
}
