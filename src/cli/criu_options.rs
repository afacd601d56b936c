//! Every option of CRIU 4.2's command line, and what stasis does with it.
//!
//! CRIU parses one option table for every verb (criu/config.c): `dump` accepts `-d`, `restore`
//! accepts `-R`, and each verb ignores what does not concern it. stasis does the same:
//!
//! ```text
//!  argv ──normalize──> [--no-X pairs folded, -v runs, config files]
//!       ──refuse_not_built──> an option of OPTIONS with Status::NotBuilt?  exit 1, named
//!       ──clap (CommonArgs + CriuArgs + the verb's own)──> parsed
//!       ──CriuArgs::check(verb)──> values that cannot be honoured here?  exit 1, named
//! ```
//!
//! [`OPTIONS`] is the one list: the README's option table and `--help`'s list of refused
//! options are written from it, and the CLI tests compare it with CRIU's source.

/// Whether an option takes a value (getopt's `has_arg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    None,
    Required,
    /// Only attached: `--manage-cgroups=soft`, `-v4`.
    Optional,
}

/// What stasis does with an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Implemented with CRIU's meaning.
    Supported,
    /// Accepted; it changes nothing here, for the reason given (as CRIU ignores, e.g., `-d` on
    /// dump, or the option concerns a namespace stasis neither dumps nor restores).
    Ignored(&'static str),
    /// Accepted; refused by name when a value or an image makes it matter and it cannot be
    /// honoured (the reason says when).
    Partial(&'static str),
    /// Refused by name on every verb: not built yet (the reason says what is missing).
    NotBuilt(&'static str),
}

/// One CRIU option.
#[derive(Debug, Clone, Copy)]
pub struct CriuOpt {
    pub long: &'static str,
    pub short: Option<char>,
    pub arg: Arg,
    /// Declared with CRIU's `BOOL_OPT`: `--no-NAME` negates it.
    pub negatable: bool,
    pub status: Status,
}

const fn o(long: &'static str, short: Option<char>, arg: Arg, status: Status) -> CriuOpt {
    CriuOpt {
        long,
        short,
        arg,
        negatable: false,
        status,
    }
}

/// A `BOOL_OPT` of CRIU (negatable flag).
const fn b(long: &'static str, short: Option<char>, status: Status) -> CriuOpt {
    CriuOpt {
        long,
        short,
        arg: Arg::None,
        negatable: true,
        status,
    }
}

use Arg::{None as N, Optional as Opt, Required as Req};
use Status::{Ignored, NotBuilt, Partial, Supported};

const MNTNS: &str = "a mount namespace's options stasis does not take (its mount tree is \
                     dumped and restored, see --ext-mount-map)";
const NETNS: &str =
    "concerns network namespaces beyond their loopback, which stasis neither dumps nor restores";

/// CRIU 4.2's options (criu/config.c `long_opts` and `short_opts`), in its order.
pub const OPTIONS: &[CriuOpt] = &[
    o("tree", Some('t'), Req, Supported),
    o("leave-stopped", Some('s'), N, Supported),
    o("leave-running", Some('R'), N, Supported),
    b("restore-detached", Some('d'), Supported),
    b("restore-sibling", Some('S'), Supported),
    b("daemon", None, Supported),
    o("images-dir", Some('D'), Req, Supported),
    o("work-dir", Some('W'), Req, Supported),
    o("log-file", Some('o'), Req, Supported),
    o("join-ns", Some('J'), Req, Partial("restore: net, uts, ipc, time, mnt, cgroup joined by the root task before it forks the tree; `pid` refused as CRIU does, `user` refused: not built yet")),
    o("root", Some('r'), Req, Partial("restore: the images' paths are resolved under it (never leaving it); a tree with its own mount namespace gets it as the root mount (bound, not recursively), required as in CRIU; dump: accepted, no effect (as CRIU)")),
    o("ext-unix-sk", Some('x'), Opt, Partial("accepted without a value; `=INODE` (one socket) is refused: not built yet")),
    o("help", Some('h'), N, Supported),
    b("tcp-established", None, Supported),
    o("close", None, Req, Supported),
    b("log-pid", None, Ignored("stasis writes one log; the restore's tasks do not log")),
    o("version", Some('V'), N, Supported),
    b("evasive-devices", None, Ignored("device files are dumped by their path; one that is not accessible is refused by name")),
    o("pidfile", None, Req, Supported),
    o("veth-pair", None, Req, Ignored(NETNS)),
    o("action-script", None, Req, Supported),
    b("link-remap", None, Partial("accepted; an open file whose name was unlinked while other links remain is refused by name (link remaps are not built yet)")),
    b("shell-job", Some('j'), Supported),
    b("file-locks", Some('l'), Partial("accepted; a task holding a lock is refused by name (locks are not dumped yet)")),
    b("page-server", None, Supported),
    o("address", None, Req, Supported),
    o("port", None, Req, Supported),
    o("prev-images-dir", None, Req, Supported),
    o("ms", None, N, NotBuilt("deprecated: CRIU refuses it too")),
    b("track-mem", None, Supported),
    b("auto-dedup", None, Partial("dump and pre-dump with --prev-images-dir: the pages written again are punched out of every parent's pages image; restore: accepted, pages are not punched while they are restored")),
    o("libdir", Some('L'), Req, Ignored("stasis has no plugins")),
    o("cpu-cap", None, Opt, Supported),
    b("force-irmap", None, Ignored("inotify watches are resolved from the kernel's file handles, without a scan")),
    o("ext-mount-map", Some('M'), Req, Partial("`auto` (dump: mounts found in the dumper's namespace are external, restore: bound from their host path) and `KEY:VALUE` (dump: mountpoint to key, restore: key to host path); shared and slave mounts are refused")),
    o("exec-cmd", None, N, Supported),
    o("manage-cgroups", None, Opt, Partial("dump records cgroups in every mode; restore: `ignore` leaves cgroups alone, `none` and `soft` move tasks into existing cgroups, `props`/`full`/`strict` are refused when the images hold cgroups: not built yet")),
    o("cgroup-root", None, Req, Partial("refused when cgroups are dumped or restored: not built yet")),
    o("inherit-fd", None, Req, Partial("restore-only as in CRIU: regular files (`fd[N]:path`) and pipes (`fd[N]:pipe:[ID]`); `socket:[INO]` is refused: not built yet")),
    o("feature", None, Req, Supported),
    o("skip-mnt", None, Req, Ignored(MNTNS)),
    o("enable-fs", None, Req, Ignored(MNTNS)),
    o("enable-external-sharing", None, N, Partial("dump: allows shared external mounts; restore: shared and slave mounts are refused (not built yet)")),
    o("enable-external-masters", None, N, Partial("dump: allows slave external mounts; restore: shared and slave mounts are refused (not built yet)")),
    o("freeze-cgroup", None, Req, Supported),
    o("ghost-limit", None, Req, Supported),
    o("irmap-scan-path", None, Req, Ignored("inotify watches are resolved from the kernel's file handles, without a scan")),
    o("lsm-profile", None, Req, Partial("dump: accepted; restore: refused, applying an LSM profile is not built yet")),
    o("timeout", None, Req, Supported),
    o("external", None, Req, Partial("`mnt[MOUNTPOINT]:KEY` (dump) and `mnt[KEY]:PATH` (restore) for a mount namespace's external mounts; `veth[...]`, `macvlan[...]`, `netdev[...]` accepted (accepted; a network namespace beyond its loopback is not dumped); `tty[RDEV:DEV]` a terminal outside the tree (dumped as external, restored from `--inherit-fd fd[N]:tty[RDEV:DEV]`); `file`, `dev`, `unix` resources refused: not built yet")),
    o("empty-ns", None, Req, Ignored(NETNS)),
    o("lazy-pages", None, N, Supported),
    b("extra", None, Supported),
    b("experimental", None, Supported),
    o("all", None, N, Supported),
    o("cgroup-props", None, Req, Supported),
    o("cgroup-props-file", None, Req, Supported),
    o("cgroup-dump-controller", None, Req, Supported),
    b("skip-in-flight", None, Supported),
    b("deprecated", None, Ignored("stasis has no deprecated features to enable")),
    b("display-stats", None, Supported),
    b("weak-sysctls", None, Ignored("namespace sysctls are written back strictly (a failure fails the restore)")),
    o("status-fd", None, Req, Supported),
    b("tcp-close", None, Supported),
    o("verbosity", Some('v'), Opt, Supported),
    o("ps-socket", None, Req, Supported),
    b("stream", None, NotBuilt("not built yet (criu-image-streamer)")),
    o("config", None, Req, Supported),
    o("no-default-config", None, N, Supported),
    o("tls-cacert", None, Req, Supported),
    o("tls-cacrl", None, Req, Supported),
    o("tls-cert", None, Req, Supported),
    o("tls-key", None, Req, Supported),
    b("tls", None, Supported),
    o("tls-no-cn-verify", None, N, Supported),
    o("cgroup-yard", None, Req, Ignored("stasis uses the mounted cgroup hierarchies, it mounts no yard")),
    o("pre-dump-mode", None, Req, Supported),
    o("file-validation", None, Req, Supported),
    b("skip-file-rwx-check", None, Ignored("the restore opens files with their recorded flags and reports the kernel's refusal by name")),
    o("lsm-mount-context", None, Req, Ignored(MNTNS)),
    o("network-lock", None, Req, Partial("`skip`/`none` honoured; `iptables`/`nftables` accepted: dumped connections are held in TCP repair mode, no firewall rules are added")),
    b("mntns-compat-mode", None, Ignored(MNTNS)),
    b("unprivileged", None, Ignored("stasis checks each privilege where it needs it")),
    b("ghost-fiemap", None, Supported),
    b("allow-uprobes", None, Ignored("stasis dumps no uprobes area")),
];

/// The option whose long name is `long` (without dashes).
pub fn by_long(long: &str) -> Option<&'static CriuOpt> {
    OPTIONS.iter().find(|o| o.long == long)
}

/// The option whose short letter is `c`.
pub fn by_short(c: char) -> Option<&'static CriuOpt> {
    OPTIONS.iter().find(|o| o.short == Some(c))
}

/// The CRIU option an argument names, with the spelling used: `--lazy-pages`, `--no-tls`,
/// `--port=1`, `-J` (first letter of a cluster).
fn named(arg: &str) -> Option<(&'static CriuOpt, String)> {
    if let Some(long) = arg.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or("");
        if let Some(opt) = by_long(name) {
            return Some((opt, format!("--{name}")));
        }
        let opt = by_long(name.strip_prefix("no-")?).filter(|o| o.negatable)?;
        return Some((opt, format!("--{name}")));
    }
    let c = arg.strip_prefix('-')?.chars().next()?;
    by_short(c).map(|o| (o, format!("-{c}")))
}

/// Refuses the first option that is not built yet, naming it: `--lazy-pages: not built yet
/// (...)`. Values of other options are skipped so that `-D --port` stays a directory.
pub fn refuse_not_built(args: &[std::ffi::OsString]) -> Result<(), String> {
    match split_not_built(args).1.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Splits `args` into the ones to parse and the refusals of options not built yet (each
/// removed with its value), so the command can still set up its log and report them there.
pub fn split_not_built(args: &[std::ffi::OsString]) -> (Vec<std::ffi::OsString>, Vec<String>) {
    let mut kept = Vec::with_capacity(args.len());
    let mut refused = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            kept.extend_from_slice(&args[i..]);
            break;
        }
        let mut width = 1;
        if let Some((opt, spelled)) = named(&a) {
            let attached = a.contains('=') || (!a.starts_with("--") && a.len() > 2);
            if opt.arg == Arg::Required && !attached {
                width = 2;
            }
            if let Status::NotBuilt(why) = opt.status {
                refused.push(format!("{spelled}: {why}"));
                i += width;
                continue;
            }
        }
        let end = (i + width).min(args.len());
        kept.extend_from_slice(&args[i..end]);
        i = end;
    }
    (kept, refused)
}

/// Options that take their value as the next argument (`-D DIR`, `--config FILE`), as the
/// verb finder must skip them.
pub fn takes_separate_value(arg: &str) -> bool {
    if arg.contains('=') {
        return false;
    }
    match arg.strip_prefix("--") {
        Some(long) => by_long(long).is_some_and(|o| o.arg == Arg::Required),
        None => {
            let mut cs = arg.chars();
            cs.next() == Some('-')
                && cs
                    .next()
                    .and_then(by_short)
                    .is_some_and(|o| o.arg == Arg::Required)
                && cs.next().is_none()
        }
    }
}

/// Folds CRIU's `--no-NAME` negations: a negation drops the earlier occurrences of the option
/// (long or short spelling) and itself, so the last spelling wins as with getopt.
pub fn fold_negations(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = Vec::with_capacity(args.len());
    for a in args {
        let s = a.to_string_lossy().into_owned();
        let neg = s
            .strip_prefix("--no-")
            .and_then(by_long)
            .filter(|o| o.negatable);
        match neg {
            Some(opt) => {
                let long = format!("--{}", opt.long);
                let short = opt.short.map(|c| format!("-{c}"));
                out.retain(|x| {
                    let x = x.to_string_lossy();
                    x != long && Some(x.as_ref()) != short.as_deref()
                });
            }
            None => out.push(a),
        }
    }
    out
}

/// The list of options stasis refuses, for `--help`.
pub fn refused_help() -> String {
    let mut s = String::from("CRIU options refused by name (not built yet):\n");
    for opt in OPTIONS {
        if let Status::NotBuilt(why) = opt.status {
            s.push_str(&format!("  --{:<24} {why}\n", opt.long));
        }
    }
    s.push_str(
        "\nEvery other CRIU 4.2 option is accepted by every command, as CRIU does (the ones that \
         do not concern a command are ignored by it). Boolean options can be negated with \
         --no-NAME (e.g. --no-display-stats).\n",
    );
    s
}

/// CRIU's `parse_size`: a number with an optional K, M or G suffix.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let (num, mult) = match v.find(['K', 'M', 'G']) {
        Some(i) => (
            &v[..i],
            match &v[i..i + 1] {
                "K" => 1u64 << 10,
                "M" => 1 << 20,
                _ => 1 << 30,
            },
        ),
        None => (v, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {v:?} (a number with an optional K, M or G)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn refusal_names_the_option_and_skips_values() {
        let e = refuse_not_built(&os(&["-t", "1", "--stream"])).unwrap_err();
        assert!(e.starts_with("--stream: not built yet"), "{e}");
        assert!(refuse_not_built(&os(&["-t", "1", "--lazy-pages"])).is_ok());
        assert!(refuse_not_built(&os(&["-D", "--port", "-t", "1"])).is_ok());
        let e = refuse_not_built(&os(&["--no-stream"])).unwrap_err();
        assert!(e.starts_with("--no-stream:"), "{e}");
        assert!(refuse_not_built(&os(&["--", "--stream"])).is_ok());
    }

    #[test]
    fn negation_last_wins() {
        let out = fold_negations(os(&["-j", "--display-stats", "--no-shell-job", "-R"]));
        assert_eq!(out, os(&["--display-stats", "-R"]));
        let out = fold_negations(os(&["--no-shell-job", "-j"]));
        assert_eq!(out, os(&["-j"]));
    }

    #[test]
    fn readme_lists_every_option() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("### Options")
            .nth(1)
            .expect("README has an Options section");
        for opt in OPTIONS {
            assert!(
                section.contains(&format!("`--{}", opt.long)),
                "README's option table lacks --{}",
                opt.long
            );
            if let Status::NotBuilt(_) = opt.status {
                let row = section
                    .lines()
                    .find(|l| l.contains(&format!("`--{}", opt.long)))
                    .unwrap();
                assert!(row.contains("refused"), "{row}");
            }
        }
    }

    #[test]
    fn sizes_as_criu() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10K"), Ok(10 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn separate_values() {
        assert!(takes_separate_value("-D"));
        assert!(takes_separate_value("--action-script"));
        assert!(!takes_separate_value("--timeout=3"));
        assert!(!takes_separate_value("-v"));
        assert!(!takes_separate_value("-R"));
    }
}
