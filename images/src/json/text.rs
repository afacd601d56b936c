//! JSON text exactly as Python's `json.dump` writes it (crit's output):
//!
//! ```text
//!  indent None (plain):  {"magic": "PSTREE", "entries": [{"pid": 1, "threads": [1]}]}
//!  indent 4 (--pretty):  {
//!                            "magic": "PSTREE",
//!                            "entries": [
//!                                {
//!                                    "pid": 1,
//!  ...                   empty containers stay "[]" / "{}"
//! ```
//!
//! Strings are ASCII-only (`ensure_ascii`): `"` `\` and `\b \f \n \r \t` get their short
//! escapes, every other byte outside `' '..='~'` becomes `\u00xx` (lower-case hex), and
//! characters beyond the BMP become a surrogate pair.

use std::fmt::Write;

use serde_json::Value;

/// Serialises `value` like `json.dumps(value, indent=indent)`.
pub fn to_python_json(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_value(&mut out, value, indent, 0);
    out
}

/// Appends `value` as it appears nested `level` deep in a document (`json.dumps` layout).
pub fn write_nested(out: &mut String, value: &Value, indent: Option<usize>, level: usize) {
    write_value(out, value, indent, level);
}

fn newline(out: &mut String, indent: usize, level: usize) {
    out.push('\n');
    for _ in 0..indent * level {
        out.push(' ');
    }
}

fn write_value(out: &mut String, value: &Value, indent: Option<usize>, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                if let Some(n) = indent {
                    newline(out, n, level + 1);
                }
                write_value(out, item, indent, level + 1);
            }
            if let Some(n) = indent {
                newline(out, n, level);
            }
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                if let Some(n) = indent {
                    newline(out, n, level + 1);
                }
                write_string(out, key);
                out.push_str(": ");
                write_value(out, item, indent, level + 1);
            }
            if let Some(n) = indent {
                newline(out, n, level);
            }
            out.push('}');
        }
    }
}

/// Appends `s` as a JSON string literal (ASCII only, like Python).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_and_indented_like_python() {
        let v = json!({"magic": "X", "entries": [{"a": 1, "b": [], "c": {}}, {"d": [1, 2]}]});
        assert_eq!(
            to_python_json(&v, None),
            r#"{"magic": "X", "entries": [{"a": 1, "b": [], "c": {}}, {"d": [1, 2]}]}"#
        );
        let expected = "{\n    \"magic\": \"X\",\n    \"entries\": [\n        {\n            \"a\": 1,\n            \"b\": [],\n            \"c\": {}\n        },\n        {\n            \"d\": [\n                1,\n                2\n            ]\n        }\n    ]\n}";
        assert_eq!(to_python_json(&v, Some(4)), expected);
    }

    #[test]
    fn ascii_escapes_like_python() {
        let v = json!("a\"\\\n\t\u{1}\u{7f}é😀/");
        assert_eq!(
            to_python_json(&v, None),
            r#""a\"\\\n\t\u0001\u007f\u00e9\ud83d\ude00/""#
        );
        let v = json!(18446744073709551615u64);
        assert_eq!(to_python_json(&v, None), "18446744073709551615");
    }
}
