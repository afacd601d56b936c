//! Options every verb shares, with CRIU's spellings, and the set-up they drive (logging).
//!
//! Verbs embed [`CommonArgs`] with `#[command(flatten)]`. Before clap sees the arguments,
//! [`normalize_args`] turns CRIU idioms clap does not know into plain options:
//!
//! ```text
//! -v / -vv / -vvv        -> --verbosity=3 / 4 / 4   (CRIU: each v raises the default level 2)
//! config files           -> options inserted after the verb, unless --no-default-config
//!   /etc/criu/default.conf, $HOME/.criu/default.conf, then --config FILE
//!   (one option per line, without leading dashes: "tcp-established", "log-file dump.log")
//! ```

use clap::Args;

pub use super::criu_args::Verb;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options shared by all verbs.
#[derive(Debug, Clone, Args, Default)]
pub struct CommonArgs {
    /// Directory of the image files
    #[arg(short = 'D', long = "images-dir", value_name = "DIR", global = true)]
    pub images_dir: Option<PathBuf>,
    /// Directory for logs and other output (default: the images directory)
    #[arg(short = 'W', long = "work-dir", value_name = "DIR", global = true)]
    pub work_dir: Option<PathBuf>,
    /// Log file, relative to the work directory (default: standard error)
    #[arg(short = 'o', long = "log-file", value_name = "FILE", global = true)]
    pub log_file: Option<PathBuf>,
    /// Logging level: 0 none, 1 errors, 2 warnings (default), 3 information, 4 debug
    #[arg(short = 'v', long = "verbosity", value_name = "N", global = true,
          value_parser = clap::value_parser!(u8).range(0..=4))]
    pub verbosity: Option<u8>,
    /// Prefix every log line with the PID of the logging process
    #[arg(long = "log-pid", global = true)]
    pub log_pid: bool,
    /// Write the PID of the root task (restore) to FILE
    #[arg(long = "pidfile", value_name = "FILE", global = true)]
    pub pidfile: Option<PathBuf>,
    /// Do not read /etc/criu/default.conf nor $HOME/.criu/default.conf
    #[arg(long = "no-default-config", global = true)]
    pub no_default_config: bool,
    /// Read options from FILE (one per line, without leading dashes)
    #[arg(long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Give up freezing or seizing the tree after N seconds (default 10)
    #[arg(long = "timeout", value_name = "N", global = true)]
    pub timeout: Option<u64>,
    /// Print the dump/restore statistics at the end
    #[arg(long = "display-stats", global = true)]
    pub display_stats: bool,
    /// The other CRIU options (every verb accepts every one, as CRIU does).
    #[command(flatten)]
    pub criu: super::criu_args::CriuArgs,
}

impl CommonArgs {
    /// The images directory, or the current directory like CRIU.
    pub fn images_dir(&self) -> PathBuf {
        self.images_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// The work directory: `-W`, else the images directory.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir.clone().unwrap_or_else(|| self.images_dir())
    }

    /// `--timeout` as a duration.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.map(Duration::from_secs)
    }

    /// The log file path (relative paths are taken from the work directory, like CRIU).
    pub fn log_path(&self) -> Option<PathBuf> {
        let file = self.log_file.as_ref()?;
        if file.as_os_str() == "-" {
            return None;
        }
        Some(if file.is_absolute() {
            file.clone()
        } else {
            self.work_dir().join(file)
        })
    }

    /// Sets up `tracing` for this run, in CRIU's line format ([`super::log`]): to the log
    /// file if any (created or truncated, as CRIU does), standard output for `-o -`, else
    /// standard error.
    pub fn init_logging(&self) -> std::io::Result<()> {
        use tracing_subscriber::filter::LevelFilter;
        let verbosity = self.verbosity.unwrap_or(2);
        let level = match verbosity {
            0 => LevelFilter::OFF,
            1 => LevelFilter::ERROR,
            2 => LevelFilter::WARN,
            3 => LevelFilter::INFO,
            _ => LevelFilter::DEBUG,
        };
        let builder = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .event_format(super::log::CriuFormat::new(verbosity >= 3));
        let to_stdout = self.log_file.as_ref().is_some_and(|f| f.as_os_str() == "-");
        let result = match self.log_path() {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("open log file {}: {e}", path.display()),
                        )
                    })?;
                builder.with_writer(std::sync::Mutex::new(file)).try_init()
            }
            None if to_stdout => builder.with_writer(std::io::stdout).try_init(),
            None => builder.with_writer(std::io::stderr).try_init(),
        };
        // A second initialisation (tests calling the CLI twice in one process) keeps the first.
        let _ = result;
        Ok(())
    }
}

/// Rewrites CRIU idioms in `args` (argv[0] first, verb next) into options clap parses: `-v`
/// runs, and options from config files. Returns an error naming an unreadable config file.
pub fn normalize_args(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let mut out: Vec<OsString> = Vec::with_capacity(args.len());
    let mut after_dashes = false;
    for arg in args {
        after_dashes |= arg == "--";
        out.push(match arg.to_str() {
            _ if after_dashes => arg,
            Some(s) if s.len() >= 2 && s.starts_with("-v") && s[1..].bytes().all(|b| b == b'v') => {
                let level = (2 + s.len() - 1).min(4);
                OsString::from(format!("--verbosity={level}"))
            }
            // CRIU: a bare --verbosity raises the default level by one.
            Some("--verbosity") => OsString::from("--verbosity=3"),
            _ => arg,
        });
    }
    let mut explicit = None;
    for (i, a) in out.iter().enumerate() {
        if a == "--" {
            break;
        }
        if a == "--config" {
            explicit = out.get(i + 1).map(PathBuf::from);
        } else if let Some(v) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            explicit = Some(PathBuf::from(v));
        }
    }
    // CRIU's order: global, user, $CRIU_CONFIG_FILE, --config, then the command line;
    // --config (like --no-default-config) skips the first two.
    let no_default = explicit.is_some() || out.iter().any(|a| a == "--no-default-config");
    let mut files: Vec<PathBuf> = Vec::new();
    if !no_default {
        files.push(PathBuf::from("/etc/criu/default.conf"));
        if let Some(home) = std::env::var_os("HOME") {
            files.push(Path::new(&home).join(".criu/default.conf"));
        }
    }
    if let Some(env) = std::env::var_os("CRIU_CONFIG_FILE") {
        files.push(PathBuf::from(env));
    }
    let mut inserted = Vec::new();
    for file in &files {
        if file.exists() {
            inserted.extend(read_config(file)?);
        }
    }
    if let Some(file) = explicit {
        inserted.extend(read_config(&file)?);
    }
    if !inserted.is_empty() {
        // After the verb (argv[1]) so verb-specific options parse; the command line comes last
        // and wins for single-valued options.
        let at = out.len().min(2);
        out.splice(at..at, inserted);
    }
    Ok(super::criu_options::fold_negations(out))
}

/// Parses a verb's options: `args[0]` is the program, `args[1]` the verb. Usage lines and
/// errors name both (`stasis dump ...`, `criu restore ...`). `Err` carries the exit status
/// after clap printed help (0) or an error naming the offending option (1).
pub fn parse_verb<T: clap::Parser>(args: &[OsString]) -> Result<T, i32> {
    try_parse_verb(args).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            1
        } else {
            0
        }
    })
}

/// [`parse_verb`] without printing: the clap error (help requests included) is returned.
pub fn try_parse_verb<T: clap::Parser>(args: &[OsString]) -> Result<T, clap::Error> {
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stasis".into());
    let verb = args
        .get(1)
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let matches = T::command()
        .bin_name(format!("{program} {verb}"))
        // getopt's rule: a repeated single-valued option takes its last value.
        .args_override_self(true)
        .after_help(super::criu_options::refused_help())
        .try_get_matches_from(args.iter().skip(1))?;
    T::from_arg_matches(&matches)
}

/// Reads one config file as CRIU does: each non-empty, non-comment line is `option [value]`
/// (the option without dashes, the value bare or in double quotes with `\"` escapes, a `#`
/// comment after it); anything more on a line is an error naming the file and line.
pub fn read_config(path: &Path) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let mut args = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = || {
            format!(
                "config file {} line {}: unsupported configuration file format (one \
                 `option [value]` a line)",
                path.display(),
                n + 1
            )
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (opt, rest) = match line.split_once(char::is_whitespace) {
            Some((o, r)) => (o, r.trim_start()),
            None => (line, ""),
        };
        args.push(OsString::from(format!("--{}", opt.trim_start_matches('-'))));
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        let (value, tail) = if let Some(q) = rest.strip_prefix('"') {
            // A quoted value: up to the next quote not escaped by a backslash; \" is a quote.
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' if q[i + 1..].starts_with('"') => {
                        value.push('"');
                        chars.next();
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.ok_or_else(bad)?..])
        } else {
            let v = rest.split('#').next().unwrap_or("");
            match v.split_once(char::is_whitespace) {
                Some((v, t)) => (v.to_string(), t),
                None => (v.to_string(), ""),
            }
        };
        let tail = tail.trim_start();
        if !(tail.is_empty() || tail.starts_with('#')) {
            return Err(bad());
        }
        args.push(OsString::from(value));
    }
    Ok(args)
}

/// A verb's parsed arguments, with the options every verb shares.
pub trait VerbArgs: clap::Parser {
    /// The shared options.
    fn common(&self) -> &CommonArgs;
}

/// Starts a verb: parses `args` (refusing, by name, options not built yet), closes the
/// `--close` descriptors, sets up the log, and checks the CRIU options' values for `verb`.
/// `Err` is the exit status, the reason already reported.
pub fn start<T: VerbArgs>(args: &[OsString], verb: Verb) -> Result<T, i32> {
    let (kept, refused) = super::criu_options::split_not_built(args);
    let a: T = parse_verb(&kept)?;
    let common = a.common();
    common.criu.apply_close();
    if let Err(e) = common.init_logging() {
        eprintln!("Error: {e}");
        return Err(1);
    }
    if let Err(e) = check_parsed(common, &refused, verb) {
        report(common, e);
        return Err(1);
    }
    Ok(a)
}

/// After parsing: the first option refused as not built yet, else the first value `verb`
/// cannot honour (the command line and the RPC server).
pub fn check_parsed(common: &CommonArgs, refused: &[String], verb: Verb) -> Result<(), String> {
    if let Some(e) = refused.first() {
        return Err(e.clone());
    }
    common.criu.check(verb)
}

/// Reports an error the way CRIU does, as an `Error (file:line): ...` line of the log; when
/// the log is a file, also on standard error for the user at the terminal.
pub fn report(common: &CommonArgs, msg: impl std::fmt::Display) {
    tracing::error!("{msg}");
    if common.log_file.is_some() {
        eprintln!("Error: {msg}");
    }
}

/// A server verb (page-server, lazy-pages) is listening: `-d`/`--daemon` forks (the parent
/// writes `--pidfile` with the child's pid and exits 0), else `--pidfile` gets our pid; then
/// one zero byte on `--status-fd`. Returns the exit status when this process must stop here
/// (the parent of a daemon, or a failure reported through `fail`).
pub fn ready_to_serve(
    common: &CommonArgs,
    status: Option<std::os::fd::OwnedFd>,
    fail: &dyn Fn(String) -> i32,
) -> Option<i32> {
    if common.criu.restore_detached {
        match crate::sys::daemon::daemonize() {
            Ok(Some(child)) => {
                if let Some(p) = &common.pidfile {
                    if let Err(e) = std::fs::write(p, format!("{child}")) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(child),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        return Some(fail(format!("write pidfile {}: {e}", p.display())));
                    }
                }
                return Some(0);
            }
            Ok(None) => {}
            Err(e) => return Some(fail(format!("go to the background: {e}"))),
        }
    } else if let Some(p) = &common.pidfile {
        if let Err(e) = std::fs::write(p, format!("{}", std::process::id())) {
            return Some(fail(format!("write pidfile {}: {e}", p.display())));
        }
    }
    if let Some(fd) = status {
        let mut f = std::fs::File::from(fd);
        if let Err(e) = std::io::Write::write_all(&mut f, &[0]) {
            return Some(fail(format!("--status-fd: {e}")));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn v_runs_become_levels() {
        let out = normalize_args(os(&[
            "criu",
            "dump",
            "-v",
            "-vv",
            "-vvvv",
            "--no-default-config",
        ]))
        .unwrap();
        assert_eq!(
            out,
            os(&[
                "criu",
                "dump",
                "--verbosity=3",
                "--verbosity=4",
                "--verbosity=4",
                "--no-default-config"
            ])
        );
    }

    #[test]
    fn explicit_config_is_inserted_after_verb() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("c.conf");
        std::fs::write(&conf, "# comment\nleave-running\nlog-file dump.log\n").unwrap();
        let out = normalize_args(os(&[
            "criu",
            "dump",
            "--no-default-config",
            "--config",
            conf.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(
            &out[2..5],
            &os(&["--leave-running", "--log-file", "dump.log"])[..]
        );
    }

    #[test]
    fn missing_config_names_the_file() {
        let err = normalize_args(os(&[
            "criu",
            "dump",
            "--no-default-config",
            "--config",
            "/nonexistent/x.conf",
        ]))
        .unwrap_err();
        assert!(err.contains("/nonexistent/x.conf"), "{err}");
    }
}
