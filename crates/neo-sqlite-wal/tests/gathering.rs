//! That the frames of commits are gathered, counted by the VFS: alone in
//! its process, so that no other test's writes are counted with its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{batched, check_plain, commit};

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
    // SQLite asks two writes per frame, and a commit has several frames.
    assert!(asked >= 100, "{asked} writes asked");
    assert!(made * 4 < asked, "{made} writes made for {asked} asked");
    drop(conn);
    check_plain(&path, 500, 1000);
}
