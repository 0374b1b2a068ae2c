//! The partition table of the storage node: kept in memory as a
//! [`PartitionTable`] with the own node id, in step with the `pt` rows the
//! engine persists. Every partition of an oid or tid is computed here, by
//! the table, and so is readability; what a change of the table does to own
//! cells (§12.3 `pt.tid`, `pt.pack`) is decided here too.

use std::collections::{BTreeMap, BTreeSet};

use neo_cluster::PartitionTable;
use neo_proto::packets::{CellInfo, Row};
use neo_proto::{CellState, NodeId, Oid, Partition, Ptid, Tid, INVALID_PARTITION};

use super::{AssignedCell, Database};
use crate::backend::{CellRow, FatalError, RequestError, Result};

/// Most partitions a storage holds: each partition has `2^48` data ids of
/// a 64-bit id space (§12.3), and NEO's MySQL schema stores partitions as
/// 16-bit integers.
pub(super) const MAX_PARTITIONS: u32 = 1 << 16;

impl Database {
    /// Loads the table and the own cells from the `pt` rows.
    pub(super) fn load_partition_table(&mut self) -> Result<()> {
        let cells = self.backend.cells()?;
        let ptid = self.ptid()?;
        let num_replicas = self.num_replicas()?;
        self.install(ptid, num_replicas, cells)
    }

    /// Makes `cells` (every `pt` row) the table in memory.
    fn install(
        &mut self,
        ptid: Option<Ptid>,
        num_replicas: u32,
        cells: Vec<CellRow>,
    ) -> Result<()> {
        let Some(last) = cells.iter().map(|cell| cell.partition).max() else {
            self.pt = None;
            self.own.clear();
            return Ok(());
        };
        if last >= MAX_PARTITIONS {
            return Err(FatalError::Corrupted(format!(
                "partition {last} in pt is beyond the {MAX_PARTITIONS} partitions a storage holds"
            ))
            .into());
        }
        let mut rows: Vec<Row> = vec![Vec::new(); last as usize + 1];
        for cell in &cells {
            if let Some(row) = rows.get_mut(cell.partition as usize) {
                row.push(CellInfo {
                    nid: cell.nid,
                    state: cell.state,
                });
            }
        }
        let table = PartitionTable::from_rows(ptid, num_replicas, &rows)
            .map_err(|error| FatalError::Corrupted(format!("partition table: {error}")))?;
        self.pt = Some(table);
        self.own = cells
            .into_iter()
            .filter(|cell| Some(cell.nid) == self.nid)
            .map(|cell| (cell.partition, cell))
            .collect();
        Ok(())
    }

    /// Applies cell changes (`Discarded` removes a cell), or replaces the
    /// whole table when `reset`; persists `ptid` and `num_replicas`;
    /// committed. Returns the partitions whose rows this node may delete:
    /// its own discarded cells, and with `reset` every partition not
    /// assigned to it (§12.5).
    ///
    /// Own cells keep their replication progress and pack id across
    /// changes; an own readable cell that becomes OUT_OF_DATE is complete
    /// up to the backup tid in backup mode, else up to the last tid of its
    /// partition; a new own cell has completed the last approved pack if it
    /// is OUT_OF_DATE (replication lowers it), no pack otherwise.
    pub fn change_partition_table(
        &mut self,
        ptid: Ptid,
        num_replicas: u32,
        cells: &[(Partition, NodeId, CellState)],
        reset: bool,
    ) -> Result<BTreeSet<Partition>> {
        if let Some(&(partition, _, _)) = cells.iter().find(|cell| cell.0 >= MAX_PARTITIONS) {
            return Err(RequestError::PartitionOutOfRange { partition }.into());
        }
        let backup_tid = self.backup_tid()?;
        let last_approved_pack = self.backend.last_approved_pack_id()?;
        let mut table = if reset {
            self.backend.delete_cells()?;
            BTreeMap::new()
        } else {
            self.cell_rows()
        };
        let mut dropped = BTreeSet::new();
        for &(partition, nid, state) in cells {
            if state == CellState::Discarded {
                self.backend.delete_cell(partition, nid)?;
                table.remove(&(partition, nid));
                if Some(nid) == self.nid {
                    dropped.insert(partition);
                }
                continue;
            }
            let cell = if Some(nid) == self.nid {
                self.own_cell_after(partition, nid, state, backup_tid, last_approved_pack)?
            } else {
                CellRow {
                    partition,
                    nid,
                    state,
                    complete_up_to: None,
                    pack: None,
                }
            };
            self.backend.put_cell(&cell)?;
            table.insert((partition, nid), cell);
        }
        self.backend.set_config("ptid", Some(&ptid.to_string()))?;
        self.backend
            .set_config("replicas", Some(&num_replicas.to_string()))?;
        self.install(Some(ptid), num_replicas, table.into_values().collect())?;
        self.backend.commit()?;
        if reset {
            dropped.extend(0..self.num_partitions());
        }
        dropped.retain(|partition| !self.own.contains_key(partition));
        Ok(dropped)
    }

    /// Every cell, as persisted (other nodes' cells carry no progress).
    fn cell_rows(&self) -> BTreeMap<(Partition, NodeId), CellRow> {
        let mut cells = BTreeMap::new();
        if let Some(pt) = &self.pt {
            for partition in 0..pt.partitions() {
                for cell in pt.cells(partition) {
                    let row = match self.own.get(&partition) {
                        Some(own) if own.nid == cell.nid => *own,
                        _ => CellRow {
                            partition,
                            nid: cell.nid,
                            state: cell.state,
                            complete_up_to: None,
                            pack: None,
                        },
                    };
                    cells.insert((partition, cell.nid), row);
                }
            }
        }
        cells
    }

    /// The own cell of `partition` once in `state` (§12.3).
    fn own_cell_after(
        &mut self,
        partition: Partition,
        nid: NodeId,
        state: CellState,
        backup_tid: Option<Tid>,
        last_approved_pack: Option<Tid>,
    ) -> Result<CellRow> {
        let old = self.own.get(&partition).copied();
        let complete_up_to = match (state, old) {
            (CellState::OutOfDate, Some(old)) if old.state == CellState::OutOfDate => {
                old.complete_up_to
            }
            // A readable cell is complete up to its last data.
            (CellState::OutOfDate, Some(old)) if old.state.is_readable() => {
                Some(match backup_tid {
                    Some(tid) => tid,
                    None => self.backend.last_tid(partition)?.unwrap_or(Tid::ZERO),
                })
            }
            (CellState::OutOfDate, _) => Some(Tid::ZERO),
            _ => None,
        };
        let pack = match old {
            Some(old) => old.pack,
            None if state == CellState::OutOfDate => Some(last_approved_pack.unwrap_or(Tid::ZERO)),
            None => Some(Tid::ZERO),
        };
        Ok(CellRow {
            partition,
            nid,
            state,
            complete_up_to,
            pack,
        })
    }

    /// Records the own node id; own cells of the partition table follow.
    /// Not committed.
    pub fn set_nid(&mut self, nid: NodeId) -> Result<()> {
        if let Some(old) = self.nid.filter(|old| *old != nid) {
            let own: Vec<CellRow> = self.own.values().copied().collect();
            for cell in own {
                self.backend.delete_cell(cell.partition, old)?;
                self.backend.put_cell(&CellRow { nid, ..cell })?;
            }
        }
        self.backend.set_config("nid", Some(&nid.0.to_string()))?;
        self.nid = Some(nid);
        self.load_partition_table()
    }

    /// The partition table, if there is one.
    pub fn partition_table(&self) -> Option<&PartitionTable> {
        self.pt.as_ref()
    }

    /// Number of partitions (0 when there is no table).
    pub fn num_partitions(&self) -> u32 {
        self.pt.as_ref().map_or(0, PartitionTable::partitions)
    }

    /// Cells assigned to this node, by partition.
    pub fn assigned_cells(&self) -> Vec<AssignedCell> {
        self.own
            .values()
            .map(|cell| AssignedCell {
                partition: cell.partition,
                state: cell.state,
                complete_up_to: cell
                    .complete_up_to
                    .filter(|_| cell.state == CellState::OutOfDate),
                pack: cell.pack,
            })
            .collect()
    }

    /// Partitions this node may serve reads for.
    pub fn readable_partitions(&self) -> BTreeSet<Partition> {
        match (&self.pt, self.nid) {
            (Some(pt), Some(nid)) => pt
                .cells_of(nid)
                .into_iter()
                .filter(|(_, state)| state.is_readable())
                .map(|(partition, _)| partition)
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Whether this node may serve reads of `partition`.
    pub fn is_readable(&self, partition: Partition) -> bool {
        match (&self.pt, self.nid) {
            (Some(pt), Some(nid)) => pt
                .cell_state(partition, nid)
                .is_some_and(CellState::is_readable),
            _ => false,
        }
    }

    /// Whether this node may serve reads of `oid`.
    pub fn is_oid_readable(&self, oid: Oid) -> bool {
        self.pt
            .as_ref()
            .is_some_and(|pt| self.is_readable(pt.partition_of_oid(oid)))
    }

    /// Records replication progress of an own OUT_OF_DATE cell (no-op for
    /// other cells); not committed.
    pub fn update_cell_tid(&mut self, partition: Partition, tid: Tid) -> Result<()> {
        self.update_own_cell(partition, |cell| {
            if cell.state != CellState::OutOfDate {
                return false;
            }
            cell.complete_up_to = Some(tid);
            true
        })
    }

    /// Records that pack order `pack_id` is completed on own cell
    /// `partition` (`pt.pack`); not committed.
    pub fn set_partition_packed(&mut self, partition: Partition, pack_id: Tid) -> Result<()> {
        self.update_own_cell(partition, |cell| {
            cell.pack = Some(pack_id);
            true
        })
    }

    /// Changes the own cell of `partition` as `change` says, if it has
    /// one and `change` returns true.
    pub(super) fn update_own_cell(
        &mut self,
        partition: Partition,
        change: impl FnOnce(&mut CellRow) -> bool,
    ) -> Result<()> {
        let Some(mut cell) = self.own.get(&partition).copied() else {
            return Ok(());
        };
        if change(&mut cell) {
            self.backend.put_cell(&cell)?;
            self.own.insert(partition, cell);
        }
        Ok(())
    }

    /// The partition table, which writes need.
    pub(super) fn table(&self, context: &'static str) -> Result<&PartitionTable> {
        self.pt
            .as_ref()
            .ok_or_else(|| RequestError::NoPartitionTable { context }.into())
    }

    /// The partition of `oid`, to write it.
    pub(super) fn partition_of_oid(&self, oid: Oid, context: &'static str) -> Result<Partition> {
        Ok(self.table(context)?.partition_of_oid(oid))
    }

    /// The partition of `tid` (transaction metadata, pack orders).
    pub(super) fn partition_of_tid(&self, tid: Tid, context: &'static str) -> Result<Partition> {
        Ok(self.table(context)?.partition_of_tid(tid))
    }

    /// The partition of `oid`, which this node must be able to read.
    pub(super) fn readable_partition_of_oid(&self, oid: Oid) -> Result<Partition> {
        self.readable(self.pt.as_ref().map(|pt| pt.partition_of_oid(oid)))
    }

    /// The partition of `tid`, which this node must be able to read.
    pub(super) fn readable_partition_of_tid(&self, tid: Tid) -> Result<Partition> {
        self.readable(self.pt.as_ref().map(|pt| pt.partition_of_tid(tid)))
    }

    /// `partition` (`None` without a table), if this node can read it.
    fn readable(&self, partition: Option<Partition>) -> Result<Partition> {
        let partition = partition.unwrap_or(INVALID_PARTITION);
        self.check_readable(partition)?;
        Ok(partition)
    }

    pub(super) fn check_readable(&self, partition: Partition) -> Result<()> {
        if self.is_readable(partition) {
            Ok(())
        } else {
            Err(RequestError::NonReadableCell { partition }.into())
        }
    }
}
