//! The embedded default engine: NEO/py's SQLite schema, version 4
//! (architecture.md §12.3), so that a database can move between NEO/py and
//! this implementation in place.
//!
//! `schema.rs` creates, checks and drops the tables, `codec.rs` converts
//! between SQLite values and NEO's, `queries.rs` is the
//! [`Backend`](super::Backend) implementation (the statements of pack
//! are in `pack.rs`, those of replication, replica checks and dropped
//! partitions in `replication.rs`); `backend/lock.rs` keeps other
//! processes away from the file.
//!
//! Every statement is a literal prepared once and then found in the
//! statement cache (except the partition list of `AskTIDs`, which is not on
//! a hot path).

mod codec;
mod pack;
mod queries;
mod replication;
mod schema;

use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, Params, Row};

use super::lock::FileLock;
use super::{FatalError, OpenError, OpenOptions};
use codec::Context;

/// [`Backend`](super::Backend) on one SQLite file.
#[derive(Debug)]
pub struct SqliteBackend {
    // Declared first so that the database is closed before the lock is
    // released.
    conn: Connection,
    _lock: FileLock,
    path: PathBuf,
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
        let failed = |source| OpenError::Failed {
            database: database.clone(),
            source,
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
        // The frames of a commit go to the WAL in one write (our VFS,
        // which relies on the sync at every commit that `configure` sets).
        let vfs = neo_sqlite_wal::register().map_err(|reason| OpenError::Failed {
            database: database.clone(),
            source: FatalError::Engine {
                engine: "SQLite",
                context: "registering its WAL writer",
                source: reason.into(),
            },
        })?;
        let conn = Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), vfs)
            .ctx("opening the database")
            .map_err(failed)?;
        configure(&conn, options.wal, &database).map_err(failed)?;
        let mut backend = SqliteBackend {
            conn,
            _lock: lock,
            path,
        };
        if options.reset {
            backend.drop_tables().map_err(failed)?;
        }
        if let Some(found) = backend.schema_version().map_err(failed)? {
            super::check_version(&database, found)?;
        }
        backend.create_tables().map_err(failed)?;
        Ok(backend)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the write transaction if none is open (like Python's sqlite3
    /// module, which NEO/py relies on: writes accumulate until `commit`).
    fn begin(&self) -> Result<(), FatalError> {
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

    /// Commits the write transaction, if one is open.
    fn commit_now(&self) -> Result<(), FatalError> {
        if !self.conn.is_autocommit() {
            self.conn
                .prepare_cached("COMMIT")
                .and_then(|mut stmt| stmt.execute([]))
                .ctx("committing")?;
        }
        Ok(())
    }

    /// Runs a write statement inside the write transaction; returns the
    /// number of rows changed.
    fn execute(
        &self,
        context: &'static str,
        sql: &str,
        params: impl Params,
    ) -> Result<usize, FatalError> {
        self.begin()?;
        self.conn
            .prepare_cached(sql)
            .and_then(|mut stmt| stmt.execute(params))
            .ctx(context)
    }

    /// The first row of a query, decoded by `decode`.
    fn query_row<T>(
        &self,
        context: &'static str,
        sql: &str,
        params: impl Params,
        decode: impl FnOnce(&Row<'_>) -> Result<T, FatalError>,
    ) -> Result<Option<T>, FatalError> {
        let mut stmt = self.conn.prepare_cached(sql).ctx(context)?;
        let mut rows = stmt.query(params).ctx(context)?;
        match rows.next().ctx(context)? {
            Some(row) => decode(row).map(Some),
            None => Ok(None),
        }
    }

    /// Every row of a query, decoded by `decode`.
    fn query_rows<T>(
        &self,
        context: &'static str,
        sql: &str,
        params: impl Params,
        mut decode: impl FnMut(&Row<'_>) -> Result<T, FatalError>,
    ) -> Result<Vec<T>, FatalError> {
        let mut stmt = self.conn.prepare_cached(sql).ctx(context)?;
        let mut rows = stmt.query(params).ctx(context)?;
        let mut decoded = Vec::new();
        while let Some(row) = rows.next().ctx(context)? {
            decoded.push(decode(row)?);
        }
        Ok(decoded)
    }
}

/// Connection settings every database gets.
fn configure(conn: &Connection, wal: bool, database: &str) -> Result<(), FatalError> {
    // Room for every statement of the engine (about 70): none is ever
    // prepared again.
    conn.set_prepared_statement_cache_capacity(128);
    // Without it SQLite plans a cached statement again whenever a bound
    // value crosses 0/1 (`partition = ?` does on almost every load): that
    // re-planning was 40% of the storage's CPU per load. Our queries have
    // one good plan whatever the values.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .ctx("fixing query plans")?;
    // Statements that move many rows (the unlock's INSERT ... SELECT) keep
    // a statement journal: in memory, not in a temporary file written page
    // by page (half of an unlock's CPU in perf).
    conn.pragma_update(None, "temp_store", "MEMORY")
        .ctx("keeping temporary data in memory")?;
    let journal_mode = if wal { "wal" } else { "delete" };
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", journal_mode, |row| row.get(0))
        .ctx("setting the journal mode")?;
    if !mode.eq_ignore_ascii_case(journal_mode) {
        tracing::warn!(database, wanted = journal_mode, got = %mode,
            "SQLite refused the journal mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .ctx("setting synchronous = FULL")
}
