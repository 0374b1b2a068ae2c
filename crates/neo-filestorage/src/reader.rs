//! The read-only view of a Data.fs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Load, Oid, Result, Tid, Transaction};

/// Read-only view of a Data.fs; cheap to clone, Send + Sync, reads with
/// pread so that several threads can use one.
#[derive(Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
}

/// The transactions of an interval, read lazily.
pub struct TransactionIter {
    fs: FileStorage,
}

fn not_yet(path: &Path) -> Error {
    Error::corrupt(path, 0, "reader not implemented yet (API preview)")
}

impl FileStorage {
    /// Opens read-only: uses «path».index when valid (ZODB's fsIndex
    /// format) and scans only what follows its position; otherwise scans
    /// the file. A crash-truncated tail is ignored where ZODB ignores it.
    pub fn open(path: impl AsRef<Path>) -> Result<FileStorage> {
        Err(not_yet(path.as_ref()))
    }
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
    /// Bytes of committed transactions (the magic included).
    pub fn size(&self) -> u64 {
        0
    }
    pub fn first_tid(&self) -> Option<Tid> {
        None
    }
    pub fn last_tid(&self) -> Option<Tid> {
        None
    }
    /// The greatest oid having a record.
    pub fn last_oid(&self) -> Option<Oid> {
        None
    }
    /// Oids in the index.
    pub fn object_count(&self) -> usize {
        0
    }
    /// Transactions with start <= tid <= stop, ascending, read lazily.
    pub fn iter(&self, _start: Option<Tid>, _stop: Option<Tid>) -> TransactionIter {
        TransactionIter { fs: self.clone() }
    }
    pub fn transaction(&self, _tid: Tid) -> Result<Option<Transaction>> {
        Err(not_yet(self.path()))
    }
    /// Newest revision of `oid` with serial < before (ZODB's loadBefore).
    pub fn load_before(&self, _oid: Oid, _before: Tid) -> Result<Load> {
        Err(not_yet(self.path()))
    }
    /// The revision of `oid` with exactly this serial.
    pub fn load_serial(&self, _oid: Oid, _serial: Tid) -> Result<Load> {
        Err(not_yet(self.path()))
    }
    /// (serial, data length) newest first.
    pub fn history(&self, _oid: Oid) -> Result<Vec<(Tid, usize)>> {
        Err(not_yet(self.path()))
    }
}

impl Iterator for TransactionIter {
    type Item = Result<Transaction>;
    fn next(&mut self) -> Option<Result<Transaction>> {
        Some(Err(not_yet(self.fs.path())))
    }
}
