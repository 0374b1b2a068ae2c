//! The msgpack subset NEO uses, as a tree of [`Value`]s, with an encoder that
//! writes the same (smallest) forms as NEO/py and a bounded decoder.
//!
//! Decoding is split in two so that a stream decoder never allocates for an
//! incomplete packet: a [`Scanner`](crate::scan::Scanner) walks the bytes
//! without allocating and tells whether a whole value is there; only then
//! [`decode`] builds the tree.

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

/// Decodes the value that a [`Scanner`](crate::scan::Scanner) found to span all of `buf`. Byte strings
/// are zero-copy slices of `buf`.
pub fn decode(buf: &Bytes) -> Result<Value, ValueError> {
    let mut pos = 0;
    let value = decode_at(buf, &mut pos, 0)?;
    debug_assert_eq!(pos, buf.len(), "decode() takes exactly one scanned value");
    Ok(value)
}

fn decode_at(buf: &Bytes, pos: &mut usize, depth: usize) -> Result<Value, ValueError> {
    let at = *pos;
    // The scanner proved the value complete, so running short here means the
    // caller broke that contract; report it as a limit rather than panic.
    let truncated = || ValueError::TooLarge(buf.len());
    let (header, size) = read_header(buf, at)?.ok_or_else(truncated)?;
    *pos += size;
    let mut slice = |len: usize| -> Result<Bytes, ValueError> {
        let end = pos.checked_add(len).filter(|end| *end <= buf.len());
        let end = end.ok_or_else(truncated)?;
        let bytes = buf.slice(*pos..end);
        *pos = end;
        Ok(bytes)
    };
    Ok(match header {
        Header::Nil => Value::Nil,
        Header::Bool(b) => Value::Bool(b),
        Header::Int(i) => Value::Int(i),
        Header::Float(f) => Value::Float(f),
        Header::Str(len) => {
            let bytes = slice(len)?;
            let text = std::str::from_utf8(&bytes).map_err(|_| ValueError::BadUtf8(at))?;
            Value::Str(text.to_owned())
        }
        Header::Bin(len) => Value::Bin(slice(len)?),
        Header::Ext(ty, len) => Value::Ext(ty, slice(len)?),
        Header::Array(len) => {
            if depth == MAX_DEPTH {
                return Err(ValueError::TooDeep);
            }
            let mut items = Vec::with_capacity(len.min(buf.len() - *pos));
            for _ in 0..len {
                items.push(decode_at(buf, pos, depth + 1)?);
            }
            Value::Array(items)
        }
        Header::Map(len) => {
            if depth == MAX_DEPTH {
                return Err(ValueError::TooDeep);
            }
            let mut pairs = Vec::with_capacity(len.min(buf.len() - *pos));
            for _ in 0..len {
                let key = decode_at(buf, pos, depth + 1)?;
                let value = decode_at(buf, pos, depth + 1)?;
                pairs.push((key, value));
            }
            Value::Map(pairs)
        }
    })
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

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bin(_) => "bin",
            Value::Array(_) => "array",
            Value::Map(_) => "map",
            Value::Ext(..) => "ext",
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
            let buf = Bytes::copy_from_slice(bytes);
            assert_eq!(decode(&buf), Ok(Value::Int(*value)));
        }
    }
}
