//! Write-back (`writeback = true`, architecture.md §12.7 step 7): the
//! transactions committed through NEO are appended, in tid order, to the
//! single source FileStorage, which stays a usable fallback. It runs in
//! the node's background steps, after commits, while every partition is
//! readable here, and is asynchronous: the source lags a little behind.

use std::path::PathBuf;

use neo_filestorage::Writer;

use super::ImportError;

/// The source to write back to.
pub(crate) struct WriteBack {
    path: PathBuf,
    /// Opened at the first write (it reads the file's index).
    writer: Option<Writer>,
    /// Transactions may be waiting to be written back.
    pub(crate) pending: bool,
}

impl WriteBack {
    pub(crate) fn new(path: PathBuf) -> WriteBack {
        WriteBack {
            path,
            writer: None,
            // What was committed before a restart may not be written yet.
            pending: true,
        }
    }

    /// The writer of the source, opened once.
    pub(crate) fn writer(&mut self) -> Result<&mut Writer, ImportError> {
        if self.writer.is_none() {
            self.writer = Some(Writer::open(&self.path)?);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| ImportError::Mapping("write-back writer lost".into()))
    }
}
