//! Replication and replica checks, master side (architecture.md §9.1
//! steps 2-3 and 10, §9.3): out-of-date cells become updatable, then up to
//! date; checks are handed to storages and corruption is recorded.

use std::collections::{BTreeMap, BTreeSet};

use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{CellState, ClusterState, ErrorCode, NodeId, Partition};

use crate::master::Master;

impl Master {
    /// A storage about to replicate (§9.1 steps 2-3): the last TID and
    /// the transactions in progress, whose end it will be told; its
    /// OUT_OF_DATE cells of these partitions become updatable.
    pub(crate) fn unfinished_transactions(
        &mut self,
        conn: ConnId,
        nid: NodeId,
        msg_id: u32,
        partitions: &[Partition],
    ) {
        let count = self.pt.partitions();
        if let Some(bad) = partitions.iter().find(|partition| **partition >= count) {
            let message = format!("partition {bad} out of range (0..{count})");
            return self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
        }
        let ttids = self.transactions.watch_unfinished(nid);
        let max_tid = self.transactions.last_tid;
        self.answer(
            conn,
            msg_id,
            p::AnswerUnfinishedTransactions { max_tid, ttids },
        );
        for &partition in partitions {
            if self.pt.cell_state(partition, nid) == Some(CellState::OutOfDate) {
                self.updatable.insert((partition, nid));
            }
        }
    }

    /// `NotifyReplicationDone` (§9.1 step 10, §3.8): a late or repeated
    /// notice is ignored; one for a partition the storage has no cell in
    /// is a protocol error.
    pub(crate) fn replication_done(
        &mut self,
        conn: ConnId,
        nid: NodeId,
        msg_id: u32,
        done: &p::NotifyReplicationDone,
    ) {
        let partition = done.partition;
        let updatable = self.updatable.contains(&(partition, nid));
        match self.pt.set_up_to_date(partition, nid, updatable) {
            Err(error) => self.refuse(conn, msg_id, ErrorCode::ProtocolError, &error.to_string()),
            Ok(changes) if changes.is_empty() => tracing::info!(
                %nid, partition, tid = %done.tid,
                "ignored a late notice of replication done"
            ),
            Ok(changes) => {
                tracing::debug!(%nid, partition, tid = %done.tid, "cell up to date");
                self.broadcast_pt_changes(changes);
            }
        }
    }

    /// `neoctl check` (§9.3): each listed partition with two readable
    /// cells or more is checked by one of their storages, against the
    /// given reference if any, up to `max_tid` (the last TID by default).
    /// Answered in any state; only a running cluster checks.
    pub(crate) fn check_replicas(&mut self, conn: ConnId, msg_id: u32, request: p::CheckReplicas) {
        let count = self.pt.partitions();
        let mut sources = BTreeMap::new();
        for (partition, reference) in request.partitions.0 {
            if partition >= count {
                let message = format!("partition {partition} out of range (0..{count})");
                return self.deny(conn, msg_id, &message);
            }
            let address = match reference {
                None => None,
                Some(nid) => match self.nodes.get(nid).and_then(|node| node.address.clone()) {
                    Some(address) => Some(address),
                    None => return self.deny(conn, msg_id, &format!("invalid storage node {nid}")),
                },
            };
            sources.insert(partition, address);
        }
        self.answer(conn, msg_id, p::Error::ack(""));
        let (min_tid, max_tid) = (
            request.min_tid,
            request.max_tid.unwrap_or(self.transactions.last_tid),
        );
        if self.state != ClusterState::Running {
            return tracing::warn!(state = %self.state, "replica check asked outside of service: nothing checked");
        }
        if min_tid > max_tid {
            return tracing::warn!(%min_tid, %max_tid, "nothing to check");
        }
        let mut checkers: BTreeSet<NodeId> = BTreeSet::new();
        for (partition, address) in sources {
            let readable: Vec<NodeId> = self
                .pt
                .readable_cells(partition)
                .map(|cell| cell.nid)
                .filter(|nid| self.conn_of.contains_key(nid))
                .collect();
            if readable.len() < 2 {
                continue;
            }
            // One storage checks several partitions when it can (NEO/py's
            // choice): the first already checking, else the row's last.
            let Some(&checker) = readable
                .iter()
                .find(|nid| checkers.contains(nid))
                .or(readable.last())
            else {
                continue;
            };
            checkers.insert(checker);
            self.checks.insert(partition, (min_tid, max_tid));
            let source = p::CheckSource {
                upstream_name: String::new(),
                address,
            };
            tracing::info!(partition, %checker, %min_tid, %max_tid, "replica check");
            self.notify_node(
                checker,
                p::CheckPartition {
                    partition,
                    source,
                    min_tid,
                    max_tid,
                },
            );
        }
    }

    /// `NotifyPartitionCorrupted` (§9.3): the cells whose data differ from
    /// the reference become CORRUPTED, which NEO/py's master only logs.
    ///
    /// Marking is refused, with an error log, when it would leave the row
    /// without a readable cell on a running storage: the cluster would
    /// stop, and could never start again since no command makes a cell
    /// readable again. That happens when the check had no reference (every
    /// differing cell is reported: nobody can tell which is right), or the
    /// reference itself is wrong; the operator checks again with a
    /// reference (`neoctl check P:S<n>`) or repairs by hand.
    pub(crate) fn partition_corrupted(
        &mut self,
        conn: ConnId,
        nid: NodeId,
        msg_id: u32,
        corrupted: p::NotifyPartitionCorrupted,
    ) {
        let partition = corrupted.partition;
        let count = self.pt.partitions();
        if partition >= count {
            let message = format!("partition {partition} out of range (0..{count})");
            return self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
        }
        let range = match self.checks.get(&partition) {
            Some((min_tid, max_tid)) => format!("{min_tid}..={max_tid}"),
            None => "an unknown range".to_owned(),
        };
        let cells: BTreeSet<NodeId> = corrupted
            .nids
            .into_iter()
            .filter(|reported| self.pt.cell_state(partition, *reported).is_some())
            .collect();
        if cells.is_empty() {
            return tracing::warn!(%nid, partition, "corruption reported of no cell of the partition");
        }
        let names: Vec<String> = cells.iter().map(NodeId::to_string).collect();
        let names = names.join(", ");
        let kept = self
            .pt
            .readable_cells(partition)
            .any(|cell| !cells.contains(&cell.nid) && self.nodes.is_running(cell.nid));
        if !kept {
            return tracing::error!(
                "partition {partition} differs between {names} over {range} (reported by \
                 {nid}), but marking them CORRUPTED would leave no readable copy: not marked; \
                 check again with a reference storage"
            );
        }
        tracing::warn!(
            "partition {partition} corrupted in {names} over {range} (reported by {nid}): \
             cells marked CORRUPTED"
        );
        let changes = cells
            .iter()
            .map(|holder| p::CellChange {
                partition,
                nid: *holder,
                state: CellState::Corrupted,
            })
            .collect();
        let changes = self.pt.commit_changes(changes);
        self.broadcast_pt_changes(changes);
    }
}
