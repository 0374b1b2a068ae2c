//! Deleting the data of partitions this node no longer has (architecture.md
//! §3.2 DISCARDED, §12.5): in background steps of bounded size, unless the
//! node runs with `--disable-drop-partitions`. A partition assigned again
//! stops being deleted: from then on it receives writes that replication
//! will not fetch again, and replication compares what is left with its
//! source.

use std::collections::BTreeSet;

use neo_proto::Partition;

use super::{Handled, Storage, DEFERRED_COMMIT_SECONDS};

/// Rows deleted per step: one short database transaction between two
/// client requests.
const DROP_BATCH: u64 = 1000;

/// The partitions to delete.
#[derive(Debug, Default)]
pub(super) struct Dropping {
    /// `--disable-drop-partitions`: their data is kept.
    pub(super) disabled: bool,
    partitions: BTreeSet<Partition>,
}

impl Dropping {
    /// Whether a background step has something to do.
    pub(super) fn has_step(&self) -> bool {
        !self.partitions.is_empty()
    }
}

impl Storage {
    /// The partition table changed: `dropped` partitions are to be deleted,
    /// those assigned again are not any more.
    pub(super) fn partitions_dropped(&mut self, dropped: BTreeSet<Partition>) {
        let assigned: BTreeSet<Partition> = self
            .db
            .assigned_cells()
            .into_iter()
            .map(|cell| cell.partition)
            .collect();
        if self.dropping.disabled {
            if !dropped.is_empty() {
                tracing::info!(
                    ?dropped,
                    "keeping the data of partitions no longer assigned"
                );
            }
            return;
        }
        self.dropping.partitions.extend(dropped);
        self.dropping
            .partitions
            .retain(|partition| !assigned.contains(partition));
    }

    /// One background step of deletion.
    pub(super) fn drop_step(&mut self) -> Handled {
        let Some(&partition) = self.dropping.partitions.first() else {
            return Ok(());
        };
        if self.db.drop_partition(partition, DROP_BATCH)? {
            self.dropping.partitions.remove(&partition);
            self.commit()?;
            tracing::debug!(partition, "partition data deleted");
        } else {
            // Committed with the next vote or lock, or within a second.
            self.commit_due
                .get_or_insert(self.now + DEFERRED_COMMIT_SECONDS);
        }
        Ok(())
    }
}
