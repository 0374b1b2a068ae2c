//! Pack (§11.2, §11.3): pack orders, and what pack keeps of each oid.

use std::collections::BTreeSet;

use neo_proto::{Oid, Partition, Tid};

use super::Database;
use crate::backend::{PackCandidate, PackOrder, Result};

impl Database {
    /// Records a pack order in `pack`, keyed by `order.id` (the TTID while
    /// the transaction carrying it is in progress:
    /// [`Database::unlock_transaction`] re-keys it to the final TID,
    /// [`Database::abort_transaction`] and
    /// [`Database::drop_unfinished_data`] delete it). Replaces an order of
    /// the same id. Not committed.
    pub fn store_pack_order(&mut self, order: &PackOrder) -> Result<()> {
        self.backend.put_pack_order(order)
    }

    /// Marks the stored orders among `approved` as approved and those among
    /// `rejected` as rejected; returns the ids that were found. Not
    /// committed (it is, with the lock of the transaction carrying it).
    pub fn sign_pack_orders(&mut self, approved: &[Tid], rejected: &[Tid]) -> Result<Vec<Tid>> {
        let mut found = Vec::new();
        for (ids, approve) in [(approved, true), (rejected, false)] {
            for &id in ids {
                if self.backend.sign_pack_order(id, approve)? {
                    found.push(id);
                }
            }
        }
        Ok(found)
    }

    /// Committed pack orders of readable partitions with id `>= min_id`,
    /// ascending (`AskPackOrders` from the master).
    pub fn pack_orders(&mut self, min_id: Tid) -> Result<Vec<PackOrder>> {
        // Orders of transactions in progress are not decided yet.
        let unfinished: BTreeSet<Tid> = self
            .backend
            .temporary_transactions()?
            .into_iter()
            .map(|(ttid, _)| ttid)
            .collect();
        let orders = self.backend.pack_orders(min_id)?;
        Ok(orders
            .into_iter()
            .filter(|order| {
                !unfinished.contains(&order.id) && self.readable_partition_of_tid(order.id).is_ok()
            })
            .collect())
    }

    /// Packs `partition` (§11.2) as `order` says, one bounded step: for at
    /// most `limit` oids from `min_oid` (every oid of the partition with a
    /// record at or before `order.pack_tid`, or only the listed ones of a
    /// partial pack), keeps the newest record at or before `pack_tid`
    /// unless it is a deletion, deletes the older ones, prunes the data
    /// nothing references any more. Returns the `min_oid` of the
    /// next step, or `None` when the partition is done. Idempotent. Not
    /// committed.
    pub fn pack(
        &mut self,
        partition: Partition,
        order: &PackOrder,
        min_oid: Oid,
        limit: u64,
    ) -> Result<Option<Oid>> {
        let limit = limit.max(1);
        let (candidates, next) = match &order.oids {
            Some(oids) => self.listed_pack_candidates(partition, order, oids, min_oid, limit)?,
            None => {
                let candidates =
                    self.backend
                        .pack_candidates(partition, min_oid, order.pack_tid, limit)?;
                let next = match candidates.last() {
                    Some(last) if candidates.len() as u64 >= limit => {
                        last.oid.0.checked_add(1).map(Oid)
                    }
                    _ => None,
                };
                (candidates, next)
            }
        };
        let mut freed = Vec::new();
        for candidate in candidates {
            if let Some(up_to) = self.pack_up_to(partition, &candidate)? {
                freed.extend(
                    self.backend
                        .delete_objects_up_to(partition, candidate.oid, up_to)?,
                );
            }
        }
        freed.sort_unstable();
        freed.dedup();
        self.prune_data(&freed)?;
        Ok(next)
    }

    /// The candidates of a partial pack among `oids`, and where the next
    /// step starts.
    fn listed_pack_candidates(
        &mut self,
        partition: Partition,
        order: &PackOrder,
        oids: &[Oid],
        min_oid: Oid,
        limit: u64,
    ) -> Result<(Vec<PackCandidate>, Option<Oid>)> {
        let pt = self.table("packing")?;
        let mut listed: Vec<Oid> = oids
            .iter()
            .copied()
            .filter(|oid| pt.partition_of_oid(*oid) == partition && *oid >= min_oid)
            .collect();
        listed.sort_unstable();
        listed.dedup();
        let step = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = listed.get(step).copied();
        let mut candidates = Vec::new();
        for oid in listed.into_iter().take(step) {
            candidates.extend(
                self.backend
                    .pack_candidate(partition, oid, order.pack_tid)?,
            );
        }
        Ok((candidates, next))
    }

    /// What pack deletes of one oid (§11.2): every record up to the
    /// returned tid, or nothing. The newest record at or before the pack
    /// tid stays, with everything after it, unless it is a deletion: then
    /// it goes with everything before it. Records kept never lose their
    /// data, as an undo record shares the data id of the record it
    /// restores.
    fn pack_up_to(
        &mut self,
        partition: Partition,
        candidate: &PackCandidate,
    ) -> Result<Option<Tid>> {
        let newest = self
            .backend
            .object(partition, candidate.oid, candidate.newest)?;
        Ok(match newest {
            Some(record) if record.data_id.is_none() => Some(candidate.newest),
            _ if candidate.records > 1 => Some(Tid(candidate.newest.0 - 1)),
            _ => None,
        })
    }
}
