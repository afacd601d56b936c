//! Golden tests of the crit JSON codec against the CRIU 4.2 fixtures.
//!
//! For every fixture image `X` that has crit 4.2's `X.json` beside it:
//! * our `decode --pretty` document equals the stored JSON (compared parsed);
//! * the text we print equals the stored file byte for byte (crit's `json.dump(indent=4)`
//!   plus the newline crit adds on stdout);
//! * `encode(decode(X))` is byte-identical to `X`, from plain and from pretty JSON.

mod common;

use std::path::Path;

use common::golden_pairs;
use serde_json::Value;
use stasis_images::json::{self, Codec};

type Result<T> = std::result::Result<T, String>;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn check_one(codec: &Codec, image: &Path, json_path: &Path) -> Result<()> {
    let bytes = read(image);
    let stored_text = String::from_utf8(read(json_path)).map_err(|e| e.to_string())?;
    let stored: Value = serde_json::from_str(&stored_text).map_err(|e| e.to_string())?;

    let pretty = json::decode_image(codec, &bytes, true).map_err(|e| format!("decode: {e}"))?;
    if pretty != stored {
        return Err(format!(
            "pretty JSON differs: {}",
            first_difference(&pretty, &stored, "")
        ));
    }
    let text = json::to_text(&pretty, true) + "\n";
    if text != stored_text {
        return Err("pretty JSON text differs from crit's".into());
    }
    let again = json::encode_image(codec, &pretty).map_err(|e| format!("encode pretty: {e}"))?;
    if again != bytes {
        return Err(format!(
            "encode(decode --pretty) differs ({} vs {} bytes, first at {})",
            again.len(),
            bytes.len(),
            first_byte_difference(&again, &bytes)
        ));
    }
    let plain =
        json::decode_image(codec, &bytes, false).map_err(|e| format!("decode plain: {e}"))?;
    // Through text, as a user would do it.
    let reparsed = json::parse_text(&json::to_text(&plain, false)).map_err(|e| e.to_string())?;
    let again = json::encode_image(codec, &reparsed).map_err(|e| format!("encode plain: {e}"))?;
    if again != bytes {
        return Err(format!(
            "encode(decode) differs ({} vs {} bytes, first at {})",
            again.len(),
            bytes.len(),
            first_byte_difference(&again, &bytes)
        ));
    }
    Ok(())
}

fn first_byte_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn first_difference(ours: &Value, theirs: &Value, path: &str) -> String {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let ka: Vec<&String> = a.keys().collect();
            let kb: Vec<&String> = b.keys().collect();
            if ka != kb {
                return format!("{path}: keys {ka:?} vs crit {kb:?}");
            }
            for (k, v) in a {
                if v != &b[k] {
                    return first_difference(v, &b[k], &format!("{path}.{k}"));
                }
            }
            format!("{path}: ?")
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    return first_difference(x, y, &format!("{path}[{i}]"));
                }
            }
            format!("{path}: ?")
        }
        _ => {
            let s = |v: &Value| {
                let t = v.to_string();
                if t.len() > 120 {
                    format!("{}...", &t[..120])
                } else {
                    t
                }
            };
            format!("{path}: ours {} vs crit {}", s(ours), s(theirs))
        }
    }
}

#[test]
fn every_fixture_decodes_like_crit_and_encodes_back_byte_identical() {
    let codec = Codec::criu().expect("descriptor set loads");
    let mut failures = Vec::new();
    let pairs = golden_pairs();
    for (image, json_path) in &pairs {
        if let Err(e) = check_one(codec, image, json_path) {
            failures.push(format!("{}: {e}", image.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixture images failed:\n{}",
        failures.len(),
        pairs.len(),
        failures.join("\n")
    );
}
