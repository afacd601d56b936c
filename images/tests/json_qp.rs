//! The unix-socket-name converter against Python's own `quopri` (what crit uses): 400
//! seeded random byte strings, rich in the characters quoted-printable treats specially
//! (space, tab, `=`, `.`, CR, LF, NUL, 0xff), encoded by Python and by us, and decoded back.

use std::process::Command;

use stasis_images::json::qp;

const SCRIPT: &str = r#"
import quopri, random, json, sys
random.seed(7)
alph = [b'a', b' ', b'\t', b'=', b'.', b'\n', b'\r', b'\r\n', b'\x00', b'\xff', b'~', b'_']
cases = []
for n in range(400):
    L = random.randint(0, 120)
    if n % 3 == 0:
        data = bytes(random.getrandbits(8) for _ in range(L))
    else:
        data = b''.join(random.choice(alph) for _ in range(L))
    enc = quopri.encodestring(data)
    cases.append([data.hex(), enc.decode(), quopri.decodestring(enc).hex()])
json.dump(cases, sys.stdout)
"#;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn quoted_printable_matches_python_quopri() {
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .output()
        .expect("python3 runs (crit needs it too)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Vec<(String, String, String)> =
        serde_json::from_slice(&out.stdout).expect("python prints JSON");
    assert_eq!(cases.len(), 400);
    for (data, encoded, decoded) in cases {
        let data = unhex(&data);
        assert_eq!(qp::encode(&data), encoded, "encoding {data:?}");
        assert_eq!(
            qp::decode(&encoded),
            unhex(&decoded),
            "decoding {encoded:?}"
        );
    }
}
