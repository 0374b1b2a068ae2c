//! One process per database file, for the engines that keep a file
//! (SQLite, Native).
//!
//! The lock is NEO/py's: an abstract Unix socket named
//! `neostorage:«device»:«inode»` after the database file, so that a NEO/py
//! storage and ours keep each other away from the same file too. The
//! kernel releases it when the process dies, even on `kill -9`, so there
//! is no stale lock file to clean up, and the name follows the file
//! whatever path is used to reach it.

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
        let name = lock_name(metadata.dev(), metadata.ino());
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

/// The abstract socket name NEO/py binds for the file of this device and
/// inode (without the leading NUL, which the address adds).
fn lock_name(device: u64, inode: u64) -> String {
    format!("neostorage:{device}:{inode}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// What a NEO/py storage would bind for the file is taken while we
    /// hold it, and free again once we let go.
    #[test]
    fn the_lock_is_the_one_neopy_takes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"").unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        let neopy = format!("neostorage:{}:{}", metadata.dev(), metadata.ino());
        let address = SocketAddr::from_abstract_name(neopy.as_bytes()).unwrap();
        let lock = FileLock::acquire(&path).unwrap();
        let taken = UnixListener::bind_addr(&address).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
        drop(lock);
        let _neopy = UnixListener::bind_addr(&address).unwrap();
        assert!(matches!(
            FileLock::acquire(&path),
            Err(OpenError::Locked { .. })
        ));
    }
}
