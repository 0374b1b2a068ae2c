//! The msgpack subset NEO uses, as a tree of [`Value`]s, with an encoder that
//! writes the same (smallest) forms as NEO/py and a bounded decoder.
//!
//! Decoding is split in two so that a stream decoder never allocates for an
//! incomplete packet: [`scan`] walks the bytes without allocating and tells
//! whether a whole value is there; only then [`decode`] builds the tree.

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
enum Header {
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

/// Reads `N` bytes at `*pos`, or `None` if the buffer ends first.
fn take<const N: usize>(buf: &[u8], pos: &mut usize) -> Option<[u8; N]> {
    let bytes = buf.get(*pos..*pos + N)?;
    *pos += N;
    bytes.try_into().ok()
}

/// Reads one marker and what follows it up to the payload. `Ok(None)`: the
/// buffer ends inside the header.
fn read_header(buf: &[u8], pos: &mut usize) -> Result<Option<Header>, ValueError> {
    let at = *pos;
    let Some([byte]) = take::<1>(buf, pos) else {
        return Ok(None);
    };
    macro_rules! need {
        ($n:literal) => {
            match take::<$n>(buf, pos) {
                Some(bytes) => bytes,
                None => return Ok(None),
            }
        };
    }
    let ext = |pos: &mut usize, len: usize| -> Option<Header> {
        let [ty] = take::<1>(buf, pos)?;
        Some(Header::Ext(ty as i8, len))
    };
    let header = match Marker::from_u8(byte) {
        Marker::FixPos(n) => Header::Int(n.into()),
        Marker::FixNeg(n) => Header::Int(n.into()),
        Marker::Null => Header::Nil,
        Marker::True => Header::Bool(true),
        Marker::False => Header::Bool(false),
        Marker::U8 => Header::Int(u8::from_be_bytes(need!(1)).into()),
        Marker::U16 => Header::Int(u16::from_be_bytes(need!(2)).into()),
        Marker::U32 => Header::Int(u32::from_be_bytes(need!(4)).into()),
        Marker::U64 => Header::Int(u64::from_be_bytes(need!(8)).into()),
        Marker::I8 => Header::Int(i8::from_be_bytes(need!(1)).into()),
        Marker::I16 => Header::Int(i16::from_be_bytes(need!(2)).into()),
        Marker::I32 => Header::Int(i32::from_be_bytes(need!(4)).into()),
        Marker::I64 => Header::Int(i64::from_be_bytes(need!(8)).into()),
        Marker::F32 => Header::Float(f32::from_be_bytes(need!(4)).into()),
        Marker::F64 => Header::Float(f64::from_be_bytes(need!(8))),
        Marker::FixStr(n) => Header::Str(n.into()),
        Marker::Str8 => Header::Str(u8::from_be_bytes(need!(1)).into()),
        Marker::Str16 => Header::Str(u16::from_be_bytes(need!(2)).into()),
        Marker::Str32 => Header::Str(u32::from_be_bytes(need!(4)) as usize),
        Marker::Bin8 => Header::Bin(u8::from_be_bytes(need!(1)).into()),
        Marker::Bin16 => Header::Bin(u16::from_be_bytes(need!(2)).into()),
        Marker::Bin32 => Header::Bin(u32::from_be_bytes(need!(4)) as usize),
        Marker::FixArray(n) => Header::Array(n.into()),
        Marker::Array16 => Header::Array(u16::from_be_bytes(need!(2)).into()),
        Marker::Array32 => Header::Array(u32::from_be_bytes(need!(4)) as usize),
        Marker::FixMap(n) => Header::Map(n.into()),
        Marker::Map16 => Header::Map(u16::from_be_bytes(need!(2)).into()),
        Marker::Map32 => Header::Map(u32::from_be_bytes(need!(4)) as usize),
        Marker::FixExt1 => return Ok(ext(pos, 1)),
        Marker::FixExt2 => return Ok(ext(pos, 2)),
        Marker::FixExt4 => return Ok(ext(pos, 4)),
        Marker::FixExt8 => return Ok(ext(pos, 8)),
        Marker::FixExt16 => return Ok(ext(pos, 16)),
        Marker::Ext8 => {
            let len = u8::from_be_bytes(need!(1)).into();
            return Ok(ext(pos, len));
        }
        Marker::Ext16 => {
            let len = u16::from_be_bytes(need!(2)).into();
            return Ok(ext(pos, len));
        }
        Marker::Ext32 => {
            let len = u32::from_be_bytes(need!(4)) as usize;
            return Ok(ext(pos, len));
        }
        Marker::Reserved => return Err(ValueError::Reserved(byte, at)),
    };
    Ok(Some(header))
}

/// Finds the end of the msgpack value starting at `buf[0]` without
/// allocating. `Ok(Some(len))`: a whole value of `len` bytes; `Ok(None)`: more
/// bytes are needed; errors when the value is malformed, nested deeper than
/// [`MAX_DEPTH`] or cannot fit in `max_len` bytes.
pub fn scan(buf: &[u8], max_len: usize) -> Result<Option<usize>, ValueError> {
    let mut pos = 0;
    // Items still to read at each open nesting level, outermost first.
    let mut pending: Vec<usize> = Vec::with_capacity(8);
    let mut remaining = 1usize;
    loop {
        if remaining == 0 {
            match pending.pop() {
                Some(outer) => {
                    remaining = outer;
                    continue;
                }
                None => return Ok(Some(pos)),
            }
        }
        remaining -= 1;
        let Some(header) = read_header(buf, &mut pos)? else {
            return short(pos, max_len);
        };
        let skip = match header {
            Header::Nil | Header::Bool(_) | Header::Int(_) | Header::Float(_) => 0,
            Header::Str(len) | Header::Bin(len) | Header::Ext(_, len) => len,
            Header::Array(len) | Header::Map(len) => {
                let items = if matches!(header, Header::Map(_)) {
                    len.saturating_mul(2)
                } else {
                    len
                };
                // Every item takes at least one byte.
                if pos.saturating_add(items) > max_len {
                    return Err(ValueError::TooLarge(max_len));
                }
                if items > 0 {
                    if pending.len() == MAX_DEPTH {
                        return Err(ValueError::TooDeep);
                    }
                    pending.push(remaining);
                    remaining = items;
                }
                0
            }
        };
        pos = pos.saturating_add(skip);
        if pos > max_len {
            return Err(ValueError::TooLarge(max_len));
        }
        if pos > buf.len() {
            return Ok(None);
        }
    }
}

/// `Ok(None)` unless the bytes read so far already exceed the limit.
fn short(pos: usize, max_len: usize) -> Result<Option<usize>, ValueError> {
    if pos > max_len {
        Err(ValueError::TooLarge(max_len))
    } else {
        Ok(None)
    }
}

/// Decodes the value that [`scan`] found to span all of `buf`. Byte strings
/// are zero-copy slices of `buf`.
pub fn decode(buf: &Bytes) -> Result<Value, ValueError> {
    let mut pos = 0;
    let value = decode_at(buf, &mut pos, 0)?;
    debug_assert_eq!(pos, buf.len(), "decode() takes exactly one scanned value");
    Ok(value)
}

fn decode_at(buf: &Bytes, pos: &mut usize, depth: usize) -> Result<Value, ValueError> {
    let at = *pos;
    // `scan` proved the value complete, so running short here means the
    // caller broke that contract; report it as a limit rather than panic.
    let truncated = || ValueError::TooLarge(buf.len());
    let header = read_header(buf, pos)?.ok_or_else(truncated)?;
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
            assert_eq!(scan(&buf, 64), Ok(Some(bytes.len())));
            assert_eq!(decode(&buf), Ok(Value::Int(*value)));
        }
    }

    #[test]
    fn scan_waits_for_whole_values() {
        let value = Value::Array(vec![
            Value::Bin(Bytes::from_static(b"abc")),
            Value::Map(vec![(Value::Int(1), Value::Nil)]),
            Value::Ext(4, Bytes::from_static(&[1])),
        ]);
        let bytes = encoded(&value);
        for cut in 0..bytes.len() {
            assert_eq!(scan(&bytes[..cut], 1024), Ok(None), "cut at {cut}");
        }
        assert_eq!(scan(&bytes, 1024), Ok(Some(bytes.len())));
        assert_eq!(decode(&Bytes::from(bytes)), Ok(value));
    }

    #[test]
    fn limits_are_enforced_before_allocation() {
        // A bin claiming 4 GiB, an array claiming 2^32-1 items.
        assert_eq!(
            scan(&[0xc6, 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(ValueError::TooLarge(1 << 20))
        );
        assert_eq!(
            scan(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Err(ValueError::TooLarge(1 << 20))
        );
        let deep = vec![0x91; MAX_DEPTH + 2];
        assert_eq!(scan(&deep, 1 << 20), Err(ValueError::TooDeep));
        assert_eq!(scan(&[0xc1], 16), Err(ValueError::Reserved(0xc1, 0)));
    }
}
