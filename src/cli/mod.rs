//! The criu-compatible command line.
//!
//! One file per verb (`dump.rs`, `restore.rs`, `check.rs`, `crit.rs`, ...). Each verb exposes
//! `pub fn run(args: Vec<OsString>) -> i32`, receiving argv with the verb as `args[1]`, already
//! passed through [`common::normalize_args`]; it parses its own clap `Parser` that flattens
//! [`common::CommonArgs`] (every CRIU option: `-D`, `-o`, `-v`, `-t`, `--action-script`, ...,
//! see [`criu_options`] and [`criu_args`]) through [`common::start`], which also refuses by
//! name what is not built yet and sets up the log ([`log`]: CRIU's `Error (file:line): ...`
//! lines), runs the engine and returns the exit status as CRIU's: 0 on success, 1 on failure
//! (255 when a post-dump action script failed).
//! Options may come before or after the verb, as with CRIU: [`main_with_args`] moves the verb
//! to `args[1]`. Invoked as `criu`, the binary behaves the same; invoked as `crit`, it is the
//! crit tool.

use std::ffi::{OsStr, OsString};

pub(crate) mod check;
pub(crate) mod common;
pub(crate) mod convert;
pub(crate) mod crit;
pub(crate) mod criu_args;
pub mod criu_options;
pub(crate) mod dump;
pub mod lazy_pages;
pub(crate) mod log;
pub(crate) mod migrate;
pub(crate) mod page_server;
pub(crate) mod predump;
pub(crate) mod restore;
pub mod swrk;
pub(crate) mod tls_args;

/// A verb of the command line.
struct Verb {
    name: &'static str,
    about: &'static str,
    run: fn(Vec<OsString>) -> i32,
}

/// Every verb, in the order `--help` lists them.
const VERBS: &[Verb] = &[
    Verb {
        name: "crit",
        about: "decode, encode and explore image files (like CRIU's crit)",
        run: crit::main,
    },
    Verb {
        name: "restore",
        about: "restore a process tree from images",
        run: restore::run,
    },
    Verb {
        name: "dump",
        about: "checkpoint a process tree into an image directory",
        run: dump::run,
    },
    Verb {
        name: "pre-dump",
        about: "copy a running tree's memory ahead of an incremental dump",
        run: predump::run,
    },
    Verb {
        name: "dirty-tracker",
        about: "(internal) hold the dirty-page tracking of a pre-dump chain",
        run: predump::run_tracker,
    },
    Verb {
        name: "page-server",
        about: "receive pages from a dump over the network (CRIU's page-server protocol)",
        run: page_server::run,
    },
    Verb {
        name: "lazy-pages",
        about: "serve the page faults of a post-copy restore (CRIU's lazy-pages daemon)",
        run: lazy_pages::run,
    },
    Verb {
        name: "migrate",
        about: "move a running tree to another host (pre-copy live migration)",
        run: migrate::run_migrate,
    },
    Verb {
        name: "migrate-receive",
        about: "receive a migrating tree (and restore it with --restore)",
        run: migrate::run_receive,
    },
    Verb {
        name: "convert",
        about: "write plain CRIU images from compressed or encrypted ones",
        run: convert::run,
    },
    Verb {
        name: "check",
        about: "check which kernel features the engine can use here",
        run: check::run,
    },
    Verb {
        name: "swrk",
        about: "serve CRIU's RPC on the inherited socket FD (runc, crun, libcriu)",
        run: swrk::run_swrk,
    },
    Verb {
        name: "service",
        about: "serve CRIU's RPC on a unix socket (--address PATH)",
        run: swrk::run_service,
    },
];

/// The version line tools parse (`criu --version` prints `Version: X.Y`).
pub const VERSION_TEXT: &str = concat!(
    "Version: 4.2\nstasis ",
    env!("CARGO_PKG_VERSION"),
    " (CRIU-compatible images, format of CRIU 4.2)\n"
);

/// Parses `args` (argv including argv[0]) and runs the command; returns the exit status.
pub fn main_with_args(args: Vec<OsString>) -> i32 {
    let argv0 = args.first().and_then(|a| {
        std::path::Path::new(a)
            .file_name()
            .map(|f| f.to_os_string())
    });
    if argv0.as_deref() == Some(OsStr::new("crit")) {
        return crit::main(args);
    }
    // The verb is the first argument that is not an option (CRIU accepts options before it);
    // options that take a separate value must not be mistaken for the verb.
    let Some(pos) = find_verb(&args) else {
        return top_level(&args);
    };
    let mut args = args;
    let verb = args.remove(pos);
    args.insert(1, verb.clone());
    if verb == "crit" {
        args.remove(1);
        return crit::main(args);
    }
    // CRIU prints its version as soon as it parses -V, whatever the command.
    if args
        .iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "-V" || a == "--version")
    {
        print!("{VERSION_TEXT}");
        return 0;
    }
    let args = match common::normalize_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    match VERBS.iter().find(|v| verb == v.name) {
        Some(v) => (v.run)(args),
        None => {
            eprintln!(
                "Error: unknown command {:?}; try `{} --help`",
                verb,
                program_name(&args)
            );
            1
        }
    }
}

/// stasis-only options that take their value as the next argument (CRIU's come from
/// [`criu_options::OPTIONS`]).
const VALUE_OPTIONS: &[&str] = &["--profile", "--socket"];

fn find_verb(args: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if !a.starts_with('-') {
            return Some(i);
        }
        if a == "--" {
            return None;
        }
        i += if VALUE_OPTIONS.contains(&a.as_ref()) || criu_options::takes_separate_value(&a) {
            2
        } else {
            1
        };
    }
    None
}

fn program_name(args: &[OsString]) -> String {
    args.first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "stasis".into())
}

/// No verb: `--help`, `--version`, or a usage error.
fn top_level(args: &[OsString]) -> i32 {
    let name = program_name(args);
    let first = args.get(1).map(|a| a.to_string_lossy().into_owned());
    match first.as_deref() {
        Some("-V" | "--version") => {
            print!("{VERSION_TEXT}");
            0
        }
        Some("-h" | "--help") => {
            print!("{}", help_text(&name));
            0
        }
        _ => {
            eprint!("{}", help_text(&name));
            1
        }
    }
}

fn help_text(name: &str) -> String {
    let mut s = format!(
        "{name}: checkpoint/restore of Linux process trees, with CRIU's images and options\n\n\
         Usage: {name} COMMAND [OPTIONS]\n       {name} COMMAND --help\n\nCommands:\n"
    );
    for v in VERBS {
        s.push_str(&format!("  {:<10} {}\n", v.name, v.about));
    }
    s.push_str(
        "\nOptions for every command (CRIU's spellings, before or after the command):\n\
         \x20 -D, --images-dir DIR   directory of the image files\n\
         \x20 -W, --work-dir DIR     directory for logs (default: the images directory)\n\
         \x20 -o, --log-file FILE    log file, relative to the work directory\n\
         \x20 -v[v...], -vN, --verbosity=N  log level 0..4 (default 2)\n\
         \x20 --pidfile FILE         restore: write the root task's PID to FILE (dump: ignored)\n\
         \x20 --no-default-config    ignore /etc/criu/default.conf and ~/.criu/default.conf\n\
         \x20 --config FILE          read options from FILE\n\
         \x20 --timeout N            give up freezing the tree (or restoring it) after N seconds\n\
         \x20 -V, --version          print the version\n\
         \x20 and every other option of CRIU 4.2: `COMMAND --help` explains each\n\n",
    );
    s.push_str(&criu_options::refused_help());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn verb_after_options_is_found() {
        assert_eq!(
            find_verb(&os(&["criu", "-D", "dir", "-v4", "dump", "-t", "1"])),
            Some(4)
        );
        assert_eq!(find_verb(&os(&["criu", "--version"])), None);
    }

    #[test]
    fn unknown_verb_fails() {
        assert_eq!(main_with_args(os(&["stasis", "frobnicate"])), 1);
    }

    #[test]
    fn version_and_help_succeed() {
        assert_eq!(main_with_args(os(&["criu", "--version"])), 0);
        assert_eq!(main_with_args(os(&["stasis", "--help"])), 0);
    }
}
