//! The MySQL engine on a MariaDB server: the storage rules' suite
//! (`database/`) run on it, and what only MySQL has: NEO/py's schema with
//! `bigdata` and `todel`, the lock, the rule for a server that goes away.
//!
//! The server is the one whose Unix socket `NEO_MYSQL_SOCKET` names (`.ci/run`
//! starts one with `scripts/mariadb`); every test makes a database of its
//! own there. Without the variable these tests fail, saying so: they
//! never pass without having run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod database;

use std::sync::atomic::{AtomicUsize, Ordering};

use mysql::prelude::Queryable;
use neo_proto::{Oid, Tid};
use neo_storage::backend::{
    self, Adapter, Error, FatalError, MysqlBackend, OpenError, OpenOptions, SCHEMA_VERSION,
};
use neo_storage::db::Database;

use database::{checksum, commit, new_database, Engine, ObjectDump};

/// The test server's socket.
fn socket() -> String {
    std::env::var("NEO_MYSQL_SOCKET").unwrap_or_else(|_| {
        panic!(
            "these tests need a MariaDB or MySQL server: set NEO_MYSQL_SOCKET to its Unix \
             socket (scripts/mariadb start DIR starts one and prints it)"
        )
    })
}

/// A connection to the test server as root, on `database` if given.
fn admin(database: Option<&str>) -> mysql::Conn {
    let opts = mysql::OptsBuilder::new()
        .user(Some("root"))
        .socket(Some(socket()))
        .db_name(database);
    mysql::Conn::new(opts).unwrap()
}

/// A database of its own on the test server, dropped at the end.
struct MySql {
    name: String,
}

impl MySql {
    /// NEO/py's database string for it.
    fn database(&self) -> String {
        format!("root@{}{}", self.name, socket())
    }

    fn backend(&self, options: &OpenOptions) -> Result<MysqlBackend, OpenError> {
        MysqlBackend::open(&self.database(), options)
    }

    fn conn(&self) -> mysql::Conn {
        admin(Some(&self.name))
    }

    fn query<T: mysql::prelude::FromRow>(&self, sql: &str) -> Vec<T> {
        self.conn().query(sql).unwrap()
    }
}

impl Drop for MySql {
    fn drop(&mut self) {
        let _ = admin(None).query_drop(format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

impl Engine for MySql {
    fn create() -> MySql {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "neo_t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin(None)
            .query_drop(format!("CREATE DATABASE {name}"))
            .unwrap();
        MySql { name }
    }

    fn open(&self) -> Database {
        Database::new(Box::new(self.backend(&OpenOptions::default()).unwrap())).unwrap()
    }

    fn count(&self, table: &str) -> u64 {
        self.query::<u64>(&format!("SELECT COUNT(*) FROM {table}"))[0]
    }

    fn objects(&self) -> Vec<ObjectDump> {
        self.query::<(u64, u64, Option<u64>, Option<u64>)>(
            "SELECT obj.oid, obj.tid, obj.value_tid, data.id FROM obj
             LEFT JOIN data ON data.id = obj.data_id ORDER BY obj.oid, obj.tid",
        )
        .into_iter()
        .map(|(oid, serial, data_serial, data_id)| ObjectDump {
            oid: Oid(oid),
            serial: Tid(serial),
            data_serial: data_serial.map(Tid),
            data_id,
        })
        .collect()
    }
}

database::suite!(MySql);

fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n)
}

/// Table definitions as NEO/py's MySQL backend makes them (§12.4): the
/// columns and keys another implementation reads.
#[test]
fn new_database_has_neopy_schema() {
    let engine = MySql::create();
    drop(engine.open());
    let version: Vec<Vec<u8>> = engine.query("SELECT value FROM config WHERE name = 'version'");
    assert_eq!(version, [SCHEMA_VERSION.to_string().into_bytes()]);
    let columns: Vec<(String, String, String)> = engine.query(
        "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION",
    );
    let column = |table: &str, name: &str| {
        columns
            .iter()
            .find(|(t, c, _)| t == table && c == name)
            .map(|(_, _, kind)| kind.as_str())
    };
    for (table, name, kind) in [
        ("config", "value", "varbinary(255)"),
        ("pt", "partition", "smallint(5) unsigned"),
        ("pt", "tid", "bigint(20)"),
        ("pt", "pack", "bigint(20) unsigned"),
        ("trans", "oids", "mediumblob"),
        ("obj", "value_tid", "bigint(20) unsigned"),
        ("data", "hash", "binary(20)"),
        ("data", "compression", "tinyint(3) unsigned"),
        ("data", "value", "mediumblob"),
        ("bigdata", "id", "int(10) unsigned"),
        ("bigdata", "value", "mediumblob"),
        ("ttrans", "tid", "bigint(20) unsigned"),
        ("todel", "data_id", "bigint(20) unsigned"),
    ] {
        assert_eq!(column(table, name), Some(kind), "{table}.{name}");
    }
    let keys: Vec<(String, String, String)> = engine.query(
        "SELECT TABLE_NAME, INDEX_NAME, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX)
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE()
         GROUP BY TABLE_NAME, INDEX_NAME ORDER BY TABLE_NAME, INDEX_NAME",
    );
    let key = |table: &str, name: &str, columns: &str| {
        (table.to_owned(), name.to_owned(), columns.to_owned())
    };
    for expected in [
        key("obj", "PRIMARY", "partition,oid,tid"),
        key("obj", "tid", "partition,tid,oid"),
        key("obj", "data_id", "data_id"),
        key("tobj", "PRIMARY", "tid,oid"),
        key("ttrans", "PRIMARY", "ttid"),
        key("trans", "PRIMARY", "partition,tid"),
    ] {
        assert!(keys.contains(&expected), "{expected:?} not in {keys:?}");
    }
    let engines: Vec<String> = engine.query(
        "SELECT DISTINCT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
    );
    assert_eq!(engines, ["InnoDB"]);
}

/// `pt` rows as NEO/py writes them (§12.3), the same as in SQLite.
#[test]
fn pt_rows_are_encoded_as_neopy_does() {
    let (engine, db) = database::partitions::changed_table::<MySql>();
    drop(db);
    let raw: Vec<(i64, i64, i64, Option<i64>)> =
        engine.query("SELECT `partition`, nid, tid, pack FROM pt ORDER BY `partition`, nid");
    assert_eq!(raw, database::partitions::changed_table_rows());
}

/// Values of 16 MiB and more are split in 8 MiB rows of `bigdata`; the
/// `data` row holds where they are, and its compression has bit 0x80.
/// They read back whole, their history gives their real size, and pruning
/// deletes their chunks.
#[test]
fn big_values_go_through_bigdata() {
    let (engine, mut db) = new_database::<MySql>(&[]);
    let big: Vec<u8> = (0..(16u32 << 20) + 5).map(|i| (i % 251) as u8).collect();
    let oid = Oid(1);
    commit(
        &mut db,
        tid(1),
        tid(1),
        &[(Oid(2), Some(&big[..100]), None)],
    );
    commit(&mut db, tid(3), tid(3), &[(oid, Some(&big), None)]);
    let rows: Vec<(u64, u8, Vec<u8>)> =
        engine.query("SELECT id, compression, value FROM data WHERE LENGTH(value) = 8");
    assert_eq!(rows.len(), 1);
    let (data_id, compression, header) = &rows[0];
    assert_eq!(
        *compression, 0x80,
        "flag 0x80 over the client's compression"
    );
    let first = u32::from_be_bytes(header[..4].try_into().unwrap());
    let length = u32::from_be_bytes(header[4..].try_into().unwrap());
    assert_eq!(length as usize, big.len());
    let chunks: Vec<(u32, u64)> = engine.query("SELECT id, LENGTH(value) FROM bigdata ORDER BY id");
    assert_eq!(
        chunks,
        [(first, 8 << 20), (first + 1, 8 << 20), (first + 2, 5)]
    );
    let (compression, sum, value) = db.load_data(*data_id).unwrap().unwrap();
    assert_eq!((compression, sum), (0, checksum(&big)));
    assert!(value == big, "the value reads back whole");
    let record = database::found(db.get_object(oid, None, None).unwrap());
    assert!(record.data == big);
    assert_eq!(record.compression, Some(0));
    assert_eq!(record.checksum, checksum(&big));
    assert_eq!(
        db.object_history(oid, 0, 10).unwrap()[0].size,
        big.len() as u64
    );
    let record = database::found(db.get_object(Oid(2), None, None).unwrap());
    assert_eq!(record.data, &big[..100]);
    // Pruning the data deletes its chunks.
    db.set_truncate_tid(Some(tid(2))).unwrap();
    assert_eq!(db.truncate().unwrap(), Some(tid(2)));
    assert!(db.load_data(*data_id).unwrap().is_none());
    assert_eq!(engine.count("bigdata"), 0, "chunks of pruned data");
    assert_eq!(engine.count("data"), 1);
}

/// NEO/py queues data to delete in `todel` (its background work runs on a
/// second connection); opening the database deletes what nothing
/// references any more and empties the queue.
#[test]
fn deletions_queued_by_neopy_are_purged_at_open() {
    let (engine, mut db) = new_database::<MySql>(&[]);
    commit(&mut db, tid(1), tid(1), &[(Oid(1), Some(b"kept"), None)]);
    drop(db);
    let conn = &mut engine.conn();
    conn.query_drop(format!(
        "INSERT INTO data VALUES (7, UNHEX('{}'), 0, 'orphan')",
        hex(&checksum(b"orphan").0)
    ))
    .unwrap();
    conn.query_drop("INSERT INTO todel SELECT id FROM data")
        .unwrap();
    assert_eq!(engine.count("todel"), 2);
    drop(engine.open());
    assert_eq!(engine.count("todel"), 0);
    let ids: Vec<u64> = engine.query("SELECT id FROM data");
    assert_eq!(ids.len(), 1, "only the referenced data is left: {ids:?}");
    assert_ne!(ids[0], 7);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_second_node_on_the_same_database_is_locked() {
    let (engine, db) = new_database::<MySql>(&[]);
    let error = engine.backend(&OpenOptions::default()).unwrap_err();
    assert!(matches!(error, OpenError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("database is locked"), "{error}");
    // NEO/py's lock name: its nodes and ours keep each other away.
    let free: Vec<Option<i64>> = engine.query(&format!(
        "SELECT IS_FREE_LOCK('{}.neostorage')",
        engine.name
    ));
    assert_eq!(free, [Some(0)]);
    drop(db);
    drop(engine.open());
}

#[test]
fn newer_and_older_schemas_and_dedup_are_refused() {
    let engine = MySql::create();
    drop(engine.open());
    let set_version = |version: &str| {
        engine
            .conn()
            .query_drop(format!(
                "UPDATE config SET value = '{version}' WHERE name = 'version'"
            ))
            .unwrap();
    };
    set_version("5");
    let error = engine.backend(&OpenOptions::default()).unwrap_err();
    assert!(
        matches!(error, OpenError::NewerSchema { found: 5, .. }),
        "{error}"
    );
    set_version("3");
    let error = engine.backend(&OpenOptions::default()).unwrap_err();
    assert!(
        matches!(error, OpenError::OlderSchema { found: 3, .. }),
        "{error}"
    );
    set_version("4");
    engine
        .conn()
        .query_drop("ALTER TABLE data ADD UNIQUE hash (hash, compression)")
        .unwrap();
    let error = engine.backend(&OpenOptions::default()).unwrap_err();
    assert!(error.to_string().contains("--dedup"), "{error}");
    // Reset starts over with the current schema.
    let reset = OpenOptions {
        reset: true,
        ..OpenOptions::default()
    };
    drop(engine.backend(&reset).unwrap());
    drop(engine.open());
}

/// As NEO/py's: the host, then the device of the server's data directory.
#[test]
fn the_topology_path_is_the_host_then_the_device_of_the_datadir() {
    use std::os::unix::fs::MetadataExt;
    let mysql = MySql::create();
    let mut db = Database::new(Box::new(mysql.backend(&OpenOptions::default()).unwrap())).unwrap();
    let datadir: Vec<String> = mysql.query("SELECT @@datadir");
    let device = std::fs::metadata(&datadir[0]).unwrap().dev();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        db.topology_path(),
        [hostname.trim().to_owned(), device.to_string()]
    );
}

#[test]
fn erase_drops_every_table() {
    let (engine, mut db) = new_database::<MySql>(&[]);
    db.erase().unwrap();
    drop(db);
    let tables: Vec<String> = engine
        .query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()");
    assert!(tables.is_empty(), "{tables:?}");
}

/// `-e`: InnoDB or RocksDB, by NEO/py's names; RocksDB only where the
/// server has it.
#[test]
fn engines_are_innodb_or_rocksdb_where_the_server_has_it() {
    let engine = MySql::create();
    let with = |name: &str| OpenOptions {
        engine: Some(name.to_owned()),
        ..OpenOptions::default()
    };
    let error = engine.backend(&with("innodb")).unwrap_err();
    assert_eq!(error.to_string(), "Unsupported engine: 'innodb'");
    let rocksdb: Vec<String> =
        engine.query("SELECT SUPPORT FROM information_schema.ENGINES WHERE ENGINE = 'ROCKSDB'");
    match engine.backend(&with("RocksDB")) {
        Ok(backend) => {
            assert!(matches!(
                rocksdb.first().map(String::as_str),
                Some("YES" | "DEFAULT")
            ));
            drop(backend);
            let engines: Vec<String> = engine.query(
                "SELECT DISTINCT ENGINE FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = DATABASE()",
            );
            assert_eq!(engines, ["ROCKSDB"]);
        }
        Err(error) => {
            assert!(rocksdb.is_empty(), "{rocksdb:?}: {error}");
            assert!(
                matches!(
                    error,
                    OpenError::Failed {
                        source: FatalError::EngineUnavailable { .. },
                        ..
                    }
                ),
                "{error}"
            );
            assert!(error.to_string().contains("no RocksDB engine"), "{error}");
        }
    }
    // SQLite has no engine at all.
    let error = backend::open(Adapter::Sqlite, "x.sqlite", &with("InnoDB"))
        .err()
        .expect("an engine given to SQLite");
    assert!(
        matches!(error, OpenError::UnsupportedEngine { .. }),
        "{error}"
    );
}

/// Kills the connections of the node on `engine`'s database, as a
/// restarted or failing server would.
fn kill_node_connection(engine: &MySql) {
    let mut conn = admin(None);
    let ids: Vec<u64> = conn
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
            (&engine.name,),
        )
        .unwrap();
    assert_eq!(ids.len(), 1, "the node's connection");
    conn.query_drop(format!("KILL {}", ids[0])).unwrap();
}

/// Without uncommitted changes, a lost connection is reconnected (and
/// locked again) and the statement runs again.
#[test]
fn a_lost_connection_without_pending_changes_is_reconnected() {
    let (engine, mut db) = new_database::<MySql>(&[]);
    commit(&mut db, tid(1), tid(1), &[(Oid(1), Some(b"a"), None)]);
    kill_node_connection(&engine);
    let record = database::found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!(record.data, b"a");
    // The new connection holds the lock again.
    let error = engine.backend(&OpenOptions::default()).unwrap_err();
    assert!(matches!(error, OpenError::Locked { .. }), "{error}");
    commit(&mut db, tid(2), tid(2), &[(Oid(2), Some(b"b"), None)]);
}

/// With uncommitted changes, a lost connection is a failure: the changes
/// are gone, and going on silently on a new connection would lose them.
#[test]
fn a_lost_connection_with_pending_changes_fails() {
    let (engine, mut db) = new_database::<MySql>(&[]);
    db.store_data(Oid(1), checksum(b"a"), b"a", 0, None)
        .unwrap();
    assert!(db.has_uncommitted());
    kill_node_connection(&engine);
    let error = db.commit().unwrap_err();
    assert!(
        matches!(error, Error::Fatal(FatalError::ConnectionLost { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("uncommitted"), "{error}");
    assert_eq!(engine.count("data"), 0);
}

/// `-w`: nothing listening on the socket is an error, at once with no
/// wait, after trying again for the wait otherwise.
#[test]
fn a_server_that_is_not_there_is_an_error_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("root@neo{}", dir.path().join("no.sock").display());
    let error = MysqlBackend::open(&database, &OpenOptions::default()).unwrap_err();
    assert!(
        error.to_string().contains("connecting to the server"),
        "{error}"
    );
    let patient = OpenOptions {
        wait: Some(std::time::Duration::from_secs(1)),
        ..OpenOptions::default()
    };
    let error = MysqlBackend::open(&database, &patient).unwrap_err();
    assert!(
        error.to_string().contains("connecting to the server"),
        "{error}"
    );
    let error = MysqlBackend::open("", &OpenOptions::default()).unwrap_err();
    assert!(matches!(error, OpenError::BadDatabase { .. }), "{error}");
}
