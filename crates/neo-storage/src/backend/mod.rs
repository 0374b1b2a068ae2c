//! Storage backends: where a storage node keeps its partitions
//! (architecture.md §12).
//!
//! The node talks to its database only through [`Backend`]. The trait is
//! synchronous and takes `&mut self` everywhere: a backend is owned by one
//! node task, and a write transaction of the underlying database is open
//! between the first write and the next [`Backend::commit`] (or the commit
//! implied by [`Backend::change_partition_table`]).
//!
//! Vocabulary: an *oid* names an object, a *tid* a committed transaction,
//! a *ttid* a transaction in progress (it becomes its tid at lock); objects
//! are placed in partition `oid % np`, transaction metadata in `tid % np`;
//! a *cell* is one partition assigned to one storage node.

mod error;
mod lock;
mod sqlite;

use std::collections::{BTreeMap, BTreeSet};

pub use error::{Error, FatalError, OpenError, RequestError};
pub use neo_proto::packets::{HistoryEntry, PackOrder, UndoSerial};
use neo_proto::{CellState, Checksum, NodeId, Oid, Partition, Ptid, Tid};
pub use sqlite::{OpenOptions, SqliteBackend, SCHEMA_VERSION};

/// Row id of a raw data record; allocated per partition in
/// `[p << 48, (p + 1) << 48)` so that a partition's data is contiguous.
pub type DataId = u64;

/// Result of backend operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One object revision as served to `AskObject` (§7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRecord {
    /// Tid of the transaction that wrote this revision.
    pub serial: Tid,
    /// Serial of the next revision of the same oid, if any.
    pub next_serial: Option<Tid>,
    /// 0 (raw) or 1 (zlib); `None` when the record has no data.
    pub compression: Option<u8>,
    /// SHA-1 of `data`, or [`Checksum::ZERO`] when the record has no data
    /// (deletion or undone creation).
    pub checksum: Checksum,
    /// The stored (possibly compressed) bytes.
    pub data: Vec<u8>,
    /// Back-pointer of an undo record: the serial whose data this is.
    pub data_serial: Option<Tid>,
}

/// Outcome of [`Backend::get_object`]; the two misses map to different
/// protocol errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectLookup {
    /// The revision asked for.
    Found(ObjectRecord),
    /// The oid has records, but none matches `at`/`before` (`OID_NOT_FOUND`).
    NoMatchingRevision,
    /// The oid has no record at all (`OID_DOES_NOT_EXIST`).
    OidDoesNotExist,
}

/// Outcome of [`Backend::find_undo_tid`] (§8.3).
#[derive(Clone, Debug, PartialEq)]
pub enum UndoLookup {
    /// What the client needs to undo this oid.
    Found(UndoSerial),
    /// The undone transaction has no record of this oid: nothing to undo.
    NoRecord,
    /// The undone transaction is not visible from the snapshot
    /// (`OID_NOT_FOUND`, "non-undoable transaction").
    NotVisible,
}

/// Metadata of a transaction (`trans` / `ttrans` rows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionMeta {
    /// Oids sent by the committing client, in its order (checked ones
    /// included).
    pub oids: Vec<Oid>,
    /// ZODB user name.
    pub user: Vec<u8>,
    /// ZODB description.
    pub description: Vec<u8>,
    /// Pickled extension.
    pub extension: Vec<u8>,
    /// Only true for transactions imported from a packed FileStorage.
    pub packed: bool,
    /// The TTID the transaction had while being committed.
    pub ttid: Tid,
}

/// One object row of a transaction given to [`Backend::store_transaction`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectRow {
    /// The object.
    pub oid: Oid,
    /// Its data, from [`Backend::store_data`]; `None` = no data.
    pub data_id: Option<DataId>,
    /// Back-pointer of an undo.
    pub data_serial: Option<Tid>,
}

/// One cell assigned to this node, as persisted (`pt` row with own nid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssignedCell {
    /// The partition.
    pub partition: Partition,
    /// The cell state.
    pub state: CellState,
    /// For an OUT_OF_DATE cell: the tid up to which it is known complete
    /// (replication resumes after it; 0 = from the start).
    pub complete_up_to: Option<Tid>,
    /// Id of the last pack order completed on this partition.
    pub pack: Option<Tid>,
}

/// Greatest ids found in readable partitions (`AnswerLastIDs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastIds {
    /// Greatest tid of `trans` and `obj`.
    pub tid: Option<Tid>,
    /// Greatest oid of `obj`.
    pub oid: Option<Oid>,
}

/// The storage node's view of its database (§12.1).
///
/// Reads that serve clients fail with [`RequestError::NonReadableCell`]
/// when the partition is not readable by this node in its persisted
/// partition table. Writes are not durable until [`Backend::commit`],
/// except where a method says it commits.
pub trait Backend {
    // --- lifecycle -------------------------------------------------------

    /// Durably commits everything written so far (§12.2).
    fn commit(&mut self) -> Result<()>;
    /// Whether writes are waiting for [`Backend::commit`] (so that the node
    /// knows whether its deferred commit has something to do).
    fn has_uncommitted(&self) -> bool;
    /// Erases everything and recreates an empty database of the current
    /// schema; committed.
    fn reset(&mut self) -> Result<()>;
    /// Drops every table (node dropped from the cluster); committed. The
    /// backend must not be used afterwards except for [`Backend::reset`].
    fn erase(&mut self) -> Result<()>;

    // --- configuration ---------------------------------------------------

    /// Raw `config` value.
    fn config(&mut self, key: &str) -> Result<Option<String>>;
    /// Sets (`Some`) or deletes (`None`) a raw `config` value.
    fn set_config(&mut self, key: &str, value: Option<&str>) -> Result<()>;
    /// Cluster name; checked by the caller against the configured one.
    fn name(&mut self) -> Result<Option<String>>;
    /// Records the cluster name.
    fn set_name(&mut self, name: &str) -> Result<()>;
    /// Own node id, once the master assigned one.
    fn nid(&mut self) -> Result<Option<NodeId>>;
    /// Records the own node id; own cells of the partition table follow.
    fn set_nid(&mut self, nid: NodeId) -> Result<()>;
    /// Version of the persisted partition table.
    fn ptid(&mut self) -> Result<Option<Ptid>>;
    /// Wanted number of extra replicas (0 when never set).
    fn num_replicas(&mut self) -> Result<u32>;
    /// TID of a pending truncation (§11.1).
    fn truncate_tid(&mut self) -> Result<Option<Tid>>;
    /// Records or clears a pending truncation.
    fn set_truncate_tid(&mut self, tid: Option<Tid>) -> Result<()>;
    /// Backup TID, present in backup mode only (§10.2).
    fn backup_tid(&mut self) -> Result<Option<Tid>>;
    /// Records or clears the backup TID.
    fn set_backup_tid(&mut self, tid: Option<Tid>) -> Result<()>;

    // --- partition table ---------------------------------------------------

    /// Applies cell changes (`Discarded` removes a cell), or replaces the
    /// whole table when `reset`; persists `ptid` and `num_replicas`;
    /// recomputes the readable partitions; committed.
    fn change_partition_table(
        &mut self,
        ptid: Ptid,
        num_replicas: u32,
        cells: &[(Partition, NodeId, CellState)],
        reset: bool,
    ) -> Result<()>;
    /// Every cell of the persisted table, ordered by partition then nid.
    fn partition_table(&mut self) -> Result<Vec<(Partition, NodeId, CellState)>>;
    /// Number of partitions (1 + greatest partition of the table; 0 when
    /// the table is empty).
    fn num_partitions(&self) -> u32;
    /// Cells assigned to this node.
    fn assigned_cells(&mut self) -> Result<Vec<AssignedCell>>;
    /// Partitions this node may serve reads for.
    fn readable_partitions(&self) -> BTreeSet<Partition>;
    /// Records replication progress of an own OUT_OF_DATE cell (no-op for
    /// other cells).
    fn update_cell_tid(&mut self, partition: Partition, tid: Tid) -> Result<()>;

    // --- reads -----------------------------------------------------------

    /// `AskObject` (§7.1): the revision with serial `at`, or the newest
    /// before `before`, or the newest.
    fn get_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<ObjectLookup>;
    /// Serial of the newest committed record of `oid` (conflict detection;
    /// any cell state).
    fn last_object_tid(&mut self, oid: Oid) -> Result<Option<Tid>>;
    /// Committed metadata of `tid`; with `include_temporary`, falls back to
    /// the in-progress transaction whose TTID is `tid` (no readability
    /// check then).
    fn get_transaction(
        &mut self,
        tid: Tid,
        include_temporary: bool,
    ) -> Result<Option<TransactionMeta>>;
    /// `[(serial, stored size)]` of `oid`, newest first; empty when the oid
    /// has no record (`OID_NOT_FOUND`).
    fn object_history(&mut self, oid: Oid, offset: u64, length: u64) -> Result<Vec<HistoryEntry>>;
    /// Committed tids of `partitions`, newest first (`AskTIDs`); the caller
    /// expands `INVALID_PARTITION` ("all") with
    /// [`Backend::readable_partitions`].
    fn tid_list(&mut self, offset: u64, length: u64, partitions: &[Partition]) -> Result<Vec<Tid>>;
    /// Committed tids of `partition` in `[min, max]`, ascending
    /// (`AskTIDsFrom`, replication).
    fn replication_tid_list(
        &mut self,
        min: Tid,
        max: Tid,
        length: u64,
        partition: Partition,
    ) -> Result<Vec<Tid>>;
    /// §8.6: oids of `partition` from `min_oid` whose newest record at or
    /// before `tid` has data, and the next `min_oid` when the page is full.
    fn oids_from(
        &mut self,
        partition: Partition,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> Result<(Vec<Oid>, Option<Oid>)>;
    /// §8.3 `findUndoTID`. `current` is what the undoing transaction
    /// already stored for `oid` (its back-pointer, else its TTID).
    fn find_undo_tid(
        &mut self,
        oid: Oid,
        snapshot: Tid,
        undone_tid: Tid,
        current: Option<Tid>,
    ) -> Result<UndoLookup>;
    /// Final tid of the committed transaction whose TTID is `ttid`.
    fn final_tid(&mut self, ttid: Tid) -> Result<Option<Tid>>;
    /// Greatest tid and oid over readable partitions.
    fn last_ids(&mut self) -> Result<LastIds>;
    /// Smallest committed tid over readable partitions, `Tid::MAX` if none.
    fn first_tid(&mut self) -> Result<Tid>;
    /// Transactions in the temporary tables: ttid → final tid once locked.
    fn unfinished_transactions(&mut self) -> Result<BTreeMap<Tid, Option<Tid>>>;
    /// Raw data by id: `(compression, checksum, data)`.
    fn load_data(&mut self, data_id: DataId) -> Result<Option<(u8, Checksum, Vec<u8>)>>;

    // --- writes ----------------------------------------------------------

    /// Stores object data and returns its id, held once (see
    /// [`Backend::hold_data`]). `checksum` must be the SHA-1 of `data`
    /// (verified by the caller); [`Checksum::ZERO`] with empty data means
    /// "no data" and gives `None`. With `data_tid` (undo), the data id of
    /// record `(oid, data_tid)` is reused; if that record is gone and the
    /// partition is readable, fails with [`RequestError::UndoPack`].
    fn store_data(
        &mut self,
        oid: Oid,
        checksum: Checksum,
        data: &[u8],
        compression: u8,
        data_tid: Option<Tid>,
    ) -> Result<Option<DataId>>;
    /// Counts one more in-progress reference to each id, so that pruning
    /// keeps them although no committed record uses them yet.
    fn hold_data(&mut self, ids: &[DataId]);
    /// Drops one in-progress reference to each id; with `prune`, deletes
    /// the rows referenced by nothing any more.
    fn release_data(&mut self, ids: &[DataId], prune: bool) -> Result<()>;
    /// Inserts object rows and optionally the transaction row: into
    /// `tobj`/`ttrans` keyed by TTID `tid` when `temporary`, else directly
    /// into `obj`/`trans` (replication). Re-inserting a row replaces it.
    fn store_transaction(
        &mut self,
        tid: Tid,
        objects: &[ObjectRow],
        transaction: Option<&TransactionMeta>,
        temporary: bool,
    ) -> Result<()>;
    /// Records the final `tid` of `ttid`; once committed, the commit
    /// decision survives a crash (§12.2).
    fn lock_transaction(&mut self, ttid: Tid, tid: Tid) -> Result<()>;
    /// Moves the rows of `ttid` to `obj`/`trans` under `tid`, re-keys its
    /// pack order (if any) to `tid` and releases their data holds; not
    /// committed (deferred commit).
    fn unlock_transaction(&mut self, ttid: Tid, tid: Tid) -> Result<()>;
    /// Deletes the temporary rows of `ttid` (and its pack order), releasing
    /// and pruning their data.
    fn abort_transaction(&mut self, ttid: Tid) -> Result<()>;
    /// Deletes all temporary rows, the pack orders of unfinished
    /// transactions and their unreferenced data; forgets all holds.
    fn drop_unfinished_data(&mut self) -> Result<()>;
    /// Executes a pending truncation (§11.1 step 5): deletes everything
    /// after `truncate_tid` in own partitions, prunes data, lowers the
    /// progress of OUT_OF_DATE cells, clears `truncate_tid`; committed.
    /// Returns the truncation tid, or `None` if none was pending.
    fn truncate(&mut self) -> Result<Option<Tid>>;
    /// Deletes the committed metadata of `tid` (replication fix-up).
    fn delete_transaction(&mut self, tid: Tid) -> Result<()>;
    /// Deletes the record `(oid, serial)` and prunes its data (replication
    /// fix-up).
    fn delete_object(&mut self, oid: Oid, serial: Tid) -> Result<()>;

    // --- pack (§11.2, §11.3) -----------------------------------------------

    /// Records a pack order in `pack`, keyed by `order.id` (the TTID while
    /// the transaction carrying it is in progress: [`Backend::unlock_transaction`]
    /// re-keys it to the final TID, [`Backend::abort_transaction`] and
    /// [`Backend::drop_unfinished_data`] delete it). Replaces an order of
    /// the same id. Not committed.
    fn store_pack_order(&mut self, order: &PackOrder) -> Result<()>;
    /// Marks the stored orders among `approved` as approved and those among
    /// `rejected` as rejected; returns the ids that were found. Not
    /// committed (it is, with the lock of the transaction carrying it).
    fn sign_pack_orders(&mut self, approved: &[Tid], rejected: &[Tid]) -> Result<Vec<Tid>>;
    /// Committed pack orders of readable partitions with id `>= min_id`,
    /// ascending (`AskPackOrders` from the master).
    fn pack_orders(&mut self, min_id: Tid) -> Result<Vec<PackOrder>>;
    /// Records that pack order `pack_id` is completed on own cell
    /// `partition` (`pt.pack`); not committed.
    fn set_partition_packed(&mut self, partition: Partition, pack_id: Tid) -> Result<()>;
    /// Packs `partition` (§11.2) as `order` says, one bounded step: for at
    /// most `limit` oids from `min_oid` (every oid of the partition with a
    /// record at or before `order.pack_tid`, or only the listed ones of a
    /// partial pack), keeps the newest record at or before `pack_tid`
    /// unless it is a deletion, deletes the older ones, prunes the data
    /// nothing references any more. Returns the `min_oid` of the next step,
    /// or `None` when the partition is done. Idempotent. Not committed.
    fn pack(
        &mut self,
        partition: Partition,
        order: &PackOrder,
        min_oid: Oid,
        limit: u64,
    ) -> Result<Option<Oid>>;
}
