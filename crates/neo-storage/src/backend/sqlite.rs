//! The embedded default backend: NEO/py's SQLite schema, version 4
//! (architecture.md §12.3), so that a database can move between NEO/py and
//! this implementation in place.
//!
//! All ids are stored as SQLite integers, which are signed 64-bit: oids,
//! tids and data ids above `2^63 - 1` are refused with
//! [`RequestError::OutOfRange`] (NEO's `MAX_TID` is `2^63 - 1` for this
//! reason).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use neo_proto::{CellState, Checksum, NodeId, Oid, Partition, Ptid, Tid, INVALID_PARTITION};
use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::lock::FileLock;
use super::{
    AssignedCell, Backend, DataId, Error, FatalError, HistoryEntry, LastIds, ObjectLookup,
    ObjectRecord, ObjectRow, OpenError, PackOrder, RequestError, Result, TransactionMeta,
    UndoLookup, UndoSerial,
};

/// Schema version this code reads and writes (`config.version`).
pub const SCHEMA_VERSION: u32 = 4;

/// Data ids of partition `p` are `p << DATA_ID_SHIFT ..`.
const DATA_ID_SHIFT: u32 = 48;

/// Tables of the schema, in creation order (also what `erase` drops).
const TABLES: &[&str] = &[
    "config", "pt", "pack", "trans", "obj", "data", "ttrans", "tobj",
];

/// The schema of §12.3. Column names, types, keys and index names are
/// NEO/py's, so that either implementation finds what it expects.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS config (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pt (
    partition INTEGER NOT NULL,
    nid INTEGER NOT NULL,
    tid INTEGER NOT NULL,
    pack INTEGER,
    PRIMARY KEY (partition, nid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pack (
    tid INTEGER PRIMARY KEY,
    approved BOOLEAN,
    partial BOOLEAN NOT NULL,
    oids BLOB,
    pack_tid INTEGER
);
CREATE TABLE IF NOT EXISTS trans (
    partition INTEGER NOT NULL,
    tid INTEGER NOT NULL,
    packed BOOLEAN NOT NULL,
    oids BLOB NOT NULL,
    user BLOB NOT NULL,
    description BLOB NOT NULL,
    ext BLOB NOT NULL,
    ttid INTEGER NOT NULL,
    PRIMARY KEY (partition, tid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS obj (
    partition INTEGER NOT NULL,
    oid INTEGER NOT NULL,
    tid INTEGER NOT NULL,
    data_id INTEGER,
    value_tid INTEGER,
    PRIMARY KEY (partition, oid, tid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS _obj_i1 ON obj(partition, tid, oid);
CREATE INDEX IF NOT EXISTS _obj_i2 ON obj(data_id);
CREATE TABLE IF NOT EXISTS data (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    compression INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ttrans (
    partition INTEGER NOT NULL,
    tid INTEGER,
    packed BOOLEAN NOT NULL,
    oids BLOB NOT NULL,
    user BLOB NOT NULL,
    description BLOB NOT NULL,
    ext BLOB NOT NULL,
    ttid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tobj (
    partition INTEGER NOT NULL,
    oid INTEGER NOT NULL,
    tid INTEGER NOT NULL,
    data_id INTEGER,
    value_tid INTEGER,
    PRIMARY KEY (tid, oid)
) WITHOUT ROWID;
";

/// An object row joined with its data and followed by the serial of the
/// next revision, as read by `get_object`, with the given condition: a
/// literal, so each load finds its prepared statement without building the
/// SQL again. One statement per load, the next serial included.
macro_rules! select_object {
    ($condition:literal) => {
        concat!(
            "SELECT obj.tid, obj.value_tid, obj.data_id, data.id, data.compression, \
             data.hash, data.value, \
             (SELECT MIN(next.tid) FROM obj AS next WHERE next.partition = obj.partition \
              AND next.oid = obj.oid AND next.tid > obj.tid) \
             FROM obj LEFT JOIN data ON data.id = obj.data_id WHERE ",
            $condition
        )
    };
}

/// How to open a database.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Erase everything first (`--reset`).
    pub reset: bool,
    /// Use SQLite's write-ahead log (the default, see
    /// [`SqliteBackend::open`]); `false` keeps a rollback journal, as NEO/py
    /// does by default.
    pub wal: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            reset: false,
            wal: true,
        }
    }
}

/// [`Backend`] on one SQLite file.
#[derive(Debug)]
pub struct SqliteBackend {
    // Declared first so that the database is closed before the lock is
    // released.
    conn: Connection,
    _lock: FileLock,
    path: PathBuf,
    /// Number of partitions, derived from `pt` (0 = no table yet).
    num_partitions: u32,
    own_nid: Option<NodeId>,
    /// Own UP_TO_DATE and FEEDING cells.
    readable: BTreeSet<Partition>,
    /// In-progress references to data ids (see `Backend::hold_data`).
    held: HashMap<DataId, u32>,
    /// Next free data id per partition, filled lazily from `data`.
    next_data_id: HashMap<Partition, u64>,
}

/// Attaches what was being done to SQLite errors.
trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|source| {
            Error::Fatal(FatalError::Engine {
                engine: "SQLite",
                context,
                source: Box::new(source),
            })
        })
    }
}

/// An id as stored in SQLite; ids above `2^63 - 1` can not be stored.
fn sql(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| RequestError::OutOfRange { what, value }.into())
}

/// An id used as a range bound: anything above the storable range means
/// "no limit".
fn sql_bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A length or offset for `LIMIT` / `OFFSET`.
fn sql_count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An id read from the database; a negative one means corruption.
fn unsigned(what: &str, value: i64) -> Result<u64> {
    u64::try_from(value)
        .map_err(|_| Error::corrupted(format!("negative {what} {value} in database")))
}

fn tid_from(what: &str, value: i64) -> Result<Tid> {
    unsigned(what, value).map(Tid)
}

fn checksum_from(hash: &[u8], data_id: i64) -> Result<Checksum> {
    <[u8; 20]>::try_from(hash).map(Checksum).map_err(|_| {
        Error::corrupted(format!(
            "data id {data_id}: hash has {} bytes instead of 20",
            hash.len()
        ))
    })
}

fn compression_from(value: i64, data_id: i64) -> Result<u8> {
    u8::try_from(value)
        .map_err(|_| Error::corrupted(format!("data id {data_id}: invalid compression {value}")))
}

/// A byte string column; tolerates TEXT for databases written by old
/// Python 2 versions.
fn bytes(row: &Row<'_>, index: usize) -> rusqlite::Result<Vec<u8>> {
    match row.get_ref(index)? {
        ValueRef::Blob(value) | ValueRef::Text(value) => Ok(value.to_vec()),
        other => Err(rusqlite::Error::InvalidColumnType(
            index,
            "expected a byte string".into(),
            other.data_type(),
        )),
    }
}

/// A `config` value; NEO/py writes text, but accept what SQLite's dynamic
/// typing may have kept.
fn text(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get_ref(index)? {
        ValueRef::Null => None,
        ValueRef::Integer(value) => Some(value.to_string()),
        ValueRef::Real(value) => Some(value.to_string()),
        ValueRef::Text(value) | ValueRef::Blob(value) => {
            Some(String::from_utf8_lossy(value).into_owned())
        }
    })
}

/// `trans.oids`: concatenated 8-byte big-endian oids.
fn encode_oids(oids: &[Oid]) -> Vec<u8> {
    oids.iter().flat_map(|oid| oid.to_bytes()).collect()
}

fn decode_oids(blob: &[u8], tid: u64) -> Result<Vec<Oid>> {
    let chunks = blob.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(Error::corrupted(format!(
            "transaction {tid:016x}: oid list of {} bytes is not a multiple of 8",
            blob.len()
        )));
    }
    Ok(chunks
        .map(|chunk| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(chunk);
            Oid::from_bytes(bytes)
        })
        .collect())
}

fn parse_config<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value
        .trim()
        .parse()
        .map_err(|_| Error::corrupted(format!("config {key:?} has invalid value {value:?}")))
}

fn parse_hex_tid(key: &str, value: &str) -> Result<Tid> {
    u64::from_str_radix(value.trim(), 16)
        .map(Tid)
        .map_err(|_| Error::corrupted(format!("config {key:?} is not a hex TID: {value:?}")))
}

/// `pt.tid` → cell state: `max(0, -tid)` (§12.3).
fn cell_state(partition: i64, raw_tid: i64) -> Result<CellState> {
    let value = if raw_tid >= 0 {
        0
    } else {
        raw_tid.unsigned_abs()
    };
    CellState::from_value(value)
        .filter(|state| *state != CellState::Discarded)
        .ok_or_else(|| {
            Error::corrupted(format!(
                "partition {partition}: invalid cell state in pt.tid = {raw_tid}"
            ))
        })
}

/// Refuses a database of another schema version.
fn check_version(database: &str, found: u32) -> Result<(), OpenError> {
    let database = database.to_owned();
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(OpenError::NewerSchema {
            database,
            found,
            supported: SCHEMA_VERSION,
        }),
        std::cmp::Ordering::Less => Err(OpenError::OlderSchema {
            database,
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

/// A raw object row before validation.
struct RawObject {
    serial: i64,
    value_tid: Option<i64>,
    data_id: Option<i64>,
    joined_id: Option<i64>,
    compression: Option<i64>,
    hash: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Serial of the next revision, if any.
    next_serial: Option<i64>,
}

impl RawObject {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawObject> {
        Ok(RawObject {
            serial: row.get(0)?,
            value_tid: row.get(1)?,
            data_id: row.get(2)?,
            joined_id: row.get(3)?,
            compression: row.get(4)?,
            hash: match row.get_ref(5)? {
                ValueRef::Null => None,
                _ => Some(bytes(row, 5)?),
            },
            value: match row.get_ref(6)? {
                ValueRef::Null => None,
                _ => Some(bytes(row, 6)?),
            },
            next_serial: row.get(7)?,
        })
    }

    fn into_record(self, oid: Oid) -> Result<ObjectRecord> {
        let serial = tid_from("serial", self.serial)?;
        let next_serial = self
            .next_serial
            .map(|tid| tid_from("serial", tid))
            .transpose()?;
        let data_serial = self
            .value_tid
            .map(|tid| tid_from("value_tid", tid))
            .transpose()?;
        let (compression, checksum, data) = match self.data_id {
            None => (None, Checksum::ZERO, Vec::new()),
            Some(data_id) => match (self.joined_id, self.compression, self.hash, self.value) {
                (Some(_), Some(compression), Some(hash), Some(value)) => (
                    Some(compression_from(compression, data_id)?),
                    checksum_from(&hash, data_id)?,
                    value,
                ),
                _ => {
                    return Err(Error::corrupted(format!(
                        "object {oid} serial {serial} refers to missing data id {data_id}"
                    )))
                }
            },
        };
        Ok(ObjectRecord {
            serial,
            next_serial,
            compression,
            checksum,
            data,
            data_serial,
        })
    }
}

impl SqliteBackend {
    /// Opens (creating it if needed) the database at `path`, locks it
    /// against other processes and checks its schema version.
    ///
    /// Durability (§12.2): every commit must survive `kill -9` and power
    /// loss, because the protocol relies on it (a locked transaction is
    /// promised to the master). We use the write-ahead log with
    /// `synchronous = FULL`: a commit appends to the WAL and fsyncs it once,
    /// which is durable against power loss and cheaper than the rollback
    /// journal (which fsyncs the journal, then the database, then deletes
    /// the journal). `synchronous = NORMAL` would not do: in WAL mode it
    /// skips the fsync at commit, so the last transactions could vanish on
    /// power loss. The WAL is merged back when the last connection closes,
    /// and NEO/py opens a WAL database as well. With `wal = false` the
    /// rollback journal is kept (still with `synchronous = FULL`).
    pub fn open(path: impl AsRef<Path>, options: &OpenOptions) -> Result<SqliteBackend, OpenError> {
        let path = path.as_ref().to_owned();
        let database = path.display().to_string();
        let failed = |error: Error| OpenError::Failed {
            database: database.clone(),
            source: match error {
                Error::Fatal(source) => source,
                // Opening sends no value of a peer to the database.
                Error::Request(error) => FatalError::Corrupted(error.to_string()),
            },
        };
        // The lock is named after the inode, so the file must exist first.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| OpenError::Io {
                context: "creating database file",
                database: database.clone(),
                source,
            })?;
        let lock = FileLock::acquire(&path)?;
        let conn = Connection::open(&path)
            .ctx("opening the database")
            .map_err(failed)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Without it SQLite plans a cached statement again whenever a bound
        // value crosses 0/1 (`partition = ?` does on almost every load):
        // that re-planning was 40% of the storage's CPU per load. Our
        // queries have one good plan whatever the values.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .ctx("fixing query plans")
            .map_err(failed)?;
        // Statements that move many rows (the unlock's INSERT ... SELECT)
        // keep a statement journal: in memory, not in a temporary file
        // written page by page (half of an unlock's CPU in perf).
        conn.pragma_update(None, "temp_store", "MEMORY")
            .ctx("keeping temporary data in memory")
            .map_err(failed)?;
        let journal_mode = if options.wal { "wal" } else { "delete" };
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", journal_mode, |row| row.get(0))
            .ctx("setting the journal mode")
            .map_err(failed)?;
        if !mode.eq_ignore_ascii_case(journal_mode) {
            tracing::warn!(path = %path.display(), wanted = journal_mode, got = %mode,
                "SQLite refused the journal mode");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .ctx("setting synchronous = FULL")
            .map_err(failed)?;
        let mut backend = SqliteBackend {
            conn,
            _lock: lock,
            path,
            num_partitions: 0,
            own_nid: None,
            readable: BTreeSet::new(),
            held: HashMap::new(),
            next_data_id: HashMap::new(),
        };
        if options.reset {
            backend.drop_tables().map_err(failed)?;
        }
        let found = backend.schema_version().map_err(failed)?;
        if let Some(found) = found {
            check_version(&database, found)?;
        }
        backend.setup().map_err(failed)?;
        backend.load_state().map_err(failed)?;
        Ok(backend)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of an existing database: `None` when it has no
    /// table yet, 0 for tables without a version (older than versioned
    /// schemas).
    fn schema_version(&mut self) -> Result<Option<u32>> {
        if self.has_table("config")? {
            return Ok(Some(match self.config("version")? {
                Some(version) => parse_config::<u32>("version", &version)?,
                None => 0,
            }));
        }
        for table in TABLES {
            if self.has_table(table)? {
                return Ok(Some(0));
            }
        }
        Ok(None)
    }

    fn has_table(&self, table: &str) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
            .and_then(|mut stmt| stmt.exists([table]))
            .ctx("listing tables")
    }

    /// Creates what is missing.
    fn setup(&mut self) -> Result<()> {
        let new = !self.has_table("config")?;
        self.begin()?;
        self.conn
            .execute_batch(SCHEMA)
            .ctx("creating tables and indexes")?;
        if new {
            self.set_config("version", Some(&SCHEMA_VERSION.to_string()))?;
        }
        self.commit()
    }

    fn drop_tables(&mut self) -> Result<()> {
        self.begin()?;
        for table in TABLES {
            self.conn
                .execute_batch(&format!("DROP TABLE IF EXISTS {table}"))
                .ctx("dropping tables")?;
        }
        self.held.clear();
        self.next_data_id.clear();
        self.num_partitions = 0;
        self.own_nid = None;
        self.readable.clear();
        self.commit()
    }

    /// Reloads what is cached from the database: own nid, number of
    /// partitions, readable partitions, data holds of voted transactions.
    fn load_state(&mut self) -> Result<()> {
        self.own_nid = self.nid()?;
        self.reload_partition_state()?;
        self.held.clear();
        let ids = self.tobj_data_ids(None)?;
        self.hold_data(&ids);
        Ok(())
    }

    fn reload_partition_state(&mut self) -> Result<()> {
        let max: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(partition) FROM pt")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .ctx("reading the number of partitions")?;
        self.num_partitions = match max {
            None => 0,
            Some(max) => u32::try_from(max)
                .ok()
                .and_then(|max| max.checked_add(1))
                .ok_or_else(|| Error::corrupted(format!("invalid partition number {max} in pt")))?,
        };
        self.readable.clear();
        if let Some(nid) = self.own_nid {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT partition FROM pt WHERE nid = ? AND tid IN (-1, -2)")
                .ctx("reading readable partitions")?;
            let rows = stmt
                .query_map([i64::from(nid.0)], |row| row.get::<_, i64>(0))
                .ctx("reading readable partitions")?;
            for partition in rows {
                let partition = partition.ctx("reading readable partitions")?;
                // In range: bounded by MAX(partition) above.
                self.readable
                    .insert(u32::try_from(partition).unwrap_or(INVALID_PARTITION));
            }
        }
        Ok(())
    }

    /// Opens the write transaction if none is open (like Python's sqlite3
    /// module, which NEO/py relies on: writes accumulate until `commit`).
    fn begin(&mut self) -> Result<()> {
        if self.conn.is_autocommit() {
            // Cached like the other statements: parsed once, not per
            // transaction.
            self.conn
                .prepare_cached("BEGIN IMMEDIATE")
                .and_then(|mut stmt| stmt.execute([]))
                .ctx("beginning a write transaction")?;
        }
        Ok(())
    }

    fn partition_of(&self, id: u64, context: &'static str) -> Result<Partition> {
        match self.num_partitions {
            0 => Err(RequestError::NoPartitionTable { context }.into()),
            // The remainder is below `np`, which is a u32.
            np => Ok((id % u64::from(np)) as Partition),
        }
    }

    /// Partition of `id`, which this node must be able to serve reads for.
    fn readable_partition_of(&self, id: u64) -> Result<Partition> {
        let partition = match self.num_partitions {
            0 => INVALID_PARTITION,
            np => (id % u64::from(np)) as Partition,
        };
        self.check_readable(partition)?;
        Ok(partition)
    }

    fn check_readable(&self, partition: Partition) -> Result<()> {
        if self.readable.contains(&partition) {
            Ok(())
        } else {
            Err(RequestError::NonReadableCell { partition }.into())
        }
    }

    fn config_tid(&mut self, key: &str) -> Result<Option<Tid>> {
        self.config(key)?
            .map(|value| parse_hex_tid(key, &value))
            .transpose()
    }

    fn set_config_tid(&mut self, key: &str, tid: Option<Tid>) -> Result<()> {
        let value = tid.map(|tid| format!("{:016x}", tid.0));
        self.set_config(key, value.as_deref())
    }

    /// Data ids of temporary object rows, of one TTID or of all.
    fn tobj_data_ids(&self, ttid: Option<i64>) -> Result<Vec<DataId>> {
        const CONTEXT: &str = "reading data ids of temporary objects";
        let ids: Vec<i64> = match ttid {
            Some(ttid) => {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT data_id FROM tobj WHERE tid = ? AND data_id IS NOT NULL",
                    )
                    .ctx(CONTEXT)?;
                let rows = stmt.query_map([ttid], |row| row.get(0)).ctx(CONTEXT)?;
                rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
            }
            None => {
                let mut stmt = self
                    .conn
                    .prepare_cached("SELECT data_id FROM tobj WHERE data_id IS NOT NULL")
                    .ctx(CONTEXT)?;
                let rows = stmt.query_map([], |row| row.get(0)).ctx(CONTEXT)?;
                rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
            }
        };
        ids.into_iter().map(|id| unsigned("data id", id)).collect()
    }

    /// Deletes the data rows among `ids` that nothing references any more.
    fn prune_data(&mut self, ids: &[DataId]) -> Result<()> {
        const CONTEXT: &str = "pruning unreferenced data";
        for &id in ids {
            if self.held.contains_key(&id) {
                continue;
            }
            let id = sql("data id", id)?;
            self.begin()?;
            self.conn
                .prepare_cached(
                    "DELETE FROM data WHERE id = ?1
                       AND NOT EXISTS (SELECT 1 FROM obj WHERE data_id = ?1)
                       AND NOT EXISTS (SELECT 1 FROM tobj WHERE data_id = ?1)",
                )
                .and_then(|mut stmt| stmt.execute([id]))
                .ctx(CONTEXT)?;
        }
        Ok(())
    }

    /// Allocates the next data id of `partition`.
    fn allocate_data_id(&mut self, partition: Partition) -> Result<DataId> {
        let start = u64::from(partition) << DATA_ID_SHIFT;
        let end = (u64::from(partition) + 1) << DATA_ID_SHIFT;
        let next = match self.next_data_id.get(&partition) {
            Some(&next) => next,
            None => {
                let max: Option<i64> = self
                    .conn
                    .prepare_cached("SELECT MAX(id) FROM data WHERE ?1 <= id AND id < ?2")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![sql_bound(start), sql_bound(end)], |row| row.get(0))
                    })
                    .ctx("finding the last data id of a partition")?;
                match max {
                    Some(max) => unsigned("data id", max)? + 1,
                    None => start,
                }
            }
        };
        if next >= end {
            return Err(Error::corrupted(format!(
                "data ids of partition {partition} are exhausted"
            )));
        }
        sql("data id", next)?;
        self.next_data_id.insert(partition, next + 1);
        Ok(next)
    }

    /// The object row at exactly `serial`, with its back-pointer:
    /// `None` if absent, `Some(value_tid)` otherwise.
    fn object_value_tid(
        &self,
        partition: Partition,
        oid: i64,
        serial: i64,
    ) -> Result<Option<Option<i64>>> {
        self.conn
            .prepare_cached("SELECT value_tid FROM obj WHERE partition = ? AND oid = ? AND tid = ?")
            .and_then(|mut stmt| {
                stmt.query_row(params![partition, oid, serial], |row| row.get(0))
                    .optional()
            })
            .ctx("reading an object back-pointer")
    }

    /// The newest row of `oid` before `before`: `(serial, value_tid)`.
    fn object_before(
        &self,
        partition: Partition,
        oid: i64,
        before: i64,
    ) -> Result<Option<(i64, Option<i64>)>> {
        self.conn
            .prepare_cached(
                "SELECT tid, value_tid FROM obj WHERE partition = ? AND oid = ? AND tid < ?
                 ORDER BY tid DESC LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![partition, oid, before], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
            })
            .ctx("reading an object revision")
    }

    /// Follows back-pointers from the record `(serial, value_tid)` to the
    /// serial that originally wrote the data. If pack removed the target
    /// of a back-pointer, the record holding that back-pointer is the
    /// oldest surviving equivalent, so its serial is returned.
    fn original_serial(
        &self,
        partition: Partition,
        oid: i64,
        mut serial: i64,
        mut value_tid: Option<i64>,
    ) -> Result<i64> {
        while let Some(target) = value_tid {
            if target >= serial {
                return Err(Error::corrupted(format!(
                    "object {oid:#018x} serial {serial:#018x} points forward to {target:#018x}"
                )));
            }
            match self.object_value_tid(partition, oid, target)? {
                Some(next) => {
                    serial = target;
                    value_tid = next;
                }
                None => break,
            }
        }
        Ok(serial)
    }

    fn max_tid_of_partition(&self, partition: Partition) -> Result<Option<i64>> {
        let max = |sql: &str| -> Result<Option<i64>> {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut stmt| stmt.query_row([partition], |row| row.get(0)))
                .ctx("reading the last TID of a partition")
        };
        let trans = max("SELECT MAX(tid) FROM trans WHERE partition = ?")?;
        let obj = max("SELECT MAX(tid) FROM obj WHERE partition = ?")?;
        Ok(trans.max(obj))
    }

    fn read_transaction_row(row: &Row<'_>) -> rusqlite::Result<(Vec<u8>, TransactionMeta, i64)> {
        Ok((
            bytes(row, 0)?,
            TransactionMeta {
                oids: Vec::new(),
                user: bytes(row, 1)?,
                description: bytes(row, 2)?,
                extension: bytes(row, 3)?,
                packed: row.get(4)?,
                ttid: Tid::ZERO,
            },
            row.get(5)?,
        ))
    }
}

impl Backend for SqliteBackend {
    fn commit(&mut self) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn
                .prepare_cached("COMMIT")
                .and_then(|mut stmt| stmt.execute([]))
                .ctx("committing")?;
        }
        Ok(())
    }

    fn has_uncommitted(&self) -> bool {
        !self.conn.is_autocommit()
    }

    fn reset(&mut self) -> Result<()> {
        self.drop_tables()?;
        self.setup()?;
        self.load_state()
    }

    fn erase(&mut self) -> Result<()> {
        self.drop_tables()
    }

    fn config(&mut self, key: &str) -> Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT value FROM config WHERE name = ?")
            .and_then(|mut stmt| stmt.query_row([key], |row| text(row, 0)).optional())
            .map(Option::flatten)
            .ctx("reading configuration")
    }

    fn set_config(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        self.begin()?;
        match value {
            Some(value) => self
                .conn
                .prepare_cached("INSERT OR REPLACE INTO config VALUES (?, ?)")
                .and_then(|mut stmt| stmt.execute([key, value])),
            None => self
                .conn
                .prepare_cached("DELETE FROM config WHERE name = ?")
                .and_then(|mut stmt| stmt.execute([key])),
        }
        .ctx("writing configuration")?;
        Ok(())
    }

    fn name(&mut self) -> Result<Option<String>> {
        self.config("name")
    }

    fn set_name(&mut self, name: &str) -> Result<()> {
        self.set_config("name", Some(name))
    }

    fn nid(&mut self) -> Result<Option<NodeId>> {
        self.config("nid")?
            .map(|value| parse_config::<i32>("nid", &value).map(NodeId))
            .transpose()
    }

    fn set_nid(&mut self, nid: NodeId) -> Result<()> {
        let old = self.nid()?;
        self.begin()?;
        if let Some(old) = old.filter(|old| *old != nid) {
            self.conn
                .prepare_cached("UPDATE pt SET nid = ? WHERE nid = ?")
                .and_then(|mut stmt| stmt.execute([i64::from(nid.0), i64::from(old.0)]))
                .ctx("moving own cells to the new nid")?;
        }
        self.set_config("nid", Some(&nid.0.to_string()))?;
        self.own_nid = Some(nid);
        self.reload_partition_state()
    }

    fn ptid(&mut self) -> Result<Option<Ptid>> {
        self.config("ptid")?
            .map(|value| parse_config("ptid", &value))
            .transpose()
    }

    fn num_replicas(&mut self) -> Result<u32> {
        Ok(self
            .config("replicas")?
            .map(|value| parse_config("replicas", &value))
            .transpose()?
            .unwrap_or(0))
    }

    fn truncate_tid(&mut self) -> Result<Option<Tid>> {
        self.config_tid("truncate_tid")
    }

    fn set_truncate_tid(&mut self, tid: Option<Tid>) -> Result<()> {
        self.set_config_tid("truncate_tid", tid)
    }

    fn backup_tid(&mut self) -> Result<Option<Tid>> {
        self.config_tid("backup_tid")
    }

    fn set_backup_tid(&mut self, tid: Option<Tid>) -> Result<()> {
        self.set_config_tid("backup_tid", tid)
    }

    fn change_partition_table(
        &mut self,
        ptid: Ptid,
        num_replicas: u32,
        cells: &[(Partition, NodeId, CellState)],
        reset: bool,
    ) -> Result<()> {
        const CONTEXT: &str = "changing the partition table";
        let own = self.own_nid;
        // Own cells before the change: their progress and pack ids survive.
        let mut old_own: HashMap<i64, (i64, Option<i64>)> = HashMap::new();
        if let Some(own) = own {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT partition, tid, pack FROM pt WHERE nid = ?")
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map([i64::from(own.0)], |row| {
                    Ok((row.get(0)?, (row.get(1)?, row.get(2)?)))
                })
                .ctx(CONTEXT)?;
            for row in rows {
                let (partition, value) = row.ctx(CONTEXT)?;
                old_own.insert(partition, value);
            }
        }
        let backup_tid = self.backup_tid()?;
        let last_approved_pack: Option<i64> = self
            .conn
            .prepare_cached("SELECT MAX(tid) FROM pack WHERE approved")
            .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
            .ctx(CONTEXT)?;
        self.begin()?;
        if reset {
            self.conn.execute("DELETE FROM pt", []).ctx(CONTEXT)?;
        }
        for &(partition, nid, state) in cells {
            let p = i64::from(partition);
            if state == CellState::Discarded {
                self.conn
                    .prepare_cached("DELETE FROM pt WHERE partition = ? AND nid = ?")
                    .and_then(|mut stmt| stmt.execute([p, i64::from(nid.0)]))
                    .ctx(CONTEXT)?;
                continue;
            }
            let (tid, pack) = if Some(nid) == own {
                let old = old_own.get(&p).copied();
                let tid = match (state, old) {
                    // Already out of date: keep the replication progress.
                    (CellState::OutOfDate, Some((tid, _))) if tid >= 0 => tid,
                    // A readable cell is complete up to its last data.
                    (CellState::OutOfDate, Some((-1 | -2, _))) => match backup_tid {
                        Some(tid) => sql("backup tid", tid.0)?,
                        None => self.max_tid_of_partition(partition)?.unwrap_or(0),
                    },
                    (CellState::OutOfDate, _) => 0,
                    (state, _) => -(state as i64),
                };
                let pack = match old {
                    Some((_, pack)) => pack,
                    None if state == CellState::OutOfDate => Some(last_approved_pack.unwrap_or(0)),
                    None => Some(0),
                };
                (tid, pack)
            } else {
                (-(state as i64), None)
            };
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO pt VALUES (?, ?, ?, ?)")
                .and_then(|mut stmt| stmt.execute(params![p, i64::from(nid.0), tid, pack]))
                .ctx(CONTEXT)?;
        }
        self.set_config("ptid", Some(&ptid.to_string()))?;
        self.set_config("replicas", Some(&num_replicas.to_string()))?;
        self.reload_partition_state()?;
        self.commit()
    }

    fn partition_table(&mut self) -> Result<Vec<(Partition, NodeId, CellState)>> {
        const CONTEXT: &str = "reading the partition table";
        let rows: Vec<(i64, i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT partition, nid, tid FROM pt ORDER BY partition, nid")
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        rows.into_iter()
            .map(|(partition, nid, tid)| {
                let state = cell_state(partition, tid)?;
                let p = Partition::try_from(partition).map_err(|_| {
                    Error::corrupted(format!("invalid partition {partition} in pt"))
                })?;
                let nid = i32::try_from(nid)
                    .map_err(|_| Error::corrupted(format!("invalid nid {nid} in pt")))?;
                Ok((p, NodeId(nid), state))
            })
            .collect()
    }

    fn num_partitions(&self) -> u32 {
        self.num_partitions
    }

    fn assigned_cells(&mut self) -> Result<Vec<AssignedCell>> {
        const CONTEXT: &str = "reading own cells";
        let Some(own) = self.own_nid else {
            return Ok(Vec::new());
        };
        let rows: Vec<(i64, i64, Option<i64>)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT partition, tid, pack FROM pt WHERE nid = ? ORDER BY partition",
                )
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map([i64::from(own.0)], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        rows.into_iter()
            .map(|(partition, tid, pack)| {
                Ok(AssignedCell {
                    partition: Partition::try_from(partition).map_err(|_| {
                        Error::corrupted(format!("invalid partition {partition} in pt"))
                    })?,
                    state: cell_state(partition, tid)?,
                    complete_up_to: (tid >= 0).then_some(Tid(tid.unsigned_abs())),
                    pack: pack.map(|pack| tid_from("pack id", pack)).transpose()?,
                })
            })
            .collect()
    }

    fn readable_partitions(&self) -> BTreeSet<Partition> {
        self.readable.clone()
    }

    fn update_cell_tid(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        let Some(own) = self.own_nid else {
            return Ok(());
        };
        let tid = sql("tid", tid.0)?;
        self.begin()?;
        self.conn
            .prepare_cached("UPDATE pt SET tid = ? WHERE partition = ? AND nid = ? AND tid >= 0")
            .and_then(|mut stmt| stmt.execute(params![tid, partition, own.0]))
            .ctx("recording replication progress")?;
        Ok(())
    }

    fn get_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<ObjectLookup> {
        const CONTEXT: &str = "loading an object";
        let partition = self.readable_partition_of(oid.0)?;
        let oid_sql = sql("oid", oid.0)?;
        let query = |sql: &str, bound: i64| -> Result<Option<RawObject>> {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut stmt| {
                    stmt.query_row(params![partition, oid_sql, bound], RawObject::from_row)
                        .optional()
                })
                .ctx(CONTEXT)
        };
        let raw = match (at, before) {
            (Some(at), _) => match i64::try_from(at.0) {
                Ok(at) => query(
                    select_object!("obj.partition = ?1 AND obj.oid = ?2 AND obj.tid = ?3"),
                    at,
                )?,
                Err(_) => None,
            },
            (None, Some(before)) => query(
                select_object!(
                    "obj.partition = ?1 AND obj.oid = ?2 AND obj.tid < ?3 \
                     ORDER BY obj.tid DESC LIMIT 1"
                ),
                sql_bound(before.0),
            )?,
            (None, None) => query(
                select_object!(
                    "obj.partition = ?1 AND obj.oid = ?2 AND obj.tid <= ?3 \
                     ORDER BY obj.tid DESC LIMIT 1"
                ),
                i64::MAX,
            )?,
        };
        let Some(raw) = raw else {
            let exists = self
                .conn
                .prepare_cached("SELECT 1 FROM obj WHERE partition = ? AND oid = ? LIMIT 1")
                .and_then(|mut stmt| stmt.exists(params![partition, oid_sql]))
                .ctx(CONTEXT)?;
            return Ok(if exists {
                ObjectLookup::NoMatchingRevision
            } else {
                ObjectLookup::OidDoesNotExist
            });
        };
        raw.into_record(oid).map(ObjectLookup::Found)
    }

    fn last_object_tid(&mut self, oid: Oid) -> Result<Option<Tid>> {
        let partition = self.partition_of(oid.0, "reading the last serial of an object")?;
        let oid = sql("oid", oid.0)?;
        self.conn
            .prepare_cached("SELECT MAX(tid) FROM obj WHERE partition = ? AND oid = ?")
            .and_then(|mut stmt| {
                stmt.query_row(params![partition, oid], |row| row.get::<_, Option<i64>>(0))
            })
            .ctx("reading the last serial of an object")?
            .map(|tid| tid_from("serial", tid))
            .transpose()
    }

    fn get_transaction(
        &mut self,
        tid: Tid,
        include_temporary: bool,
    ) -> Result<Option<TransactionMeta>> {
        const CONTEXT: &str = "reading transaction metadata";
        let partition = if include_temporary {
            self.partition_of(tid.0, CONTEXT)?
        } else {
            self.readable_partition_of(tid.0)?
        };
        let tid_sql = sql("tid", tid.0)?;
        let mut found = self
            .conn
            .prepare_cached(
                "SELECT oids, user, description, ext, packed, ttid FROM trans
                 WHERE partition = ? AND tid = ?",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![partition, tid_sql], Self::read_transaction_row)
                    .optional()
            })
            .ctx(CONTEXT)?;
        if found.is_none() && include_temporary {
            found = self
                .conn
                .prepare_cached(
                    "SELECT oids, user, description, ext, packed, ttid FROM ttrans
                     WHERE ttid = ?",
                )
                .and_then(|mut stmt| {
                    stmt.query_row([tid_sql], Self::read_transaction_row)
                        .optional()
                })
                .ctx(CONTEXT)?;
        }
        found
            .map(|(oids, mut meta, ttid)| {
                meta.oids = decode_oids(&oids, tid.0)?;
                meta.ttid = tid_from("ttid", ttid)?;
                Ok(meta)
            })
            .transpose()
    }

    fn object_history(&mut self, oid: Oid, offset: u64, length: u64) -> Result<Vec<HistoryEntry>> {
        const CONTEXT: &str = "reading object history";
        let partition = self.readable_partition_of(oid.0)?;
        let oid = sql("oid", oid.0)?;
        let rows: Vec<(i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT obj.tid, IFNULL(LENGTH(data.value), 0)
                     FROM obj LEFT JOIN data ON data.id = obj.data_id
                     WHERE obj.partition = ? AND obj.oid = ?
                     ORDER BY obj.tid DESC LIMIT ? OFFSET ?",
                )
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map(
                    params![partition, oid, sql_count(length), sql_count(offset)],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        rows.into_iter()
            .map(|(serial, size)| {
                Ok(HistoryEntry {
                    serial: tid_from("serial", serial)?,
                    size: unsigned("data size", size)?,
                })
            })
            .collect()
    }

    fn tid_list(&mut self, offset: u64, length: u64, partitions: &[Partition]) -> Result<Vec<Tid>> {
        const CONTEXT: &str = "listing transactions";
        for &partition in partitions {
            self.check_readable(partition)?;
        }
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        // Partition numbers are plain integers: safe to inline, and the
        // statement cache keeps the few distinct lists a node uses.
        let list = partitions
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let query = format!(
            "SELECT tid FROM trans WHERE partition IN ({list}) ORDER BY tid DESC LIMIT ? OFFSET ?"
        );
        let tids: Vec<i64> = {
            let mut stmt = self.conn.prepare_cached(&query).ctx(CONTEXT)?;
            let rows = stmt
                .query_map(params![sql_count(length), sql_count(offset)], |row| {
                    row.get(0)
                })
                .ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        tids.into_iter().map(|tid| tid_from("tid", tid)).collect()
    }

    fn replication_tid_list(
        &mut self,
        min: Tid,
        max: Tid,
        length: u64,
        partition: Partition,
    ) -> Result<Vec<Tid>> {
        const CONTEXT: &str = "listing transactions of a partition";
        let tids: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT tid FROM trans WHERE partition = ? AND ? <= tid AND tid <= ?
                     ORDER BY tid LIMIT ?",
                )
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map(
                    params![
                        partition,
                        sql_bound(min.0),
                        sql_bound(max.0),
                        sql_count(length)
                    ],
                    |row| row.get(0),
                )
                .ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        tids.into_iter().map(|tid| tid_from("tid", tid)).collect()
    }

    fn oids_from(
        &mut self,
        partition: Partition,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> Result<(Vec<Oid>, Option<Oid>)> {
        const CONTEXT: &str = "listing oids";
        self.check_readable(partition)?;
        if length == 0 || min_oid.0 > i64::MAX as u64 {
            return Ok((Vec::new(), None));
        }
        let oids: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT o.oid FROM obj AS o
                     WHERE o.partition = ?1 AND o.oid >= ?2 AND o.data_id IS NOT NULL
                       AND o.tid = (SELECT MAX(tid) FROM obj
                                    WHERE partition = ?1 AND oid = o.oid AND tid <= ?3)
                     ORDER BY o.oid LIMIT ?4",
                )
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map(
                    params![
                        partition,
                        sql_bound(min_oid.0),
                        sql_bound(tid.0),
                        sql_count(length)
                    ],
                    |row| row.get(0),
                )
                .ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        let oids = oids
            .into_iter()
            .map(|oid| unsigned("oid", oid).map(Oid))
            .collect::<Result<Vec<_>>>()?;
        let next = match oids.last() {
            Some(last) if oids.len() as u64 == length => {
                last.0.checked_add(u64::from(self.num_partitions)).map(Oid)
            }
            _ => None,
        };
        Ok((oids, next))
    }

    fn find_undo_tid(
        &mut self,
        oid: Oid,
        snapshot: Tid,
        undone_tid: Tid,
        current: Option<Tid>,
    ) -> Result<UndoLookup> {
        let partition = self.readable_partition_of(oid.0)?;
        let oid_sql = sql("oid", oid.0)?;
        let Ok(undone) = i64::try_from(undone_tid.0) else {
            return Ok(UndoLookup::NoRecord);
        };
        let Some(undone_value_tid) = self.object_value_tid(partition, oid_sql, undone)? else {
            return Ok(UndoLookup::NoRecord);
        };
        if undone_tid >= snapshot {
            return Ok(UndoLookup::NotVisible);
        }
        let undone_original = self.original_serial(partition, oid_sql, undone, undone_value_tid)?;
        let (current_serial, current_original) = match current {
            Some(current) => (current, sql_bound(current.0)),
            None => match self.object_before(partition, oid_sql, sql_bound(snapshot.0))? {
                Some((serial, value_tid)) => (
                    tid_from("serial", serial)?,
                    self.original_serial(partition, oid_sql, serial, value_tid)?,
                ),
                None => return Ok(UndoLookup::NotVisible),
            },
        };
        let undo_serial = match self.object_before(partition, oid_sql, undone)? {
            Some((serial, value_tid)) => Some(tid_from(
                "serial",
                self.original_serial(partition, oid_sql, serial, value_tid)?,
            )?),
            None => None,
        };
        Ok(UndoLookup::Found(UndoSerial {
            current_serial,
            undo_serial,
            is_current: undone_original == current_original,
        }))
    }

    fn final_tid(&mut self, ttid: Tid) -> Result<Option<Tid>> {
        let partition = self.readable_partition_of(ttid.0)?;
        let ttid = sql("ttid", ttid.0)?;
        self.conn
            .prepare_cached(
                "SELECT tid FROM trans WHERE partition = ? AND tid >= ? AND ttid = ? LIMIT 1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![partition, ttid, ttid], |row| row.get::<_, i64>(0))
                    .optional()
            })
            .ctx("finding the final TID of a transaction")?
            .map(|tid| tid_from("tid", tid))
            .transpose()
    }

    fn last_ids(&mut self) -> Result<LastIds> {
        const CONTEXT: &str = "reading the last ids";
        let mut last_tid: Option<i64> = None;
        let mut last_oid: Option<i64> = None;
        for &partition in &self.readable {
            last_tid = last_tid.max(self.max_tid_of_partition(partition)?);
            let oid: Option<i64> = self
                .conn
                .prepare_cached("SELECT MAX(oid) FROM obj WHERE partition = ?")
                .and_then(|mut stmt| stmt.query_row([partition], |row| row.get(0)))
                .ctx(CONTEXT)?;
            last_oid = last_oid.max(oid);
        }
        Ok(LastIds {
            tid: last_tid.map(|tid| tid_from("tid", tid)).transpose()?,
            oid: last_oid
                .map(|oid| unsigned("oid", oid).map(Oid))
                .transpose()?,
        })
    }

    fn first_tid(&mut self) -> Result<Tid> {
        let mut first: Option<i64> = None;
        for &partition in &self.readable {
            let tid: Option<i64> = self
                .conn
                .prepare_cached("SELECT MIN(tid) FROM trans WHERE partition = ?")
                .and_then(|mut stmt| stmt.query_row([partition], |row| row.get(0)))
                .ctx("reading the first TID")?;
            first = match (first, tid) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        first.map_or(Ok(Tid::MAX), |tid| tid_from("tid", tid))
    }

    fn unfinished_transactions(&mut self) -> Result<BTreeMap<Tid, Option<Tid>>> {
        const CONTEXT: &str = "listing unfinished transactions";
        let mut result = BTreeMap::new();
        let locked: Vec<(i64, Option<i64>)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT ttid, tid FROM ttrans")
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        for (ttid, tid) in locked {
            result.insert(
                tid_from("ttid", ttid)?,
                tid.map(|tid| tid_from("tid", tid)).transpose()?,
            );
        }
        let voted: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT DISTINCT tid FROM tobj")
                .ctx(CONTEXT)?;
            let rows = stmt.query_map([], |row| row.get(0)).ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        for ttid in voted {
            result.entry(tid_from("ttid", ttid)?).or_insert(None);
        }
        Ok(result)
    }

    fn load_data(&mut self, data_id: DataId) -> Result<Option<(u8, Checksum, Vec<u8>)>> {
        let id = sql("data id", data_id)?;
        let raw: Option<(i64, Vec<u8>, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT compression, hash, value FROM data WHERE id = ?")
            .and_then(|mut stmt| {
                stmt.query_row([id], |row| {
                    Ok((row.get(0)?, bytes(row, 1)?, bytes(row, 2)?))
                })
                .optional()
            })
            .ctx("loading data")?;
        raw.map(|(compression, hash, value)| {
            Ok((
                compression_from(compression, id)?,
                checksum_from(&hash, id)?,
                value,
            ))
        })
        .transpose()
    }

    fn store_data(
        &mut self,
        oid: Oid,
        checksum: Checksum,
        data: &[u8],
        compression: u8,
        data_tid: Option<Tid>,
    ) -> Result<Option<DataId>> {
        const CONTEXT: &str = "storing object data";
        let partition = self.partition_of(oid.0, CONTEXT)?;
        let oid_sql = sql("oid", oid.0)?;
        if let Some(data_tid) = data_tid {
            let found: Option<Option<i64>> = self
                .conn
                .prepare_cached(
                    "SELECT data_id FROM obj WHERE partition = ? AND oid = ? AND tid = ?",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![partition, oid_sql, sql_bound(data_tid.0)], |row| {
                        row.get(0)
                    })
                    .optional()
                })
                .ctx(CONTEXT)?;
            match found {
                Some(data_id) => {
                    let data_id = data_id.map(|id| unsigned("data id", id)).transpose()?;
                    if let Some(id) = data_id {
                        self.hold_data(&[id]);
                    }
                    return Ok(data_id);
                }
                None if self.readable.contains(&partition) => {
                    return Err(RequestError::UndoPack { oid, data_tid }.into());
                }
                // Not readable here (being replicated): keep what the
                // client sent.
                None => {}
            }
        }
        if checksum == Checksum::ZERO && data.is_empty() {
            return Ok(None);
        }
        let id = self.allocate_data_id(partition)?;
        let id_sql = sql("data id", id)?;
        self.begin()?;
        self.conn
            .prepare_cached("INSERT INTO data VALUES (?, ?, ?, ?)")
            .and_then(|mut stmt| stmt.execute(params![id_sql, &checksum.0[..], compression, data]))
            .ctx(CONTEXT)?;
        self.hold_data(&[id]);
        Ok(Some(id))
    }

    fn hold_data(&mut self, ids: &[DataId]) {
        for &id in ids {
            *self.held.entry(id).or_insert(0) += 1;
        }
    }

    fn release_data(&mut self, ids: &[DataId], prune: bool) -> Result<()> {
        for &id in ids {
            match self.held.get_mut(&id) {
                Some(count) if *count > 1 => *count -= 1,
                Some(_) => {
                    self.held.remove(&id);
                }
                None => tracing::warn!(data_id = id, "released data id that was not held"),
            }
        }
        if prune {
            self.prune_data(ids)?;
        }
        Ok(())
    }

    fn store_transaction(
        &mut self,
        tid: Tid,
        objects: &[ObjectRow],
        transaction: Option<&TransactionMeta>,
        temporary: bool,
    ) -> Result<()> {
        const CONTEXT: &str = "storing a transaction";
        let tid_sql = sql("tid", tid.0)?;
        self.begin()?;
        let table = if temporary { "tobj" } else { "obj" };
        let mut replaced = Vec::new();
        let mut stored = Vec::new();
        for object in objects {
            let partition = self.partition_of(object.oid.0, CONTEXT)?;
            let oid = sql("oid", object.oid.0)?;
            let data_id = object.data_id.map(|id| sql("data id", id)).transpose()?;
            let value_tid = object
                .data_serial
                .map(|tid| sql("data serial", tid.0))
                .transpose()?;
            let old: Option<Option<i64>> = self
                .conn
                .prepare_cached(&format!(
                    "SELECT data_id FROM {table} WHERE partition = ? AND oid = ? AND tid = ?"
                ))
                .and_then(|mut stmt| {
                    stmt.query_row(params![partition, oid, tid_sql], |row| row.get(0))
                        .optional()
                })
                .ctx(CONTEXT)?;
            self.conn
                .prepare_cached(&format!(
                    "INSERT OR REPLACE INTO {table} VALUES (?, ?, ?, ?, ?)"
                ))
                .and_then(|mut stmt| {
                    stmt.execute(params![partition, oid, tid_sql, data_id, value_tid])
                })
                .ctx(CONTEXT)?;
            if let Some(Some(old)) = old.filter(|old| *old != data_id) {
                replaced.push(unsigned("data id", old)?);
            }
            stored.extend(object.data_id);
        }
        if temporary {
            // The replaced temporary rows held their data.
            self.release_data(&replaced, true)?;
        } else {
            // Committed rows reference their data: the holds of
            // `store_data` are not needed any more.
            self.release_data(&stored, false)?;
            self.prune_data(&replaced)?;
        }
        if let Some(meta) = transaction {
            let partition = self.partition_of(tid.0, CONTEXT)?;
            let oids = encode_oids(&meta.oids);
            if temporary {
                self.conn
                    .prepare_cached("DELETE FROM ttrans WHERE ttid = ?")
                    .and_then(|mut stmt| stmt.execute([tid_sql]))
                    .ctx(CONTEXT)?;
                self.conn
                    .prepare_cached("INSERT INTO ttrans VALUES (?, NULL, ?, ?, ?, ?, ?, ?)")
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            partition,
                            meta.packed,
                            oids,
                            meta.user,
                            meta.description,
                            meta.extension,
                            tid_sql
                        ])
                    })
                    .ctx(CONTEXT)?;
            } else {
                let ttid = sql("ttid", meta.ttid.0)?;
                self.conn
                    .prepare_cached("INSERT OR REPLACE INTO trans VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            partition,
                            tid_sql,
                            meta.packed,
                            oids,
                            meta.user,
                            meta.description,
                            meta.extension,
                            ttid
                        ])
                    })
                    .ctx(CONTEXT)?;
            }
        }
        Ok(())
    }

    fn lock_transaction(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        let ttid = sql("ttid", ttid.0)?;
        let tid = sql("tid", tid.0)?;
        self.begin()?;
        self.conn
            .prepare_cached("UPDATE ttrans SET tid = ? WHERE ttid = ?")
            .and_then(|mut stmt| stmt.execute([tid, ttid]))
            .ctx("locking a transaction")?;
        Ok(())
    }

    fn unlock_transaction(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        const CONTEXT: &str = "unlocking a transaction";
        let ttid = sql("ttid", ttid.0)?;
        let tid = sql("tid", tid.0)?;
        let ids = self.tobj_data_ids(Some(ttid))?;
        self.begin()?;
        for statement in [
            "INSERT OR REPLACE INTO obj
             SELECT partition, oid, ?1, data_id, value_tid FROM tobj WHERE tid = ?2",
            "DELETE FROM tobj WHERE tid = ?2",
            "INSERT OR REPLACE INTO trans
             SELECT partition, ?1, packed, oids, user, description, ext, ttid
             FROM ttrans WHERE ttid = ?2",
            "DELETE FROM ttrans WHERE ttid = ?2",
            // The pack order carried by the transaction takes its final id.
            "UPDATE OR REPLACE pack SET tid = ?1 WHERE tid = ?2",
        ] {
            self.conn
                .prepare_cached(statement)
                .and_then(|mut stmt| stmt.execute([tid, ttid]))
                .ctx(CONTEXT)?;
        }
        self.release_data(&ids, false)
    }

    fn abort_transaction(&mut self, ttid: Tid) -> Result<()> {
        const CONTEXT: &str = "aborting a transaction";
        let ttid = sql("ttid", ttid.0)?;
        let ids = self.tobj_data_ids(Some(ttid))?;
        self.begin()?;
        for statement in [
            "DELETE FROM pack WHERE tid = ?1 AND EXISTS (SELECT 1 FROM ttrans WHERE ttid = ?1)",
            "DELETE FROM tobj WHERE tid = ?1",
            "DELETE FROM ttrans WHERE ttid = ?1",
        ] {
            self.conn
                .prepare_cached(statement)
                .and_then(|mut stmt| stmt.execute([ttid]))
                .ctx(CONTEXT)?;
        }
        self.release_data(&ids, true)
    }

    fn drop_unfinished_data(&mut self) -> Result<()> {
        const CONTEXT: &str = "dropping unfinished transactions";
        let mut ids = self.tobj_data_ids(None)?;
        ids.extend(self.held.keys().copied());
        ids.sort_unstable();
        ids.dedup();
        self.held.clear();
        self.begin()?;
        self.conn
            .execute_batch(
                "DELETE FROM pack WHERE tid IN (SELECT ttid FROM ttrans);
                 DELETE FROM tobj; DELETE FROM ttrans;",
            )
            .ctx(CONTEXT)?;
        self.prune_data(&ids)?;
        self.commit()
    }

    fn truncate(&mut self) -> Result<Option<Tid>> {
        const CONTEXT: &str = "truncating";
        let Some(truncate_tid) = self.truncate_tid()? else {
            return Ok(None);
        };
        let tid = sql("truncate tid", truncate_tid.0)?;
        self.begin()?;
        for partition in 0..self.num_partitions {
            let ids: Vec<i64> = {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT DISTINCT data_id FROM obj
                         WHERE partition = ? AND tid > ? AND data_id IS NOT NULL",
                    )
                    .ctx(CONTEXT)?;
                let rows = stmt
                    .query_map(params![partition, tid], |row| row.get(0))
                    .ctx(CONTEXT)?;
                rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
            };
            for statement in [
                "DELETE FROM obj WHERE partition = ? AND tid > ?",
                "DELETE FROM trans WHERE partition = ? AND tid > ?",
            ] {
                self.conn
                    .prepare_cached(statement)
                    .and_then(|mut stmt| stmt.execute(params![partition, tid]))
                    .ctx(CONTEXT)?;
            }
            let ids = ids
                .into_iter()
                .map(|id| unsigned("data id", id))
                .collect::<Result<Vec<_>>>()?;
            self.prune_data(&ids)?;
        }
        self.conn
            .prepare_cached("DELETE FROM pack WHERE tid > ?")
            .and_then(|mut stmt| stmt.execute([tid]))
            .ctx(CONTEXT)?;
        if let Some(own) = self.own_nid {
            self.conn
                .prepare_cached("UPDATE pt SET tid = ?1 WHERE nid = ?2 AND tid > ?1")
                .and_then(|mut stmt| stmt.execute(params![tid, own.0]))
                .ctx(CONTEXT)?;
        }
        self.set_truncate_tid(None)?;
        self.commit()?;
        Ok(Some(truncate_tid))
    }

    fn delete_transaction(&mut self, tid: Tid) -> Result<()> {
        let partition = self.partition_of(tid.0, "deleting a transaction")?;
        let tid = sql("tid", tid.0)?;
        self.begin()?;
        self.conn
            .prepare_cached("DELETE FROM trans WHERE partition = ? AND tid = ?")
            .and_then(|mut stmt| stmt.execute(params![partition, tid]))
            .ctx("deleting a transaction")?;
        Ok(())
    }

    fn delete_object(&mut self, oid: Oid, serial: Tid) -> Result<()> {
        const CONTEXT: &str = "deleting an object record";
        let partition = self.partition_of(oid.0, CONTEXT)?;
        let oid = sql("oid", oid.0)?;
        let serial = sql("serial", serial.0)?;
        let data_id: Option<Option<i64>> = self
            .conn
            .prepare_cached("SELECT data_id FROM obj WHERE partition = ? AND oid = ? AND tid = ?")
            .and_then(|mut stmt| {
                stmt.query_row(params![partition, oid, serial], |row| row.get(0))
                    .optional()
            })
            .ctx(CONTEXT)?;
        self.begin()?;
        self.conn
            .prepare_cached("DELETE FROM obj WHERE partition = ? AND oid = ? AND tid = ?")
            .and_then(|mut stmt| stmt.execute(params![partition, oid, serial]))
            .ctx(CONTEXT)?;
        if let Some(Some(id)) = data_id {
            self.prune_data(&[unsigned("data id", id)?])?;
        }
        Ok(())
    }

    fn store_pack_order(&mut self, order: &PackOrder) -> Result<()> {
        const CONTEXT: &str = "storing a pack order";
        let id = sql("pack id", order.id.0)?;
        let pack_tid = sql("pack tid", order.pack_tid.0)?;
        let oids = order.oids.as_deref().map(encode_oids);
        self.begin()?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO pack VALUES (?, ?, ?, ?, ?)")
            .and_then(|mut stmt| {
                stmt.execute(params![id, order.approved, order.partial, oids, pack_tid])
            })
            .ctx(CONTEXT)?;
        Ok(())
    }

    fn sign_pack_orders(&mut self, approved: &[Tid], rejected: &[Tid]) -> Result<Vec<Tid>> {
        const CONTEXT: &str = "signing pack orders";
        let mut changed = Vec::new();
        self.begin()?;
        for (ids, value) in [(approved, true), (rejected, false)] {
            for id in ids {
                let count = self
                    .conn
                    .prepare_cached("UPDATE pack SET approved = ? WHERE tid = ?")
                    .and_then(|mut stmt| stmt.execute(params![value, sql_bound(id.0)]))
                    .ctx(CONTEXT)?;
                if count > 0 {
                    changed.push(*id);
                }
            }
        }
        Ok(changed)
    }

    fn pack_orders(&mut self, min_id: Tid) -> Result<Vec<PackOrder>> {
        const CONTEXT: &str = "reading pack orders";
        type RawOrder = (i64, Option<bool>, bool, Option<Vec<u8>>, i64);
        let rows: Vec<RawOrder> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT tid, approved, partial, oids, pack_tid FROM pack
                     WHERE tid >= ? AND tid NOT IN (SELECT ttid FROM ttrans) ORDER BY tid",
                )
                .ctx(CONTEXT)?;
            let rows = stmt
                .query_map([sql_bound(min_id.0)], |row| {
                    let oids = match row.get_ref(3)? {
                        ValueRef::Null => None,
                        _ => Some(bytes(row, 3)?),
                    };
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, oids, row.get(4)?))
                })
                .ctx(CONTEXT)?;
            rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?
        };
        let np = u64::from(self.num_partitions);
        let mut orders = Vec::new();
        for (id, approved, partial, oids, pack_tid) in rows {
            let id = unsigned("pack id", id)?;
            if np == 0 || !self.readable.contains(&((id % np) as Partition)) {
                continue;
            }
            orders.push(PackOrder {
                id: Tid(id),
                approved,
                partial,
                oids: oids.map(|blob| decode_oids(&blob, id)).transpose()?,
                pack_tid: tid_from("pack tid", pack_tid)?,
            });
        }
        Ok(orders)
    }

    fn set_partition_packed(&mut self, partition: Partition, pack_id: Tid) -> Result<()> {
        let Some(own) = self.own_nid else {
            return Ok(());
        };
        let pack_id = sql("pack id", pack_id.0)?;
        self.begin()?;
        self.conn
            .prepare_cached("UPDATE pt SET pack = ? WHERE partition = ? AND nid = ?")
            .and_then(|mut stmt| stmt.execute(params![pack_id, partition, own.0]))
            .ctx("recording a completed pack")?;
        Ok(())
    }

    fn pack(
        &mut self,
        partition: Partition,
        order: &PackOrder,
        min_oid: Oid,
        limit: u64,
    ) -> Result<Option<Oid>> {
        const CONTEXT: &str = "packing";
        let pack_tid = sql_bound(order.pack_tid.0);
        let limit = limit.max(1);
        let np = u64::from(self.num_partitions);
        if np == 0 {
            return Err(RequestError::NoPartitionTable { context: CONTEXT }.into());
        }
        // (oid, number of records at or before pack_tid, newest of them)
        let mut candidates: Vec<(i64, i64, i64)> = Vec::new();
        let next = match &order.oids {
            Some(oids) => {
                let mut listed: Vec<Oid> = oids
                    .iter()
                    .copied()
                    .filter(|oid| oid.0 % np == u64::from(partition) && *oid >= min_oid)
                    .collect();
                listed.sort_unstable();
                listed.dedup();
                let next = listed.get(sql_count(limit) as usize).copied();
                for oid in listed.into_iter().take(sql_count(limit) as usize) {
                    let Ok(oid) = i64::try_from(oid.0) else {
                        continue; // Above what SQLite stores: no record.
                    };
                    let (count, max): (i64, Option<i64>) = self
                        .conn
                        .prepare_cached(
                            "SELECT COUNT(*), MAX(tid) FROM obj
                             WHERE partition = ? AND oid = ? AND tid <= ?",
                        )
                        .and_then(|mut stmt| {
                            stmt.query_row(params![partition, oid, pack_tid], |row| {
                                Ok((row.get(0)?, row.get(1)?))
                            })
                        })
                        .ctx(CONTEXT)?;
                    if let Some(max) = max {
                        candidates.push((oid, count, max));
                    }
                }
                next
            }
            None => {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT oid, COUNT(*), MAX(tid) FROM obj
                         WHERE partition = ?1 AND oid >= ?2 AND tid <= ?3
                         GROUP BY oid ORDER BY oid LIMIT ?4",
                    )
                    .ctx(CONTEXT)?;
                let rows = stmt
                    .query_map(
                        params![partition, sql_bound(min_oid.0), pack_tid, sql_count(limit)],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )
                    .ctx(CONTEXT)?;
                candidates = rows.collect::<rusqlite::Result<_>>().ctx(CONTEXT)?;
                match candidates.last() {
                    Some((oid, _, _)) if candidates.len() as u64 >= limit => {
                        unsigned("oid", *oid)?.checked_add(1).map(Oid)
                    }
                    _ => None,
                }
            }
        };
        let mut freed = Vec::new();
        for (oid, count, max) in candidates {
            let data_id: Option<Option<i64>> = self
                .conn
                .prepare_cached(
                    "SELECT data_id FROM obj WHERE partition = ? AND oid = ? AND tid = ?",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![partition, oid, max], |row| row.get(0))
                        .optional()
                })
                .ctx(CONTEXT)?;
            // A deletion goes with everything before it; otherwise the
            // revision current at pack_tid stays.
            let upto = match data_id {
                Some(None) => max,
                _ if count > 1 => max - 1,
                _ => continue,
            };
            {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT DISTINCT data_id FROM obj
                         WHERE partition = ? AND oid = ? AND tid <= ? AND data_id IS NOT NULL",
                    )
                    .ctx(CONTEXT)?;
                let rows = stmt
                    .query_map(params![partition, oid, upto], |row| row.get::<_, i64>(0))
                    .ctx(CONTEXT)?;
                for id in rows {
                    freed.push(unsigned("data id", id.ctx(CONTEXT)?)?);
                }
            }
            self.begin()?;
            self.conn
                .prepare_cached("DELETE FROM obj WHERE partition = ? AND oid = ? AND tid <= ?")
                .and_then(|mut stmt| stmt.execute(params![partition, oid, upto]))
                .ctx(CONTEXT)?;
        }
        freed.sort_unstable();
        freed.dedup();
        self.prune_data(&freed)?;
        Ok(next)
    }
}
