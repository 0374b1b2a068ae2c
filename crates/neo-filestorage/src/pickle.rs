//! Just enough of Python's pickle format for ZODB's `.index` file: a
//! reader of the opcodes that pickles of ints, bytes, strings, tuples,
//! None and dicts use (protocols 0 to 3 in binary form, and protocol 4's
//! frames), and a writer of exactly the bytes ZODB's pickler (protocol 3,
//! `fast`: no memo) produces for ints, bytes, pairs and None.
//!
//! Anything else (a class, a list, a float...) is an error: the caller
//! then ignores the index and scans the Data.fs, which is always correct.

use std::collections::HashMap;

/// A decoded value, borrowing byte strings from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    None,
    Bool(bool),
    /// Ints wider than 128 bits are refused: nothing in an index is.
    Int(i128),
    Bytes(&'a [u8]),
    /// Text (UTF-8 bytes as pickled); ZODB treats ASCII text as bytes.
    Str(&'a [u8]),
    Tuple(Vec<Value<'a>>),
    Dict(Vec<(Value<'a>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// Bytes, or text taken as bytes (as ZODB's `ensure_bytes` does).
    pub fn as_bytes(&self) -> Option<&'a [u8]> {
        match self {
            Value::Bytes(b) | Value::Str(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The value of a dict under a text or bytes key.
    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_bytes() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pickle at byte {offset}: {reason}")]
pub struct PickleError {
    pub offset: usize,
    pub reason: String,
}

enum Item<'a> {
    Mark,
    Value(Value<'a>),
}

/// Reads consecutive pickles from one buffer, as `Unpickler.load()` called
/// repeatedly on a file does.
pub struct Unpickler<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Unpickler<'a> {
    pub fn new(input: &'a [u8]) -> Unpickler<'a> {
        Unpickler { input, pos: 0 }
    }

    fn error(&self, reason: impl Into<String>) -> PickleError {
        PickleError {
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.input.len());
        match end {
            Some(end) => {
                let s = &self.input[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.error(format!("{n} bytes wanted past the end"))),
        }
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le_u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn le_u64(&mut self) -> Result<u64, PickleError> {
        let mut n = [0; 8];
        n.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(n))
    }

    /// A length prefix, as usize (checked against the input by `take`).
    fn len_u32(&mut self) -> Result<usize, PickleError> {
        usize::try_from(self.le_u32()?).map_err(|_| self.error("length too large"))
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        usize::try_from(self.le_u64()?).map_err(|_| self.error("length too large"))
    }

    /// An int in pickle's LONG form: little-endian two's complement.
    fn long(&mut self, n: usize) -> Result<Value<'a>, PickleError> {
        let bytes = self.take(n)?;
        if n > 16 {
            return Err(self.error(format!("int of {n} bytes")));
        }
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut le = [if negative { 0xff } else { 0 }; 16];
        le[..n].copy_from_slice(bytes);
        Ok(Value::Int(i128::from_le_bytes(le)))
    }

    /// The next pickle, up to and including its STOP.
    pub fn load(&mut self) -> Result<Value<'a>, PickleError> {
        let mut stack: Vec<Item<'a>> = Vec::new();
        let mut memo: HashMap<u32, Value<'a>> = HashMap::new();
        loop {
            let op = self.byte()?;
            let value = match op {
                b'.' => {
                    return match (stack.pop(), stack.is_empty()) {
                        (Some(Item::Value(v)), true) => Ok(v),
                        _ => Err(self.error("STOP without exactly one value on the stack")),
                    }
                }
                0x80 => {
                    // PROTO: every protocol we read has the same opcodes.
                    self.byte()?;
                    continue;
                }
                0x95 => {
                    // FRAME (protocol 4): a hint for buffered readers.
                    self.le_u64()?;
                    continue;
                }
                b'(' => {
                    stack.push(Item::Mark);
                    continue;
                }
                b'N' => Value::None,
                0x88 => Value::Bool(true),
                0x89 => Value::Bool(false),
                b'K' => Value::Int(i128::from(self.byte()?)),
                b'M' => {
                    let b = self.take(2)?;
                    Value::Int(i128::from(u16::from_le_bytes([b[0], b[1]])))
                }
                b'J' => Value::Int(i128::from(self.le_u32()? as i32)),
                0x8a => {
                    let n = usize::from(self.byte()?);
                    self.long(n)?
                }
                0x8b => {
                    let n = self.len_u32()?;
                    self.long(n)?
                }
                b'C' | b'U' => {
                    let n = usize::from(self.byte()?);
                    Value::Bytes(self.take(n)?)
                }
                b'B' | b'T' => {
                    let n = self.len_u32()?;
                    Value::Bytes(self.take(n)?)
                }
                0x8e => {
                    let n = self.len_u64()?;
                    Value::Bytes(self.take(n)?)
                }
                0x8c => {
                    let n = usize::from(self.byte()?);
                    Value::Str(self.take(n)?)
                }
                b'X' => {
                    let n = self.len_u32()?;
                    Value::Str(self.take(n)?)
                }
                0x8d => {
                    let n = self.len_u64()?;
                    Value::Str(self.take(n)?)
                }
                b')' => Value::Tuple(Vec::new()),
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let at = stack
                        .len()
                        .checked_sub(n)
                        .ok_or_else(|| self.error("tuple of missing items"))?;
                    Value::Tuple(
                        values(stack.split_off(at))
                            .ok_or_else(|| self.error("mark inside a tuple"))?,
                    )
                }
                b't' => Value::Tuple(self.pop_to_mark(&mut stack)?),
                b'}' => Value::Dict(Vec::new()),
                b'd' => {
                    let items = self.pop_to_mark(&mut stack)?;
                    Value::Dict(
                        pairs(items).ok_or_else(|| self.error("dict of an odd number of items"))?,
                    )
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let at = stack
                            .len()
                            .checked_sub(2)
                            .ok_or_else(|| self.error("SETITEM without a pair"))?;
                        values(stack.split_off(at))
                            .ok_or_else(|| self.error("mark inside SETITEM"))?
                    } else {
                        self.pop_to_mark(&mut stack)?
                    };
                    let new = pairs(items)
                        .ok_or_else(|| self.error("SETITEMS of an odd number of items"))?;
                    match stack.last_mut() {
                        Some(Item::Value(Value::Dict(d))) => d.extend(new),
                        _ => return Err(self.error("SETITEM(S) without a dict")),
                    }
                    continue;
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => u32::from(self.byte()?),
                        b'r' => self.le_u32()?,
                        _ => u32::try_from(memo.len()).map_err(|_| self.error("memo too large"))?,
                    };
                    match stack.last() {
                        Some(Item::Value(v)) => memo.insert(key, v.clone()),
                        _ => return Err(self.error("memoizing a mark")),
                    };
                    continue;
                }
                b'h' | b'j' => {
                    let key = if op == b'h' {
                        u32::from(self.byte()?)
                    } else {
                        self.le_u32()?
                    };
                    memo.get(&key)
                        .cloned()
                        .ok_or_else(|| self.error(format!("memo {key} unknown")))?
                }
                _ => return Err(self.error(format!("opcode 0x{op:02x} is not one an index uses"))),
            };
            stack.push(Item::Value(value));
        }
    }

    fn pop_to_mark(&self, stack: &mut Vec<Item<'a>>) -> Result<Vec<Value<'a>>, PickleError> {
        let mark = stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or_else(|| self.error("no mark"))?;
        let items = stack.split_off(mark + 1);
        stack.pop();
        values(items).ok_or_else(|| self.error("mark inside marked items"))
    }
}

fn values(items: Vec<Item<'_>>) -> Option<Vec<Value<'_>>> {
    items
        .into_iter()
        .map(|i| match i {
            Item::Value(v) => Some(v),
            Item::Mark => None,
        })
        .collect()
}

fn pairs(items: Vec<Value<'_>>) -> Option<Vec<(Value<'_>, Value<'_>)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// Writes pickles byte for byte as ZODB's `Pickler(f, 3)` with `fast = True`.
pub struct Pickler {
    pub out: Vec<u8>,
}

impl Pickler {
    pub fn new() -> Pickler {
        Pickler { out: Vec::new() }
    }

    pub fn dump_int(&mut self, n: u64) {
        self.out.extend_from_slice(&[0x80, 3]);
        self.int(n);
        self.out.push(b'.');
    }

    pub fn dump_pair(&mut self, a: &[u8], b: &[u8]) {
        self.out.extend_from_slice(&[0x80, 3]);
        self.bytes(a);
        self.bytes(b);
        self.out.extend_from_slice(&[0x86, b'.']);
    }

    pub fn dump_none(&mut self) {
        self.out.extend_from_slice(&[0x80, 3, b'N', b'.']);
    }

    fn int(&mut self, n: u64) {
        if let Ok(b) = u8::try_from(n) {
            self.out.extend_from_slice(&[b'K', b]);
        } else if let Ok(h) = u16::try_from(n) {
            self.out.push(b'M');
            self.out.extend_from_slice(&h.to_le_bytes());
        } else if let Ok(w) = i32::try_from(n) {
            self.out.push(b'J');
            self.out.extend_from_slice(&w.to_le_bytes());
        } else {
            // LONG1, as Python sizes it: bit_length / 8 + 1 bytes, room
            // for the sign bit included.
            let bits = 64 - n.leading_zeros() as usize;
            let len = bits / 8 + 1;
            let le = u128::from(n).to_le_bytes();
            self.out.extend_from_slice(&[0x8a, len as u8]);
            self.out.extend_from_slice(&le[..len]);
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        match u8::try_from(b.len()) {
            Ok(n) => self.out.extend_from_slice(&[b'C', n]),
            Err(_) => {
                // The index's buckets hold at most 65536 entries of 8 bytes.
                let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
                self.out.push(b'B');
                self.out.extend_from_slice(&n.to_le_bytes());
            }
        }
        self.out.extend_from_slice(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes CPython's pickler wrote (protocol 3, fast), see the module doc.
    const PYTHON: &str = "80038a0500000000012e80038a0500000080002e8003430661626364656643017886\
                          2e80034e2e";

    #[test]
    fn writes_what_python_writes_and_reads_it_back() {
        let mut p = Pickler::new();
        p.dump_int(1 << 32);
        p.dump_int(0x8000_0000);
        p.dump_pair(b"abcdef", b"x");
        p.dump_none();
        let expected: Vec<u8> = (0..PYTHON.len() / 2)
            .map(|i| u8::from_str_radix(&PYTHON[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(p.out, expected);

        let mut u = Unpickler::new(&p.out);
        assert_eq!(u.load(), Ok(Value::Int(1 << 32)));
        assert_eq!(u.load(), Ok(Value::Int(0x8000_0000)));
        assert_eq!(
            u.load(),
            Ok(Value::Tuple(vec![
                Value::Bytes(b"abcdef"),
                Value::Bytes(b"x")
            ]))
        );
        assert_eq!(u.load(), Ok(Value::None));
        assert!(u.load().is_err(), "nothing follows");
    }

    #[test]
    fn ints_of_every_width_round_trip() {
        for n in [
            0,
            1,
            255,
            256,
            65535,
            65536,
            0x7fff_ffff,
            0x8000_0000,
            u64::MAX,
        ] {
            let mut p = Pickler::new();
            p.dump_int(n);
            assert_eq!(
                Unpickler::new(&p.out).load(),
                Ok(Value::Int(i128::from(n))),
                "{n}"
            );
        }
    }

    #[test]
    fn memo_marks_and_dicts_as_python_writes_them() {
        // pickle.dumps({'pos': 5, 'index': {b'k': (1, -2)}}, 3) under CPython.
        let bytes = b"\x80\x03}q\x00(X\x03\x00\x00\x00posq\x01K\x05X\x05\x00\x00\x00indexq\x02}q\x03C\x01kq\x04K\x01J\xfe\xff\xff\xff\x86q\x05su.";
        let v = Unpickler::new(bytes).load().expect("valid pickle");
        assert_eq!(v.get(b"pos"), Some(&Value::Int(5)));
        let index = v.get(b"index").expect("index");
        assert_eq!(
            index.get(b"k"),
            Some(&Value::Tuple(vec![Value::Int(1), Value::Int(-2)]))
        );
    }

    #[test]
    fn hostile_input_is_an_error() {
        for bad in [
            &b"\x80\x03B\xff\xff\xff\xff."[..], // a length past the end
            b"\x80\x03c__builtin__\nlist\n.",   // a class
            b"\x80\x03\x86.",                   // a tuple of nothing
            b"\x80\x03h\x01.",                  // an unknown memo
            b"\x80\x03K\x01K\x02.",             // two values at STOP
            b"\x80\x03K",                       // cut short
            b"\x80\x03\x8a\x20",                // an int of 32 bytes, cut
        ] {
            assert!(Unpickler::new(bad).load().is_err(), "{bad:?}");
        }
    }
}
