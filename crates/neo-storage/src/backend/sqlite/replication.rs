//! The statements of replication (§9.1), replica checks (§9.3) and of the
//! deletion of dropped partitions, behind their [`Backend`](super::Backend)
//! methods in `queries.rs`.

use neo_proto::{Oid, Partition, Tid};
use rusqlite::params;

use super::codec::{self, bound, key};
use super::SqliteBackend;
use crate::backend::{DataId, Result};

impl SqliteBackend {
    pub(super) fn serials(
        &mut self,
        partition: Partition,
        min_tid: Tid,
        min_oid: Oid,
        max_tid: Tid,
        length: u64,
    ) -> Result<Vec<(Tid, Oid)>> {
        // A row value: one range scan of the (partition, tid, oid) index.
        Ok(self.query_rows(
            "listing object records",
            "SELECT tid, oid FROM obj
             WHERE partition = ?1 AND (tid, oid) >= (?2, ?3) AND tid <= ?4
             ORDER BY tid, oid LIMIT ?5",
            params![
                partition,
                bound(min_tid.0),
                bound(min_oid.0),
                bound(max_tid.0),
                bound(length)
            ],
            |row| Ok((codec::tid(row, 0, "serial")?, codec::oid(row, 1)?)),
        )?)
    }

    pub(super) fn delete_trans_row(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        let Some(tid) = key(tid.0) else {
            return Ok(());
        };
        self.execute(
            "deleting a transaction",
            "DELETE FROM trans WHERE partition = ? AND tid = ?",
            params![partition, tid],
        )?;
        Ok(())
    }

    pub(super) fn delete_obj_row(
        &mut self,
        partition: Partition,
        oid: Oid,
        serial: Tid,
    ) -> Result<Option<DataId>> {
        const CONTEXT: &str = "deleting an object record";
        let (Some(oid), Some(serial)) = (key(oid.0), key(serial.0)) else {
            return Ok(None);
        };
        let data_id = self.query_row(
            CONTEXT,
            "SELECT data_id FROM obj WHERE partition = ? AND oid = ? AND tid = ?",
            params![partition, oid, serial],
            |row| codec::optional_id(row, 0, "data id"),
        )?;
        self.execute(
            CONTEXT,
            "DELETE FROM obj WHERE partition = ? AND oid = ? AND tid = ?",
            params![partition, oid, serial],
        )?;
        Ok(data_id.flatten())
    }

    pub(super) fn drop_obj_rows(
        &mut self,
        partition: Partition,
        limit: u64,
    ) -> Result<(u64, Vec<DataId>)> {
        const CONTEXT: &str = "deleting the records of a dropped partition";
        let ids = self.query_rows(
            CONTEXT,
            "SELECT DISTINCT data_id FROM
               (SELECT data_id FROM obj WHERE partition = ?1 ORDER BY tid, oid LIMIT ?2)
             WHERE data_id IS NOT NULL",
            params![partition, bound(limit)],
            |row| codec::id(row, 0, "data id"),
        )?;
        let deleted = self.execute(
            CONTEXT,
            "DELETE FROM obj WHERE partition = ?1 AND (tid, oid) IN
               (SELECT tid, oid FROM obj WHERE partition = ?1 ORDER BY tid, oid LIMIT ?2)",
            params![partition, bound(limit)],
        )?;
        Ok((deleted as u64, ids))
    }

    pub(super) fn drop_trans_rows(&mut self, partition: Partition, limit: u64) -> Result<u64> {
        const CONTEXT: &str = "deleting the transactions of a dropped partition";
        // The pack orders first: they are found through their transaction.
        self.execute(
            CONTEXT,
            "DELETE FROM pack WHERE tid IN
               (SELECT tid FROM trans WHERE partition = ?1 ORDER BY tid LIMIT ?2)",
            params![partition, bound(limit)],
        )?;
        let deleted = self.execute(
            CONTEXT,
            "DELETE FROM trans WHERE partition = ?1 AND tid IN
               (SELECT tid FROM trans WHERE partition = ?1 ORDER BY tid LIMIT ?2)",
            params![partition, bound(limit)],
        )?;
        Ok(deleted as u64)
    }
}
