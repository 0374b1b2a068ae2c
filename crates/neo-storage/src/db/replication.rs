//! Replication (§9.1) and replica checks (§9.3), the database side: what a
//! source lists and sends, what a replicating node stores and deletes, the
//! digests of a check, and the deletion of a dropped partition in bounded
//! steps (§12.5).

use std::fmt::Write;

use neo_proto::packets::{AnswerCheckSerialRange, AnswerCheckTIDRange};
use neo_proto::{Checksum, Oid, Partition, Tid};
use sha1::{Digest, Sha1};

use super::Database;
use crate::backend::{
    ObjectRecord, ObjectRow, PackOrder, RequestError, Result, Revision, TransactionMeta,
};

impl Database {
    /// `(serial, oid)` of the committed records of `partition` from
    /// `(min_tid, min_oid)` up to `max_tid`, ascending, at most `length`
    /// (`getReplicationObjectList`). Any cell state: the replicating node
    /// lists what it has.
    pub fn replication_object_list(
        &mut self,
        min_tid: Tid,
        max_tid: Tid,
        length: u64,
        partition: Partition,
        min_oid: Oid,
    ) -> Result<Vec<(Tid, Oid)>> {
        if max_tid < min_tid || length == 0 {
            return Ok(Vec::new());
        }
        self.backend
            .object_serials(partition, min_tid, min_oid, max_tid, length)
    }

    /// The record of `oid` at exactly `serial`, to send it to a
    /// replicating node (`fetchObject`); refused on a partition this node
    /// can not read.
    pub fn fetch_object(&mut self, oid: Oid, serial: Tid) -> Result<Option<ObjectRecord>> {
        let partition = self.readable_partition_of_oid(oid)?;
        self.backend
            .load_object(partition, oid, Revision::Serial(serial))
    }

    /// A committed transaction and the pack order it carries, to send it to
    /// a replicating node; refused on a partition this node can not read.
    pub fn fetch_transaction(
        &mut self,
        tid: Tid,
    ) -> Result<Option<(TransactionMeta, Option<PackOrder>)>> {
        let Some(meta) = self.get_transaction(tid, false)? else {
            return Ok(None);
        };
        let pack = self.backend.pack_order(tid)?;
        Ok(Some((meta, pack)))
    }

    /// Stores an object record received by replication directly in `obj`:
    /// its data (`None` for no data; with `data_serial`, the data of that
    /// record when this node has it, else the data sent) and the record.
    /// Not committed.
    pub fn add_object(
        &mut self,
        oid: Oid,
        serial: Tid,
        data: Option<(u8, Checksum, &[u8])>,
        data_serial: Option<Tid>,
    ) -> Result<()> {
        let (compression, checksum, bytes) = data.unwrap_or((0, Checksum::ZERO, &[]));
        let data_id = self.store_data(oid, checksum, bytes, compression, data_serial)?;
        let row = ObjectRow {
            oid,
            data_id,
            data_serial,
        };
        self.store_transaction(serial, &[row], None, false)
    }

    /// Deletes a committed transaction the source of a replication does not
    /// have, with its pack order. Not committed.
    pub fn delete_transaction(&mut self, tid: Tid) -> Result<()> {
        let partition = self.partition_of_tid(tid, "deleting a transaction")?;
        self.backend.delete_pack_order(tid)?;
        self.backend.delete_transaction(partition, tid)
    }

    /// Deletes a committed record the source of a replication does not
    /// have, and its data if nothing else uses it. Not committed.
    pub fn delete_object(&mut self, oid: Oid, serial: Tid) -> Result<()> {
        let partition = self.partition_of_oid(oid, "deleting an object record")?;
        if let Some(data_id) = self.backend.delete_object(partition, oid, serial)? {
            self.prune_data(&[data_id])?;
        }
        Ok(())
    }

    /// The source of a replication completed fewer packs than this cell:
    /// this cell will do them again (§9.1 step 5). Not committed.
    pub fn update_completed_pack_by_replication(
        &mut self,
        partition: Partition,
        pack_id: Tid,
    ) -> Result<()> {
        self.update_own_cell(partition, |cell| {
            if cell.pack.is_some_and(|own| own <= pack_id) {
                return false;
            }
            cell.pack = Some(pack_id);
            true
        })
    }

    /// `checkTIDRange` (§9.3): count, digest and greatest of the committed
    /// tids of `partition` in `[min_tid, max_tid]`, at most `length` from
    /// the smallest.
    pub fn check_tid_range(
        &mut self,
        partition: Partition,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
    ) -> Result<AnswerCheckTIDRange> {
        let tids = self
            .backend
            .tids_between(partition, min_tid, max_tid, length.into())?;
        let Some(&last) = tids.last() else {
            return Ok(AnswerCheckTIDRange {
                count: 0,
                digest: Checksum::ZERO,
                max_tid: Tid::ZERO,
            });
        };
        Ok(AnswerCheckTIDRange {
            count: count(tids.len())?,
            digest: digest(tids.iter().map(|tid| tid.0)),
            max_tid: last,
        })
    }

    /// `checkSerialRange` (§9.3): count, digests and last of the committed
    /// records of `partition` from `(min_tid, min_oid)` up to `max_tid`,
    /// ordered by serial then oid, at most `length`.
    pub fn check_serial_range(
        &mut self,
        partition: Partition,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> Result<AnswerCheckSerialRange> {
        let records =
            self.backend
                .object_serials(partition, min_tid, min_oid, max_tid, length.into())?;
        let Some(&(last_tid, last_oid)) = records.last() else {
            return Ok(AnswerCheckSerialRange {
                count: 0,
                tid_digest: Checksum::ZERO,
                max_tid: Tid::ZERO,
                oid_digest: Checksum::ZERO,
                max_oid: Oid(0),
            });
        };
        Ok(AnswerCheckSerialRange {
            count: count(records.len())?,
            tid_digest: digest(records.iter().map(|(tid, _)| tid.0)),
            max_tid: last_tid,
            oid_digest: digest(records.iter().map(|(_, oid)| oid.0)),
            max_oid: last_oid,
        })
    }

    /// Deletes up to `limit` rows of a partition this node no longer has
    /// (`_dropPartition`): object records first, then transactions, data
    /// nothing references any more with them. Returns whether the
    /// partition is empty. Not committed.
    pub fn drop_partition(&mut self, partition: Partition, limit: u64) -> Result<bool> {
        let limit = limit.max(1);
        let (deleted, ids) = self.backend.delete_partition_objects(partition, limit)?;
        self.prune_data(&ids)?;
        if deleted > 0 {
            return Ok(false);
        }
        let deleted = self
            .backend
            .delete_partition_transactions(partition, limit)?;
        Ok(deleted < limit)
    }
}

/// A count of rows read with a `u32` length.
fn count(rows: usize) -> Result<u32> {
    u32::try_from(rows).map_err(|_| {
        RequestError::OutOfRange {
            what: "row count",
            value: rows as u64,
        }
        .into()
    })
}

/// NEO's digest of a list of ids (§9.3): SHA-1 of their decimal forms
/// joined with commas, `b"271,283"`.
pub fn digest(ids: impl Iterator<Item = u64>) -> Checksum {
    let mut sha1 = Sha1::new();
    let mut decimal = String::new();
    for (index, id) in ids.enumerate() {
        if index > 0 {
            sha1.update(b",");
        }
        decimal.clear();
        // Writing into a String never fails.
        let _ = write!(decimal, "{id}");
        sha1.update(decimal.as_bytes());
    }
    Checksum(sha1.finalize().into())
}
