//! Pack, storage side (architecture.md §11.3 steps 5–7 and 12): which
//! order to process next, and the pack itself in bounded steps so that
//! client service goes on between them.
//!
//! Progress is persisted per partition (`pt.pack`, the last order completed
//! on the cell). Inside a partition it is only kept in memory: pack is
//! idempotent, so a partition interrupted by a restart or a loss of the
//! master is simply packed again from its first oid.

use std::collections::VecDeque;

use neo_proto::packets::{self as p, PackOrder};
use neo_proto::{CellState, Oid, Partition, Tid};

use super::Asked;
use super::{Handled, Storage};

/// Oids examined per pack step: one step is one short database
/// transaction between two client requests.
pub(super) const PACK_BATCH: u64 = 200;

/// What the node knows and does about pack.
#[derive(Debug, Default)]
pub(super) struct PackState {
    /// `--disable-pack`: orders are reported completed without packing.
    pub(super) disabled: bool,
    /// Greatest approved order id the master told us about.
    pub(super) last_pack_id: Tid,
    /// Last value sent with `NotifyPackCompleted` to the current master.
    pub(super) reported: Option<Tid>,
    /// `AskPackOrders(m + 1)` is pending; `m` is the value it was asked for.
    pub(super) asked: Option<Tid>,
    /// The pack in progress.
    pub(super) job: Option<PackJob>,
}

/// One order being applied to the partitions that completed the previous one.
#[derive(Debug)]
pub(super) struct PackJob {
    order: PackOrder,
    /// Partitions still to pack; the first one is in progress.
    partitions: VecDeque<Partition>,
    /// Where the partition in progress resumes.
    next_oid: Oid,
}

impl PackState {
    /// A new connection to a master: it knows nothing of us yet.
    pub(super) fn reset(&mut self) {
        self.last_pack_id = Tid::ZERO;
        self.reported = None;
        self.stop();
    }

    /// Operation stopped: the pack resumes later from what is persisted.
    pub(super) fn stop(&mut self) {
        self.asked = None;
        self.job = None;
    }
}

impl Storage {
    /// Last pack id completed by each own cell: `(partition, state, id)`.
    fn packed_cells(&self) -> Vec<(Partition, CellState, Tid)> {
        self.db
            .assigned_cells()
            .into_iter()
            .filter_map(|cell| Some((cell.partition, cell.state, cell.pack?)))
            .collect()
    }

    /// Sends `NotifyPackCompleted` with the smallest completed id over own
    /// cells (the greatest approved id with `--disable-pack`) if it changed.
    pub(super) fn report_pack_completed(&mut self) -> Handled {
        let pack_id = if self.pack.disabled {
            self.pack.last_pack_id
        } else {
            match self.packed_cells().iter().map(|(_, _, id)| *id).min() {
                Some(id) => id,
                None => return Ok(()),
            }
        };
        if self.pack.reported == Some(pack_id) {
            return Ok(());
        }
        if let Some(master) = self.master() {
            self.pack.reported = Some(pack_id);
            self.notify(master, p::NotifyPackCompleted { pack_id });
        }
        Ok(())
    }

    /// `NotifyPackSigned` (§11.3 step 5).
    pub(super) fn on_pack_signed(&mut self, signed: p::NotifyPackSigned) -> Handled {
        if !self.pack.disabled {
            let changed = self
                .db
                .sign_pack_orders(&signed.approved, &signed.rejected)?;
            if !changed.is_empty() {
                self.commit()?;
            }
        }
        let Some(greatest) = signed.approved.iter().max().copied() else {
            return Ok(());
        };
        if greatest > self.pack.last_pack_id {
            self.pack.last_pack_id = greatest;
            if self.operational {
                if self.pack.disabled {
                    self.report_pack_completed()?;
                } else {
                    self.maybe_pack()?;
                }
            }
        }
        Ok(())
    }

    /// "Maybe pack" (§11.3 step 6): asks the master for the next order when
    /// the up-to-date cells are behind the last approved one.
    pub(super) fn maybe_pack(&mut self) -> Handled {
        // Pack waits for the end of an import (§12.7).
        if self.pack.disabled
            || !self.operational
            || self.pack.job.is_some()
            || self.pack.asked.is_some()
            || self.db.importing()
        {
            return Ok(());
        }
        let Some(master) = self.master() else {
            return Ok(());
        };
        let completed = self
            .packed_cells()
            .into_iter()
            .filter(|(_, state, _)| *state == CellState::UpToDate)
            .map(|(_, _, id)| id)
            .min();
        let Some(completed) = completed else {
            return Ok(());
        };
        if completed >= self.pack.last_pack_id {
            return Ok(());
        }
        self.pack.asked = Some(completed);
        let request = p::AskPackOrders {
            min_id: Tid(completed.0.saturating_add(1)),
        };
        self.asked
            .send(&mut self.out, master, Asked::PackOrders, request);
        Ok(())
    }

    /// `AnswerPackOrders` from the master: the first approved order after
    /// what the up-to-date cells completed.
    pub(super) fn on_pack_orders(&mut self, answer: p::AnswerPackOrders) -> Handled {
        let Some(completed) = self.pack.asked.take() else {
            return Ok(());
        };
        if !self.operational || self.pack.disabled || self.pack.job.is_some() {
            return Ok(());
        }
        let Some(order) = answer
            .orders
            .into_iter()
            .find(|order| order.approved == Some(true) && order.id > completed)
        else {
            tracing::warn!(%completed, "the master has no approved pack order to give");
            return Ok(());
        };
        let partitions: VecDeque<Partition> = self
            .packed_cells()
            .into_iter()
            .filter(|(_, state, id)| *state == CellState::UpToDate && *id == completed)
            .map(|(partition, _, _)| partition)
            .collect();
        tracing::info!(
            pack_id = %order.id,
            pack_tid = %order.pack_tid,
            partial = order.oids.is_some(),
            partitions = partitions.len(),
            "packing"
        );
        self.pack.job = Some(PackJob {
            order,
            partitions,
            next_oid: Oid(0),
        });
        Ok(())
    }

    /// One bounded step of the pack in progress.
    pub(super) fn pack_step(&mut self) -> Handled {
        if !self.operational {
            return Ok(());
        }
        let Some(job) = self.pack.job.as_mut() else {
            return Ok(());
        };
        let Some(&partition) = job.partitions.front() else {
            return self.pack_done();
        };
        let next = self
            .db
            .pack(partition, &job.order, job.next_oid, PACK_BATCH)?;
        match next {
            Some(next_oid) => {
                self.counters.pack_steps.inc();
                job.next_oid = next_oid;
                // Committed with the next vote or lock, or within a second.
                self.commit_due
                    .get_or_insert(self.now + super::DEFERRED_COMMIT_SECONDS);
            }
            None => {
                let id = job.order.id;
                self.counters.pack_steps.inc();
                job.partitions.pop_front();
                job.next_oid = Oid(0);
                let finished = job.partitions.is_empty();
                self.db.set_partition_packed(partition, id)?;
                self.commit()?;
                tracing::debug!(partition, pack_id = %id, "partition packed");
                if finished {
                    return self.pack_done();
                }
            }
        }
        Ok(())
    }

    fn pack_done(&mut self) -> Handled {
        if let Some(job) = self.pack.job.take() {
            tracing::info!(pack_id = %job.order.id, "pack completed");
            self.counters.packs_completed.inc();
        }
        self.report_pack_completed()?;
        self.maybe_pack()
    }
}
