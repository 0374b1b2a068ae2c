//! How the primary master changes cells (architecture.md §3.6, §3.8): a
//! storage lost, the end of a replication, nodes dropped, the number of
//! replicas. Each returns the changes made, to broadcast with the new ptid.

use std::collections::BTreeSet;

use neo_proto::packets::CellChange;
use neo_proto::{CellState, NodeId, Partition, Ptid};

use super::{Cell, PartitionTable, PtError};

fn change(partition: Partition, nid: NodeId, state: CellState) -> CellChange {
    CellChange {
        partition,
        nid,
        state,
    }
}

impl PartitionTable {
    /// Master: the readable cells of nodes that are not running become
    /// OUT_OF_DATE, FEEDING ones are dropped. The cell of `lost`, the node
    /// just lost, stays as it is in rows where it was the last readable
    /// cell on a running node, so the cluster can restart from it (§3.6,
    /// §13.1 invariant 17). The version is bumped if anything changed.
    pub fn outdate(
        &mut self,
        running: impl Fn(NodeId) -> bool,
        lost: Option<NodeId>,
    ) -> Vec<CellChange> {
        let mut changes = Vec::new();
        for partition in 0..self.partitions() {
            let row = self.cells(partition);
            let served = row
                .iter()
                .any(|cell| cell.state.is_readable() && running(cell.nid));
            for cell in row {
                if running(cell.nid) || !cell.state.is_readable() {
                    continue;
                }
                if !served && Some(cell.nid) == lost {
                    continue;
                }
                let state = match cell.state {
                    CellState::Feeding => CellState::Discarded,
                    _ => CellState::OutOfDate,
                };
                changes.push(change(partition, cell.nid, state));
            }
        }
        self.commit_changes(changes)
    }

    /// Master, `NotifyReplicationDone` (§3.8): `nid`'s cell of `partition`
    /// becomes UP_TO_DATE if it is OUT_OF_DATE and `updatable` (it asked
    /// for the unfinished transactions since it became out of date), and
    /// FEEDING cells of the row go: all of them when the whole row is
    /// readable, else at most as many as keep `num_replicas + 1` readable
    /// cells, those of nodes being emptied first. A late or repeated
    /// notice changes nothing; a partition `nid` has no cell in is an
    /// error.
    pub fn set_up_to_date(
        &mut self,
        partition: Partition,
        nid: NodeId,
        updatable: bool,
    ) -> Result<Vec<CellChange>, PtError> {
        let Some(state) = self.cell_state(partition, nid) else {
            return Err(PtError::NotAssigned { partition, nid });
        };
        if state != CellState::OutOfDate || !updatable {
            return Ok(Vec::new());
        }
        let row = self.cells(partition);
        // Counted with `nid`'s cell already up to date.
        let readable = row
            .iter()
            .filter(|cell| cell.nid == nid || cell.state.is_readable())
            .count();
        let mut feeding: Vec<NodeId> = row
            .iter()
            .filter(|cell| cell.state == CellState::Feeding)
            .map(|cell| cell.nid)
            .collect();
        if readable != row.len() {
            // Some cell became unreadable since the tweak: do not go below
            // the wanted redundancy. Nodes whose every cell is FEEDING are
            // being emptied: theirs go first.
            let emptied = |node: NodeId| {
                self.cells_of(node)
                    .iter()
                    .all(|(_, state)| *state == CellState::Feeding)
            };
            feeding.sort_by_key(|node| !emptied(*node));
            let keep_replicas = self.num_replicas() as usize;
            feeding.truncate(readable.saturating_sub(keep_replicas));
        }
        let mut changes = vec![change(partition, nid, CellState::UpToDate)];
        changes.extend(
            feeding
                .into_iter()
                .map(|node| change(partition, node, CellState::Discarded)),
        );
        Ok(self.commit_changes(changes))
    }

    /// Master, `neoctl drop` and `kill` (§3.6): the changes that remove
    /// every cell of `nids` (not applied). In each row that loses a cell, a
    /// FEEDING cell goes back to UP_TO_DATE; a row left without any
    /// readable cell is refused.
    pub fn drop_nodes(&self, nids: &BTreeSet<NodeId>) -> Result<Vec<CellChange>, PtError> {
        let mut changes = Vec::new();
        for partition in 0..self.partitions() {
            let row = self.cells(partition);
            let (dropped, kept): (Vec<&Cell>, Vec<&Cell>) =
                row.iter().partition(|cell| nids.contains(&cell.nid));
            if dropped.is_empty() {
                continue;
            }
            for cell in &dropped {
                changes.push(change(partition, cell.nid, CellState::Discarded));
            }
            let feeding = kept.iter().rev().find(|c| c.state == CellState::Feeding);
            if let Some(cell) = feeding {
                changes.push(change(partition, cell.nid, CellState::UpToDate));
            } else if dropped.iter().any(|cell| cell.state.is_readable())
                && !kept.iter().any(|cell| cell.state == CellState::UpToDate)
            {
                return Err(PtError::OnlyReadableCopy(partition));
            }
        }
        Ok(changes)
    }

    /// Master, `SetNumReplicas`: a new version with no cell change (the
    /// next tweak aims for the new number).
    pub fn set_num_replicas(&mut self, num_replicas: u32) -> Option<Ptid> {
        let ptid = self.ptid? + 1;
        self.ptid = Some(ptid);
        self.num_replicas = num_replicas;
        Some(ptid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pt::Member;

    fn s(n: i32) -> NodeId {
        NodeId(n)
    }

    fn members(count: i32) -> Vec<Member> {
        (1..=count).map(|n| Member::new(s(n), Vec::new())).collect()
    }

    /// 1 partition, the given cells, version 1.
    fn row(cells: &[(i32, CellState)], num_replicas: u32) -> PartitionTable {
        let mut table = PartitionTable::new(1, num_replicas).expect("partitions");
        table.ptid = Some(1);
        table.rows[0] = cells
            .iter()
            .map(|(n, state)| Cell {
                nid: s(*n),
                state: *state,
            })
            .collect();
        table
    }

    #[test]
    fn outdating_keeps_the_last_readable_copy_of_the_lost_node() {
        let mut table = PartitionTable::new(4, 1).expect("partitions");
        table.make(&members(2));
        let changes = table.outdate(|nid| nid == s(1), Some(s(2)));
        assert_eq!(changes.len(), 4);
        assert!(changes
            .iter()
            .all(|c| c.nid == s(2) && c.state == CellState::OutOfDate));
        assert_eq!(table.ptid(), Some(2));
        assert!(table.is_operational(|nid| nid == s(1)));
        // Now S1 goes too: its cells are the last readable ones, kept.
        assert!(table.outdate(|_| false, Some(s(1))).is_empty());
        assert_eq!(table.ptid(), Some(2));
        assert_eq!(table.unreadable_partitions(|_| false), [0, 1, 2, 3]);
    }

    #[test]
    fn a_lost_feeding_cell_is_dropped_unless_it_is_the_last_readable_one() {
        use CellState::*;
        let mut table = row(&[(1, UpToDate), (2, Feeding), (3, OutOfDate)], 1);
        let changes = table.outdate(|nid| nid != s(2), Some(s(2)));
        assert_eq!(changes, [change(0, s(2), Discarded)]);
        let mut table = row(&[(2, Feeding), (3, OutOfDate)], 1);
        assert!(table.outdate(|nid| nid != s(2), Some(s(2))).is_empty());
        assert_eq!(table.cell_state(0, s(2)), Some(Feeding));
        // Without a lost node (end of recovery), nothing is kept.
        assert_eq!(
            table.outdate(|nid| nid != s(2), None),
            [change(0, s(2), Discarded)]
        );
    }

    #[test]
    fn replication_done_needs_an_updatable_out_of_date_cell() {
        use CellState::*;
        let mut table = row(&[(1, Feeding), (2, OutOfDate)], 0);
        assert_eq!(table.set_up_to_date(0, s(2), false), Ok(vec![]));
        assert_eq!(
            table.set_up_to_date(0, s(3), true),
            Err(PtError::NotAssigned {
                partition: 0,
                nid: s(3)
            })
        );
        let changes = table.set_up_to_date(0, s(2), true).expect("assigned");
        assert_eq!(
            changes,
            [change(0, s(1), Discarded), change(0, s(2), UpToDate)]
        );
        assert_eq!(table.ptid(), Some(2));
        // Repeated: nothing more.
        assert_eq!(table.set_up_to_date(0, s(2), true), Ok(vec![]));
        assert_eq!(table.ptid(), Some(2));
    }

    #[test]
    fn feeding_cells_stay_while_the_row_lacks_replicas() {
        use CellState::*;
        // S3 went out of date after the tweak: with S2 up to date the row
        // has 2 readable cells, as many as the replicas wanted: S1 stays.
        let mut table = row(&[(1, Feeding), (2, OutOfDate), (3, OutOfDate)], 2);
        let changes = table.set_up_to_date(0, s(2), true).expect("assigned");
        assert_eq!(changes, [change(0, s(2), UpToDate)]);
        // With one FEEDING cell to spare, the one of the node being emptied
        // goes (S4 has nothing else; S1 has another cell).
        let mut table = PartitionTable::new(2, 2).expect("partitions");
        table.ptid = Some(1);
        let cell = |n, state| Cell { nid: s(n), state };
        table.rows[0] = vec![
            cell(1, Feeding),
            cell(4, Feeding),
            cell(2, OutOfDate),
            cell(3, OutOfDate),
        ];
        table.rows[1] = vec![cell(1, UpToDate)];
        let changes = table.set_up_to_date(0, s(2), true).expect("assigned");
        assert_eq!(
            changes,
            [change(0, s(4), Discarded), change(0, s(2), UpToDate)]
        );
    }

    #[test]
    fn dropping_refuses_to_lose_the_only_readable_copy() {
        use CellState::*;
        let table = row(&[(1, UpToDate), (2, OutOfDate)], 1);
        let one = BTreeSet::from([s(1)]);
        assert_eq!(table.drop_nodes(&one), Err(PtError::OnlyReadableCopy(0)));
        let two = BTreeSet::from([s(2)]);
        assert_eq!(table.drop_nodes(&two), Ok(vec![change(0, s(2), Discarded)]));
        // A FEEDING cell is readable: it goes back to UP_TO_DATE instead.
        let table = row(&[(1, UpToDate), (2, Feeding)], 1);
        assert_eq!(
            table.drop_nodes(&one),
            Ok(vec![change(0, s(1), Discarded), change(0, s(2), UpToDate)])
        );
    }

    #[test]
    fn setting_replicas_bumps_the_version() {
        let mut table = PartitionTable::new(2, 0).expect("partitions");
        assert_eq!(table.set_num_replicas(1), None);
        table.make(&members(1));
        assert_eq!(table.set_num_replicas(1), Some(2));
        assert_eq!((table.ptid(), table.num_replicas()), (Some(2), 1));
    }
}
