//! Appending transactions to a Data.fs.

use std::path::{Path, PathBuf};

use crate::{Error, NewTransaction, Result, Tid};

/// Appends transactions to a Data.fs (created if missing, with the FS21
/// magic), holding «path».lock as ZODB does.
pub struct Writer {
    path: PathBuf,
}

impl Writer {
    /// Creates the file or opens it to append.
    pub fn open(path: impl AsRef<Path>) -> Result<Writer> {
        Err(Error::corrupt(
            path.as_ref(),
            0,
            "writer not implemented yet (API preview)",
        ))
    }
    pub fn last_tid(&self) -> Option<Tid> {
        None
    }
    /// Appends one committed transaction; its tid must be > last_tid.
    pub fn append(&mut self, _txn: &NewTransaction<'_>) -> Result<()> {
        Err(Error::corrupt(
            &self.path,
            0,
            "writer not implemented yet (API preview)",
        ))
    }
    /// fsync.
    pub fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    /// fsync, then writes «path».index in ZODB's format.
    pub fn close(self) -> Result<()> {
        Ok(())
    }
}
