//! `(criu.ipadd)` fields: a repeated uint32 holding an address in network byte order, one
//! word for IPv4 and four for IPv6, shown as one address text (Python's `ipaddress`
//! `compressed` form: dotted quad, or lower-case hextets with the longest run of two or
//! more zero hextets written `::`, the first one on a tie).
//!
//! ```text
//!  [0x0100007f]                  -> ["127.0.0.1"]
//!  [0, 0, 0, 0x01000000]         -> ["::1"]
//! ```

use std::net::IpAddr;

/// Renders the words as crit does (`None` when there are neither 1 nor 4 words).
pub(crate) fn words_to_text(words: &[u32]) -> Option<String> {
    // The words hold the address bytes in memory order: the first byte is the low byte of
    // the (little-endian) word, i.e. ntohl() of the word is the address number.
    match words {
        [w] => {
            let b = w.to_le_bytes();
            Some(format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]))
        }
        [_, _, _, _] => {
            let mut hextets = [0u16; 8];
            for (i, w) in words.iter().enumerate() {
                let b = w.to_le_bytes();
                hextets[2 * i] = u16::from_be_bytes([b[0], b[1]]);
                hextets[2 * i + 1] = u16::from_be_bytes([b[2], b[3]]);
            }
            Some(compress_v6(&hextets))
        }
        _ => None,
    }
}

fn compress_v6(h: &[u16; 8]) -> String {
    // Longest run (>= 2) of zero hextets; the first one wins a tie.
    let (mut best_start, mut best_len) = (0usize, 0usize);
    let mut i = 0;
    while i < 8 {
        if h[i] == 0 {
            let start = i;
            while i < 8 && h[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                best_start = start;
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    let join = |s: &[u16]| {
        s.iter()
            .map(|x| format!("{x:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    if best_len < 2 {
        return join(h);
    }
    format!(
        "{}::{}",
        join(&h[..best_start]),
        join(&h[best_start + best_len..])
    )
}

/// Parses an address text back into words (1 for IPv4, 4 for IPv6).
pub(crate) fn text_to_words(text: &str) -> Result<Vec<u32>, String> {
    let addr: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 or IPv6 address"))?;
    Ok(match addr {
        IpAddr::V4(a) => vec![u32::from_le_bytes(a.octets())],
        IpAddr::V6(a) => a
            .octets()
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v6_like_python() {
        assert_eq!(words_to_text(&[0x0100007f]).unwrap(), "127.0.0.1");
        assert_eq!(words_to_text(&[0, 0, 0, 0x01000000]).unwrap(), "::1");
        assert_eq!(words_to_text(&[0, 0, 0, 0]).unwrap(), "::");
        // 2001:db8:0:1:0:0:0:1 -> the longer zero run is compressed
        let w = text_to_words("2001:db8:0:1::1").unwrap();
        assert_eq!(words_to_text(&w).unwrap(), "2001:db8:0:1::1");
        // a single zero hextet is not compressed
        let w = text_to_words("1:0:2:3:4:5:6:7").unwrap();
        assert_eq!(words_to_text(&w).unwrap(), "1:0:2:3:4:5:6:7");
        // IPv4-mapped stays in hextets (Python 3.11 style)
        let w = text_to_words("::ffff:1.2.3.4").unwrap();
        assert_eq!(words_to_text(&w).unwrap(), "::ffff:102:304");
        assert_eq!(text_to_words("127.0.0.1").unwrap(), vec![0x0100007f]);
        assert!(text_to_words("nope").is_err());
        assert!(words_to_text(&[1, 2]).is_none());
    }
}
