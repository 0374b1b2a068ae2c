//! Cluster states (architecture.md §4) and the admin's requests
//! (operations.md §3): what `neoctl` may ask and change, truncation and
//! stopping.

use neo_cluster::UnixTime;
use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{ClusterState, ErrorCode, NodeState, NodeType, Packet, Tid};

use crate::master::Master;

impl Master {
    pub(crate) fn set_state(&mut self, state: ClusterState) {
        if self.state != state {
            tracing::info!(from = %self.state, to = %state, "cluster state");
            self.state = state;
            self.broadcast_cluster_state();
        }
    }

    pub(crate) fn on_admin_packet(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        packet: Packet,
        now: UnixTime,
    ) {
        match packet {
            Packet::AskClusterState(_) => self.answer(
                conn,
                msg_id,
                p::AnswerClusterState {
                    state: Some(self.state),
                },
            ),
            Packet::AskLastTransaction(_) => {
                let tid = self.transactions.last_tid;
                self.answer(conn, msg_id, p::AnswerLastTransaction { tid });
            }
            Packet::AskRecovery(_) => self.answer(
                conn,
                msg_id,
                p::AnswerRecovery {
                    ptid: self.pt.ptid(),
                    backup_tid: None,
                    truncate_tid: self.truncate_tid,
                },
            ),
            Packet::AskLastIDs(_) => {
                let (last_tid, last_oid) = self.transactions.last_ids();
                self.answer(
                    conn,
                    msg_id,
                    p::AnswerLastIDs {
                        last_tid: Some(last_tid),
                        last_oid: Some(last_oid),
                        first_tid: self.first_tid,
                    },
                );
            }
            Packet::SetClusterState(request) => {
                self.set_cluster_state(conn, msg_id, request.state, now)
            }
            Packet::AddPendingNodes(request) => self.add_pending_nodes(conn, msg_id, &request, now),
            Packet::TweakPartitionTable(request) => self.tweak(conn, msg_id, &request),
            Packet::SetNodeState(request) => self.change_node_state(conn, msg_id, &request, now),
            Packet::SetNumReplicas(request) => {
                self.set_num_replicas(conn, msg_id, request.num_replicas)
            }
            Packet::CheckReplicas(request) => self.check_replicas(conn, msg_id, request),
            Packet::Truncate(request) => self.truncate(conn, msg_id, request.tid, now),
            Packet::FlushLog(_) => {
                neo_log::flush_requested();
                // Every other node writes out its log backlog (NEO/py's
                // storages keep theirs in memory until told).
                for (_, _, other) in self.identified() {
                    if other != conn {
                        self.notify(other, p::FlushLog {});
                    }
                }
            }
            packet => {
                let message = format!("{} is not supported yet", packet.name());
                self.answer(conn, msg_id, p::Error::new(ErrorCode::Denied, message));
            }
        }
    }

    fn set_cluster_state(&mut self, conn: ConnId, msg_id: u32, state: ClusterState, now: UnixTime) {
        match state {
            ClusterState::Verifying => {
                let pending = self.storages_in(NodeState::Pending);
                let ok = self.state == ClusterState::Recovering
                    && !pending.is_empty()
                    && self.storages_in(NodeState::Running).is_empty();
                if !ok {
                    let error = p::Error::new(ErrorCode::Denied, "Can not switch to this state");
                    return self.answer(conn, msg_id, error);
                }
                self.startup_allowed = true;
                self.answer(conn, msg_id, p::Error::ack("Cluster state changed"));
            }
            ClusterState::Stopping => {
                self.answer(conn, msg_id, p::Error::ack("Cluster state changed"));
                self.enter_stopping(now);
            }
            ClusterState::Running | ClusterState::Recovering | ClusterState::BackingUp => {
                let error = p::Error::new(ErrorCode::Denied, "Invalid state requested");
                self.answer(conn, msg_id, error);
            }
            _ => {
                let error = p::Error::new(ErrorCode::Denied, "backup mode is not supported yet");
                self.answer(conn, msg_id, error);
            }
        }
    }

    /// Whether the cluster is in one of `states`; if not, refuses the
    /// request `rpc` (NEO/py's name for it) as NEO/py does.
    pub(crate) fn allowed_in(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        rpc: &str,
        states: &[ClusterState],
    ) -> bool {
        if states.contains(&self.state) {
            return true;
        }
        let message = format!("{rpc} RPC can not be used in {} state", self.state);
        self.deny(conn, msg_id, &message);
        false
    }

    /// Refuses an admin request: neoctl prints `message` verbatim.
    pub(crate) fn deny(&mut self, conn: ConnId, msg_id: u32, message: &str) {
        tracing::info!(message, "admin request denied");
        self.answer(conn, msg_id, p::Error::new(ErrorCode::Denied, message));
    }

    /// `neoctl truncate` (§11.1): cut the history after `tid`. The cluster
    /// leaves RUNNING and comes back once every storage truncated.
    fn truncate(&mut self, conn: ConnId, msg_id: u32, tid: Tid, now: UnixTime) {
        if !self.allowed_in(conn, msg_id, "truncate", &[ClusterState::Running]) {
            return;
        }
        let refusal = if self.transactions.last_tid <= tid {
            Some("Truncating after last transaction does nothing")
        } else if self.first_tid > tid {
            Some("Truncating before first transaction is probably not what you intended to do")
        } else if self.packs.approved_from(Tid(tid.0.saturating_add(1))) {
            // Packing removed what the truncation would bring back.
            Some("Can not truncate before an approved pack")
        } else {
            None
        };
        if let Some(message) = refusal {
            return self.deny(conn, msg_id, message);
        }
        tracing::warn!(%tid, "truncating the database");
        self.answer(conn, msg_id, p::Error::ack(""));
        self.enter_recovering(now, Some(tid));
    }

    pub(crate) fn enter_stopping(&mut self, now: UnixTime) {
        self.set_state(ClusterState::Stopping);
        self.transactions.drop_queued_begins();
        self.try_stop(now);
    }

    pub(crate) fn try_stop(&mut self, now: UnixTime) {
        if self.stopped || self.state != ClusterState::Stopping || self.transactions.has_pending() {
            return;
        }
        self.stopped = true;
        let timestamp = self.timestamp(now);
        for (nid, node_type, conn) in self.identified() {
            if node_type == NodeType::Storage {
                if let Some(node) = self.nodes.get(nid) {
                    let mut info = node.info();
                    info.state = NodeState::Down;
                    self.notify(
                        conn,
                        p::NotifyNodeInformation {
                            timestamp,
                            nodes: vec![info],
                        },
                    );
                }
            }
        }
        for (_, _, conn) in self.identified() {
            self.out.close(conn);
        }
        self.out.exit(Ok(()));
    }
}
