//! Our field options (`proto/opts.proto`) read back from the compiled descriptors.
//!
//! ```text
//!  FieldDescriptorProto.options (google.protobuf.FieldOptions)
//!     └─ extension criu.hex / criu.ipadd / criu.flags / criu.dev / criu.odev /
//!        criu.dict / criu.conv            ──►  FieldOpts { hex, ipadd, flags, ... }
//! ```
//!
//! Decoding the options of a field costs a protobuf decode, so they are read once per field
//! of the pool and kept in a map keyed by the field's full name.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Value};

/// The crit rendering options of one field (all false/None when unset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldOpts {
    /// `(criu.hex)`: integers as `"0x..."` (inherited by nested messages).
    pub hex: bool,
    /// `(criu.ipadd)`: repeated uint32 rendered as one IPv4/IPv6 address.
    pub ipadd: bool,
    /// `(criu.flags)`: name of a flag table.
    pub flags: Option<String>,
    /// `(criu.dev)`: device number as `"major:minor"` (kernel 20-bit minor).
    pub dev: bool,
    /// `(criu.odev)`: with `dev`, the old (glibc `makedev`) encoding.
    pub odev: bool,
    /// `(criu.dict)`: name of a value dictionary (`gen`, `sk`).
    pub dict: Option<String>,
    /// `(criu.conv)`: name of a bytes converter (`unix_name`).
    pub conv: Option<String>,
}

impl FieldOpts {
    fn is_plain(&self) -> bool {
        *self == FieldOpts::default()
    }
}

static PLAIN: FieldOpts = FieldOpts {
    hex: false,
    ipadd: false,
    flags: None,
    dev: false,
    odev: false,
    dict: None,
    conv: None,
};

/// Options of every field of a descriptor pool.
#[derive(Debug, Default)]
pub(crate) struct OptsTable {
    by_field: HashMap<String, FieldOpts>,
}

struct Extensions {
    hex: Option<ExtensionDescriptor>,
    ipadd: Option<ExtensionDescriptor>,
    flags: Option<ExtensionDescriptor>,
    dev: Option<ExtensionDescriptor>,
    odev: Option<ExtensionDescriptor>,
    dict: Option<ExtensionDescriptor>,
    conv: Option<ExtensionDescriptor>,
}

fn ext_bool(options: &DynamicMessage, ext: &Option<ExtensionDescriptor>) -> bool {
    match ext {
        Some(e) if options.has_extension(e) => options.get_extension(e).as_bool().unwrap_or(false),
        _ => false,
    }
}

fn ext_string(options: &DynamicMessage, ext: &Option<ExtensionDescriptor>) -> Option<String> {
    match ext {
        Some(e) if options.has_extension(e) => match &*options.get_extension(e) {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

impl OptsTable {
    /// Reads the options of every field of every message in `pool`.
    pub(crate) fn build(pool: &DescriptorPool) -> Self {
        let ext = |name: &str| pool.get_extension_by_name(name);
        let exts = Extensions {
            hex: ext("criu.hex"),
            ipadd: ext("criu.ipadd"),
            flags: ext("criu.flags"),
            dev: ext("criu.dev"),
            odev: ext("criu.odev"),
            dict: ext("criu.dict"),
            conv: ext("criu.conv"),
        };
        let mut by_field = HashMap::new();
        for msg in pool.all_messages() {
            for field in msg.fields() {
                let options = field.options();
                let opts = FieldOpts {
                    hex: ext_bool(&options, &exts.hex),
                    ipadd: ext_bool(&options, &exts.ipadd),
                    flags: ext_string(&options, &exts.flags),
                    dev: ext_bool(&options, &exts.dev),
                    odev: ext_bool(&options, &exts.odev),
                    dict: ext_string(&options, &exts.dict),
                    conv: ext_string(&options, &exts.conv),
                };
                if !opts.is_plain() {
                    by_field.insert(field.full_name().to_string(), opts);
                }
            }
        }
        OptsTable { by_field }
    }

    /// The options of `field` (all unset when it has none).
    pub(crate) fn get(&self, field: &FieldDescriptor) -> &FieldOpts {
        self.by_field.get(field.full_name()).unwrap_or(&PLAIN)
    }
}
