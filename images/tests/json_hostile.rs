//! The crit JSON codec on damaged input: truncated and bit-flipped images and mangled
//! JSON documents must give errors, never panics or huge allocations.

mod common;

use common::fixtures;
use serde_json::Value;
use stasis_images::json::{self, Codec};

fn sample_images() -> Vec<Vec<u8>> {
    let dir = fixtures().join("criu-4.2/fx-files");
    [
        "core-30300.img",
        "mm-30300.img",
        "files.img",
        "pagemap-30300.img",
        "pipes-data.img",
        "ghost-file-1.img",
        "inventory.img",
        "stats-dump",
    ]
    .iter()
    .map(|f| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("fixture {f}: {e}")))
    .collect()
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn damaged_images_give_errors_not_panics() {
    let codec = Codec::criu().expect("descriptor set loads");
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for image in sample_images() {
        // every truncation point of the first 200 bytes, then some further ones
        let mut cuts: Vec<usize> = (0..image.len().min(200)).collect();
        cuts.extend((0..50).map(|_| rng.below(image.len())));
        for cut in cuts {
            let _ = json::decode_image(codec, &image[..cut], true);
        }
        for _ in 0..300 {
            let mut bad = image.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bad.len());
                bad[at] ^= 1 << rng.below(8);
            }
            for pretty in [false, true] {
                if let Ok(doc) = json::decode_image(codec, &bad, pretty) {
                    // whatever decodes must encode again, unless (as with crit) a flipped
                    // bit dropped a required field, which encode refuses
                    if let Err(e) = json::encode_image(codec, &doc) {
                        assert!(e.to_string().contains("required field"), "{e}");
                    }
                }
            }
        }
    }
    // a huge entry length is refused before allocating
    let mut huge = Vec::new();
    huge.extend_from_slice(&0x5456_4319u32.to_le_bytes());
    huge.extend_from_slice(&0x5027_3030u32.to_le_bytes()); // PSTREE
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(json::decode_image(codec, &huge, false).is_err());
}

fn mangle(v: &mut Value, rng: &mut Rng) {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if rng.below(8) == 0 {
                    let choice = rng.below(7);
                    map[&k] = match choice {
                        0 => Value::from(u64::MAX),
                        1 => Value::from(-1),
                        2 => Value::from("0xzz | NOPE"),
                        3 => Value::Null,
                        4 => Value::from(vec![Value::from("x")]),
                        5 => Value::from(1.5),
                        _ => Value::from("1:2:3"),
                    };
                } else {
                    mangle(&mut map[&k], rng);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mangle(i, rng)),
        _ => {}
    }
}

#[test]
fn mangled_json_gives_errors_not_panics() {
    let codec = Codec::criu().expect("descriptor set loads");
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let mut errors = 0;
    for image in sample_images() {
        let doc = json::decode_image(codec, &image, true).expect("fixture decodes");
        for _ in 0..100 {
            let mut bad = doc.clone();
            mangle(&mut bad, &mut rng);
            if let Err(e) = json::encode_image(codec, &bad) {
                errors += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(
        errors > 100,
        "mangling should mostly produce errors, got {errors}"
    );
}
