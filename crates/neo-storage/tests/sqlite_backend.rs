//! Round trips through our own SQLite databases: commit protocol, undo,
//! truncation, partition table persistence, locking and schema versions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use neo_proto::{CellState, Checksum, NodeId, NodeType, Oid, Partition, Tid};
use neo_storage::backend::{
    DataId, Error, ObjectRecord, ObjectRow, OpenError, OpenOptions, RequestError, SqliteBackend,
    TransactionMeta, SCHEMA_VERSION,
};
use neo_storage::db::{Database, ObjectLookup};
use sha1::{Digest, Sha1};

const NP: u32 = 4;

fn own_nid() -> NodeId {
    NodeId::new(NodeType::Storage, 1).unwrap()
}

fn other_nid() -> NodeId {
    NodeId::new(NodeType::Storage, 2).unwrap()
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("neo.sqlite")
}

fn open(path: &Path) -> Database {
    Database::new(Box::new(
        SqliteBackend::open(path, &OpenOptions::default()).unwrap(),
    ))
    .unwrap()
}

/// Every cell of the partition table, by partition then nid.
fn pt_cells(backend: &Database) -> Vec<(Partition, NodeId, CellState)> {
    let Some(pt) = backend.partition_table() else {
        return Vec::new();
    };
    let mut cells: Vec<_> = (0..pt.partitions())
        .flat_map(|p| {
            pt.cells(p)
                .iter()
                .map(move |cell| (p, cell.nid, cell.state))
        })
        .collect();
    cells.sort_by_key(|&(p, nid, _)| (p, nid));
    cells
}

/// A fresh database of cluster "test": own node has every partition
/// UP_TO_DATE, except those listed as `out_of_date`.
fn new_backend(out_of_date: &[Partition]) -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = open(&db_path(&dir));
    backend.set_name("test").unwrap();
    backend.set_nid(own_nid()).unwrap();
    let cells: Vec<_> = (0..NP)
        .map(|p| {
            let state = if out_of_date.contains(&p) {
                CellState::OutOfDate
            } else {
                CellState::UpToDate
            };
            (p, own_nid(), state)
        })
        .collect();
    backend.change_partition_table(1, 0, &cells, true).unwrap();
    (dir, backend)
}

fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}

/// A TID of partition `tid % NP` built from a counter (congruence of TTID
/// and TID is kept by using the same low bits).
fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n)
}

/// One object written by a test transaction: oid, data (`None` = no
/// data), back-pointer.
type Write<'a> = (Oid, Option<&'a [u8]>, Option<Tid>);

/// Stores and commits one transaction writing `objects` (oid, data), going
/// through vote, lock and unlock as a storage node does.
fn commit(backend: &mut Database, ttid: Tid, tid: Tid, objects: &[Write<'_>]) {
    let mut rows = Vec::new();
    for &(oid, data, data_tid) in objects {
        let data_id = match data {
            Some(data) => backend
                .store_data(oid, checksum(data), data, 0, data_tid)
                .unwrap(),
            None => backend
                .store_data(oid, Checksum::ZERO, b"", 0, data_tid)
                .unwrap(),
        };
        rows.push(ObjectRow {
            oid,
            data_id,
            data_serial: data_tid,
        });
    }
    let meta = TransactionMeta {
        oids: objects.iter().map(|o| o.0).collect(),
        user: b"user".to_vec(),
        description: format!("txn {tid}").into_bytes(),
        extension: Vec::new(),
        packed: false,
        ttid,
    };
    backend
        .store_transaction(ttid, &rows, Some(&meta), true)
        .unwrap();
    backend.commit().unwrap(); // end of vote
    backend.lock_transaction(ttid, tid).unwrap();
    backend.unlock_transaction(ttid, tid).unwrap();
    backend.commit().unwrap();
}

fn found(lookup: ObjectLookup) -> ObjectRecord {
    match lookup {
        ObjectLookup::Found(record) => record,
        other => panic!("expected a record, got {other:?}"),
    }
}

fn data_count(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT COUNT(*) FROM data", [], |row| row.get(0))
        .unwrap()
}

#[test]
fn new_database_has_neopy_schema_version_4() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let mut backend = open(&path);
        backend
            .set_backup_tid(Some(Tid(0x0123_4567_89ab_cdef)))
            .unwrap();
        backend.commit().unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
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

#[test]
fn store_lock_unlock_then_load_at_and_before() {
    let (_dir, mut backend) = new_backend(&[]);
    let oid = Oid(5); // partition 1
    let (ttid1, tid1) = (tid(1), tid(5));
    // Vote: temporary rows only.
    let data_id = backend
        .store_data(oid, checksum(b"first"), b"first", 0, None)
        .unwrap();
    let meta = TransactionMeta {
        oids: vec![oid],
        user: b"alice".to_vec(),
        description: b"first".to_vec(),
        extension: b"ext".to_vec(),
        packed: false,
        ttid: ttid1,
    };
    let row = ObjectRow {
        oid,
        data_id,
        data_serial: None,
    };
    backend
        .store_transaction(ttid1, &[row], Some(&meta), true)
        .unwrap();
    backend.commit().unwrap();
    assert_eq!(
        backend.unfinished_transactions().unwrap(),
        BTreeMap::from([(ttid1, None)])
    );
    assert_eq!(
        backend.get_object(oid, None, None).unwrap(),
        ObjectLookup::OidDoesNotExist
    );
    assert_eq!(
        backend.get_transaction(ttid1, true).unwrap(),
        Some(meta.clone())
    );
    assert_eq!(backend.get_transaction(ttid1, false).unwrap(), None);
    // Lock is durable once committed (the node commits before answering).
    backend.lock_transaction(ttid1, tid1).unwrap();
    assert!(backend.has_uncommitted());
    backend.commit().unwrap();
    assert_eq!(
        backend.unfinished_transactions().unwrap(),
        BTreeMap::from([(ttid1, Some(tid1))])
    );
    // Unlock is deferred.
    backend.unlock_transaction(ttid1, tid1).unwrap();
    assert!(backend.has_uncommitted());
    backend.commit().unwrap();
    assert!(backend.unfinished_transactions().unwrap().is_empty());
    assert_eq!(backend.get_transaction(tid1, false).unwrap(), Some(meta));
    assert_eq!(backend.final_tid(ttid1).unwrap(), Some(tid1));
    assert_eq!(backend.final_tid(tid(9)).unwrap(), None);

    let (ttid2, tid2) = (tid(9), tid(13));
    commit(&mut backend, ttid2, tid2, &[(oid, Some(b"second"), None)]);

    let latest = found(backend.get_object(oid, None, None).unwrap());
    assert_eq!(
        latest,
        ObjectRecord {
            serial: tid2,
            next_serial: None,
            compression: Some(0),
            checksum: checksum(b"second"),
            data: b"second".to_vec(),
            data_serial: None,
        }
    );
    let first = found(backend.get_object(oid, Some(tid1), None).unwrap());
    assert_eq!(
        (first.serial, first.next_serial, first.data.as_slice()),
        (tid1, Some(tid2), &b"first"[..])
    );
    let before = found(backend.get_object(oid, None, Some(tid2)).unwrap());
    assert_eq!(before, first);
    let before = found(
        backend
            .get_object(oid, None, Some(Tid(tid2.0 + 1)))
            .unwrap(),
    );
    assert_eq!((before.serial, before.next_serial), (tid2, None));
    assert_eq!(
        backend.get_object(oid, None, Some(tid1)).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert_eq!(
        backend.get_object(oid, Some(tid(6)), None).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert_eq!(backend.last_object_tid(oid).unwrap(), Some(tid2));
    let history = backend.object_history(oid, 0, 10).unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| (h.serial, h.size))
            .collect::<Vec<_>>(),
        vec![(tid2, 6), (tid1, 5)]
    );
    assert_eq!(backend.object_history(oid, 1, 10).unwrap().len(), 1);
    assert_eq!(
        backend.tid_list(0, 10, &[0, 1, 2, 3]).unwrap(),
        vec![tid2, tid1]
    );
    let ids = backend.last_ids().unwrap();
    assert_eq!((ids.tid, ids.oid), (Some(tid2), Some(oid)));
    assert_eq!(backend.first_tid().unwrap(), tid1);
}

#[test]
fn deletion_and_undo_records() {
    let (dir, mut backend) = new_backend(&[]);
    let oid = Oid(2);
    commit(&mut backend, tid(1), tid(1), &[(oid, Some(b"v1"), None)]);
    commit(&mut backend, tid(2), tid(2), &[(oid, Some(b"v2"), None)]);
    // Undo of transaction 2: back-pointer to 1, sharing its data id.
    commit(
        &mut backend,
        tid(3),
        tid(3),
        &[(oid, Some(b"v1"), Some(tid(1)))],
    );
    let record = found(backend.get_object(oid, None, None).unwrap());
    assert_eq!(record.serial, tid(3));
    assert_eq!(record.data_serial, Some(tid(1)));
    assert_eq!(record.data, b"v1");
    assert_eq!(record.checksum, checksum(b"v1"));
    // Only two data rows: the undo shares the original one.
    assert_eq!(data_count(&db_path(&dir)), 2);
    // Deletion: no data.
    commit(&mut backend, tid(4), tid(4), &[(oid, None, None)]);
    let record = found(backend.get_object(oid, None, None).unwrap());
    assert_eq!(
        (record.compression, record.checksum, record.data.len()),
        (None, Checksum::ZERO, 0)
    );
    let history = backend.object_history(oid, 0, 10).unwrap();
    assert_eq!(history[0].size, 0);
    // A deleted oid is not listed; before the deletion it was.
    let (oids, _) = backend.oids_from(2, 10, Oid(0), tid(4)).unwrap();
    assert!(oids.is_empty());
    let (oids, _) = backend.oids_from(2, 10, Oid(0), tid(3)).unwrap();
    assert_eq!(oids, vec![oid]);
    // Undo pack error for a record that does not exist.
    let err = backend
        .store_data(oid, checksum(b"x"), b"x", 0, Some(tid(0)))
        .unwrap_err();
    assert!(
        matches!(err, Error::Request(RequestError::UndoPack { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("pack"), "{err}");
}

#[test]
fn abort_drops_temporary_rows_and_their_data() {
    let (dir, mut backend) = new_backend(&[]);
    commit(
        &mut backend,
        tid(1),
        tid(1),
        &[(Oid(1), Some(b"kept"), None)],
    );
    let ttid = tid(2);
    let data_id = backend
        .store_data(Oid(1), checksum(b"aborted"), b"aborted", 0, None)
        .unwrap();
    let row = ObjectRow {
        oid: Oid(1),
        data_id,
        data_serial: None,
    };
    backend
        .store_transaction(ttid, &[row], Some(&TransactionMeta::default()), true)
        .unwrap();
    backend.commit().unwrap();
    assert_eq!(data_count(&db_path(&dir)), 2);
    backend.abort_transaction(ttid).unwrap();
    backend.commit().unwrap();
    assert!(backend.unfinished_transactions().unwrap().is_empty());
    assert_eq!(data_count(&db_path(&dir)), 1);
    assert!(backend.load_data(data_id.unwrap()).unwrap().is_none());
    assert_eq!(
        found(backend.get_object(Oid(1), None, None).unwrap()).data,
        b"kept"
    );
}

#[test]
fn drop_unfinished_data_forgets_voted_and_held_data() {
    let (dir, mut backend) = new_backend(&[]);
    let voted = backend
        .store_data(Oid(1), checksum(b"voted"), b"voted", 0, None)
        .unwrap();
    backend
        .store_transaction(
            tid(1),
            &[ObjectRow {
                oid: Oid(1),
                data_id: voted,
                data_serial: None,
            }],
            None,
            true,
        )
        .unwrap();
    // Stored but never voted.
    backend
        .store_data(Oid(2), checksum(b"held"), b"held", 0, None)
        .unwrap();
    backend.commit().unwrap();
    assert_eq!(data_count(&db_path(&dir)), 2);
    backend.drop_unfinished_data().unwrap();
    assert!(backend.unfinished_transactions().unwrap().is_empty());
    assert_eq!(data_count(&db_path(&dir)), 0);
}

#[test]
fn data_ids_are_allocated_per_partition() {
    let (dir, mut backend) = new_backend(&[]);
    fn store(backend: &mut Database, oid: u64, data: &[u8]) -> DataId {
        backend
            .store_data(Oid(oid), checksum(data), data, 0, None)
            .unwrap()
            .unwrap()
    }
    assert_eq!(store(&mut backend, 4, b"a"), 0);
    assert_eq!(store(&mut backend, 1, b"b"), 1 << 48);
    assert_eq!(store(&mut backend, 8, b"c"), 1);
    assert_eq!(store(&mut backend, 7, b"d"), 3 << 48);
    assert_eq!(store(&mut backend, 5, b"e"), (1 << 48) + 1);
    // No data: no id.
    assert_eq!(
        backend
            .store_data(Oid(1), Checksum::ZERO, b"", 0, None)
            .unwrap(),
        None
    );
    // An empty value is data.
    assert!(backend
        .store_data(Oid(1), checksum(b""), b"", 0, None)
        .unwrap()
        .is_some());
    // Allocation continues after the greatest id once reopened.
    backend.commit().unwrap();
    let path = db_path(&dir);
    drop(backend);
    let mut backend = open(&path);
    assert_eq!(store(&mut backend, 9, b"f"), (1 << 48) + 3);
}

#[test]
fn truncate_deletes_everything_after_the_tid() {
    let (dir, mut backend) = new_backend(&[]);
    for n in 1..=6 {
        commit(
            &mut backend,
            tid(n),
            tid(n),
            &[(Oid(n % 3), Some(format!("data {n}").as_bytes()), None)],
        );
    }
    assert_eq!(data_count(&db_path(&dir)), 6);
    assert_eq!(backend.truncate().unwrap(), None);
    backend.set_truncate_tid(Some(tid(3))).unwrap();
    backend.commit().unwrap();
    assert_eq!(backend.truncate().unwrap(), Some(tid(3)));
    assert!(!backend.has_uncommitted());
    assert_eq!(backend.truncate_tid().unwrap(), None);
    assert_eq!(
        backend.tid_list(0, 10, &[0, 1, 2, 3]).unwrap(),
        vec![tid(3), tid(2), tid(1)]
    );
    assert_eq!(backend.last_ids().unwrap().tid, Some(tid(3)));
    assert_eq!(data_count(&db_path(&dir)), 3);
    // Oid 1 was written by 1 and 4: only 1 remains.
    let record = found(backend.get_object(Oid(1), None, None).unwrap());
    assert_eq!((record.serial, record.next_serial), (tid(1), None));
    assert_eq!(backend.get_transaction(tid(4), false).unwrap(), None);
}

#[test]
fn reopen_keeps_committed_data_and_locked_transactions() {
    let (dir, mut backend) = new_backend(&[]);
    commit(
        &mut backend,
        tid(1),
        tid(1),
        &[(Oid(1), Some(b"durable"), None)],
    );
    // A second transaction is locked (committed) but its unlock is not.
    let data_id = backend
        .store_data(Oid(1), checksum(b"locked"), b"locked", 0, None)
        .unwrap();
    let meta = TransactionMeta {
        oids: vec![Oid(1)],
        ttid: tid(2),
        ..TransactionMeta::default()
    };
    backend
        .store_transaction(
            tid(2),
            &[ObjectRow {
                oid: Oid(1),
                data_id,
                data_serial: None,
            }],
            Some(&meta),
            true,
        )
        .unwrap();
    backend.lock_transaction(tid(2), tid(6)).unwrap();
    backend.commit().unwrap();
    backend.unlock_transaction(tid(2), tid(6)).unwrap();
    assert!(backend.has_uncommitted());
    drop(backend); // crash before the deferred commit

    let mut backend = open(&db_path(&dir));
    assert_eq!(backend.name().unwrap().as_deref(), Some("test"));
    assert_eq!(backend.nid().unwrap(), Some(own_nid()));
    assert_eq!(backend.ptid().unwrap(), Some(1));
    assert_eq!(backend.num_partitions(), NP);
    let record = found(backend.get_object(Oid(1), None, None).unwrap());
    assert_eq!(
        (record.serial, record.data.as_slice()),
        (tid(1), &b"durable"[..])
    );
    // Verification finds the locked transaction and replays the unlock.
    assert_eq!(
        backend.unfinished_transactions().unwrap(),
        BTreeMap::from([(tid(2), Some(tid(6)))])
    );
    backend.unlock_transaction(tid(2), tid(6)).unwrap();
    backend.commit().unwrap();
    let record = found(backend.get_object(Oid(1), None, None).unwrap());
    assert_eq!(
        (record.serial, record.data.as_slice()),
        (tid(6), &b"locked"[..])
    );
}

#[test]
fn second_open_of_the_same_file_is_locked() {
    let (dir, backend) = new_backend(&[]);
    let err = SqliteBackend::open(db_path(&dir), &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("database is locked"), "{err}");
    // Another path to the same file is the same lock.
    let link = dir.path().join("link.sqlite");
    std::fs::hard_link(db_path(&dir), &link).unwrap();
    assert!(matches!(
        SqliteBackend::open(&link, &OpenOptions::default()),
        Err(OpenError::Locked { .. })
    ));
    drop(backend);
    open(&db_path(&dir));
}

#[test]
fn newer_and_older_schemas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(open(&path));
    let set_version = |version: &str| {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE config SET value = ? WHERE name = 'version'",
            [version],
        )
        .unwrap();
    };
    set_version("5");
    let err = SqliteBackend::open(&path, &OpenOptions::default()).unwrap_err();
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
    let err = SqliteBackend::open(&path, &OpenOptions::default()).unwrap_err();
    assert!(
        matches!(err, OpenError::OlderSchema { found: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("migration"), "{err}");
    // Reset starts over with the current schema.
    let backend = SqliteBackend::open(
        &path,
        &OpenOptions {
            reset: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    drop(backend);
    open(&path);
}

#[test]
fn reads_on_non_readable_partitions_are_refused() {
    let (_dir, mut backend) = new_backend(&[1]);
    assert_eq!(
        backend.readable_partitions(),
        [0, 2, 3].into_iter().collect()
    );
    let non_readable = |result: Result<_, Error>| match result {
        Err(Error::Request(RequestError::NonReadableCell { partition: 1 })) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("read allowed on a non-readable partition"),
    };
    non_readable(backend.get_object(Oid(1), None, None).map(|_| ()));
    non_readable(backend.object_history(Oid(5), 0, 1).map(|_| ()));
    non_readable(backend.get_transaction(tid(1), false).map(|_| ()));
    non_readable(backend.final_tid(tid(1)).map(|_| ()));
    non_readable(backend.tid_list(0, 1, &[0, 1]).map(|_| ()));
    non_readable(backend.oids_from(1, 1, Oid(0), tid(1)).map(|_| ()));
    non_readable(
        backend
            .find_undo_tid(Oid(1), tid(9), tid(1), None)
            .map(|_| ()),
    );
    // Writes are accepted on any cell; an undo whose record is missing
    // keeps the data sent by the client on a cell being replicated.
    assert!(backend
        .store_data(Oid(1), checksum(b"x"), b"x", 0, Some(tid(0)))
        .unwrap()
        .is_some());
    assert_eq!(backend.last_object_tid(Oid(1)).unwrap(), None);
    // Readable partitions still work.
    assert_eq!(
        backend.get_object(Oid(2), None, None).unwrap(),
        ObjectLookup::OidDoesNotExist
    );
    assert_eq!(backend.first_tid().unwrap(), Tid::MAX);
}

#[test]
fn partition_table_persistence_and_out_of_date_progress() {
    let (dir, mut backend) = new_backend(&[]);
    commit(&mut backend, tid(1), tid(1), &[(Oid(1), Some(b"a"), None)]);
    commit(&mut backend, tid(5), tid(5), &[(Oid(2), Some(b"b"), None)]);
    // Own cell 1 becomes OUT_OF_DATE: complete up to its last data (tid 5
    // is in partition 1 of trans; oid 1 wrote tid 1 in partition 1).
    // Another node gets cells; cell 3 is discarded.
    backend
        .change_partition_table(
            2,
            1,
            &[
                (1, own_nid(), CellState::OutOfDate),
                (1, other_nid(), CellState::UpToDate),
                (2, other_nid(), CellState::OutOfDate),
                (0, other_nid(), CellState::Feeding),
                (3, own_nid(), CellState::Discarded),
                (3, other_nid(), CellState::UpToDate),
            ],
            false,
        )
        .unwrap();
    assert!(!backend.has_uncommitted());
    assert_eq!(backend.ptid().unwrap(), Some(2));
    assert_eq!(backend.num_replicas().unwrap(), 1);
    let expected_pt = vec![
        (0, own_nid(), CellState::UpToDate),
        (0, other_nid(), CellState::Feeding),
        (1, own_nid(), CellState::OutOfDate),
        (1, other_nid(), CellState::UpToDate),
        (2, own_nid(), CellState::UpToDate),
        (2, other_nid(), CellState::OutOfDate),
        (3, other_nid(), CellState::UpToDate),
    ];
    assert_eq!(pt_cells(&backend), expected_pt);
    assert_eq!(backend.readable_partitions(), [0, 2].into_iter().collect());
    let cells = backend.assigned_cells();
    assert_eq!(cells.len(), 3);
    assert_eq!(cells[1].partition, 1);
    assert_eq!(cells[1].state, CellState::OutOfDate);
    assert_eq!(cells[1].complete_up_to, Some(tid(5)));
    assert_eq!(cells[0].complete_up_to, None);
    // Replication progress, kept by a later change of the same cell.
    backend.update_cell_tid(1, tid(9)).unwrap();
    backend.update_cell_tid(0, tid(9)).unwrap(); // readable: no-op
    backend
        .change_partition_table(3, 1, &[(1, own_nid(), CellState::OutOfDate)], false)
        .unwrap();
    drop(backend);

    let mut backend = open(&db_path(&dir));
    assert_eq!(pt_cells(&backend), expected_pt);
    assert_eq!(backend.num_partitions(), 4);
    let cells = backend.assigned_cells();
    assert_eq!(cells[1].complete_up_to, Some(tid(9)));
    assert_eq!(cells[0].state, CellState::UpToDate);
    // Raw encoding of §12.3.
    let conn = rusqlite::Connection::open(db_path(&dir)).unwrap();
    let raw: Vec<(i64, i64, i64, Option<i64>)> = conn
        .prepare("SELECT partition, nid, tid, pack FROM pt ORDER BY partition, nid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let own = i64::from(own_nid().0);
    let other = i64::from(other_nid().0);
    assert_eq!(
        raw,
        vec![
            (0, own, -1, Some(0)),
            (0, other, -2, None),
            (1, own, tid(9).0 as i64, Some(0)),
            (1, other, -1, None),
            (2, own, -1, Some(0)),
            (2, other, 0, None),
            (3, other, -1, None),
        ]
    );
    // A full reset replaces everything.
    backend
        .change_partition_table(4, 0, &[(0, own_nid(), CellState::UpToDate)], true)
        .unwrap();
    assert_eq!(backend.num_partitions(), 1);
    assert_eq!(
        pt_cells(&backend),
        vec![(0, own_nid(), CellState::UpToDate)]
    );
}

#[test]
fn reset_and_erase() {
    let (dir, mut backend) = new_backend(&[]);
    commit(&mut backend, tid(1), tid(1), &[(Oid(1), Some(b"a"), None)]);
    backend.reset().unwrap();
    assert_eq!(backend.name().unwrap(), None);
    assert_eq!(backend.num_partitions(), 0);
    assert!(pt_cells(&backend).is_empty());
    assert_eq!(data_count(&db_path(&dir)), 0);
    // Without a partition table, reads are refused and writes fail clearly.
    assert!(matches!(
        backend.get_object(Oid(1), None, None),
        Err(Error::Request(RequestError::NonReadableCell { .. }))
    ));
    let err = backend
        .store_data(Oid(1), checksum(b"a"), b"a", 0, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Request(RequestError::NoPartitionTable { .. })),
        "{err}"
    );
    backend.erase().unwrap();
    drop(backend);
    let conn = rusqlite::Connection::open(db_path(&dir)).unwrap();
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0);
}

#[test]
fn out_of_range_ids_are_errors() {
    let (_dir, mut backend) = new_backend(&[]);
    let err = backend
        .store_data(Oid(u64::MAX), checksum(b"a"), b"a", 0, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Request(RequestError::OutOfRange { .. })),
        "{err}"
    );
    // Range bounds above MAX_TID just mean "no limit".
    assert!(backend
        .replication_tid_list(Tid::ZERO, Tid::INVALID, 10, 0)
        .unwrap()
        .is_empty());
    assert_eq!(
        backend
            .get_object(Oid(0), Some(Tid::INVALID), None)
            .unwrap(),
        ObjectLookup::OidDoesNotExist
    );
}
