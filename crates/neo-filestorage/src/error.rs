//! The one error type of the crate: every failure names the file, format
//! errors also the offset where the file stops making sense.

use std::path::{Path, PathBuf};

use crate::{Oid, Tid};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a FileStorage (magic {magic:?}, expected \"FS30\" or \"FS21\")", path.display())]
    NotFileStorage { path: PathBuf, magic: [u8; 4] },
    #[error("{}: corrupt at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{}: truncated at offset {offset}: {reason}", path.display())]
    Truncated {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{}: locked by another process", path.display())]
    Locked { path: PathBuf },
    #[error("{}: transaction {tid:016x} is not after the last one, {last:016x}", path.display())]
    TidNotIncreasing { path: PathBuf, tid: Tid, last: Tid },
    /// A transaction the writer cannot represent in the format, or whose
    /// backpointer leads nowhere.
    #[error("{}: transaction {tid:016x}: {reason}", path.display())]
    InvalidTransaction {
        path: PathBuf,
        tid: Tid,
        oid: Option<Oid>,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.to_owned(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn truncated(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
        Error::Truncated {
            path: path.to_owned(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(
        path: &Path,
        tid: Tid,
        oid: Option<Oid>,
        reason: impl Into<String>,
    ) -> Error {
        Error::InvalidTransaction {
            path: path.to_owned(),
            tid,
            oid,
            reason: reason.into(),
        }
    }

    /// The offset a format error points at, for callers and tests that
    /// report where a file is damaged.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Error::Corrupt { offset, .. } | Error::Truncated { offset, .. } => Some(*offset),
            _ => None,
        }
    }
}
