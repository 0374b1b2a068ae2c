//! Undo chains (§8.3 `findUndoTID`): back-pointers lead to the serial that
//! originally wrote the data, and records are compared by it.

use neo_proto::{Oid, Tid};
use neo_storage::backend::{Error, FatalError, ObjectRow, PackOrder};
use neo_storage::db::{Database, UndoLookup, UndoSerial};

use super::{checksum, commit, found, new_database, Engine};

fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n)
}

const OID: Oid = Oid(2);

fn undo_serial(db: &mut Database, undone: Tid, current: Option<Tid>) -> (Tid, Option<Tid>, bool) {
    match db.find_undo_tid(OID, tid(100), undone, current).unwrap() {
        UndoLookup::Found(UndoSerial {
            current_serial,
            undo_serial,
            is_current,
        }) => (current_serial, undo_serial, is_current),
        other => panic!("undo of {undone}: {other:?}"),
    }
}

/// v1 at 1, v2 at 2, 3 undoes 2 (back to 1), 4 undoes 3 (back to 2).
fn undo_history<E: Engine>() -> (E, Database) {
    let (engine, mut db) = new_database::<E>(&[]);
    commit(&mut db, tid(1), tid(1), &[(OID, Some(b"v1"), None)]);
    commit(&mut db, tid(2), tid(2), &[(OID, Some(b"v2"), None)]);
    commit(&mut db, tid(3), tid(3), &[(OID, Some(b"v1"), Some(tid(1)))]);
    commit(&mut db, tid(4), tid(4), &[(OID, Some(b"v2"), Some(tid(2)))]);
    (engine, db)
}

pub fn undo_of_an_undo_points_back_to_the_original_serial<E: Engine>() {
    let (_engine, mut db) = undo_history::<E>();
    let latest = found(db.get_object(OID, None, None).unwrap());
    assert_eq!(
        (latest.serial, latest.data_serial, latest.data.as_slice()),
        (tid(4), Some(tid(2)), &b"v2"[..])
    );
    // 4 restored 2: undoing 2 again is undoing what is current, and the
    // greatest equivalent serial is the current one.
    assert_eq!(
        undo_serial(&mut db, tid(2), None),
        (tid(4), Some(tid(1)), true)
    );
    assert_eq!(
        undo_serial(&mut db, tid(4), None),
        (tid(4), Some(tid(1)), true)
    );
    // 3 (the data of 1) is not current any more; before it was 2.
    assert_eq!(
        undo_serial(&mut db, tid(3), None),
        (tid(4), Some(tid(2)), false)
    );
    // Undoing the creation: nothing before it.
    assert_eq!(undo_serial(&mut db, tid(1), None), (tid(4), None, false));
    // Seen from before the undo records, 2 is current.
    assert_eq!(
        db.find_undo_tid(OID, tid(3), tid(2), None).unwrap(),
        UndoLookup::Found(UndoSerial {
            current_serial: tid(2),
            undo_serial: Some(tid(1)),
            is_current: true,
        })
    );
}

/// What the undoing transaction already stored for the oid is what it
/// sees: a back-pointer is compared as the record it points to.
pub fn what_the_undoing_transaction_stored_is_current<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    commit(&mut db, tid(1), tid(1), &[(OID, Some(b"v1"), None)]);
    commit(&mut db, tid(2), tid(2), &[(OID, Some(b"v2"), None)]);
    let undoing = tid(9);
    // It already undid 2 (back to 1): 2 is not current for it.
    assert_eq!(
        undo_serial(&mut db, tid(2), Some(tid(1))),
        (tid(1), Some(tid(1)), false)
    );
    // It stored a back-pointer to 2 itself: 2 is current.
    assert_eq!(
        undo_serial(&mut db, tid(2), Some(tid(2))),
        (tid(2), Some(tid(1)), true)
    );
    // It stored new data: not current.
    assert_eq!(
        undo_serial(&mut db, tid(2), Some(undoing)),
        (undoing, Some(tid(1)), false)
    );
}

/// Pack removed the record an undo record points to: the undo record is
/// the oldest equivalent left, and it still has its data.
pub fn a_back_pointer_to_a_packed_record_ends_the_chain<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    commit(&mut db, tid(1), tid(1), &[(OID, Some(b"v1"), None)]);
    commit(&mut db, tid(2), tid(2), &[(OID, Some(b"v2"), None)]);
    commit(&mut db, tid(3), tid(3), &[(OID, Some(b"v1"), Some(tid(1)))]);
    let order = PackOrder {
        id: tid(10),
        approved: Some(true),
        partial: false,
        oids: None,
        pack_tid: tid(2),
    };
    let partition = (OID.0 % u64::from(super::NP)) as u32;
    assert_eq!(db.pack(partition, &order, Oid(0), 100).unwrap(), None);
    db.commit().unwrap();
    let undo = found(db.get_object(OID, Some(tid(3)), None).unwrap());
    assert_eq!(
        (undo.data_serial, undo.data.as_slice()),
        (Some(tid(1)), &b"v1"[..])
    );
    assert_eq!(
        undo_serial(&mut db, tid(3), None),
        (tid(3), Some(tid(2)), true)
    );
    assert_eq!(undo_serial(&mut db, tid(2), None), (tid(3), None, false));
}

/// Back-pointers go back in time; one that points forward would loop.
pub fn a_back_pointer_forward_in_time_is_corruption<E: Engine>() {
    let (_engine, mut db) = new_database::<E>(&[]);
    let data_id = db.store_data(OID, checksum(b"v"), b"v", 0, None).unwrap();
    let row = ObjectRow {
        oid: OID,
        data_id,
        data_serial: Some(tid(6)),
    };
    // As replication would store it.
    db.store_transaction(tid(3), &[row], None, false).unwrap();
    db.commit().unwrap();
    let err = db.find_undo_tid(OID, tid(9), tid(3), None).unwrap_err();
    assert!(
        matches!(err, Error::Fatal(FatalError::Corrupted(_))),
        "{err}"
    );
}
