//! Growing, rebalancing and shrinking the cluster (architecture.md §3.6,
//! §3.7; operations.md §3.2): `neoctl add`, `tweak`, `kill`, `drop` and
//! `set replicas`, answered with NEO/py's messages.

use std::collections::BTreeSet;

use neo_cluster::{Member, UnixTime};
use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{ClusterState, NodeId, NodeState, NodeType};

use crate::master::Master;

/// Where the partition table may be changed by the admin (NEO/py's
/// backup states included, which this master refuses anyway).
const IN_SERVICE: [ClusterState; 3] = [
    ClusterState::Running,
    ClusterState::StartingBackup,
    ClusterState::BackingUp,
];

impl Master {
    /// The storages `nids` as tweak members, with their topology.
    pub(crate) fn members(&self, nids: &BTreeSet<NodeId>) -> Vec<Member> {
        nids.iter()
            .map(|nid| Member::new(*nid, self.devpaths.get(nid).cloned().unwrap_or_default()))
            .collect()
    }

    pub(crate) fn warn_topology(&self, why: &str) {
        let copies = (self.pt.num_replicas() as usize).saturating_add(1);
        tracing::warn!(
            "replicas not spread over the topology ({why}): fix the storages' devpath \
             and make sure they all run; {} device failure(s) may lose data",
            copies - 1
        );
    }

    /// `neoctl add`: pending storages become RUNNING members, without any
    /// cell until a tweak gives them some.
    pub(crate) fn add_pending_nodes(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: &p::AddPendingNodes,
        now: UnixTime,
    ) {
        if !self.allowed_in(conn, msg_id, "addPendingNodes", &IN_SERVICE) {
            return;
        }
        let added: Vec<NodeId> = self
            .storages_in(NodeState::Pending)
            .into_iter()
            .filter(|nid| request.nids.contains(nid))
            .collect();
        if added.is_empty() {
            tracing::warn!("no node added");
            return self.answer(conn, msg_id, p::Error::ack("No node added"));
        }
        let mut infos = Vec::new();
        for nid in &added {
            if let Some(node) = self.nodes.get_mut(*nid) {
                node.state = NodeState::Running;
                infos.push(node.info());
            }
            self.start_storage(*nid);
        }
        self.broadcast_nodes(&infos, now);
        let names: Vec<String> = added.iter().map(NodeId::to_string).collect();
        let message = format!("Nodes added: {}", names.join(", "));
        tracing::info!("{message}");
        self.answer(conn, msg_id, p::Error::ack(message));
    }

    /// `neoctl tweak [-n] [node…]`: rebalances the table over the running
    /// storages not listed; pending ones are left out too, and any other
    /// storage must be listed.
    pub(crate) fn tweak(&mut self, conn: ConnId, msg_id: u32, request: &p::TweakPartitionTable) {
        if !self.allowed_in(conn, msg_id, "tweakPartitionTable", &IN_SERVICE) {
            return;
        }
        let storages: Vec<(NodeId, NodeState)> = self
            .nodes
            .of_type(NodeType::Storage)
            .filter(|node| !request.drop_nids.contains(&node.nid))
            .map(|node| (node.nid, node.state))
            .filter(|(_, state)| *state != NodeState::Pending)
            .collect();
        if storages
            .iter()
            .any(|(_, state)| *state != NodeState::Running)
        {
            return self.deny(conn, msg_id, "tweak: down nodes must be listed explicitly");
        }
        let members = storages.into_iter().map(|(nid, _)| nid).collect();
        let members = self.members(&members);
        let mut table = self.pt.clone();
        let tweaked = match table.tweak(&members) {
            Ok(tweaked) => tweaked,
            Err(error) => return self.deny(conn, msg_id, &error.to_string()),
        };
        if let Some(why) = tweaked.topology_ignored {
            self.warn_topology(why);
        }
        let changed = !tweaked.changes.is_empty();
        let rows = table.to_rows();
        if !request.dry_run {
            tracing::info!(changes = tweaked.changes.len(), ptid = ?table.ptid(), "tweak");
            self.pt = table;
            self.broadcast_pt_changes(tweaked.changes);
        }
        self.answer(conn, msg_id, p::AnswerTweakPartitionTable { changed, rows });
    }

    /// `neoctl set replicas N`: a new table version, no cell changed.
    pub(crate) fn set_num_replicas(&mut self, conn: ConnId, msg_id: u32, num_replicas: u32) {
        if !self.allowed_in(conn, msg_id, "setNumReplicas", &IN_SERVICE) {
            return;
        }
        if self.pt.set_num_replicas(num_replicas).is_some() {
            self.send_pt_changes(Vec::new());
        }
        self.answer(conn, msg_id, p::Error::ack(""));
    }

    /// `neoctl kill` (DOWN) and `neoctl drop` (UNKNOWN), in any state.
    pub(crate) fn change_node_state(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: &p::SetNodeState,
        now: UnixTime,
    ) {
        let (nid, state) = (request.nid, request.state);
        tracing::info!(%nid, %state, "set node state");
        let Some(node) = self.nodes.get(nid) else {
            return self.deny(conn, msg_id, "unknown node");
        };
        let allowed = match node.node_type {
            NodeType::Master => state == NodeState::Down,
            NodeType::Storage => matches!(state, NodeState::Down | NodeState::Unknown),
            NodeType::Client | NodeType::Admin => false,
        };
        if !allowed {
            return self.deny(
                conn,
                msg_id,
                &format!("can not switch node to {state} state"),
            );
        }
        if nid == self.nid {
            return self.deny(conn, msg_id, "can not kill primary master node");
        }
        let (node_type, current) = (node.node_type, node.state);
        let mut message = match state == current {
            true => format!("node already in {state} state"),
            false => "state changed".to_owned(),
        };
        let mut changes = Vec::new();
        if node_type == NodeType::Storage {
            let drop = state == NodeState::Unknown;
            if current == NodeState::Running && drop {
                return self.deny(
                    conn,
                    msg_id,
                    "a running node must be stopped before removal",
                );
            }
            let dropped = match self.pt.drop_nodes(&BTreeSet::from([nid])) {
                Ok(dropped) => dropped,
                Err(error) => return self.deny(conn, msg_id, &error.to_string()),
            };
            self.disconnect_told(nid, state, now);
            if drop {
                changes = self.pt.commit_changes(dropped);
                if !changes.is_empty() {
                    message = "node permanently removed".to_owned();
                }
            } else if matches!(self.state, ClusterState::Verifying | ClusterState::Running) {
                // Its readable cells go out of date, FEEDING ones away. In
                // recovery, cells of absent storages are outdated when the
                // cluster starts (outdating them now would outdate every
                // cell: nobody is running yet).
                changes = self
                    .pt
                    .outdate(|n| n != nid && self.nodes.is_running(n), None);
            }
        } else {
            self.disconnect_told(nid, state, now);
        }
        // The table first: receivers must know every node it names.
        self.broadcast_pt_changes(changes);
        self.answer(conn, msg_id, p::Error::ack(message));
        if state != current {
            self.set_node_state(nid, state, now);
        }
        if matches!(self.state, ClusterState::Verifying | ClusterState::Running) {
            self.update_completed_pack();
            self.check_operational(now);
        }
    }

    /// A node the admin stopped or removed is told so if connected (a
    /// storage then exits, and wipes its database when removed) and
    /// disconnected; its loss needs no other handling.
    fn disconnect_told(&mut self, nid: NodeId, state: NodeState, now: UnixTime) {
        let Some(conn) = self.conn_of.get(&nid).copied() else {
            return;
        };
        if let Some(mut info) = self.nodes.get(nid).map(|node| node.info()) {
            info.state = state;
            let timestamp = self.timestamp(now);
            self.notify(
                conn,
                p::NotifyNodeInformation {
                    timestamp,
                    nodes: vec![info],
                },
            );
        }
        self.out.close(conn);
        self.asked.closed(conn);
        self.peers.remove(&conn);
        self.conn_of.remove(&nid);
        if self
            .nodes
            .get(nid)
            .is_some_and(|n| n.node_type == NodeType::Storage)
        {
            self.storage_disconnected(nid);
        }
    }
}
