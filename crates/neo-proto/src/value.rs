//! The msgpack subset NEO uses: the encoders, which write the same
//! (smallest) forms as NEO/py, the headers that the decoding side reads, and
//! [`Value`], a generic tree for the few free-form arguments.
//!
//! Decoding happens in two passes over a packet's bytes, neither building a
//! tree for typed arguments: a [`Scanner`](crate::scan::Scanner) finds,
//! resumably and without allocating, where the packet ends; then a
//! [`Reader`](crate::reader::Reader) decodes each argument straight from the
//! bytes, its allocations charged to a budget that the packet's size sets.

use bytes::Bytes;
use rmp::Marker;

/// Deepest nesting of arrays and maps accepted from a peer. NEO's deepest
/// packet (a partition table) needs 5 levels below the packet array.
pub const MAX_DEPTH: usize = 32;

/// One msgpack value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `nil`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// Any integer (msgpack covers -2^63 ..= 2^64-1).
    Int(i128),
    /// A float; NEO only sends float64.
    Float(f64),
    /// A msgpack str: in NEO only the handshake's `"NEO"`.
    Str(String),
    /// A msgpack bin: every byte string and text of NEO packets.
    Bin(Bytes),
    /// An array (tuples, lists and sets on the NEO/py side).
    Array(Vec<Value>),
    /// A map, its pairs in wire order.
    Map(Vec<(Value, Value)>),
    /// An ext value: NEO's enums (type number, payload bytes).
    Ext(i8, Bytes),
}

/// Why bytes are not an acceptable msgpack value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A marker byte msgpack reserves (0xc1).
    #[error("reserved msgpack marker {0:#04x} at byte {1}")]
    Reserved(u8, usize),
    /// Arrays and maps nested deeper than [`MAX_DEPTH`].
    #[error("msgpack values nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The value would be larger than the caller's limit.
    #[error("msgpack value larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// A str that is not UTF-8.
    #[error("msgpack str at byte {0} is not UTF-8")]
    BadUtf8(usize),
    /// A header announces more than the bytes left hold.
    #[error("msgpack value at byte {0} is truncated")]
    Truncated(usize),
    /// Decoding would allocate more than the packet's size justifies
    /// ([`MEMORY_PER_BYTE`](crate::reader::MEMORY_PER_BYTE)).
    #[error("decoding needs more memory than a packet of {packet_len} bytes justifies")]
    OverBudget {
        /// Size of the packet.
        packet_len: usize,
    },
}

/// What a marker (plus its length bytes) announces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Header {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(usize),
    Bin(usize),
    Array(usize),
    Map(usize),
    Ext(i8, usize),
}

/// How many bytes follow `marker` before the payload: a length, a number,
/// an ext type.
fn header_extra(marker: u8) -> usize {
    match Marker::from_u8(marker) {
        Marker::U8 | Marker::I8 | Marker::Str8 | Marker::Bin8 => 1,
        Marker::FixExt1 | Marker::FixExt2 | Marker::FixExt4 | Marker::FixExt8 => 1,
        Marker::FixExt16 => 1,
        Marker::U16 | Marker::I16 | Marker::Str16 | Marker::Bin16 => 2,
        Marker::Array16 | Marker::Map16 | Marker::Ext8 => 2,
        Marker::Ext16 => 3,
        Marker::U32 | Marker::I32 | Marker::F32 | Marker::Str32 | Marker::Bin32 => 4,
        Marker::Array32 | Marker::Map32 => 4,
        Marker::Ext32 => 5,
        Marker::U64 | Marker::I64 | Marker::F64 => 8,
        _ => 0,
    }
}

/// The big-endian number in `bytes` (at most 8 of them).
fn be(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0, |number, byte| number << 8 | u64::from(*byte))
}

/// Reads the header at `buf[at..]`: the header and how many bytes it takes,
/// or `Ok(None)` if the buffer ends inside it (only the marker was looked at).
pub(crate) fn read_header(buf: &[u8], at: usize) -> Result<Option<(Header, usize)>, ValueError> {
    let Some(&marker) = buf.get(at) else {
        return Ok(None);
    };
    let extra = header_extra(marker);
    let Some(rest) = buf.get(at + 1..at + 1 + extra) else {
        return Ok(None);
    };
    let number = be(rest);
    // Lengths are at most 32 bits: `as usize` keeps them whole.
    let header = match Marker::from_u8(marker) {
        Marker::FixPos(n) => Header::Int(n.into()),
        Marker::FixNeg(n) => Header::Int(n.into()),
        Marker::Null => Header::Nil,
        Marker::True => Header::Bool(true),
        Marker::False => Header::Bool(false),
        Marker::U8 | Marker::U16 | Marker::U32 | Marker::U64 => Header::Int(number.into()),
        Marker::I8 => Header::Int((number as u8 as i8).into()),
        Marker::I16 => Header::Int((number as u16 as i16).into()),
        Marker::I32 => Header::Int((number as u32 as i32).into()),
        Marker::I64 => Header::Int((number as i64).into()),
        Marker::F32 => Header::Float(f32::from_bits(number as u32).into()),
        Marker::F64 => Header::Float(f64::from_bits(number)),
        Marker::FixStr(n) => Header::Str(n.into()),
        Marker::Str8 | Marker::Str16 | Marker::Str32 => Header::Str(number as usize),
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => Header::Bin(number as usize),
        Marker::FixArray(n) => Header::Array(n.into()),
        Marker::Array16 | Marker::Array32 => Header::Array(number as usize),
        Marker::FixMap(n) => Header::Map(n.into()),
        Marker::Map16 | Marker::Map32 => Header::Map(number as usize),
        // The ext type is the last header byte, after the length if any.
        Marker::FixExt1 => Header::Ext(number as u8 as i8, 1),
        Marker::FixExt2 => Header::Ext(number as u8 as i8, 2),
        Marker::FixExt4 => Header::Ext(number as u8 as i8, 4),
        Marker::FixExt8 => Header::Ext(number as u8 as i8, 8),
        Marker::FixExt16 => Header::Ext(number as u8 as i8, 16),
        Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
            Header::Ext(number as u8 as i8, (number >> 8) as usize)
        }
        Marker::Reserved => return Err(ValueError::Reserved(marker, at)),
    };
    Ok(Some((header, 1 + extra)))
}

// Writing into a Vec cannot fail, so the encoders below discard rmp's
// `Result`s, which only report I/O errors of the writer.

/// Writes a non-negative integer in its smallest form, as NEO/py does.
pub fn write_uint(out: &mut Vec<u8>, value: u64) {
    let _ = rmp::encode::write_uint(out, value);
}

/// Writes a signed integer: the unsigned family when non-negative (as NEO/py
/// does), else the smallest signed form.
pub fn write_int(out: &mut Vec<u8>, value: i64) {
    if value >= 0 {
        write_uint(out, value as u64);
    } else {
        let _ = rmp::encode::write_sint(out, value);
    }
}

/// Writes a bin (never a str: NEO/py breaks on str).
pub fn write_bin(out: &mut Vec<u8>, bytes: &[u8]) {
    let _ = rmp::encode::write_bin(out, bytes);
}

/// Writes the header of an array of `len` items.
pub fn write_array_len(out: &mut Vec<u8>, len: usize) {
    // Packet limits keep lengths far below 2^32; saturate rather than wrap.
    let _ = rmp::encode::write_array_len(out, u32::try_from(len).unwrap_or(u32::MAX));
}

/// Writes the header of a map of `len` pairs.
pub fn write_map_len(out: &mut Vec<u8>, len: usize) {
    let _ = rmp::encode::write_map_len(out, u32::try_from(len).unwrap_or(u32::MAX));
}

/// Writes `nil`.
pub fn write_nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

/// Writes a boolean.
pub fn write_bool(out: &mut Vec<u8>, value: bool) {
    out.push(if value { 0xc3 } else { 0xc2 });
}

/// Writes a float, always as float64.
pub fn write_f64(out: &mut Vec<u8>, value: f64) {
    let _ = rmp::encode::write_f64(out, value);
}

/// Writes an enum member: a fixext 1 whose payload is the value (< 128).
pub fn write_enum(out: &mut Vec<u8>, ext_type: i8, value: u8) {
    debug_assert!(value < 0x80, "enum values are positive fixints");
    out.extend_from_slice(&[0xd4, ext_type as u8, value]);
}

impl Value {
    /// Appends the msgpack encoding of this value.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Nil => write_nil(out),
            Value::Bool(b) => write_bool(out, *b),
            Value::Int(i) => {
                if let Ok(u) = u64::try_from(*i) {
                    write_uint(out, u);
                } else {
                    // Only values from -2^63 are ever decoded; clamp others.
                    write_int(out, i64::try_from(*i).unwrap_or(i64::MIN));
                }
            }
            Value::Float(f) => write_f64(out, *f),
            Value::Str(s) => {
                let _ = rmp::encode::write_str(out, s);
            }
            Value::Bin(b) => write_bin(out, b),
            Value::Array(items) => {
                write_array_len(out, items.len());
                for item in items {
                    item.encode(out);
                }
            }
            Value::Map(pairs) => {
                write_map_len(out, pairs.len());
                for (key, value) in pairs {
                    key.encode(out);
                    value.encode(out);
                }
            }
            Value::Ext(ty, data) => {
                let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
                let _ = rmp::encode::write_ext_meta(out, len, *ty);
                out.extend_from_slice(data);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        value.encode(&mut out);
        out
    }

    #[test]
    fn integers_use_neo_py_forms() {
        let cases: &[(i128, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (0x8000, &[0xcd, 0x80, 0x00]),
            (u32::MAX as i128, &[0xce, 0xff, 0xff, 0xff, 0xff]),
            (-1, &[0xff]),
            (-33, &[0xd0, 0xdf]),
            (-268435455, &[0xd2, 0xf0, 0x00, 0x00, 0x01]),
        ];
        for (value, bytes) in cases {
            assert_eq!(encoded(&Value::Int(*value)), *bytes, "{value}");
            let header = Some((Header::Int(*value), bytes.len()));
            assert_eq!(read_header(bytes, 0), Ok(header));
        }
    }

    #[test]
    fn headers_of_every_size_are_read() {
        let cases: &[(&[u8], Header)] = &[
            (&[0xd0, 0x80], Header::Int(-128)),
            (&[0xd1, 0x80, 0x00], Header::Int(i16::MIN.into())),
            (
                &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
                Header::Int(i64::MIN.into()),
            ),
            (
                &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                Header::Int(u64::MAX.into()),
            ),
            (&[0xca, 0x3f, 0xc0, 0, 0], Header::Float(1.5)),
            (&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], Header::Float(1.5)),
            (&[0xc0], Header::Nil),
            (&[0xc3], Header::Bool(true)),
            (&[0xa3], Header::Str(3)),
            (&[0xda, 0x01, 0x00], Header::Str(256)),
            (&[0xc6, 0x00, 0x01, 0x00, 0x00], Header::Bin(65536)),
            (&[0xdc, 0x01, 0x00], Header::Array(256)),
            (&[0x81], Header::Map(1)),
            (&[0xdf, 0x00, 0x00, 0x00, 0x02], Header::Map(2)),
            (&[0xd4, 0x04], Header::Ext(4, 1)),
            (&[0xd8, 0xff], Header::Ext(-1, 16)),
            (&[0xc7, 0x03, 0x02], Header::Ext(2, 3)),
            (&[0xc8, 0x01, 0x00, 0x80], Header::Ext(-128, 256)),
            (&[0xc9, 0x00, 0x01, 0x00, 0x00, 0x05], Header::Ext(5, 65536)),
        ];
        for (bytes, header) in cases {
            assert_eq!(
                read_header(bytes, 0),
                Ok(Some((*header, bytes.len()))),
                "{bytes:02x?}"
            );
            let short = &bytes[..bytes.len() - 1];
            assert_eq!(read_header(short, 0), Ok(None), "{bytes:02x?}");
        }
        assert_eq!(
            read_header(&[0x90, 0xc1], 1),
            Err(ValueError::Reserved(0xc1, 1))
        );
    }
}
