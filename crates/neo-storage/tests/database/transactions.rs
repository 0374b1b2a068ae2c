//! The life of transactions in the database: vote, lock, unlock, abort,
//! loads and listings, data ids and their holds, truncation, reopening.

use std::collections::BTreeMap;

use neo_proto::{Checksum, Oid, Tid};
use neo_storage::backend::{
    DataId, Error, ObjectRecord, ObjectRow, PackOrder, RequestError, TransactionMeta,
};
use neo_storage::db::{Database, ObjectLookup};

use super::{checksum, commit, found, new_database, own_nid, Engine, NP};

/// A TID of partition `tid % NP` built from a counter (congruence of TTID
/// and TID is kept by using the same low bits).
fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n)
}

pub fn store_lock_unlock_then_load_at_and_before<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    let oid = Oid(5); // partition 1
    let (ttid1, tid1) = (tid(1), tid(5));
    // Vote: temporary rows only.
    let data_id = db
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
    db.store_transaction(ttid1, &[row], Some(&meta), true)
        .unwrap();
    db.commit().unwrap();
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        BTreeMap::from([(ttid1, None)])
    );
    assert_eq!(
        db.get_object(oid, None, None).unwrap(),
        ObjectLookup::OidDoesNotExist
    );
    assert_eq!(db.get_transaction(ttid1, true).unwrap(), Some(meta.clone()));
    assert_eq!(db.get_transaction(ttid1, false).unwrap(), None);
    // Lock is durable once committed (the node commits before answering).
    db.lock_transaction(ttid1, tid1).unwrap();
    assert!(db.has_uncommitted());
    db.commit().unwrap();
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        BTreeMap::from([(ttid1, Some(tid1))])
    );
    // Unlock is deferred.
    db.unlock_transaction(ttid1, tid1).unwrap();
    assert!(db.has_uncommitted());
    db.commit().unwrap();
    assert!(db.unfinished_transactions().unwrap().is_empty());
    assert_eq!(db.get_transaction(tid1, false).unwrap(), Some(meta));
    assert_eq!(db.final_tid(ttid1).unwrap(), Some(tid1));
    assert_eq!(db.final_tid(tid(9)).unwrap(), None);

    let (ttid2, tid2) = (tid(9), tid(13));
    commit(&mut db, ttid2, tid2, &[(oid, Some(b"second"), None)]);

    let latest = found(db.get_object(oid, None, None).unwrap());
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
    let first = found(db.get_object(oid, Some(tid1), None).unwrap());
    assert_eq!(
        (first.serial, first.next_serial, first.data.as_slice()),
        (tid1, Some(tid2), &b"first"[..])
    );
    let before = found(db.get_object(oid, None, Some(tid2)).unwrap());
    assert_eq!(before, first);
    let before = found(db.get_object(oid, None, Some(Tid(tid2.0 + 1))).unwrap());
    assert_eq!((before.serial, before.next_serial), (tid2, None));
    assert_eq!(
        db.get_object(oid, None, Some(tid1)).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert_eq!(
        db.get_object(oid, Some(tid(6)), None).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert_eq!(db.last_object_tid(oid).unwrap(), Some(tid2));
    let history = db.object_history(oid, 0, 10).unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| (h.serial, h.size))
            .collect::<Vec<_>>(),
        vec![(tid2, 6), (tid1, 5)]
    );
    assert_eq!(db.object_history(oid, 1, 10).unwrap().len(), 1);
    assert_eq!(db.tid_list(0, 10, &[0, 1, 2, 3]).unwrap(), vec![tid2, tid1]);
    let ids = db.last_ids().unwrap();
    assert_eq!((ids.tid, ids.oid), (Some(tid2), Some(oid)));
    assert_eq!(db.first_tid().unwrap(), tid1);
}

pub fn deletion_and_undo_records<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    let oid = Oid(2);
    commit(&mut db, tid(1), tid(1), &[(oid, Some(b"v1"), None)]);
    commit(&mut db, tid(2), tid(2), &[(oid, Some(b"v2"), None)]);
    // Undo of transaction 2: back-pointer to 1, sharing its data id.
    commit(&mut db, tid(3), tid(3), &[(oid, Some(b"v1"), Some(tid(1)))]);
    let record = found(db.get_object(oid, None, None).unwrap());
    assert_eq!(record.serial, tid(3));
    assert_eq!(record.data_serial, Some(tid(1)));
    assert_eq!(record.data, b"v1");
    assert_eq!(record.checksum, checksum(b"v1"));
    // Only two data rows: the undo shares the original one.
    assert_eq!(engine.count("data"), 2);
    // Deletion: no data.
    commit(&mut db, tid(4), tid(4), &[(oid, None, None)]);
    let record = found(db.get_object(oid, None, None).unwrap());
    assert_eq!(
        (record.compression, record.checksum, record.data.len()),
        (None, Checksum::ZERO, 0)
    );
    let history = db.object_history(oid, 0, 10).unwrap();
    assert_eq!(history[0].size, 0);
    // A deleted oid is not listed; before the deletion it was.
    let (oids, _) = db.oids_from(2, 10, Oid(0), tid(4)).unwrap();
    assert!(oids.is_empty());
    let (oids, _) = db.oids_from(2, 10, Oid(0), tid(3)).unwrap();
    assert_eq!(oids, vec![oid]);
    // Undo pack error for a record that does not exist.
    let err = db
        .store_data(oid, checksum(b"x"), b"x", 0, Some(tid(0)))
        .unwrap_err();
    assert!(
        matches!(err, Error::Request(RequestError::UndoPack { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("pack"), "{err}");
}

pub fn abort_drops_temporary_rows_and_their_data<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    commit(&mut db, tid(1), tid(1), &[(Oid(1), Some(b"kept"), None)]);
    let ttid = tid(2);
    let data_id = db
        .store_data(Oid(1), checksum(b"aborted"), b"aborted", 0, None)
        .unwrap();
    let row = ObjectRow {
        oid: Oid(1),
        data_id,
        data_serial: None,
    };
    db.store_transaction(ttid, &[row], Some(&TransactionMeta::default()), true)
        .unwrap();
    db.commit().unwrap();
    assert_eq!(engine.count("data"), 2);
    db.abort_transaction(ttid).unwrap();
    db.commit().unwrap();
    assert!(db.unfinished_transactions().unwrap().is_empty());
    assert_eq!(engine.count("data"), 1);
    assert!(db.load_data(data_id.unwrap()).unwrap().is_none());
    assert_eq!(
        found(db.get_object(Oid(1), None, None).unwrap()).data,
        b"kept"
    );
}

pub fn drop_unfinished_data_forgets_voted_and_held_data<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    let voted = db
        .store_data(Oid(1), checksum(b"voted"), b"voted", 0, None)
        .unwrap();
    db.store_transaction(
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
    db.store_data(Oid(2), checksum(b"held"), b"held", 0, None)
        .unwrap();
    db.commit().unwrap();
    assert_eq!(engine.count("data"), 2);
    db.drop_unfinished_data().unwrap();
    assert!(db.unfinished_transactions().unwrap().is_empty());
    assert_eq!(engine.count("data"), 0);
}

pub fn data_ids_are_allocated_per_partition<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    fn store(db: &mut Database, oid: u64, data: &[u8]) -> DataId {
        db.store_data(Oid(oid), checksum(data), data, 0, None)
            .unwrap()
            .unwrap()
    }
    assert_eq!(store(&mut db, 4, b"a"), 0);
    assert_eq!(store(&mut db, 1, b"b"), 1 << 48);
    assert_eq!(store(&mut db, 8, b"c"), 1);
    assert_eq!(store(&mut db, 7, b"d"), 3 << 48);
    assert_eq!(store(&mut db, 5, b"e"), (1 << 48) + 1);
    // No data: no id.
    assert_eq!(
        db.store_data(Oid(1), Checksum::ZERO, b"", 0, None).unwrap(),
        None
    );
    // An empty value is data.
    assert!(db
        .store_data(Oid(1), checksum(b""), b"", 0, None)
        .unwrap()
        .is_some());
    // Allocation continues after the greatest id once reopened.
    db.commit().unwrap();
    drop(db);
    let mut db = engine.open();
    assert_eq!(store(&mut db, 9, b"f"), (1 << 48) + 3);
}

pub fn truncate_deletes_everything_after_the_tid<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    for n in 1..=6 {
        commit(
            &mut db,
            tid(n),
            tid(n),
            &[(Oid(n % 3), Some(format!("data {n}").as_bytes()), None)],
        );
    }
    assert_eq!(engine.count("data"), 6);
    assert_eq!(db.truncate().unwrap(), None);
    db.set_truncate_tid(Some(tid(3))).unwrap();
    db.commit().unwrap();
    assert_eq!(db.truncate().unwrap(), Some(tid(3)));
    assert!(!db.has_uncommitted());
    assert_eq!(db.truncate_tid().unwrap(), None);
    assert_eq!(
        db.tid_list(0, 10, &[0, 1, 2, 3]).unwrap(),
        vec![tid(3), tid(2), tid(1)]
    );
    assert_eq!(db.last_ids().unwrap().tid, Some(tid(3)));
    assert_eq!(engine.count("data"), 3);
    // Oid 1 was written by 1 and 4: only 1 remains.
    let record = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!((record.serial, record.next_serial), (tid(1), None));
    assert_eq!(db.get_transaction(tid(4), false).unwrap(), None);
}

pub fn reopen_keeps_committed_data_and_locked_transactions<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    commit(&mut db, tid(1), tid(1), &[(Oid(1), Some(b"durable"), None)]);
    // A second transaction is locked (committed) but its unlock is not.
    let data_id = db
        .store_data(Oid(1), checksum(b"locked"), b"locked", 0, None)
        .unwrap();
    let meta = TransactionMeta {
        oids: vec![Oid(1)],
        ttid: tid(2),
        ..TransactionMeta::default()
    };
    db.store_transaction(
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
    db.lock_transaction(tid(2), tid(6)).unwrap();
    db.commit().unwrap();
    db.unlock_transaction(tid(2), tid(6)).unwrap();
    assert!(db.has_uncommitted());
    drop(db); // crash before the deferred commit

    let mut db = engine.open();
    assert_eq!(db.name().unwrap().as_deref(), Some("test"));
    assert_eq!(db.nid().unwrap(), Some(own_nid()));
    assert_eq!(db.ptid().unwrap(), Some(1));
    assert_eq!(db.num_partitions(), NP);
    let record = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!(
        (record.serial, record.data.as_slice()),
        (tid(1), &b"durable"[..])
    );
    // Verification finds the locked transaction and replays the unlock.
    assert_eq!(
        db.unfinished_transactions().unwrap(),
        BTreeMap::from([(tid(2), Some(tid(6)))])
    );
    db.unlock_transaction(tid(2), tid(6)).unwrap();
    db.commit().unwrap();
    let record = found(db.get_object(Oid(1), None, None).unwrap());
    assert_eq!(
        (record.serial, record.data.as_slice()),
        (tid(6), &b"locked"[..])
    );
}

pub fn reads_on_non_readable_partitions_are_refused<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[1]);
    assert_eq!(db.readable_partitions(), [0, 2, 3].into_iter().collect());
    let non_readable = |result: Result<_, Error>| match result {
        Err(Error::Request(RequestError::NonReadableCell { partition: 1 })) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("read allowed on a non-readable partition"),
    };
    non_readable(db.get_object(Oid(1), None, None).map(|_| ()));
    non_readable(db.object_history(Oid(5), 0, 1).map(|_| ()));
    non_readable(db.get_transaction(tid(1), false).map(|_| ()));
    non_readable(db.final_tid(tid(1)).map(|_| ()));
    non_readable(db.tid_list(0, 1, &[0, 1]).map(|_| ()));
    non_readable(db.oids_from(1, 1, Oid(0), tid(1)).map(|_| ()));
    non_readable(db.find_undo_tid(Oid(1), tid(9), tid(1), None).map(|_| ()));
    // Writes are accepted on any cell; an undo whose record is missing
    // keeps the data sent by the client on a cell being replicated.
    assert!(db
        .store_data(Oid(1), checksum(b"x"), b"x", 0, Some(tid(0)))
        .unwrap()
        .is_some());
    assert_eq!(db.last_object_tid(Oid(1)).unwrap(), None);
    // Readable partitions still work.
    assert_eq!(
        db.get_object(Oid(2), None, None).unwrap(),
        ObjectLookup::OidDoesNotExist
    );
    assert_eq!(db.first_tid().unwrap(), Tid::MAX);
}

pub fn out_of_range_ids_are_errors<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    let err = db
        .store_data(Oid(u64::MAX), checksum(b"a"), b"a", 0, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Request(RequestError::OutOfRange { .. })),
        "{err}"
    );
    // Range bounds above MAX_TID just mean "no limit".
    assert!(db
        .replication_tid_list(Tid::ZERO, Tid::INVALID, 10, 0)
        .unwrap()
        .is_empty());
    assert_eq!(
        db.get_object(Oid(0), Some(Tid::INVALID), None).unwrap(),
        ObjectLookup::OidDoesNotExist
    );
}

/// An undo store holds the data id of the record it points to, before
/// any row of its own refers to it: a pack that removes that record in
/// the meantime must not prune the data.
pub fn data_held_by_a_store_in_progress_survives_pack<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    let oid = Oid(3);
    commit(&mut db, tid(3), tid(3), &[(oid, Some(b"x"), None)]);
    commit(&mut db, tid(7), tid(7), &[(oid, Some(b"y"), None)]);
    let held = db
        .store_data(oid, Checksum::ZERO, b"", 0, Some(tid(3)))
        .unwrap()
        .unwrap();
    let order = PackOrder {
        id: tid(11),
        approved: Some(true),
        partial: false,
        oids: None,
        pack_tid: tid(7),
    };
    assert_eq!(db.pack(3, &order, Oid(0), 100).unwrap(), None);
    db.commit().unwrap();
    assert_eq!(
        db.get_object(oid, Some(tid(3)), None).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert!(db.load_data(held).unwrap().is_some(), "held data pruned");
    db.release_data(&[held], true).unwrap();
    assert!(
        db.load_data(held).unwrap().is_none(),
        "unreferenced data kept"
    );
}

/// Reset erases everything; without a partition table, reads are refused
/// and writes fail clearly.
pub fn reset_forgets_everything<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    commit(&mut db, tid(1), tid(1), &[(Oid(1), Some(b"a"), None)]);
    db.reset().unwrap();
    assert_eq!(db.name().unwrap(), None);
    assert_eq!(db.nid().unwrap(), None);
    assert_eq!(db.num_partitions(), 0);
    assert!(db.partition_table().is_none());
    assert!(db.assigned_cells().is_empty());
    assert_eq!(engine.count("data"), 0);
    assert_eq!(engine.count("trans"), 0);
    assert!(matches!(
        db.get_object(Oid(1), None, None),
        Err(Error::Request(RequestError::NonReadableCell { .. }))
    ));
    let err = db
        .store_data(Oid(1), checksum(b"a"), b"a", 0, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::Request(RequestError::NoPartitionTable { .. })),
        "{err}"
    );
}
