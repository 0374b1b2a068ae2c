//! Pack on the SQLite backend (architecture.md §11.2, §11.3): what is
//! removed, deletions, undo records sharing data, partial packs,
//! idempotence and batches, and the life of pack orders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use neo_proto::{CellState, Checksum, NodeId, NodeType, Oid, Partition, Tid};
use neo_storage::backend::{ObjectRow, OpenOptions, PackOrder, SqliteBackend, TransactionMeta};
use neo_storage::db::{Database, ObjectLookup};
use sha1::{Digest, Sha1};

const NP: u32 = 4;

fn own_nid() -> NodeId {
    NodeId::new(NodeType::Storage, 1).unwrap()
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

fn new_backend() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = open(&db_path(&dir));
    backend.set_name("test").unwrap();
    backend.set_nid(own_nid()).unwrap();
    let cells: Vec<_> = (0..NP)
        .map(|p| (p, own_nid(), CellState::UpToDate))
        .collect();
    backend.change_partition_table(1, 0, &cells, true).unwrap();
    (dir, backend)
}

fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}

/// TID number `n` (all in partition 0; TTIDs are `tid(n) - NP`).
fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n * u64::from(NP) * 16)
}

/// A written object: oid, data (`None` = deletion), undo back-pointer.
type Write<'a> = (u64, Option<&'a [u8]>, Option<Tid>);

fn vote(backend: &mut Database, ttid: Tid, objects: &[Write<'_>], pack: Option<&PackOrder>) {
    let mut rows = Vec::new();
    for &(oid, data, data_tid) in objects {
        let (sum, bytes) = match data {
            Some(data) => (checksum(data), data),
            None => (Checksum::ZERO, &b""[..]),
        };
        let data_id = backend
            .store_data(Oid(oid), sum, bytes, 0, data_tid)
            .unwrap();
        rows.push(ObjectRow {
            oid: Oid(oid),
            data_id,
            data_serial: data_tid,
        });
    }
    let meta = TransactionMeta {
        oids: objects.iter().map(|o| Oid(o.0)).collect(),
        ttid,
        ..Default::default()
    };
    if let Some(order) = pack {
        backend.store_pack_order(order).unwrap();
    }
    backend
        .store_transaction(ttid, &rows, Some(&meta), true)
        .unwrap();
    backend.commit().unwrap();
}

/// Vote, lock and unlock; the final TID is the TTID + 1 (same partition
/// since TIDs are multiples of 16 * NP apart).
fn commit(backend: &mut Database, n: u64, objects: &[Write<'_>]) -> Tid {
    let tid = tid(n);
    let ttid = Tid(tid.0 - u64::from(NP));
    vote(backend, ttid, objects, None);
    backend.lock_transaction(ttid, tid).unwrap();
    backend.unlock_transaction(ttid, tid).unwrap();
    backend.commit().unwrap();
    tid
}

fn full(id: Tid, pack_tid: Tid) -> PackOrder {
    PackOrder {
        id,
        approved: Some(true),
        partial: false,
        oids: None,
        pack_tid,
    }
}

fn partial(id: Tid, pack_tid: Tid, oids: &[u64]) -> PackOrder {
    PackOrder {
        id,
        approved: Some(true),
        partial: true,
        oids: Some(oids.iter().copied().map(Oid).collect()),
        pack_tid,
    }
}

/// Packs every partition completely, `limit` oids per step; returns the
/// number of steps.
fn pack_all(backend: &mut Database, order: &PackOrder, limit: u64) -> usize {
    let mut steps = 0;
    for partition in 0..NP {
        let mut next = Some(Oid(0));
        while let Some(min_oid) = next {
            next = backend.pack(partition, order, min_oid, limit).unwrap();
            steps += 1;
            assert!(steps < 10_000);
        }
    }
    backend.commit().unwrap();
    steps
}

/// Serials of `oid`, oldest first.
fn serials(path: &Path, oid: u64) -> Vec<Tid> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT tid FROM obj WHERE oid = ? ORDER BY tid")
        .unwrap();
    let rows = stmt
        .query_map([oid as i64], |row| row.get::<_, i64>(0))
        .unwrap();
    rows.map(|tid| Tid(tid.unwrap() as u64)).collect()
}

fn count(path: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

/// Every row of `obj` and `data`, to compare states.
fn dump(path: &Path) -> Vec<(i64, i64, Option<i64>, Option<i64>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT obj.oid, obj.tid, obj.value_tid, data.id FROM obj
             LEFT JOIN data ON data.id = obj.data_id ORDER BY obj.oid, obj.tid",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn data_at(backend: &mut Database, oid: u64, at: Tid) -> Option<Vec<u8>> {
    match backend.get_object(Oid(oid), Some(at), None).unwrap() {
        ObjectLookup::Found(record) => Some(record.data),
        ObjectLookup::NoMatchingRevision | ObjectLookup::OidDoesNotExist => None,
    }
}

#[test]
fn pack_keeps_the_revision_current_at_pack_tid_and_everything_after() {
    let (dir, mut backend) = new_backend();
    let path = db_path(&dir);
    let t1 = commit(
        &mut backend,
        1,
        &[(1, Some(b"a1"), None), (5, Some(b"b1"), None)],
    );
    let t2 = commit(&mut backend, 2, &[(1, Some(b"a2"), None)]);
    let t3 = commit(
        &mut backend,
        3,
        &[(1, Some(b"a3"), None), (5, Some(b"b3"), None)],
    );
    assert_eq!(count(&path, "data"), 5);
    pack_all(&mut backend, &full(tid(9), t2), 100);

    assert_eq!(serials(&path, 1), [t2, t3]);
    // Oid 5 had a single revision at t2: it stays.
    assert_eq!(serials(&path, 5), [t1, t3]);
    assert_eq!(data_at(&mut backend, 1, t1), None);
    assert_eq!(data_at(&mut backend, 1, t2).as_deref(), Some(&b"a2"[..]));
    assert_eq!(data_at(&mut backend, 1, t3).as_deref(), Some(&b"a3"[..]));
    assert_eq!(data_at(&mut backend, 5, t1).as_deref(), Some(&b"b1"[..]));
    assert_eq!(
        backend.get_object(Oid(1), None, Some(t2)).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    // "a1" is gone from `data`; transaction metadata is never packed.
    assert_eq!(count(&path, "data"), 4);
    assert_eq!(count(&path, "trans"), 3);
    assert!(backend.get_transaction(t1, false).unwrap().is_some());
}

#[test]
fn a_deletion_current_at_pack_tid_goes_with_everything_before() {
    let (dir, mut backend) = new_backend();
    let path = db_path(&dir);
    commit(
        &mut backend,
        1,
        &[(2, Some(b"x"), None), (6, Some(b"y"), None)],
    );
    let t2 = commit(&mut backend, 2, &[(2, None, None), (6, None, None)]);
    let t3 = commit(&mut backend, 3, &[(6, Some(b"y again"), None)]);
    pack_all(&mut backend, &full(tid(9), t2), 100);

    assert_eq!(serials(&path, 2), []);
    assert_eq!(
        backend.get_object(Oid(2), None, None).unwrap(),
        ObjectLookup::OidDoesNotExist
    );
    assert_eq!(serials(&path, 6), [t3]);
    assert_eq!(
        backend.get_object(Oid(6), None, Some(t3)).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert_eq!(count(&path, "data"), 1);
}

#[test]
fn undo_records_keep_the_data_they_share() {
    let (dir, mut backend) = new_backend();
    let path = db_path(&dir);
    let t1 = commit(&mut backend, 1, &[(3, Some(b"x"), None)]);
    let t2 = commit(&mut backend, 2, &[(3, Some(b"y"), None)]);
    // Undo of t2: back to the data of t1, shared by data id.
    let t3 = commit(&mut backend, 3, &[(3, None, Some(t1))]);
    let t4 = commit(&mut backend, 4, &[(3, Some(b"z"), None)]);
    assert_eq!(count(&path, "data"), 3);

    pack_all(&mut backend, &full(tid(9), t2), 100);
    assert_eq!(serials(&path, 3), [t2, t3, t4]);
    let record = match backend.get_object(Oid(3), Some(t3), None).unwrap() {
        ObjectLookup::Found(record) => record,
        other => panic!("{other:?}"),
    };
    assert_eq!(record.data, b"x");
    assert_eq!(count(&path, "data"), 3, "t3 still uses the data of t1");

    pack_all(&mut backend, &full(tid(10), t3), 100);
    assert_eq!(serials(&path, 3), [t3, t4]);
    assert_eq!(data_at(&mut backend, 3, t3).as_deref(), Some(&b"x"[..]));
    assert_eq!(count(&path, "data"), 2, "only \"y\" was pruned");
    // An undo of t3 can still reuse its data.
    let reused = backend
        .store_data(Oid(3), Checksum::ZERO, b"", 0, Some(t3))
        .unwrap();
    assert!(reused.is_some());
    backend.release_data(&[reused.unwrap()], false).unwrap();
}

#[test]
fn a_partial_pack_only_touches_the_listed_oids() {
    let (dir, mut backend) = new_backend();
    let path = db_path(&dir);
    let t1 = commit(
        &mut backend,
        1,
        &[
            (1, Some(b"a"), None),
            (2, Some(b"b"), None),
            (5, Some(b"c"), None),
        ],
    );
    let t2 = commit(
        &mut backend,
        2,
        &[
            (1, Some(b"A"), None),
            (2, Some(b"B"), None),
            (5, Some(b"C"), None),
        ],
    );
    // Oid 9 is listed but has no record; oid 13 has no record either.
    pack_all(&mut backend, &partial(tid(9), t2, &[5, 2, 9, 13]), 100);
    assert_eq!(serials(&path, 1), [t1, t2]);
    assert_eq!(serials(&path, 2), [t2]);
    assert_eq!(serials(&path, 5), [t2]);
    assert_eq!(count(&path, "data"), 4);
}

#[test]
fn pack_in_small_batches_is_the_same_and_idempotent() {
    let objects = |data: &'static [u8]| -> Vec<Write<'static>> {
        (0..40u64).map(|oid| (oid, Some(data), None)).collect()
    };
    let run = |limit: u64| {
        let (dir, mut backend) = new_backend();
        let path = db_path(&dir);
        commit(&mut backend, 1, &objects(b"one"));
        let t2 = commit(&mut backend, 2, &objects(b"two"));
        commit(&mut backend, 3, &objects(b"three"));
        let order = full(tid(9), t2);
        let steps = pack_all(&mut backend, &order, limit);
        let first = dump(&path);
        pack_all(&mut backend, &order, limit);
        assert_eq!(dump(&path), first, "packing again changes nothing");
        // Packing at an earlier time after a later one changes nothing.
        pack_all(&mut backend, &full(tid(10), tid(1)), limit);
        assert_eq!(dump(&path), first);
        (steps, first, count(&path, "data"))
    };
    let (steps_small, small, data_small) = run(3);
    let (steps_big, big, data_big) = run(1000);
    assert_eq!(steps_big, NP as usize);
    // 10 oids per partition, 3 per step: 4 steps each.
    assert_eq!(steps_small, 4 * NP as usize);
    assert_eq!(small.len(), 80);
    // Same rows (data ids are allocated identically in both databases).
    assert_eq!(small, big);
    assert_eq!(data_small, 80);
    assert_eq!(data_big, 80);
}

#[test]
fn pack_orders_are_stored_signed_rekeyed_and_listed() {
    let (dir, mut backend) = new_backend();
    let path = db_path(&dir);
    let t1 = commit(&mut backend, 1, &[(1, Some(b"a"), None)]);

    // Vote: stored unsigned under the TTID, not listed before the unlock.
    let tid2 = tid(2);
    let ttid2 = Tid(tid2.0 - u64::from(NP));
    let mut order = PackOrder {
        id: ttid2,
        approved: None,
        partial: true,
        oids: Some(vec![Oid(1), Oid(7)]),
        pack_tid: t1,
    };
    vote(&mut backend, ttid2, &[], Some(&order));
    assert_eq!(backend.pack_orders(Tid::ZERO).unwrap(), []);
    // Lock with approval, unlock: re-keyed to the final TID.
    assert_eq!(backend.sign_pack_orders(&[ttid2], &[]).unwrap(), [ttid2]);
    backend.lock_transaction(ttid2, tid2).unwrap();
    backend.unlock_transaction(ttid2, tid2).unwrap();
    backend.commit().unwrap();
    order.id = tid2;
    order.approved = Some(true);
    assert_eq!(backend.pack_orders(Tid::ZERO).unwrap(), [order.clone()]);
    assert_eq!(backend.pack_orders(tid2).unwrap(), [order.clone()]);
    assert_eq!(backend.pack_orders(Tid(tid2.0 + 1)).unwrap(), []);

    // An aborted or unfinished transaction leaves no order behind.
    let ttid3 = Tid(tid(3).0 - u64::from(NP));
    let unsigned = full(ttid3, t1);
    vote(&mut backend, ttid3, &[], Some(&unsigned));
    backend.abort_transaction(ttid3).unwrap();
    backend.commit().unwrap();
    let ttid4 = Tid(tid(4).0 - u64::from(NP));
    vote(&mut backend, ttid4, &[], Some(&full(ttid4, t1)));
    backend.drop_unfinished_data().unwrap();
    assert_eq!(count(&path, "pack"), 1);

    // NotifyPackSigned: rejection of a stored order; unknown ids ignored.
    assert_eq!(
        backend.sign_pack_orders(&[Tid(42)], &[tid2]).unwrap(),
        [tid2]
    );
    backend.commit().unwrap();
    assert_eq!(
        backend.pack_orders(Tid::ZERO).unwrap()[0].approved,
        Some(false)
    );

    // Completed pack ids per cell persist.
    let partition: Partition = 2;
    backend.set_partition_packed(partition, tid2).unwrap();
    backend.commit().unwrap();
    drop(backend);
    let mut backend = open(&path);
    let packs: Vec<(Partition, Option<Tid>)> = backend
        .assigned_cells()
        .into_iter()
        .map(|cell| (cell.partition, cell.pack))
        .collect();
    assert_eq!(
        packs,
        [
            (0, Some(Tid::ZERO)),
            (1, Some(Tid::ZERO)),
            (2, Some(tid2)),
            (3, Some(Tid::ZERO))
        ]
    );
    // Orders of partitions that are not readable here are not listed.
    let cells = [(tid2.0 as u32 % NP, own_nid(), CellState::OutOfDate)];
    backend.change_partition_table(2, 0, &cells, false).unwrap();
    assert_eq!(backend.pack_orders(Tid::ZERO).unwrap(), []);
}
