//! The primary master as a state machine ([`neo_net::Node`]): it takes one
//! input (a packet, an answer, a connection event) with the time, and
//! accumulates what to send. No I/O, no clock: the shell does both, and
//! tests drive whole scenarios deterministically.
//!
//! This file holds the master's state, its helpers and the dispatch of
//! inputs; the rest is one concept per file: `identification.rs` (who may
//! join, node notifications, connection loss), `recovery.rs` (§5.1),
//! `verification.rs` (§5.2), `commit.rs` (§6: clients' transactions and
//! the storages' service), `cluster_state.rs` (§4 and the admin's
//! requests), `elasticity.rs` (§3.6-3.7: adding, tweaking, killing and
//! dropping storages), `replication.rs` (§9.1, §9.3: cells catching up,
//! replica checks), `transactions.rs` and `pack.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use neo_cluster::{NodeTable, PartitionTable, UnixTime};
use neo_net::{ConnId, Input, Node, Outbox, Output, Requests};
use neo_proto::packets as p;
use neo_proto::{
    Address, ClusterState, ErrorCode, NodeId, NodeType, Oid, Packet, Partition, Ptid, Tid,
};

use crate::election::Election;
use crate::metrics::Counters;
use crate::pack::PackManager;
use crate::recovery::Recovery;
use crate::transactions::TransactionManager;
use crate::verification::Verification;

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
    /// The other masters, which elect one primary with this one (§2).
    pub masters: Vec<Address>,
    /// This master's id until a primary gives it another (`-i`, for
    /// tests); `M1` by default.
    pub nid: Option<NodeId>,
}

/// Why the master sent a request to a storage; the answer comes back with
/// the request's token, which says which of these it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// `AskRecovery` (§5.1).
    Recovery,
    /// `AskPartitionTable`, to the storage announcing table `ptid`.
    PartitionTable {
        /// The ptid the storage announced.
        ptid: Ptid,
    },
    /// `AskLockedTransactions` (§5.2 step 1).
    LockedTransactions,
    /// `AskFinalTID` of a transaction voted but not locked (§5.2 step 2).
    FinalTid(Tid),
    /// `AskLastIDs` (§5.2 step 3).
    LastIds,
    /// `AskPackOrders` (§5.2 step 4).
    PackOrders,
    /// `AskLockInformation` of a transaction in `tpc_finish` (§6.9).
    Lock(Tid),
    /// `AskPackOrders` for a client's request of completed orders (§11.3).
    OldPackOrders(u64),
}

/// A connected peer.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// Set once identified.
    pub nid: Option<NodeId>,
    pub node_type: Option<NodeType>,
    /// Client asked for read-only access.
    pub read_only: bool,
}

/// The primary master.
#[derive(Debug)]
pub struct Master {
    pub(crate) config: MasterConfig,
    pub(crate) nid: NodeId,
    pub(crate) state: ClusterState,
    pub(crate) nodes: NodeTable,
    pub(crate) peers: HashMap<ConnId, Peer>,
    /// Connection of each identified node.
    pub(crate) conn_of: BTreeMap<NodeId, ConnId>,
    pub(crate) pt: PartitionTable,
    /// Set by `neoctl start` and after losing operation: start with what is
    /// there instead of waiting for every storage of the table.
    pub(crate) startup_allowed: bool,
    pub(crate) recovery: Recovery,
    pub(crate) verification: Verification,
    /// Storages sent `StartOperation` that did not answer `NotifyReady`.
    pub(crate) starting: BTreeSet<NodeId>,
    /// Storages that are ready (answered `NotifyReady`).
    pub(crate) ready: BTreeSet<NodeId>,
    pub(crate) transactions: TransactionManager,
    /// Pack orders (§11.3).
    pub(crate) packs: PackManager,
    /// Last value of the strictly increasing clock used for timestamps.
    pub(crate) last_timestamp: f64,
    /// Smallest first TID reported by storages (for `AskLastIDs` by neoctl).
    pub(crate) first_tid: Tid,
    /// Set in STOPPING once every transaction is over.
    pub(crate) stopped: bool,
    /// Requests to storages waiting for their answer.
    pub(crate) asked: Requests<Asked>,
    /// OUT_OF_DATE cells whose storage asked `AskUnfinishedTransactions`
    /// since they became out of date: only they may become UP_TO_DATE
    /// (§9.1 step 3). Any change of a cell takes it out.
    pub(crate) updatable: BTreeSet<(Partition, NodeId)>,
    /// Each storage's place in the topology (`devpath`), for tweak.
    pub(crate) devpaths: BTreeMap<NodeId, Vec<String>>,
    /// A truncation decided (by `neoctl truncate` or found on storages in
    /// recovery) and not carried out yet (§5.1 step 5, §11.1).
    pub(crate) truncate_tid: Option<Tid>,
    /// The TID range of the replica check asked of each partition, for
    /// the report of a corruption (§9.3).
    pub(crate) checks: BTreeMap<Partition, (Tid, Tid)>,
    /// The election, while RECOVERING (§2.2).
    pub(crate) election: Election,
    pub(crate) out: Outbox,
    /// Shared with [`crate::MasterNode`]'s metrics (unregistered in tests).
    pub(crate) counters: Counters,
}

impl Master {
    /// A master in RECOVERING with an empty table, playing the primary
    /// role: it elects with the other masters of its configuration.
    pub fn new(config: MasterConfig) -> Result<Master, neo_cluster::PtError> {
        let first = NodeId::new(NodeType::Master, 1).unwrap_or(NodeId(-0x0fff_ffff));
        let nid = config.nid.unwrap_or(first);
        Master::with_nid(config, nid)
    }

    /// [`Master::new`] with the id a previous primary gave this master.
    pub(crate) fn with_nid(
        config: MasterConfig,
        nid: NodeId,
    ) -> Result<Master, neo_cluster::PtError> {
        let mut election = Election::default();
        for master in &config.masters {
            election.learn(master, &config.address);
        }
        let mut nodes = NodeTable::new();
        nodes.insert(neo_cluster::Node {
            nid,
            node_type: NodeType::Master,
            address: Some(config.address.clone()),
            state: neo_proto::NodeState::Running,
            id_timestamp: None,
        });
        let pt = PartitionTable::new(config.partitions, config.replicas)?;
        neo_log::set_node(&nid.to_string());
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
            asked: Requests::default(),
            updatable: BTreeSet::new(),
            devpaths: BTreeMap::new(),
            truncate_tid: None,
            checks: BTreeMap::new(),
            election,
            out: Outbox::default(),
            counters: Counters::default(),
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

    /// Last OID handed out.
    pub fn last_oid(&self) -> Oid {
        self.transactions.last_ids().1
    }

    /// Pack orders kept in memory, with id `>= min_id`.
    pub fn pack_orders(&self, min_id: Tid) -> Vec<p::PackOrder> {
        self.packs.orders_from(min_id)
    }

    // ---- sending ----

    pub(crate) fn answer(&mut self, conn: ConnId, msg_id: u32, packet: impl Into<Packet>) {
        self.out.answer(conn, msg_id, packet);
    }

    pub(crate) fn notify(&mut self, conn: ConnId, packet: impl Into<Packet>) {
        self.out.notify(conn, packet);
    }

    pub(crate) fn notify_node(&mut self, nid: NodeId, packet: impl Into<Packet>) {
        if let Some(conn) = self.conn_of.get(&nid).copied() {
            self.notify(conn, packet);
        }
    }

    /// Asks a request of storage `nid`, if connected; its answer comes back
    /// to [`Master::on_answer`] with `why`.
    pub(crate) fn ask_node(&mut self, nid: NodeId, why: Asked, packet: impl Into<Packet>) {
        if let Some(conn) = self.conn_of.get(&nid).copied() {
            self.asked.send(&mut self.out, conn, why, packet);
        }
    }

    /// Whether a request of this kind is waiting for its answer.
    pub(crate) fn is_asking(&self, kind: impl Fn(&Asked) -> bool) -> bool {
        self.asked.iter().any(|(_, why)| kind(why))
    }

    /// Refuses a request and closes the connection, as NEO does for
    /// protocol errors and NOT_READY.
    pub(crate) fn refuse(&mut self, conn: ConnId, msg_id: u32, code: ErrorCode, message: &str) {
        tracing::info!(%conn, %code, message, "refusing");
        self.answer(conn, msg_id, p::Error::new(code, message));
        self.out.close(conn);
    }

    /// A strictly increasing clock for `id_timestamp`s and notifications.
    pub(crate) fn timestamp(&mut self, now: UnixTime) -> f64 {
        let timestamp = if now > self.last_timestamp {
            now
        } else {
            self.last_timestamp + 0.001
        };
        self.last_timestamp = timestamp;
        timestamp
    }

    /// Identified nodes, with their type and connection.
    pub(crate) fn identified(&self) -> Vec<(NodeId, NodeType, ConnId)> {
        self.conn_of
            .iter()
            .filter_map(|(nid, conn)| {
                let node_type = self.peers.get(conn)?.node_type?;
                Some((*nid, node_type, *conn))
            })
            .collect()
    }

    pub(crate) fn storages_in(&self, state: neo_proto::NodeState) -> BTreeSet<NodeId> {
        self.identified()
            .into_iter()
            .filter(|(nid, node_type, _)| {
                *node_type == NodeType::Storage
                    && self.nodes.get(*nid).is_some_and(|node| node.state == state)
            })
            .map(|(nid, _, _)| nid)
            .collect()
    }

    /// Sends `StartOperation` to a RUNNING storage; new transactions wait
    /// until it is ready (§5.3).
    pub(crate) fn start_storage(&mut self, nid: NodeId) {
        self.starting.insert(nid);
        self.notify_node(nid, p::StartOperation { backup: false });
    }

    /// Storages owning readable cells.
    pub(crate) fn readable_nodes(&self) -> BTreeSet<NodeId> {
        (0..self.pt.partitions())
            .flat_map(|partition| self.pt.readable_cells(partition).map(|cell| cell.nid))
            .collect()
    }

    // ---- inputs ----

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
                tracing::warn!(%conn, "unsolicited error from peer: {error}");
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

    fn on_answer(&mut self, conn: ConnId, token: neo_net::Token, packet: Packet, now: UnixTime) {
        let Some(why) = self.asked.answered(conn, token) else {
            return;
        };
        let Some(nid) = self.peers.get(&conn).and_then(|peer| peer.nid) else {
            return;
        };
        match (why, packet) {
            (Asked::Recovery, Packet::AnswerRecovery(answer)) => {
                self.on_recovery_answer(conn, nid, answer)
            }
            (Asked::PartitionTable { .. }, Packet::AnswerPartitionTable(answer)) => {
                self.on_partition_table(nid, answer, now)
            }
            (Asked::LockedTransactions, Packet::AnswerLockedTransactions(answer)) => {
                self.verification.on_locked_transactions(nid, answer);
            }
            (Asked::FinalTid(ttid), Packet::AnswerFinalTID(answer)) => {
                if let Some(tid) = answer.tid {
                    self.verification.locked.insert(ttid, tid);
                }
            }
            (Asked::LastIds, Packet::AnswerLastIDs(answer)) => {
                let v = &mut self.verification;
                v.last_tid = v.last_tid.max(answer.last_tid);
                self.transactions.raise_last_ids(None, answer.last_oid);
                self.first_tid = self.first_tid.min(answer.first_tid);
            }
            (Asked::PackOrders, Packet::AnswerPackOrders(answer)) => {
                for order in answer.orders {
                    self.packs.add(order);
                }
            }
            (Asked::OldPackOrders(id), Packet::AnswerPackOrders(answer)) => {
                if let Some((client, msg_id, orders)) =
                    self.packs.old_orders_answered(id, nid, answer.orders)
                {
                    self.answer(client, msg_id, p::AnswerPackOrders { orders });
                }
            }
            (Asked::Lock(ttid), Packet::AnswerInformationLocked(answer)) => {
                if answer.ttid != ttid {
                    tracing::warn!(%nid, asked = %ttid, answered = %answer.ttid,
                        "storage locked another transaction than asked");
                }
                self.transactions.locked(ttid, nid);
            }
            (why, Packet::Error(error)) => {
                tracing::warn!(%nid, ?why, "storage refused: {error}");
                self.out.close(conn);
                self.on_closed(conn, now);
            }
            // `neo-net` lets only the request's answer code or `Error` through.
            (why, other) => tracing::warn!(%nid, ?why, "ignoring answer {}", other.name()),
        }
    }

    /// Moves the cluster forward when the conditions of the current state hold.
    fn progress(&mut self, now: UnixTime) {
        if self.state == ClusterState::Recovering {
            self.challenge_masters(now);
        } else if !self.election.challenges.is_empty() || !self.election.dialing.is_empty() {
            self.end_election();
        }
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
}

impl Node for Master {
    fn handle(&mut self, input: Input, now: UnixTime) {
        match input {
            Input::Start => {
                if self.election.started.is_none() {
                    self.election.started = Some(self.timestamp(now));
                }
            }
            // Nothing the master asks is answered in parts.
            Input::Timeout | Input::AnswerPart { .. } => {}
            Input::Accepted { conn } => {
                self.peers.insert(conn, Peer::default());
            }
            // The master connects only to challenge other masters.
            Input::Connected { conn, token } => self.on_connected(conn, token),
            Input::ConnectFailed { token } => self.on_connect_failed(token),
            Input::Packet {
                conn,
                msg_id,
                packet,
            } => {
                if self.is_challenge(conn) {
                    match packet {
                        Packet::Ping(_) => self.answer(conn, msg_id, p::Pong {}),
                        // A secondary's redirection is a notification.
                        packet @ Packet::NotPrimaryMaster(_) => {
                            self.on_challenge_answer(conn, packet)
                        }
                        _ => {}
                    }
                } else {
                    self.on_packet(conn, msg_id, packet, now);
                }
            }
            Input::Answer {
                conn,
                token,
                packet,
            } => {
                if self.is_challenge(conn) {
                    self.on_challenge_answer(conn, packet);
                } else {
                    self.on_answer(conn, token, packet, now);
                }
            }
            Input::Closed { conn } => {
                if self.is_challenge(conn) {
                    self.on_challenge_closed(conn);
                } else {
                    self.on_closed(conn, now);
                }
            }
        }
        if self.election.lost_to.is_none() {
            self.progress(now);
        }
    }

    fn poll_output(&mut self) -> Vec<Output> {
        self.out.take()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        self.next_challenge()
    }
}
