//! The VFS against SQLite itself: what goes through it is what SQLite
//! wrote, whoever reads it, whenever the process dies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{batched, check_plain, commit, open_plain, value};
use rusqlite::{Connection, OpenFlags};

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
/// killed.
#[test]
#[ignore = "run by kill_9_loses_no_acknowledged_commit, in a child process"]
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
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NEO_SQLITE_WAL_CHILD", &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Killed while it commits: some time after its first commit
        // returned (a fixed delay from its start could come before that on
        // a loaded machine).
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acknowledged = None;
        for line in lines.by_ref() {
            if let Ok(end) = line.unwrap().trim().parse::<i64>() {
                acknowledged = Some(end);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let acknowledged = lines
            .map_while(Result::ok)
            .filter_map(|line| line.trim().parse::<i64>().ok())
            .chain(acknowledged)
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
