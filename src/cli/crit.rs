//! `stasis crit`: decode, encode, show, info and explore image files, like CRIU's crit.
//!
//! ```text
//!  stasis crit decode [-i IMG] [-o JSON] [--pretty]   image -> JSON (stdin/stdout by default)
//!  stasis crit encode [-i JSON] [-o IMG]              JSON (plain or pretty) -> image
//!  stasis crit show IMG [--nopl]                      = decode --pretty to stdout
//!  stasis crit info IMG                               {"magic": ..., "count": ...}
//!  stasis crit x DIR ps|fds|mems|rss                  explore an image directory
//! ```
//!
//! The same tool runs when the binary is invoked as `crit`. Output text is byte-for-byte what
//! CRIU's crit prints (Python `json.dump`, a newline added only on standard output). Errors
//! name the file, the entry index and the field; the exit status is then 1.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use stasis_images::json::{self, explore, Codec, EncodeTextError, JsonError};
use stasis_images::limits;

/// crit's command line.
#[derive(Debug, Parser)]
#[command(
    name = "crit",
    about = "CRiu Image Tool: convert CRIU image files to and from JSON and explore image directories",
    version
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Convert a CRIU image from binary to JSON.
    ///
    /// Prints single-line JSON, or with --pretty indented JSON with addresses in hex, flag
    /// fields as names ("PROT_READ | PROT_WRITE"), device numbers as "major:minor" and
    /// addresses as text. Raw images (pages-*.img) have no entries and are refused. Packed
    /// pages files (pages-*.pack.img, stasis's extension) show their header and records.
    Decode {
        /// Image file to decode (standard input by default).
        #[arg(short = 'i', long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
        /// Where to write the JSON (standard output by default).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Multi-line with indents, and some numeric fields in field-specific form.
        #[arg(long)]
        pretty: bool,
    },
    /// Convert JSON (as written by decode, plain or --pretty) back to a binary CRIU image.
    ///
    /// Integer fields accept numbers and the --pretty forms ("0x1000", "A | B", "8:1",
    /// addresses). Unknown field names are errors.
    Encode {
        /// JSON file to encode (standard input by default).
        #[arg(short = 'i', long = "in", value_name = "FILE")]
        input: Option<PathBuf>,
        /// Where to write the image (standard output by default).
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Show an image as human-readable JSON (decode --pretty to standard output).
    Show {
        /// Image file to show.
        #[arg(value_name = "FILE")]
        input: PathBuf,
        /// Do not show entry payloads (extra data), only their sizes.
        #[arg(long)]
        nopl: bool,
    },
    /// Show the magic name and the number of entries of an image.
    Info {
        /// Image file.
        #[arg(value_name = "FILE")]
        input: PathBuf,
    },
    /// Explore an image directory: process tree, open files, memory mappings or dumped pages.
    X {
        /// Image directory (as written by dump).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// ps: process tree; fds: open files; mems: memory mappings; rss: dumped pages
        /// against mappings.
        #[arg(value_enum, value_name = "WHAT")]
        what: What,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum What {
    /// Process tree (PID, PGID, SID, command).
    Ps,
    /// File descriptors of each task.
    Fds,
    /// Memory mappings of each task.
    Mems,
    /// Dumped page runs against the mappings they cover.
    Rss,
}

/// Errors of the crit tool; each names the file involved.
#[derive(Debug, thiserror::Error)]
enum CritError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Image {
        path: String,
        #[source]
        source: JsonError,
    },
    #[error("{path}: {source}")]
    Input {
        path: String,
        #[source]
        source: stasis_images::error::ImageError,
    },
    #[error("{path}: cannot read JSON ({reason}); encode expects JSON input, not an image")]
    NotJson { path: String, reason: String },
    #[error(transparent)]
    Explore(#[from] explore::ExploreError),
}

fn display(path: Option<&Path>) -> String {
    path.map_or_else(|| "<stdin>".to_string(), |p| p.display().to_string())
}

/// Reads an input file (a regular file) or standard input, up to `cap` bytes
/// (`stasis_images::limits`); more is an error before anything else is allocated.
fn read_input(path: Option<&Path>, cap: u64) -> Result<Vec<u8>, CritError> {
    read_checked(path, cap, |_| Ok(()))
}

/// Like [`read_input`] for an image: its magic words are checked before the rest is read
/// (`/dev/zero` on standard input fails at once instead of filling memory).
fn read_image(path: Option<&Path>) -> Result<Vec<u8>, CritError> {
    read_checked(path, limits::MAX_IMAGE_FILE, |head| {
        if head.starts_with(&crate::pages::pack::MAGIC) {
            // A packed pages file (stasis extension): see `pack_doc`.
            return Ok(());
        }
        json::split_magic(&json::CriuMagic, head)
            .map(|_| ())
            .map_err(|source| CritError::Image {
                path: display(path),
                source,
            })
    })
}

/// Reads the first 8 bytes, hands them to `check_head`, then reads the rest up to `cap`.
fn read_checked(
    path: Option<&Path>,
    cap: u64,
    check_head: impl FnOnce(&[u8]) -> Result<(), CritError>,
) -> Result<Vec<u8>, CritError> {
    let input_err = |source| CritError::Input {
        path: display(path),
        source,
    };
    let mut r: Box<dyn Read> = match path {
        Some(p) => Box::new(limits::open_regular(p, cap).map_err(input_err)?.0),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut head = Vec::with_capacity(8);
    (&mut r)
        .take(8)
        .read_to_end(&mut head)
        .map_err(|source| CritError::Io {
            path: display(path),
            source,
        })?;
    check_head(&head)?;
    let rest = limits::read_capped(
        r,
        cap.saturating_sub(head.len() as u64),
        &Default::default(),
    )
    .map_err(input_err)?;
    head.extend_from_slice(&rest);
    Ok(head)
}

/// Writes `data` to the file or to standard output (a closed pipe is not an error).
fn write_output(path: Option<&Path>, data: &[u8]) -> Result<(), CritError> {
    let res = match path {
        Some(p) => std::fs::write(p, data),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(data).and_then(|_| out.flush())
        }
    };
    match res {
        Err(e) if path.is_none() && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(CritError::Io {
            path: path.map_or_else(|| "<stdout>".into(), |p| p.display().to_string()),
            source,
        }),
        Ok(()) => Ok(()),
    }
}

fn codec() -> Result<&'static Codec, CritError> {
    Codec::criu().map_err(|source| CritError::Image {
        path: "built-in message definitions".into(),
        source,
    })
}

/// A packed pages file (stasis extension) as JSON: its header and its records' heads (no
/// key is needed: data is neither decoded nor authenticated).
fn pack_doc(input: Option<&Path>, bytes: &[u8]) -> Option<Result<Value, CritError>> {
    use crate::pages::pack;
    if !bytes.starts_with(&pack::MAGIC) {
        return None;
    }
    let name = display(input);
    Some(
        pack::list_from(Path::new(&name), bytes)
            .map(|(info, recs)| {
                let file_id: String = info.file_id.iter().map(|b| format!("{b:02x}")).collect();
                serde_json::json!({
                    "magic": "STASIS_PAGES_PACK",
                    "header": {
                        "version": info.version, "zstd": info.zstd, "sealed": info.sealed,
                        "chunk_pages": info.chunk_pages, "pages_id": info.pages_id,
                        "level": info.level, "file_id": file_id,
                    },
                    "entries": recs.iter().map(|r| serde_json::json!({
                        "offset": r.offset, "kind": r.kind_name(), "index": r.index,
                        "pages": r.pages, "stored": r.stored,
                    })).collect::<Vec<_>>(),
                })
            })
            .map_err(|e| CritError::Io {
                path: name,
                source: std::io::Error::other(e.to_string()),
            }),
    )
}

/// The crit text of an image (streamed: memory is the input and the text); `nopl` replaces
/// payloads by their size.
fn decode_text(input: Option<&Path>, pretty: bool, nopl: bool) -> Result<String, CritError> {
    let bytes = read_image(input)?;
    if let Some(doc) = pack_doc(input, &bytes) {
        return Ok(json::to_text(&doc?, pretty));
    }
    let mut edit = |magic: &str, e: &mut Value| {
        if nopl {
            strip_payload(magic, e)
        }
    };
    json::decode_to_text(codec()?, &bytes, pretty, &mut edit).map_err(|source| CritError::Image {
        path: display(input),
        source,
    })
}

/// crit's size text for `--nopl` ("3000" bytes -> "2.9KB").
fn human_readable(n: usize) -> String {
    let mut num = n as f64;
    for unit in ["", "K", "M", "G", "T", "P", "E", "Z"] {
        if num < 1024.0 {
            return if num.fract() == 0.0 {
                format!("{num:.0}{unit}B")
            } else {
                format!("{num:.1}{unit}B")
            };
        }
        num /= 1024.0;
    }
    format!("{num:.1}YB")
}

fn payload_size(extra: &Value) -> usize {
    let b64 = |v: &Value| {
        v.as_str()
            .and_then(|s| json::b64::decodebytes(s).ok())
            .map_or(0, |d| d.len())
    };
    match extra {
        Value::String(_) => b64(extra),
        Value::Object(m) => m.values().map(b64).sum(),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Number(_) => 2,
                Value::String(_) => b64(v),
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// Replaces an entry's payload by its size, like crit's `show --nopl` (ghost file data is
/// dropped).
fn strip_payload(magic: &str, entry: &mut Value) {
    let Some(e) = entry.as_object_mut() else {
        return;
    };
    if let Some(extra) = e.get("extra") {
        if magic == "GHOST_FILE" {
            e.shift_remove("extra");
        } else {
            let size = payload_size(extra);
            e.insert(
                "extra".into(),
                Value::String(format!("... <{}>", human_readable(size))),
            );
        }
    }
}

fn run(cmd: Cmd) -> Result<(), CritError> {
    match cmd {
        Cmd::Decode {
            input,
            output,
            pretty,
        } => {
            let mut text = decode_text(input.as_deref(), pretty, false)?;
            if output.is_none() {
                text.push('\n');
            }
            write_output(output.as_deref(), text.as_bytes())
        }
        Cmd::Show { input, nopl } => {
            let text = decode_text(Some(&input), true, nopl)? + "\n";
            write_output(None, text.as_bytes())
        }
        Cmd::Encode { input, output } => {
            let data = read_input(input.as_deref(), limits::MAX_JSON_TEXT)?;
            let text = String::from_utf8(data).map_err(|_| CritError::NotJson {
                path: display(input.as_deref()),
                reason: "not UTF-8 text".into(),
            })?;
            let bytes = json::encode_text(codec()?, &text).map_err(|e| match e {
                EncodeTextError::Syntax(e) => CritError::NotJson {
                    path: display(input.as_deref()),
                    reason: e.to_string(),
                },
                EncodeTextError::Image(source) => CritError::Image {
                    path: display(input.as_deref()),
                    source,
                },
            })?;
            write_output(output.as_deref(), &bytes)
        }
        Cmd::Info { input } => {
            let bytes = read_image(Some(&input))?;
            if let Some(doc) = pack_doc(Some(&input), &bytes) {
                let n = doc?["entries"].as_array().map_or(0, Vec::len);
                let info = serde_json::json!({"magic": "STASIS_PAGES_PACK", "count": n});
                let text = json::to_text(&info, true) + "\n";
                return write_output(None, text.as_bytes());
            }
            let info = json::info(codec()?, &bytes).map_err(|source| CritError::Image {
                path: input.display().to_string(),
                source,
            })?;
            let text = json::to_text(&info, true) + "\n";
            write_output(None, text.as_bytes())
        }
        Cmd::X { dir, what } => {
            let which = match what {
                What::Ps => explore::Explorer::Ps,
                What::Fds => explore::Explorer::Fds,
                What::Mems => explore::Explorer::Mems,
                What::Rss => explore::Explorer::Rss,
            };
            let text = explore::explore(codec()?, &dir, which)?;
            write_output(None, text.as_bytes())
        }
    }
}

/// Runs the crit tool with `args` (argv[0] first); returns the exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    let invoked_as_crit = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|f| f == "crit");
    let bin_name = if invoked_as_crit {
        "crit"
    } else {
        "stasis crit"
    };
    let matches = match Cli::command().bin_name(bin_name).try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            // --help and --version are not failures.
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return 1;
        }
    };
    match run(cli.cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_crit() {
        assert_eq!(human_readable(0), "0B");
        assert_eq!(human_readable(1000), "1000B");
        assert_eq!(human_readable(3000), "2.9KB");
        assert_eq!(human_readable(4096), "4KB");
    }
}
