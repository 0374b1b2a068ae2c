//! Cluster states (architecture.md §4) and the admin's requests
//! (operations.md §3): what `neoctl` may ask and change, and stopping.

use neo_cluster::UnixTime;
use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{ClusterState, ErrorCode, NodeState, NodeType, Packet};

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
                    truncate_tid: None,
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
            Packet::FlushLog(_) => {}
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
