//! One protobuf message (a [`DynamicMessage`]) to and from crit's JSON object.
//!
//! ```text
//!  to JSON (crit's pb2dict)                    from JSON (crit's dict2pb)
//!  ─────────────────────────                   ──────────────────────────
//!  set fields only, field-number order         keys in any order; unknown keys are errors
//!  message   -> object (hex inherited)         object -> message (present even if empty)
//!  repeated  -> array (empty ones absent)      array  -> repeated
//!  bytes     -> base64 lines / conv text       base64 (whitespace ignored) / conv text
//!  enum      -> value name                     name (or number)
//!  integers  -> JSON numbers; in --pretty:     numbers, or strings: "0x..", flag names
//!     hex   "0x401000"                           "A | B | 0x10", "major:minor", dict
//!     dev   "major:minor"                        names, address text
//!     flags "A | B | 0x10" ("" for 0)
//!     dict  name, or the number if unnamed
//!     ipadd one address text for the whole repeated field
//! ```
//!
//! From JSON, a message lacking a `required` field (also nested) is an error, as in crit
//! (protobuf refuses to serialise it); to JSON, such a message shows as it is (crit's
//! decode shows it too).
//!
//! `--pretty` rules are checked in crit's order: hex, then dev, then flags, then dict.

use std::fmt;

use prost_reflect::{
    Cardinality, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Map, Number, Value as Json};

use super::error::FieldError;
use super::number::{format_hex, parse_decimal, parse_int_literal};
use super::opts::{FieldOpts, OptsTable};
use super::{b64, ipaddr, qp, tables};

/// Where a value sits inside an entry, for error messages (`core_entry.tc.comm`).
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    Root(&'a str),
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root(name) => write!(f, "{name}"),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn err(path: &Path<'_>, reason: impl Into<String>) -> FieldError {
    FieldError::new(&path.to_string(), reason)
}

/// Converts a message to its JSON object. `hex` is inherited from an enclosing hex field.
pub(crate) fn to_json(
    opts: &OptsTable,
    msg: &DynamicMessage,
    pretty: bool,
    hex: bool,
    path: &Path<'_>,
) -> Result<Json, FieldError> {
    let mut map = Map::new();
    for (field, value) in msg.fields() {
        let fopts = opts.get(&field);
        let hex_here = hex || fopts.hex;
        let fpath = Path::Field(path, field.name());
        let json = match value {
            Value::List(items) => {
                if pretty && fopts.ipadd {
                    ipadd_to_json(items, &fpath)?
                } else {
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let ipath = Path::Index(&fpath, i);
                        out.push(value_to_json(
                            opts, &field, fopts, item, pretty, hex_here, &ipath,
                        )?);
                    }
                    Json::Array(out)
                }
            }
            Value::Map(_) => return Err(err(&fpath, "map fields are not supported by crit")),
            _ => value_to_json(opts, &field, fopts, value, pretty, hex_here, &fpath)?,
        };
        map.insert(field.name().to_string(), json);
    }
    Ok(Json::Object(map))
}

fn ipadd_to_json(items: &[Value], path: &Path<'_>) -> Result<Json, FieldError> {
    let words: Option<Vec<u32>> = items.iter().map(Value::as_u32).collect();
    let words = words.ok_or_else(|| err(path, "address field is not uint32"))?;
    let words = if words.len() > 4 {
        &words[..4]
    } else {
        &words[..]
    };
    let text = ipaddr::words_to_text(words).ok_or_else(|| {
        err(
            path,
            format!("address has {} words, not 1 or 4", words.len()),
        )
    })?;
    Ok(Json::Array(vec![Json::String(text)]))
}

fn int_of(value: &Value) -> Option<i128> {
    Some(match value {
        Value::I32(v) => *v as i128,
        Value::I64(v) => *v as i128,
        Value::U32(v) => *v as i128,
        Value::U64(v) => *v as i128,
        _ => return None,
    })
}

fn int_json(v: i128) -> Json {
    if let Ok(u) = u64::try_from(v) {
        Json::Number(u.into())
    } else if let Ok(i) = i64::try_from(v) {
        Json::Number(i.into())
    } else {
        // Unreachable for protobuf integers; keep the digits rather than panic.
        Json::String(v.to_string())
    }
}

const KERN_MINORBITS: u32 = 20;

fn dev_to_text(v: i128, odev: bool) -> String {
    if odev {
        // glibc's gnu_dev_major / gnu_dev_minor on the 64-bit value.
        let d = v as u64;
        let major = ((d & 0x0000_0000_000f_ff00) >> 8) | ((d & 0xffff_f000_0000_0000) >> 32);
        let minor = (d & 0xff) | ((d & 0x0000_0fff_fff0_0000) >> 12);
        format!("{major}:{minor}")
    } else {
        format!(
            "{}:{}",
            v >> KERN_MINORBITS,
            v & ((1 << KERN_MINORBITS) - 1)
        )
    }
}

fn text_to_dev(text: &str, odev: bool) -> Result<i128, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || format!("{text:?} is not a \"major:minor\" device number");
    if parts.len() != 2 {
        return Err(bad());
    }
    let major = parse_decimal(parts[0]).ok_or_else(bad)?;
    let minor = parse_decimal(parts[1]).ok_or_else(bad)?;
    if odev {
        if !(0..=u32::MAX as i128).contains(&major) || !(0..=u32::MAX as i128).contains(&minor) {
            return Err(bad());
        }
        let (ma, mi) = (major as u64, minor as u64);
        let d = ((ma & 0xfff) << 8)
            | ((ma & 0xffff_f000) << 32)
            | (mi & 0xff)
            | ((mi & 0xffff_ff00) << 12);
        Ok(d as i128)
    } else {
        Ok(major << KERN_MINORBITS | minor)
    }
}

fn value_to_json(
    opts: &OptsTable,
    field: &FieldDescriptor,
    fopts: &FieldOpts,
    value: &Value,
    pretty: bool,
    hex: bool,
    path: &Path<'_>,
) -> Result<Json, FieldError> {
    Ok(match value {
        Value::Message(m) => to_json(opts, m, pretty, hex, path)?,
        Value::Bytes(b) => match fopts.conv.as_deref() {
            None => Json::String(b64::encodebytes(b)),
            Some("unix_name") => Json::String(qp::encode(b)),
            Some(other) => return Err(err(path, format!("unknown converter {other:?}"))),
        },
        Value::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => Json::String(v.name().to_string()),
                None => int_json(*n as i128),
            },
            _ => int_json(*n as i128),
        },
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::F32(f) => Number::from_f64(*f as f64).map_or(Json::Null, Json::Number),
        Value::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::List(_) | Value::Map(_) => return Err(err(path, "nested repeated value")),
        Value::I32(_) | Value::I64(_) | Value::U32(_) | Value::U64(_) => {
            let v = int_of(value).unwrap_or_default();
            if !pretty {
                int_json(v)
            } else if hex {
                Json::String(format_hex(v))
            } else if fopts.dev {
                Json::String(dev_to_text(v, fopts.odev))
            } else if let Some(name) = fopts.flags.as_deref() {
                match tables::flag_table(name) {
                    Some(table) => Json::String(tables::map_flags(v, table)),
                    None => Json::String(format_hex(v)),
                }
            } else if let Some(dict) = fopts.dict.as_deref() {
                match tables::dict_table(dict, field.name()).and_then(|t| tables::dict_name(v, t)) {
                    Some(name) => Json::String(name.to_string()),
                    None => int_json(v),
                }
            } else {
                int_json(v)
            }
        }
    })
}

fn describe(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Builds a message of type `desc` from its JSON object.
pub(crate) fn from_json(
    opts: &OptsTable,
    desc: &MessageDescriptor,
    json: &Json,
    path: &Path<'_>,
) -> Result<DynamicMessage, FieldError> {
    let obj = json.as_object().ok_or_else(|| {
        err(
            path,
            format!(
                "expected an object for {}, got {}",
                desc.name(),
                describe(json)
            ),
        )
    })?;
    let mut msg = DynamicMessage::new(desc.clone());
    for (key, item) in obj {
        let fpath = Path::Field(path, key);
        let field = desc
            .get_field_by_name(key)
            .ok_or_else(|| err(&fpath, format!("no such field in {}", desc.name())))?;
        let fopts = opts.get(&field);
        if field.is_list() {
            let arr = item
                .as_array()
                .ok_or_else(|| err(&fpath, format!("expected an array, got {}", describe(item))))?;
            let mut list = Vec::with_capacity(arr.len());
            if let (true, Some(Json::String(text))) = (fopts.ipadd, arr.first()) {
                let words = ipaddr::text_to_words(text).map_err(|e| err(&fpath, e))?;
                for w in words {
                    list.push(int_to_value(&field.kind(), w as i128).map_err(|e| err(&fpath, e))?);
                }
            } else {
                for (i, v) in arr.iter().enumerate() {
                    let ipath = Path::Index(&fpath, i);
                    list.push(value_from_json(opts, &field, fopts, v, &ipath)?);
                }
            }
            if !list.is_empty() {
                msg.set_field(&field, Value::List(list));
            }
        } else if field.is_map() {
            return Err(err(&fpath, "map fields are not supported by crit"));
        } else {
            let value = value_from_json(opts, &field, fopts, item, &fpath)?;
            msg.set_field(&field, value);
        }
    }
    if let Some(name) = missing_required(&msg) {
        return Err(err(
            path,
            format!("required field {name} of {} is missing", desc.name()),
        ));
    }
    Ok(msg)
}

/// The dotted name of the first `required` field not set in `msg` or in a message nested in
/// it, if any.
pub(crate) fn missing_required(msg: &DynamicMessage) -> Option<String> {
    for field in msg.descriptor().fields() {
        if field.cardinality() == Cardinality::Required && !msg.has_field(&field) {
            return Some(field.name().to_string());
        }
        if !matches!(field.kind(), Kind::Message(_)) || !msg.has_field(&field) {
            continue;
        }
        let value = msg.get_field(&field);
        let nested: Vec<&DynamicMessage> = match &*value {
            Value::Message(m) => vec![m],
            Value::List(items) => items.iter().filter_map(Value::as_message).collect(),
            _ => Vec::new(),
        };
        for m in nested {
            if let Some(inner) = missing_required(m) {
                return Some(format!("{}.{inner}", field.name()));
            }
        }
    }
    None
}

fn value_from_json(
    opts: &OptsTable,
    field: &FieldDescriptor,
    fopts: &FieldOpts,
    json: &Json,
    path: &Path<'_>,
) -> Result<Value, FieldError> {
    let expected = |what: &str| err(path, format!("expected {what}, got {}", describe(json)));
    Ok(match field.kind() {
        Kind::Message(m) => Value::Message(from_json(opts, &m, json, path)?),
        Kind::Bytes => {
            let text = json.as_str().ok_or_else(|| expected("a string"))?;
            let bytes = match fopts.conv.as_deref() {
                None => b64::decodebytes(text).map_err(|e| err(path, e))?,
                Some("unix_name") => qp::decode(text),
                Some(other) => return Err(err(path, format!("unknown converter {other:?}"))),
            };
            Value::Bytes(bytes.into())
        }
        Kind::Enum(e) => match json {
            Json::String(name) => match e.get_value_by_name(name) {
                Some(v) => Value::EnumNumber(v.number()),
                None => {
                    return Err(err(
                        path,
                        format!("{name:?} is not a value of enum {}", e.name()),
                    ))
                }
            },
            Json::Number(n) => {
                let v = n
                    .as_i64()
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or_else(|| err(path, format!("{n} is out of range for an enum")))?;
                Value::EnumNumber(v)
            }
            _ => return Err(expected("an enum value name")),
        },
        Kind::Bool => Value::Bool(json.as_bool().ok_or_else(|| expected("true or false"))?),
        Kind::String => Value::String(
            json.as_str()
                .ok_or_else(|| expected("a string"))?
                .to_string(),
        ),
        Kind::Double => Value::F64(json.as_f64().ok_or_else(|| expected("a number"))?),
        Kind::Float => Value::F32(json.as_f64().ok_or_else(|| expected("a number"))? as f32),
        kind => {
            let v = int_from_json(field, fopts, json).map_err(|e| err(path, e))?;
            int_to_value(&kind, v).map_err(|e| err(path, e))?
        }
    })
}

fn int_from_json(field: &FieldDescriptor, fopts: &FieldOpts, json: &Json) -> Result<i128, String> {
    match json {
        Json::Number(n) => {
            if let Some(v) = n.as_u64() {
                Ok(v as i128)
            } else if let Some(v) = n.as_i64() {
                Ok(v as i128)
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1.8e19 => Ok(f as i128),
                    _ => Err(format!("{n} is not an integer")),
                }
            }
        }
        Json::String(text) => {
            if fopts.dev {
                return text_to_dev(text, fopts.odev);
            }
            if let Some(table) = fopts.flags.as_deref().and_then(tables::flag_table) {
                return tables::unmap_flags(text, table);
            }
            if let Some(table) = fopts
                .dict
                .as_deref()
                .and_then(|d| tables::dict_table(d, field.name()))
            {
                if let Some(v) = tables::dict_value(text, table) {
                    return Ok(v);
                }
            }
            parse_int_literal(text).ok_or_else(|| format!("{text:?} is not an integer"))
        }
        other => Err(format!("expected an integer, got {}", describe(other))),
    }
}

fn int_to_value(kind: &Kind, v: i128) -> Result<Value, String> {
    let range = |ty: &str| format!("{v} is out of range for {ty}");
    Ok(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(i32::try_from(v).map_err(|_| range("int32"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(i64::try_from(v).map_err(|_| range("int64"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(u32::try_from(v).map_err(|_| range("uint32"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(u64::try_from(v).map_err(|_| range("uint64"))?),
        other => return Err(format!("an integer does not fit a {other:?} field")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_numbers() {
        assert_eq!(dev_to_text((254 << 20) | 3, false), "254:3");
        assert_eq!(text_to_dev("254:3", false).unwrap(), (254 << 20) | 3);
        // old encoding: 8:1 is 0x801
        assert_eq!(dev_to_text(0x801, true), "8:1");
        assert_eq!(text_to_dev("8:1", true).unwrap(), 0x801);
        let big = text_to_dev("300:70000", true).unwrap();
        assert_eq!(dev_to_text(big, true), "300:70000");
        assert!(text_to_dev("8", false).is_err());
        assert!(text_to_dev("a:b", false).is_err());
    }
}
