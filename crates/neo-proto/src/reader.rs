//! Typed decoding straight from a packet's bytes, under a memory budget.
//!
//! A [`Reader`] is a cursor over one whole packet (the [`Scanner`] proved it
//! complete). It hands out msgpack [`Token`]s, byte strings as zero-copy
//! slices of the packet, from which each argument type builds itself
//! ([`Field::decode`]): no generic tree is built on the way. Every
//! allocation made while decoding a packet is first charged to a budget
//! proportional to the packet's size, so that what a peer sends bounds what
//! decoding it costs.
//!
//! [`Scanner`]: crate::scan::Scanner
//! [`Field::decode`]: crate::field::Field::decode

use std::mem::size_of;

use bytes::Bytes;
use rmp::Marker;

use crate::value::{read_header, Header, Value, ValueError, MAX_DEPTH};

/// Bytes that decoding a packet may allocate per byte of the packet.
///
/// What NEO sends in bulk stays below it: ids (8 bytes for 10 on the
/// wire), partitions and node ids (4 bytes for at least 1), partition table
/// rows of at least one cell (32 bytes for 6), node lists (64 bytes for at
/// least 10). Only a multitude of tiny elements with a large Rust form goes
/// beyond: empty rows or nils in lists of optional text (24 bytes for 1),
/// generic [`Value`]s (48 bytes for a 1-byte integer). Legitimate packets
/// hold few of those, which [`MEMORY_SLACK`] covers; in a hostile packet
/// they are refused before anything is allocated for them.
pub const MEMORY_PER_BYTE: usize = 8;

/// Bytes that decoding any packet may allocate on top of
/// [`MEMORY_PER_BYTE`]: enough for small packets of large elements, the
/// free-form `extra` and monitoring maps, and a table of up to 65536 empty
/// partition rows (16 bytes each beyond the ratio).
pub const MEMORY_SLACK: usize = 1 << 20;

/// One msgpack item read from a packet. Arrays and maps give their length
/// (pairs for a map); their items come next.
#[derive(Clone, Debug, PartialEq)]
pub enum Token {
    /// `nil`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// Any integer (msgpack covers -2^63 ..= 2^64-1).
    Int(i128),
    /// A float.
    Float(f64),
    /// The bytes of a str, not yet checked to be UTF-8.
    Str(Bytes),
    /// A bin.
    Bin(Bytes),
    /// The header of an array of this many items.
    Array(usize),
    /// The header of a map of this many pairs.
    Map(usize),
    /// An ext value: type number and payload.
    Ext(i8, Bytes),
}

impl Token {
    /// A short name of the token's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Token::Nil => "nil",
            Token::Bool(_) => "bool",
            Token::Int(_) => "int",
            Token::Float(_) => "float",
            Token::Str(_) => "str",
            Token::Bin(_) => "bin",
            Token::Array(_) => "array",
            Token::Map(_) => "map",
            Token::Ext(..) => "ext",
        }
    }
}

/// A cursor over the bytes of one packet, with what decoding it may still
/// allocate.
#[derive(Debug)]
pub struct Reader {
    /// The whole packet: byte strings are slices of it.
    buf: Bytes,
    /// Where the next token starts.
    pos: usize,
    /// Bytes that decoding may still allocate.
    budget: usize,
}

impl Reader {
    /// A reader at the start of `buf`, with the budget its size justifies.
    pub fn new(buf: Bytes) -> Reader {
        let budget = buf
            .len()
            .saturating_mul(MEMORY_PER_BYTE)
            .saturating_add(MEMORY_SLACK);
        Reader {
            buf,
            pos: 0,
            budget,
        }
    }

    /// Whether every byte was read.
    pub fn is_at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Reads the next token. A declared length is checked against the bytes
    /// left (every array or map item takes at least one), never trusted.
    pub fn token(&mut self) -> Result<Token, ValueError> {
        let at = self.pos;
        let (header, size) = read_header(&self.buf, at)?.ok_or(ValueError::Truncated(at))?;
        self.pos = at + size;
        Ok(match header {
            Header::Nil => Token::Nil,
            Header::Bool(b) => Token::Bool(b),
            Header::Int(i) => Token::Int(i),
            Header::Float(f) => Token::Float(f),
            Header::Str(len) => Token::Str(self.slice(len, at)?),
            Header::Bin(len) => Token::Bin(self.slice(len, at)?),
            Header::Ext(ty, len) => Token::Ext(ty, self.slice(len, at)?),
            Header::Array(len) => Token::Array(self.count(len, 1, at)?),
            Header::Map(len) => Token::Map(self.count(len, 2, at)?),
        })
    }

    /// Consumes a `nil` if one comes next.
    pub fn take_nil(&mut self) -> bool {
        let nil = self.buf.get(self.pos) == Some(&Marker::Null.to_u8());
        if nil {
            self.pos += 1;
        }
        nil
    }

    /// Takes `bytes` from the budget, before allocating them.
    pub fn charge(&mut self, bytes: usize) -> Result<(), ValueError> {
        self.budget = self
            .budget
            .checked_sub(bytes)
            .ok_or(ValueError::OverBudget {
                packet_len: self.buf.len(),
            })?;
        Ok(())
    }

    /// An empty `Vec` with room for `len` items, charged to the budget.
    pub fn vec<T>(&mut self, len: usize) -> Result<Vec<T>, ValueError> {
        self.charge(len.saturating_mul(size_of::<T>()))?;
        Ok(Vec::with_capacity(len))
    }

    /// Reads the next value as a generic tree, each node charged.
    pub fn value(&mut self) -> Result<Value, ValueError> {
        self.value_at(0)
    }

    fn value_at(&mut self, depth: usize) -> Result<Value, ValueError> {
        let at = self.pos;
        Ok(match self.token()? {
            Token::Nil => Value::Nil,
            Token::Bool(b) => Value::Bool(b),
            Token::Int(i) => Value::Int(i),
            Token::Float(f) => Value::Float(f),
            Token::Str(bytes) => {
                let text = std::str::from_utf8(&bytes).map_err(|_| ValueError::BadUtf8(at))?;
                self.charge(text.len())?;
                Value::Str(text.to_owned())
            }
            Token::Bin(bytes) => Value::Bin(bytes),
            Token::Ext(ty, payload) => Value::Ext(ty, payload),
            Token::Array(len) => {
                if depth == MAX_DEPTH {
                    return Err(ValueError::TooDeep);
                }
                let mut items = self.vec(len)?;
                for _ in 0..len {
                    items.push(self.value_at(depth + 1)?);
                }
                Value::Array(items)
            }
            Token::Map(len) => {
                if depth == MAX_DEPTH {
                    return Err(ValueError::TooDeep);
                }
                let mut pairs = self.vec(len)?;
                for _ in 0..len {
                    let key = self.value_at(depth + 1)?;
                    let value = self.value_at(depth + 1)?;
                    pairs.push((key, value));
                }
                Value::Map(pairs)
            }
        })
    }

    /// The next `len` bytes, as a slice of the packet.
    fn slice(&mut self, len: usize, at: usize) -> Result<Bytes, ValueError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.buf.len());
        let end = end.ok_or(ValueError::Truncated(at))?;
        let bytes = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(bytes)
    }

    /// `len` items of `width` values each, if the bytes left can hold them.
    fn count(&self, len: usize, width: usize, at: usize) -> Result<usize, ValueError> {
        if len.saturating_mul(width) > self.buf.len() - self.pos {
            return Err(ValueError::Truncated(at));
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &Value) -> Bytes {
        let mut out = Vec::new();
        value.encode(&mut out);
        Bytes::from(out)
    }

    #[test]
    fn values_decode_with_zero_copy_byte_strings() {
        let value = Value::Array(vec![
            Value::Bin(Bytes::from_static(b"abc")),
            Value::Map(vec![(Value::Int(-1), Value::Nil)]),
            Value::Ext(4, Bytes::from_static(&[1])),
            Value::Str("NEO".to_owned()),
            Value::Float(0.5),
        ]);
        let bytes = encoded(&value);
        let mut reader = Reader::new(bytes.clone());
        assert_eq!(reader.value(), Ok(value));
        assert!(reader.is_at_end());
        // The bin points into the packet.
        let mut reader = Reader::new(bytes.clone());
        assert_eq!(reader.token(), Ok(Token::Array(5)));
        let Ok(Token::Bin(bin)) = reader.token() else {
            panic!("a bin comes first")
        };
        assert_eq!(bin.as_ptr(), bytes[3..].as_ptr());
    }

    #[test]
    fn declared_lengths_are_checked_against_the_bytes() {
        // A bin of 4 GiB, an array of 2^32-1 items, a map of 2 pairs in 3
        // bytes, an array of 1 item in none.
        let cases: [&[u8]; 4] = [
            &[0xc6, 0xff, 0xff, 0xff, 0xff],
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
            &[0x82, 0x01, 0x02, 0x03],
            &[0x91],
        ];
        for bytes in cases {
            let mut reader = Reader::new(Bytes::from_static(bytes));
            assert_eq!(
                reader.token(),
                Err(ValueError::Truncated(0)),
                "{bytes:02x?}"
            );
        }
        let mut reader = Reader::new(Bytes::from_static(&[0x92, 0xc4, 0x02, 0x00]));
        assert_eq!(reader.token(), Ok(Token::Array(2)));
        assert_eq!(reader.token(), Err(ValueError::Truncated(1)));
    }

    #[test]
    fn the_budget_is_charged_before_allocating() {
        let mut reader = Reader::new(Bytes::from_static(&[0x90]));
        let budget = MEMORY_PER_BYTE + MEMORY_SLACK;
        assert!(reader.vec::<u8>(budget - 1).is_ok());
        assert_eq!(reader.charge(1), Ok(()));
        let over = ValueError::OverBudget { packet_len: 1 };
        assert_eq!(reader.charge(1), Err(over.clone()));
        assert_eq!(reader.vec::<u64>(usize::MAX).map(|v| v.len()), Err(over));
    }

    #[test]
    fn generic_trees_are_charged_per_node() {
        // 100k fixints in one array: 100 KB sent, 4.8 MB as `Value`s.
        let mut bytes = vec![0xdd, 0x00, 0x01, 0x86, 0xa0];
        bytes.resize(5 + 100_000, 0x01);
        let mut reader = Reader::new(Bytes::from(bytes));
        assert_eq!(
            reader.value(),
            Err(ValueError::OverBudget {
                packet_len: 100_005
            })
        );
    }

    #[test]
    fn nesting_is_limited() {
        let mut reader = Reader::new(Bytes::from(vec![0x91; MAX_DEPTH + 2]));
        assert_eq!(reader.value(), Err(ValueError::TooDeep));
    }
}
