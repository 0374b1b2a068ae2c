//! Recovery (architecture.md §5.1): find the newest partition table among
//! the storages and decide when the cluster can leave RECOVERING; and the
//! way back to RECOVERING when operation is lost (§4.2 rule 1).

use std::collections::{BTreeMap, BTreeSet};

use neo_cluster::{Node, PartitionTable, UnixTime};
use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{ClusterState, NodeId, NodeState, NodeType, Ptid};

use crate::master::{Asked, Master};
use crate::verification::Verification;

/// Recovery bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Storages that answered `AskRecovery`, with the ptid they hold.
    pub ptids: BTreeMap<NodeId, Option<Ptid>>,
    /// Storages that reported a pending truncation or backup mode, which
    /// this master cannot carry out yet: the cluster does not start with
    /// them (it would truncate some storages and not others).
    pub unsupported: BTreeMap<NodeId, String>,
}

impl Master {
    pub(crate) fn on_recovery_answer(
        &mut self,
        conn: ConnId,
        nid: NodeId,
        answer: p::AnswerRecovery,
    ) {
        let pending = [
            ("a pending truncation to", answer.truncate_tid),
            ("a backup TID", answer.backup_tid),
        ];
        for (what, tid) in pending {
            if let Some(tid) = tid {
                let reason = format!(
                    "storage {nid} reports {what} {tid}, which this master cannot carry out \
                     yet: the cluster will not start with it (finish it with NEO/py's master)"
                );
                tracing::warn!("{reason}");
                self.recovery.unsupported.insert(nid, reason);
            }
        }
        self.recovery.ptids.insert(nid, answer.ptid);
        let Some(ptid) = answer.ptid else { return };
        let loaded = self.pt.ptid().unwrap_or(0);
        let asking = self.table_asked().unwrap_or(0);
        if ptid > loaded && ptid > asking {
            let why = Asked::PartitionTable { ptid };
            self.asked
                .send(&mut self.out, conn, why, p::AskPartitionTable {});
        }
    }

    /// The ptid of the partition table asked for, if one is.
    fn table_asked(&self) -> Option<Ptid> {
        self.asked
            .iter()
            .filter_map(|(_, why)| match why {
                Asked::PartitionTable { ptid } => Some(*ptid),
                _ => None,
            })
            .max()
    }

    pub(crate) fn on_partition_table(
        &mut self,
        nid: NodeId,
        answer: p::AnswerPartitionTable,
        now: UnixTime,
    ) {
        let table = match PartitionTable::from_rows(answer.ptid, answer.num_replicas, &answer.rows)
        {
            Ok(table) => table,
            Err(error) => {
                tracing::warn!(%nid, "unusable partition table: {error}");
                return;
            }
        };
        if table.ptid() <= self.pt.ptid() {
            return;
        }
        // Storages named by the table but unknown are DOWN until they come.
        let mut new_nodes = Vec::new();
        for storage in table.nodes() {
            if self.nodes.get(storage).is_none() {
                let node = Node {
                    nid: storage,
                    node_type: NodeType::Storage,
                    address: None,
                    state: NodeState::Down,
                    id_timestamp: None,
                };
                new_nodes.push(node.info());
                self.nodes.insert(node);
            }
        }
        self.pt = table;
        tracing::info!(ptid = ?self.pt.ptid(), "loaded partition table");
        self.broadcast_nodes(&new_nodes, now);
        for (_, node_type, conn) in self.identified() {
            if node_type == NodeType::Admin {
                self.send_partition_table(conn);
            }
        }
        // A newer table may be held by another storage that answered first.
        let best = self
            .recovery
            .ptids
            .iter()
            .filter(|(_, ptid)| ptid.unwrap_or(0) > self.pt.ptid().unwrap_or(0))
            .max_by_key(|(_, ptid)| **ptid)
            .map(|(nid, ptid)| (*nid, ptid.unwrap_or(0)));
        if let Some((storage, ptid)) = best {
            if self.table_asked().is_none_or(|asked| asked < ptid) {
                let why = Asked::PartitionTable { ptid };
                self.ask_node(storage, why, p::AskPartitionTable {});
            }
        }
    }

    /// The storages to start with, or `None` to keep waiting (§5.1 step 4).
    fn recovery_selection(&self) -> Option<BTreeSet<NodeId>> {
        let recovering =
            |why: &Asked| matches!(why, Asked::Recovery | Asked::PartitionTable { .. });
        if self.is_asking(recovering) {
            return None;
        }
        let pending = self.storages_in(NodeState::Pending);
        if pending
            .iter()
            .any(|nid| self.recovery.unsupported.contains_key(nid))
        {
            return None;
        }
        if self.pt.ptid().is_none() {
            let enough = self
                .config
                .autostart
                .is_some_and(|count| pending.len() >= count as usize);
            return ((self.startup_allowed || enough) && !pending.is_empty()).then_some(pending);
        }
        if !self.pt.is_operational(|nid| pending.contains(&nid)) {
            return None;
        }
        let holders: BTreeSet<NodeId> = (0..self.pt.partitions())
            .flat_map(|partition| self.pt.readable_cells(partition).map(|cell| cell.nid))
            .collect();
        if !self.startup_allowed && !holders.is_subset(&pending) {
            return None;
        }
        // Every connected node of the table takes part.
        Some(self.pt.nodes().intersection(&pending).copied().collect())
    }

    pub(crate) fn try_leave_recovery(&mut self, now: UnixTime) {
        let Some(selected) = self.recovery_selection() else {
            return;
        };
        for nid in &selected {
            self.set_node_state(*nid, NodeState::Running, now);
        }
        if self.pt.ptid().is_none() {
            let members: Vec<neo_cluster::Member> = selected
                .iter()
                .map(|nid| neo_cluster::Member::new(*nid, Vec::new()))
                .collect();
            self.pt.make(&members);
            tracing::info!(storages = selected.len(), "new partition table");
        } else {
            // The changes need no broadcast: everybody gets the whole table.
            self.pt.outdate(|nid| self.nodes.is_running(nid), None);
        }
        self.recovery = Recovery::default();
        self.startup_allowed = false;
        for (_, node_type, conn) in self.identified() {
            if matches!(node_type, NodeType::Admin | NodeType::Storage) {
                self.send_partition_table(conn);
            }
        }
        self.set_state(ClusterState::Verifying);
        self.verification = Verification::default();
        self.packs.reset();
        let holders: BTreeSet<NodeId> = (0..self.pt.partitions())
            .flat_map(|partition| self.pt.readable_cells(partition).map(|cell| cell.nid))
            .filter(|nid| self.nodes.is_running(*nid))
            .collect();
        for nid in holders {
            self.ask_node(nid, Asked::LockedTransactions, p::AskLockedTransactions {});
        }
    }

    /// Back to RECOVERING after losing operation (§4.2 rule 1).
    pub(crate) fn enter_recovering(&mut self, now: UnixTime) {
        for (nid, node_type, conn) in self.identified() {
            match node_type {
                NodeType::Storage | NodeType::Client => self.notify(conn, p::StopOperation {}),
                _ => {}
            }
            if node_type == NodeType::Client {
                self.packs.client_lost(conn);
                self.out.close(conn);
                self.peers.remove(&conn);
                self.conn_of.remove(&nid);
                for (ttid, _) in self.transactions.client_lost(conn) {
                    self.finished_for_replication(ttid);
                }
                self.set_node_state(nid, NodeState::Unknown, now);
            }
        }
        for storage in self.storages_in(NodeState::Running) {
            self.set_node_state(storage, NodeState::Pending, now);
        }
        self.starting.clear();
        self.ready.clear();
        self.verification = Verification::default();
        self.recovery = Recovery::default();
        // Transactions caught in tpc_finish are not completed by this
        // master: verification finds out from the storages whether they
        // were locked, and their clients ask `AskFinalTID` (§6.10).
        self.transactions.drop_unfinished();
        // Answers to what was asked before are moot now.
        self.asked.clear();
        // Not an election: start again with whatever is there (§2.5, §5.1).
        self.startup_allowed = true;
        self.set_state(ClusterState::Recovering);
        for storage in self.storages_in(NodeState::Pending) {
            self.ask_node(storage, Asked::Recovery, p::AskRecovery {});
        }
    }
}
