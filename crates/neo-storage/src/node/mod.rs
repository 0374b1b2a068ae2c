//! The storage node as a state machine ([`neo_net::Node`]) over a
//! [`Database`]: packets from the master and clients go in, packets to send
//! come out. No network I/O and no clock here; the shell runs it on a
//! thread of its own so database work never holds up other nodes.
//!
//! One concept per file: `master.rs` (the session with the primary:
//! §2.4, §5, §5.3), `commit.rs` (stores, locks, vote, lock, unlock, abort:
//! §6.4–§6.11), `reads.rs` (§7.1, §8), `locks.rs` (the lock tables),
//! `pack.rs` (§11.3); this file holds the node's state, its peers'
//! identification (protocol.md §9.3) and the dispatch of inputs.

mod commit;
mod locks;
mod master;
mod pack;
mod reads;

use std::collections::BTreeMap;

use neo_cluster::{NodeTable, PrimaryFinder, UnixTime};
use neo_net::{ConnId, Input, Node, Outbox, Output, Requests};
use neo_proto::packets as p;
use neo_proto::{Address, Checksum, ErrorCode, NodeId, NodeState, NodeType, Packet};
use sha1::{Digest, Sha1};

use crate::backend::{Error, FatalError, RequestError};
use crate::db::Database;
use commit::Waiting;
use locks::LockManager;
use master::{Link, MasterAsked};
use pack::PackState;
pub use reads::MAX_LIST_LENGTH;

/// What the storage node is configured with.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Cluster name.
    pub cluster: String,
    /// Where this storage listens, as published to the cluster.
    pub address: Address,
    /// The masters to find the primary among.
    pub masters: Vec<Address>,
    /// Limits on what peers make the node keep in memory.
    pub limits: Limits,
}

/// Limits on what peers make a storage node keep in memory; over one, a
/// request is answered `NOT_READY` ("retry later").
#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests waiting for a lock or an unlock.
    pub waiting: usize,
    /// Object data those requests hold.
    pub waiting_bytes: usize,
    /// Identifications held until the master announces their node.
    pub early_identifications: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            waiting: 16_384,
            waiting_bytes: 512 << 20,
            early_identifications: 1024,
        }
    }
}

/// How long an unlock may wait for its commit (§12.2).
const DEFERRED_COMMIT_SECONDS: f64 = 1.0;

/// A connected peer.
#[derive(Debug, Default)]
struct Peer {
    /// Identified node (clients).
    nid: Option<NodeId>,
}

/// The storage node.
pub struct Storage {
    config: StorageConfig,
    db: Database,
    nid: Option<NodeId>,
    /// The masters, to find the primary among.
    finder: PrimaryFinder,
    link: Link,
    /// Requests to the master waiting for their answer.
    asked: Requests<MasterAsked>,
    /// Told `StartOperation`: serves clients.
    operational: bool,
    nodes: NodeTable,
    /// Timestamp of the last `NotifyNodeInformation` processed.
    last_notification: f64,
    peers: BTreeMap<ConnId, Peer>,
    /// Identifications that came before the master announced the node.
    early_identifications: Vec<(ConnId, u32, p::RequestIdentification)>,
    locks: LockManager,
    waiting: Vec<Waiting>,
    /// Object data held by `waiting`.
    waiting_bytes: usize,
    /// When the deferred commit of unlocked transactions is due.
    commit_due: Option<UnixTime>,
    /// A vote or lock was written but not committed yet: nothing goes
    /// out before the commit (group commit, see [`Node::poll_output`]).
    commit_owed: bool,
    /// Pack orders and the pack in progress (§11.3).
    pack: PackState,
    now: UnixTime,
    out: Outbox,
}

/// The outcome of one handler: a request error is answered to the peer
/// whose request failed (see [`Storage::settle`]), a fatal error stops the
/// node.
type Handled = Result<(), Error>;

impl Storage {
    /// A storage node over an opened database. Refuses a database of
    /// another cluster, and a configuration without masters.
    pub fn new(config: StorageConfig, mut db: Database) -> Result<Storage, String> {
        let finder = PrimaryFinder::new(&config.masters)
            .ok_or_else(|| "no master address given".to_owned())?;
        let name = db.name().map_err(|e| e.to_string())?;
        match name {
            Some(name) if name != config.cluster => {
                return Err(format!(
                    "the database belongs to cluster {name:?}, not {:?}",
                    config.cluster
                ));
            }
            Some(_) => {}
            None => {
                db.set_name(&config.cluster).map_err(|e| e.to_string())?;
                db.commit().map_err(|e| e.to_string())?;
            }
        }
        let nid = db.nid().map_err(|e| e.to_string())?;
        Ok(Storage {
            config,
            db,
            nid,
            finder,
            link: Link::Scheduled,
            asked: Requests::default(),
            operational: false,
            nodes: NodeTable::new(),
            last_notification: 0.0,
            peers: BTreeMap::new(),
            early_identifications: Vec::new(),
            locks: LockManager::default(),
            waiting: Vec::new(),
            waiting_bytes: 0,
            commit_due: None,
            commit_owed: false,
            pack: PackState::default(),
            now: 0.0,
            out: Outbox::default(),
        })
    }

    /// `--disable-pack`: pack orders are not carried out, only reported as
    /// completed so that the master is not blocked (§11.3 step 12).
    pub fn set_disable_pack(&mut self, disabled: bool) {
        self.pack.disabled = disabled;
    }

    /// Own node id, once known.
    pub fn nid(&self) -> Option<NodeId> {
        self.nid
    }

    /// Whether database writes wait for a commit. Never so when outputs
    /// that promise durability (vote answers, lock answers of transactions
    /// whose metadata it holds) leave [`Node::poll_output`]: the seeded
    /// simulation checks it.
    pub fn has_uncommitted(&self) -> bool {
        self.db.has_uncommitted()
    }

    /// The connection to the master, identifying or identified.
    fn master(&self) -> Option<ConnId> {
        match &self.link {
            Link::Connected { conn, .. } => Some(*conn),
            Link::Scheduled | Link::Connecting { .. } => None,
        }
    }

    fn fatal(&mut self, error: impl std::fmt::Display) {
        tracing::error!("database failure: {error}");
        self.out.exit(Err(error.to_string()));
    }

    /// Ends the request `(conn, msg_id)`: a request error is answered to
    /// its sender and the node goes on; a fatal error is returned.
    fn settle(&mut self, conn: ConnId, msg_id: u32, result: Handled) -> Result<(), FatalError> {
        match result {
            Ok(()) => Ok(()),
            Err(Error::Fatal(error)) => Err(error),
            Err(Error::Request(error)) => {
                self.request_failed(conn, msg_id, &error);
                Ok(())
            }
        }
    }

    /// Ends work that no peer asked for (an answer to us, a closed
    /// connection, time): a request error has nobody to go to.
    fn settle_internal(result: Handled) -> Result<(), FatalError> {
        match result {
            Ok(()) => Ok(()),
            Err(Error::Fatal(error)) => Err(error),
            Err(Error::Request(error)) => {
                tracing::warn!("database refused internal work: {error}");
                Ok(())
            }
        }
    }

    /// The error answer to a request the database refused.
    fn request_failed(&mut self, conn: ConnId, msg_id: u32, error: &RequestError) {
        match error {
            RequestError::NonReadableCell { .. } => {
                self.error(conn, msg_id, ErrorCode::NonReadableCell, "");
            }
            RequestError::UndoPack { .. } => {
                self.error(conn, msg_id, ErrorCode::UndoPackError, error.to_string());
            }
            // A peer sent an id or a partition the database can not hold:
            // malformed.
            RequestError::OutOfRange { .. } | RequestError::PartitionOutOfRange { .. } => {
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &error.to_string());
            }
            RequestError::NoPartitionTable { .. } => {
                self.refuse(conn, msg_id, ErrorCode::NotReady, &error.to_string());
            }
        }
    }

    fn answer(&mut self, conn: ConnId, msg_id: u32, packet: impl Into<Packet>) {
        self.out.answer(conn, msg_id, packet);
    }

    fn notify(&mut self, conn: ConnId, packet: impl Into<Packet>) {
        self.out.notify(conn, packet);
    }

    fn error(&mut self, conn: ConnId, msg_id: u32, code: ErrorCode, message: impl Into<String>) {
        self.answer(conn, msg_id, p::Error::new(code, message));
    }

    /// Error, then close (PROTOCOL_ERROR and NOT_READY, §8).
    fn refuse(&mut self, conn: ConnId, msg_id: u32, code: ErrorCode, message: &str) {
        tracing::info!(%conn, %code, message, "refusing");
        self.error(conn, msg_id, code, message);
        self.out.close(conn);
    }

    /// Holds a request until a lock or an unlock, within the limits.
    fn wait(&mut self, request: Waiting) {
        let bytes = request.bytes();
        let limits = &self.config.limits;
        if self.waiting.len() >= limits.waiting || self.waiting_bytes + bytes > limits.waiting_bytes
        {
            let (conn, msg_id) = request.sender();
            tracing::warn!(%conn, waiting = self.waiting.len(), "too many requests waiting for locks");
            let message = "too many requests waiting for locks: retry later";
            self.error(conn, msg_id, ErrorCode::NotReady, message);
            return;
        }
        self.waiting_bytes += bytes;
        self.waiting.push(request);
    }

    /// Takes every waiting request, to run them again.
    fn take_waiting(&mut self) -> Vec<Waiting> {
        self.waiting_bytes = 0;
        std::mem::take(&mut self.waiting)
    }

    fn on_timeout(&mut self) -> Handled {
        self.connect_if_due();
        if self.commit_due.is_some_and(|due| self.now >= due) {
            self.commit()?;
        }
        self.pack_step()
    }

    /// Commits, which also covers any deferred unlock.
    fn commit(&mut self) -> Handled {
        self.commit_due = None;
        self.commit_owed = false;
        self.db.commit()
    }

    fn on_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet) -> Handled {
        if Some(conn) == self.master() {
            return self.on_master_packet(conn, msg_id, packet);
        }
        let Some(peer) = self.peers.get(&conn) else {
            return Ok(());
        };
        let client = peer.nid;
        match (packet, client) {
            (Packet::RequestIdentification(request), None) => {
                self.identify_peer(conn, msg_id, request);
                Ok(())
            }
            (Packet::Ping(_), _) => {
                self.answer(conn, msg_id, p::Pong {});
                Ok(())
            }
            (packet, Some(client)) => self.on_client_packet(conn, client, msg_id, packet),
            (packet, None) => {
                let message = format!("unexpected packet {} before identification", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
                Ok(())
            }
        }
    }

    /// Identification of a client (protocol.md §9.3).
    fn identify_peer(&mut self, conn: ConnId, msg_id: u32, request: p::RequestIdentification) {
        if !self.operational {
            return self.refuse(conn, msg_id, ErrorCode::NotReady, "Retry Later");
        }
        if request.cluster != self.config.cluster {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "invalid cluster name",
            );
        }
        match request.node_type {
            NodeType::Client => {}
            NodeType::Storage => {
                // Not NOT_READY: a storage would retry every second forever.
                let message = "replication between storages is not supported by this \
                               storage yet";
                tracing::warn!(%conn, "a storage wants to replicate from us: refused");
                return self.refuse(conn, msg_id, ErrorCode::ProtocolError, message);
            }
            other => {
                let message = format!("{other} nodes do not identify to a storage");
                return self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
        let Some(nid) = request.nid else {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "a client needs a node id",
            );
        };
        let known = self.nodes.get(nid).is_some_and(|node| {
            node.state == NodeState::Running && node.id_timestamp == request.id_timestamp
        });
        if !known {
            if request
                .id_timestamp
                .is_some_and(|t| t > self.last_notification)
            {
                // The master's notification about this client is in flight.
                if self.early_identifications.len() >= self.config.limits.early_identifications {
                    return self.refuse(conn, msg_id, ErrorCode::NotReady, "Retry Later");
                }
                self.early_identifications.push((conn, msg_id, request));
                return;
            }
            return self.refuse(conn, msg_id, ErrorCode::NotReady, "unknown by master");
        }
        if let Some(peer) = self.peers.get_mut(&conn) {
            peer.nid = Some(nid);
        }
        self.answer(
            conn,
            msg_id,
            p::AcceptIdentification {
                node_type: NodeType::Storage,
                nid: self.nid,
                your_nid: Some(nid),
            },
        );
    }

    fn on_closed(&mut self, conn: ConnId) -> Handled {
        if let Link::Connected {
            conn: master,
            address,
        } = &self.link
        {
            if *master == conn {
                tracing::warn!(%address, "lost the master");
                // The same master first: it is probably back.
                let address = address.clone();
                self.asked.closed(conn);
                self.stop_operation();
                self.early_identifications.clear();
                self.connect_master(Some(address));
                return Ok(());
            }
        }
        self.peers.remove(&conn);
        self.early_identifications.retain(|(c, _, _)| *c != conn);
        self.waiting.retain(|waiting| waiting.sender().0 != conn);
        self.waiting_bytes = self.waiting.iter().map(Waiting::bytes).sum();
        // Its transactions that did not vote are over; voted ones wait for
        // the master (which may still lock them).
        for ttid in self.locks.of_conn(conn) {
            let voted = self.locks.transactions.get(&ttid).is_some_and(|t| t.voted);
            if !voted {
                self.abort(ttid)?;
            }
        }
        Ok(())
    }
}

impl Node for Storage {
    fn handle(&mut self, input: Input, now: UnixTime) {
        self.now = now;
        let result = match input {
            Input::Start => {
                self.connect_master(None);
                Ok(())
            }
            Input::Connected { conn, token } => {
                self.on_master_connected(conn, token);
                Ok(())
            }
            Input::ConnectFailed { token } => {
                self.on_connect_failed(token);
                Ok(())
            }
            Input::Accepted { conn } => {
                self.peers.insert(conn, Peer::default());
                Ok(())
            }
            Input::Packet {
                conn,
                msg_id,
                packet,
            } => {
                let result = self.on_packet(conn, msg_id, packet);
                self.settle(conn, msg_id, result)
            }
            Input::Answer {
                conn,
                token,
                packet,
            } => Self::settle_internal(self.on_answer(conn, token, packet)),
            Input::Closed { conn } => Self::settle_internal(self.on_closed(conn)),
            Input::Timeout => Self::settle_internal(self.on_timeout()),
        };
        if let Err(error) = result {
            self.fatal(error);
        }
    }

    /// Commits what the inputs handled since the last call promised to make
    /// durable (§12.2), then returns what to do, in order: the votes and
    /// locks of a whole batch become durable with a single commit (group
    /// commit) before any answer goes out.
    fn poll_output(&mut self) -> Vec<Output> {
        if self.commit_owed {
            if let Err(error) = self.commit() {
                // Nothing that waited for this commit may go out.
                self.out.clear();
                self.fatal(error);
            }
        }
        self.out.take()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        let reconnect = match self.link {
            Link::Scheduled => self.finder.deadline(),
            _ => None,
        };
        // Background work goes on as soon as no request waits.
        let background = self.has_background_work().then_some(self.now);
        [reconnect, self.commit_due, background]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
    }
}

/// SHA-1 of object data, as clients compute it.
fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}
