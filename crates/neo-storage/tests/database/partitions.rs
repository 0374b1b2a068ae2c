//! The partition table of the storage: persistence, readability, and what
//! changes do to own cells (replication progress, pack ids).

use neo_proto::{CellState, NodeId, NodeType, Oid, Partition, Tid};
use neo_storage::backend::{Error, PackOrder, RequestError};
use neo_storage::db::Database;

use super::{commit, new_database, other_nid, own_nid, Engine, NP};

fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n)
}

/// Every cell of the partition table, by partition then nid.
pub fn pt_cells(db: &Database) -> Vec<(Partition, NodeId, CellState)> {
    let Some(pt) = db.partition_table() else {
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

/// The table after the changes of
/// [`partition_table_persistence_and_out_of_date_progress`]: own cell 1
/// OUT_OF_DATE and complete up to `tid(9)`, other cells as listed there.
pub fn changed_table<E: Engine>() -> (E, Database) {
    let (engine, mut db) = new_database::<E>(&[]);
    commit(&mut db, tid(1), tid(1), &[(Oid(1), Some(b"a"), None)]);
    commit(&mut db, tid(5), tid(5), &[(Oid(2), Some(b"b"), None)]);
    // Own cell 1 becomes OUT_OF_DATE: complete up to its last data (tid 5
    // is in partition 1 of trans; oid 1 wrote tid 1 in partition 1).
    // Another node gets cells; cell 3 is discarded.
    db.change_partition_table(
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
    assert!(!db.has_uncommitted());
    let cells = db.assigned_cells();
    assert_eq!(cells[1].complete_up_to, Some(tid(5)));
    // Replication progress, kept by a later change of the same cell.
    db.update_cell_tid(1, tid(9)).unwrap();
    db.update_cell_tid(0, tid(9)).unwrap(); // readable: no-op
    db.change_partition_table(3, 1, &[(1, own_nid(), CellState::OutOfDate)], false)
        .unwrap();
    (engine, db)
}

/// The `pt` rows `(partition, nid, tid, pack)` NEO/py writes for
/// [`changed_table`] (§12.3): `tid` is the progress of an own
/// OUT_OF_DATE cell, else minus the state; `pack` only for own cells.
pub fn changed_table_rows() -> Vec<(i64, i64, i64, Option<i64>)> {
    let own = i64::from(own_nid().0);
    let other = i64::from(other_nid().0);
    let progress = tid(9).0 as i64;
    vec![
        (0, own, -1, Some(0)),
        (0, other, -2, None),
        (1, own, progress, Some(0)),
        (1, other, -1, None),
        (2, own, -1, Some(0)),
        (2, other, 0, None),
        (3, other, -1, None),
    ]
}

pub fn partition_table_persistence_and_out_of_date_progress<E: Engine>() {
    let (engine, mut db) = changed_table::<E>();
    assert_eq!(db.ptid().unwrap(), Some(3));
    assert_eq!(db.num_replicas().unwrap(), 1);
    let expected_pt = vec![
        (0, own_nid(), CellState::UpToDate),
        (0, other_nid(), CellState::Feeding),
        (1, own_nid(), CellState::OutOfDate),
        (1, other_nid(), CellState::UpToDate),
        (2, own_nid(), CellState::UpToDate),
        (2, other_nid(), CellState::OutOfDate),
        (3, other_nid(), CellState::UpToDate),
    ];
    assert_eq!(pt_cells(&db), expected_pt);
    assert_eq!(db.readable_partitions(), [0, 2].into_iter().collect());
    let cells = db.assigned_cells();
    assert_eq!(cells.len(), 3);
    assert_eq!(cells[1].partition, 1);
    assert_eq!(cells[1].state, CellState::OutOfDate);
    assert_eq!(cells[1].complete_up_to, Some(tid(9)));
    assert_eq!(cells[0].complete_up_to, None);
    drop(db);

    let mut db = engine.open();
    assert_eq!(pt_cells(&db), expected_pt);
    assert_eq!(db.num_partitions(), NP);
    assert_eq!(db.readable_partitions(), [0, 2].into_iter().collect());
    let cells = db.assigned_cells();
    assert_eq!(cells[1].complete_up_to, Some(tid(9)));
    assert_eq!(cells[0].state, CellState::UpToDate);
    assert!(cells.iter().all(|cell| cell.pack == Some(Tid::ZERO)));
    // A full reset replaces everything.
    db.change_partition_table(4, 0, &[(0, own_nid(), CellState::UpToDate)], true)
        .unwrap();
    assert_eq!(db.num_partitions(), 1);
    assert_eq!(pt_cells(&db), vec![(0, own_nid(), CellState::UpToDate)]);
}

pub fn an_own_cell_outdated_in_backup_mode_is_complete_up_to_the_backup_tid<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    commit(&mut db, tid(1), tid(1), &[(Oid(1), Some(b"a"), None)]);
    db.set_backup_tid(Some(tid(41))).unwrap();
    db.change_partition_table(2, 0, &[(1, own_nid(), CellState::OutOfDate)], false)
        .unwrap();
    let cell = db.assigned_cells()[1];
    assert_eq!(
        (cell.partition, cell.state, cell.complete_up_to),
        (1, CellState::OutOfDate, Some(tid(41)))
    );
}

/// A new own cell that must be replicated has completed the last approved
/// pack (replication lowers it if the source has not); one created
/// readable has completed none; the pack id of a cell that stays is kept.
pub fn new_own_cells_start_with_their_pack_id<E: Engine>() {
    let engine = E::create();
    let mut db = engine.open();
    db.set_nid(own_nid()).unwrap();
    let cells = [
        (0, own_nid(), CellState::UpToDate),
        (1, own_nid(), CellState::UpToDate),
        (2, other_nid(), CellState::UpToDate),
        (3, other_nid(), CellState::UpToDate),
    ];
    db.change_partition_table(1, 0, &cells, true).unwrap();
    let approved = tid(18);
    db.store_pack_order(&PackOrder {
        id: approved,
        approved: Some(true),
        partial: false,
        oids: None,
        pack_tid: tid(2),
    })
    .unwrap();
    db.set_partition_packed(1, tid(6)).unwrap();
    db.commit().unwrap();
    db.change_partition_table(
        2,
        0,
        &[
            (1, own_nid(), CellState::OutOfDate),
            (2, own_nid(), CellState::OutOfDate),
            (3, own_nid(), CellState::UpToDate),
        ],
        false,
    )
    .unwrap();
    let packs: Vec<_> = db
        .assigned_cells()
        .iter()
        .map(|cell| (cell.partition, cell.pack, cell.complete_up_to))
        .collect();
    assert_eq!(
        packs,
        [
            (0, Some(Tid::ZERO), None),
            (1, Some(tid(6)), Some(Tid::ZERO)),
            (2, Some(approved), Some(Tid::ZERO)),
            (3, Some(Tid::ZERO), None),
        ]
    );
}

pub fn truncate_lowers_the_progress_of_own_out_of_date_cells<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[1, 2]);
    db.update_cell_tid(1, tid(9)).unwrap();
    db.update_cell_tid(2, tid(3)).unwrap();
    db.set_truncate_tid(Some(tid(5))).unwrap();
    db.commit().unwrap();
    assert_eq!(db.truncate().unwrap(), Some(tid(5)));
    drop(db);
    let db = engine.open();
    let progress: Vec<_> = db
        .assigned_cells()
        .iter()
        .map(|cell| cell.complete_up_to)
        .collect();
    assert_eq!(progress, [None, Some(tid(5)), Some(tid(3)), None]);
}

pub fn a_new_nid_takes_the_own_cells_along<E: Engine>() {
    let (engine, mut db) = new_database::<E>(&[3]);
    db.update_cell_tid(3, tid(7)).unwrap();
    let new_nid = NodeId::new(NodeType::Storage, 7).unwrap();
    db.set_nid(new_nid).unwrap();
    db.commit().unwrap();
    let check = |db: &Database| {
        assert!(pt_cells(db).iter().all(|(_, nid, _)| *nid == new_nid));
        assert_eq!(db.readable_partitions(), [0, 1, 2].into_iter().collect());
        let cells = db.assigned_cells();
        assert_eq!(cells.len(), NP as usize);
        assert_eq!(cells[3].complete_up_to, Some(tid(7)));
    };
    check(&db);
    drop(db);
    let mut db = engine.open();
    assert_eq!(db.nid().unwrap(), Some(new_nid));
    check(&db);
}

pub fn partitions_beyond_what_a_storage_holds_are_refused<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    let err = db
        .change_partition_table(2, 0, &[(1 << 16, other_nid(), CellState::UpToDate)], false)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Request(RequestError::PartitionOutOfRange { partition: 65536 })
        ),
        "{err}"
    );
    assert_eq!(db.ptid().unwrap(), Some(1));
    assert_eq!(db.num_partitions(), NP);
}
