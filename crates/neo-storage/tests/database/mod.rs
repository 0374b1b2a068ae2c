//! The tests of the storage rules ([`Database`]), written once and run
//! against every engine: an engine's test file implements [`Engine`] and
//! instantiates them with `database::suite!(Engine)`.
//!
//! The modules go by rule: the life of transactions (`transactions`),
//! the partition table and own cells (`partitions`), undo chains
//! (`undo`), pack (`pack`), replication and replica checks
//! (`replication`).

pub mod pack;
pub mod partitions;
pub mod replication;
pub mod transactions;
pub mod undo;

use neo_proto::{CellState, Checksum, NodeId, NodeType, Oid, Partition, Tid};
use neo_storage::backend::{ObjectRecord, ObjectRow, PackOrder, TransactionMeta};
use neo_storage::db::{Database, ObjectLookup};
use sha1::{Digest, Sha1};

/// An engine under test: a database of its own, and a look at its rows
/// that does not go through the rules.
pub trait Engine {
    /// A new, empty database.
    fn create() -> Self;
    /// Opens the database, again after a drop of the previous [`Database`].
    fn open(&self) -> Database;
    /// Number of rows of `table`, committed.
    fn count(&self, table: &str) -> u64;
    /// Every committed object row, by oid then serial.
    fn objects(&self) -> Vec<ObjectDump>;
}

/// An object row as the engine stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectDump {
    /// The object.
    pub oid: Oid,
    /// The serial.
    pub serial: Tid,
    /// The undo back-pointer.
    pub data_serial: Option<Tid>,
    /// The data row it uses, if it has data and that row exists.
    pub data_id: Option<u64>,
}

/// Instantiates every test of the suite for an engine type.
macro_rules! suite {
    ($engine:ident) => {
        $crate::database::suite!(@each $engine;
            transactions {
                store_lock_unlock_then_load_at_and_before,
                deletion_and_undo_records,
                abort_drops_temporary_rows_and_their_data,
                drop_unfinished_data_forgets_voted_and_held_data,
                data_ids_are_allocated_per_partition,
                data_held_by_a_store_in_progress_survives_pack,
                truncate_deletes_everything_after_the_tid,
                reopen_keeps_committed_data_and_locked_transactions,
                reads_on_non_readable_partitions_are_refused,
                reset_forgets_everything,
                out_of_range_ids_are_errors,
            }
            partitions {
                partition_table_persistence_and_out_of_date_progress,
                an_own_cell_outdated_in_backup_mode_is_complete_up_to_the_backup_tid,
                new_own_cells_start_with_their_pack_id,
                truncate_lowers_the_progress_of_own_out_of_date_cells,
                a_new_nid_takes_the_own_cells_along,
                partitions_beyond_what_a_storage_holds_are_refused,
            }
            undo {
                undo_of_an_undo_points_back_to_the_original_serial,
                what_the_undoing_transaction_stored_is_current,
                a_back_pointer_to_a_packed_record_ends_the_chain,
                a_back_pointer_forward_in_time_is_corruption,
            }
            pack {
                pack_keeps_the_revision_current_at_pack_tid_and_everything_after,
                a_deletion_current_at_pack_tid_goes_with_everything_before,
                undo_records_keep_the_data_they_share,
                a_partial_pack_only_touches_the_listed_oids,
                a_partial_pack_goes_in_steps,
                pack_in_small_batches_is_the_same_and_idempotent,
                pack_orders_are_stored_signed_rekeyed_and_listed,
            }
            replication {
                check_digests_are_byte_identical_to_neo_s,
                a_source_lists_and_fetches_records_in_tid_then_oid_order,
                replicated_records_are_stored_directly_and_deleted,
                the_completed_pack_of_a_replicated_cell_only_goes_down,
                a_dropped_partition_is_deleted_in_steps,
            }
        );
    };
    (@each $engine:ident; $($module:ident { $($test:ident),* $(,)? })*) => {
        $(mod $module {
            $(
                #[test]
                fn $test() {
                    $crate::database::$module::$test::<super::$engine>();
                }
            )*
        })*
    };
}
pub(crate) use suite;

/// Partitions of the databases of the suite.
pub const NP: u32 = 4;

pub fn own_nid() -> NodeId {
    NodeId::new(NodeType::Storage, 1).unwrap()
}

pub fn other_nid() -> NodeId {
    NodeId::new(NodeType::Storage, 2).unwrap()
}

/// A fresh database of cluster "test": own node has every partition
/// UP_TO_DATE, except those listed as `out_of_date`.
pub fn new_database<E: Engine>(out_of_date: &[Partition]) -> (E, Database) {
    let engine = E::create();
    let mut db = engine.open();
    db.set_name("test").unwrap();
    db.set_nid(own_nid()).unwrap();
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
    db.change_partition_table(1, 0, &cells, true).unwrap();
    (engine, db)
}

pub fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}

/// One object written by a test transaction: oid, data (`None` = no
/// data), back-pointer.
pub type Write<'a> = (Oid, Option<&'a [u8]>, Option<Tid>);

/// Stores and votes one transaction writing `objects`, with its pack
/// order, as a storage node does; committed (end of vote).
pub fn vote(db: &mut Database, ttid: Tid, objects: &[Write<'_>], pack: Option<&PackOrder>) {
    let mut rows = Vec::new();
    for &(oid, data, data_tid) in objects {
        let (sum, bytes) = match data {
            Some(data) => (checksum(data), data),
            None => (Checksum::ZERO, &b""[..]),
        };
        let data_id = db.store_data(oid, sum, bytes, 0, data_tid).unwrap();
        rows.push(ObjectRow {
            oid,
            data_id,
            data_serial: data_tid,
        });
    }
    let meta = TransactionMeta {
        oids: objects.iter().map(|o| o.0).collect(),
        user: b"user".to_vec(),
        description: format!("txn {ttid}").into_bytes(),
        extension: Vec::new(),
        packed: false,
        ttid,
    };
    if let Some(order) = pack {
        db.store_pack_order(order).unwrap();
    }
    db.store_transaction(ttid, &rows, Some(&meta), true)
        .unwrap();
    db.commit().unwrap();
}

/// Votes, locks and unlocks one transaction, committing as a storage node
/// does.
pub fn commit(db: &mut Database, ttid: Tid, tid: Tid, objects: &[Write<'_>]) {
    vote(db, ttid, objects, None);
    db.lock_transaction(ttid, tid).unwrap();
    db.unlock_transaction(ttid, tid).unwrap();
    db.commit().unwrap();
}

pub fn found(lookup: ObjectLookup) -> ObjectRecord {
    match lookup {
        ObjectLookup::Found(record) => record,
        other => panic!("expected a record, got {other:?}"),
    }
}
