//! The VFS against SQLite itself: what goes through it is what SQLite
//! wrote, whoever reads it, whenever the process dies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// A connection through the VFS, set up as the storage's: WAL, a sync at
/// every commit.
fn batched(path: &Path) -> Connection {
    let vfs = neo_sqlite_wal::register().unwrap();
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
    conn.pragma_update(None, "journal_mode", "wal").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k INTEGER, v BLOB); CREATE INDEX IF NOT EXISTS t_k ON t(k);")
        .unwrap();
    conn
}

fn value(id: i64, size: usize) -> Vec<u8> {
    (0..size).map(|i| (id as usize * 31 + i) as u8).collect()
}

/// Inserts rows `ids` (with scattered index keys, so that each commit
/// dirties many pages) in one transaction.
fn commit(conn: &Connection, ids: std::ops::Range<i64>, size: usize) {
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
fn open_plain(path: &Path) -> (Connection, i64) {
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
fn check_plain(path: &Path, count: i64, size: usize) {
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

#[test]
fn commits_are_gathered_and_read_back_by_plain_sqlite_while_open_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let conn = batched(&path);
    let (asked_before, made_before) = neo_sqlite_wal::wal_writes();
    for n in 0..50 {
        commit(&conn, n * 10..n * 10 + 10, 1000);
        // Each commit is there for another connection at once.
        check_plain(&path, n * 10 + 10, 1000);
    }
    let (asked, made) = neo_sqlite_wal::wal_writes();
    let (asked, made) = (asked - asked_before, made - made_before);
    // Tests of this file run in parallel, so the counts are only bounds:
    // SQLite asked two writes per frame, at least one frame per commit.
    assert!(asked >= 100, "{asked} writes asked");
    assert!(made * 4 < asked, "{made} writes made for {asked} asked");
    drop(conn);
    check_plain(&path, 500, 1000);
}

#[test]
fn a_transaction_larger_than_the_cache_spills_and_reads_back_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let conn = batched(&path);
    // 100 pages of cache, 24 MiB written in one transaction: SQLite spills
    // frames to the log mid-transaction, reads some back, and the runs
    // reach their size limit again and again.
    conn.pragma_update(None, "cache_size", 100).unwrap();
    commit(&conn, 0..6000, 4000);
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM t WHERE length(v) = 4000", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(count, 6000);
    // Rewrite every row: frames of pages already in the log are written
    // again, in place.
    let tx = conn.unchecked_transaction().unwrap();
    tx.execute("UPDATE t SET v = v WHERE id % 2 = 0", [])
        .unwrap();
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    check_plain(&path, 6000, 4000);
}

#[test]
fn a_rollback_journal_goes_straight_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let vfs = neo_sqlite_wal::register().unwrap();
    let conn = Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), vfs).unwrap();
    conn.pragma_update(None, "journal_mode", "delete").unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v BLOB)")
        .unwrap();
    commit(&conn, 0..100, 500);
    drop(conn);
    check_plain(&path, 100, 500);
}

/// The child of `kill_9_loses_no_acknowledged_commit`: commits batches of
/// ten rows and prints the end of each once its commit returned, until
/// killed. Does nothing as a test of its own.
#[test]
fn child_commits_until_killed() {
    let Some(path) = std::env::var_os("NEO_SQLITE_WAL_CHILD") else {
        return;
    };
    let conn = batched(Path::new(&path));
    for n in 0.. {
        commit(&conn, n * 10..n * 10 + 10, 1500);
        println!("{}", n * 10 + 10);
    }
}

#[test]
fn kill_9_loses_no_acknowledged_commit() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_commits_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NEO_SQLITE_WAL_CHILD", &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300 + 100 * round));
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        let acknowledged = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.trim().parse::<i64>().ok())
            .max()
            .expect("the child committed nothing");
        let (conn, rows) = open_plain(&path);
        // Every acknowledged batch is there, and at most the one in
        // flight beyond it, whole.
        assert!(
            rows == acknowledged || rows == acknowledged + 10,
            "{rows} rows, {acknowledged} acknowledged"
        );
        for id in 0..rows {
            let v: Vec<u8> = conn
                .query_row("SELECT v FROM t WHERE id = ?", [id], |row| row.get(0))
                .unwrap();
            assert_eq!(v, value(id, 1500), "row {id}");
        }
    }
}
