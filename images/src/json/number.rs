//! Integer text forms used by crit: `"0x%x"` output and Python's `int(text, 0)` /
//! `int(text)` input rules.
//!
//! All integers are handled as `i128`, which holds every protobuf integer type, so range
//! checks happen once, when a value is stored into a field.

/// Formats like Python's `"0x%x" % value` (negative values get a leading `-`).
pub(crate) fn format_hex(value: i128) -> String {
    if value < 0 {
        format!("-0x{:x}", value.unsigned_abs())
    } else {
        format!("0x{value:x}")
    }
}

/// Splits an optional sign; returns (negative, rest).
fn split_sign(s: &str) -> (bool, &str) {
    if let Some(r) = s.strip_prefix('-') {
        (true, r)
    } else if let Some(r) = s.strip_prefix('+') {
        (false, r)
    } else {
        (false, s)
    }
}

/// Digits with Python's underscore rule (single `_` between digits, none at the ends).
fn parse_digits(digits: &str, radix: u32, allow_leading_underscore: bool) -> Option<i128> {
    if digits.is_empty() || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    if digits.starts_with('_') && !allow_leading_underscore {
        return None;
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if clean.is_empty() {
        return None;
    }
    i128::from_str_radix(&clean, radix).ok()
}

fn apply_sign(negative: bool, v: i128) -> i128 {
    if negative {
        -v
    } else {
        v
    }
}

/// Parses like Python's `int(text, 0)`: optional sign, `0x`/`0o`/`0b` prefixes, decimal
/// without leading zeros, surrounding whitespace ignored.
pub(crate) fn parse_int_literal(text: &str) -> Option<i128> {
    let (negative, rest) = split_sign(text.trim());
    let lower = rest.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else {
        // Decimal: a leading zero is only allowed for zero itself ("0", "00", "0_0").
        if lower.starts_with('0') && lower.chars().any(|c| c != '0' && c != '_') {
            return None;
        }
        return parse_digits(&lower, 10, false).map(|v| apply_sign(negative, v));
    };
    parse_digits(digits, radix, true).map(|v| apply_sign(negative, v))
}

/// Parses like Python's `int(text)` (base 10, leading zeros allowed).
pub(crate) fn parse_decimal(text: &str) -> Option<i128> {
    let (negative, rest) = split_sign(text.trim());
    parse_digits(rest, 10, false).map(|v| apply_sign(negative, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_like_python() {
        assert_eq!(format_hex(0x401000), "0x401000");
        assert_eq!(format_hex(0), "0x0");
        assert_eq!(format_hex(-5), "-0x5");
        assert_eq!(format_hex(u64::MAX as i128), "0xffffffffffffffff");
    }

    #[test]
    fn int_literals_like_python() {
        assert_eq!(parse_int_literal("0x401000"), Some(0x401000));
        assert_eq!(parse_int_literal(" 0X1f "), Some(31));
        assert_eq!(parse_int_literal("-0x5"), Some(-5));
        assert_eq!(parse_int_literal("0o17"), Some(15));
        assert_eq!(parse_int_literal("0b101"), Some(5));
        assert_eq!(parse_int_literal("123"), Some(123));
        assert_eq!(parse_int_literal("1_000"), Some(1000));
        assert_eq!(parse_int_literal("0"), Some(0));
        assert_eq!(parse_int_literal("00"), Some(0));
        assert_eq!(parse_int_literal("010"), None);
        assert_eq!(parse_int_literal(""), None);
        assert_eq!(parse_int_literal("0x"), None);
        assert_eq!(parse_int_literal("abc"), None);
        assert_eq!(parse_decimal("010"), Some(10));
        assert_eq!(parse_decimal("254"), Some(254));
        assert_eq!(parse_decimal("x"), None);
    }
}
