//! Space: deletions leave the records of what they deleted in the log. At
//! open, a log of at least [`COMPACT_MIN_BYTES`] more than half of which
//! is such garbage is written again with its live rows only, into a
//! temporary file that replaces the log once complete and synced.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use neo_proto::Checksum;

use super::format::{self, Record, BATCH_HEADER_LEN, DATA_AT, FILE_HEADER_LEN};
use super::tables::Tables;
use crate::backend::lock::FileLock;
use crate::backend::OpenError;

/// Smaller logs are left as they are, whatever their garbage.
const COMPACT_MIN_BYTES: u64 = 8 << 20;
/// Batches of a compacted log are about this size.
const BATCH_BYTES: usize = 8 << 20;

/// The size of a log holding only the rows of `tables` (batch headers
/// aside).
fn live_bytes(tables: &Tables) -> u64 {
    let mut scratch = Vec::new();
    let mut total = FILE_HEADER_LEN;
    tables.rows_as_records(&mut |record: &Record<'_>| {
        scratch.clear();
        record.encode(&mut scratch);
        total += scratch.len() as u64;
    });
    for entry in tables.data.values() {
        total += DATA_AT + u64::from(entry.length) + Checksum::ZERO.0.len() as u64;
    }
    total
}

/// The bytes of live rows in a log of `length` bytes holding `tables`,
/// when it is worth writing again (measured only for a log big enough).
pub(super) fn worth_it(length: u64, tables: &Tables) -> Option<u64> {
    if length < COMPACT_MIN_BYTES {
        return None;
    }
    let live = live_bytes(tables);
    (live < length / 2).then_some(live)
}

/// Writes the rows of `tables` (read from `log`) into `temporary`, then
/// renames it over `path`; the lock of the new log's inode.
pub(super) fn compact(
    log: &File,
    tables: &Tables,
    path: &Path,
    temporary: &Path,
) -> Result<FileLock, OpenError> {
    let io = |context: &'static str| {
        move |source| OpenError::Io {
            context,
            database: path.display().to_string(),
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(temporary)
        .map_err(io("creating the compacted log"))?;
    // Its inode becomes the log's at the rename: locked before, so that
    // no other process can take the log in between.
    let lock = FileLock::acquire(temporary)?;
    let mut writer = Writer {
        file: &file,
        end: FILE_HEADER_LEN,
        batch: vec![0; BATCH_HEADER_LEN],
    };
    let write = io("writing the compacted log");
    file.write_all_at(&format::file_header(), 0)
        .map_err(write)?;
    let mut failed = None;
    tables.rows_as_records(&mut |record: &Record<'_>| {
        if failed.is_none() {
            failed = writer.push(record, 0).err();
        }
    });
    if let Some(error) = failed {
        return Err(write(error));
    }
    let mut value = Vec::new();
    for (&id, entry) in &tables.data {
        let length = entry.length as usize;
        value.resize(length + Checksum::ZERO.0.len(), 0);
        log.read_exact_at(&mut value, entry.offset)
            .map_err(io("reading data to compact"))?;
        let mut checksum = Checksum::ZERO;
        checksum.0.copy_from_slice(&value[length..]);
        let record = Record::PutData {
            id,
            compression: entry.compression,
            value: &value[..length],
            checksum,
        };
        writer.push(&record, length).map_err(write)?;
    }
    writer.flush().map_err(write)?;
    file.sync_all().map_err(io("syncing the compacted log"))?;
    std::fs::rename(temporary, path).map_err(io("renaming the compacted log"))?;
    super::sync_directory(path).map_err(io("syncing the log's directory"))?;
    Ok(lock)
}

/// Batches of records, appended to a compacted log.
struct Writer<'a> {
    file: &'a File,
    end: u64,
    /// Room for the header, then the records.
    batch: Vec<u8>,
}

impl Writer<'_> {
    /// Adds a record of about `size` bytes, after writing the batch
    /// first if it would grow past [`BATCH_BYTES`]: a batch never holds
    /// more than one big value, so it stays within the limit.
    fn push(&mut self, record: &Record<'_>, size: usize) -> std::io::Result<()> {
        if self.batch.len() + size > BATCH_BYTES {
            self.flush()?;
        }
        record.encode(&mut self.batch);
        if self.batch.len() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.batch.len() > BATCH_HEADER_LEN {
            format::seal_batch(&mut self.batch);
            self.file.write_all_at(&self.batch, self.end)?;
            self.end += self.batch.len() as u64;
            self.batch.truncate(BATCH_HEADER_LEN);
        }
        Ok(())
    }
}
