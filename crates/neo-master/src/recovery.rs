//! Recovery (architecture.md §5.1): find the newest partition table among
//! the storages, make sure a pending truncation is recorded by every
//! storage, and decide when the cluster can leave RECOVERING; and the way
//! back to it when operation is lost or a truncation is decided (§4.2
//! rule 1, §11.1).

use std::collections::{BTreeMap, BTreeSet};

use neo_cluster::{Node, PartitionTable, UnixTime};
use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{ClusterState, NodeId, NodeState, NodeType, Ptid, Tid};

use crate::master::{Asked, Master};
use crate::verification::Verification;

/// Recovery bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Storages that answered `AskRecovery`, with the ptid they hold.
    pub ptids: BTreeMap<NodeId, Option<Ptid>>,
    /// The truncation each of them has recorded, if any.
    pub truncates: BTreeMap<NodeId, Option<Tid>>,
    /// Storages that reported backup mode, which this master cannot carry
    /// on yet: the cluster does not start with them.
    pub unsupported: BTreeMap<NodeId, String>,
}

impl Recovery {
    /// A storage is gone: what it reported no longer holds.
    pub fn forget(&mut self, nid: NodeId) {
        self.ptids.remove(&nid);
        self.truncates.remove(&nid);
        self.unsupported.remove(&nid);
    }
}

impl Master {
    pub(crate) fn on_recovery_answer(
        &mut self,
        conn: ConnId,
        nid: NodeId,
        answer: p::AnswerRecovery,
    ) {
        if let Some(tid) = answer.backup_tid {
            let reason = format!(
                "storage {nid} reports a backup TID {tid}, which this master cannot carry \
                 on yet: the cluster will not start with it (use NEO/py's master)"
            );
            tracing::warn!("{reason}");
            self.recovery.unsupported.insert(nid, reason);
        }
        self.recovery.ptids.insert(nid, answer.ptid);
        self.recovery.truncates.insert(nid, answer.truncate_tid);
        let Some(ptid) = answer.ptid else { return };
        let loaded = self.pt.ptid().unwrap_or(0);
        if ptid == loaded {
            self.adopt_truncation(ptid);
        }
        let asking = self.table_asked().unwrap_or(0);
        if ptid > loaded && ptid > asking {
            let why = Asked::PartitionTable { ptid };
            self.asked
                .send(&mut self.out, conn, why, p::AskPartitionTable {});
        }
    }

    /// The cluster's pending truncation is the one recorded by storages
    /// holding table `ptid`, the newest (the smallest, should they differ):
    /// a decision persisted anywhere is carried out everywhere (§11.1).
    fn adopt_truncation(&mut self, ptid: Ptid) {
        let recorded = self
            .recovery
            .truncates
            .iter()
            .filter(|(nid, _)| self.recovery.ptids.get(*nid) == Some(&Some(ptid)))
            .filter_map(|(_, tid)| *tid)
            .chain(self.truncate_tid)
            .min();
        if recorded != self.truncate_tid {
            tracing::info!(tid = ?recorded, "pending truncation found on the storages");
            self.truncate_tid = recorded;
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
        if let Some(ptid) = self.pt.ptid() {
            self.adopt_truncation(ptid);
        }
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
        // A truncation waits for every storage of the table, unless the
        // operator starts without them (§5.1 step 4).
        if !self.startup_allowed
            && self.truncate_tid.is_some()
            && !self.pt.nodes().is_subset(&pending)
        {
            return None;
        }
        // Every connected node of the table takes part.
        Some(self.pt.nodes().intersection(&pending).copied().collect())
    }

    /// §5.1 step 5: storages that have not recorded the pending
    /// truncation are told it and asked again; `true` while some are.
    fn recording_truncation(&mut self) -> bool {
        let Some(tid) = self.truncate_tid else {
            return false;
        };
        let behind: Vec<NodeId> = self
            .recovery
            .truncates
            .iter()
            .filter(|(nid, recorded)| {
                self.conn_of.contains_key(*nid) && recorded.is_none_or(|recorded| recorded > tid)
            })
            .map(|(nid, _)| *nid)
            .collect();
        for nid in &behind {
            tracing::info!(%nid, %tid, "asking to record the truncation");
            self.notify_node(*nid, p::Truncate { tid });
            self.ask_node(*nid, Asked::Recovery, p::AskRecovery {});
        }
        !behind.is_empty()
    }

    pub(crate) fn try_leave_recovery(&mut self, now: UnixTime) {
        let Some(selected) = self.recovery_selection() else {
            return;
        };
        if self.pt.ptid().is_some() && self.recording_truncation() {
            return;
        }
        for nid in &selected {
            self.set_node_state(*nid, NodeState::Running, now);
        }
        if self.pt.ptid().is_none() {
            let members = self.members(&selected);
            if let Some(why) = self
                .pt
                .make(&members)
                .and_then(|made| made.topology_ignored)
            {
                self.warn_topology(why);
            }
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
        self.first_tid = Tid::MAX;
        self.packs.reset();
        let holders: BTreeSet<NodeId> = (0..self.pt.partitions())
            .flat_map(|partition| self.pt.readable_cells(partition).map(|cell| cell.nid))
            .filter(|nid| self.nodes.is_running(*nid))
            .collect();
        for nid in holders {
            self.ask_node(nid, Asked::LockedTransactions, p::AskLockedTransactions {});
        }
    }

    /// Back to RECOVERING after losing operation (§4.2 rule 1), or to
    /// truncate the database after `truncate` (§11.1): storages are told
    /// right after `StopOperation`, and recovery then waits for every
    /// storage of the table.
    pub(crate) fn enter_recovering(&mut self, now: UnixTime, truncate: Option<Tid>) {
        for (_, node_type, conn) in self.identified() {
            match node_type {
                NodeType::Storage | NodeType::Client => self.notify(conn, p::StopOperation {}),
                _ => {}
            }
            if let (NodeType::Storage, Some(tid)) = (node_type, truncate) {
                self.notify(conn, p::Truncate { tid });
            }
        }
        for (nid, node_type, conn) in self.identified() {
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
        let mut pending = Vec::new();
        for storage in self.storages_in(NodeState::Running) {
            if let Some(node) = self.nodes.get_mut(storage) {
                node.state = NodeState::Pending;
                pending.push(node.info());
            }
        }
        self.broadcast_nodes(&pending, now);
        self.starting.clear();
        self.ready.clear();
        self.verification = Verification::default();
        self.recovery = Recovery::default();
        // Transactions caught in tpc_finish are not completed by this
        // master: verification finds out from the storages whether they
        // were locked, and their clients ask `AskFinalTID` (§6.10).
        self.transactions.drop_unfinished();
        // Answers to what was asked before are moot now, and so are the
        // cells marked updatable and the replica checks asked.
        self.asked.clear();
        self.updatable.clear();
        self.checks.clear();
        if truncate.is_some() {
            self.truncate_tid = truncate;
        }
        // Not an election: start again with whatever is there (§2.5,
        // §5.1), unless some storages would truncate and others not.
        self.startup_allowed = self.truncate_tid.is_none();
        self.set_state(ClusterState::Recovering);
        for storage in self.storages_in(NodeState::Pending) {
            self.ask_node(storage, Asked::Recovery, p::AskRecovery {});
        }
    }
}
