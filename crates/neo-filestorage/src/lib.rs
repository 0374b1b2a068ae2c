//! ZODB's FileStorage, `Data.fs` (magic `FS30`, or `FS21` from Python 2:
//! the same layout): a reader ([`FileStorage`]) and an appending writer
//! ([`Writer`]), without ZODB and without Python.
//!
//! The reader sees a file as ZODB's `FileStorage` and its iterator do:
//! the same transactions, the same data (backpointers resolved), the same
//! answers to `loadBefore`, the same tolerance of a crash-truncated tail.
//! It keeps in memory only the position of each oid's newest record; the
//! rest is read from the file when asked, with `pread`, so one
//! [`FileStorage`] serves several threads.
//!
//! The writer appends whole transactions and, on close, saves the
//! `«path».index` file ZODB reads at start instead of scanning the file.
//!
//! A damaged file gives [`Error::Corrupt`] or [`Error::Truncated`] with the
//! file and the offset; lengths read from the file are checked against the
//! file's size before anything is allocated for them.

mod error;
mod file;
mod format;
mod index;
mod pickle;
mod reader;
mod writer;

pub use error::{Error, Result};
pub use reader::{FileStorage, TransactionIter};
pub use writer::Writer;

pub type Oid = u64;
pub type Tid = u64;

/// One transaction as ZODB's iterator shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub tid: Tid,
    /// `b' '` committed, `b'p'` rewritten by a pack.
    pub status: u8,
    pub user: Vec<u8>,
    pub description: Vec<u8>,
    /// The raw pickled extension bytes.
    pub extension: Vec<u8>,
    /// File offset of its header.
    pub position: u64,
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub oid: Oid,
    /// None: no data (a deletion, or an undone creation). Backpointers are
    /// resolved, as ZODB's iterator does.
    pub data: Option<Vec<u8>>,
    /// Some(tid): a backpointer (undo) to the revision of `oid` written by
    /// `tid` (the record it points at, even if that one points further).
    pub data_txn: Option<Tid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub data: Vec<u8>,
    /// The revision's tid.
    pub serial: Tid,
    /// Tid of the next revision of the oid in this file, if any.
    pub next_serial: Option<Tid>,
    /// The tid the backpointer points at, if the revision is one.
    pub data_txn: Option<Tid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Load {
    Found(Loaded),
    /// The revision asked for has no data (deletion / undone creation);
    /// serial of that record.
    NoData {
        serial: Tid,
        next_serial: Option<Tid>,
    },
    /// The oid exists, but has no revision before/at that point.
    NoRevision,
    /// The oid is not in the file.
    NoSuchOid,
}

/// A transaction to append with [`Writer::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransaction<'a> {
    pub tid: Tid,
    /// `b' '` or `b'p'`.
    pub status: u8,
    pub user: &'a [u8],
    pub description: &'a [u8],
    pub extension: &'a [u8],
    pub records: Vec<NewRecord<'a>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord<'a> {
    pub oid: Oid,
    /// The data; with `data_txn`, it must equal what the backpointer gives.
    pub data: Option<&'a [u8]>,
    /// Some(t): write a backpointer to the record of `oid` at `t`, which
    /// must exist. `data` and `data_txn` both None: a no-data record.
    pub data_txn: Option<Tid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The storage node loads on its thread while an import thread
    /// iterates the same file.
    #[test]
    fn readers_and_iterators_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<FileStorage>();
        send_sync::<TransactionIter>();
        send_sync::<Writer>();
        send_sync::<Error>();
    }
}
