//! Cross-check with an independent decoder: Debian's `crit` (CRIU 3.17, `/usr/bin/crit`, or
//! `$STASIS_CRIT`) must decode every image we encode from JSON, and agree with our JSON on
//! every field it knows.
//!
//! crit 3.17 predates CRIU 4.2's images, so it shows a subset of our fields. Known
//! differences (fixtures README): in `pagemap_entry` its `nr_pages` is field 2, which 4.2
//! calls `compat_nr_pages`; it has no name for VMA status bit 0x4000 (`VMA_AREA_MEMFD`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::debian_crit;
use serde_json::Value;
use stasis_images::json::{self, Codec};

fn images_with_json() -> Vec<PathBuf> {
    common::golden_pairs()
        .into_iter()
        .map(|(image, _)| image)
        .collect()
}

/// crit 3.17's value `theirs` must be contained in ours (objects: every key of theirs).
fn contained(theirs: &Value, ours: &Value, path: &str, errors: &mut Vec<String>) {
    match (theirs, ours) {
        (Value::Object(t), Value::Object(o)) => {
            for (k, tv) in t {
                // Field 2 of pagemap_entry: `nr_pages` in 3.17, `compat_nr_pages` in 4.2.
                let key = if k == "nr_pages"
                    && o.contains_key("compat_nr_pages")
                    && path.contains("entries[")
                {
                    "compat_nr_pages"
                } else {
                    k.as_str()
                };
                match o.get(key) {
                    Some(ov) => contained(tv, ov, &format!("{path}.{k}"), errors),
                    None => errors.push(format!("{path}.{k}: missing from ours")),
                }
            }
        }
        (Value::Array(t), Value::Array(o)) => {
            if t.len() != o.len() {
                errors.push(format!("{path}: {} items vs ours {}", t.len(), o.len()));
                return;
            }
            for (i, (tv, ov)) in t.iter().zip(o).enumerate() {
                contained(tv, ov, &format!("{path}[{i}]"), errors);
            }
        }
        // VMA status bit 0x4000 has no name in crit 3.17.
        (Value::String(t), Value::String(o))
            if t != o && t.replace("0x4000", "VMA_AREA_MEMFD") != *o =>
        {
            errors.push(format!("{path}: {t:?} vs ours {o:?}"));
        }
        (Value::String(_), Value::String(_)) => {}
        (t, o) if t != o => errors.push(format!("{path}: {t} vs ours {o}")),
        _ => {}
    }
}

#[test]
fn debian_crit_decodes_what_we_encode_and_agrees() {
    let crit = debian_crit();
    let codec = Codec::criu().expect("descriptor set loads");
    let tmp = std::env::temp_dir().join(format!("stasis-crit317-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let mut failures = Vec::new();
    let images = images_with_json();
    for image in &images {
        let bytes = std::fs::read(image).expect("read image");
        let ours = match json::decode_image(codec, &bytes, true) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: our decode: {e}", image.display()));
                continue;
            }
        };
        let encoded = match json::encode_image(codec, &ours) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!("{}: our encode: {e}", image.display()));
                continue;
            }
        };
        let file = tmp.join(image.file_name().expect("file name"));
        std::fs::write(&file, &encoded).expect("write temp image");
        let out = Command::new(&crit)
            .args(["decode", "--pretty", "-i"])
            .arg(&file)
            .output()
            .expect("run crit");
        if !out.status.success() {
            failures.push(format!(
                "{}: crit 3.17 failed on our encoding: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
            continue;
        }
        let theirs: Value = serde_json::from_slice(&out.stdout).expect("crit prints JSON");
        let mut errors = Vec::new();
        contained(&theirs, &ours, "", &mut errors);
        if !errors.is_empty() {
            failures.push(format!(
                "{}: {}",
                image.display(),
                errors[..errors.len().min(3)].join("; ")
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        failures.is_empty(),
        "{} of {} images disagree with crit 3.17:\n{}",
        failures.len(),
        images.len(),
        failures.join("\n")
    );
}
