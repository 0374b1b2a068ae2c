//! The on-disk layout of a Data.fs, as ZODB's `FileStorage/format.py`
//! documents it. Every number is big-endian.
//!
//! ```text
//! file        = magic transaction*       -- "FS30", or "FS21" (Python 2)
//! transaction = tid(8) tlen(8) status(1) ulen(2) dlen(2) elen(2)
//!               user(ulen) description(dlen) extension(elen)
//!               record* tlen(8)            -- tlen counts all but this copy
//! record      = oid(8) tid(8) prev(8) tpos(8) vlen(2)=0 plen(8)
//!               data(plen) | back(8)       -- back when plen == 0; 0: no data
//! ```
//!
//! `prev` is the position of the oid's previous record (0 for the first),
//! `tpos` the position of the transaction's header, `back` the position of
//! the record whose data this one reuses (an undo).

use crate::{Oid, Tid};

/// The magic ZODB writes on Python 3, and the only one it opens there.
pub const MAGIC: &[u8; 4] = b"FS30";
/// The magic of files written by ZODB on Python 2: the same layout, whose
/// pickles are Python 2's. ZODB on Python 3 refuses it; we read both.
pub const MAGIC_PYTHON2: &[u8; 4] = b"FS21";
/// Offset of the first transaction.
pub const FIRST_TXN_POS: u64 = MAGIC.len() as u64;
pub const TXN_HEADER_LEN: usize = 23;
pub const DATA_HEADER_LEN: usize = 42;
/// Size of the redundant copy of `tlen` ending each transaction, and of a
/// backpointer.
pub const U64_LEN: usize = 8;

/// Status of a committed transaction.
pub const STATUS_COMMITTED: u8 = b' ';
/// Status of a transaction a pack has rewritten.
pub const STATUS_PACKED: u8 = b'p';
/// A transaction being committed (after vote, before finish): ZODB ignores
/// it and anything after it.
pub const STATUS_CHECKPOINT: u8 = b'c';
/// An old, no longer written status; ZODB's index scan skips such transactions.
pub const STATUS_UNDONE: u8 = b'u';

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnHeader {
    pub tid: Tid,
    /// Length of the transaction, all but its redundant final copy of tlen.
    pub tlen: u64,
    pub status: u8,
    pub ulen: u16,
    pub dlen: u16,
    pub elen: u16,
}

impl TxnHeader {
    pub fn parse(b: &[u8; TXN_HEADER_LEN]) -> TxnHeader {
        TxnHeader {
            tid: be64(b, 0),
            tlen: be64(b, 8),
            status: b[16],
            ulen: be16(b, 17),
            dlen: be16(b, 19),
            elen: be16(b, 21),
        }
    }

    pub fn encode(&self) -> [u8; TXN_HEADER_LEN] {
        let mut b = [0; TXN_HEADER_LEN];
        b[0..8].copy_from_slice(&self.tid.to_be_bytes());
        b[8..16].copy_from_slice(&self.tlen.to_be_bytes());
        b[16] = self.status;
        b[17..19].copy_from_slice(&self.ulen.to_be_bytes());
        b[19..21].copy_from_slice(&self.dlen.to_be_bytes());
        b[21..23].copy_from_slice(&self.elen.to_be_bytes());
        b
    }

    /// Header plus user, description and extension.
    pub fn header_len(&self) -> u64 {
        TXN_HEADER_LEN as u64 + u64::from(self.ulen) + u64::from(self.dlen) + u64::from(self.elen)
    }

    /// Whole size on disk, redundant length included (saturating: a hostile
    /// tlen must compare as "past the end", not wrap around).
    pub fn total_len(&self) -> u64 {
        self.tlen.saturating_add(U64_LEN as u64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    pub oid: Oid,
    pub tid: Tid,
    pub prev: u64,
    pub tpos: u64,
    /// Always 0 since ZODB dropped versions; anything else is corruption.
    pub vlen: u16,
    pub plen: u64,
}

impl DataHeader {
    pub fn parse(b: &[u8; DATA_HEADER_LEN]) -> DataHeader {
        DataHeader {
            oid: be64(b, 0),
            tid: be64(b, 8),
            prev: be64(b, 16),
            tpos: be64(b, 24),
            vlen: be16(b, 32),
            plen: be64(b, 34),
        }
    }

    pub fn encode(&self) -> [u8; DATA_HEADER_LEN] {
        let mut b = [0; DATA_HEADER_LEN];
        b[0..8].copy_from_slice(&self.oid.to_be_bytes());
        b[8..16].copy_from_slice(&self.tid.to_be_bytes());
        b[16..24].copy_from_slice(&self.prev.to_be_bytes());
        b[24..32].copy_from_slice(&self.tpos.to_be_bytes());
        b[32..34].copy_from_slice(&self.vlen.to_be_bytes());
        b[34..42].copy_from_slice(&self.plen.to_be_bytes());
        b
    }

    /// Whole size on disk: header and data, or header and backpointer
    /// (saturating, as for [`TxnHeader::total_len`]).
    pub fn record_len(&self) -> u64 {
        let payload = if self.plen == 0 {
            U64_LEN as u64
        } else {
            self.plen
        };
        (DATA_HEADER_LEN as u64).saturating_add(payload)
    }
}

/// The big-endian u64 at `at` in a fixed-size header (callers pass
/// constant offsets within the array, so this cannot go out of bounds).
fn be64<const N: usize>(b: &[u8; N], at: usize) -> u64 {
    let mut n = [0; 8];
    n.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(n)
}

fn be16<const N: usize>(b: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a big-endian u64 from the first 8 bytes of `b`, if there are 8.
pub fn read_u64(b: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_encode_and_parse_back() {
        let t = TxnHeader {
            tid: 0x0102030405060708,
            tlen: 1234,
            status: STATUS_PACKED,
            ulen: 1,
            dlen: 2,
            elen: 3,
        };
        assert_eq!(TxnHeader::parse(&t.encode()), t);
        assert_eq!(t.header_len(), 29);
        let d = DataHeader {
            oid: 7,
            tid: 8,
            prev: 9,
            tpos: 10,
            vlen: 0,
            plen: 0,
        };
        assert_eq!(DataHeader::parse(&d.encode()), d);
        assert_eq!(
            d.record_len(),
            50,
            "a record without data holds a backpointer"
        );
    }

    #[test]
    fn hostile_lengths_saturate() {
        let t = TxnHeader {
            tid: 1,
            tlen: u64::MAX,
            status: b' ',
            ulen: 0,
            dlen: 0,
            elen: 0,
        };
        assert_eq!(t.total_len(), u64::MAX);
    }
}
