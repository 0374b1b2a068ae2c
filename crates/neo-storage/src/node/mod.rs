//! The storage node as a state machine ([`neo_net::Node`]) over a
//! [`Database`]: packets from the master and clients go in, packets to send
//! come out. No network I/O and no clock here; the shell runs it on a
//! thread of its own so database work never holds up other nodes.
//!
//! One concept per file: `master.rs` (the session with the primary:
//! §2.4, §5, §5.3), `peers.rs` (identification of clients and storages,
//! links to other storages: protocol.md §9.3, §9.5), `commit.rs` (stores,
//! locks, vote, lock, unlock, abort: §6.4–§6.11), `reads.rs` (§7.1, §8),
//! `locks.rs` (the lock tables), `replication.rs` and `fetch.rs`
//! (replicating own cells: §9.1), `feeding.rs` (serving replications: §9.1), `check.rs` (replica
//! checks: §9.3), `drop.rs` (deleting discarded partitions: §12.5),
//! `pack.rs` (§11.3); this file holds the node's state, the dispatch of
//! inputs and the background work.

mod check;
mod commit;
mod drop;
mod feeding;
mod fetch;
mod import;
mod locks;
mod master;
mod pack;
mod peers;
mod reads;
mod replication;

use std::collections::BTreeMap;

use neo_cluster::{NodeTable, PrimaryFinder, UnixTime};
use neo_net::metrics::Durations;
use neo_net::{ConnId, Input, Node, Outbox, Output, Requests, Token};
use neo_proto::packets as p;
use neo_proto::{Address, Checksum, ErrorCode, NodeId, NodeType, Packet, Partition};
use sha1::{Digest, Sha1};

use crate::backend::{Error, FatalError, RequestError};
use crate::db::Database;
use crate::metrics::{Counters, Observed, StorageMetrics};
use check::Checker;
pub use check::MAX_CHECK_LENGTH;
use commit::Waiting;
use drop::Dropping;
use feeding::Feeding;
pub use feeding::MAX_FETCH_LENGTH;
use import::Importing;
use locks::LockManager;
use master::Link;
use pack::PackState;
use peers::{Links, Peer};
pub use reads::MAX_LIST_LENGTH;
use replication::Replicator;

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
    /// Its place in the cluster's topology, told to the master
    /// ([`Database::topology_path`](crate::db::Database::topology_path)).
    pub devpath: Vec<String>,
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

/// Why the node sent a request: what to do with its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Asked {
    /// Our identification to the master.
    MasterIdentification,
    /// `AskPackOrders` (§11.3 step 6).
    PackOrders,
    /// `AskUnfinishedTransactions` for these partitions (§9.1 step 2).
    Unfinished(Vec<Partition>),
    /// Our identification to storage `nid`.
    StorageIdentification(NodeId),
    /// A chunk of the replication in progress (`AskFetch*`).
    Fetch,
    /// A range of the replica check in progress (`AskCheck*Range`).
    Check,
}

/// The storage node.
pub struct Storage {
    config: StorageConfig,
    db: Database,
    nid: Option<NodeId>,
    /// The masters, to find the primary among.
    finder: PrimaryFinder,
    link: Link,
    /// Requests waiting for their answer, to the master and to storages.
    asked: Requests<Asked>,
    /// Told `StartOperation`: serves clients.
    operational: bool,
    nodes: NodeTable,
    /// Timestamp of the last `NotifyNodeInformation` processed.
    last_notification: f64,
    /// The master's `id_timestamp` of this node, which it presents to
    /// other storages (§1.5).
    id_timestamp: Option<f64>,
    peers: BTreeMap<ConnId, Peer>,
    /// Links to other storages.
    links: Links,
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
    /// Replication of own OUT_OF_DATE cells (§9.1).
    replicator: Replicator,
    /// Replications served to other storages.
    feeding: Feeding,
    /// Replica checks (§9.3).
    checker: Checker,
    /// Partitions whose data is to be deleted.
    dropping: Dropping,
    /// The import's background steps, with the Importer.
    importing: Importing,
    now: UnixTime,
    out: Outbox,
    /// What the node counts; registered only with `--metrics`.
    counters: Counters,
    /// The gauges, recounted after each batch, with `--metrics`.
    metrics: Option<StorageMetrics>,
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
            id_timestamp: None,
            peers: BTreeMap::new(),
            links: Links::default(),
            early_identifications: Vec::new(),
            locks: LockManager::default(),
            waiting: Vec::new(),
            waiting_bytes: 0,
            commit_due: None,
            commit_owed: false,
            pack: PackState::default(),
            replicator: Replicator::default(),
            feeding: Feeding::default(),
            checker: Checker::default(),
            dropping: Dropping::default(),
            importing: Importing::default(),
            now: 0.0,
            out: Outbox::default(),
            counters: Counters::default(),
            metrics: None,
        })
    }

    /// Keeps `metrics` (`--metrics`).
    pub fn set_metrics(&mut self, metrics: StorageMetrics) {
        self.counters = metrics.counters.clone();
        self.metrics = Some(metrics);
    }

    /// Where the shell times requests, with `--metrics`.
    pub fn request_durations(&self) -> Option<Durations> {
        self.metrics
            .as_ref()
            .map(|metrics| metrics.durations.clone())
    }

    /// Recounts the gauges of the metrics, if kept.
    fn observe(&mut self) {
        let Some(mut metrics) = self.metrics.take() else {
            return;
        };
        let master = self.master().map(|_| NodeType::Master.name());
        let connections = self
            .peers
            .values()
            .map(|peer| match peer {
                Peer::Unidentified => "UNIDENTIFIED",
                Peer::Client(_) => NodeType::Client.name(),
                Peer::Storage(_) => NodeType::Storage.name(),
            })
            .chain(master);
        metrics.observe(Observed {
            waiting: self.waiting.len(),
            transactions: self.locks.transactions.len(),
            replicating: self.replicator.pending(),
            connections,
            nid: self.nid,
            pt: self.db.partition_table(),
            import: self.db.import_progress(),
        });
        self.metrics = Some(metrics);
    }

    /// `--disable-pack`: pack orders are not carried out, only reported as
    /// completed so that the master is not blocked (§11.3 step 12).
    pub fn set_disable_pack(&mut self, disabled: bool) {
        self.pack.disabled = disabled;
    }

    /// `--disable-drop-partitions`: the data of partitions no longer
    /// assigned to this node is kept.
    pub fn set_disable_drop_partitions(&mut self, disabled: bool) {
        self.dropping.disabled = disabled;
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
            RequestError::Importing { .. } => {
                self.error(
                    conn,
                    msg_id,
                    ErrorCode::BackendNotImplemented,
                    error.to_string(),
                );
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
            self.counters.refused.inc();
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
        self.close_idle_links();
        self.replication_retry()?;
        self.background_step()
    }

    /// Whether background work waits, so the shell gives the node a
    /// timeout as soon as no event waits.
    fn has_background_work(&self) -> bool {
        self.operational
            && (self.pack.job.is_some()
                || self.dropping.has_step()
                || self.feeding.has_step()
                || self.replicator.has_step()
                || self.has_import_step()
                || self.db.writeback_due())
    }

    /// One bounded step of each kind of background work: deleting dropped
    /// partitions, pushing to replicating storages, the next chunk of
    /// replication, pack, import.
    fn background_step(&mut self) -> Handled {
        if !self.operational {
            return Ok(());
        }
        self.drop_step()?;
        self.feeding_step()?;
        self.replication_step()?;
        self.pack_step()?;
        self.import_step()?;
        self.writeback_step()
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
        let Some(&peer) = self.peers.get(&conn) else {
            return Ok(());
        };
        match (peer, packet) {
            (_, Packet::Ping(_)) => {
                self.answer(conn, msg_id, p::Pong {});
                Ok(())
            }
            (Peer::Unidentified, Packet::RequestIdentification(request)) => {
                self.identify_peer(conn, msg_id, request);
                Ok(())
            }
            (Peer::Unidentified, Packet::AskMonitorInformation(_)) => {
                self.answer_monitor_information(conn, msg_id);
                Ok(())
            }
            (Peer::Client(client), packet) => self.on_client_packet(conn, client, msg_id, packet),
            (Peer::Storage(_), packet) => self.on_storage_packet(conn, msg_id, packet),
            (Peer::Unidentified, packet) => {
                let message = format!("unexpected packet {} before identification", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
                Ok(())
            }
        }
    }

    /// A request or notification of another storage.
    fn on_storage_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet) -> Handled {
        match packet {
            Packet::AskFetchTransactions(_) | Packet::AskFetchObjects(_) => {
                self.feed(conn, msg_id, packet)
            }
            Packet::AskCheckTIDRange(_) | Packet::AskCheckSerialRange(_) => {
                self.serve_check(conn, msg_id, packet)
            }
            // Sent with the msg_id of no fetch of ours waiting.
            Packet::AddTransaction(_) | Packet::AddObject(_) => {
                tracing::debug!(%conn, packet = packet.name(), "ignoring replication data");
                Ok(())
            }
            Packet::Error(error) => {
                tracing::warn!(%conn, "a storage says: {error}");
                Ok(())
            }
            packet => {
                let message = format!("unexpected packet {} from a storage", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
                Ok(())
            }
        }
    }

    /// The answer to a request of ours.
    fn on_answer(&mut self, conn: ConnId, token: Token, packet: Packet) -> Handled {
        let Some(why) = self.asked.answered(conn, token) else {
            return Ok(());
        };
        match why {
            Asked::StorageIdentification(nid) => {
                self.on_storage_identification(conn, nid, packet);
                Ok(())
            }
            Asked::Fetch => self.on_fetch_answer(conn, token, packet),
            Asked::Check => self.on_check_answer(token, packet),
            why => self.on_master_answer(conn, why, packet),
        }
    }

    /// A part of the answer to a request of ours (replication data).
    fn on_answer_part(&mut self, conn: ConnId, token: Token, packet: Packet) -> Handled {
        match self.asked.pending(conn, token) {
            Some(Asked::Fetch) => self.on_fetch_part(conn, token, packet),
            _ => {
                tracing::debug!(%conn, packet = packet.name(), "ignoring a part of no answer");
                Ok(())
            }
        }
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
        self.on_storage_closed(conn);
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
                if !self.on_storage_connected(conn, token) {
                    self.on_master_connected(conn, token);
                }
                Ok(())
            }
            Input::ConnectFailed { token } => {
                if !self.on_storage_connect_failed(token) {
                    self.on_connect_failed(token);
                }
                Ok(())
            }
            Input::Accepted { conn } => {
                self.peers.insert(conn, Peer::Unidentified);
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
            Input::AnswerPart {
                conn,
                token,
                packet,
            } => Self::settle_internal(self.on_answer_part(conn, token, packet)),
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
        self.observe();
        self.out.take()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        let reconnect = match self.link {
            Link::Scheduled => self.finder.deadline(),
            _ => None,
        };
        // Background work goes on as soon as no request waits.
        let background = self.has_background_work().then_some(self.now);
        let idle = self.links.idle_deadline();
        let retry = self.replicator.retry_at();
        let import = self
            .importing
            .retry_at()
            .filter(|_| self.operational && self.db.importing());
        [reconnect, self.commit_due, background, idle, retry, import]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
    }
}

/// SHA-1 of object data, as clients compute it.
pub(crate) fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}
