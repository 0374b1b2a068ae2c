//! The life of a transaction in the database (§6, §12.2): stored at vote
//! in the temporary tables, locked, made permanent at unlock, or aborted;
//! and truncation (§11.1).

use neo_proto::Tid;

use super::Database;
use crate::backend::{DataId, FatalError, ObjectRow, Result, TransactionMeta};

impl Database {
    /// Inserts object rows and optionally the transaction row: into
    /// `tobj`/`ttrans` keyed by TTID `tid` when `temporary`, else directly
    /// into `obj`/`trans` (replication). Re-inserting a row replaces it,
    /// and the data it referenced is pruned if nothing else uses it.
    pub fn store_transaction(
        &mut self,
        tid: Tid,
        objects: &[ObjectRow],
        transaction: Option<&TransactionMeta>,
        temporary: bool,
    ) -> Result<()> {
        const CONTEXT: &str = "storing a transaction";
        let mut replaced = Vec::new();
        let mut stored = Vec::new();
        for object in objects {
            let partition = self.partition_of_oid(object.oid, CONTEXT)?;
            let old = self.backend.put_object(temporary, partition, tid, object)?;
            if let Some(old) = old.filter(|old| Some(*old) != object.data_id) {
                replaced.push(old);
            }
            stored.extend(object.data_id);
        }
        if temporary {
            // The replaced temporary rows held their data.
            self.release_data(&replaced, true)?;
        } else {
            // Committed rows reference their data: the holds of
            // `store_data` are not needed any more.
            self.release_data(&stored, false)?;
            self.prune_data(&replaced)?;
        }
        if let Some(meta) = transaction {
            let partition = self.partition_of_tid(tid, CONTEXT)?;
            if temporary {
                self.backend
                    .put_temporary_transaction(partition, tid, meta)?;
            } else {
                self.backend.put_transaction(partition, tid, meta)?;
            }
        }
        Ok(())
    }

    /// Records the final `tid` of `ttid`; once committed, the commit
    /// decision survives a crash (§12.2).
    pub fn lock_transaction(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        self.backend.set_temporary_tid(ttid, tid)
    }

    /// Moves the rows of `ttid` to `obj`/`trans` under `tid`, re-keys its
    /// pack order (if any) to `tid` and releases their data holds; not
    /// committed (deferred commit).
    pub fn unlock_transaction(&mut self, ttid: Tid, tid: Tid) -> Result<()> {
        let ids = self.backend.temporary_data_ids(Some(ttid))?;
        self.backend.make_permanent(ttid, tid)?;
        // The pack order carried by the transaction takes its final id.
        self.backend.rekey_pack_order(ttid, tid)?;
        self.writeback_committed();
        self.release_data(&ids, false)
    }

    /// Deletes the temporary rows of `ttid` (and its pack order), releasing
    /// and pruning their data.
    pub fn abort_transaction(&mut self, ttid: Tid) -> Result<()> {
        let ids = self.backend.temporary_data_ids(Some(ttid))?;
        // A pack order is stored with the metadata of its transaction.
        if self.backend.temporary_transaction(ttid)?.is_some() {
            self.backend.delete_pack_order(ttid)?;
        }
        self.backend.delete_temporary(Some(ttid))?;
        self.release_data(&ids, true)
    }

    /// Deletes all temporary rows, the pack orders of unfinished
    /// transactions and their unreferenced data; forgets all holds;
    /// committed.
    pub fn drop_unfinished_data(&mut self) -> Result<()> {
        let mut ids: Vec<DataId> = self.backend.temporary_data_ids(None)?;
        ids.extend(self.held.keys().copied());
        ids.sort_unstable();
        ids.dedup();
        self.held.clear();
        for (ttid, _) in self.backend.temporary_transactions()? {
            self.backend.delete_pack_order(ttid)?;
        }
        self.backend.delete_temporary(None)?;
        self.prune_data(&ids)?;
        self.backend.commit()
    }

    /// Executes a pending truncation (§11.1 step 5): deletes everything
    /// after `truncate_tid` in every partition, prunes data, lowers the
    /// progress of own OUT_OF_DATE cells, clears `truncate_tid`; committed.
    /// Returns the truncation tid, or `None` if none was pending.
    pub fn truncate(&mut self) -> Result<Option<Tid>> {
        let Some(tid) = self.truncate_tid()? else {
            return Ok(None);
        };
        // Below the sources' last tid, a restart would import again what
        // was cut; with write-back, what was cut is in the source already
        // (NEO/py refuses both).
        if let Some(importer) = &self.importer {
            let last = Tid(importer.last_tid());
            if tid < last {
                return Err(FatalError::Import(format!(
                    "can not truncate at {tid} below the last tid of the imported databases ({last})"
                ))
                .into());
            }
            if importer.writeback.is_some() {
                return Err(FatalError::Import(format!(
                    "can not truncate at {tid}: transactions are written back to the source"
                ))
                .into());
            }
        }
        for partition in 0..self.num_partitions() {
            let mut ids = self.backend.delete_objects_after(partition, tid)?;
            self.backend.delete_transactions_after(partition, tid)?;
            ids.sort_unstable();
            ids.dedup();
            self.prune_data(&ids)?;
        }
        self.backend.delete_pack_orders_after(tid)?;
        let partitions: Vec<_> = self.own.keys().copied().collect();
        for partition in partitions {
            self.update_own_cell(partition, |cell| match cell.complete_up_to {
                Some(complete) if complete > tid => {
                    cell.complete_up_to = Some(tid);
                    true
                }
                _ => false,
            })?;
        }
        self.set_truncate_tid(None)?;
        self.backend.commit()?;
        Ok(Some(tid))
    }
}
