//! Replication and replica checks, the database side: what a source lists
//! and sends, what a replicating node stores and deletes, NEO's check
//! digests, and dropped partitions deleted in steps.

use neo_proto::packets::{AnswerCheckSerialRange, AnswerCheckTIDRange};
use neo_proto::{CellState, Checksum, Oid, Tid};
use neo_storage::backend::{PackOrder, TransactionMeta};

use super::{checksum, commit, found, new_database, other_nid, own_nid, Engine};

// The TIDs of the NEO/py cluster of `session-replication.jsonl` (4
// partitions): its check answers are the expected digests below.
const T1: Tid = Tid(0x040d_42d9_a60c_d888);
const T2: Tid = Tid(0x040d_42d9_a614_3eed);
const T3: Tid = Tid(0x040d_42d9_a618_1621);
const T4: Tid = Tid(0x040d_42d9_a61b_e702);
const T5: Tid = Tid(0x040d_42d9_a620_4599);

/// The committed transactions of that session: oid 0 written by the first
/// four, oids 1, 2, 3 by the others.
fn session<E: Engine>() -> (E, neo_storage::db::Database) {
    let (engine, mut db) = new_database::<E>(&[]);
    let writes: [(Tid, &[u64]); 5] = [
        (T1, &[0]),
        (T2, &[0, 1]),
        (T3, &[0, 2]),
        (T4, &[0, 3]),
        (T5, &[1]),
    ];
    for (tid, oids) in writes {
        let objects: Vec<_> = oids
            .iter()
            .map(|&oid| (Oid(oid), Some(&b"data"[..]), None))
            .collect();
        commit(&mut db, tid, tid, &objects);
    }
    (engine, db)
}

fn hash(hex: &str) -> Checksum {
    Checksum(hex::decode(hex).unwrap().try_into().unwrap())
}

pub fn check_digests_are_byte_identical_to_neo_s<E: Engine>() {
    let (_engine, mut db) = session::<E>();
    // Answers of NEO/py's storage in session-replication.jsonl, seq
    // 258-272, for the same rows; then chunks, computed with Python's
    // hashlib, as `(partition, length, min_tid, min_oid)` and the answer.
    let tid_ranges = [
        (
            (0, 40000, Tid::ZERO),
            (1, "e5e577e52d0300b1d9310de998aa365713edcbc4", T1),
        ),
        (
            (1, 40000, Tid::ZERO),
            (3, "0a4df02dcdf15d423a32f25169cd60c427778600", T5),
        ),
        (
            (1, 2, Tid::ZERO),
            (2, "2fd3c067a342dba3176b1e4bb67007aaafd4a974", T3),
        ),
    ];
    for ((partition, length, min_tid), (count, digest, max_tid)) in tid_ranges {
        let answer = AnswerCheckTIDRange {
            count,
            digest: hash(digest),
            max_tid,
        };
        let computed = db.check_tid_range(partition, length, min_tid, T5).unwrap();
        assert_eq!(computed, answer, "partition {partition}");
    }
    let empty = db.check_tid_range(3, 40000, Tid::ZERO, T5).unwrap();
    assert_eq!(
        (empty.count, empty.digest, empty.max_tid),
        (0, Checksum::ZERO, Tid::ZERO)
    );
    const OIDS_0: &str = "9d2ca0be9516829de88f8c23293faa33c450089f";
    const OIDS_00: &str = "e499ce7a21cd46c8d0365556b91594af1048e045";
    let serial_ranges = [
        (
            (0, 40000, Tid::ZERO, 0),
            (4, "85407dca1c12acc1f67271ddef430c8ef938a2cf", T4, OIDS_0, 0),
        ),
        (
            (1, 40000, Tid::ZERO, 0),
            (
                2,
                "45da3246d79359ccfdd65bb2f4fe8557f917e5ed",
                T5,
                "a6322dae6eb1e2bf764a57fa0b8671cf570b546d",
                1,
            ),
        ),
        (
            (3, 40000, Tid::ZERO, 0),
            (
                1,
                "2f4a050edd2b6edee6b3ea6a5f332539921d332a",
                T4,
                "77de68daecd823babbb58edb1c8e14d7106e83bb",
                3,
            ),
        ),
        (
            (0, 2, Tid::ZERO, 0),
            (
                2,
                "7bd49bdd81b35dcf67fb4aecfac6603abb89f2d4",
                T2,
                OIDS_00,
                0,
            ),
        ),
        (
            (0, 2, T2, 1),
            (
                2,
                "70c68f3f9f61348a7e4e1d7c18ec4f292d4e7035",
                T4,
                OIDS_00,
                0,
            ),
        ),
    ];
    for ((partition, length, min_tid, min_oid), expected) in serial_ranges {
        let (count, tids, max_tid, oids, max_oid) = expected;
        let answer = AnswerCheckSerialRange {
            count,
            tid_digest: hash(tids),
            max_tid,
            oid_digest: hash(oids),
            max_oid: Oid(max_oid),
        };
        let computed = db
            .check_serial_range(partition, length, min_tid, T5, Oid(min_oid))
            .unwrap();
        assert_eq!(computed, answer, "partition {partition} from {min_tid}");
    }
    let empty = db.check_serial_range(3, 40000, T5, T5, Oid(0)).unwrap();
    assert_eq!(
        (
            empty.count,
            empty.tid_digest,
            empty.oid_digest,
            empty.max_oid
        ),
        (0, Checksum::ZERO, Checksum::ZERO, Oid(0))
    );
}

pub fn a_source_lists_and_fetches_records_in_tid_then_oid_order<E: Engine>() {
    let (_engine, mut db) = session::<E>();
    assert_eq!(
        db.replication_tid_list(Tid::ZERO, T5, 1000, 1).unwrap(),
        [T2, T3, T5]
    );
    assert_eq!(db.replication_tid_list(T3, T5, 1, 1).unwrap(), [T3]);
    // Partition 0 holds oid 0 only; from (T2, oid 1): T2 is past.
    assert_eq!(
        db.replication_object_list(Tid::ZERO, T5, 1000, 0, Oid(0))
            .unwrap(),
        [(T1, Oid(0)), (T2, Oid(0)), (T3, Oid(0)), (T4, Oid(0))]
    );
    assert_eq!(
        db.replication_object_list(T2, T5, 1000, 0, Oid(1)).unwrap(),
        [(T3, Oid(0)), (T4, Oid(0))]
    );
    assert_eq!(
        db.replication_object_list(T2, T3, 1, 0, Oid(0)).unwrap(),
        [(T2, Oid(0))]
    );
    assert!(db
        .replication_object_list(T5, T1, 1000, 0, Oid(0))
        .unwrap()
        .is_empty());
    let record = db.fetch_object(Oid(1), T5).unwrap().unwrap();
    assert_eq!((record.serial, &record.data[..]), (T5, &b"data"[..]));
    assert_eq!(record.checksum, checksum(b"data"));
    assert!(db.fetch_object(Oid(1), T4).unwrap().is_none());
    let (meta, pack) = db.fetch_transaction(T2).unwrap().unwrap();
    assert_eq!((meta.oids, pack), (vec![Oid(0), Oid(1)], None));
}

pub fn replicated_records_are_stored_directly_and_deleted<E: Engine>() {
    // Partition 1 is being replicated here.
    let (engine, mut db) = new_database::<E>(&[1]);
    let meta = TransactionMeta {
        oids: vec![Oid(1)],
        user: b"u".to_vec(),
        description: b"d".to_vec(),
        extension: Vec::new(),
        packed: false,
        ttid: T2,
    };
    let order = PackOrder {
        id: T5,
        approved: Some(true),
        partial: false,
        oids: None,
        pack_tid: T1,
    };
    db.store_transaction(T5, &[], Some(&meta), false).unwrap();
    db.store_pack_order(&order).unwrap();
    let sum = checksum(b"first");
    // A record received twice (an interrupted replication) is replaced.
    for _ in 0..2 {
        db.add_object(Oid(1), T2, Some((0, sum, b"first")), None)
            .unwrap();
    }
    // An undo record whose original is here shares its data; one whose
    // original is not takes the data sent.
    db.add_object(Oid(1), T3, Some((0, sum, b"first")), Some(T2))
        .unwrap();
    let other = checksum(b"other");
    db.add_object(Oid(5), T3, Some((0, other, b"other")), Some(T1))
        .unwrap();
    // A deletion.
    db.add_object(Oid(1), T5, None, None).unwrap();
    db.commit().unwrap();
    assert_eq!(engine.count("data"), 2);
    let objects = engine.objects();
    assert_eq!(objects.len(), 4);
    assert_eq!(objects[0].data_id, objects[1].data_id, "{objects:?}");
    assert_eq!((engine.count("trans"), engine.count("pack")), (1, 1));

    db.delete_object(Oid(5), T3).unwrap();
    db.delete_object(Oid(1), T2).unwrap();
    db.delete_transaction(T5).unwrap();
    db.commit().unwrap();
    // The undo record keeps the data it shared.
    assert_eq!(engine.count("data"), 1);
    assert_eq!(engine.count("obj"), 2);
    assert_eq!(engine.count("trans"), 0);
    assert_eq!(engine.count("pack"), 0);
    // Readable again, the cell serves what was replicated.
    db.change_partition_table(2, 0, &[(1, own_nid(), CellState::UpToDate)], false)
        .unwrap();
    let record = found(db.get_object(Oid(1), Some(T3), None).unwrap());
    assert_eq!(
        (&record.data[..], record.data_serial),
        (&b"first"[..], Some(T2))
    );
}

pub fn the_completed_pack_of_a_replicated_cell_only_goes_down<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    db.change_partition_table(2, 0, &[(2, own_nid(), CellState::OutOfDate)], false)
        .unwrap();
    db.set_partition_packed(2, T3).unwrap();
    db.update_completed_pack_by_replication(2, T4).unwrap();
    assert_eq!(db.assigned_cells()[2].pack, Some(T3));
    db.update_completed_pack_by_replication(2, T1).unwrap();
    assert_eq!(db.assigned_cells()[2].pack, Some(T1));
}

pub fn a_dropped_partition_is_deleted_in_steps<E: Engine>() {
    let (engine, mut db) = session::<E>();
    let order = PackOrder {
        id: T5,
        approved: None,
        partial: false,
        oids: None,
        pack_tid: T1,
    };
    db.store_pack_order(&order).unwrap();
    db.commit().unwrap();
    let dropped = db
        .change_partition_table(
            2,
            0,
            &[
                (1, other_nid(), CellState::UpToDate),
                (1, own_nid(), CellState::Discarded),
            ],
            false,
        )
        .unwrap();
    assert_eq!(dropped, [1].into_iter().collect());
    let (objects, transactions) = (engine.count("obj"), engine.count("trans"));
    let mut steps = 0;
    while !db.drop_partition(1, 1).unwrap() {
        steps += 1;
        assert!(steps < 10, "never done");
    }
    db.commit().unwrap();
    // Two records of oid 1, then three transactions, one row a step.
    assert_eq!(steps, 5);
    assert_eq!(engine.count("obj"), objects - 2);
    assert_eq!(engine.count("trans"), transactions - 3);
    assert_eq!(engine.count("pack"), 0, "T5 carried the pack order");
    assert!(db.drop_partition(1, 1).unwrap(), "done stays done");
    // The data of oid 1 went with its records; the rest stays.
    assert!(engine
        .objects()
        .iter()
        .all(|object| object.oid != Oid(1) && object.data_id.is_some()));
    // A new table from the master: every partition not assigned goes.
    let mut table = vec![(0, own_nid(), CellState::UpToDate)];
    table.extend((1..4).map(|p| (p, other_nid(), CellState::UpToDate)));
    let dropped = db.change_partition_table(3, 0, &table, true).unwrap();
    assert_eq!(dropped, [1, 2, 3].into_iter().collect());
}
