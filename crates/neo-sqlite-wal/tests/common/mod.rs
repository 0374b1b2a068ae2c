//! What the tests of the VFS share: a database set up as the storage's,
//! rows whose values say which they are, and a plain look at the file.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// A connection through the VFS, set up as the storage's: WAL, a sync at
/// every commit.
pub fn batched(path: &Path) -> Connection {
    let vfs = neo_sqlite_wal::register().unwrap();
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k INTEGER, v BLOB); CREATE INDEX IF NOT EXISTS t_k ON t(k);")
        .unwrap();
    conn
}

pub fn value(id: i64, size: usize) -> Vec<u8> {
    (0..size).map(|i| (id as usize * 31 + i) as u8).collect()
}

/// Inserts rows `ids` (with scattered index keys, so that each commit
/// dirties many pages) in one transaction.
pub fn commit(conn: &Connection, ids: std::ops::Range<i64>, size: usize) {
    let tx = conn.unchecked_transaction().unwrap();
    for id in ids {
        tx.execute(
            "INSERT INTO t VALUES (?, ?, ?)",
            rusqlite::params![id, (id * 7919) % 1000, value(id, size)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// A plain SQLite connection to the file, checked sound, and its number
/// of rows.
pub fn open_plain(path: &Path) -> (Connection, i64) {
    let conn = Connection::open(path).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
        .unwrap();
    (conn, rows)
}

/// Every row `0..count` has its value, as a plain SQLite connection reads
/// the file, and the file is sound.
pub fn check_plain(path: &Path, count: i64, size: usize) {
    let (conn, rows) = open_plain(path);
    assert_eq!(rows, count);
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    let mut rows = stmt.query([]).unwrap();
    while let Some(row) = rows.next().unwrap() {
        let id: i64 = row.get(0).unwrap();
        let v: Vec<u8> = row.get(1).unwrap();
        assert_eq!(v, value(id, size), "row {id}");
    }
}
