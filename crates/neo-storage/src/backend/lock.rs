//! One process per database file, for the engines that keep a file
//! (SQLite, Native).
//!
//! Like NEO/py, the lock is an abstract Unix socket named after the device
//! and inode of the database file: the kernel releases it when the process
//! dies, even on `kill -9`, so there is no stale lock file to clean up, and
//! the name follows the file whatever path is used to reach it.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;

use super::OpenError;

/// Held for as long as the database is open; dropping it unlocks.
#[derive(Debug)]
pub(crate) struct FileLock {
    _socket: UnixListener,
}

impl FileLock {
    /// Locks the existing file at `path`, or fails with
    /// [`OpenError::Locked`] if another process holds it.
    pub(crate) fn acquire(path: &Path) -> Result<FileLock, OpenError> {
        let database = || path.display().to_string();
        let io_error = |context, source| OpenError::Io {
            context,
            database: database(),
            source,
        };
        let metadata =
            std::fs::metadata(path).map_err(|e| io_error("reading database file metadata", e))?;
        let name = format!("neo-storage:{}:{}", metadata.dev(), metadata.ino());
        let address = SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| io_error("naming database lock", e))?;
        match UnixListener::bind_addr(&address) {
            Ok(socket) => Ok(FileLock { _socket: socket }),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => Err(OpenError::Locked {
                database: database(),
            }),
            Err(error) => Err(io_error("locking database", error)),
        }
    }
}
