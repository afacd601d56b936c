//! Quoted-printable text, the `(criu.conv) = "unix_name"` converter of crit (Python's
//! `quopri.encodestring` / `quopri.decodestring`, i.e. `binascii.b2a_qp` in text mode
//! without tab quoting and `a2b_qp`).
//!
//! ```text
//!  "\0/tmp/sock=x"  ->  "=00/tmp/sock=3Dx"
//!  bytes > 126, '=', control bytes (not \t \r \n) -> "=XX" (upper-case hex)
//!  a space or tab that ends the data or a line -> "=XX"
//!  lines longer than 76 columns are broken with a soft break "=\n"
//! ```

const MAX_LINE: usize = 76;

fn push_hex(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push(b'=');
    out.push(HEX[(c >> 4) as usize]);
    out.push(HEX[(c & 15) as usize]);
}

/// Encodes like `quopri.encodestring(data)`.
pub fn encode(data: &[u8]) -> String {
    let crlf = data
        .iter()
        .position(|&c| c == b'\n')
        .is_some_and(|p| p > 0 && data[p - 1] == b'\r');
    let newline: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut out: Vec<u8> = Vec::with_capacity(data.len() * 3);
    let mut linelen = 0usize;
    let mut i = 0usize;
    while i < data.len() {
        let c = data[i];
        let next = data.get(i + 1).copied();
        let at_end = i + 1 == data.len();
        let lone_dot = c == b'.' && linelen == 0 && matches!(next, None | Some(b'\n' | b'\r' | 0));
        let needs_quote = c > 126
            || c == b'='
            || lone_dot
            || ((c == b'\t' || c == b' ') && at_end)
            || (c < 33 && c != b'\r' && c != b'\n' && c != b'\t' && c != b' ');
        if needs_quote {
            if linelen + 3 >= MAX_LINE {
                out.push(b'=');
                out.extend_from_slice(newline);
                linelen = 0;
            }
            push_hex(&mut out, c);
            linelen += 3;
            i += 1;
        } else if c == b'\n' || (c == b'\r' && next == Some(b'\n')) {
            linelen = 0;
            if let Some(&last) = out.last() {
                if last == b' ' || last == b'\t' {
                    out.pop();
                    push_hex(&mut out, last);
                }
            }
            out.extend_from_slice(newline);
            i += if c == b'\r' { 2 } else { 1 };
        } else {
            if !at_end && next != Some(b'\n') && linelen + 1 >= MAX_LINE {
                out.push(b'=');
                out.extend_from_slice(newline);
                linelen = 0;
            }
            linelen += 1;
            out.push(c);
            i += 1;
        }
    }
    // Only ASCII bytes are ever emitted.
    out.into_iter().map(char::from).collect()
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Decodes like `quopri.decodestring(text)`.
pub fn decode(text: &str) -> Vec<u8> {
    let data = text.as_bytes();
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0usize;
    while i < data.len() {
        if data[i] != b'=' {
            out.push(data[i]);
            i += 1;
            continue;
        }
        i += 1;
        if i >= data.len() {
            break;
        }
        match data[i] {
            b'\n' | b'\r' => {
                // Soft line break: skip to past the end of the line.
                while i < data.len() && data[i] != b'\n' {
                    i += 1;
                }
                if i < data.len() {
                    i += 1;
                }
            }
            b'=' => {
                out.push(b'=');
                i += 1;
            }
            c => match (hex_val(c), data.get(i + 1).and_then(|&d| hex_val(d))) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'='),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings produced with Python 3.11 `quopri.encodestring`.
    #[test]
    fn matches_python_quopri() {
        assert_eq!(encode(b"\0/tmp/sock=x"), "=00/tmp/sock=3Dx");
        assert_eq!(encode(b"abc "), "abc=20");
        assert_eq!(encode(b"a b\tc"), "a b\tc");
        assert_eq!(encode(b"x \ny"), "x=20\ny");
        assert_eq!(encode(b"\xff\x80"), "=FF=80");
        assert_eq!(encode(b""), "");
        let long = vec![b'a'; 100];
        let enc = encode(&long);
        assert_eq!(enc, format!("{}=\n{}", "a".repeat(75), "a".repeat(25)));
        assert_eq!(decode(&enc), long);
        let zeros = vec![0u8; 30];
        assert_eq!(decode(&encode(&zeros)), zeros);
    }

    #[test]
    fn roundtrip_all_bytes() {
        let data: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        assert_eq!(decode(&encode(&data)), data);
    }
}
