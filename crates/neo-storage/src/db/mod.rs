//! The storage node's database: the rules of NEO's storage (architecture.md
//! §12.1), written once over any [`Backend`].
//!
//! [`Database`] owns the engine and keeps in memory what every engine
//! would otherwise compute again: the partition table with the own node id
//! (so partitions and readability are computed here, by
//! [`PartitionTable`]), the own cells' replication progress and pack ids,
//! the reference counts of data used by transactions in progress, and the
//! next data id of each partition. It decides what the engine only
//! stores: what a partition-table change does to own cells
//! (`partitions.rs`), data ids and pruning (`data.rs`), the life of
//! transactions and truncation (`transactions.rs`), undo chains
//! (`undo.rs`), what pack keeps (`pack.rs`), what replication and replica
//! checks read and write, and the deletion of dropped partitions
//! (`replication.rs`).
//!
//! Writes are not durable until [`Database::commit`], except where a
//! method says it commits (§12.2): the node decides when to commit.

mod data;
mod import;
mod pack;
mod partitions;
mod replication;
mod transactions;
mod undo;

use std::collections::{BTreeMap, HashMap};

use neo_cluster::PartitionTable;
use neo_proto::packets::HistoryEntry;
pub use neo_proto::packets::UndoSerial;
use neo_proto::{CellState, Checksum, NodeId, Oid, Partition, Ptid, Tid};
pub use replication::digest;

use crate::backend::{
    Backend, CellRow, DataId, Error, FatalError, ObjectRecord, Result, TransactionMeta,
};
use crate::importer::Importer;
pub use import::ImportStep;

/// Outcome of [`Database::get_object`]; the two misses map to different
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

/// Outcome of [`Database::find_undo_tid`] (§8.3).
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

/// One cell assigned to this node, as persisted.
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

/// The storage node's database: an engine and the rules above it.
pub struct Database {
    backend: Box<dyn Backend + Send>,
    /// Own node id (`config.nid`), once the master assigned one.
    nid: Option<NodeId>,
    /// The persisted partition table; `None` while `pt` is empty. The one
    /// place that places oids and tids in partitions.
    pt: Option<PartitionTable>,
    /// Own `pt` rows, for what the table does not say: replication
    /// progress and pack ids.
    own: BTreeMap<Partition, CellRow>,
    /// References to data ids by transactions in progress, which no
    /// committed record holds yet: pruning keeps them.
    held: HashMap<DataId, u32>,
    /// Next free data id per partition, filled lazily from the engine.
    next_data_id: HashMap<Partition, DataId>,
    /// The import in progress or done, with the Importer.
    importer: Option<Importer>,
}

impl Database {
    /// The rules over an opened engine: loads the own node id, the
    /// partition table and the data held by voted transactions.
    pub fn new(backend: Box<dyn Backend + Send>) -> Result<Database> {
        let mut db = Database {
            backend,
            nid: None,
            pt: None,
            own: BTreeMap::new(),
            held: HashMap::new(),
            next_data_id: HashMap::new(),
            importer: None,
        };
        db.load()?;
        Ok(db)
    }

    /// Reloads what is kept in memory from the engine.
    fn load(&mut self) -> Result<()> {
        self.nid = self.nid()?;
        self.load_partition_table()?;
        self.held.clear();
        self.next_data_id.clear();
        let ids = self.backend.temporary_data_ids(None)?;
        self.hold_data(&ids);
        Ok(())
    }

    /// Where the node is in the cluster's topology
    /// ([`backend::topology_path`](crate::backend::topology_path)).
    pub fn topology_path(&mut self) -> Vec<String> {
        crate::backend::topology_path(self.backend.as_mut())
    }

    // --- lifecycle ---------------------------------------------------------

    /// Durably commits everything written so far (§12.2).
    pub fn commit(&mut self) -> Result<()> {
        self.backend.commit()
    }

    /// Whether writes are waiting for [`Database::commit`] (so that the node
    /// knows whether its deferred commit has something to do).
    pub fn has_uncommitted(&self) -> bool {
        self.backend.has_uncommitted()
    }

    /// Erases everything and starts again with an empty database of the
    /// current schema; committed.
    pub fn reset(&mut self) -> Result<()> {
        self.backend.reset()?;
        self.load()
    }

    /// Drops every table (node dropped from the cluster); committed. Only
    /// [`Database::reset`] may follow.
    pub fn erase(&mut self) -> Result<()> {
        self.backend.erase()?;
        self.nid = None;
        self.pt = None;
        self.own.clear();
        self.held.clear();
        self.next_data_id.clear();
        Ok(())
    }

    // --- configuration (§12.3 `config`) ------------------------------------

    /// Cluster name; checked by the caller against the configured one.
    pub fn name(&mut self) -> Result<Option<String>> {
        self.backend.config("name")
    }

    /// Records the cluster name.
    pub fn set_name(&mut self, name: &str) -> Result<()> {
        self.backend.set_config("name", Some(name))
    }

    /// Own node id, once the master assigned one.
    pub fn nid(&mut self) -> Result<Option<NodeId>> {
        self.parsed_config("nid").map(|nid| nid.map(NodeId))
    }

    /// Version of the persisted partition table.
    pub fn ptid(&mut self) -> Result<Option<Ptid>> {
        self.parsed_config("ptid")
    }

    /// Wanted number of extra replicas (0 when never set).
    pub fn num_replicas(&mut self) -> Result<u32> {
        Ok(self.parsed_config("replicas")?.unwrap_or(0))
    }

    /// TID of a pending truncation (§11.1).
    pub fn truncate_tid(&mut self) -> Result<Option<Tid>> {
        self.config_tid("truncate_tid")
    }

    /// Records or clears a pending truncation.
    pub fn set_truncate_tid(&mut self, tid: Option<Tid>) -> Result<()> {
        self.set_config_tid("truncate_tid", tid)
    }

    /// Backup TID, present in backup mode only (§10.2).
    pub fn backup_tid(&mut self) -> Result<Option<Tid>> {
        self.config_tid("backup_tid")
    }

    /// Records or clears the backup TID.
    pub fn set_backup_tid(&mut self, tid: Option<Tid>) -> Result<()> {
        self.set_config_tid("backup_tid", tid)
    }

    /// A decimal `config` value.
    fn parsed_config<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.backend.config(key)? else {
            return Ok(None);
        };
        value.trim().parse().map(Some).map_err(|_| {
            Error::Fatal(FatalError::Corrupted(format!(
                "config {key:?} has invalid value {value:?}"
            )))
        })
    }

    /// A TID `config` value: 16 hex digits.
    fn config_tid(&mut self, key: &str) -> Result<Option<Tid>> {
        let Some(value) = self.backend.config(key)? else {
            return Ok(None);
        };
        u64::from_str_radix(value.trim(), 16)
            .map(|tid| Some(Tid(tid)))
            .map_err(|_| {
                Error::Fatal(FatalError::Corrupted(format!(
                    "config {key:?} is not a hex TID: {value:?}"
                )))
            })
    }

    fn set_config_tid(&mut self, key: &str, tid: Option<Tid>) -> Result<()> {
        let value = tid.map(|tid| format!("{:016x}", tid.0));
        self.backend.set_config(key, value.as_deref())
    }

    // --- reads -------------------------------------------------------------

    /// `AskObject` (§7.1): the revision with serial `at`, or the newest
    /// before `before`, or the newest. Refused on a partition this node can
    /// not read.
    pub fn get_object(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<ObjectLookup> {
        let partition = self.readable_partition_of_oid(oid)?;
        if self.importer.is_some() {
            return self.import_get_object(partition, oid, at, before);
        }
        self.backend_get_object(partition, oid, at, before)
    }

    /// Serial of the newest committed record of `oid` (conflict detection;
    /// any cell state).
    pub fn last_object_tid(&mut self, oid: Oid) -> Result<Option<Tid>> {
        let partition = self.partition_of_oid(oid, "reading the last serial of an object")?;
        if self.importer.is_some() {
            return self.import_last_object_tid(partition, oid);
        }
        self.backend.last_serial(partition, oid)
    }

    /// Committed metadata of `tid`; with `include_temporary`, falls back to
    /// the in-progress transaction whose TTID is `tid` (no readability
    /// check then).
    pub fn get_transaction(
        &mut self,
        tid: Tid,
        include_temporary: bool,
    ) -> Result<Option<TransactionMeta>> {
        let partition = if include_temporary {
            self.partition_of_tid(tid, "reading transaction metadata")?
        } else {
            self.readable_partition_of_tid(tid)?
        };
        if self.import_has_transaction(tid) {
            return self.import_transaction(tid);
        }
        let found = self.backend.transaction(partition, tid)?;
        if found.is_none() && include_temporary {
            return self.backend.temporary_transaction(tid);
        }
        Ok(found)
    }

    /// `[(serial, stored size)]` of `oid`, newest first; empty when the oid
    /// has no record (`OID_NOT_FOUND`).
    pub fn object_history(
        &mut self,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> Result<Vec<HistoryEntry>> {
        let partition = self.readable_partition_of_oid(oid)?;
        if self.importer.is_some() {
            return self.import_object_history(partition, oid, offset, length);
        }
        self.backend.object_history(partition, oid, offset, length)
    }

    /// Committed tids of `partitions`, newest first (`AskTIDs`); the caller
    /// expands `INVALID_PARTITION` ("all") with
    /// [`Database::readable_partitions`].
    pub fn tid_list(
        &mut self,
        offset: u64,
        length: u64,
        partitions: &[Partition],
    ) -> Result<Vec<Tid>> {
        for &partition in partitions {
            self.check_readable(partition)?;
        }
        self.backend.tids(partitions, offset, length)
    }

    /// Committed tids of `partition` in `[min, max]`, ascending
    /// (`AskTIDsFrom`, replication).
    pub fn replication_tid_list(
        &mut self,
        min: Tid,
        max: Tid,
        length: u64,
        partition: Partition,
    ) -> Result<Vec<Tid>> {
        self.backend.tids_between(partition, min, max, length)
    }

    /// §8.6: oids of `partition` from `min_oid` whose newest record at or
    /// before `tid` has data, and the next `min_oid` when the page is full.
    pub fn oids_from(
        &mut self,
        partition: Partition,
        length: u64,
        min_oid: Oid,
        tid: Tid,
    ) -> Result<(Vec<Oid>, Option<Oid>)> {
        self.check_readable(partition)?;
        if length == 0 {
            return Ok((Vec::new(), None));
        }
        let oids = self
            .backend
            .oids_with_data(partition, min_oid, tid, length)?;
        // The next oid of the same partition.
        let next = match oids.last() {
            Some(last) if oids.len() as u64 == length => last
                .0
                .checked_add(u64::from(self.num_partitions()))
                .map(Oid),
            _ => None,
        };
        Ok((oids, next))
    }

    /// Final tid of the committed transaction whose TTID is `ttid`.
    pub fn final_tid(&mut self, ttid: Tid) -> Result<Option<Tid>> {
        let partition = self.readable_partition_of_tid(ttid)?;
        self.backend.final_tid(partition, ttid)
    }

    /// Greatest tid and oid over readable partitions (data of discarded
    /// cells may still be present).
    pub fn last_ids(&mut self) -> Result<LastIds> {
        let mut last = LastIds::default();
        for partition in self.readable_partitions() {
            last.tid = last.tid.max(self.backend.last_tid(partition)?);
            last.oid = last.oid.max(self.backend.last_oid(partition)?);
        }
        Ok(self.import_last_ids(last))
    }

    /// Smallest committed tid over readable partitions, `Tid::MAX` if none.
    pub fn first_tid(&mut self) -> Result<Tid> {
        let mut first = Tid::MAX;
        for partition in self.readable_partitions() {
            if let Some(tid) = self.backend.first_tid(partition)? {
                first = first.min(tid);
            }
        }
        Ok(self.import_first_tid(first))
    }

    /// Transactions in the temporary tables: ttid → final tid once locked.
    pub fn unfinished_transactions(&mut self) -> Result<BTreeMap<Tid, Option<Tid>>> {
        let mut unfinished: BTreeMap<Tid, Option<Tid>> =
            self.backend.temporary_transactions()?.into_iter().collect();
        for ttid in self.backend.temporary_object_ttids()? {
            unfinished.entry(ttid).or_insert(None);
        }
        Ok(unfinished)
    }

    /// Raw data by id: `(compression, checksum, data)`.
    pub fn load_data(&mut self, data_id: DataId) -> Result<Option<(u8, Checksum, Vec<u8>)>> {
        self.backend.load_data(data_id)
    }
}
