//! [`Backend`] on the Native engine: reads from the tables in memory,
//! writes as records of the next batch.
//!
//! Ids are stored up to `2^63 - 1`, as in SQL (NEO's `MAX_TID`), so that
//! rows move between engines by replication; larger keys match no row,
//! larger bounds mean "no limit".

use std::ops::Bound::{Excluded, Included};
use std::path::PathBuf;

use neo_proto::{Checksum, NodeId, Oid, Partition, Tid};

use super::format::Record;
use super::NativeBackend;
use crate::backend::{
    Backend, CellRow, DataId, Error, FatalError, HistoryEntry, ObjectRecord, ObjectRow,
    PackCandidate, PackOrder, RequestError, Result, Revision, TransactionMeta,
};

/// A value to store: at most NEO's `MAX_TID`, as SQL engines.
fn stored(what: &'static str, value: u64) -> Result<u64, RequestError> {
    if value > Tid::MAX.0 {
        return Err(RequestError::OutOfRange { what, value });
    }
    Ok(value)
}

fn optional(what: &'static str, value: Option<u64>) -> Result<Option<u64>, RequestError> {
    value.map(|value| stored(what, value)).transpose()
}

/// A `LIMIT` as a count of items.
fn limit(length: u64) -> usize {
    usize::try_from(length).unwrap_or(usize::MAX)
}

impl Backend for NativeBackend {
    fn commit(&mut self) -> Result<()> {
        Ok(self.commit_batch()?)
    }

    fn has_uncommitted(&self) -> bool {
        self.batch.len() > super::BATCH_HEADER_LEN
    }

    fn reset(&mut self) -> Result<()> {
        Ok(self.erase_all()?)
    }

    fn erase(&mut self) -> Result<()> {
        Ok(self.erase_all()?)
    }

    fn data_path(&mut self) -> Result<Option<PathBuf>> {
        Ok(Some(self.path.clone()))
    }

    fn config(&mut self, key: &str) -> Result<Option<String>> {
        Ok(self.tables.config.get(key).cloned())
    }

    fn set_config(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        self.log(Record::SetConfig {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        });
        Ok(())
    }

    fn cells(&mut self) -> Result<Vec<CellRow>> {
        Ok(self.tables.cells.values().copied().collect())
    }

    fn put_cell(&mut self, cell: &CellRow) -> Result<()> {
        if cell.state == neo_proto::CellState::Discarded {
            return Err(Error::corrupted("a DISCARDED cell is never stored"));
        }
        // As SQL's `pt.tid` keeps it: a progress for OUT_OF_DATE cells only.
        let progress = (cell.state == neo_proto::CellState::OutOfDate)
            .then(|| cell.complete_up_to.unwrap_or(Tid::ZERO));
        optional("cell tid", progress.map(|tid| tid.0))?;
        optional("cell pack id", cell.pack.map(|tid| tid.0))?;
        self.log(Record::PutCell(CellRow {
            complete_up_to: progress,
            ..*cell
        }));
        Ok(())
    }

    fn delete_cell(&mut self, partition: Partition, nid: NodeId) -> Result<()> {
        self.log(Record::DeleteCell { partition, nid });
        Ok(())
    }

    fn delete_cells(&mut self) -> Result<()> {
        self.log(Record::DeleteCells);
        Ok(())
    }

    fn transaction(&mut self, partition: Partition, tid: Tid) -> Result<Option<TransactionMeta>> {
        Ok(self.tables.trans.get(&(partition, tid.0)).cloned())
    }

    fn put_transaction(
        &mut self,
        partition: Partition,
        tid: Tid,
        meta: &TransactionMeta,
    ) -> Result<()> {
        let tid = stored("tid", tid.0)?;
        stored("ttid", meta.ttid.0)?;
        self.log(Record::PutTransaction {
            partition,
            tid,
            meta: meta.clone(),
        });
        Ok(())
    }

    fn final_tid(&mut self, partition: Partition, ttid: Tid) -> Result<Option<Tid>> {
        Ok(self
            .tables
            .by_ttid
            .range((partition, ttid.0, ttid.0)..=(partition, ttid.0, u64::MAX))
            .next()
            .map(|&(_, _, tid)| Tid(tid)))
    }

    fn tids(&mut self, partitions: &[Partition], offset: u64, length: u64) -> Result<Vec<Tid>> {
        let wanted = limit(offset.saturating_add(length));
        let mut partitions = partitions.to_vec();
        partitions.sort_unstable();
        partitions.dedup();
        // The newest `offset + length` of each partition hold the answer.
        let mut tids: Vec<u64> = Vec::new();
        for partition in partitions {
            tids.extend(
                self.tables
                    .trans
                    .range((partition, 0)..=(partition, u64::MAX))
                    .rev()
                    .take(wanted)
                    .map(|(&(_, tid), _)| tid),
            );
        }
        tids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(tids
            .into_iter()
            .skip(limit(offset))
            .take(limit(length))
            .map(Tid)
            .collect())
    }

    fn tids_between(
        &mut self,
        partition: Partition,
        min: Tid,
        max: Tid,
        length: u64,
    ) -> Result<Vec<Tid>> {
        if min > max {
            return Ok(Vec::new());
        }
        Ok(self
            .tables
            .trans
            .range((partition, min.0)..=(partition, max.0))
            .take(limit(length))
            .map(|(&(_, tid), _)| Tid(tid))
            .collect())
    }

    fn first_tid(&mut self, partition: Partition) -> Result<Option<Tid>> {
        Ok(self
            .tables
            .trans
            .range((partition, 0)..=(partition, u64::MAX))
            .next()
            .map(|(&(_, tid), _)| Tid(tid)))
    }

    fn last_tid(&mut self, partition: Partition) -> Result<Option<Tid>> {
        let trans = self
            .tables
            .trans
            .range((partition, 0)..=(partition, u64::MAX))
            .next_back()
            .map(|(&(_, tid), _)| tid);
        let obj = self
            .tables
            .by_serial
            .range((partition, 0, 0)..=(partition, u64::MAX, u64::MAX))
            .next_back()
            .map(|&(_, serial, _)| serial);
        Ok(trans.max(obj).map(Tid))
    }

    fn last_oid(&mut self, partition: Partition) -> Result<Option<Oid>> {
        Ok(self
            .tables
            .obj
            .range((partition, 0, 0)..=(partition, u64::MAX, u64::MAX))
            .next_back()
            .map(|(&(_, oid, _), _)| Oid(oid)))
    }

    fn delete_transactions_after(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        self.log(Record::DeleteTransactionsAfter {
            partition,
            tid: tid.0,
        });
        Ok(())
    }

    fn temporary_transaction(&mut self, ttid: Tid) -> Result<Option<TransactionMeta>> {
        Ok(self.tables.ttrans.get(&ttid.0).map(|row| row.meta.clone()))
    }

    fn put_temporary_transaction(
        &mut self,
        partition: Partition,
        ttid: Tid,
        meta: &TransactionMeta,
    ) -> Result<()> {
        let ttid = stored("ttid", ttid.0)?;
        self.log(Record::PutTemporaryTransaction {
            partition,
            ttid,
            meta: meta.clone(),
        });
        Ok(())
    }

    fn set_temporary_tid(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        let tid = stored("tid", tid.0)?;
        if self.tables.ttrans.contains_key(&ttid.0) {
            self.log(Record::SetTemporaryTid { ttid: ttid.0, tid });
        }
        Ok(())
    }

    fn temporary_transactions(&mut self) -> Result<Vec<(Tid, Option<Tid>)>> {
        Ok(self
            .tables
            .ttrans
            .iter()
            .map(|(&ttid, row)| (Tid(ttid), row.tid.map(Tid)))
            .collect())
    }

    fn temporary_object_ttids(&mut self) -> Result<Vec<Tid>> {
        let mut ttids: Vec<Tid> = self
            .tables
            .tobj
            .keys()
            .map(|&(ttid, _)| Tid(ttid))
            .collect();
        ttids.dedup();
        Ok(ttids)
    }

    fn make_permanent(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        let tid = stored("tid", tid.0)?;
        self.log(Record::MakePermanent { ttid: ttid.0, tid });
        Ok(())
    }

    fn delete_temporary(&mut self, ttid: Option<Tid>) -> Result<()> {
        self.log(Record::DeleteTemporary {
            ttid: ttid.map(|ttid| ttid.0),
        });
        Ok(())
    }

    fn put_object(
        &mut self,
        temporary: bool,
        partition: Partition,
        tid: Tid,
        row: &ObjectRow,
    ) -> Result<Option<DataId>> {
        let record = Record::PutObject {
            temporary,
            partition,
            tid: stored("tid", tid.0)?,
            oid: stored("oid", row.oid.0)?,
            data_id: optional("data id", row.data_id)?,
            data_serial: optional("data serial", row.data_serial.map(|tid| tid.0))?,
        };
        Ok(self.log(record).ids.first().copied())
    }

    fn object(&mut self, partition: Partition, oid: Oid, serial: Tid) -> Result<Option<ObjectRow>> {
        Ok(self
            .tables
            .obj
            .get(&(partition, oid.0, serial.0))
            .map(|obj| ObjectRow {
                oid,
                data_id: obj.data_id(),
                data_serial: obj.data_serial(),
            }))
    }

    fn object_before(
        &mut self,
        partition: Partition,
        oid: Oid,
        before: Tid,
    ) -> Result<Option<(Tid, ObjectRow)>> {
        Ok(self
            .tables
            .obj
            .range((partition, oid.0, 0)..(partition, oid.0, before.0))
            .next_back()
            .map(|(&(_, _, serial), obj)| {
                let row = ObjectRow {
                    oid,
                    data_id: obj.data_id(),
                    data_serial: obj.data_serial(),
                };
                (Tid(serial), row)
            }))
    }

    fn load_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        revision: Revision,
    ) -> Result<Option<ObjectRecord>> {
        let found = match revision {
            Revision::Serial(serial) => {
                self.tables.obj.get_key_value(&(partition, oid.0, serial.0))
            }
            Revision::Before(before) => self
                .tables
                .obj
                .range((partition, oid.0, 0)..(partition, oid.0, before.0))
                .next_back(),
            Revision::Latest => self.tables.revisions(partition, oid.0).next_back(),
        }
        .map(|(&(_, _, serial), obj)| (serial, *obj));
        let Some((serial, obj)) = found else {
            return Ok(None);
        };
        // The latest has none: no lookup on the common load.
        let next_serial = match revision {
            Revision::Latest => None,
            _ => self
                .tables
                .obj
                .range((
                    Excluded((partition, oid.0, serial)),
                    Included((partition, oid.0, u64::MAX)),
                ))
                .next()
                .map(|(&(_, _, next), _)| Tid(next)),
        };
        let (compression, checksum, data) = match obj.data_id() {
            None => (None, Checksum::ZERO, Vec::new()),
            Some(id) => {
                let entry = *self.tables.data.get(&id).ok_or_else(|| {
                    FatalError::Corrupted(format!(
                        "object {oid} serial {} refers to missing data id {id}",
                        Tid(serial)
                    ))
                })?;
                let (data, checksum) = self.read_data(entry)?;
                (Some(entry.compression), checksum, data)
            }
        };
        Ok(Some(ObjectRecord {
            serial: Tid(serial),
            next_serial,
            compression,
            checksum,
            data,
            data_serial: obj.data_serial(),
        }))
    }

    fn has_object(&mut self, partition: Partition, oid: Oid) -> Result<bool> {
        Ok(self.tables.revisions(partition, oid.0).next().is_some())
    }

    fn last_serial(&mut self, partition: Partition, oid: Oid) -> Result<Option<Tid>> {
        Ok(self
            .tables
            .revisions(partition, oid.0)
            .next_back()
            .map(|(&(_, _, serial), _)| Tid(serial)))
    }

    fn object_history(
        &mut self,
        partition: Partition,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> Result<Vec<HistoryEntry>> {
        let data = &self.tables.data;
        Ok(self
            .tables
            .revisions(partition, oid.0)
            .rev()
            .skip(limit(offset))
            .take(limit(length))
            .map(|(&(_, _, serial), obj)| HistoryEntry {
                serial: Tid(serial),
                size: obj
                    .data_id()
                    .and_then(|id| data.get(&id))
                    .map_or(0, |entry| u64::from(entry.length)),
            })
            .collect())
    }

    fn oids_with_data(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        tid: Tid,
        length: u64,
    ) -> Result<Vec<Oid>> {
        let mut oids = Vec::new();
        let mut from = min_oid.0;
        while oids.len() < limit(length) {
            let Some(oid) = self.tables.next_oid(partition, from) else {
                break;
            };
            let current = self
                .tables
                .obj
                .range((partition, oid, 0)..=(partition, oid, tid.0))
                .next_back();
            if current.is_some_and(|(_, obj)| obj.data_id().is_some()) {
                oids.push(Oid(oid));
            }
            match oid.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(oids)
    }

    fn temporary_data_ids(&mut self, ttid: Option<Tid>) -> Result<Vec<DataId>> {
        Ok(match ttid {
            Some(ttid) => self
                .tables
                .temporary_objects(ttid.0)
                .filter_map(|(_, row)| row.obj.data_id())
                .collect(),
            None => self
                .tables
                .tobj
                .values()
                .filter_map(|row| row.obj.data_id())
                .collect(),
        })
    }

    fn delete_objects_up_to(
        &mut self,
        partition: Partition,
        oid: Oid,
        tid: Tid,
    ) -> Result<Vec<DataId>> {
        Ok(self
            .log(Record::DeleteObjectsUpTo {
                partition,
                oid: oid.0,
                tid: tid.0,
            })
            .ids)
    }

    fn delete_objects_after(&mut self, partition: Partition, tid: Tid) -> Result<Vec<DataId>> {
        Ok(self
            .log(Record::DeleteObjectsAfter {
                partition,
                tid: tid.0,
            })
            .ids)
    }

    fn pack_candidates(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        pack_tid: Tid,
        length: u64,
    ) -> Result<Vec<PackCandidate>> {
        let mut candidates = Vec::new();
        let mut from = min_oid.0;
        while candidates.len() < limit(length) {
            let Some(oid) = self.tables.next_oid(partition, from) else {
                break;
            };
            candidates.extend(self.pack_candidate(partition, Oid(oid), pack_tid)?);
            match oid.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(candidates)
    }

    fn pack_candidate(
        &mut self,
        partition: Partition,
        oid: Oid,
        pack_tid: Tid,
    ) -> Result<Option<PackCandidate>> {
        let mut records = 0;
        let mut newest = None;
        for (&(_, _, serial), _) in self
            .tables
            .obj
            .range((partition, oid.0, 0)..=(partition, oid.0, pack_tid.0))
        {
            records += 1;
            newest = Some(Tid(serial));
        }
        Ok(newest.map(|newest| PackCandidate {
            oid,
            records,
            newest,
        }))
    }

    fn last_data_id(&mut self, first: DataId, last: DataId) -> Result<Option<DataId>> {
        if first > last {
            return Ok(None);
        }
        Ok(self
            .tables
            .data
            .range(first..=last)
            .next_back()
            .map(|(&id, _)| id))
    }

    fn put_data(
        &mut self,
        id: DataId,
        checksum: Checksum,
        compression: u8,
        data: &[u8],
    ) -> Result<()> {
        let id = stored("data id", id)?;
        if self.tables.data.contains_key(&id) {
            // As SQL's primary key would.
            return Err(super::engine_error(
                "storing object data",
                format!("data id {id} already exists").into(),
            )
            .into());
        }
        // Refused before it is applied: it could never be committed (and
        // a record's length is 32 bits).
        if data.len() as u64 > super::MAX_BATCH_BYTES {
            return Err(FatalError::BatchTooLarge {
                size: data.len() as u64,
                limit: super::MAX_BATCH_BYTES,
            }
            .into());
        }
        self.log(Record::PutData {
            id,
            compression,
            value: data,
            checksum,
        });
        Ok(())
    }

    fn load_data(&mut self, id: DataId) -> Result<Option<(u8, Checksum, Vec<u8>)>> {
        let Some(&entry) = self.tables.data.get(&id) else {
            return Ok(None);
        };
        let (data, checksum) = self.read_data(entry)?;
        Ok(Some((entry.compression, checksum, data)))
    }

    fn prune_data(&mut self, ids: &[DataId]) -> Result<()> {
        for &id in ids {
            if self.tables.data.contains_key(&id) && !self.tables.is_referenced(id) {
                self.log(Record::DeleteData { id });
            }
        }
        Ok(())
    }

    fn put_pack_order(&mut self, order: &PackOrder) -> Result<()> {
        stored("pack id", order.id.0)?;
        stored("pack tid", order.pack_tid.0)?;
        self.log(Record::PutPackOrder(order.clone()));
        Ok(())
    }

    fn sign_pack_order(&mut self, id: Tid, approved: bool) -> Result<bool> {
        if !self.tables.pack.contains_key(&id.0) {
            return Ok(false);
        }
        self.log(Record::SignPackOrder { id: id.0, approved });
        Ok(true)
    }

    fn pack_orders(&mut self, min_id: Tid) -> Result<Vec<PackOrder>> {
        Ok(self
            .tables
            .pack
            .range(min_id.0..)
            .map(|(_, order)| order.clone())
            .collect())
    }

    fn rekey_pack_order(&mut self, from: Tid, to: Tid) -> Result<()> {
        let to = stored("pack id", to.0)?;
        if self.tables.pack.contains_key(&from.0) {
            self.log(Record::RekeyPackOrder { from: from.0, to });
        }
        Ok(())
    }

    fn delete_pack_order(&mut self, id: Tid) -> Result<()> {
        if self.tables.pack.contains_key(&id.0) {
            self.log(Record::DeletePackOrder { id: id.0 });
        }
        Ok(())
    }

    fn delete_pack_orders_after(&mut self, tid: Tid) -> Result<()> {
        if self
            .tables
            .pack
            .range((Excluded(tid.0), Included(u64::MAX)))
            .next()
            .is_some()
        {
            self.log(Record::DeletePackOrdersAfter { tid: tid.0 });
        }
        Ok(())
    }

    fn last_approved_pack_id(&mut self) -> Result<Option<Tid>> {
        Ok(self
            .tables
            .pack
            .values()
            .rev()
            .find(|order| order.approved == Some(true))
            .map(|order| order.id))
    }

    fn pack_order(&mut self, id: Tid) -> Result<Option<PackOrder>> {
        Ok(self.tables.pack.get(&id.0).cloned())
    }

    fn object_serials(
        &mut self,
        partition: Partition,
        min_tid: Tid,
        min_oid: Oid,
        max_tid: Tid,
        length: u64,
    ) -> Result<Vec<(Tid, Oid)>> {
        if min_tid > max_tid {
            return Ok(Vec::new());
        }
        Ok(self
            .tables
            .by_serial
            .range((partition, min_tid.0, min_oid.0)..=(partition, max_tid.0, u64::MAX))
            .take(limit(length))
            .map(|&(_, serial, oid)| (Tid(serial), Oid(oid)))
            .collect())
    }

    fn delete_transaction(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        if self.tables.trans.contains_key(&(partition, tid.0)) {
            self.log(Record::DeleteTransaction {
                partition,
                tid: tid.0,
            });
        }
        Ok(())
    }

    fn delete_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        serial: Tid,
    ) -> Result<Option<DataId>> {
        if !self.tables.obj.contains_key(&(partition, oid.0, serial.0)) {
            return Ok(None);
        }
        let effect = self.log(Record::DeleteObject {
            partition,
            oid: oid.0,
            serial: serial.0,
        });
        Ok(effect.ids.first().copied())
    }

    fn delete_partition_objects(
        &mut self,
        partition: Partition,
        limit: u64,
    ) -> Result<(u64, Vec<DataId>)> {
        let effect = self.log(Record::DeletePartitionObjects { partition, limit });
        Ok((effect.count, effect.ids))
    }

    fn delete_partition_transactions(&mut self, partition: Partition, limit: u64) -> Result<u64> {
        Ok(self
            .log(Record::DeletePartitionTransactions { partition, limit })
            .count)
    }
}
