//! Storage engines: where a storage node keeps its rows (architecture.md
//! §12).
//!
//! [`Backend`] is storage only: reading and writing the rows of NEO's
//! tables (`config`, `pt`, `trans`/`ttrans`, `obj`/`tobj`, `data`, `pack`)
//! and committing. It computes no partition, checks no readability, keeps
//! no reference count and decides nothing about undo, pack or cell states:
//! those rules are written once, above every engine, in
//! [`crate::db::Database`]. An engine only turns each method into its
//! storage (SQL statements for SQLite and MySQL, records of an append-only
//! log and maps in memory for Native).
//!
//! The trait is synchronous and takes `&mut self`: an engine is owned by
//! one node task, and a write transaction of the engine is open between
//! the first write and the next [`Backend::commit`]. Nothing is durable
//! before that commit, except where a method says it commits.
//!
//! Vocabulary: an *oid* names an object, a *tid* a committed transaction,
//! a *ttid* a transaction in progress (it becomes its tid at lock), a
//! *serial* the tid of one object revision; a *cell* is one partition
//! assigned to one storage node. Rows of temporary tables (`ttrans`,
//! `tobj`) belong to transactions between vote and unlock; in `tobj`, the
//! `tid` column holds the TTID.
//!
//! Keys the engine can not hold (ids above `2^63 - 1` in SQL) match no
//! row; values it can not store are refused with
//! [`RequestError::OutOfRange`]; range bounds beyond them mean "no limit".

mod error;
mod lock;
mod mysql;
mod native;
mod open;
mod rows;
mod sqlite;

pub use self::mysql::{Engine, MysqlBackend, Target, MIN_MAX_ALLOWED_PACKET};
pub use error::{Error, FatalError, OpenError, RequestError};
pub use native::{NativeBackend, NativeSnapshot, SnapshotObject};
pub use neo_proto::packets::{HistoryEntry, PackOrder};
use std::path::PathBuf;

use neo_proto::{CellState, Checksum, NodeId, Oid, Partition, Tid};
pub use open::{expand_user, open, Adapter, OpenOptions};
pub use sqlite::SqliteBackend;

/// Schema version this code reads and writes (`config.version`), the same
/// for SQLite and MySQL (§12.6).
pub const SCHEMA_VERSION: u32 = 4;

/// Refuses a database of another schema version (§12.6).
pub(crate) fn check_version(database: &str, found: u32) -> Result<(), OpenError> {
    let database = database.to_owned();
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(OpenError::NewerSchema {
            database,
            found,
            supported: SCHEMA_VERSION,
        }),
        std::cmp::Ordering::Less => Err(OpenError::OlderSchema {
            database,
            found,
            supported: SCHEMA_VERSION,
        }),
    }
}

/// Row id of a raw data record.
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

/// Which revision [`Backend::load_object`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revision {
    /// The one with this serial.
    Serial(Tid),
    /// The newest one before this tid.
    Before(Tid),
    /// The newest one.
    Latest,
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

/// An object row (`obj` / `tobj`) without its partition and serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectRow {
    /// The object.
    pub oid: Oid,
    /// Its data; `None` = no data (deletion or undone creation).
    pub data_id: Option<DataId>,
    /// Back-pointer of an undo: the serial whose data this is.
    pub data_serial: Option<Tid>,
}

/// One `pt` row: a cell of the partition table, with what the node
/// persists about its own cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellRow {
    /// The partition.
    pub partition: Partition,
    /// The node holding the cell.
    pub nid: NodeId,
    /// The cell state; never `Discarded`.
    pub state: CellState,
    /// For an OUT_OF_DATE cell: the tid up to which it is known complete
    /// (replication resumes after it; 0 = from the start). Meaningful for
    /// own cells only.
    pub complete_up_to: Option<Tid>,
    /// For an own cell: id of the last pack order completed on it; `None`
    /// for other nodes' cells.
    pub pack: Option<Tid>,
}

/// An oid with records at or before a pack tid (§11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackCandidate {
    /// The object.
    pub oid: Oid,
    /// How many of its records are at or before the pack tid.
    pub records: u64,
    /// The newest of them.
    pub newest: Tid,
}

/// Where a node keeping its data in `backend` is in the cluster's
/// topology, as NEO/py says it (`devpath`, §1.6): the host name, then the
/// device holding the data. What cannot be found is left out, with a
/// warning: tweak then knows less about where replicas should go.
pub fn topology_path(backend: &mut dyn Backend) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut devpath = vec![gethostname::gethostname().to_string_lossy().into_owned()];
    let device = match backend.data_path() {
        Ok(Some(path)) => std::fs::metadata(&path)
            .map(|metadata| metadata.dev())
            .map_err(|error| format!("{}: {error}", path.display())),
        Ok(None) => Err("the engine does not say where it is".to_owned()),
        Err(error) => Err(error.to_string()),
    };
    match device {
        Ok(device) => devpath.push(device.to_string()),
        Err(error) => tracing::warn!("the device of the data is unknown: {error}"),
    }
    devpath
}

/// Storage of NEO's tables (§12.1, §12.3), and nothing else.
pub trait Backend {
    // --- the engine's transaction ----------------------------------------

    /// Durably commits everything written so far (§12.2).
    fn commit(&mut self) -> Result<()>;
    /// Whether writes are waiting for [`Backend::commit`].
    fn has_uncommitted(&self) -> bool;
    /// Erases everything and recreates empty tables of the current
    /// schema; committed.
    fn reset(&mut self) -> Result<()>;
    /// Drops every table; committed. Only [`Backend::reset`] may follow.
    fn erase(&mut self) -> Result<()>;
    /// The file or directory holding the data, if the engine can say: its
    /// device places the node in the cluster's topology (`devpath`,
    /// architecture.md §1.6).
    fn data_path(&mut self) -> Result<Option<PathBuf>>;

    // --- config ----------------------------------------------------------

    /// Raw `config` value.
    fn config(&mut self, key: &str) -> Result<Option<String>>;
    /// Sets (`Some`) or deletes (`None`) a raw `config` value.
    fn set_config(&mut self, key: &str, value: Option<&str>) -> Result<()>;

    // --- pt --------------------------------------------------------------

    /// Every `pt` row, ordered by partition then nid.
    fn cells(&mut self) -> Result<Vec<CellRow>>;
    /// Inserts or replaces the row of `(cell.partition, cell.nid)`.
    fn put_cell(&mut self, cell: &CellRow) -> Result<()>;
    /// Deletes the row of one cell.
    fn delete_cell(&mut self, partition: Partition, nid: NodeId) -> Result<()>;
    /// Deletes every `pt` row.
    fn delete_cells(&mut self) -> Result<()>;

    // --- trans, ttrans ---------------------------------------------------

    /// The `trans` row of `tid` in `partition`.
    fn transaction(&mut self, partition: Partition, tid: Tid) -> Result<Option<TransactionMeta>>;
    /// Inserts or replaces a `trans` row.
    fn put_transaction(
        &mut self,
        partition: Partition,
        tid: Tid,
        meta: &TransactionMeta,
    ) -> Result<()>;
    /// The tid of the `trans` row of `partition` whose `ttid` column is
    /// `ttid` (at or after `ttid`).
    fn final_tid(&mut self, partition: Partition, ttid: Tid) -> Result<Option<Tid>>;
    /// Tids of `trans` rows of `partitions`, newest first, after skipping
    /// `offset` of them.
    fn tids(&mut self, partitions: &[Partition], offset: u64, length: u64) -> Result<Vec<Tid>>;
    /// Tids of `trans` rows of `partition` in `[min, max]`, ascending.
    fn tids_between(
        &mut self,
        partition: Partition,
        min: Tid,
        max: Tid,
        length: u64,
    ) -> Result<Vec<Tid>>;
    /// Smallest tid of the `trans` rows of `partition`.
    fn first_tid(&mut self, partition: Partition) -> Result<Option<Tid>>;
    /// Greatest tid of the `trans` and `obj` rows of `partition`.
    fn last_tid(&mut self, partition: Partition) -> Result<Option<Tid>>;
    /// Greatest oid of the `obj` rows of `partition`.
    fn last_oid(&mut self, partition: Partition) -> Result<Option<Oid>>;
    /// Deletes the `trans` rows of `partition` after `tid`.
    fn delete_transactions_after(&mut self, partition: Partition, tid: Tid) -> Result<()>;
    /// The `ttrans` row of `ttid`.
    fn temporary_transaction(&mut self, ttid: Tid) -> Result<Option<TransactionMeta>>;
    /// Replaces the `ttrans` row of `ttid` (its `tid` column null).
    fn put_temporary_transaction(
        &mut self,
        partition: Partition,
        ttid: Tid,
        meta: &TransactionMeta,
    ) -> Result<()>;
    /// Sets the `tid` column of the `ttrans` row of `ttid` (lock).
    fn set_temporary_tid(&mut self, ttid: Tid, tid: Tid) -> Result<()>;
    /// Every `ttrans` row: `(ttid, tid)`.
    fn temporary_transactions(&mut self) -> Result<Vec<(Tid, Option<Tid>)>>;
    /// The distinct TTIDs of `tobj` rows.
    fn temporary_object_ttids(&mut self) -> Result<Vec<Tid>>;
    /// Moves the `tobj` and `ttrans` rows of `ttid` to `obj` and `trans`
    /// under `tid` (replacing rows already there).
    fn make_permanent(&mut self, ttid: Tid, tid: Tid) -> Result<()>;
    /// Deletes the `tobj` and `ttrans` rows of `ttid`, or all of them.
    fn delete_temporary(&mut self, ttid: Option<Tid>) -> Result<()>;

    // --- obj, tobj -------------------------------------------------------

    /// Inserts or replaces the `tobj` (`temporary`, `tid` = TTID) or `obj`
    /// row `(partition, row.oid, tid)`; returns the data id of the row it
    /// replaced, if that one had data.
    fn put_object(
        &mut self,
        temporary: bool,
        partition: Partition,
        tid: Tid,
        row: &ObjectRow,
    ) -> Result<Option<DataId>>;
    /// The `obj` row of `oid` at exactly `serial`.
    fn object(&mut self, partition: Partition, oid: Oid, serial: Tid) -> Result<Option<ObjectRow>>;
    /// The newest `obj` row of `oid` before `before`, with its serial.
    fn object_before(
        &mut self,
        partition: Partition,
        oid: Oid,
        before: Tid,
    ) -> Result<Option<(Tid, ObjectRow)>>;
    /// A revision of `oid` with its data and the serial of the next
    /// revision, in one read (the load path, §7.1).
    fn load_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        revision: Revision,
    ) -> Result<Option<ObjectRecord>>;
    /// Whether `oid` has any `obj` row.
    fn has_object(&mut self, partition: Partition, oid: Oid) -> Result<bool>;
    /// Greatest serial of the `obj` rows of `oid`.
    fn last_serial(&mut self, partition: Partition, oid: Oid) -> Result<Option<Tid>>;
    /// `[(serial, stored size)]` of `oid`, newest first, after skipping
    /// `offset` of them.
    fn object_history(
        &mut self,
        partition: Partition,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> Result<Vec<HistoryEntry>>;
    /// Ascending oids of `partition` from `min_oid` whose newest `obj` row
    /// at or before `tid` has data.
    fn oids_with_data(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        tid: Tid,
        length: u64,
    ) -> Result<Vec<Oid>>;
    /// Data ids of the `tobj` rows of `ttid`, or of all of them.
    fn temporary_data_ids(&mut self, ttid: Option<Tid>) -> Result<Vec<DataId>>;
    /// Deletes the `obj` rows of `oid` at or before `tid`; returns the
    /// distinct data ids they had.
    fn delete_objects_up_to(
        &mut self,
        partition: Partition,
        oid: Oid,
        tid: Tid,
    ) -> Result<Vec<DataId>>;
    /// Deletes the `obj` rows of `partition` after `tid`; returns the
    /// distinct data ids they had.
    fn delete_objects_after(&mut self, partition: Partition, tid: Tid) -> Result<Vec<DataId>>;
    /// Oids of `partition` from `min_oid` having `obj` rows at or before
    /// `pack_tid`, ascending, at most `limit`.
    fn pack_candidates(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        pack_tid: Tid,
        limit: u64,
    ) -> Result<Vec<PackCandidate>>;
    /// [`Backend::pack_candidates`] for one oid.
    fn pack_candidate(
        &mut self,
        partition: Partition,
        oid: Oid,
        pack_tid: Tid,
    ) -> Result<Option<PackCandidate>>;

    // --- data ------------------------------------------------------------

    /// Greatest id of `data` rows in `[first, last]`.
    fn last_data_id(&mut self, first: DataId, last: DataId) -> Result<Option<DataId>>;
    /// Inserts a `data` row.
    fn put_data(
        &mut self,
        id: DataId,
        checksum: Checksum,
        compression: u8,
        data: &[u8],
    ) -> Result<()>;
    /// A `data` row: `(compression, checksum, data)`.
    fn load_data(&mut self, id: DataId) -> Result<Option<(u8, Checksum, Vec<u8>)>>;
    /// Deletes the `data` rows among `ids` that no `obj` or `tobj` row
    /// references.
    fn prune_data(&mut self, ids: &[DataId]) -> Result<()>;

    // --- pack ------------------------------------------------------------

    /// Inserts or replaces the `pack` row of `order.id`.
    fn put_pack_order(&mut self, order: &PackOrder) -> Result<()>;
    /// Sets the `approved` column of the order `id`; whether it exists.
    fn sign_pack_order(&mut self, id: Tid, approved: bool) -> Result<bool>;
    /// `pack` rows with id `>= min_id`, ascending.
    fn pack_orders(&mut self, min_id: Tid) -> Result<Vec<PackOrder>>;
    /// Gives the order `from` the id `to` (replacing one of that id).
    fn rekey_pack_order(&mut self, from: Tid, to: Tid) -> Result<()>;
    /// Deletes the order `id`.
    fn delete_pack_order(&mut self, id: Tid) -> Result<()>;
    /// Deletes the orders with an id after `tid`.
    fn delete_pack_orders_after(&mut self, tid: Tid) -> Result<()>;
    /// Greatest id of an approved order.
    fn last_approved_pack_id(&mut self) -> Result<Option<Tid>>;
    /// The order `id`.
    fn pack_order(&mut self, id: Tid) -> Result<Option<PackOrder>>;

    // --- replication (§9.1), replica checks (§9.3), dropped partitions ----

    /// `(serial, oid)` of the `obj` rows of `partition` with
    /// `(serial, oid) >= (min_tid, min_oid)` and `serial <= max_tid`,
    /// ascending by serial then oid, at most `length`.
    fn object_serials(
        &mut self,
        partition: Partition,
        min_tid: Tid,
        min_oid: Oid,
        max_tid: Tid,
        length: u64,
    ) -> Result<Vec<(Tid, Oid)>>;
    /// Deletes the `trans` row of `tid` in `partition`.
    fn delete_transaction(&mut self, partition: Partition, tid: Tid) -> Result<()>;
    /// Deletes the `obj` row of `oid` at `serial`; returns its data id, if
    /// it had data.
    fn delete_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        serial: Tid,
    ) -> Result<Option<DataId>>;
    /// Deletes the first `limit` `obj` rows of `partition` by serial then
    /// oid; returns how many were deleted and the distinct data ids they had.
    fn delete_partition_objects(
        &mut self,
        partition: Partition,
        limit: u64,
    ) -> Result<(u64, Vec<DataId>)>;
    /// Deletes the first `limit` `trans` rows of `partition` by tid, with
    /// the pack orders of those tids; returns how many `trans` rows were
    /// deleted.
    fn delete_partition_transactions(&mut self, partition: Partition, limit: u64) -> Result<u64>;
}
