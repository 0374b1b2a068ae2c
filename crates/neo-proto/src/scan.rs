//! Where a msgpack value ends, found without allocating and resumably.
//!
//! A packet of up to 64 MiB may arrive in thousands of reads. The stream
//! decoder keeps one [`Scanner`] for the packet at the head of its buffer
//! and, after each read, resumes it where the last read left it: every byte
//! is examined a bounded number of times however the packet is cut.

use crate::value::{read_header, Header, ValueError, MAX_DEPTH};

/// The state of the scan of one value: where the next item starts and how
/// many items each open array or map still holds.
#[derive(Clone, Debug)]
pub struct Scanner {
    /// Start of the next item; past the buffer's end while a byte string's
    /// payload is still arriving.
    pos: usize,
    /// Items still to read in the innermost open level (1 for the value).
    remaining: usize,
    /// Items still to read in each enclosing level, outermost first; an
    /// array rather than a `Vec` so that scanning never allocates.
    outer: [usize; MAX_DEPTH],
    /// How many entries of `outer` are in use.
    depth: usize,
    /// Bytes examined since the scanner was created: the work it did.
    examined: u64,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl Scanner {
    /// A scanner at the start of a value.
    pub fn new() -> Scanner {
        Scanner {
            pos: 0,
            remaining: 1,
            outer: [0; MAX_DEPTH],
            depth: 0,
            examined: 0,
        }
    }

    /// Forgets the value scanned so far, to scan the next one from its first
    /// byte; the work counter goes on.
    pub fn restart(&mut self) {
        *self = Scanner {
            examined: self.examined,
            ..Scanner::new()
        };
    }

    /// Bytes examined since the scanner was created. A header whose bytes
    /// are not all there yet costs one byte (its marker) per attempt, a
    /// payload costs nothing: each call adds at most what arrived since the
    /// previous one, plus one.
    pub fn examined(&self) -> u64 {
        self.examined
    }

    /// Goes on scanning `buf`, which holds the bytes given to the previous
    /// calls since the last restart, and possibly more after them.
    /// `Ok(Some(len))`: a whole value of `len` bytes; `Ok(None)`: more bytes
    /// are needed; errors when the value is malformed, nested deeper than
    /// [`MAX_DEPTH`] or cannot fit in `max_len` bytes.
    pub fn resume(&mut self, buf: &[u8], max_len: usize) -> Result<Option<usize>, ValueError> {
        loop {
            if self.pos > buf.len() {
                // A payload is still arriving.
                return Ok(None);
            }
            while self.remaining == 0 {
                if self.depth == 0 {
                    return Ok(Some(self.pos));
                }
                self.depth -= 1;
                self.remaining = self.outer[self.depth];
            }
            let Some((header, size)) = read_header(buf, self.pos)? else {
                // At most the marker was looked at; the whole header is read
                // again once more bytes arrive.
                self.examined += u64::from(self.pos < buf.len());
                return Ok(None);
            };
            self.examined += size as u64;
            self.remaining -= 1;
            let start = self.pos + size;
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
                    if start.saturating_add(items) > max_len {
                        return Err(ValueError::TooLarge(max_len));
                    }
                    if items > 0 {
                        if self.depth == MAX_DEPTH {
                            return Err(ValueError::TooDeep);
                        }
                        self.outer[self.depth] = self.remaining;
                        self.depth += 1;
                        self.remaining = items;
                    }
                    0
                }
            };
            self.pos = start.saturating_add(skip);
            if self.pos > max_len {
                return Err(ValueError::TooLarge(max_len));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;
    use bytes::Bytes;

    fn scan(buf: &[u8], max_len: usize) -> Result<Option<usize>, ValueError> {
        Scanner::new().resume(buf, max_len)
    }

    #[test]
    fn scan_waits_for_whole_values() {
        let value = Value::Array(vec![
            Value::Bin(Bytes::from_static(b"abc")),
            Value::Map(vec![(Value::Int(1), Value::Nil)]),
            Value::Ext(4, Bytes::from_static(&[1])),
            Value::Int(-0x1234_5678),
        ]);
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert_eq!(scan(&bytes[..cut], 1024), Ok(None), "cut at {cut}");
        }
        assert_eq!(scan(&bytes, 1024), Ok(Some(bytes.len())));
    }

    /// The same value fed in pieces of every size gives the same length,
    /// and each byte is examined at most twice.
    #[test]
    fn scan_resumes_where_it_stopped() {
        let value = Value::Array(vec![
            Value::Int(u64::MAX.into()),
            Value::Array(vec![Value::Map(vec![(Value::Nil, Value::Float(1.5))])]),
            Value::Bin(Bytes::from(vec![7; 300])),
            Value::Ext(0, Bytes::from_static(&[3])),
        ]);
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        // Another value behind it must not be taken in.
        bytes.push(0xc0);
        let len = bytes.len() - 1;
        for piece in 1..=bytes.len() {
            let mut scanner = Scanner::new();
            let mut found = None;
            for end in (piece..bytes.len() + piece).step_by(piece) {
                found = scanner
                    .resume(&bytes[..end.min(bytes.len())], 1024)
                    .unwrap();
                if found.is_some() {
                    break;
                }
            }
            assert_eq!(found, Some(len), "pieces of {piece} bytes");
            assert!(scanner.examined() <= 2 * len as u64, "pieces of {piece}");
        }
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
        // The reserved marker is refused as soon as it arrives.
        assert_eq!(
            scan(&[0x92, 0x01, 0xc1], 16),
            Err(ValueError::Reserved(0xc1, 2))
        );
    }
}
