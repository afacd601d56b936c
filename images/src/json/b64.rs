//! Base64 in the style of Python's `base64.encodebytes`, which crit uses for bytes fields
//! and extra payloads: standard alphabet, a `\n` after every 76 characters (57 input bytes)
//! and after the last line; empty input gives the empty string.
//!
//! ```text
//!  bytes[0..57]   -> 76 chars "\n"
//!  bytes[57..114] -> 76 chars "\n"
//!  rest           -> <=76 chars (padded with '=') "\n"
//! ```
//!
//! Decoding ignores ASCII whitespace (so single-line base64 is accepted too).

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine};

const LINE_BYTES: usize = 57;

const ENCODER: GeneralPurpose = base64::engine::general_purpose::STANDARD;
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes like `base64.encodebytes(data).decode()`.
pub fn encodebytes(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() / 3 * 4 + data.len() / LINE_BYTES + 8);
    for chunk in data.chunks(LINE_BYTES) {
        ENCODER.encode_string(chunk, &mut out);
        out.push('\n');
    }
    out
}

/// Decodes base64 text, ignoring whitespace; the error says what is wrong.
pub fn decodebytes(text: &str) -> Result<Vec<u8>, String> {
    let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    DECODER
        .decode(clean.as_bytes())
        .map_err(|e| format!("invalid base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_76() {
        assert_eq!(encodebytes(b""), "");
        assert_eq!(encodebytes(b"a"), "YQ==\n");
        let data: Vec<u8> = (0..=255u8).collect();
        let text = encodebytes(&data);
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[..4].iter().all(|l| l.len() == 76));
        assert!(text.ends_with('\n'));
        assert_eq!(decodebytes(&text).unwrap(), data);
        assert_eq!(decodebytes("YQ").unwrap(), b"a");
        assert!(decodebytes("Y*Q=").is_err());
    }
}
