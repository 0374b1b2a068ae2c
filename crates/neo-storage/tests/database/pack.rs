//! Pack (§11.2, §11.3): what is removed, deletions, undo records sharing
//! data, partial packs, idempotence and batches, and the life of pack
//! orders.

use neo_proto::{CellState, Checksum, Oid, Partition, Tid};
use neo_storage::backend::PackOrder;
use neo_storage::db::{Database, ObjectLookup};

use super::{new_database, own_nid, vote, Engine, Write, NP};

/// TID number `n` (all in partition 0; TTIDs are `tid(n) - NP`).
fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n * u64::from(NP) * 16)
}

/// Vote, lock and unlock; the final TID is the TTID + NP (same partition
/// since TIDs are multiples of 16 * NP apart).
fn commit(db: &mut Database, n: u64, objects: &[Write<'_>]) -> Tid {
    let tid = tid(n);
    super::commit(db, Tid(tid.0 - u64::from(NP)), tid, objects);
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
fn pack_all(db: &mut Database, order: &PackOrder, limit: u64) -> usize {
    let mut steps = 0;
    for partition in 0..NP {
        let mut next = Some(Oid(0));
        while let Some(min_oid) = next {
            next = db.pack(partition, order, min_oid, limit).unwrap();
            steps += 1;
            assert!(steps < 10_000);
        }
    }
    db.commit().unwrap();
    steps
}

/// Serials of `oid` as stored, oldest first.
fn serials(engine: &impl Engine, oid: u64) -> Vec<Tid> {
    engine
        .objects()
        .into_iter()
        .filter(|row| row.oid == Oid(oid))
        .map(|row| row.serial)
        .collect()
}

fn data_at(db: &mut Database, oid: u64, at: Tid) -> Option<Vec<u8>> {
    match db.get_object(Oid(oid), Some(at), None).unwrap() {
        ObjectLookup::Found(record) => Some(record.data),
        ObjectLookup::NoMatchingRevision | ObjectLookup::OidDoesNotExist => None,
    }
}

pub fn pack_keeps_the_revision_current_at_pack_tid_and_everything_after<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    let t1 = commit(
        &mut db,
        1,
        &[(Oid(1), Some(b"a1"), None), (Oid(5), Some(b"b1"), None)],
    );
    let t2 = commit(&mut db, 2, &[(Oid(1), Some(b"a2"), None)]);
    let t3 = commit(
        &mut db,
        3,
        &[(Oid(1), Some(b"a3"), None), (Oid(5), Some(b"b3"), None)],
    );
    assert_eq!(engine.count("data"), 5);
    pack_all(&mut db, &full(tid(9), t2), 100);

    assert_eq!(serials(&engine, 1), [t2, t3]);
    // Oid 5 had a single revision at t2: it stays.
    assert_eq!(serials(&engine, 5), [t1, t3]);
    assert_eq!(data_at(&mut db, 1, t1), None);
    assert_eq!(data_at(&mut db, 1, t2).as_deref(), Some(&b"a2"[..]));
    assert_eq!(data_at(&mut db, 1, t3).as_deref(), Some(&b"a3"[..]));
    assert_eq!(data_at(&mut db, 5, t1).as_deref(), Some(&b"b1"[..]));
    assert_eq!(
        db.get_object(Oid(1), None, Some(t2)).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    // "a1" is gone from `data`; transaction metadata is never packed.
    assert_eq!(engine.count("data"), 4);
    assert_eq!(engine.count("trans"), 3);
    assert!(db.get_transaction(t1, false).unwrap().is_some());
}

pub fn a_deletion_current_at_pack_tid_goes_with_everything_before<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    commit(
        &mut db,
        1,
        &[(Oid(2), Some(b"x"), None), (Oid(6), Some(b"y"), None)],
    );
    let t2 = commit(&mut db, 2, &[(Oid(2), None, None), (Oid(6), None, None)]);
    let t3 = commit(&mut db, 3, &[(Oid(6), Some(b"y again"), None)]);
    pack_all(&mut db, &full(tid(9), t2), 100);

    assert_eq!(serials(&engine, 2), []);
    assert_eq!(
        db.get_object(Oid(2), None, None).unwrap(),
        ObjectLookup::OidDoesNotExist
    );
    assert_eq!(serials(&engine, 6), [t3]);
    assert_eq!(
        db.get_object(Oid(6), None, Some(t3)).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert_eq!(engine.count("data"), 1);
}

pub fn undo_records_keep_the_data_they_share<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    let t1 = commit(&mut db, 1, &[(Oid(3), Some(b"x"), None)]);
    let t2 = commit(&mut db, 2, &[(Oid(3), Some(b"y"), None)]);
    // Undo of t2: back to the data of t1, shared by data id.
    let t3 = commit(&mut db, 3, &[(Oid(3), None, Some(t1))]);
    let t4 = commit(&mut db, 4, &[(Oid(3), Some(b"z"), None)]);
    assert_eq!(engine.count("data"), 3);

    pack_all(&mut db, &full(tid(9), t2), 100);
    assert_eq!(serials(&engine, 3), [t2, t3, t4]);
    let record = match db.get_object(Oid(3), Some(t3), None).unwrap() {
        ObjectLookup::Found(record) => record,
        other => panic!("{other:?}"),
    };
    assert_eq!(record.data, b"x");
    assert_eq!(engine.count("data"), 3, "t3 still uses the data of t1");

    pack_all(&mut db, &full(tid(10), t3), 100);
    assert_eq!(serials(&engine, 3), [t3, t4]);
    assert_eq!(data_at(&mut db, 3, t3).as_deref(), Some(&b"x"[..]));
    assert_eq!(engine.count("data"), 2, "only \"y\" was pruned");
    // An undo of t3 can still reuse its data.
    let reused = db
        .store_data(Oid(3), Checksum::ZERO, b"", 0, Some(t3))
        .unwrap();
    assert!(reused.is_some());
    db.release_data(&[reused.unwrap()], false).unwrap();
}

pub fn a_partial_pack_only_touches_the_listed_oids<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    let t1 = commit(
        &mut db,
        1,
        &[
            (Oid(1), Some(b"a"), None),
            (Oid(2), Some(b"b"), None),
            (Oid(5), Some(b"c"), None),
        ],
    );
    let t2 = commit(
        &mut db,
        2,
        &[
            (Oid(1), Some(b"A"), None),
            (Oid(2), Some(b"B"), None),
            (Oid(5), Some(b"C"), None),
        ],
    );
    // Oid 9 is listed but has no record; oid 13 has no record either.
    pack_all(&mut db, &partial(tid(9), t2, &[5, 2, 9, 13]), 100);
    assert_eq!(serials(&engine, 1), [t1, t2]);
    assert_eq!(serials(&engine, 2), [t2]);
    assert_eq!(serials(&engine, 5), [t2]);
    assert_eq!(engine.count("data"), 4);
}

pub fn pack_in_small_batches_is_the_same_and_idempotent<E: Engine>() {
    let objects = |data: &'static [u8]| -> Vec<Write<'static>> {
        (0..40u64).map(|oid| (Oid(oid), Some(data), None)).collect()
    };
    let run = |limit: u64| {
        let (engine, mut db) = new_database::<E>(&[]);
        commit(&mut db, 1, &objects(b"one"));
        let t2 = commit(&mut db, 2, &objects(b"two"));
        commit(&mut db, 3, &objects(b"three"));
        let order = full(tid(9), t2);
        let steps = pack_all(&mut db, &order, limit);
        let first = engine.objects();
        pack_all(&mut db, &order, limit);
        assert_eq!(engine.objects(), first, "packing again changes nothing");
        // Packing at an earlier time after a later one changes nothing.
        pack_all(&mut db, &full(tid(10), tid(1)), limit);
        assert_eq!(engine.objects(), first);
        (steps, first, engine.count("data"))
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

pub fn pack_orders_are_stored_signed_rekeyed_and_listed<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[]);
    let t1 = commit(&mut db, 1, &[(Oid(1), Some(b"a"), None)]);

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
    vote(&mut db, ttid2, &[], Some(&order));
    assert_eq!(db.pack_orders(Tid::ZERO).unwrap(), []);
    // Lock with approval, unlock: re-keyed to the final TID.
    assert_eq!(db.sign_pack_orders(&[ttid2], &[]).unwrap(), [ttid2]);
    db.lock_transaction(ttid2, tid2).unwrap();
    db.unlock_transaction(ttid2, tid2).unwrap();
    db.commit().unwrap();
    order.id = tid2;
    order.approved = Some(true);
    assert_eq!(db.pack_orders(Tid::ZERO).unwrap(), [order.clone()]);
    assert_eq!(db.pack_orders(tid2).unwrap(), [order.clone()]);
    assert_eq!(db.pack_orders(Tid(tid2.0 + 1)).unwrap(), []);

    // An aborted or unfinished transaction leaves no order behind.
    let ttid3 = Tid(tid(3).0 - u64::from(NP));
    let unsigned = full(ttid3, t1);
    vote(&mut db, ttid3, &[], Some(&unsigned));
    db.abort_transaction(ttid3).unwrap();
    db.commit().unwrap();
    let ttid4 = Tid(tid(4).0 - u64::from(NP));
    vote(&mut db, ttid4, &[], Some(&full(ttid4, t1)));
    db.drop_unfinished_data().unwrap();
    assert_eq!(engine.count("pack"), 1);

    // NotifyPackSigned: rejection of a stored order; unknown ids ignored.
    assert_eq!(db.sign_pack_orders(&[Tid(42)], &[tid2]).unwrap(), [tid2]);
    db.commit().unwrap();
    assert_eq!(db.pack_orders(Tid::ZERO).unwrap()[0].approved, Some(false));

    // Completed pack ids per cell persist.
    let partition: Partition = 2;
    db.set_partition_packed(partition, tid2).unwrap();
    db.commit().unwrap();
    drop(db);
    let mut db = engine.open();
    let packs: Vec<(Partition, Option<Tid>)> = db
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
    db.change_partition_table(2, 0, &cells, false).unwrap();
    assert_eq!(db.pack_orders(Tid::ZERO).unwrap(), []);
}

/// A partial pack in steps of `limit` listed oids goes where a single
/// step goes, giving the next listed oid of the partition each time.
pub fn a_partial_pack_goes_in_steps<E: Engine>() {
    let oids: Vec<u64> = (0..6).map(|n| 1 + n * u64::from(NP)).collect();
    let writes = |data: &'static [u8]| -> Vec<Write<'static>> {
        oids.iter()
            .map(|&oid| (Oid(oid), Some(data), None))
            .collect()
    };
    let run = |limit: u64| {
        let (engine, mut db) = new_database::<E>(&[]);
        commit(&mut db, 1, &writes(b"one"));
        let t2 = commit(&mut db, 2, &writes(b"two"));
        // Listed out of order, twice, with an oid of another partition.
        let mut listed = vec![2];
        listed.extend(oids.iter().rev());
        listed.extend(&oids);
        let order = partial(tid(9), t2, &listed);
        let mut starts = Vec::new();
        let mut next = Some(Oid(0));
        while let Some(min_oid) = next {
            starts.push(min_oid);
            next = db.pack(1, &order, min_oid, limit).unwrap();
        }
        db.commit().unwrap();
        (starts, engine.objects(), engine.count("data"))
    };
    let (starts, small, data_small) = run(4);
    assert_eq!(starts, [Oid(0), Oid(17)]);
    let (starts, big, data_big) = run(100);
    assert_eq!(starts, [Oid(0)]);
    assert_eq!(small, big);
    assert_eq!(small.len(), 6, "one record left of each oid");
    assert_eq!((data_small, data_big), (6, 6));
}
