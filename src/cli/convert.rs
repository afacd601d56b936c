//! `stasis convert -D IN -o OUT [--encrypt-key FILE]`: plain CRIU images from a directory
//! with packed pages (`--compress`, `--encrypt-key` dumps): every packed pages file decoded
//! and checked, the inventory marked as CRIU's again, other files copied. See
//! [`crate::pages::convert`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use crate::pages::convert::{convert_dir, Others};
use crate::pages::pack::PackKey;

/// `stasis convert` arguments (its `-o` is the output directory, not a log file).
#[derive(Debug, Parser)]
#[command(
    name = "convert",
    about = "write plain CRIU images from a directory with compressed or encrypted pages"
)]
pub struct ConvertArgs {
    /// Input image directory.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    pub input: PathBuf,
    /// Output directory (created; must be empty if it exists).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Key file of encrypted pages.
    #[arg(long = "encrypt-key", value_name = "FILE")]
    pub encrypt_key: Option<PathBuf>,
}

/// `stasis convert ...`; returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let a: ConvertArgs = match super::common::parse_verb(&args) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let key = match a.encrypt_key.as_deref().map(PackKey::load).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("Error (convert): {e}");
            return 1;
        }
    };
    match convert_dir(&a.input, &a.output, key.as_ref(), Others::Copy) {
        Ok(r) => {
            println!(
                "{} packed pages files decoded ({} pages), {} other files copied into {}",
                r.decoded,
                r.pages,
                r.others,
                a.output.display()
            );
            for p in &r.parents {
                println!("parent images converted into {}", p.display());
            }
            0
        }
        Err(e) => {
            eprintln!("Error (convert): {e}");
            1
        }
    }
}
