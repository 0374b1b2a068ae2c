//! [`Backend`] on SQLite: one or a few literal statements per method.

use std::path::PathBuf;

use neo_proto::{Checksum, NodeId, Oid, Partition, Tid};
use rusqlite::params;

use super::codec::{self, bound, key, stored};
use super::SqliteBackend;
use crate::backend::{
    rows, Backend, CellRow, DataId, HistoryEntry, ObjectRecord, ObjectRow, PackCandidate,
    PackOrder, Result, Revision, TransactionMeta,
};

/// An object row joined with its data and followed by the serial of the
/// next revision, as read by `load_object`, with the given condition: a
/// literal, so each load finds its prepared statement without building the
/// SQL again. One statement per load, the next serial included.
macro_rules! select_object {
    ($condition:literal) => {
        concat!(
            "SELECT obj.tid, obj.value_tid, obj.data_id, data.id, data.compression, \
             data.hash, data.value, \
             (SELECT MIN(next.tid) FROM obj AS next WHERE next.partition = obj.partition \
              AND next.oid = obj.oid AND next.tid > obj.tid) \
             FROM obj LEFT JOIN data ON data.id = obj.data_id WHERE ",
            $condition
        )
    };
}

impl Backend for SqliteBackend {
    fn commit(&mut self) -> Result<()> {
        Ok(self.commit_now()?)
    }

    fn has_uncommitted(&self) -> bool {
        !self.conn.is_autocommit()
    }

    fn reset(&mut self) -> Result<()> {
        self.drop_tables()?;
        Ok(self.create_tables()?)
    }

    fn erase(&mut self) -> Result<()> {
        Ok(self.drop_tables()?)
    }

    fn data_path(&mut self) -> Result<Option<PathBuf>> {
        Ok(Some(self.path().to_owned()))
    }

    fn config(&mut self, key: &str) -> Result<Option<String>> {
        let value = self.query_row(
            "reading configuration",
            "SELECT value FROM config WHERE name = ?",
            [key],
            |row| codec::text(row, 0, "config value"),
        )?;
        Ok(value.flatten())
    }

    fn set_config(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        const CONTEXT: &str = "writing configuration";
        match value {
            Some(value) => self.execute(
                CONTEXT,
                "INSERT OR REPLACE INTO config VALUES (?, ?)",
                [key, value],
            ),
            None => self.execute(CONTEXT, "DELETE FROM config WHERE name = ?", [key]),
        }?;
        Ok(())
    }

    fn cells(&mut self) -> Result<Vec<CellRow>> {
        Ok(self.query_rows(
            "reading the partition table",
            "SELECT partition, nid, tid, pack FROM pt ORDER BY partition, nid",
            [],
            codec::cell,
        )?)
    }

    fn put_cell(&mut self, cell: &CellRow) -> Result<()> {
        let tid = rows::cell_tid(cell)?;
        let pack = cell
            .pack
            .map(|pack| stored("cell pack id", pack.0))
            .transpose()?;
        self.execute(
            "writing a cell",
            "INSERT OR REPLACE INTO pt VALUES (?, ?, ?, ?)",
            params![cell.partition, cell.nid.0, tid, pack],
        )?;
        Ok(())
    }

    fn delete_cell(&mut self, partition: Partition, nid: NodeId) -> Result<()> {
        self.execute(
            "deleting a cell",
            "DELETE FROM pt WHERE partition = ? AND nid = ?",
            params![partition, nid.0],
        )?;
        Ok(())
    }

    fn delete_cells(&mut self) -> Result<()> {
        self.execute("deleting the partition table", "DELETE FROM pt", [])?;
        Ok(())
    }

    fn transaction(&mut self, partition: Partition, tid: Tid) -> Result<Option<TransactionMeta>> {
        let Some(tid_key) = key(tid.0) else {
            return Ok(None);
        };
        Ok(self.query_row(
            "reading transaction metadata",
            "SELECT oids, user, description, ext, packed, ttid FROM trans
             WHERE partition = ? AND tid = ?",
            params![partition, tid_key],
            |row| codec::transaction(row, tid),
        )?)
    }

    fn put_transaction(
        &mut self,
        partition: Partition,
        tid: Tid,
        meta: &TransactionMeta,
    ) -> Result<()> {
        let tid = stored("tid", tid.0)?;
        let ttid = stored("ttid", meta.ttid.0)?;
        self.execute(
            "storing transaction metadata",
            "INSERT OR REPLACE INTO trans VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                partition,
                tid,
                meta.packed,
                rows::oid_list(&meta.oids),
                meta.user,
                meta.description,
                meta.extension,
                ttid
            ],
        )?;
        Ok(())
    }

    fn final_tid(&mut self, partition: Partition, ttid: Tid) -> Result<Option<Tid>> {
        let Some(ttid) = key(ttid.0) else {
            return Ok(None);
        };
        Ok(self.query_row(
            "finding the final TID of a transaction",
            "SELECT tid FROM trans WHERE partition = ? AND tid >= ? AND ttid = ? LIMIT 1",
            params![partition, ttid, ttid],
            |row| codec::tid(row, 0, "tid"),
        )?)
    }

    fn tids(&mut self, partitions: &[Partition], offset: u64, length: u64) -> Result<Vec<Tid>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        // Partition numbers are plain integers: safe to inline, and the
        // statement cache keeps the few distinct lists a node uses.
        let list = partitions
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let query = format!(
            "SELECT tid FROM trans WHERE partition IN ({list}) ORDER BY tid DESC LIMIT ? OFFSET ?"
        );
        Ok(self.query_rows(
            "listing transactions",
            &query,
            params![bound(length), bound(offset)],
            |row| codec::tid(row, 0, "tid"),
        )?)
    }

    fn tids_between(
        &mut self,
        partition: Partition,
        min: Tid,
        max: Tid,
        length: u64,
    ) -> Result<Vec<Tid>> {
        Ok(self.query_rows(
            "listing transactions of a partition",
            "SELECT tid FROM trans WHERE partition = ? AND ? <= tid AND tid <= ?
             ORDER BY tid LIMIT ?",
            params![partition, bound(min.0), bound(max.0), bound(length)],
            |row| codec::tid(row, 0, "tid"),
        )?)
    }

    fn first_tid(&mut self, partition: Partition) -> Result<Option<Tid>> {
        let first = self.query_row(
            "reading the first TID",
            "SELECT MIN(tid) FROM trans WHERE partition = ?",
            [partition],
            |row| codec::optional_tid(row, 0, "tid"),
        )?;
        Ok(first.flatten())
    }

    fn last_tid(&mut self, partition: Partition) -> Result<Option<Tid>> {
        let mut last = None;
        for query in [
            "SELECT MAX(tid) FROM trans WHERE partition = ?",
            "SELECT MAX(tid) FROM obj WHERE partition = ?",
        ] {
            let tid = self.query_row(
                "reading the last TID of a partition",
                query,
                [partition],
                |row| codec::optional_tid(row, 0, "tid"),
            )?;
            last = last.max(tid.flatten());
        }
        Ok(last)
    }

    fn last_oid(&mut self, partition: Partition) -> Result<Option<Oid>> {
        let last = self.query_row(
            "reading the last oid of a partition",
            "SELECT MAX(oid) FROM obj WHERE partition = ?",
            [partition],
            |row| codec::optional_oid(row, 0),
        )?;
        Ok(last.flatten())
    }

    fn delete_transactions_after(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        self.execute(
            "deleting transactions",
            "DELETE FROM trans WHERE partition = ? AND tid > ?",
            params![partition, bound(tid.0)],
        )?;
        Ok(())
    }

    fn temporary_transaction(&mut self, ttid: Tid) -> Result<Option<TransactionMeta>> {
        let Some(ttid_key) = key(ttid.0) else {
            return Ok(None);
        };
        Ok(self.query_row(
            "reading metadata of a transaction in progress",
            "SELECT oids, user, description, ext, packed, ttid FROM ttrans WHERE ttid = ?",
            [ttid_key],
            |row| codec::transaction(row, ttid),
        )?)
    }

    fn put_temporary_transaction(
        &mut self,
        partition: Partition,
        ttid: Tid,
        meta: &TransactionMeta,
    ) -> Result<()> {
        const CONTEXT: &str = "storing metadata of a transaction in progress";
        let ttid = stored("ttid", ttid.0)?;
        self.execute(CONTEXT, "DELETE FROM ttrans WHERE ttid = ?", [ttid])?;
        self.execute(
            CONTEXT,
            "INSERT INTO ttrans VALUES (?, NULL, ?, ?, ?, ?, ?, ?)",
            params![
                partition,
                meta.packed,
                rows::oid_list(&meta.oids),
                meta.user,
                meta.description,
                meta.extension,
                ttid
            ],
        )?;
        Ok(())
    }

    fn set_temporary_tid(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        let tid = stored("tid", tid.0)?;
        let Some(ttid) = key(ttid.0) else {
            return Ok(());
        };
        self.execute(
            "locking a transaction",
            "UPDATE ttrans SET tid = ? WHERE ttid = ?",
            [tid, ttid],
        )?;
        Ok(())
    }

    fn temporary_transactions(&mut self) -> Result<Vec<(Tid, Option<Tid>)>> {
        Ok(self.query_rows(
            "listing unfinished transactions",
            "SELECT ttid, tid FROM ttrans",
            [],
            |row| {
                Ok((
                    codec::tid(row, 0, "ttid")?,
                    codec::optional_tid(row, 1, "tid")?,
                ))
            },
        )?)
    }

    fn temporary_object_ttids(&mut self) -> Result<Vec<Tid>> {
        Ok(self.query_rows(
            "listing unfinished transactions",
            "SELECT DISTINCT tid FROM tobj",
            [],
            |row| codec::tid(row, 0, "ttid"),
        )?)
    }

    fn make_permanent(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        let tid = stored("tid", tid.0)?;
        let Some(ttid) = key(ttid.0) else {
            return Ok(());
        };
        for statement in [
            "INSERT OR REPLACE INTO obj
             SELECT partition, oid, ?1, data_id, value_tid FROM tobj WHERE tid = ?2",
            "DELETE FROM tobj WHERE tid = ?2",
            "INSERT OR REPLACE INTO trans
             SELECT partition, ?1, packed, oids, user, description, ext, ttid
             FROM ttrans WHERE ttid = ?2",
            "DELETE FROM ttrans WHERE ttid = ?2",
        ] {
            self.execute("unlocking a transaction", statement, [tid, ttid])?;
        }
        Ok(())
    }

    fn delete_temporary(&mut self, ttid: Option<Tid>) -> Result<()> {
        const CONTEXT: &str = "deleting rows of transactions in progress";
        match ttid {
            Some(ttid) => {
                let Some(ttid) = key(ttid.0) else {
                    return Ok(());
                };
                self.execute(CONTEXT, "DELETE FROM tobj WHERE tid = ?", [ttid])?;
                self.execute(CONTEXT, "DELETE FROM ttrans WHERE ttid = ?", [ttid])?;
            }
            None => {
                self.execute(CONTEXT, "DELETE FROM tobj", [])?;
                self.execute(CONTEXT, "DELETE FROM ttrans", [])?;
            }
        }
        Ok(())
    }

    fn put_object(
        &mut self,
        temporary: bool,
        partition: Partition,
        tid: Tid,
        row: &ObjectRow,
    ) -> Result<Option<DataId>> {
        const CONTEXT: &str = "storing an object record";
        let tid = stored("tid", tid.0)?;
        let oid = stored("oid", row.oid.0)?;
        let data_id = row.data_id.map(|id| stored("data id", id)).transpose()?;
        let value_tid = row
            .data_serial
            .map(|tid| stored("data serial", tid.0))
            .transpose()?;
        // Literals per table: no SQL built on the vote path.
        let (select, insert) = if temporary {
            (
                "SELECT data_id FROM tobj WHERE partition = ? AND oid = ? AND tid = ?",
                "INSERT OR REPLACE INTO tobj VALUES (?, ?, ?, ?, ?)",
            )
        } else {
            (
                "SELECT data_id FROM obj WHERE partition = ? AND oid = ? AND tid = ?",
                "INSERT OR REPLACE INTO obj VALUES (?, ?, ?, ?, ?)",
            )
        };
        let replaced = self.query_row(CONTEXT, select, params![partition, oid, tid], |row| {
            codec::optional_id(row, 0, "data id")
        })?;
        self.execute(
            CONTEXT,
            insert,
            params![partition, oid, tid, data_id, value_tid],
        )?;
        Ok(replaced.flatten())
    }

    fn object(&mut self, partition: Partition, oid: Oid, serial: Tid) -> Result<Option<ObjectRow>> {
        let (Some(oid_key), Some(serial)) = (key(oid.0), key(serial.0)) else {
            return Ok(None);
        };
        Ok(self.query_row(
            "reading an object record",
            "SELECT data_id, value_tid FROM obj WHERE partition = ? AND oid = ? AND tid = ?",
            params![partition, oid_key, serial],
            |row| codec::object_row(row, 0, oid),
        )?)
    }

    fn object_before(
        &mut self,
        partition: Partition,
        oid: Oid,
        before: Tid,
    ) -> Result<Option<(Tid, ObjectRow)>> {
        let Some(oid_key) = key(oid.0) else {
            return Ok(None);
        };
        Ok(self.query_row(
            "reading an object revision",
            "SELECT tid, data_id, value_tid FROM obj WHERE partition = ? AND oid = ? AND tid < ?
             ORDER BY tid DESC LIMIT 1",
            params![partition, oid_key, bound(before.0)],
            |row| {
                Ok((
                    codec::tid(row, 0, "serial")?,
                    codec::object_row(row, 1, oid)?,
                ))
            },
        )?)
    }

    fn load_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        revision: Revision,
    ) -> Result<Option<ObjectRecord>> {
        let Some(oid_key) = key(oid.0) else {
            return Ok(None);
        };
        let (query, tid) = match revision {
            Revision::Serial(serial) => match key(serial.0) {
                Some(serial) => (
                    select_object!("obj.partition = ?1 AND obj.oid = ?2 AND obj.tid = ?3"),
                    serial,
                ),
                None => return Ok(None),
            },
            Revision::Before(before) => (
                select_object!(
                    "obj.partition = ?1 AND obj.oid = ?2 AND obj.tid < ?3 \
                     ORDER BY obj.tid DESC LIMIT 1"
                ),
                bound(before.0),
            ),
            Revision::Latest => (
                select_object!(
                    "obj.partition = ?1 AND obj.oid = ?2 AND obj.tid <= ?3 \
                     ORDER BY obj.tid DESC LIMIT 1"
                ),
                i64::MAX,
            ),
        };
        Ok(self.query_row(
            "loading an object",
            query,
            params![partition, oid_key, tid],
            |row| codec::object_record(row, oid),
        )?)
    }

    fn has_object(&mut self, partition: Partition, oid: Oid) -> Result<bool> {
        let Some(oid) = key(oid.0) else {
            return Ok(false);
        };
        let found = self.query_row(
            "loading an object",
            "SELECT 1 FROM obj WHERE partition = ? AND oid = ? LIMIT 1",
            params![partition, oid],
            |_| Ok(()),
        )?;
        Ok(found.is_some())
    }

    fn last_serial(&mut self, partition: Partition, oid: Oid) -> Result<Option<Tid>> {
        let Some(oid) = key(oid.0) else {
            return Ok(None);
        };
        let last = self.query_row(
            "reading the last serial of an object",
            "SELECT MAX(tid) FROM obj WHERE partition = ? AND oid = ?",
            params![partition, oid],
            |row| codec::optional_tid(row, 0, "serial"),
        )?;
        Ok(last.flatten())
    }

    fn object_history(
        &mut self,
        partition: Partition,
        oid: Oid,
        offset: u64,
        length: u64,
    ) -> Result<Vec<HistoryEntry>> {
        let Some(oid) = key(oid.0) else {
            return Ok(Vec::new());
        };
        Ok(self.query_rows(
            "reading object history",
            "SELECT obj.tid, IFNULL(LENGTH(data.value), 0)
             FROM obj LEFT JOIN data ON data.id = obj.data_id
             WHERE obj.partition = ? AND obj.oid = ?
             ORDER BY obj.tid DESC LIMIT ? OFFSET ?",
            params![partition, oid, bound(length), bound(offset)],
            |row| {
                Ok(HistoryEntry {
                    serial: codec::tid(row, 0, "serial")?,
                    size: codec::id(row, 1, "data size")?,
                })
            },
        )?)
    }

    fn oids_with_data(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        tid: Tid,
        length: u64,
    ) -> Result<Vec<Oid>> {
        let Some(min_oid) = key(min_oid.0) else {
            return Ok(Vec::new());
        };
        Ok(self.query_rows(
            "listing oids",
            "SELECT o.oid FROM obj AS o
             WHERE o.partition = ?1 AND o.oid >= ?2 AND o.data_id IS NOT NULL
               AND o.tid = (SELECT MAX(tid) FROM obj
                            WHERE partition = ?1 AND oid = o.oid AND tid <= ?3)
             ORDER BY o.oid LIMIT ?4",
            params![partition, min_oid, bound(tid.0), bound(length)],
            |row| codec::oid(row, 0),
        )?)
    }

    fn temporary_data_ids(&mut self, ttid: Option<Tid>) -> Result<Vec<DataId>> {
        const CONTEXT: &str = "reading data ids of transactions in progress";
        let data_id = |row: &rusqlite::Row<'_>| codec::id(row, 0, "data id");
        Ok(match ttid {
            Some(ttid) => {
                let Some(ttid) = key(ttid.0) else {
                    return Ok(Vec::new());
                };
                self.query_rows(
                    CONTEXT,
                    "SELECT data_id FROM tobj WHERE tid = ? AND data_id IS NOT NULL",
                    [ttid],
                    data_id,
                )?
            }
            None => self.query_rows(
                CONTEXT,
                "SELECT data_id FROM tobj WHERE data_id IS NOT NULL",
                [],
                data_id,
            )?,
        })
    }

    fn delete_objects_up_to(
        &mut self,
        partition: Partition,
        oid: Oid,
        tid: Tid,
    ) -> Result<Vec<DataId>> {
        const CONTEXT: &str = "deleting object records";
        let Some(oid) = key(oid.0) else {
            return Ok(Vec::new());
        };
        let ids = self.query_rows(
            CONTEXT,
            "SELECT DISTINCT data_id FROM obj
             WHERE partition = ? AND oid = ? AND tid <= ? AND data_id IS NOT NULL",
            params![partition, oid, bound(tid.0)],
            |row| codec::id(row, 0, "data id"),
        )?;
        self.execute(
            CONTEXT,
            "DELETE FROM obj WHERE partition = ? AND oid = ? AND tid <= ?",
            params![partition, oid, bound(tid.0)],
        )?;
        Ok(ids)
    }

    fn delete_objects_after(&mut self, partition: Partition, tid: Tid) -> Result<Vec<DataId>> {
        const CONTEXT: &str = "deleting object records";
        let ids = self.query_rows(
            CONTEXT,
            "SELECT DISTINCT data_id FROM obj
             WHERE partition = ? AND tid > ? AND data_id IS NOT NULL",
            params![partition, bound(tid.0)],
            |row| codec::id(row, 0, "data id"),
        )?;
        self.execute(
            CONTEXT,
            "DELETE FROM obj WHERE partition = ? AND tid > ?",
            params![partition, bound(tid.0)],
        )?;
        Ok(ids)
    }

    fn pack_candidates(
        &mut self,
        partition: Partition,
        min_oid: Oid,
        pack_tid: Tid,
        limit: u64,
    ) -> Result<Vec<PackCandidate>> {
        self.candidates(partition, min_oid, pack_tid, limit)
    }

    fn pack_candidate(
        &mut self,
        partition: Partition,
        oid: Oid,
        pack_tid: Tid,
    ) -> Result<Option<PackCandidate>> {
        self.candidate(partition, oid, pack_tid)
    }

    fn last_data_id(&mut self, first: DataId, last: DataId) -> Result<Option<DataId>> {
        let id = self.query_row(
            "finding the last data id of a partition",
            "SELECT MAX(id) FROM data WHERE ?1 <= id AND id <= ?2",
            params![bound(first), bound(last)],
            |row| codec::optional_id(row, 0, "data id"),
        )?;
        Ok(id.flatten())
    }

    fn put_data(
        &mut self,
        id: DataId,
        checksum: Checksum,
        compression: u8,
        data: &[u8],
    ) -> Result<()> {
        let id = stored("data id", id)?;
        self.execute(
            "storing object data",
            "INSERT INTO data VALUES (?, ?, ?, ?)",
            params![id, &checksum.0[..], compression, data],
        )?;
        Ok(())
    }

    fn load_data(&mut self, id: DataId) -> Result<Option<(u8, Checksum, Vec<u8>)>> {
        let Some(id_key) = key(id) else {
            return Ok(None);
        };
        Ok(self.query_row(
            "loading data",
            "SELECT compression, hash, value FROM data WHERE id = ?",
            [id_key],
            |row| codec::data(row, 0, id),
        )?)
    }

    fn prune_data(&mut self, ids: &[DataId]) -> Result<()> {
        for &id in ids {
            let Some(id) = key(id) else {
                continue;
            };
            self.execute(
                "pruning unreferenced data",
                "DELETE FROM data WHERE id = ?1
                   AND NOT EXISTS (SELECT 1 FROM obj WHERE data_id = ?1)
                   AND NOT EXISTS (SELECT 1 FROM tobj WHERE data_id = ?1)",
                [id],
            )?;
        }
        Ok(())
    }

    fn put_pack_order(&mut self, order: &PackOrder) -> Result<()> {
        let id = stored("pack id", order.id.0)?;
        let pack_tid = stored("pack tid", order.pack_tid.0)?;
        let oids = order.oids.as_deref().map(rows::oid_list);
        self.execute(
            "storing a pack order",
            "INSERT OR REPLACE INTO pack VALUES (?, ?, ?, ?, ?)",
            params![id, order.approved, order.partial, oids, pack_tid],
        )?;
        Ok(())
    }

    fn sign_pack_order(&mut self, id: Tid, approved: bool) -> Result<bool> {
        let Some(id) = key(id.0) else {
            return Ok(false);
        };
        let changed = self.execute(
            "signing pack orders",
            "UPDATE pack SET approved = ? WHERE tid = ?",
            params![approved, id],
        )?;
        Ok(changed > 0)
    }

    fn pack_orders(&mut self, min_id: Tid) -> Result<Vec<PackOrder>> {
        Ok(self.query_rows(
            "reading pack orders",
            "SELECT tid, approved, partial, oids, pack_tid FROM pack WHERE tid >= ? ORDER BY tid",
            [bound(min_id.0)],
            codec::pack_order,
        )?)
    }

    fn rekey_pack_order(&mut self, from: Tid, to: Tid) -> Result<()> {
        let to = stored("pack id", to.0)?;
        let Some(from) = key(from.0) else {
            return Ok(());
        };
        self.execute(
            "giving a pack order its final id",
            "UPDATE OR REPLACE pack SET tid = ?1 WHERE tid = ?2",
            [to, from],
        )?;
        Ok(())
    }

    fn delete_pack_order(&mut self, id: Tid) -> Result<()> {
        let Some(id) = key(id.0) else {
            return Ok(());
        };
        self.execute(
            "deleting a pack order",
            "DELETE FROM pack WHERE tid = ?",
            [id],
        )?;
        Ok(())
    }

    fn delete_pack_orders_after(&mut self, tid: Tid) -> Result<()> {
        self.execute(
            "deleting pack orders",
            "DELETE FROM pack WHERE tid > ?",
            [bound(tid.0)],
        )?;
        Ok(())
    }

    fn last_approved_pack_id(&mut self) -> Result<Option<Tid>> {
        let id = self.query_row(
            "reading the last approved pack order",
            "SELECT MAX(tid) FROM pack WHERE approved",
            [],
            |row| codec::optional_tid(row, 0, "pack id"),
        )?;
        Ok(id.flatten())
    }

    fn pack_order(&mut self, id: Tid) -> Result<Option<PackOrder>> {
        self.pack_order_of(id)
    }

    fn object_serials(
        &mut self,
        partition: Partition,
        min_tid: Tid,
        min_oid: Oid,
        max_tid: Tid,
        length: u64,
    ) -> Result<Vec<(Tid, Oid)>> {
        self.serials(partition, min_tid, min_oid, max_tid, length)
    }

    fn delete_transaction(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        self.delete_trans_row(partition, tid)
    }

    fn delete_object(
        &mut self,
        partition: Partition,
        oid: Oid,
        serial: Tid,
    ) -> Result<Option<DataId>> {
        self.delete_obj_row(partition, oid, serial)
    }

    fn delete_partition_objects(
        &mut self,
        partition: Partition,
        limit: u64,
    ) -> Result<(u64, Vec<DataId>)> {
        self.drop_obj_rows(partition, limit)
    }

    fn delete_partition_transactions(&mut self, partition: Partition, limit: u64) -> Result<u64> {
        self.drop_trans_rows(partition, limit)
    }
}
