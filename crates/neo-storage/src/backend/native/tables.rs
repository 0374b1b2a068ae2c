//! NEO's tables in memory, without the data values (those stay in the
//! log, read with one `pread`). [`Tables::apply`] is the one place a
//! record changes them: the engine applies each record as it writes it,
//! and the replay at open applies the same records in the same order, so
//! the tables rebuilt from the log are the tables that wrote it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound::{Excluded, Included, Unbounded};

use neo_proto::{Partition, Tid};

use super::format::{Record, DATA_AT};
use crate::backend::{CellRow, DataId, PackOrder, TransactionMeta};

/// "No value" in the compact columns of [`Obj`]: ids are at most
/// `2^63 - 1` (checked when written), so `u64::MAX` is never one.
const NONE: u64 = u64::MAX;

/// The columns of an `obj` or `tobj` row besides its key, in 16 bytes
/// instead of the 32 of two `Option<u64>`: there is one per revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Obj {
    data_id: u64,
    data_serial: u64,
}

impl Obj {
    pub(super) fn new(data_id: Option<u64>, data_serial: Option<u64>) -> Obj {
        Obj {
            data_id: data_id.unwrap_or(NONE),
            data_serial: data_serial.unwrap_or(NONE),
        }
    }

    pub(super) fn data_id(self) -> Option<DataId> {
        (self.data_id != NONE).then_some(self.data_id)
    }

    pub(super) fn data_serial(self) -> Option<Tid> {
        (self.data_serial != NONE).then_some(Tid(self.data_serial))
    }
}

/// A `tobj` row: its partition and columns (keyed by TTID and oid).
#[derive(Clone, Copy, Debug)]
pub(super) struct TemporaryObject {
    pub(super) partition: Partition,
    pub(super) obj: Obj,
}

/// A `ttrans` row (keyed by TTID).
#[derive(Clone, Debug)]
pub(super) struct TemporaryTransaction {
    pub(super) partition: Partition,
    /// Set at lock.
    pub(super) tid: Option<u64>,
    /// With `ttid` equal to the key.
    pub(super) meta: TransactionMeta,
}

/// Where a `data` row's value is: `length` bytes at `offset` of the log,
/// followed by its 20-byte checksum.
#[derive(Clone, Copy, Debug)]
pub(super) struct DataEntry {
    pub(super) offset: u64,
    pub(super) length: u32,
    pub(super) compression: u8,
}

/// Every row, in the orders the [`Backend`](crate::backend::Backend)
/// methods read them.
#[derive(Debug, Default)]
pub(super) struct Tables {
    pub(super) config: BTreeMap<String, String>,
    /// By `(partition, nid)`.
    pub(super) cells: BTreeMap<(Partition, i32), CellRow>,
    /// By `(partition, tid)`; `meta.ttid` is the `ttid` column.
    pub(super) trans: BTreeMap<(Partition, u64), TransactionMeta>,
    /// `(partition, ttid, tid)` of every `trans` row, for `final_tid`.
    pub(super) by_ttid: BTreeSet<(Partition, u64, u64)>,
    pub(super) ttrans: BTreeMap<u64, TemporaryTransaction>,
    /// By `(partition, oid, serial)`: loads, history, pack.
    pub(super) obj: BTreeMap<(Partition, u64, u64), Obj>,
    /// `(partition, serial, oid)` of every `obj` row: replication,
    /// truncation, dropped partitions.
    pub(super) by_serial: BTreeSet<(Partition, u64, u64)>,
    /// By `(ttid, oid)`, as SQL's primary key of `tobj`.
    pub(super) tobj: BTreeMap<(u64, u64), TemporaryObject>,
    pub(super) data: BTreeMap<DataId, DataEntry>,
    /// How many `obj` and `tobj` rows use each data id (absent: none), so
    /// that `prune_data` needs no scan.
    pub(super) references: HashMap<DataId, u32>,
    pub(super) pack: BTreeMap<u64, PackOrder>,
}

/// What applying a record did, for the method that wrote it.
#[derive(Debug, Default)]
pub(super) struct Effect {
    /// Data ids of deleted or replaced object rows, sorted, distinct.
    pub(super) ids: Vec<DataId>,
    /// Rows changed.
    pub(super) count: u64,
}

impl Effect {
    fn of_ids(mut ids: Vec<DataId>, count: u64) -> Effect {
        ids.sort_unstable();
        ids.dedup();
        Effect { ids, count }
    }
}

impl Tables {
    /// Applies `record`, whose tag is at byte `at` of the log.
    pub(super) fn apply(&mut self, record: &Record<'_>, at: u64) -> Effect {
        match record {
            Record::SetConfig { key, value } => {
                match value {
                    Some(value) => self.config.insert(key.clone(), value.clone()),
                    None => self.config.remove(key),
                };
            }
            Record::PutCell(cell) => {
                self.cells.insert((cell.partition, cell.nid.0), *cell);
            }
            Record::DeleteCell { partition, nid } => {
                self.cells.remove(&(*partition, nid.0));
            }
            Record::DeleteCells => self.cells.clear(),
            Record::PutTransaction {
                partition,
                tid,
                meta,
            } => self.put_trans(*partition, *tid, meta.clone()),
            Record::DeleteTransaction { partition, tid } => {
                self.remove_trans(*partition, *tid);
            }
            Record::DeleteTransactionsAfter { partition, tid } => {
                let tids: Vec<u64> = self
                    .trans
                    .range((
                        Excluded((*partition, *tid)),
                        Included((*partition, u64::MAX)),
                    ))
                    .map(|(&(_, tid), _)| tid)
                    .collect();
                for tid in tids {
                    self.remove_trans(*partition, tid);
                }
            }
            Record::PutTemporaryTransaction {
                partition,
                ttid,
                meta,
            } => {
                let meta = TransactionMeta {
                    ttid: Tid(*ttid),
                    ..meta.clone()
                };
                let row = TemporaryTransaction {
                    partition: *partition,
                    tid: None,
                    meta,
                };
                self.ttrans.insert(*ttid, row);
            }
            Record::SetTemporaryTid { ttid, tid } => {
                if let Some(row) = self.ttrans.get_mut(ttid) {
                    row.tid = Some(*tid);
                }
            }
            Record::MakePermanent { ttid, tid } => self.make_permanent(*ttid, *tid),
            Record::DeleteTemporary { ttid } => {
                let keys: Vec<(u64, u64)> = match ttid {
                    Some(ttid) => self.temporary_objects(*ttid).map(|(key, _)| *key).collect(),
                    None => self.tobj.keys().copied().collect(),
                };
                for (ttid, oid) in keys {
                    self.remove_tobj(ttid, oid);
                }
                match ttid {
                    Some(ttid) => {
                        self.ttrans.remove(ttid);
                    }
                    None => self.ttrans.clear(),
                }
            }
            Record::PutObject {
                temporary,
                partition,
                tid,
                oid,
                data_id,
                data_serial,
            } => {
                let obj = Obj::new(*data_id, *data_serial);
                let replaced = if *temporary {
                    self.put_tobj(*tid, *oid, *partition, obj)
                } else {
                    self.put_obj(*partition, *oid, *tid, obj)
                };
                return Effect::of_ids(replaced.into_iter().collect(), 1);
            }
            Record::DeleteObject {
                partition,
                oid,
                serial,
            } => {
                let removed = self.remove_obj(*partition, *oid, *serial);
                let count = u64::from(removed.is_some());
                return Effect::of_ids(removed.and_then(Obj::data_id).into_iter().collect(), count);
            }
            Record::DeleteObjectsUpTo {
                partition,
                oid,
                tid,
            } => {
                let keys: Vec<(Partition, u64, u64)> = self
                    .obj
                    .range((*partition, *oid, 0)..=(*partition, *oid, *tid))
                    .map(|(key, _)| *key)
                    .collect();
                return self.remove_objs(keys);
            }
            Record::DeleteObjectsAfter { partition, tid } => {
                let keys: Vec<(Partition, u64, u64)> = self
                    .by_serial
                    .range((
                        Excluded((*partition, *tid, u64::MAX)),
                        Included((*partition, u64::MAX, u64::MAX)),
                    ))
                    .map(|&(partition, serial, oid)| (partition, oid, serial))
                    .collect();
                return self.remove_objs(keys);
            }
            Record::DeletePartitionObjects { partition, limit } => {
                let keys: Vec<(Partition, u64, u64)> = self
                    .by_serial
                    .range((*partition, 0, 0)..=(*partition, u64::MAX, u64::MAX))
                    .take(usize::try_from(*limit).unwrap_or(usize::MAX))
                    .map(|&(partition, serial, oid)| (partition, oid, serial))
                    .collect();
                return self.remove_objs(keys);
            }
            Record::DeletePartitionTransactions { partition, limit } => {
                let tids: Vec<u64> = self
                    .trans
                    .range((*partition, 0)..=(*partition, u64::MAX))
                    .take(usize::try_from(*limit).unwrap_or(usize::MAX))
                    .map(|(&(_, tid), _)| tid)
                    .collect();
                for &tid in &tids {
                    // Pack orders are found through their transaction.
                    self.pack.remove(&tid);
                    self.remove_trans(*partition, tid);
                }
                return Effect {
                    ids: Vec::new(),
                    count: tids.len() as u64,
                };
            }
            Record::PutData {
                id,
                compression,
                value,
                ..
            } => {
                let entry = DataEntry {
                    offset: at + DATA_AT,
                    // A value is within one batch, at most 1 GiB.
                    length: value.len() as u32,
                    compression: *compression,
                };
                self.data.insert(*id, entry);
            }
            Record::DeleteData { id } => {
                self.data.remove(id);
            }
            Record::PutPackOrder(order) => {
                self.pack.insert(order.id.0, order.clone());
            }
            Record::SignPackOrder { id, approved } => {
                if let Some(order) = self.pack.get_mut(id) {
                    order.approved = Some(*approved);
                    return Effect {
                        ids: Vec::new(),
                        count: 1,
                    };
                }
            }
            Record::RekeyPackOrder { from, to } => {
                if let Some(mut order) = self.pack.remove(from) {
                    order.id = Tid(*to);
                    self.pack.insert(*to, order);
                }
            }
            Record::DeletePackOrder { id } => {
                self.pack.remove(id);
            }
            Record::DeletePackOrdersAfter { tid } => {
                if let Some(next) = tid.checked_add(1) {
                    self.pack.split_off(&next);
                }
            }
        }
        Effect::default()
    }

    /// The `tobj` rows of `ttid`.
    pub(super) fn temporary_objects(
        &self,
        ttid: u64,
    ) -> impl DoubleEndedIterator<Item = (&(u64, u64), &TemporaryObject)> {
        self.tobj.range((ttid, 0)..=(ttid, u64::MAX))
    }

    /// The `obj` rows of `oid`, by serial.
    pub(super) fn revisions(
        &self,
        partition: Partition,
        oid: u64,
    ) -> impl DoubleEndedIterator<Item = (&(Partition, u64, u64), &Obj)> {
        self.obj
            .range((partition, oid, 0)..=(partition, oid, u64::MAX))
    }

    /// The first oid of `partition` from `oid` on having `obj` rows.
    pub(super) fn next_oid(&self, partition: Partition, oid: u64) -> Option<u64> {
        self.obj
            .range((Included((partition, oid, 0)), Unbounded))
            .next()
            .filter(|(key, _)| key.0 == partition)
            .map(|(key, _)| key.1)
    }

    fn make_permanent(&mut self, ttid: u64, tid: u64) {
        let rows: Vec<(u64, TemporaryObject)> = self
            .temporary_objects(ttid)
            .map(|(&(_, oid), row)| (oid, *row))
            .collect();
        for (oid, row) in rows {
            // Referenced by the new row before the old one lets go: the
            // count never drops to zero on the way.
            self.put_obj(row.partition, oid, tid, row.obj);
            self.remove_tobj(ttid, oid);
        }
        if let Some(row) = self.ttrans.remove(&ttid) {
            self.put_trans(row.partition, tid, row.meta);
        }
    }

    fn put_trans(&mut self, partition: Partition, tid: u64, meta: TransactionMeta) {
        self.remove_trans(partition, tid);
        self.by_ttid.insert((partition, meta.ttid.0, tid));
        self.trans.insert((partition, tid), meta);
    }

    fn remove_trans(&mut self, partition: Partition, tid: u64) {
        if let Some(old) = self.trans.remove(&(partition, tid)) {
            self.by_ttid.remove(&(partition, old.ttid.0, tid));
        }
    }

    /// Inserts or replaces an `obj` row; the data id of the row replaced.
    fn put_obj(&mut self, partition: Partition, oid: u64, tid: u64, obj: Obj) -> Option<DataId> {
        if let Some(id) = obj.data_id() {
            self.reference(id);
        }
        self.by_serial.insert((partition, tid, oid));
        let replaced = self
            .obj
            .insert((partition, oid, tid), obj)
            .and_then(Obj::data_id);
        if let Some(id) = replaced {
            self.unreference(id);
        }
        replaced
    }

    fn remove_obj(&mut self, partition: Partition, oid: u64, serial: u64) -> Option<Obj> {
        let removed = self.obj.remove(&(partition, oid, serial))?;
        self.by_serial.remove(&(partition, serial, oid));
        if let Some(id) = removed.data_id() {
            self.unreference(id);
        }
        Some(removed)
    }

    fn remove_objs(&mut self, keys: Vec<(Partition, u64, u64)>) -> Effect {
        let mut ids = Vec::new();
        for &(partition, oid, serial) in &keys {
            if let Some(id) = self
                .remove_obj(partition, oid, serial)
                .and_then(Obj::data_id)
            {
                ids.push(id);
            }
        }
        Effect::of_ids(ids, keys.len() as u64)
    }

    fn put_tobj(&mut self, ttid: u64, oid: u64, partition: Partition, obj: Obj) -> Option<DataId> {
        if let Some(id) = obj.data_id() {
            self.reference(id);
        }
        let replaced = self
            .tobj
            .insert((ttid, oid), TemporaryObject { partition, obj })
            .and_then(|row| row.obj.data_id());
        if let Some(id) = replaced {
            self.unreference(id);
        }
        replaced
    }

    fn remove_tobj(&mut self, ttid: u64, oid: u64) {
        if let Some(id) = self
            .tobj
            .remove(&(ttid, oid))
            .and_then(|row| row.obj.data_id())
        {
            self.unreference(id);
        }
    }

    fn reference(&mut self, id: DataId) {
        *self.references.entry(id).or_insert(0) += 1;
    }

    fn unreference(&mut self, id: DataId) {
        if let Some(count) = self.references.get_mut(&id) {
            *count -= 1;
            if *count == 0 {
                self.references.remove(&id);
            }
        }
    }

    /// Whether an `obj` or `tobj` row uses the data id.
    pub(super) fn is_referenced(&self, id: DataId) -> bool {
        self.references.contains_key(&id)
    }

    /// Every row but the `data` rows, as the records that write it into
    /// an empty log: what compaction writes, besides the data.
    pub(super) fn rows_as_records(&self, each: &mut dyn FnMut(&Record<'_>)) {
        for (key, value) in &self.config {
            each(&Record::SetConfig {
                key: key.clone(),
                value: Some(value.clone()),
            });
        }
        for cell in self.cells.values() {
            each(&Record::PutCell(*cell));
        }
        for order in self.pack.values() {
            each(&Record::PutPackOrder(order.clone()));
        }
        for (&(partition, tid), meta) in &self.trans {
            each(&Record::PutTransaction {
                partition,
                tid,
                meta: meta.clone(),
            });
        }
        for (&ttid, row) in &self.ttrans {
            each(&Record::PutTemporaryTransaction {
                partition: row.partition,
                ttid,
                meta: row.meta.clone(),
            });
            if let Some(tid) = row.tid {
                each(&Record::SetTemporaryTid { ttid, tid });
            }
        }
        for (&(partition, oid, tid), obj) in &self.obj {
            each(&Record::PutObject {
                temporary: false,
                partition,
                tid,
                oid,
                data_id: obj.data_id(),
                data_serial: obj.data_serial().map(|tid| tid.0),
            });
        }
        for (&(ttid, oid), row) in &self.tobj {
            each(&Record::PutObject {
                temporary: true,
                partition: row.partition,
                tid: ttid,
                oid,
                data_id: row.obj.data_id(),
                data_serial: row.obj.data_serial().map(|tid| tid.0),
            });
        }
    }
}
