//! The Native engine (`-a Native -d FILE`): NEO's tables in memory,
//! changes appended to one log file, made for NEO's access pattern.
//!
//! A commit appends everything written since the previous one as one
//! checksummed batch of records (`format.rs`: one record per logical
//! change, as the [`Backend`](super::Backend) method that made it), in
//! one `write`, then `fdatasync`: one sequential write and one fsync,
//! where a B-tree engine dirties tens of pages. Every row but the data
//! values lives in memory (`tables.rs`), rebuilt at open by replaying the
//! log (`replay.rs`); a data value is read with one `pread` from the log,
//! so a load is a map lookup and a `pread`.
//!
//! Durability (§12.2), and why the replay is right after a power loss:
//! the file is created with its header, then it and its directory are
//! fsynced before anything is committed to it; a batch is acknowledged
//! only once `fdatasync` returned after its `write` (which makes the
//! file's new size durable with the bytes). So every acknowledged batch
//! is on disk whole, and the only thing that can follow it is the one
//! batch being written when the power went, incomplete or torn, then
//! zeros or the end of the file: the replay cuts that end off
//! (`replay.rs`) and applies every whole batch in order, with the same
//! code that applied the records when they were written
//! (`Tables::apply`), so it rebuilds the tables every acknowledged commit
//! left. A batch is all or nothing: a commit is never half there.
//!
//! Room ahead: a commit that makes the file grow writes zeros after its
//! batch, up to the next MiB, so the next commits write into room the
//! file already has and their `fdatasync` writes no new size (on ext4 the
//! size is a second write to the device: a serial commit of 10 × 1 KiB
//! took 12% longer and 14% more of the storage's CPU). Zeros after the
//! last batch are that room, kept at open.
//!
//! Space (`compact.rs`): deletions leave garbage in the log; it is
//! reclaimed at the next open, when it is more than half of a log of at
//! least 8 MiB, by writing the live rows to a temporary file renamed over
//! the log. Not while running.

mod compact;
mod format;
mod queries;
mod replay;
mod tables;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use neo_proto::{Checksum, Oid, Partition, Tid};

use super::lock::FileLock;
use super::{DataId, FatalError, OpenError, OpenOptions, TransactionMeta};
use format::{Record, BATCH_HEADER_LEN, FILE_HEADER_LEN, MAX_BATCH_BYTES};

/// The file grows by runs of zeros up to a multiple of this (see the
/// module's documentation: room ahead).
const ROOM: u64 = 1 << 20;
use replay::{replay, Mode, Replayed};
use tables::{DataEntry, Effect, Tables};

/// [`Backend`](super::Backend) on one append-only log file.
#[derive(Debug)]
pub struct NativeBackend {
    file: File,
    path: PathBuf,
    tables: Tables,
    /// Where the committed log ends: the next batch is written there.
    end: u64,
    /// The file's length: zeros from `end` to there, room for commits.
    length: u64,
    /// The next batch: room for its header, then the records written
    /// since the last commit (already applied to `tables`).
    batch: Vec<u8>,
    /// A commit failed: the tables hold changes the log may not, so
    /// nothing more is committed (the node stops).
    broken: bool,
    // Last: released once the file is closed.
    _lock: FileLock,
}

/// The temporary file a compaction writes, beside the log.
fn compacting_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".compacting");
    path.with_file_name(name)
}

/// Makes the entries of `path`'s directory durable (a new file, a rename).
fn sync_directory(path: &Path) -> std::io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)?.sync_all()
}

impl NativeBackend {
    /// Opens (creating it if needed) the log at `path`, locks it against
    /// other processes, replays it, and compacts it when it is mostly
    /// garbage.
    pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<NativeBackend, OpenError> {
        let path = path.as_ref().to_owned();
        let io = |context: &'static str| {
            let database = path.display().to_string();
            move |source| OpenError::Io {
                context,
                database,
                source,
            }
        };
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        // The lock is named after the inode, so the file must exist first.
        let mut file = open().map_err(io("opening the log"))?;
        let mut lock = FileLock::acquire(&path)?;
        let temporary = compacting_path(&path);
        match std::fs::remove_file(&temporary) {
            Ok(()) => tracing::warn!(
                "{}: removed a compaction that a crash interrupted; the log is whole",
                temporary.display()
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("removing an interrupted compaction")(error)),
        }
        if options.reset {
            file.set_len(0).map_err(io("erasing the log"))?;
        }
        let mut replayed = replay(&file, &path, Mode::Repair)?;
        if let Some(live) = compact::worth_it(replayed.end, &replayed.tables) {
            tracing::info!(
                "{}: compacting: {live} bytes of live rows in {} bytes",
                path.display(),
                replayed.end
            );
            lock = compact::compact(&file, &replayed.tables, &path, &temporary)?;
            drop(replayed);
            file = open().map_err(io("opening the compacted log"))?;
            replayed = replay(&file, &path, Mode::Repair)?;
            tracing::info!("{}: compacted to {} bytes", path.display(), replayed.end);
        }
        Ok(NativeBackend {
            file,
            path,
            tables: replayed.tables,
            end: replayed.end,
            length: replayed.length,
            batch: vec![0; BATCH_HEADER_LEN],
            broken: false,
            _lock: lock,
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` to the next batch and applies it.
    fn log(&mut self, record: Record<'_>) -> Effect {
        let at = self.end + self.batch.len() as u64;
        record.encode(&mut self.batch);
        self.tables.apply(&record, at)
    }

    /// Writes the next batch and syncs it.
    fn commit_batch(&mut self) -> Result<(), FatalError> {
        if self.broken {
            return Err(engine_error(
                "committing",
                "an earlier commit failed: the log may lack changes the node made".into(),
            ));
        }
        let size = (self.batch.len() - BATCH_HEADER_LEN) as u64;
        if size == 0 {
            return Ok(());
        }
        if size > MAX_BATCH_BYTES {
            self.broken = true;
            return Err(FatalError::BatchTooLarge {
                size,
                limit: MAX_BATCH_BYTES,
            });
        }
        format::seal_batch(&mut self.batch);
        let end = self.end + self.batch.len() as u64;
        // When the file grows, its size is written with this batch
        // anyway: a small batch takes room for the next ones with it (a
        // big one would write about as many zeros as bytes).
        let room = if end > self.length && self.batch.len() as u64 <= ROOM / 4 {
            end.next_multiple_of(ROOM) - end
        } else {
            0
        };
        self.batch.resize(self.batch.len() + room as usize, 0);
        let length = self.length.max(end + room);
        let written = self
            .file
            .write_all_at(&self.batch, self.end)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            self.broken = true;
            let at = format!("{} at byte {}", self.path.display(), self.end);
            return Err(engine_error("committing", format!("{at}: {error}").into()));
        }
        self.end = end;
        self.length = length;
        self.batch.truncate(BATCH_HEADER_LEN);
        // A big commit (a replication chunk of big objects) does not keep
        // its memory for good.
        self.batch.shrink_to(64 << 20);
        Ok(())
    }

    /// Empties the log (its header stays) and the tables; committed.
    fn erase_all(&mut self) -> Result<(), FatalError> {
        self.batch.truncate(BATCH_HEADER_LEN);
        self.tables = Tables::default();
        self.file
            .set_len(FILE_HEADER_LEN)
            .and_then(|()| self.file.sync_data())
            .map_err(|error| engine_error("erasing the log", Box::new(error)))?;
        self.end = FILE_HEADER_LEN;
        self.length = FILE_HEADER_LEN;
        Ok(())
    }

    /// The value and checksum of a data row, from the log or, before its
    /// commit, from the next batch.
    fn read_data(&self, entry: DataEntry) -> Result<(Vec<u8>, Checksum), FatalError> {
        match entry.offset.checked_sub(self.end) {
            Some(in_batch) => {
                // Offsets in the batch were computed from its length.
                let start = in_batch as usize;
                let end = start + entry.length as usize + Checksum::ZERO.0.len();
                Ok(split_value(self.batch[start..end].to_vec(), entry))
            }
            None => read_value(&self.file, entry),
        }
    }
}

/// `[value | checksum]` of a data row, read with one `pread`.
fn read_value(file: &File, entry: DataEntry) -> Result<(Vec<u8>, Checksum), FatalError> {
    // The length was checked against its batch at replay.
    let mut bytes = vec![0; entry.length as usize + Checksum::ZERO.0.len()];
    file.read_exact_at(&mut bytes, entry.offset)
        .map_err(|error| {
            let at = format!("{} bytes at byte {} of the log", bytes.len(), entry.offset);
            engine_error("reading object data", format!("{at}: {error}").into())
        })?;
    Ok(split_value(bytes, entry))
}

fn split_value(mut bytes: Vec<u8>, entry: DataEntry) -> (Vec<u8>, Checksum) {
    let length = entry.length as usize;
    let mut checksum = Checksum::ZERO;
    checksum.0.copy_from_slice(&bytes[length..]);
    bytes.truncate(length);
    (bytes, checksum)
}

fn engine_error(
    context: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
) -> FatalError {
    FatalError::Engine {
        engine: "Native",
        context,
        source,
    }
}

/// The committed rows of a Native log, read without locking it (another
/// process may be writing it): for tests and inspection.
#[doc(hidden)]
pub struct NativeSnapshot {
    file: File,
    tables: Tables,
    end: u64,
}

/// An `obj` row of a [`NativeSnapshot`].
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotObject {
    /// The partition.
    pub partition: Partition,
    /// The object.
    pub oid: Oid,
    /// The serial.
    pub serial: Tid,
    /// Its data, if it has any.
    pub data_id: Option<DataId>,
    /// The undo back-pointer.
    pub data_serial: Option<Tid>,
}

impl NativeSnapshot {
    /// Reads the whole batches of the log at `path`.
    pub fn read(path: impl AsRef<Path>) -> Result<NativeSnapshot, OpenError> {
        let path = path.as_ref().to_owned();
        let file = File::open(&path).map_err(|source| OpenError::Io {
            context: "opening the log",
            database: path.display().to_string(),
            source,
        })?;
        let Replayed { tables, end, .. } = replay(&file, &path, Mode::ReadOnly)?;
        Ok(NativeSnapshot { file, tables, end })
    }

    /// Where the last whole batch ends (the room after it not counted).
    pub fn log_end(&self) -> u64 {
        self.end
    }

    /// Rows of a table, by its SQL name; `None` for another name.
    pub fn count(&self, table: &str) -> Option<u64> {
        let t = &self.tables;
        let count = match table {
            "config" => t.config.len(),
            "pt" => t.cells.len(),
            "trans" => t.trans.len(),
            "ttrans" => t.ttrans.len(),
            "obj" => t.obj.len(),
            "tobj" => t.tobj.len(),
            "data" => t.data.len(),
            "pack" => t.pack.len(),
            _ => return None,
        };
        Some(count as u64)
    }

    /// Every `pt` row, by partition and nid.
    pub fn cells(&self) -> Vec<super::CellRow> {
        self.tables.cells.values().copied().collect()
    }

    /// Every `obj` row, by partition, oid and serial.
    pub fn objects(&self) -> Vec<SnapshotObject> {
        self.tables
            .obj
            .iter()
            .map(|(&(partition, oid, serial), obj)| SnapshotObject {
                partition,
                oid: Oid(oid),
                serial: Tid(serial),
                data_id: obj.data_id(),
                data_serial: obj.data_serial(),
            })
            .collect()
    }

    /// Every `trans` row: partition, tid, metadata.
    pub fn transactions(&self) -> Vec<(Partition, Tid, TransactionMeta)> {
        self.tables
            .trans
            .iter()
            .map(|(&(partition, tid), meta)| (partition, Tid(tid), meta.clone()))
            .collect()
    }

    /// Every row, data values included, and the engine's indexes, as
    /// text: equal for equal contents, whatever the layout of the log.
    pub fn rows(&self) -> Result<String, FatalError> {
        let t = &self.tables;
        let references: std::collections::BTreeMap<_, _> = t.references.iter().collect();
        let mut rows = format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{references:?}\n",
            t.config, t.cells, t.trans, t.by_ttid, t.ttrans, t.obj, t.by_serial, t.tobj, t.pack
        );
        for (&id, &entry) in &t.data {
            let (value, checksum) = read_value(&self.file, entry)?;
            rows += &format!("data {id} {} {checksum:?} {value:?}\n", entry.compression);
        }
        Ok(rows)
    }

    /// A `data` row: compression, checksum, value.
    pub fn data(&self, id: DataId) -> Result<Option<(u8, Checksum, Vec<u8>)>, FatalError> {
        let Some(&entry) = self.tables.data.get(&id) else {
            return Ok(None);
        };
        let (value, checksum) = read_value(&self.file, entry)?;
        Ok(Some((entry.compression, checksum, value)))
    }
}
