//! Who may join the cluster and how everybody learns about it
//! (architecture.md §1, protocol.md §9.2): identification of every node
//! type, `NotifyNodeInformation`, distribution of the partition table and
//! the cluster state, and what the loss of a connection means.

use neo_cluster::{Node, UnixTime};
use neo_net::ConnId;
use neo_proto::packets::{self as p, NodeInfo};
use neo_proto::{ClusterState, ErrorCode, Map, NodeId, NodeState, NodeType, Partition, Value};

use crate::master::{Asked, Master};

impl Master {
    /// Which node types a receiver is told about (architecture.md §1.4).
    fn sees(receiver: NodeType, node: NodeType) -> bool {
        match receiver {
            NodeType::Master => node == NodeType::Master,
            NodeType::Client => matches!(node, NodeType::Master | NodeType::Storage),
            NodeType::Storage | NodeType::Admin => node != NodeType::Admin,
        }
    }

    /// Tells every identified node that may see them about changed nodes.
    pub(crate) fn broadcast_nodes(&mut self, changed: &[NodeInfo], now: UnixTime) {
        if changed.is_empty() {
            return;
        }
        let timestamp = self.timestamp(now);
        for (_, receiver_type, conn) in self.identified() {
            let visible: Vec<NodeInfo> = changed
                .iter()
                .filter(|info| Self::sees(receiver_type, info.node_type))
                .cloned()
                .collect();
            if !visible.is_empty() {
                self.notify(
                    conn,
                    p::NotifyNodeInformation {
                        timestamp,
                        nodes: visible,
                    },
                );
            }
        }
    }

    /// Changes a node's state and tells everybody.
    pub(crate) fn set_node_state(&mut self, nid: NodeId, state: NodeState, now: UnixTime) {
        let info = match self.nodes.get_mut(nid) {
            Some(node) if node.state != state => {
                node.state = state;
                node.info()
            }
            _ => return,
        };
        if state == NodeState::Unknown {
            self.nodes.remove(nid);
            self.devpaths.remove(&nid);
        }
        self.broadcast_nodes(&[info], now);
    }

    pub(crate) fn send_partition_table(&mut self, conn: ConnId) {
        let packet = p::SendPartitionTable {
            ptid: self.pt.ptid(),
            num_replicas: self.pt.num_replicas(),
            rows: self.pt.to_rows(),
        };
        self.notify(conn, packet);
    }

    /// Broadcasts partition table changes made (if any) to every
    /// identified node that holds the table.
    pub(crate) fn broadcast_pt_changes(&mut self, changes: Vec<p::CellChange>) {
        if !changes.is_empty() {
            self.send_pt_changes(changes);
        }
    }

    /// Sends the table's new version with `changes` (possibly none, for a
    /// new number of replicas) to every identified non-master node, but to
    /// storages in recovery, which do not have our table (they get it whole
    /// at verification). A changed cell is no longer updatable.
    pub(crate) fn send_pt_changes(&mut self, changes: Vec<p::CellChange>) {
        let Some(ptid) = self.pt.ptid() else { return };
        for change in &changes {
            self.updatable.remove(&(change.partition, change.nid));
        }
        let packet = p::NotifyPartitionChanges {
            ptid,
            num_replicas: self.pt.num_replicas(),
            changes,
        };
        let recovering = self.state == ClusterState::Recovering;
        for (_, node_type, conn) in self.identified() {
            let has_table = match node_type {
                NodeType::Master => false,
                NodeType::Storage => !recovering,
                NodeType::Client | NodeType::Admin => true,
            };
            if has_table {
                self.notify(conn, packet.clone());
            }
        }
    }

    pub(crate) fn broadcast_cluster_state(&mut self) {
        for (_, _, conn) in self.identified() {
            self.notify(conn, p::NotifyClusterInformation { state: self.state });
        }
    }

    pub(crate) fn identify(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::RequestIdentification,
        now: UnixTime,
    ) {
        if request.cluster != self.config.cluster {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "invalid cluster name",
            );
        }
        if request.address.as_ref() == Some(&self.config.address) {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "address conflicts with this master",
            );
        }
        if request.node_type == NodeType::Master && self.challenged(conn, &request) {
            return;
        }
        // Protect against cloned databases and buggy peers (§1.2).
        let taken_by_identified = |nid: NodeId| self.conn_of.contains_key(&nid);
        if let Some(address) = &request.address {
            if let Some(node) = self.nodes.by_address(address) {
                if taken_by_identified(node.nid) {
                    return self.refuse(
                        conn,
                        msg_id,
                        ErrorCode::ProtocolError,
                        "already connected",
                    );
                }
            }
        }
        if request.node_type == NodeType::Storage {
            // A storage may come back at another address (ephemeral ports):
            // only a connected holder of the id is a conflict (a clone).
            if let Some(nid) = request.nid {
                if taken_by_identified(nid) {
                    return self.refuse(
                        conn,
                        msg_id,
                        ErrorCode::ProtocolError,
                        "already connected",
                    );
                }
            }
        }
        let read_only = request
            .extra
            .0
            .iter()
            .any(|(key, value)| key == "read_only" && *value == neo_proto::Value::Bool(true));
        let devpath = match devpath(&request.extra) {
            Ok(devpath) => devpath,
            Err(message) => return self.refuse(conn, msg_id, ErrorCode::ProtocolError, message),
        };
        let state = match request.node_type {
            NodeType::Client => {
                if self.state != ClusterState::Running {
                    return self.refuse(conn, msg_id, ErrorCode::NotReady, "Retry Later");
                }
                NodeState::Running
            }
            NodeType::Storage => {
                if request.address.is_none() {
                    // `--new-nid` cloning (§3.9) is not supported yet.
                    let code = if self.state == ClusterState::Recovering {
                        ErrorCode::NotReady
                    } else {
                        ErrorCode::ProtocolError
                    };
                    return self.refuse(
                        conn,
                        msg_id,
                        code,
                        "storages without address are not supported",
                    );
                }
                match self.state {
                    ClusterState::Recovering => NodeState::Pending,
                    ClusterState::Stopping | ClusterState::StoppingBackup => {
                        return self.refuse(conn, msg_id, ErrorCode::NotReady, "Retry Later");
                    }
                    _ => {
                        // A storage the master knows (a member that went
                        // down) is back in the cluster (§4.1).
                        let known = request.nid.is_some_and(|nid| {
                            self.nodes
                                .get(nid)
                                .is_some_and(|node| node.node_type == NodeType::Storage)
                        });
                        if known {
                            NodeState::Running
                        } else {
                            NodeState::Pending
                        }
                    }
                }
            }
            NodeType::Admin | NodeType::Master => NodeState::Running,
        };
        let Some(nid) = self.nodes.allocate_nid(
            request.node_type,
            request.nid,
            request.address.as_ref(),
            self.nid,
        ) else {
            return self.refuse(conn, msg_id, ErrorCode::ProtocolError, "no node id left");
        };
        if request.node_type == NodeType::Storage
            && request.nid != Some(nid)
            && self.state == ClusterState::Recovering
            && !self.election_settled()
        {
            // Another candidate could give the same id to another storage.
            return self.refuse(conn, msg_id, ErrorCode::NotReady, "election in progress");
        }
        let id_timestamp = self.timestamp(now);
        let node = Node {
            nid,
            node_type: request.node_type,
            address: request.address,
            state,
            id_timestamp: Some(id_timestamp),
        };
        let info = node.info();
        self.nodes.insert(node);
        // Others first, then the newcomer hears about everybody.
        self.broadcast_nodes(std::slice::from_ref(&info), now);
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.nid = Some(nid);
            peer.node_type = Some(request.node_type);
            peer.read_only = read_only;
        }
        self.conn_of.insert(nid, conn);
        if request.node_type == NodeType::Storage {
            self.devpaths.insert(nid, devpath);
        }
        tracing::info!(%nid, node_type = %request.node_type, %state, "node identified");
        self.answer(
            conn,
            msg_id,
            p::AcceptIdentification {
                node_type: NodeType::Master,
                nid: Some(self.nid),
                your_nid: Some(nid),
            },
        );
        let mut nodes = vec![info];
        nodes.extend(
            self.nodes
                .iter()
                .filter(|node| node.nid != nid && Self::sees(request.node_type, node.node_type))
                .map(Node::info),
        );
        nodes.extend(self.unidentified_masters());
        let timestamp = self.timestamp(now);
        self.notify(conn, p::NotifyNodeInformation { timestamp, nodes });
        match request.node_type {
            NodeType::Client | NodeType::Admin => {
                self.send_partition_table(conn);
                if request.node_type == NodeType::Admin {
                    self.notify(conn, p::NotifyClusterInformation { state: self.state });
                }
            }
            NodeType::Storage => {
                if self.state == ClusterState::Recovering {
                    self.asked
                        .send(&mut self.out, conn, Asked::Recovery, p::AskRecovery {});
                } else {
                    self.send_partition_table(conn);
                    self.notify(conn, p::NotifyClusterInformation { state: self.state });
                    if state == NodeState::Running && self.state == ClusterState::Running {
                        self.start_storage(nid);
                    }
                }
            }
            NodeType::Master => {}
        }
    }

    pub(crate) fn on_closed(&mut self, conn: ConnId, now: UnixTime) {
        // What was asked on it will not be answered (a transaction waiting
        // for its lock learns it below, with the storage's loss).
        self.asked.closed(conn);
        let Some(peer) = self.peers.remove(&conn) else {
            return;
        };
        let (Some(nid), Some(node_type)) = (peer.nid, peer.node_type) else {
            return;
        };
        self.conn_of.remove(&nid);
        tracing::info!(%nid, %node_type, "connection lost");
        match node_type {
            NodeType::Client => {
                self.packs.client_lost(conn);
                for storage in self.transactions.client_lost(conn) {
                    let (ttid, nids) = storage;
                    for nid in nids {
                        self.notify_node(nid, p::AbortTransaction { ttid, nids: vec![] });
                    }
                    self.finished_for_replication(ttid);
                }
                self.set_node_state(nid, NodeState::Unknown, now);
            }
            NodeType::Admin => self.set_node_state(nid, NodeState::Unknown, now),
            // A secondary that went away is DOWN (it may come back).
            NodeType::Master => self.set_node_state(nid, NodeState::Down, now),
            NodeType::Storage => {
                self.storage_lost(nid, now);
                for (client, msg_id, orders) in self.packs.old_orders_storage_lost(nid) {
                    self.answer(client, msg_id, p::AnswerPackOrders { orders });
                }
            }
        }
    }

    /// Forgets what a storage's connection held: its readiness, what it
    /// reported in recovery, its updatable cells, its part in transactions.
    pub(crate) fn storage_disconnected(&mut self, nid: NodeId) {
        self.starting.remove(&nid);
        self.ready.remove(&nid);
        self.recovery.forget(nid);
        self.updatable.retain(|(_, holder)| *holder != nid);
        self.transactions.storage_lost(nid);
    }

    fn storage_lost(&mut self, nid: NodeId, now: UnixTime) {
        self.storage_disconnected(nid);
        let Some(node) = self.nodes.get(nid) else {
            return;
        };
        // (Storages the admin kills or drops are disconnected without
        // coming here.) A member is DOWN until it comes back; a pending storage is
        // forgotten (architecture.md §1.3).
        let state = if node.state == NodeState::Running || self.pt.has_cells(nid) {
            NodeState::Down
        } else {
            NodeState::Unknown
        };
        self.set_node_state(nid, state, now);
        match self.state {
            ClusterState::Verifying if self.truncate_tid.is_some() => {
                // Some storages would truncate and not this one (§11.1).
                tracing::warn!(%nid, "storage lost while a truncation is pending: back to recovery");
                self.enter_recovering(now, None);
            }
            ClusterState::Verifying | ClusterState::Running => {
                let changes = self.pt.outdate(|n| self.nodes.is_running(n), Some(nid));
                self.broadcast_pt_changes(changes);
                self.update_completed_pack();
                self.check_operational(now);
            }
            _ => {}
        }
    }

    /// Back to recovery when some partition has no readable cell on a
    /// running storage (§3.5), saying which.
    pub(crate) fn check_operational(&mut self, now: UnixTime) {
        let unreadable = self.pt.unreadable_partitions(|n| self.nodes.is_running(n));
        if unreadable.is_empty() {
            return;
        }
        tracing::warn!(
            "no readable cell on a running storage for partition(s) {}: back to recovery",
            partition_list(&unreadable)
        );
        self.enter_recovering(now, None);
    }
}

/// Most partitions named in a log line.
const LOGGED_PARTITIONS: usize = 32;

/// `0, 3, 7` (and how many more past [`LOGGED_PARTITIONS`]).
pub(crate) fn partition_list(partitions: &[Partition]) -> String {
    let mut text = partitions
        .iter()
        .take(LOGGED_PARTITIONS)
        .map(Partition::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if partitions.len() > LOGGED_PARTITIONS {
        text.push_str(&format!(
            " and {} more",
            partitions.len() - LOGGED_PARTITIONS
        ));
    }
    text
}

/// Most components of a storage's `devpath`, and bytes in each: enough
/// for any topology (NEO/py sends a host and a device).
const MAX_DEVPATH_DEPTH: usize = 16;
const MAX_DEVPATH_COMPONENT: usize = 256;

/// The `devpath` of an identification's `extra` (architecture.md §1.6).
fn devpath(extra: &Map<String, Value>) -> Result<Vec<String>, &'static str> {
    let Some((_, value)) = extra.0.iter().find(|(key, _)| key == "devpath") else {
        return Ok(Vec::new());
    };
    let Value::Array(components) = value else {
        return Err("devpath must be a list of strings");
    };
    if components.len() > MAX_DEVPATH_DEPTH {
        return Err("devpath has too many components");
    }
    components
        .iter()
        .map(|component| {
            let bytes: &[u8] = match component {
                Value::Bin(bytes) => bytes,
                Value::Str(text) => text.as_bytes(),
                _ => return Err("devpath must be a list of strings"),
            };
            if bytes.len() > MAX_DEVPATH_COMPONENT {
                return Err("devpath component too long");
            }
            Ok(String::from_utf8_lossy(bytes).into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_of_lost_partitions_names_them_within_a_limit() {
        assert_eq!(partition_list(&[0, 3, 7]), "0, 3, 7");
        let many: Vec<Partition> = (0..40).collect();
        let text = partition_list(&many);
        assert!(text.starts_with("0, 1, 2, "), "{text}");
        assert!(text.ends_with("31 and 8 more"), "{text}");
    }

    #[test]
    fn devpaths_are_read_within_limits() {
        let extra = |value| Map(vec![("devpath".to_owned(), value)]);
        let bin = |text: &str| Value::Bin(text.as_bytes().to_vec().into());
        assert_eq!(devpath(&Map::new()), Ok(vec![]));
        assert_eq!(
            devpath(&extra(Value::Array(vec![bin("host"), bin("64768")]))),
            Ok(vec!["host".to_owned(), "64768".to_owned()])
        );
        assert!(devpath(&extra(bin("host"))).is_err());
        assert!(devpath(&extra(Value::Array(vec![Value::Int(1)]))).is_err());
        assert!(devpath(&extra(Value::Array(vec![bin("x"); 17]))).is_err());
    }
}
