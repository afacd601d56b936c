//! `stasis dump`: CRIU's `criu dump` command line.
//!
//! Options keep CRIU's long and short spellings. CRIU options stasis does not implement are
//! refused by name rather than ignored, so a caller never believes a feature was applied.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::dump::{self, DumpOptions};

/// CRIU dump options that stasis knows but does not implement.
pub const UNSUPPORTED: &[&str] = &[
    "--page-server",
    "--address",
    "--port",
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
#[command(name = "dump", about = "checkpoint a process tree into an image directory")]
pub struct DumpArgs {
    /// Root of the process tree.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    pub tree: i32,
    /// Directory to write images to (must exist).
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub images_dir: PathBuf,
    /// Log file (relative to the images directory unless absolute).
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Verbosity 0..4 (`-v4`; `-v` alone is 2, each extra v adds one).
    #[arg(short = 'v', long = "verbosity", num_args = 0..=1, default_missing_value = "2", value_name = "N")]
    pub verbosity: Option<String>,
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
    /// Give up freezing after N seconds.
    #[arg(long = "timeout", value_name = "N")]
    pub timeout: Option<u64>,
}

/// Parses a `-v` value: a digit, or extra `v`s.
pub fn verbosity(v: &Option<String>) -> Result<u32, String> {
    match v.as_deref() {
        None => Ok(2),
        Some(s) if s.chars().all(|c| c == 'v') => Ok(2 + s.len() as u32),
        Some(s) => s.parse::<u32>().map_err(|_| format!("bad verbosity {s:?}")),
    }
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
    /// The engine's options.
    pub fn options(&self) -> DumpOptions {
        DumpOptions {
            pid: self.tree,
            images_dir: self.images_dir.clone(),
            leave_running: self.leave_running,
            shell_job: self.shell_job,
            ext_unix_sk: self.ext_unix_sk,
            file_locks: self.file_locks,
            tcp_established: self.tcp_established,
            freeze_cgroup: self.freeze_cgroup.clone(),
            stats: self.stats,
            profile: self.profile.clone(),
            timeout: self.timeout.map(Duration::from_secs),
            prev_images_dir: None,
            track_mem: false,
        }
    }
}

struct Log {
    file: Option<std::fs::File>,
    level: u32,
}

impl Log {
    fn line(&mut self, level: u32, msg: &str) {
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{msg}");
        }
        if level <= self.level.min(1) || (self.file.is_none() && level <= self.level) {
            eprintln!("{msg}");
        }
    }
}

/// `stasis dump ARGS` (argv[0] is "dump"); returns the exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    if let Err(e) = refuse_unsupported(args.get(1..).unwrap_or(&[])) {
        eprintln!("Error: {e}");
        return 1;
    }
    let a = match DumpArgs::try_parse_from(&args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    let level = match verbosity(&a.verbosity) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    let mut log = Log {
        file: a.log_file.as_ref().and_then(|p| {
            let p = if p.is_absolute() { p.clone() } else { a.images_dir.join(p) };
            std::fs::File::create(p).ok()
        }),
        level,
    };
    run(&a, &mut log)
}

fn run(a: &DumpArgs, log: &mut Log) -> i32 {
    let opts = a.options();
    log.line(3, &format!("dumping tree {} into {}", opts.pid, opts.images_dir.display()));
    let mut backend = dump::freeze::ProcBackend;
    match dump::run(&opts, &mut backend) {
        Ok(rep) => {
            for f in &rep.images {
                log.line(4, &format!("wrote {}", f.display()));
            }
            if a.stats {
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
                    log.line(0, &format!("Error: write profile {}: {e}", p.display()));
                    return 1;
                }
            }
            log.line(2, "Dumping finished successfully");
            0
        }
        Err(e) => {
            log.line(0, &format!("Error: {e}"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<DumpArgs, clap::Error> {
        DumpArgs::try_parse_from(std::iter::once("dump").chain(v.iter().copied()))
    }

    #[test]
    fn criu_spellings() {
        let a = parse(&["-t", "42", "-D", "/tmp", "-o", "d.log", "-v4", "-R", "-j", "--stats"]).unwrap();
        assert_eq!(a.tree, 42);
        assert!(a.leave_running && a.shell_job && a.stats);
        assert_eq!(verbosity(&a.verbosity).unwrap(), 4);
        let b = parse(&["--tree", "1", "--images-dir", "/x", "--leave-running", "--shell-job", "--timeout", "3"]).unwrap();
        assert_eq!(b.options().timeout, Some(Duration::from_secs(3)));
        let c = parse(&["-t", "1", "-D", "/x", "-vvv"]).unwrap();
        assert_eq!(verbosity(&c.verbosity).unwrap(), 4);
    }

    #[test]
    fn unknown_and_unsupported_refused() {
        assert!(parse(&["-t", "1", "-D", "/x", "--bogus"]).unwrap_err().to_string().contains("--bogus"));
        let e = refuse_unsupported(&["--page-server".into()]).unwrap_err();
        assert!(e.contains("--page-server"), "{e}");
        assert!(parse(&["-D", "/x"]).is_err());
    }
}
