//! The storage node as a state machine over a [`Database`]: packets from the
//! master, clients and (later) other storages go in, packets to send come
//! out. No network I/O and no clock here; the shell runs it on a thread of
//! its own so database work never holds up the connections.
//!
//! Follows architecture.md §5 (recovery and verification, storage side),
//! §5.3 (start of operation), §6.4–§6.11 (stores, locks, vote, lock,
//! unlock, abort), §7.1 and §8 (reads) and protocol.md §9.3
//! (identification to a storage).

mod locks;
mod pack;

use std::collections::BTreeMap;

use bytes::Bytes;
use neo_cluster::{NodeTable, UnixTime};
use neo_proto::packets::{self as p, RelockConflict, StoredData};
use neo_proto::{
    Address, Checksum, ErrorCode, Map, NodeId, NodeState, NodeType, Oid, Packet, Tid, Value,
    INVALID_PARTITION,
};
use sha1::{Digest, Sha1};

use crate::backend::{Error, FatalError, ObjectRow, RequestError, TransactionMeta};
use crate::db::{Database, ObjectLookup, UndoLookup};
use locks::{LockManager, LockOutcome, Stored};
use pack::PackState;

/// Identifies a connection for the state machine.
pub type ConnId = u64;

/// What happened.
#[derive(Debug)]
pub enum Input {
    /// The shell connected to a master: identify.
    MasterConnected {
        /// The connection.
        conn: ConnId,
    },
    /// A client or storage connected to us.
    Accepted {
        /// The connection.
        conn: ConnId,
    },
    /// A request or notification.
    Packet {
        /// Where from.
        conn: ConnId,
        /// Its msg_id.
        msg_id: u32,
        /// The packet.
        packet: Packet,
    },
    /// The answer to one of our requests.
    Answer {
        /// Where from.
        conn: ConnId,
        /// The answer or an `Error`.
        packet: Packet,
    },
    /// A connection is gone.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// Time passes (deferred commit).
    Tick,
}

/// What to do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Answer a request.
    Answer {
        /// Where to.
        conn: ConnId,
        /// msg_id of the request.
        msg_id: u32,
        /// The answer.
        packet: Packet,
    },
    /// Send a notification.
    Notify {
        /// Where to.
        conn: ConnId,
        /// The packet.
        packet: Packet,
    },
    /// Send a request; the answer comes back as [`Input::Answer`].
    Request {
        /// Where to.
        conn: ConnId,
        /// The packet.
        packet: Packet,
    },
    /// Close a connection after sending what is queued.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Lost the master: connect again (after the usual delay).
    ConnectMaster,
    /// Stop the node: `Ok` when told to by the master, `Err` on a fatal
    /// database error.
    Exit(Result<(), String>),
}

/// What the storage node is configured with.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Cluster name.
    pub cluster: String,
    /// Where this storage listens, as published to the cluster.
    pub address: Address,
}

/// Largest oid list of a vote: NEO's MySQL backend stores it in a
/// MEDIUMBLOB, and every backend enforces the same limit.
const MAX_VOTED_OIDS: usize = (1 << 21) - 1;

/// How long an unlock may wait for its commit (§12.2).
const DEFERRED_COMMIT_SECONDS: f64 = 1.0;

/// A request that waits for a lock or an unlock.
#[derive(Debug)]
enum Waiting {
    Store(ConnId, u32, p::AskStoreObject),
    Check(ConnId, u32, p::AskCheckCurrentSerial),
    Relock(ConnId, u32, p::AskRelockObject),
    Load(ConnId, u32, p::AskObject),
    UndoSerials(ConnId, u32, p::AskObjectUndoSerial),
    /// A request of [`Storage::read`] (see [`Storage::read_waits`]).
    Read(ConnId, u32, Packet),
}

impl Waiting {
    /// Older transactions are served first.
    fn ttid(&self) -> Tid {
        match self {
            Waiting::Store(_, _, r) => r.ttid,
            Waiting::Check(_, _, r) => r.ttid,
            Waiting::Relock(_, _, r) => r.ttid,
            // After the stores its transaction sent before it (the sort is
            // stable): it must see them.
            Waiting::UndoSerials(_, _, r) => r.ttid,
            Waiting::Load(..) | Waiting::Read(..) => Tid::ZERO,
        }
    }
}

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
    /// The master connection, once connected.
    master: Option<ConnId>,
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
    /// When the deferred commit of unlocked transactions is due.
    commit_due: Option<UnixTime>,
    /// A vote or lock was written but not committed yet: nothing goes
    /// out before the commit (group commit, see [`Storage::flush`]).
    commit_owed: bool,
    /// Pack orders and the pack in progress (§11.3).
    pack: PackState,
    now: UnixTime,
    out: Vec<Output>,
}

/// The outcome of one handler: a request error is answered to the peer
/// whose request failed (see [`Storage::settle`]), a fatal error stops the
/// node.
type Handled = Result<(), Error>;

impl Storage {
    /// A storage node over an opened database. Refuses a database of
    /// another cluster.
    pub fn new(config: StorageConfig, mut db: Database) -> Result<Storage, String> {
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
            master: None,
            operational: false,
            nodes: NodeTable::new(),
            last_notification: 0.0,
            peers: BTreeMap::new(),
            early_identifications: Vec::new(),
            locks: LockManager::default(),
            waiting: Vec::new(),
            commit_due: None,
            commit_owed: false,
            pack: PackState::default(),
            now: 0.0,
            out: Vec::new(),
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

    /// Processes one input at time `now`; returns what to do, in order.
    /// The same as [`Storage::feed`] then [`Storage::flush`].
    pub fn handle(&mut self, input: Input, now: UnixTime) -> Vec<Output> {
        self.feed(input, now);
        self.flush()
    }

    /// Processes one input at time `now`, keeping what to do for
    /// [`Storage::flush`]. A shell feeds every input already waiting, then
    /// flushes once: the votes and locks of all of them become durable
    /// with a single commit (group commit) before any answer goes out.
    pub fn feed(&mut self, input: Input, now: UnixTime) {
        self.now = now;
        let result = match input {
            Input::MasterConnected { conn } => {
                self.identify_to_master(conn);
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
            Input::Answer { conn, packet } => Self::settle_internal(self.on_answer(conn, packet)),
            Input::Closed { conn } => Self::settle_internal(self.on_closed(conn)),
            Input::Tick => Self::settle_internal(self.on_tick()),
        };
        if let Err(error) = result {
            self.fatal(error);
        }
    }

    /// Commits what the inputs fed since the last flush promised to make
    /// durable (§12.2), then returns what to do, in order.
    pub fn flush(&mut self) -> Vec<Output> {
        if self.commit_owed {
            if let Err(error) = self.commit() {
                // Nothing that waited for this commit may go out.
                self.out.clear();
                self.fatal(error);
            }
        }
        std::mem::take(&mut self.out)
    }

    fn fatal(&mut self, error: impl std::fmt::Display) {
        tracing::error!("database failure: {error}");
        self.out.push(Output::Exit(Err(error.to_string())));
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

    fn error(&mut self, conn: ConnId, msg_id: u32, code: ErrorCode, message: impl Into<String>) {
        self.answer(conn, msg_id, p::Error::new(code, message));
    }

    /// Error, then close (PROTOCOL_ERROR and NOT_READY, §8).
    fn refuse(&mut self, conn: ConnId, msg_id: u32, code: ErrorCode, message: &str) {
        tracing::info!(conn, %code, message, "refusing");
        self.error(conn, msg_id, code, message);
        self.out.push(Output::Close { conn });
    }

    // ---- master ----

    fn identify_to_master(&mut self, conn: ConnId) {
        self.master = Some(conn);
        self.pack.reset();
        let extra = Map(vec![
            ("devpath".to_owned(), Value::Array(vec![])),
            ("new_nid".to_owned(), Value::Array(vec![])),
        ]);
        self.out.push(Output::Request {
            conn,
            packet: p::RequestIdentification {
                node_type: NodeType::Storage,
                nid: self.nid,
                address: Some(self.config.address.clone()),
                cluster: self.config.cluster.clone(),
                id_timestamp: None,
                extra,
            }
            .into(),
        });
    }

    fn on_answer(&mut self, conn: ConnId, packet: Packet) -> Handled {
        if Some(conn) != self.master {
            return Ok(());
        }
        match packet {
            Packet::AcceptIdentification(accept) => {
                let Some(nid) = accept
                    .your_nid
                    .filter(|_| accept.node_type == NodeType::Master)
                else {
                    self.out.push(Output::Close { conn });
                    return Ok(());
                };
                if self.nid != Some(nid) {
                    self.db.set_nid(nid)?;
                    self.db.commit()?;
                    self.nid = Some(nid);
                }
                tracing::info!(%nid, "identified to the primary master");
            }
            Packet::AnswerPackOrders(answer) => self.on_pack_orders(answer)?,
            Packet::Error(error) => {
                tracing::warn!("the master refused us: {error}");
                self.out.push(Output::Close { conn });
            }
            other => tracing::warn!("unexpected answer {} from the master", other.name()),
        }
        Ok(())
    }

    fn on_master_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet) -> Handled {
        match packet {
            Packet::NotifyNodeInformation(notification) => self.on_nodes(notification)?,
            Packet::NotifyClusterInformation(_) => {}
            Packet::NotifyPackSigned(signed) => self.on_pack_signed(signed)?,
            Packet::AskRecovery(_) => {
                let answer = p::AnswerRecovery {
                    ptid: self.db.ptid()?,
                    backup_tid: self.db.backup_tid()?,
                    truncate_tid: self.db.truncate_tid()?,
                };
                self.answer(conn, msg_id, answer);
            }
            Packet::AskPartitionTable(_) => {
                let answer = p::AnswerPartitionTable {
                    ptid: self.db.ptid()?,
                    num_replicas: self.db.num_replicas()?,
                    rows: self
                        .db
                        .partition_table()
                        .map(|pt| pt.to_rows())
                        .unwrap_or_default(),
                };
                self.answer(conn, msg_id, answer);
            }
            Packet::SendPartitionTable(table) => {
                if let Some(ptid) = table.ptid {
                    let cells: Vec<_> = table
                        .rows
                        .iter()
                        .enumerate()
                        .flat_map(|(partition, row)| {
                            row.iter()
                                .map(move |cell| (partition as u32, cell.nid, cell.state))
                        })
                        .collect();
                    self.db
                        .change_partition_table(ptid, table.num_replicas, &cells, true)?;
                }
            }
            Packet::NotifyPartitionChanges(changes) => {
                let current = self.db.ptid()?;
                if current.map(|ptid| ptid + 1) != Some(changes.ptid) {
                    tracing::warn!(
                        ?current,
                        got = changes.ptid,
                        "partition table change out of order"
                    );
                    self.refuse(conn, msg_id, ErrorCode::ProtocolError, "ptid out of order");
                    return Ok(());
                }
                let cells: Vec<_> = changes
                    .changes
                    .iter()
                    .map(|c| (c.partition, c.nid, c.state))
                    .collect();
                self.db.change_partition_table(
                    changes.ptid,
                    changes.num_replicas,
                    &cells,
                    false,
                )?;
                if self.operational {
                    // Cells that went away may raise the smallest pack id.
                    self.report_pack_completed()?;
                    self.maybe_pack()?;
                }
            }
            Packet::AskLockedTransactions(_) => {
                let ttids = Map(self.db.unfinished_transactions()?.into_iter().collect());
                self.answer(conn, msg_id, p::AnswerLockedTransactions { ttids });
            }
            Packet::AskFinalTID(request) => {
                let tid = self.final_tid(request.ttid)?;
                self.answer(conn, msg_id, p::AnswerFinalTID { tid });
            }
            Packet::ValidateTransaction(validate) => {
                self.db.lock_transaction(validate.ttid, validate.tid)?;
                self.db.unlock_transaction(validate.ttid, validate.tid)?;
                self.db.commit()?;
            }
            Packet::Truncate(truncate) => {
                self.db.set_truncate_tid(Some(truncate.tid))?;
                self.db.commit()?;
            }
            Packet::AskLastIDs(_) => {
                // A pending truncation is carried out before answering.
                self.db.truncate()?;
                if !self.pack.disabled {
                    self.report_pack_completed()?;
                }
                let last = self.db.last_ids()?;
                let answer = p::AnswerLastIDs {
                    last_tid: last.tid,
                    last_oid: last.oid,
                    first_tid: self.db.first_tid()?,
                };
                self.answer(conn, msg_id, answer);
            }
            Packet::AskPackOrders(request) => {
                let orders = self.db.pack_orders(request.min_id)?;
                self.answer(conn, msg_id, p::AnswerPackOrders { orders });
            }
            Packet::StartOperation(_) => {
                self.db.drop_unfinished_data()?;
                self.db.commit()?;
                self.locks.clear();
                self.waiting.clear();
                self.operational = true;
                tracing::info!("operational");
                self.notify(conn, p::NotifyReady {});
                self.maybe_pack()?;
            }
            Packet::StopOperation(_) => self.stop_operation(),
            Packet::AskLockInformation(request) => self.lock_transaction(conn, msg_id, request)?,
            Packet::NotifyUnlockInformation(unlock) => self.unlock_transaction(unlock.ttid)?,
            Packet::AbortTransaction(abort) => self.abort(abort.ttid)?,
            Packet::Ping(_) => self.answer(conn, msg_id, p::Pong {}),
            Packet::NotifyTransactionFinished(_)
            | Packet::NotifyRepair(_)
            | Packet::CheckPartition(_)
            | Packet::Replicate(_)
            | Packet::FlushLog(_) => {
                tracing::debug!("ignoring {} (not supported yet)", packet.name());
            }
            packet => {
                let message = format!("unexpected packet {} from the master", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
        Ok(())
    }

    fn on_nodes(&mut self, notification: p::NotifyNodeInformation) -> Handled {
        self.last_notification = notification.timestamp;
        for info in &notification.nodes {
            if info.nid.is_some() && info.nid == self.nid {
                match info.state {
                    NodeState::Down => {
                        tracing::info!("told to stop by the master");
                        self.db.commit()?;
                        self.out.push(Output::Exit(Ok(())));
                    }
                    NodeState::Unknown => {
                        tracing::warn!("dropped from the cluster: erasing the database");
                        self.db.erase()?;
                        self.out.push(Output::Exit(Ok(())));
                    }
                    _ => {}
                }
            }
            if info.node_type == NodeType::Client && info.state != NodeState::Running {
                if let Some(client) = info.nid {
                    self.client_gone(client)?;
                }
            }
            self.nodes.apply(info);
        }
        // Identifications that were too early may be decidable now.
        for (conn, msg_id, request) in std::mem::take(&mut self.early_identifications) {
            self.identify_peer(conn, msg_id, request);
        }
        Ok(())
    }

    /// The master reported a client gone: abort its transactions that are
    /// not locked, voted or not, and drop its connections (§1.3).
    fn client_gone(&mut self, client: NodeId) -> Handled {
        for ttid in self.locks.of_client(client) {
            self.abort(ttid)?;
        }
        let conns: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.nid == Some(client))
            .map(|(conn, _)| *conn)
            .collect();
        for conn in conns {
            self.out.push(Output::Close { conn });
        }
        Ok(())
    }

    fn stop_operation(&mut self) {
        self.operational = false;
        self.pack.stop();
        self.locks.clear();
        self.waiting.clear();
        let conns: Vec<ConnId> = self.peers.keys().copied().collect();
        for conn in conns {
            self.out.push(Output::Close { conn });
        }
    }

    fn final_tid(&mut self, ttid: Tid) -> Result<Option<Tid>, Error> {
        if let Some(tid) = self.locks.locked_tid(ttid) {
            return Ok(Some(tid));
        }
        match self.db.final_tid(ttid) {
            Err(Error::Request(RequestError::NonReadableCell { .. })) => Ok(None),
            other => other,
        }
    }

    // ---- commit, storage side ----

    fn lock_transaction(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::AskLockInformation,
    ) -> Handled {
        if !self.locks.set_locked(request.ttid, request.tid) {
            self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "unknown transaction",
            );
            return Ok(());
        }
        let has_metadata = self
            .locks
            .transactions
            .get(&request.ttid)
            .is_some_and(|t| t.has_metadata);
        if has_metadata {
            if request.pack_approved {
                // Approved in the same durable lock (§11.3 step 3).
                self.db.sign_pack_orders(&[request.ttid], &[])?;
            }
            // The commit decision becomes durable here (§12.2), before the
            // answer goes out.
            self.db.lock_transaction(request.ttid, request.tid)?;
            self.commit_owed = true;
        }
        self.answer(
            conn,
            msg_id,
            p::AnswerInformationLocked { ttid: request.ttid },
        );
        Ok(())
    }

    fn unlock_transaction(&mut self, ttid: Tid) -> Handled {
        let Some(tid) = self.locks.locked_tid(ttid) else {
            return Ok(());
        };
        self.db.unlock_transaction(ttid, tid)?;
        // Committed with the next vote or lock, or within a second.
        self.commit_due
            .get_or_insert(self.now + DEFERRED_COMMIT_SECONDS);
        self.locks.release(ttid);
        self.retry_waiting()
    }

    /// Aborts a transaction unless it is locked (then it completes).
    fn abort(&mut self, ttid: Tid) -> Handled {
        let Some(transaction) = self.locks.transactions.get(&ttid) else {
            return Ok(());
        };
        if transaction.tid.is_some() {
            return Ok(());
        }
        let Some(transaction) = self.locks.release(ttid) else {
            return Ok(());
        };
        if transaction.voted {
            self.db.abort_transaction(ttid)?;
            self.db.commit()?;
        } else {
            let held: Vec<_> = transaction
                .stored
                .values()
                .filter_map(|s| s.data_id)
                .collect();
            self.db.release_data(&held, true)?;
        }
        self.retry_waiting()
    }

    fn on_tick(&mut self) -> Handled {
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

    // ---- clients ----

    fn on_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet) -> Handled {
        if Some(conn) == self.master {
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
        if request.node_type != NodeType::Client {
            // Replication between storages comes with its own issue.
            let message = format!("{} nodes are not served yet", request.node_type);
            return self.refuse(conn, msg_id, ErrorCode::NotReady, &message);
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

    fn on_client_packet(
        &mut self,
        conn: ConnId,
        client: NodeId,
        msg_id: u32,
        packet: Packet,
    ) -> Handled {
        match packet {
            Packet::AskObject(request) => self.load(conn, msg_id, request),
            Packet::AskStoreObject(request) => {
                if request.compression > 1 {
                    self.refuse(
                        conn,
                        msg_id,
                        ErrorCode::ProtocolError,
                        "unknown compression",
                    );
                    return Ok(());
                }
                let no_data = request.data.is_empty() && request.checksum == Checksum::ZERO;
                if !no_data && checksum(&request.data) != request.checksum {
                    self.refuse(conn, msg_id, ErrorCode::ProtocolError, "checksum mismatch");
                    return Ok(());
                }
                self.locks.register(request.ttid, conn, Some(client));
                self.store(conn, msg_id, request)
            }
            Packet::AskCheckCurrentSerial(request) => {
                self.locks.register(request.ttid, conn, Some(client));
                self.check_current(conn, msg_id, request)
            }
            Packet::AskRelockObject(request) => self.relock(conn, msg_id, request),
            Packet::AskStoreTransaction(request) => {
                if request.oids.len() > MAX_VOTED_OIDS {
                    self.refuse(conn, msg_id, ErrorCode::ProtocolError, "too many oids");
                    return Ok(());
                }
                self.locks.register(request.ttid, conn, Some(client));
                let meta = TransactionMeta {
                    oids: request.oids,
                    user: request.user.to_vec(),
                    description: request.description.to_vec(),
                    extension: request.extension.to_vec(),
                    packed: false,
                    ttid: request.ttid,
                };
                if let Some(pack) = request.pack {
                    // Unsigned until the lock (§11.3 step 3); durable with the vote.
                    self.db.store_pack_order(&p::PackOrder {
                        id: request.ttid,
                        approved: None,
                        partial: pack.oids.is_some(),
                        oids: pack.oids,
                        pack_tid: pack.pack_tid,
                    })?;
                }
                self.vote(request.ttid, Some(&meta))?;
                self.answer(conn, msg_id, p::AnswerStoreTransaction {});
                Ok(())
            }
            Packet::AskVoteTransaction(request) => {
                self.vote(request.ttid, None)?;
                self.answer(conn, msg_id, p::AnswerVoteTransaction {});
                Ok(())
            }
            Packet::AbortTransaction(abort) => {
                // Only this client's own transactions.
                let own = self
                    .locks
                    .transactions
                    .get(&abort.ttid)
                    .is_some_and(|t| t.client_conn == conn);
                if own {
                    self.abort(abort.ttid)?;
                }
                Ok(())
            }
            Packet::AskFinalTID(request) => {
                let tid = self.final_tid(request.ttid)?;
                self.answer(conn, msg_id, p::AnswerFinalTID { tid });
                Ok(())
            }
            packet => self.read(conn, msg_id, packet),
        }
    }

    fn vote(&mut self, ttid: Tid, meta: Option<&TransactionMeta>) -> Handled {
        let rows: Vec<ObjectRow> = match self.locks.transactions.get(&ttid) {
            Some(transaction) => transaction
                .stored
                .iter()
                .filter(|(_, stored)| !stored.checked)
                .map(|(oid, stored)| ObjectRow {
                    oid: *oid,
                    data_id: stored.data_id,
                    data_serial: stored.data_serial,
                })
                .collect(),
            None => Vec::new(),
        };
        self.db.store_transaction(ttid, &rows, meta, true)?;
        // The vote is durable before it is answered (§12.2).
        self.commit_owed = true;
        if let Some(transaction) = self.locks.transactions.get_mut(&ttid) {
            transaction.voted = true;
            transaction.has_metadata |= meta.is_some();
        }
        // Transactions waiting for this one's locks may proceed or deadlock-check again.
        self.retry_waiting()
    }

    /// Takes the lock for a store or check; `None` when the request waits.
    fn try_lock(&mut self, ttid: Tid, serial: Tid, oid: Oid) -> Result<Option<LockOutcome>, Error> {
        let readable = self.db.is_oid_readable(oid);
        let mut last = Ok(None);
        let (outcome, deadlock) = {
            let db = &mut self.db;
            self.locks.lock(ttid, serial, oid, readable, || {
                last = db.last_object_tid(oid);
                last.as_ref().ok().copied().flatten()
            })
        };
        last?;
        if let Some(holder) = deadlock {
            if let Some(conn) = self.locks.transactions.get(&holder).map(|t| t.client_conn) {
                self.notify(conn, p::NotifyDeadlock { ttid: holder, oid });
            }
        }
        Ok((outcome != LockOutcome::Wait).then_some(outcome))
    }

    fn store(&mut self, conn: ConnId, msg_id: u32, request: p::AskStoreObject) -> Handled {
        let Some(outcome) = self.try_lock(request.ttid, request.serial, request.oid)? else {
            self.waiting.push(Waiting::Store(conn, msg_id, request));
            return Ok(());
        };
        let conflict = match outcome {
            LockOutcome::Conflict(serial) => {
                self.answer(
                    conn,
                    msg_id,
                    p::AnswerStoreObject {
                        conflict: Some(serial),
                    },
                );
                return Ok(());
            }
            LockOutcome::Locked => None,
            _ => Some(Tid::ZERO),
        };
        // A store again (after a conflict resolution or an undo) replaces
        // the previous one.
        let previous = self
            .locks
            .transactions
            .get_mut(&request.ttid)
            .and_then(|t| t.stored.remove(&request.oid));
        if let Some(data_id) = previous.and_then(|p| p.data_id) {
            self.db.release_data(&[data_id], true)?;
        }
        // An undo of packed data is answered UNDO_PACK_ERROR (settle).
        let data_id = self.db.store_data(
            request.oid,
            request.checksum,
            &request.data,
            request.compression,
            request.data_serial,
        )?;
        if let Some(transaction) = self.locks.transactions.get_mut(&request.ttid) {
            transaction.stored.insert(
                request.oid,
                Stored {
                    serial: request.serial,
                    data_id,
                    data_serial: request.data_serial,
                    checked: false,
                },
            );
        }
        self.answer(conn, msg_id, p::AnswerStoreObject { conflict });
        Ok(())
    }

    fn check_current(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::AskCheckCurrentSerial,
    ) -> Handled {
        let Some(outcome) = self.try_lock(request.ttid, request.serial, request.oid)? else {
            self.waiting.push(Waiting::Check(conn, msg_id, request));
            return Ok(());
        };
        let conflict = match outcome {
            LockOutcome::Conflict(serial) => Some(serial),
            LockOutcome::Locked => {
                if let Some(transaction) = self.locks.transactions.get_mut(&request.ttid) {
                    transaction.stored.insert(
                        request.oid,
                        Stored {
                            serial: request.serial,
                            data_id: None,
                            data_serial: None,
                            checked: true,
                        },
                    );
                }
                None
            }
            _ => Some(Tid::ZERO),
        };
        self.answer(conn, msg_id, p::AnswerCheckCurrentSerial { conflict });
        Ok(())
    }

    /// `AskRelockObject` (§6.5): give the lock up, let older transactions
    /// take it, then lock again.
    fn relock(&mut self, conn: ConnId, msg_id: u32, request: p::AskRelockObject) -> Handled {
        let stored = self
            .locks
            .transactions
            .get(&request.ttid)
            .and_then(|t| t.stored.get(&request.oid))
            .cloned();
        let Some(stored) = stored else {
            self.answer(conn, msg_id, p::AnswerRelockObject { conflict: None });
            return Ok(());
        };
        self.locks.unlock_oid(request.ttid, request.oid);
        self.retry_waiting()?;
        self.finish_relock(conn, msg_id, request, stored)
    }

    fn finish_relock(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::AskRelockObject,
        stored: Stored,
    ) -> Handled {
        let Some(outcome) = self.try_lock(request.ttid, stored.serial, request.oid)? else {
            self.waiting.push(Waiting::Relock(conn, msg_id, request));
            return Ok(());
        };
        let conflict = match outcome {
            LockOutcome::Conflict(conflict_tid) => {
                // Give the data back and forget it: the client may not have it.
                let data = match stored.data_id {
                    Some(data_id) => {
                        self.db
                            .load_data(data_id)?
                            .map(|(compression, checksum, data)| StoredData {
                                compression,
                                checksum,
                                data: Bytes::from(data),
                            })
                    }
                    None => None,
                };
                if let Some(transaction) = self.locks.transactions.get_mut(&request.ttid) {
                    transaction.stored.remove(&request.oid);
                }
                if let Some(data_id) = stored.data_id {
                    self.db.release_data(&[data_id], true)?;
                }
                Some(RelockConflict {
                    serial: stored.serial,
                    conflict_tid,
                    data,
                })
            }
            _ => None,
        };
        self.answer(conn, msg_id, p::AnswerRelockObject { conflict });
        Ok(())
    }

    /// Runs again the requests that wait for locks, oldest transaction first.
    fn retry_waiting(&mut self) -> Handled {
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.sort_by_key(Waiting::ttid);
        for request in waiting {
            // Each request is settled with its own sender.
            let (conn, msg_id, result) = match request {
                Waiting::Store(conn, msg_id, request) => {
                    (conn, msg_id, self.store(conn, msg_id, request))
                }
                Waiting::Check(conn, msg_id, request) => {
                    (conn, msg_id, self.check_current(conn, msg_id, request))
                }
                Waiting::Relock(conn, msg_id, request) => {
                    let stored = self
                        .locks
                        .transactions
                        .get(&request.ttid)
                        .and_then(|t| t.stored.get(&request.oid))
                        .cloned();
                    let result = match stored {
                        Some(stored) => self.finish_relock(conn, msg_id, request, stored),
                        None => {
                            self.answer(conn, msg_id, p::AnswerRelockObject { conflict: None });
                            Ok(())
                        }
                    };
                    (conn, msg_id, result)
                }
                Waiting::Load(conn, msg_id, request) => {
                    (conn, msg_id, self.load(conn, msg_id, request))
                }
                Waiting::UndoSerials(conn, msg_id, request) => {
                    (conn, msg_id, self.undo_serials(conn, msg_id, request))
                }
                Waiting::Read(conn, msg_id, packet) => {
                    (conn, msg_id, self.read(conn, msg_id, packet))
                }
            };
            self.settle(conn, msg_id, result)?;
        }
        Ok(())
    }

    // ---- reads ----

    fn load(&mut self, conn: ConnId, msg_id: u32, request: p::AskObject) -> Handled {
        if self.locks.is_read_locked(request.oid) {
            self.waiting.push(Waiting::Load(conn, msg_id, request));
            return Ok(());
        }
        let lookup = self
            .db
            .get_object(request.oid, request.at, request.before)?;
        match lookup {
            ObjectLookup::Found(record) => self.answer(
                conn,
                msg_id,
                p::AnswerObject {
                    oid: request.oid,
                    serial: record.serial,
                    next_serial: record.next_serial,
                    compression: record.compression,
                    checksum: record.checksum,
                    data: Bytes::from(record.data),
                    data_serial: record.data_serial,
                },
            ),
            ObjectLookup::NoMatchingRevision => self.error(
                conn,
                msg_id,
                ErrorCode::OidNotFound,
                request.oid.to_string(),
            ),
            ObjectLookup::OidDoesNotExist => self.error(
                conn,
                msg_id,
                ErrorCode::OidDoesNotExist,
                request.oid.to_string(),
            ),
        }
        Ok(())
    }

    /// Whether a read would miss a transaction that is locked but not
    /// unlocked yet, whose commit may already have been reported to the
    /// asking client (§7.1): such a read waits for the unlock.
    fn read_waits(&self, packet: &Packet) -> bool {
        match packet {
            Packet::AskObjectHistory(request) => self.locks.is_read_locked(request.oid),
            Packet::AskTransactionInformation(request) => {
                self.locks.is_unlocking_in(request.tid, request.tid)
            }
            Packet::AskTIDs(_) => self.locks.is_unlocking_in(Tid::ZERO, Tid::MAX),
            Packet::AskTIDsFrom(request) => {
                self.locks.is_unlocking_in(request.min_tid, request.max_tid)
            }
            _ => false,
        }
    }

    /// History, transaction metadata, TID and OID listings, undo lookups.
    fn read(&mut self, conn: ConnId, msg_id: u32, packet: Packet) -> Handled {
        if self.read_waits(&packet) {
            self.waiting.push(Waiting::Read(conn, msg_id, packet));
            return Ok(());
        }
        match packet {
            Packet::AskObjectHistory(request) => {
                let length = request.last.saturating_sub(request.first);
                let history = self.db.object_history(request.oid, request.first, length)?;
                if history.is_empty() {
                    self.error(
                        conn,
                        msg_id,
                        ErrorCode::OidNotFound,
                        request.oid.to_string(),
                    );
                } else {
                    self.answer(
                        conn,
                        msg_id,
                        p::AnswerObjectHistory {
                            oid: request.oid,
                            history,
                        },
                    );
                }
            }
            Packet::AskTransactionInformation(request) => {
                match self.db.get_transaction(request.tid, false)? {
                    Some(meta) => self.answer(
                        conn,
                        msg_id,
                        p::AnswerTransactionInformation {
                            tid: request.tid,
                            user: Bytes::from(meta.user),
                            description: Bytes::from(meta.description),
                            extension: Bytes::from(meta.extension),
                            packed: meta.packed,
                            oids: meta.oids,
                        },
                    ),
                    None => {
                        let message = format!("{} does not exist", request.tid);
                        self.error(conn, msg_id, ErrorCode::TidNotFound, message);
                    }
                }
            }
            Packet::AskTIDs(request) => {
                if request.first >= request.last {
                    self.refuse(conn, msg_id, ErrorCode::ProtocolError, "invalid TID range");
                    return Ok(());
                }
                let partitions: Vec<u32> = if request.partition == INVALID_PARTITION {
                    self.db.readable_partitions().into_iter().collect()
                } else {
                    vec![request.partition]
                };
                let tids =
                    self.db
                        .tid_list(request.first, request.last - request.first, &partitions)?;
                self.answer(conn, msg_id, p::AnswerTIDs { tids });
            }
            Packet::AskTIDsFrom(request) => {
                if !self.db.is_readable(request.partition) {
                    self.error(conn, msg_id, ErrorCode::NonReadableCell, "");
                    return Ok(());
                }
                let tids = self.db.replication_tid_list(
                    request.min_tid,
                    request.max_tid,
                    request.length.into(),
                    request.partition,
                )?;
                self.answer(conn, msg_id, p::AnswerTIDsFrom { tids });
            }
            Packet::AskOIDsFrom(request) => {
                let (oids, next_min_oid) = self.db.oids_from(
                    request.partition,
                    request.length.into(),
                    request.min_oid,
                    request.tid,
                )?;
                self.answer(conn, msg_id, p::AnswerOIDsFrom { next_min_oid, oids });
            }
            Packet::AskObjectUndoSerial(request) => self.undo_serials(conn, msg_id, request)?,
            packet => {
                let message = format!("unexpected packet {} from a client", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
        Ok(())
    }

    fn undo_serials(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::AskObjectUndoSerial,
    ) -> Handled {
        // Like loads, wait until a transaction being committed on these
        // oids is unlocked: its commit may already have been reported to
        // the client that is undoing. Wait also for the undoing
        // transaction's own stores of these oids that arrived before
        // (undoing several transactions at once builds on them).
        let own_store_waits = self.waiting.iter().any(|waiting| {
            matches!(waiting, Waiting::Store(_, _, store)
                if store.ttid == request.ttid && request.oids.contains(&store.oid))
        });
        if own_store_waits
            || request
                .oids
                .iter()
                .any(|oid| self.locks.is_read_locked(*oid))
        {
            self.waiting
                .push(Waiting::UndoSerials(conn, msg_id, request));
            return Ok(());
        }
        let mut serials = Vec::new();
        for oid in request.oids {
            // What the undoing transaction itself already stored wins.
            let current = self
                .locks
                .transactions
                .get(&request.ttid)
                .and_then(|t| t.stored.get(&oid))
                .map(|stored| stored.data_serial.unwrap_or(request.ttid));
            let lookup = self
                .db
                .find_undo_tid(oid, request.ltid, request.undone_tid, current)?;
            match lookup {
                UndoLookup::Found(serial) => serials.push((oid, serial)),
                UndoLookup::NoRecord => {}
                UndoLookup::NotVisible => {
                    self.error(
                        conn,
                        msg_id,
                        ErrorCode::OidNotFound,
                        "non-undoable transaction",
                    );
                    return Ok(());
                }
            }
        }
        self.answer(
            conn,
            msg_id,
            p::AnswerObjectUndoSerial {
                serials: Map(serials),
            },
        );
        Ok(())
    }

    // ---- connections ----

    fn on_closed(&mut self, conn: ConnId) -> Handled {
        if Some(conn) == self.master {
            tracing::warn!("lost the master");
            self.master = None;
            self.stop_operation();
            self.early_identifications.clear();
            self.out.push(Output::ConnectMaster);
            return Ok(());
        }
        self.peers.remove(&conn);
        self.early_identifications.retain(|(c, _, _)| *c != conn);
        self.waiting.retain(|waiting| match waiting {
            Waiting::Store(c, ..)
            | Waiting::Check(c, ..)
            | Waiting::Relock(c, ..)
            | Waiting::Load(c, ..)
            | Waiting::UndoSerials(c, ..)
            | Waiting::Read(c, ..) => *c != conn,
        });
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

/// SHA-1 of object data, as clients compute it.
fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}
