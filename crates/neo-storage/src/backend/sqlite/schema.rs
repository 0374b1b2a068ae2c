//! The tables of §12.3: creating them, checking the version of an existing
//! database, dropping them.

use super::codec::{self, Context};
use super::SqliteBackend;
use crate::backend::{FatalError, SCHEMA_VERSION};

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

impl SqliteBackend {
    /// The schema version of an existing database: `None` when it has no
    /// table yet, 0 for tables without a version (older than versioned
    /// schemas).
    pub(super) fn schema_version(&self) -> Result<Option<u32>, FatalError> {
        if self.has_table("config")? {
            let version = self
                .query_row(
                    "reading the schema version",
                    "SELECT value FROM config WHERE name = 'version'",
                    [],
                    |row| codec::text(row, 0, "config value"),
                )?
                .flatten();
            return match version {
                None => Ok(Some(0)),
                Some(version) => version.trim().parse().map(Some).map_err(|_| {
                    FatalError::Corrupted(format!("invalid schema version {version:?}"))
                }),
            };
        }
        for table in TABLES {
            if self.has_table(table)? {
                return Ok(Some(0));
            }
        }
        Ok(None)
    }

    fn has_table(&self, table: &str) -> Result<bool, FatalError> {
        self.conn
            .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")
            .and_then(|mut stmt| stmt.exists([table]))
            .ctx("listing tables")
    }

    /// Creates what is missing, and records the version in a new
    /// database; committed.
    pub(super) fn create_tables(&mut self) -> Result<(), FatalError> {
        let new = !self.has_table("config")?;
        self.begin()?;
        self.conn
            .execute_batch(SCHEMA)
            .ctx("creating tables and indexes")?;
        if new {
            self.execute(
                "recording the schema version",
                "INSERT INTO config VALUES ('version', ?)",
                [SCHEMA_VERSION.to_string()],
            )?;
        }
        self.commit_now()
    }

    /// Drops every table; committed.
    pub(super) fn drop_tables(&mut self) -> Result<(), FatalError> {
        self.begin()?;
        for table in TABLES {
            self.conn
                .execute_batch(&format!("DROP TABLE IF EXISTS {table}"))
                .ctx("dropping tables")?;
        }
        self.commit_now()
    }
}
