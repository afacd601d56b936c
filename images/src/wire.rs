//! Schema-free protobuf wire scanning.
//!
//! The framing layer must check that an entry is well-formed and read the few integer fields
//! that size extra payloads (`pipe_data_entry.bytes`, ...) without depending on the message
//! definitions, so it walks the top-level fields of the wire format itself:
//!
//! ```text
//!  field := tag(varint: number << 3 | wire type) value
//!  wire type 0 varint | 1 fixed64 | 2 length-delimited (varint len, bytes) | 5 fixed32
//! ```
//! Groups (types 3, 4) are rejected: no CRIU message uses them.

/// A wire error: byte position inside the message and what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    pub at: usize,
    pub detail: &'static str,
}

/// One top-level field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads a varint at `pos`; returns the value and the position after it.
pub fn read_varint(buf: &[u8], mut pos: usize) -> Result<(u64, usize), WireError> {
    let start = pos;
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let Some(&b) = buf.get(pos) else {
            return Err(WireError {
                at: start,
                detail: "varint runs past the end",
            });
        };
        pos += 1;
        if shift == 63 && b > 1 {
            return Err(WireError {
                at: start,
                detail: "varint overflows 64 bits",
            });
        }
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((value, pos));
        }
    }
    Err(WireError {
        at: start,
        detail: "varint longer than 10 bytes",
    })
}

/// Iterator over the top-level fields of a message: `(field number, value)`.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

/// Walks the fields of `buf`.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields {
        buf,
        pos: 0,
        failed: false,
    }
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<(u32, WireValue<'a>), WireError> {
        let at = self.pos;
        let (tag, pos) = read_varint(self.buf, self.pos)?;
        let number = tag >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(WireError {
                at,
                detail: "invalid field number",
            });
        }
        let number = number as u32;
        let rest = self.buf.len() - pos;
        let (value, next) = match tag & 7 {
            0 => {
                let (v, p) = read_varint(self.buf, pos)?;
                (WireValue::Varint(v), p)
            }
            1 => {
                if rest < 8 {
                    return Err(WireError {
                        at: pos,
                        detail: "fixed64 runs past the end",
                    });
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[pos..pos + 8]);
                (WireValue::Fixed64(u64::from_le_bytes(b)), pos + 8)
            }
            2 => {
                let (len, p) = read_varint(self.buf, pos)?;
                let left = (self.buf.len() - p) as u64;
                if len > left {
                    return Err(WireError {
                        at: pos,
                        detail: "length-delimited field runs past the end",
                    });
                }
                let end = p + len as usize;
                (WireValue::Bytes(&self.buf[p..end]), end)
            }
            5 => {
                if rest < 4 {
                    return Err(WireError {
                        at: pos,
                        detail: "fixed32 runs past the end",
                    });
                }
                let mut b = [0u8; 4];
                b.copy_from_slice(&self.buf[pos..pos + 4]);
                (WireValue::Fixed32(u32::from_le_bytes(b)), pos + 4)
            }
            _ => {
                return Err(WireError {
                    at,
                    detail: "unsupported wire type (group or invalid)",
                })
            }
        };
        self.pos = next;
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, WireValue<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let r = self.next_field();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

/// Checks that `buf` is a well-formed sequence of top-level fields.
pub fn validate(buf: &[u8]) -> Result<(), WireError> {
    for f in fields(buf) {
        f?;
    }
    Ok(())
}

/// The last varint value of field `number` (protobuf: the last occurrence wins), if present.
/// A value of another wire type for that field is an error.
pub fn varint_field(buf: &[u8], number: u32) -> Result<Option<u64>, WireError> {
    let mut found = None;
    let mut it = fields(buf);
    loop {
        let at = it.pos;
        let Some(f) = it.next() else {
            return Ok(found);
        };
        let (n, v) = f?;
        if n == number {
            match v {
                WireValue::Varint(x) => found = Some(x),
                _ => {
                    return Err(WireError {
                        at,
                        detail: "field has an unexpected wire type",
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(read_varint(&[0x96, 0x01], 0), Ok((150, 2)));
        assert!(read_varint(&[0x80], 0).is_err());
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_varint(&max, 0), Ok((u64::MAX, 10)));
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(read_varint(&over, 0).is_err());
    }

    #[test]
    fn fields_and_lookup() {
        // field 1 varint 5, field 2 bytes "ab", field 2 varint? no: field 3 varint 7
        let msg = [0x08, 0x05, 0x12, 0x02, b'a', b'b', 0x18, 0x07];
        assert!(validate(&msg).is_ok());
        assert_eq!(varint_field(&msg, 3), Ok(Some(7)));
        assert_eq!(varint_field(&msg, 4), Ok(None));
        assert!(varint_field(&msg, 2).is_err());
        assert!(validate(&[0x12, 0x05, b'a']).is_err());
        assert!(validate(&[0x0b]).is_err()); // group start
        assert!(validate(&[0x00, 0x00]).is_err()); // field 0
    }
}
