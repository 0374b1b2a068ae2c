//! The primary master as a state machine: [`Master::handle`] takes one
//! [`Input`] (a packet, an answer, a connection event) and the time, and
//! returns what to send. No I/O, no clock: the shell (`shell.rs`) does both,
//! and tests drive whole scenarios deterministically.
//!
//! It follows architecture.md §1 (identification, node ids, notifications),
//! §3 (partition table), §4 (cluster states), §5 (recovery, verification)
//! and §6 (commit coordination).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use neo_cluster::{Node, NodeTable, PartitionTable, UnixTime};
use neo_proto::packets::{self as p, NodeInfo};
use neo_proto::{Address, ClusterState, ErrorCode, NodeId, NodeState, NodeType, Oid, Packet, Tid};

use crate::pack::PackManager;
use crate::transactions::{Finish, TransactionManager};

/// Identifies a connection for the state machine; the shell maps it to a
/// real connection.
pub type ConnId = u64;

/// What happened.
#[derive(Debug)]
pub enum Input {
    /// A connection was accepted (handshake done).
    Accepted {
        /// The new connection.
        conn: ConnId,
    },
    /// A request or notification arrived.
    Packet {
        /// Where from.
        conn: ConnId,
        /// Its msg_id, to answer with.
        msg_id: u32,
        /// The packet.
        packet: Packet,
    },
    /// The answer to a request we sent with [`Output::Request`].
    Answer {
        /// Where from.
        conn: ConnId,
        /// Code of our request.
        request_code: u16,
        /// The answer or an `Error`.
        packet: Packet,
    },
    /// The connection is gone.
    Closed {
        /// The connection.
        conn: ConnId,
    },
}

/// What to do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Answer a request.
    Answer {
        /// Where to.
        conn: ConnId,
        /// msg_id of the request answered.
        msg_id: u32,
        /// The answer.
        packet: Packet,
    },
    /// Send a notification.
    Notify {
        /// Where to.
        conn: ConnId,
        /// The notification.
        packet: Packet,
    },
    /// Send a request; its answer comes back as [`Input::Answer`].
    Request {
        /// Where to.
        conn: ConnId,
        /// The request.
        packet: Packet,
    },
    /// Close after sending what is queued.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// The cluster is stopped: close everything and exit.
    Exit,
}

/// What the master is configured with.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Cluster name; peers must present the same.
    pub cluster: String,
    /// Where this master listens (as published to other nodes).
    pub address: Address,
    /// Number of partitions of a new cluster.
    pub partitions: u32,
    /// Number of extra replicas of a new cluster.
    pub replicas: u32,
    /// Create a new cluster once this many storages are pending.
    pub autostart: Option<u32>,
}

/// Largest `AskNewOIDs` count served, so a client cannot make us allocate
/// without bound.
const MAX_NEW_OIDS: u32 = 10_000;

/// A connected peer.
#[derive(Debug, Default)]
struct Peer {
    /// Set once identified.
    nid: Option<NodeId>,
    node_type: Option<NodeType>,
    /// Client asked for read-only access.
    read_only: bool,
}

/// Recovery bookkeeping (architecture.md §5.1).
#[derive(Debug, Default)]
struct Recovery {
    /// Storages asked `AskRecovery`, not answered yet.
    asked: BTreeSet<NodeId>,
    /// The storage asked `AskPartitionTable`, and the ptid it announced.
    table_asked: Option<(NodeId, u64)>,
    /// Storages that answered, with the ptid they hold.
    ptids: BTreeMap<NodeId, Option<u64>>,
}

/// Verification bookkeeping (architecture.md §5.2).
#[derive(Debug, Default)]
struct Verification {
    /// Storages asked `AskLockedTransactions`, not answered yet.
    locked_asked: BTreeSet<NodeId>,
    /// ttid → storages that voted it.
    voted: BTreeMap<Tid, BTreeSet<NodeId>>,
    /// ttid → final tid, for transactions locked somewhere.
    locked: BTreeMap<Tid, Tid>,
    /// `AskFinalTID` sent, per storage, in order (answers come in order).
    final_asked: BTreeMap<NodeId, Vec<Tid>>,
    /// Storages asked `AskLastIDs`, not answered yet.
    last_ids_asked: BTreeSet<NodeId>,
    /// Whether the `AskFinalTID` round started.
    final_round_started: bool,
    /// Whether the `AskLastIDs` round started.
    asking_last_ids: bool,
    /// Storages asked `AskPackOrders`, not answered yet.
    pack_orders_asked: BTreeSet<NodeId>,
    /// Whether the `AskPackOrders` round started.
    asking_pack_orders: bool,
}

/// The primary master.
#[derive(Debug)]
pub struct Master {
    config: MasterConfig,
    nid: NodeId,
    state: ClusterState,
    nodes: NodeTable,
    peers: HashMap<ConnId, Peer>,
    /// Connection of each identified node.
    conn_of: BTreeMap<NodeId, ConnId>,
    pt: PartitionTable,
    /// Set by `neoctl start` and after losing operation: start with what is
    /// there instead of waiting for every storage of the table.
    startup_allowed: bool,
    recovery: Recovery,
    verification: Verification,
    /// Storages sent `StartOperation` that did not answer `NotifyReady`.
    starting: BTreeSet<NodeId>,
    /// Storages that are ready (answered `NotifyReady`).
    ready: BTreeSet<NodeId>,
    transactions: TransactionManager,
    /// Pack orders (§11.3).
    packs: PackManager,
    /// Last value of the strictly increasing clock used for timestamps.
    last_timestamp: f64,
    /// Smallest first TID reported by storages (for `AskLastIDs` by neoctl).
    first_tid: Tid,
    /// Set in STOPPING once every transaction is over.
    stopped: bool,
    out: Vec<Output>,
}

impl Master {
    /// A master in RECOVERING with an empty table.
    pub fn new(config: MasterConfig) -> Result<Master, neo_cluster::PtError> {
        let nid = NodeId::new(NodeType::Master, 1).unwrap_or(NodeId(-0x0fff_ffff));
        let mut nodes = NodeTable::new();
        nodes.insert(Node {
            nid,
            node_type: NodeType::Master,
            address: Some(config.address.clone()),
            state: NodeState::Running,
            id_timestamp: None,
        });
        let pt = PartitionTable::new(config.partitions, config.replicas)?;
        Ok(Master {
            config,
            nid,
            state: ClusterState::Recovering,
            nodes,
            peers: HashMap::new(),
            conn_of: BTreeMap::new(),
            pt,
            startup_allowed: false,
            recovery: Recovery::default(),
            verification: Verification::default(),
            starting: BTreeSet::new(),
            ready: BTreeSet::new(),
            transactions: TransactionManager::default(),
            packs: PackManager::default(),
            last_timestamp: 0.0,
            first_tid: Tid::MAX,
            stopped: false,
            out: Vec::new(),
        })
    }

    /// Current cluster state.
    pub fn cluster_state(&self) -> ClusterState {
        self.state
    }

    /// The partition table.
    pub fn partition_table(&self) -> &PartitionTable {
        &self.pt
    }

    /// The node table.
    pub fn nodes(&self) -> &NodeTable {
        &self.nodes
    }

    /// Last committed TID.
    pub fn last_tid(&self) -> Tid {
        self.transactions.last_tid
    }

    /// Processes one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: UnixTime) -> Vec<Output> {
        match input {
            Input::Accepted { conn } => {
                self.peers.insert(conn, Peer::default());
            }
            Input::Packet {
                conn,
                msg_id,
                packet,
            } => self.on_packet(conn, msg_id, packet, now),
            Input::Answer {
                conn,
                request_code,
                packet,
            } => self.on_answer(conn, request_code, packet, now),
            Input::Closed { conn } => self.on_closed(conn, now),
        }
        self.progress(now);
        std::mem::take(&mut self.out)
    }

    // ---- sending ----

    fn answer(&mut self, conn: ConnId, msg_id: u32, packet: impl Into<Packet>) {
        self.out.push(Output::Answer {
            conn,
            msg_id,
            packet: packet.into(),
        });
    }

    fn notify(&mut self, conn: ConnId, packet: impl Into<Packet>) {
        self.out.push(Output::Notify {
            conn,
            packet: packet.into(),
        });
    }

    fn request(&mut self, conn: ConnId, packet: impl Into<Packet>) {
        self.out.push(Output::Request {
            conn,
            packet: packet.into(),
        });
    }

    fn notify_node(&mut self, nid: NodeId, packet: impl Into<Packet>) {
        if let Some(conn) = self.conn_of.get(&nid).copied() {
            self.notify(conn, packet);
        }
    }

    fn request_node(&mut self, nid: NodeId, packet: impl Into<Packet>) {
        if let Some(conn) = self.conn_of.get(&nid).copied() {
            self.request(conn, packet);
        }
    }

    /// Refuses a request and closes the connection, as NEO does for
    /// protocol errors and NOT_READY.
    fn refuse(&mut self, conn: ConnId, msg_id: u32, code: ErrorCode, message: &str) {
        tracing::info!(conn, %code, message, "refusing");
        self.answer(conn, msg_id, p::Error::new(code, message));
        self.out.push(Output::Close { conn });
    }

    /// A strictly increasing clock for `id_timestamp`s and notifications.
    fn timestamp(&mut self, now: UnixTime) -> f64 {
        let timestamp = if now > self.last_timestamp {
            now
        } else {
            self.last_timestamp + 0.001
        };
        self.last_timestamp = timestamp;
        timestamp
    }

    /// Identified nodes, with their type and connection.
    fn identified(&self) -> Vec<(NodeId, NodeType, ConnId)> {
        self.conn_of
            .iter()
            .filter_map(|(nid, conn)| {
                let node_type = self.peers.get(conn)?.node_type?;
                Some((*nid, node_type, *conn))
            })
            .collect()
    }

    /// Which node types a receiver is told about (architecture.md §1.4).
    fn sees(receiver: NodeType, node: NodeType) -> bool {
        match receiver {
            NodeType::Master => node == NodeType::Master,
            NodeType::Client => matches!(node, NodeType::Master | NodeType::Storage),
            NodeType::Storage | NodeType::Admin => node != NodeType::Admin,
        }
    }

    /// Tells every identified node that may see them about changed nodes.
    fn broadcast_nodes(&mut self, changed: &[NodeInfo], now: UnixTime) {
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
    fn set_node_state(&mut self, nid: NodeId, state: NodeState, now: UnixTime) {
        let info = match self.nodes.get_mut(nid) {
            Some(node) if node.state != state => {
                node.state = state;
                node.info()
            }
            _ => return,
        };
        if state == NodeState::Unknown {
            self.nodes.remove(nid);
        }
        self.broadcast_nodes(&[info], now);
    }

    fn send_partition_table(&mut self, conn: ConnId) {
        let packet = p::SendPartitionTable {
            ptid: self.pt.ptid(),
            num_replicas: self.pt.num_replicas(),
            rows: self.pt.to_rows(),
        };
        self.notify(conn, packet);
    }

    /// Broadcasts partition table changes to every identified non-master node.
    fn broadcast_pt_changes(&mut self, changes: Vec<p::CellChange>) {
        let Some(ptid) = self.pt.ptid() else { return };
        if changes.is_empty() {
            return;
        }
        let packet = p::NotifyPartitionChanges {
            ptid,
            num_replicas: self.pt.num_replicas(),
            changes,
        };
        for (_, node_type, conn) in self.identified() {
            if node_type != NodeType::Master {
                self.notify(conn, packet.clone());
            }
        }
    }

    fn broadcast_cluster_state(&mut self) {
        for (_, _, conn) in self.identified() {
            self.notify(conn, p::NotifyClusterInformation { state: self.state });
        }
    }

    fn storages_in(&self, state: NodeState) -> BTreeSet<NodeId> {
        self.identified()
            .into_iter()
            .filter(|(nid, node_type, _)| {
                *node_type == NodeType::Storage
                    && self.nodes.get(*nid).is_some_and(|node| node.state == state)
            })
            .map(|(nid, _, _)| nid)
            .collect()
    }

    // ---- packets ----

    fn on_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet, now: UnixTime) {
        let Some(peer) = self.peers.get(&conn) else {
            return;
        };
        let (nid, node_type) = (peer.nid, peer.node_type);
        match (packet, node_type.zip(nid)) {
            (Packet::RequestIdentification(request), None) => {
                self.identify(conn, msg_id, request, now)
            }
            (Packet::Ping(_), _) => self.answer(conn, msg_id, p::Pong {}),
            (Packet::Error(error), _) => {
                tracing::warn!(conn, "unsolicited error from peer: {error}");
            }
            (packet, Some((NodeType::Client, _))) => {
                self.on_client_packet(conn, msg_id, packet, now)
            }
            (packet, Some((NodeType::Storage, nid))) => {
                self.on_storage_packet(conn, nid, msg_id, packet, now)
            }
            (packet, Some((NodeType::Admin, _))) => self.on_admin_packet(conn, msg_id, packet, now),
            (Packet::NotifyNodeInformation(_) | Packet::NotifyClusterInformation(_), _) => {}
            (packet, _) => {
                let message = format!("unexpected packet {}", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
    }

    fn identify(
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
                        let known = request.nid.is_some_and(|nid| self.pt.has_cells(nid));
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
                    self.recovery.asked.insert(nid);
                    self.request(conn, p::AskRecovery {});
                } else {
                    self.send_partition_table(conn);
                    self.notify(conn, p::NotifyClusterInformation { state: self.state });
                    if state == NodeState::Running && self.state == ClusterState::Running {
                        self.starting.insert(nid);
                        self.notify(conn, p::StartOperation { backup: false });
                    }
                }
            }
            NodeType::Master => {}
        }
    }

    fn on_client_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet, now: UnixTime) {
        let read_only = self.peers.get(&conn).is_some_and(|peer| peer.read_only);
        match packet {
            Packet::AskLastTransaction(_) => {
                let tid = self.transactions.last_tid;
                self.answer(conn, msg_id, p::AnswerLastTransaction { tid });
            }
            Packet::AskNewOIDs(request) => {
                if read_only {
                    return self.read_only_refusal(conn, msg_id);
                }
                if request.count > MAX_NEW_OIDS {
                    let message = format!("at most {MAX_NEW_OIDS} oids at a time");
                    return self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
                }
                let oids = self.transactions.new_oids(request.count);
                self.answer(conn, msg_id, p::AnswerNewOIDs { oids });
            }
            Packet::AskBeginTransaction(request) => {
                if read_only {
                    return self.read_only_refusal(conn, msg_id);
                }
                if self.state == ClusterState::Stopping || !self.starting.is_empty() {
                    // Answered once storages are ready (or never, when stopping).
                    self.transactions.queue_begin(conn, msg_id, request.tid);
                    return;
                }
                self.begin(conn, msg_id, request.tid, now);
            }
            Packet::AskFinishTransaction(request) => self.finish(conn, msg_id, request, now),
            Packet::AbortTransaction(request) => self.abort(conn, msg_id, request),
            Packet::FailedVote(request) => self.failed_vote(conn, msg_id, request),
            Packet::AskFinalTID(request) => match self.transactions.final_tid_query(request.ttid) {
                Some(answer) => self.answer(conn, msg_id, p::AnswerFinalTID { tid: answer }),
                None => self.transactions.wait_final_tid(request.ttid, conn, msg_id),
            },
            Packet::AskPackOrders(request) => {
                let orders = self.packs.orders_from(request.min_id);
                self.answer(conn, msg_id, p::AnswerPackOrders { orders })
            }
            Packet::WaitForPack(request) => {
                if self.packs.wait(request.pack_id, conn, msg_id) {
                    self.answer(conn, msg_id, p::WaitedForPack {});
                }
            }
            packet => {
                let message = format!("unexpected packet {} from a client", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
    }

    fn read_only_refusal(&mut self, conn: ConnId, msg_id: u32) {
        self.answer(
            conn,
            msg_id,
            p::Error::new(ErrorCode::ReadOnlyAccess, "read-only access"),
        );
    }

    fn begin(&mut self, conn: ConnId, msg_id: u32, tid: Option<Tid>, now: UnixTime) {
        let ready = self.ready.clone();
        match self
            .transactions
            .begin(conn, tid, ready, now, self.pt.partitions())
        {
            Ok(ttid) => self.answer(conn, msg_id, p::AnswerBeginTransaction { ttid }),
            Err(message) => self.refuse(conn, msg_id, ErrorCode::ProtocolError, message),
        }
    }

    fn finish(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::AskFinishTransaction,
        now: UnixTime,
    ) {
        if let Some(pack) = &request.pack {
            let last_tid = self.transactions.last_tid;
            if pack.pack_tid == Tid::ZERO || pack.pack_tid > last_tid {
                return self.refuse(conn, msg_id, ErrorCode::ProtocolError, "invalid pack time");
            }
        }
        let Some(begun) = self.transactions.get(request.ttid) else {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "unknown transaction",
            );
        };
        if begun.client_conn != conn || begun.finish.is_some() {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "unexpected tpc_finish",
            );
        }
        let failed = begun.failed.clone();
        let ready_at_begin = begun.ready_at_begin.clone();
        if !failed.is_empty()
            && !self
                .pt
                .is_operational(|nid| self.nodes.is_running(nid) && !failed.contains(&nid))
        {
            self.transactions.remove(request.ttid);
            for storage in ready_at_begin {
                self.notify_node(
                    storage,
                    p::AbortTransaction {
                        ttid: request.ttid,
                        nids: vec![],
                    },
                );
            }
            let error = p::Error::new(
                ErrorCode::IncompleteTransaction,
                "transaction cannot complete without failed storages",
            );
            return self.answer(conn, msg_id, error);
        }
        for nid in &failed {
            // Disconnecting outdates their cells before the lock (§6.9).
            if let Some(storage_conn) = self.conn_of.get(nid).copied() {
                self.out.push(Output::Close { conn: storage_conn });
                self.on_closed(storage_conn, now);
            }
        }
        let mut partitions: BTreeSet<u32> = request
            .oids
            .iter()
            .map(|oid| self.pt.partition_of_oid(*oid))
            .collect();
        partitions.extend(request.deleted.iter().copied());
        partitions.extend(request.checked.iter().copied());
        partitions.insert(self.pt.partition_of_tid(request.ttid));
        let involved: BTreeSet<NodeId> = partitions
            .iter()
            .flat_map(|partition| self.pt.cells(*partition).iter().map(|cell| cell.nid))
            .filter(|nid| ready_at_begin.contains(nid) && self.conn_of.contains_key(nid))
            .collect();
        let finish = Finish {
            msg_id,
            oids: request.oids,
            awaiting: involved.clone(),
            involved: involved.clone(),
        };
        let tid = self
            .transactions
            .prepare(request.ttid, finish, now, self.pt.partitions());
        let pack_approved = match request.pack {
            Some(pack) => self.packs.new_order(tid, pack),
            None => false,
        };
        for storage in involved {
            self.request_node(
                storage,
                p::AskLockInformation {
                    ttid: request.ttid,
                    tid,
                    pack_approved,
                },
            );
        }
    }

    fn abort(&mut self, conn: ConnId, msg_id: u32, request: p::AbortTransaction) {
        let Some(begun) = self.transactions.get(request.ttid) else {
            return; // Already gone: aborts may cross.
        };
        if begun.client_conn != conn || begun.finish.is_some() {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "cannot abort a finishing transaction",
            );
        }
        self.transactions.remove(request.ttid);
        let mut storages: BTreeSet<NodeId> = request
            .nids
            .into_iter()
            .filter(|nid| self.ready.contains(nid))
            .collect();
        storages.extend(self.transactions.take_watchers(request.ttid));
        for storage in storages {
            self.notify_node(
                storage,
                p::AbortTransaction {
                    ttid: request.ttid,
                    nids: vec![],
                },
            );
        }
        self.finished_for_replication(request.ttid);
    }

    fn failed_vote(&mut self, conn: ConnId, msg_id: u32, request: p::FailedVote) {
        let Some(begun) = self.transactions.get(request.ttid) else {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "unknown transaction",
            );
        };
        let failed: BTreeSet<NodeId> = request
            .failed_nids
            .into_iter()
            .filter(|nid| begun.ready_at_begin.contains(nid))
            .collect();
        if !self
            .pt
            .is_operational(|nid| self.nodes.is_running(nid) && !failed.contains(&nid))
        {
            let error = p::Error::new(ErrorCode::IncompleteTransaction, "not enough storages");
            return self.answer(conn, msg_id, error);
        }
        self.transactions.add_failed(request.ttid, failed);
        self.answer(conn, msg_id, p::Error::ack(""));
    }

    fn on_storage_packet(
        &mut self,
        conn: ConnId,
        nid: NodeId,
        msg_id: u32,
        packet: Packet,
        now: UnixTime,
    ) {
        match packet {
            Packet::NotifyReady(_) => {
                if self.starting.remove(&nid) {
                    self.ready.insert(nid);
                    let (approved, rejected) = self.packs.signed();
                    if !approved.is_empty() || !rejected.is_empty() {
                        self.notify(conn, p::NotifyPackSigned { approved, rejected });
                    }
                }
                if self.starting.is_empty() {
                    for (conn, msg_id, tid) in self.transactions.take_queued_begins() {
                        if self.state == ClusterState::Running {
                            self.begin(conn, msg_id, tid, now);
                        } else {
                            self.transactions.queue_begin(conn, msg_id, tid);
                        }
                    }
                }
            }
            Packet::AskUnfinishedTransactions(_) => {
                let ttids = self.transactions.watch_unfinished(nid);
                let max_tid = self.transactions.last_tid;
                self.answer(
                    conn,
                    msg_id,
                    p::AnswerUnfinishedTransactions { max_tid, ttids },
                );
            }
            Packet::AskPackOrders(request) => {
                let orders = self.packs.first_approved(request.min_id);
                self.answer(conn, msg_id, p::AnswerPackOrders { orders })
            }
            Packet::NotifyPackCompleted(completed) => {
                tracing::debug!(%nid, pack_id = %completed.pack_id, "pack completed");
                self.packs.set_reported(nid, completed.pack_id);
                self.update_completed_pack();
            }
            Packet::NotifyReplicationDone(_) | Packet::NotifyPartitionCorrupted(_) => {
                tracing::debug!(%nid, "ignoring storage notification (replication comes later)");
            }
            Packet::AskLastTransaction(_) => {
                let tid = self.transactions.last_tid;
                self.answer(conn, msg_id, p::AnswerLastTransaction { tid });
            }
            packet => {
                let message = format!("unexpected packet {} from a storage", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
    }

    fn on_admin_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet, now: UnixTime) {
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

    // ---- answers to our requests ----

    fn on_answer(&mut self, conn: ConnId, request_code: u16, packet: Packet, now: UnixTime) {
        let Some(nid) = self.peers.get(&conn).and_then(|peer| peer.nid) else {
            return;
        };
        match packet {
            Packet::AnswerRecovery(answer) => self.on_recovery_answer(conn, nid, answer),
            Packet::AnswerPartitionTable(answer) => self.on_partition_table(nid, answer, now),
            Packet::AnswerLockedTransactions(answer) => {
                if self.verification.locked_asked.remove(&nid) {
                    for (ttid, tid) in answer.ttids.0 {
                        self.verification.voted.entry(ttid).or_default().insert(nid);
                        if let Some(tid) = tid {
                            self.verification.locked.insert(ttid, tid);
                        }
                    }
                }
            }
            Packet::AnswerFinalTID(answer) => {
                let ttid = self
                    .verification
                    .final_asked
                    .get_mut(&nid)
                    .and_then(|asked| (!asked.is_empty()).then(|| asked.remove(0)));
                if let (Some(ttid), Some(tid)) = (ttid, answer.tid) {
                    self.verification.locked.insert(ttid, tid);
                }
            }
            Packet::AnswerLastIDs(answer) => {
                if self.verification.last_ids_asked.remove(&nid) {
                    self.transactions
                        .raise_last_ids(answer.last_tid, answer.last_oid);
                    self.first_tid = self.first_tid.min(answer.first_tid);
                }
            }
            Packet::AnswerInformationLocked(answer) => {
                self.transactions.locked(answer.ttid, nid);
            }
            Packet::AnswerPackOrders(answer) => {
                if self.verification.pack_orders_asked.remove(&nid) {
                    for order in answer.orders {
                        self.packs.add(order);
                    }
                }
            }
            Packet::Error(error) => {
                tracing::warn!(%nid, request = neo_proto::packet_name(request_code).unwrap_or("?"), "storage refused: {error}");
                self.out.push(Output::Close { conn });
                self.on_closed(conn, now);
            }
            other => tracing::warn!(%nid, "ignoring answer {}", other.name()),
        }
    }

    fn on_recovery_answer(&mut self, conn: ConnId, nid: NodeId, answer: p::AnswerRecovery) {
        if !self.recovery.asked.remove(&nid) {
            return;
        }
        if answer.truncate_tid.is_some() || answer.backup_tid.is_some() {
            tracing::warn!(%nid, "storage reports a pending truncation or backup mode, not supported yet");
        }
        self.recovery.ptids.insert(nid, answer.ptid);
        let Some(ptid) = answer.ptid else { return };
        let loaded = self.pt.ptid().unwrap_or(0);
        let asking = self.recovery.table_asked.map_or(0, |(_, asked)| asked);
        if ptid > loaded && ptid > asking {
            self.recovery.table_asked = Some((nid, ptid));
            self.request(conn, p::AskPartitionTable {});
        }
    }

    fn on_partition_table(&mut self, nid: NodeId, answer: p::AnswerPartitionTable, now: UnixTime) {
        if self.recovery.table_asked.map(|(asked, _)| asked) != Some(nid) {
            return;
        }
        self.recovery.table_asked = None;
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
            self.recovery.table_asked = Some((storage, ptid));
            self.request_node(storage, p::AskPartitionTable {});
        }
    }

    // ---- connection loss ----

    fn on_closed(&mut self, conn: ConnId, now: UnixTime) {
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
            NodeType::Admin | NodeType::Master => self.set_node_state(nid, NodeState::Unknown, now),
            NodeType::Storage => self.storage_lost(nid, now),
        }
    }

    fn storage_lost(&mut self, nid: NodeId, now: UnixTime) {
        self.starting.remove(&nid);
        self.ready.remove(&nid);
        self.recovery.asked.remove(&nid);
        self.recovery.ptids.remove(&nid);
        if self.recovery.table_asked.map(|(asked, _)| asked) == Some(nid) {
            self.recovery.table_asked = None;
        }
        self.verification.locked_asked.remove(&nid);
        self.verification.last_ids_asked.remove(&nid);
        self.verification.final_asked.remove(&nid);
        self.verification.pack_orders_asked.remove(&nid);
        let has_cells = self.pt.has_cells(nid);
        let state = if has_cells {
            NodeState::Down
        } else {
            NodeState::Unknown
        };
        self.set_node_state(nid, state, now);
        self.transactions.storage_lost(nid);
        match self.state {
            ClusterState::Verifying | ClusterState::Running => {
                let changes = self.pt.outdate(|n| self.nodes.is_running(n));
                self.broadcast_pt_changes(changes);
                self.update_completed_pack();
                if !self.pt.is_operational(|n| self.nodes.is_running(n)) {
                    tracing::warn!("partition table no longer operational: back to recovery");
                    self.enter_recovering(now);
                }
            }
            _ => {}
        }
    }

    // ---- cluster states ----

    fn set_state(&mut self, state: ClusterState) {
        if self.state != state {
            tracing::info!(from = %self.state, to = %state, "cluster state");
            self.state = state;
            self.broadcast_cluster_state();
        }
    }

    /// Back to RECOVERING after losing operation (§4.2 rule 1).
    fn enter_recovering(&mut self, now: UnixTime) {
        for (nid, node_type, conn) in self.identified() {
            match node_type {
                NodeType::Storage | NodeType::Client => self.notify(conn, p::StopOperation {}),
                _ => {}
            }
            if node_type == NodeType::Client {
                self.packs.client_lost(conn);
                self.out.push(Output::Close { conn });
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
        // Not an election: start again with whatever is there (§2.5, §5.1).
        self.startup_allowed = true;
        self.set_state(ClusterState::Recovering);
        for storage in self.storages_in(NodeState::Pending) {
            self.recovery.asked.insert(storage);
            self.request_node(storage, p::AskRecovery {});
        }
    }

    fn enter_stopping(&mut self, now: UnixTime) {
        self.set_state(ClusterState::Stopping);
        self.transactions.drop_queued_begins();
        self.try_stop(now);
    }

    fn try_stop(&mut self, now: UnixTime) {
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
            self.out.push(Output::Close { conn });
        }
        self.out.push(Output::Exit);
    }

    /// Moves the cluster forward when the conditions of the current state hold.
    fn progress(&mut self, now: UnixTime) {
        match self.state {
            ClusterState::Recovering => self.try_leave_recovery(now),
            ClusterState::Verifying => self.continue_verification(),
            ClusterState::Running => self.commit_ready_transactions(),
            ClusterState::Stopping => {
                self.commit_ready_transactions();
                self.try_stop(now);
            }
            _ => {}
        }
    }

    /// The storages to start with, or `None` to keep waiting (§5.1 step 4).
    fn recovery_selection(&self) -> Option<BTreeSet<NodeId>> {
        if !self.recovery.asked.is_empty() || self.recovery.table_asked.is_some() {
            return None;
        }
        let pending = self.storages_in(NodeState::Pending);
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

    fn try_leave_recovery(&mut self, now: UnixTime) {
        let Some(selected) = self.recovery_selection() else {
            return;
        };
        for nid in &selected {
            self.set_node_state(*nid, NodeState::Running, now);
        }
        if self.pt.ptid().is_none() {
            self.pt.make(&selected);
            tracing::info!(storages = selected.len(), "new partition table");
        } else {
            // The changes need no broadcast: everybody gets the whole table.
            self.pt.outdate(|nid| self.nodes.is_running(nid));
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
            self.verification.locked_asked.insert(nid);
            self.request_node(nid, p::AskLockedTransactions {});
        }
    }

    fn continue_verification(&mut self) {
        let v = &self.verification;
        if !v.locked_asked.is_empty() || v.final_asked.values().any(|asked| !asked.is_empty()) {
            return;
        }
        if !v.asking_last_ids {
            // Voted somewhere, locked nowhere: maybe already unlocked on a
            // node that did not report it (§5.2 step 2).
            let unresolved: Vec<(Tid, BTreeSet<NodeId>)> = v
                .voted
                .iter()
                .filter(|(ttid, _)| !v.locked.contains_key(ttid))
                .map(|(ttid, voters)| (*ttid, voters.clone()))
                .collect();
            if !v.final_round_started && !unresolved.is_empty() {
                self.verification.final_round_started = true;
                let mut asked = false;
                for (ttid, voters) in unresolved {
                    let partition = self.pt.partition_of_tid(ttid);
                    let askable: Vec<NodeId> = self
                        .pt
                        .readable_cells(partition)
                        .map(|cell| cell.nid)
                        .filter(|nid| !voters.contains(nid) && self.conn_of.contains_key(nid))
                        .collect();
                    for nid in askable {
                        self.verification
                            .final_asked
                            .entry(nid)
                            .or_default()
                            .push(ttid);
                        self.request_node(nid, p::AskFinalTID { ttid });
                        asked = true;
                    }
                }
                if asked {
                    return;
                }
            }
            let v = &self.verification;
            let validations: Vec<(Tid, Tid, BTreeSet<NodeId>)> = v
                .locked
                .iter()
                .filter_map(|(ttid, tid)| Some((*ttid, *tid, v.voted.get(ttid)?.clone())))
                .collect();
            for (ttid, tid, voters) in validations {
                tracing::info!(%ttid, %tid, "replaying a locked transaction");
                for nid in voters {
                    self.notify_node(nid, p::ValidateTransaction { ttid, tid });
                }
                self.transactions.raise_last_ids(Some(tid), None);
            }
            self.verification.asking_last_ids = true;
            for nid in self.storages_in(NodeState::Running) {
                self.verification.last_ids_asked.insert(nid);
                self.request_node(nid, p::AskLastIDs {});
            }
            return;
        }
        if !self.verification.last_ids_asked.is_empty() {
            return;
        }
        if !self.verification.asking_pack_orders {
            // Reload the pack orders not completed everywhere (§5.2 step 4).
            self.verification.asking_pack_orders = true;
            let holders = self.readable_nodes();
            let min_id = self
                .packs
                .min_reported(&holders)
                .map_or(Tid::ZERO, |id| Tid(id.0.saturating_add(1)));
            for nid in holders {
                if self.conn_of.contains_key(&nid) {
                    self.verification.pack_orders_asked.insert(nid);
                    self.request_node(nid, p::AskPackOrders { min_id });
                }
            }
        }
        if !self.verification.pack_orders_asked.is_empty() {
            return;
        }
        self.update_completed_pack();
        self.verification = Verification::default();
        self.set_state(ClusterState::Running);
        for nid in self.storages_in(NodeState::Running) {
            self.starting.insert(nid);
            self.notify_node(nid, p::StartOperation { backup: false });
        }
    }

    /// Completes, strictly in TID order, the transactions every involved
    /// storage has locked (§6.9).
    fn commit_ready_transactions(&mut self) {
        while let Some(done) = self.transactions.pop_committable() {
            tracing::debug!(ttid = %done.ttid, tid = %done.tid, "transaction committed");
            self.answer(
                done.client_conn,
                done.msg_id,
                p::AnswerTransactionFinished {
                    ttid: done.ttid,
                    tid: done.tid,
                },
            );
            for (_, node_type, conn) in self.identified() {
                if node_type == NodeType::Client && conn != done.client_conn {
                    self.notify(
                        conn,
                        p::InvalidateObjects {
                            tid: done.tid,
                            oids: done.oids.clone(),
                        },
                    );
                }
            }
            for storage in &done.involved {
                self.notify_node(*storage, p::NotifyUnlockInformation { ttid: done.ttid });
            }
            if self.packs.is_approved(done.tid) {
                let ready: Vec<NodeId> = self.ready.iter().copied().collect();
                for storage in ready {
                    self.notify_node(
                        storage,
                        p::NotifyPackSigned {
                            approved: vec![done.tid],
                            rejected: vec![],
                        },
                    );
                }
            }
            for storage in self.transactions.take_watchers(done.ttid) {
                self.notify_node(
                    storage,
                    p::NotifyTransactionFinished {
                        ttid: done.ttid,
                        max_tid: done.tid,
                    },
                );
            }
            for (conn, msg_id) in done.final_tid_waiters {
                self.answer(
                    conn,
                    msg_id,
                    p::AnswerFinalTID {
                        tid: Some(done.tid),
                    },
                );
            }
        }
    }

    /// Storages owning readable cells.
    fn readable_nodes(&self) -> BTreeSet<NodeId> {
        (0..self.pt.partitions())
            .flat_map(|partition| self.pt.readable_cells(partition).map(|cell| cell.nid))
            .collect()
    }

    /// Answers the `WaitForPack` requests of orders the whole cluster
    /// completed (§11.3 step 8).
    fn update_completed_pack(&mut self) {
        let readable = self.readable_nodes();
        for (conn, msg_id) in self.packs.update_completed(&readable) {
            self.answer(conn, msg_id, p::WaitedForPack {});
        }
    }

    /// A transaction some storage waited for (before replicating) is over.
    fn finished_for_replication(&mut self, ttid: Tid) {
        let max_tid = self.transactions.last_tid;
        for storage in self.transactions.take_watchers(ttid) {
            self.notify_node(storage, p::NotifyTransactionFinished { ttid, max_tid });
        }
    }
}

impl Master {
    /// Last OID handed out.
    pub fn last_oid(&self) -> Oid {
        self.transactions.last_ids().1
    }

    /// Pack orders kept in memory, with id `>= min_id`.
    pub fn pack_orders(&self, min_id: Tid) -> Vec<p::PackOrder> {
        self.packs.orders_from(min_id)
    }
}
