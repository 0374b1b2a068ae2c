//! The partition table (architecture.md §3): which storage holds which
//! partition, in which cell state. Every node keeps a copy; only the primary
//! master changes it, by versioned increments (`ptid`).
//!
//! This file is the table every node shares; the master's algorithms are
//! in `master.rs` (outdating, end of replication, dropping nodes) and
//! `tweak.rs` (the layout of a new table and rebalancing).

mod master;
mod tweak;

pub use tweak::{Member, Tweaked};

use std::collections::{BTreeMap, BTreeSet};

use neo_proto::packets::{CellChange, CellInfo, Row};
use neo_proto::{CellState, NodeId, Oid, Partition, Ptid, Tid};

/// Why a partition table change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PtError {
    /// Changes must come in order: each exactly one ptid after the last.
    #[error("partition table change {got} does not follow {current:?}")]
    PtidGap {
        /// The ptid we have.
        current: Option<Ptid>,
        /// The ptid received.
        got: Ptid,
    },
    /// A change names a partition beyond the table.
    #[error("partition {partition} out of range (table has {partitions})")]
    PartitionOutOfRange {
        /// The partition named.
        partition: Partition,
        /// Number of partitions.
        partitions: u32,
    },
    /// A table with no partitions cannot place anything.
    #[error("a partition table needs at least one partition")]
    Empty,
    /// The same node twice in one row.
    #[error("node {nid} appears twice in partition {partition}")]
    DuplicateCell {
        /// The partition.
        partition: Partition,
        /// The repeated node.
        nid: NodeId,
    },
    /// Tweak with every storage excluded (NEO/py's text).
    #[error("Can't remove all nodes.")]
    NoNodeLeft,
    /// Dropping nodes would lose the last readable copy (NEO/py's text).
    #[error("Refuse to drop nodes that contain the only readable copies of partition {0}")]
    OnlyReadableCopy(Partition),
    /// No placement found (only possible if the search ran out of budget
    /// without any topology constraint, which its strategies rule out).
    #[error("no layout found for the partition table")]
    Unplaceable,
    /// A node reported on a partition it has no cell in.
    #[error("partition {partition} is not assigned to {nid}")]
    NotAssigned {
        /// The partition.
        partition: Partition,
        /// The node.
        nid: NodeId,
    },
}

/// One cell: a storage node holding a partition, in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    /// The storage node.
    pub nid: NodeId,
    /// Its state; never `Discarded` inside a table.
    pub state: CellState,
}

/// A partition table: `partitions` rows of cells, with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTable {
    /// Version; `None` before any table was built.
    ptid: Option<Ptid>,
    /// Wanted number of extra replicas of each partition.
    num_replicas: u32,
    /// One row per partition; at most one cell per node in a row.
    rows: Vec<Vec<Cell>>,
}

impl PartitionTable {
    /// An empty table of `partitions` rows, with no version yet.
    pub fn new(partitions: u32, num_replicas: u32) -> Result<PartitionTable, PtError> {
        if partitions == 0 {
            return Err(PtError::Empty);
        }
        Ok(PartitionTable {
            ptid: None,
            num_replicas,
            rows: vec![Vec::new(); partitions as usize],
        })
    }

    /// A table as received in `SendPartitionTable`/`AnswerPartitionTable`.
    pub fn from_rows(
        ptid: Option<Ptid>,
        num_replicas: u32,
        rows: &[Row],
    ) -> Result<PartitionTable, PtError> {
        let mut table =
            PartitionTable::new(u32::try_from(rows.len()).unwrap_or(u32::MAX), num_replicas)?;
        table.ptid = ptid;
        for (partition, row) in rows.iter().enumerate() {
            for cell in row {
                let partition = partition as Partition;
                if cell.state != CellState::Discarded {
                    table.set_cell(partition, cell.nid, cell.state)?;
                }
            }
        }
        Ok(table)
    }

    /// The rows in wire form.
    pub fn to_rows(&self) -> Vec<Row> {
        self.rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|cell| CellInfo {
                        nid: cell.nid,
                        state: cell.state,
                    })
                    .collect()
            })
            .collect()
    }

    /// Version of the table.
    pub fn ptid(&self) -> Option<Ptid> {
        self.ptid
    }

    /// Wanted number of extra replicas.
    pub fn num_replicas(&self) -> u32 {
        self.num_replicas
    }

    /// Number of partitions (rows).
    pub fn partitions(&self) -> u32 {
        self.rows.len() as u32
    }

    /// The partition of an object.
    pub fn partition_of_oid(&self, oid: Oid) -> Partition {
        (oid.0 % u64::from(self.partitions())) as Partition
    }

    /// The partition of a transaction (its metadata) or pack order.
    pub fn partition_of_tid(&self, tid: Tid) -> Partition {
        (tid.0 % u64::from(self.partitions())) as Partition
    }

    /// Cells of one partition; empty for an out-of-range partition.
    pub fn cells(&self, partition: Partition) -> &[Cell] {
        self.rows
            .get(partition as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Nodes that may serve reads of a partition (UP_TO_DATE or FEEDING).
    pub fn readable_cells(&self, partition: Partition) -> impl Iterator<Item = &Cell> {
        self.cells(partition)
            .iter()
            .filter(|cell| cell.state.is_readable())
    }

    /// The state of `nid`'s cell in `partition`, if it has one.
    pub fn cell_state(&self, partition: Partition, nid: NodeId) -> Option<CellState> {
        self.cells(partition)
            .iter()
            .find(|cell| cell.nid == nid)
            .map(|cell| cell.state)
    }

    /// Every node that has a cell, in any state.
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        self.rows.iter().flatten().map(|cell| cell.nid).collect()
    }

    /// The partitions `nid` has a cell in, with the cell state.
    pub fn cells_of(&self, nid: NodeId) -> Vec<(Partition, CellState)> {
        (0..self.partitions())
            .filter_map(|p| self.cell_state(p, nid).map(|state| (p, state)))
            .collect()
    }

    /// Whether `nid` has a cell in any partition.
    pub fn has_cells(&self, nid: NodeId) -> bool {
        self.rows.iter().flatten().any(|cell| cell.nid == nid)
    }

    /// Every row has at least one cell.
    pub fn is_filled(&self) -> bool {
        self.rows.iter().all(|row| !row.is_empty())
    }

    /// Filled, and every row has a readable cell on a node for which
    /// `running` is true (architecture.md §3.5).
    pub fn is_operational(&self, running: impl Fn(NodeId) -> bool) -> bool {
        self.unreadable_partitions(running).is_empty()
    }

    /// The partitions without a readable cell on a node for which
    /// `running` is true: why the table is not operational.
    pub fn unreadable_partitions(&self, running: impl Fn(NodeId) -> bool) -> Vec<Partition> {
        (0..self.partitions())
            .filter(|partition| {
                !self
                    .readable_cells(*partition)
                    .any(|cell| running(cell.nid))
            })
            .collect()
    }

    fn set_cell(
        &mut self,
        partition: Partition,
        nid: NodeId,
        state: CellState,
    ) -> Result<(), PtError> {
        let partitions = self.partitions();
        let row = self
            .rows
            .get_mut(partition as usize)
            .ok_or(PtError::PartitionOutOfRange {
                partition,
                partitions,
            })?;
        let existing = row.iter().position(|cell| cell.nid == nid);
        match (existing, state) {
            (Some(index), CellState::Discarded) => {
                row.remove(index);
            }
            (Some(index), state) => row[index].state = state,
            (None, CellState::Discarded) => {}
            (None, state) => row.push(Cell { nid, state }),
        }
        Ok(())
    }

    /// Applies a `NotifyPartitionChanges`: `ptid` must follow ours.
    pub fn apply_changes(
        &mut self,
        ptid: Ptid,
        num_replicas: u32,
        changes: &[CellChange],
    ) -> Result<(), PtError> {
        if self.ptid.map(|current| current + 1) != Some(ptid) {
            return Err(PtError::PtidGap {
                current: self.ptid,
                got: ptid,
            });
        }
        // Check everything first, so a bad change leaves the table intact.
        if let Some(change) = changes.iter().find(|c| c.partition >= self.partitions()) {
            return Err(PtError::PartitionOutOfRange {
                partition: change.partition,
                partitions: self.partitions(),
            });
        }
        for change in changes {
            self.set_cell(change.partition, change.nid, change.state)?;
        }
        self.ptid = Some(ptid);
        self.num_replicas = num_replicas;
        Ok(())
    }

    /// The changes (as the primary master broadcasts them) that turn `self`
    /// into `other`, which must have as many partitions.
    pub fn diff(&self, other: &PartitionTable) -> Vec<CellChange> {
        let mut changes = Vec::new();
        for partition in 0..self.partitions().min(other.partitions()) {
            let before = self.cells(partition);
            let after = other.cells(partition);
            for cell in before {
                if !after.iter().any(|c| c.nid == cell.nid) {
                    changes.push(CellChange {
                        partition,
                        nid: cell.nid,
                        state: CellState::Discarded,
                    });
                }
            }
            for cell in after {
                if !before.contains(cell) {
                    changes.push(CellChange {
                        partition,
                        nid: cell.nid,
                        state: cell.state,
                    });
                }
            }
        }
        changes
    }

    /// Master: applies changes of its own making and bumps the version.
    /// Returns the changes actually made (unchanged cells dropped), to be
    /// broadcast with the new ptid; no new version when nothing changed.
    pub fn commit_changes(&mut self, changes: Vec<CellChange>) -> Vec<CellChange> {
        let mut next = self.clone();
        for change in &changes {
            // Changes built by the master name existing partitions.
            let _ = next.set_cell(change.partition, change.nid, change.state);
        }
        let made = self.diff(&next);
        if !made.is_empty() {
            next.ptid = Some(self.ptid.map_or(1, |ptid| ptid + 1));
            *self = next;
        }
        made
    }

    /// How many cells each node holds, by state, for `print pt` summaries.
    pub fn count_by_node(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for cell in self.rows.iter().flatten() {
            *counts.entry(cell.nid).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(count: i32) -> Vec<Member> {
        (1..=count)
            .map(|n| Member::new(NodeId(n), Vec::new()))
            .collect()
    }

    #[test]
    fn changes_must_follow_the_version() {
        let mut table = PartitionTable::new(4, 0).expect("partitions");
        table.make(&members(1));
        let change = CellChange {
            partition: 0,
            nid: NodeId(2),
            state: CellState::OutOfDate,
        };
        assert_eq!(
            table.apply_changes(3, 0, std::slice::from_ref(&change)),
            Err(PtError::PtidGap {
                current: Some(1),
                got: 3
            })
        );
        table.apply_changes(2, 0, &[change]).expect("in order");
        assert_eq!(table.cell_state(0, NodeId(2)), Some(CellState::OutOfDate));
        let bad = CellChange {
            partition: 9,
            nid: NodeId(2),
            state: CellState::UpToDate,
        };
        assert!(table.apply_changes(3, 0, &[bad]).is_err());
        assert_eq!(table.ptid(), Some(2), "a refused change leaves the table");
    }

    #[test]
    fn rows_round_trip_through_the_wire_form() {
        let mut table = PartitionTable::new(5, 1).expect("partitions");
        table.make(&members(3));
        let copy = PartitionTable::from_rows(table.ptid(), 1, &table.to_rows()).expect("valid");
        assert_eq!(copy, table);
        assert!(PartitionTable::from_rows(None, 0, &[]).is_err());
    }

    #[test]
    fn unreadable_partitions_say_why_the_table_is_not_operational() {
        let mut table = PartitionTable::new(3, 0).expect("partitions");
        table.make(&members(3));
        assert!(table.is_operational(|_| true));
        assert_eq!(table.unreadable_partitions(|nid| nid != NodeId(2)), [1]);
        assert!(!table.is_operational(|nid| nid != NodeId(2)));
    }
}
