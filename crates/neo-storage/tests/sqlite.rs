//! The SQLite engine: the storage rules' suite (`database/`) run on it,
//! and what only SQLite has: NEO/py's file format, the lock on the file,
//! schema versions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod database;

use std::path::PathBuf;

use neo_proto::Tid;
use neo_storage::backend::{OpenError, OpenOptions, SqliteBackend, SCHEMA_VERSION};
use neo_storage::db::Database;

use database::{Engine, ObjectDump};

/// A database file in a directory of its own.
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn path(&self) -> PathBuf {
        self.dir.path().join("neo.sqlite")
    }

    /// Another connection to the file, to see what is stored.
    fn connection(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.path()).unwrap()
    }
}

impl Engine for Sqlite {
    fn create() -> Sqlite {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn open(&self) -> Database {
        let backend = SqliteBackend::open(self.path(), &OpenOptions::default()).unwrap();
        Database::new(Box::new(backend)).unwrap()
    }

    fn count(&self, table: &str) -> u64 {
        let count: i64 = self
            .connection()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap();
        count as u64
    }

    fn objects(&self) -> Vec<ObjectDump> {
        let conn = self.connection();
        let mut stmt = conn
            .prepare(
                "SELECT obj.oid, obj.tid, obj.value_tid, data.id FROM obj
                 LEFT JOIN data ON data.id = obj.data_id ORDER BY obj.oid, obj.tid",
            )
            .unwrap();
        let rows = stmt
            .query_map([], |row| {
                Ok(ObjectDump {
                    oid: neo_proto::Oid(row.get::<_, i64>(0)? as u64),
                    serial: Tid(row.get::<_, i64>(1)? as u64),
                    data_serial: row.get::<_, Option<i64>>(2)?.map(|tid| Tid(tid as u64)),
                    data_id: row.get::<_, Option<i64>>(3)?.map(|id| id as u64),
                })
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }
}

database::suite!(Sqlite);

#[test]
fn new_database_has_neopy_schema_version_4() {
    let engine = Sqlite::create();
    {
        let mut db = engine.open();
        db.set_backup_tid(Some(Tid(0x0123_4567_89ab_cdef))).unwrap();
        db.commit().unwrap();
    }
    let conn = engine.connection();
    let version: String = conn
        .query_row("SELECT value FROM config WHERE name = 'version'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION.to_string());
    let backup: String = conn
        .query_row(
            "SELECT value FROM config WHERE name = 'backup_tid'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(backup, "0123456789abcdef");
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') ORDER BY name")
        .unwrap();
    let names: Vec<String> = stmt
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for name in [
        "_obj_i1", "_obj_i2", "config", "data", "obj", "pack", "pt", "tobj", "trans", "ttrans",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
    // The write-ahead log is recorded in the file.
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

/// `pt` rows as NEO/py writes them (§12.3): `tid` is the progress of an
/// own OUT_OF_DATE cell, else minus the state; `pack` only for own cells.
#[test]
fn pt_rows_are_encoded_as_neopy_does() {
    let (engine, db) = database::partitions::changed_table::<Sqlite>();
    drop(db);
    let raw: Vec<(i64, i64, i64, Option<i64>)> = engine
        .connection()
        .prepare("SELECT partition, nid, tid, pack FROM pt ORDER BY partition, nid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(raw, database::partitions::changed_table_rows());
}

#[test]
fn second_open_of_the_same_file_is_locked() {
    let (engine, db) = database::new_database::<Sqlite>(&[]);
    let err = SqliteBackend::open(engine.path(), &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("database is locked"), "{err}");
    // Another path to the same file is the same lock.
    let link = engine.dir.path().join("link.sqlite");
    std::fs::hard_link(engine.path(), &link).unwrap();
    assert!(matches!(
        SqliteBackend::open(&link, &OpenOptions::default()),
        Err(OpenError::Locked { .. })
    ));
    drop(db);
    engine.open();
}

#[test]
fn newer_and_older_schemas_are_refused() {
    let engine = Sqlite::create();
    drop(engine.open());
    let set_version = |version: &str| {
        engine
            .connection()
            .execute(
                "UPDATE config SET value = ? WHERE name = 'version'",
                [version],
            )
            .unwrap();
    };
    set_version("5");
    let err = SqliteBackend::open(engine.path(), &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::NewerSchema {
                found: 5,
                supported: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("downgraded"), "{err}");
    set_version("3");
    let err = SqliteBackend::open(engine.path(), &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(err, OpenError::OlderSchema { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("migration"), "{err}");
    // Reset starts over with the current schema.
    let backend = SqliteBackend::open(
        engine.path(),
        &OpenOptions {
            reset: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    drop(backend);
    engine.open();
}

/// A node dropped from the cluster erases its database: no table is left.
#[test]
fn erase_drops_every_table() {
    let (engine, mut db) = database::new_database::<Sqlite>(&[]);
    db.erase().unwrap();
    drop(db);
    let tables: i64 = engine
        .connection()
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0);
}
