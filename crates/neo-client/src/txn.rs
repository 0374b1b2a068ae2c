//! Two-phase commit, client side (architecture.md §6).
//!
//! Stores are pipelined: `store` sends `AskStoreObject` to every cell of the
//! oid's partition and returns; the answers come back through the storage
//! event dispatcher into [`TxnShared`], where conflicts are collected for
//! the caller to resolve at its next call. `vote` waits for every answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use neo_net::{AskError, Connection, ConnectionId};
use neo_proto::packets::{self, PackRequest, UndoSerial};
use neo_proto::{ErrorCode, NodeId, Oid, Packet, Partition, Tid};
use tokio::sync::Notify;

use crate::data;
use crate::error::{ClientError, Conflict};
use crate::master::{Session, Shared, FINISH_RECOVERY};
use crate::storage::{ask_readable, Next, ReadKey, Route, RouteKind};
use crate::util::lock;

/// Transaction metadata sent at vote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TxnMeta {
    /// ZODB `user` (bytes).
    pub user: Bytes,
    /// ZODB `description`.
    pub description: Bytes,
    /// Pickled extension; empty when there is none.
    pub extension: Bytes,
    /// A pack order carried by this transaction.
    pub pack: Option<PackRequest>,
}

/// How a storage node takes part in a transaction.
#[derive(Clone)]
enum NodeUse {
    Live(Connection),
    /// Unreachable or lost during the transaction: never used again by it
    /// (the storage dropped what it had of the transaction).
    Failed,
}

/// One oid stored or checked by the transaction.
struct ObjectState {
    /// Incremented by each store of the oid; older answers are stale.
    generation: u32,
    serial: Tid,
    /// Uncompressed data, for a conflict report, until every answer is in.
    data: Option<Bytes>,
    checked: bool,
    deleted: bool,
    /// Answers awaited for the current generation.
    waiting: usize,
    /// Some node stored (or locklessly accepted) the current generation.
    stored: bool,
    conflict: Option<Tid>,
    /// A conflict was reported and the oid was not stored again.
    unresolved: bool,
    /// Encoded size counted in `in_flight_bytes`.
    bytes: usize,
}

#[derive(Default)]
struct TxnState {
    objects: HashMap<Oid, ObjectState>,
    /// Oids in first-store order (the vote's oid list).
    order: Vec<Oid>,
    nodes: BTreeMap<NodeId, NodeUse>,
    /// Nodes that stored without locking, by partition.
    lockless: BTreeMap<Partition, BTreeSet<NodeId>>,
    conflicts: Vec<Conflict>,
    /// Pipelined requests not answered yet.
    outstanding: usize,
    in_flight_bytes: usize,
    fatal: Option<String>,
    /// Voting started: `NotifyDeadlock` is ignored from now on.
    voting: bool,
}

impl TxnState {
    /// Once every answer of an oid's current store is in: report its
    /// conflict, or check it is stored somewhere.
    fn settle(&mut self, oid: Oid) {
        let Some(object) = self.objects.get_mut(&oid) else {
            return;
        };
        if object.waiting > 0 {
            return;
        }
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(object.bytes);
        object.bytes = 0;
        if let Some(conflict_serial) = object.conflict.take() {
            self.conflicts.push(Conflict {
                oid,
                serial: object.serial,
                conflict_serial,
                data: object.data.clone(),
                checked: object.checked,
            });
            object.unresolved = true;
        } else if !object.stored {
            self.fatal
                .get_or_insert_with(|| format!("oid {oid} could not be sent to any storage"));
        } else {
            object.data = None;
        }
    }

    fn failed(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, usage)| matches!(usage, NodeUse::Failed))
            .map(|(nid, _)| *nid)
            .collect()
    }
}

/// The part of a transaction the storage dispatcher updates.
pub(crate) struct TxnShared {
    pub ttid: Tid,
    partitions: u32,
    state: Mutex<TxnState>,
    changed: Notify,
    /// Runs with the final TID when `AnswerTransactionFinished` is processed.
    hook: Arc<Mutex<Option<crate::master::FinishHook>>>,
}

impl TxnShared {
    fn partition_of(&self, oid: Oid) -> Partition {
        (oid.0 % u64::from(self.partitions.max(1))) as Partition
    }

    /// An answer (or `None`: the connection closed first) to a pipelined
    /// request of this transaction.
    pub fn on_answer(&self, nid: NodeId, kind: RouteKind, answer: Option<Packet>) {
        let mut state = lock(&self.state);
        state.outstanding = state.outstanding.saturating_sub(1);
        match kind {
            RouteKind::Store { oid, generation } | RouteKind::Check { oid, generation } => {
                self.on_store_answer(&mut state, nid, oid, generation, answer)
            }
            RouteKind::Relock { oid, generation } => {
                self.on_relock_answer(&mut state, nid, oid, generation, answer)
            }
        }
        drop(state);
        self.changed.notify_one();
    }

    fn on_store_answer(
        &self,
        state: &mut TxnState,
        nid: NodeId,
        oid: Oid,
        generation: u32,
        answer: Option<Packet>,
    ) {
        let partition = self.partition_of(oid);
        let TxnState {
            objects,
            nodes,
            lockless,
            fatal,
            ..
        } = state;
        let Some(object) = objects.get_mut(&oid) else {
            return;
        };
        if object.generation != generation {
            // Answer to a store superseded by a newer one (after a conflict).
            return;
        }
        object.waiting = object.waiting.saturating_sub(1);
        let conflict = match answer {
            None => {
                nodes.insert(nid, NodeUse::Failed);
                None
            }
            Some(Packet::AnswerStoreObject(answer)) => Some(answer.conflict),
            Some(Packet::AnswerCheckCurrentSerial(answer)) => Some(answer.conflict),
            Some(Packet::Error(error)) => {
                fatal.get_or_insert_with(|| format!("storage {nid} refused oid {oid}: {error}"));
                None
            }
            Some(other) => {
                fatal.get_or_insert_with(|| {
                    format!("storage {nid} answered {} for oid {oid}", other.name())
                });
                None
            }
        };
        match conflict {
            Some(None) => object.stored = true,
            Some(Some(Tid::ZERO)) => {
                object.stored = true;
                lockless.entry(partition).or_default().insert(nid);
            }
            Some(Some(serial)) => {
                object.conflict = Some(object.conflict.map_or(serial, |c| c.max(serial)));
            }
            None => {}
        }
        state.settle(oid);
    }

    fn on_relock_answer(
        &self,
        state: &mut TxnState,
        nid: NodeId,
        oid: Oid,
        generation: u32,
        answer: Option<Packet>,
    ) {
        match answer {
            Some(Packet::AnswerRelockObject(packets::AnswerRelockObject { conflict: None })) => {}
            Some(Packet::AnswerRelockObject(packets::AnswerRelockObject {
                conflict: Some(conflict),
            })) => {
                let Some(object) = state.objects.get_mut(&oid) else {
                    return;
                };
                if object.generation != generation {
                    return;
                }
                // The storage gave back and forgot our data: store again.
                let data = match conflict.data {
                    None => None,
                    Some(stored) => match data::decode(
                        Some(stored.compression),
                        &stored.checksum,
                        &stored.data,
                        usize::MAX,
                    ) {
                        Ok(data) => data,
                        Err(error) => {
                            state.fatal.get_or_insert_with(|| {
                                format!("storage {nid}: relocked data of oid {oid}: {error}")
                            });
                            return;
                        }
                    },
                };
                object.unresolved = true;
                let checked = object.checked;
                state.conflicts.push(Conflict {
                    oid,
                    serial: conflict.serial,
                    conflict_serial: conflict.conflict_tid,
                    data,
                    checked,
                });
            }
            None => {
                state.nodes.insert(nid, NodeUse::Failed);
            }
            Some(other) => {
                state.fatal.get_or_insert_with(|| {
                    format!("storage {nid} answered {other:?} to relocking oid {oid}")
                });
            }
        }
    }
}

/// `NotifyDeadlock(ttid, oid)` from a storage (§6.5): unless voting, ask it
/// to relock the oid.
pub(crate) fn on_deadlock(shared: &Arc<Shared>, connection_id: ConnectionId, ttid: Tid, oid: Oid) {
    let txn = lock(&shared.transactions)
        .get(&ttid)
        .and_then(Weak::upgrade);
    let Some(txn) = txn else {
        return;
    };
    let target = {
        let mut state = lock(&txn.state);
        if state.voting {
            return;
        }
        let Some(generation) = state.objects.get(&oid).map(|o| o.generation) else {
            return;
        };
        let node = state.nodes.iter().find_map(|(nid, usage)| match usage {
            NodeUse::Live(connection) if connection.id() == connection_id => {
                Some((*nid, connection.clone()))
            }
            _ => None,
        });
        if node.is_some() {
            state.outstanding += 1;
        }
        node.map(|(nid, connection)| (nid, connection, generation))
    };
    let Some((nid, connection, generation)) = target else {
        return;
    };
    tracing::debug!(%ttid, %oid, %nid, "deadlock avoidance: relocking");
    let shared = shared.clone();
    shared.runtime.clone().spawn(async move {
        let kind = RouteKind::Relock { oid, generation };
        match connection
            .send_request(packets::AskRelockObject { ttid, oid })
            .await
        {
            Ok(msg_id) => shared.route(
                connection.id(),
                msg_id,
                Route {
                    txn: Arc::downgrade(&txn),
                    nid,
                    kind,
                },
            ),
            Err(_) => txn.on_answer(nid, kind, None),
        }
    });
}

/// A storage connection closed: the transactions that used it lost what
/// they had stored there.
pub(crate) fn on_storage_lost(shared: &Shared, connection_id: ConnectionId) {
    let transactions: Vec<Arc<TxnShared>> = {
        let mut registry = lock(&shared.transactions);
        registry.retain(|_, txn| txn.strong_count() > 0);
        registry.values().filter_map(Weak::upgrade).collect()
    };
    for txn in transactions {
        let mut state = lock(&txn.state);
        for usage in state.nodes.values_mut() {
            if matches!(usage, NodeUse::Live(connection) if connection.id() == connection_id) {
                *usage = NodeUse::Failed;
            }
        }
        drop(state);
        txn.changed.notify_one();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    Voted,
    /// Finished, aborted, or its outcome handed to the caller: nothing
    /// more to send.
    Done,
}

/// A transaction between `tpc_begin` and `tpc_finish`/`tpc_abort`.
/// Dropping it unfinished aborts it (in the background).
pub struct Transaction {
    shared: Arc<Shared>,
    session: Arc<Session>,
    txn: Arc<TxnShared>,
    phase: Phase,
    pack: Option<PackRequest>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("ttid", &self.txn.ttid)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Transaction {
    pub(crate) fn new(shared: Arc<Shared>, session: Arc<Session>, ttid: Tid) -> Transaction {
        let partitions = session.partitions().unwrap_or(1);
        let txn = Arc::new(TxnShared {
            ttid,
            partitions,
            state: Mutex::new(TxnState::default()),
            changed: Notify::new(),
            hook: Arc::new(Mutex::new(None)),
        });
        lock(&shared.transactions).insert(ttid, Arc::downgrade(&txn));
        Transaction {
            shared,
            session,
            txn,
            phase: Phase::Open,
            pack: None,
        }
    }

    /// The TTID given by the master at `tpc_begin`.
    pub fn ttid(&self) -> Tid {
        self.txn.ttid
    }

    fn check_open(&self) -> Result<(), ClientError> {
        if self.phase != Phase::Open {
            return Err(ClientError::InvalidUse(format!(
                "transaction {} is not open for stores",
                self.txn.ttid
            )));
        }
        if self.session.is_closed() {
            // §2.5: transactions not yet in tpc_finish fail with the master.
            return Err(self.failed("connection to the primary master lost since tpc_begin"));
        }
        self.check_fatal()
    }

    fn check_fatal(&self) -> Result<(), ClientError> {
        if let Some(reason) = &lock(&self.txn.state).fatal {
            return Err(self.failed(reason.clone()));
        }
        Ok(())
    }

    fn failed(&self, reason: impl Into<String>) -> ClientError {
        ClientError::TransactionFailed {
            ttid: self.txn.ttid,
            reason: reason.into(),
        }
    }

    /// Stores a new revision of `oid` based on revision `serial`
    /// (`Tid::ZERO` for a new object). Returns without waiting for the
    /// storages; the conflicts known so far are returned, to be resolved
    /// and stored again.
    pub async fn store(
        &mut self,
        oid: Oid,
        serial: Tid,
        data: Bytes,
    ) -> Result<Vec<Conflict>, ClientError> {
        self.store_record(oid, serial, Some(data), None).await
    }

    /// Deletes `oid` (a revision without data).
    pub async fn delete(&mut self, oid: Oid, serial: Tid) -> Result<Vec<Conflict>, ClientError> {
        self.store_record(oid, serial, None, None).await
    }

    /// The general store: `data = None` is "no data" (deletion, undone
    /// creation); `data_serial` is the back-pointer of an undo.
    pub async fn store_record(
        &mut self,
        oid: Oid,
        serial: Tid,
        data: Option<Bytes>,
        data_serial: Option<Tid>,
    ) -> Result<Vec<Conflict>, ClientError> {
        self.check_open()?;
        let max = self.shared.config.max_object_size;
        if data.as_ref().is_some_and(|data| data.len() > max) {
            return Err(ClientError::BadData {
                oid,
                reason: format!("object larger than {max} bytes"),
            });
        }
        let encoded = match &data {
            Some(data) => data::encode(data, self.shared.config.compress),
            None => data::no_data(),
        };
        let bytes = encoded.data.len();
        let packet = packets::AskStoreObject {
            oid,
            serial,
            compression: encoded.compression,
            checksum: encoded.checksum,
            data: encoded.data,
            data_serial,
            ttid: self.txn.ttid,
        };
        let generation = {
            let mut state = lock(&self.txn.state);
            let state = &mut *state;
            let object = match state.objects.get_mut(&oid) {
                Some(object) => object,
                None => {
                    state.order.push(oid);
                    state.objects.entry(oid).or_insert(ObjectState {
                        generation: 0,
                        serial,
                        data: None,
                        checked: false,
                        deleted: false,
                        waiting: 0,
                        stored: false,
                        conflict: None,
                        unresolved: false,
                        bytes: 0,
                    })
                }
            };
            if object.checked {
                return Err(ClientError::InvalidUse(format!(
                    "oid {oid} was checked (readCurrent) in this transaction, it cannot be stored"
                )));
            }
            state.in_flight_bytes = state.in_flight_bytes.saturating_sub(object.bytes);
            object.generation = object.generation.wrapping_add(1);
            object.serial = serial;
            object.data = data;
            object.deleted = object.data.is_none();
            // One more for the sending below, so that answers arriving
            // while we still send cannot settle the oid early.
            object.waiting = 1;
            object.stored = false;
            object.conflict = None;
            object.unresolved = false;
            object.bytes = bytes;
            state.in_flight_bytes += bytes;
            object.generation
        };
        let kind = RouteKind::Store { oid, generation };
        self.send_to_cells(oid, packet.into(), kind).await;
        self.wait_in_flight().await?;
        Ok(self.take_conflicts())
    }

    /// readCurrent: fails the commit if `oid` is no longer at `serial`
    /// (§6.6). A conflict on it is reported with `checked = true`.
    pub async fn check_current_serial(
        &mut self,
        oid: Oid,
        serial: Tid,
    ) -> Result<Vec<Conflict>, ClientError> {
        self.check_open()?;
        let generation = {
            let mut state = lock(&self.txn.state);
            if state.objects.contains_key(&oid) {
                return Err(ClientError::InvalidUse(format!(
                    "oid {oid} already stored or checked in this transaction"
                )));
            }
            state.order.push(oid);
            state.objects.insert(
                oid,
                ObjectState {
                    generation: 1,
                    serial,
                    data: None,
                    checked: true,
                    deleted: false,
                    waiting: 1,
                    stored: false,
                    conflict: None,
                    unresolved: false,
                    bytes: 0,
                },
            );
            1
        };
        let packet = packets::AskCheckCurrentSerial {
            ttid: self.txn.ttid,
            oid,
            serial,
        };
        let kind = RouteKind::Check { oid, generation };
        self.send_to_cells(oid, packet.into(), kind).await;
        self.check_fatal()?;
        Ok(self.take_conflicts())
    }

    /// Sends a pipelined request to every cell of `partition(oid)`, then
    /// releases the extra `waiting` count taken by the caller.
    async fn send_to_cells(&mut self, oid: Oid, packet: Packet, kind: RouteKind) {
        let cells: Vec<NodeId> = {
            let view = lock(&self.session.view);
            match &view.pt {
                Some(pt) => pt
                    .cells(pt.partition_of_oid(oid))
                    .iter()
                    .map(|cell| cell.nid)
                    .collect(),
                None => Vec::new(),
            }
        };
        for nid in cells {
            let Some(connection) = self.node(nid).await else {
                continue;
            };
            match connection.send_request(packet.clone()).await {
                Ok(msg_id) => {
                    {
                        let mut state = lock(&self.txn.state);
                        state.outstanding += 1;
                        if let Some(object) = state.objects.get_mut(&oid) {
                            object.waiting += 1;
                        }
                    }
                    let route = Route {
                        txn: Arc::downgrade(&self.txn),
                        nid,
                        kind,
                    };
                    self.shared.route(connection.id(), msg_id, route);
                }
                Err(error) => {
                    tracing::info!(%nid, "store failed: {error}");
                    lock(&self.txn.state).nodes.insert(nid, NodeUse::Failed);
                }
            }
        }
        let mut state = lock(&self.txn.state);
        if let Some(object) = state.objects.get_mut(&oid) {
            object.waiting = object.waiting.saturating_sub(1);
        }
        state.settle(oid);
        drop(state);
        self.txn.changed.notify_one();
    }

    /// The connection this transaction uses to `nid`, connecting the first
    /// time; `None` if the node failed in this transaction.
    async fn node(&mut self, nid: NodeId) -> Option<Connection> {
        let known = lock(&self.txn.state).nodes.get(&nid).cloned();
        match known {
            Some(NodeUse::Failed) => None,
            Some(NodeUse::Live(connection)) if !connection.is_closed() => Some(connection),
            Some(NodeUse::Live(_)) => {
                lock(&self.txn.state).nodes.insert(nid, NodeUse::Failed);
                None
            }
            None => match self.session.storage(&self.shared, nid).await {
                Ok(connection) => {
                    lock(&self.txn.state)
                        .nodes
                        .insert(nid, NodeUse::Live(connection.clone()));
                    Some(connection)
                }
                Err(error) => {
                    tracing::info!(%nid, "storage unavailable for transaction: {error}");
                    lock(&self.txn.state).nodes.insert(nid, NodeUse::Failed);
                    None
                }
            },
        }
    }

    /// Waits while more than the configured bytes of stores are unanswered.
    async fn wait_in_flight(&self) -> Result<(), ClientError> {
        let limit = self.shared.config.max_store_bytes_in_flight;
        loop {
            let notified = self.txn.changed.notified();
            {
                let state = lock(&self.txn.state);
                if let Some(reason) = &state.fatal {
                    return Err(self.failed(reason.clone()));
                }
                if state.in_flight_bytes <= limit {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Conflicts reported since the last call, without waiting.
    pub fn take_conflicts(&mut self) -> Vec<Conflict> {
        std::mem::take(&mut lock(&self.txn.state).conflicts)
    }

    /// Waits for the answer to every store and check; returns the conflicts
    /// not yet reported.
    pub async fn wait_stores(&mut self) -> Result<Vec<Conflict>, ClientError> {
        loop {
            let notified = self.txn.changed.notified();
            {
                let state = lock(&self.txn.state);
                if let Some(reason) = &state.fatal {
                    return Err(self.failed(reason.clone()));
                }
                if state.outstanding == 0 {
                    break;
                }
            }
            notified.await;
        }
        Ok(self.take_conflicts())
    }

    /// `tpc_vote` (§6.8). Conflicts still to resolve are returned as
    /// [`ClientError::Conflicts`]: store the resolved data, vote again.
    pub async fn vote(&mut self, meta: &TxnMeta) -> Result<(), ClientError> {
        self.check_open()?;
        let conflicts = self.wait_stores().await?;
        if !conflicts.is_empty() {
            return Err(ClientError::Conflicts(conflicts));
        }
        let (oids, involved) = {
            let mut state = lock(&self.txn.state);
            if let Some((oid, _)) = state.objects.iter().find(|(_, o)| o.unresolved) {
                return Err(ClientError::InvalidUse(format!(
                    "conflict on oid {oid} reported but not resolved by a new store"
                )));
            }
            state.voting = true;
            let involved: Vec<(NodeId, Connection)> = state
                .nodes
                .iter()
                .filter_map(|(nid, usage)| match usage {
                    NodeUse::Live(connection) => Some((*nid, connection.clone())),
                    NodeUse::Failed => None,
                })
                .collect();
            (state.order.clone(), involved)
        };
        let ttid = self.txn.ttid;
        let metadata_cells: Vec<NodeId> = {
            let view = lock(&self.session.view);
            view.pt
                .as_ref()
                .map(|pt| {
                    pt.cells(pt.partition_of_tid(ttid))
                        .iter()
                        .map(|c| c.nid)
                        .collect()
                })
                .unwrap_or_default()
        };
        let store_transaction = packets::AskStoreTransaction {
            ttid,
            user: meta.user.clone(),
            description: meta.description.clone(),
            extension: meta.extension.clone(),
            oids,
            pack: meta.pack.clone(),
        };
        let mut votes = tokio::task::JoinSet::new();
        let mut metadata_nodes = BTreeSet::new();
        for nid in metadata_cells {
            if let Some(connection) = self.node(nid).await {
                metadata_nodes.insert(nid);
                let request = store_transaction.clone();
                votes.spawn(async move { (nid, true, connection.ask(request).await.map(drop)) });
            }
        }
        if metadata_nodes.is_empty() {
            return Err(self.failed("no storage available for the transaction metadata"));
        }
        for (nid, connection) in involved {
            if !metadata_nodes.contains(&nid) {
                let request = packets::AskVoteTransaction { ttid };
                votes.spawn(async move { (nid, false, connection.ask(request).await.map(drop)) });
            }
        }
        let mut metadata_stored = false;
        while let Some(vote) = votes.join_next().await {
            match vote {
                Ok((_, metadata, Ok(()))) => metadata_stored |= metadata,
                Ok((nid, _, Err(AskError::Net(error)))) => {
                    tracing::info!(%nid, "storage lost during vote: {error}");
                    lock(&self.txn.state).nodes.insert(nid, NodeUse::Failed);
                }
                Ok((nid, _, Err(AskError::Refused { error, .. }))) => {
                    return Err(self.failed(format!("storage {nid} refused the vote: {error}")));
                }
                Err(error) => return Err(self.failed(format!("vote task failed: {error}"))),
            }
        }
        if !metadata_stored {
            return Err(self.failed("no storage stored the transaction metadata"));
        }
        self.check_failed_nodes().await?;
        if self.session.is_closed() {
            // Finishing would likely fail: better fail now (§6.8 step 7).
            return Err(self.failed("connection to the primary master lost since tpc_begin"));
        }
        self.pack = meta.pack.clone();
        self.phase = Phase::Voted;
        Ok(())
    }

    /// §6.8 step 6: with failed nodes, every lockless partition must still
    /// be locked somewhere, and the master must accept to drop them.
    async fn check_failed_nodes(&self) -> Result<(), ClientError> {
        let (failed, lockless) = {
            let state = lock(&self.txn.state);
            (state.failed(), state.lockless.clone())
        };
        if failed.is_empty() {
            return Ok(());
        }
        let running_failed: Vec<NodeId> = {
            let view = lock(&self.session.view);
            if let Some(pt) = &view.pt {
                for (partition, nodes) in &lockless {
                    let locked = pt
                        .cells(*partition)
                        .iter()
                        .any(|cell| !failed.contains(&cell.nid) && !nodes.contains(&cell.nid));
                    if !locked {
                        return Err(
                            self.failed(format!("partition {partition} not fully write-locked"))
                        );
                    }
                }
            }
            failed
                .iter()
                .copied()
                .filter(|nid| view.nodes.is_running(*nid))
                .collect()
        };
        if running_failed.is_empty() {
            return Ok(());
        }
        let request = packets::FailedVote {
            ttid: self.txn.ttid,
            failed_nids: running_failed,
        };
        match self.session.master.ask(request).await {
            Ok(_) => Ok(()),
            Err(AskError::Refused { error, .. }) => {
                Err(self.failed(format!("master refused the failed storages: {error}")))
            }
            // The master-lost check that follows reports it.
            Err(AskError::Net(_)) => Ok(()),
        }
    }

    /// `tpc_finish` (§6.9): returns the TID of the commit.
    pub async fn finish(&mut self) -> Result<Tid, ClientError> {
        self.finish_inner(None).await
    }

    /// `tpc_finish`, calling `hook(tid)` in order with invalidations: after
    /// those of earlier commits, before those of later ones, and before
    /// `last_transaction()` reports `tid` (ZODB's tpc_finish callback).
    pub async fn finish_with(
        &mut self,
        hook: impl FnOnce(Tid) + Send + 'static,
    ) -> Result<Tid, ClientError> {
        self.finish_inner(Some(Box::new(hook))).await
    }

    async fn finish_inner(
        &mut self,
        hook: Option<crate::master::FinishHook>,
    ) -> Result<Tid, ClientError> {
        if self.phase != Phase::Voted {
            return Err(ClientError::InvalidUse(format!(
                "transaction {} must be voted before finishing",
                self.txn.ttid
            )));
        }
        let ttid = self.txn.ttid;
        let (oids, deleted, checked) = {
            let state = lock(&self.txn.state);
            let mut oids = Vec::new();
            let mut deleted = BTreeSet::new();
            let mut checked = BTreeSet::new();
            for oid in &state.order {
                let Some(object) = state.objects.get(oid) else {
                    continue;
                };
                if object.checked {
                    checked.insert(self.txn.partition_of(*oid));
                } else if object.deleted {
                    deleted.insert(self.txn.partition_of(*oid));
                } else {
                    oids.push(*oid);
                }
            }
            (oids, deleted, checked)
        };
        *lock(&self.txn.hook) = hook;
        let txn_hook = self.txn.hook.clone();
        self.session.on_finish(
            ttid,
            Box::new(move |tid| {
                if let Some(hook) = lock(&txn_hook).take() {
                    hook(tid);
                }
            }),
        );
        let request = packets::AskFinishTransaction {
            ttid,
            oids,
            deleted: deleted.into_iter().collect(),
            checked: checked.into_iter().collect(),
            pack: self.pack.clone(),
        };
        let sent = self.session.send_ordered(request).await;
        let ordered = match sent {
            Ok(ordered) => ordered,
            Err(error) => {
                self.session.take_finish_hook(ttid);
                // Not sent: the master never saw it; abort is still right.
                return Err(self.failed(error.to_string()));
            }
        };
        // From here on, the transaction must never be aborted.
        self.phase = Phase::Done;
        self.unregister();
        match ordered.answer().await {
            Some(Packet::AnswerTransactionFinished(finished)) => Ok(finished.tid),
            Some(Packet::Error(error)) => {
                self.session.take_finish_hook(ttid);
                Err(self.failed(format!("master refused to finish: {error}")))
            }
            Some(other) => Err(ClientError::Protocol {
                peer: self.session.master.peer().to_owned(),
                reason: format!("{} in answer to AskFinishTransaction", other.name()),
            }),
            None => {
                let tid = self.recover_final_tid().await?;
                if let Some(hook) = lock(&self.txn.hook).take() {
                    hook(tid);
                }
                self.shared.advance_last_tid(tid);
                Ok(tid)
            }
        }
    }

    /// The master connection was lost in `tpc_finish`: ask a (new) primary
    /// what became of the transaction (§6.10).
    async fn recover_final_tid(&self) -> Result<Tid, ClientError> {
        let ttid = self.txn.ttid;
        let deadline = Instant::now() + FINISH_RECOVERY;
        let mut last_error = String::from("master connection lost");
        while Instant::now() < deadline {
            let session = match self.shared.session().await {
                Ok(session) => session,
                Err(ClientError::Closed) => break,
                Err(error) => {
                    last_error = error.to_string();
                    continue;
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let ask = session.master.ask(packets::AskFinalTID { ttid });
            match tokio::time::timeout(remaining, ask).await {
                Ok(Ok(packets::AnswerFinalTID { tid: None })) => {
                    return Err(self.failed("the master does not know it: not committed"))
                }
                Ok(Ok(packets::AnswerFinalTID {
                    tid: Some(Tid::MAX),
                })) => return self.final_tid_from_storages().await,
                Ok(Ok(packets::AnswerFinalTID { tid: Some(tid) })) => return Ok(tid),
                Ok(Err(error)) => {
                    last_error = error.to_string();
                    // Paced by the reconnection interval.
                    tokio::time::sleep(self.shared.config.retry_interval).await;
                }
                Err(_) => break,
            }
        }
        Err(self.failed(format!(
            "outcome unknown after losing the master in tpc_finish: {last_error}"
        )))
    }

    async fn final_tid_from_storages(&self) -> Result<Tid, ClientError> {
        let ttid = self.txn.ttid;
        let request = packets::AskFinalTID { ttid };
        let outcome = ask_readable(
            &self.shared,
            ReadKey::Tid(ttid),
            request,
            &[],
            |nid, answer| match answer {
                Ok(packets::AnswerFinalTID { tid: Some(tid) }) => Next::Done(Some(tid)),
                Ok(packets::AnswerFinalTID { tid: None }) => Next::Done(None),
                Err(error) => Next::Another(format!("{nid}: {error}")),
            },
        )
        .await?;
        outcome.ok_or_else(|| self.failed("the storages do not know it: not committed"))
    }

    /// `tpc_abort` (§6.11). Does nothing once `finish` was sent.
    pub async fn abort(&mut self) -> Result<(), ClientError> {
        if self.phase == Phase::Done {
            return Ok(());
        }
        self.phase = Phase::Done;
        let (live, all) = self.abort_targets();
        self.unregister();
        send_aborts(self.txn.ttid, &self.session, live, all).await;
        Ok(())
    }

    fn abort_targets(&self) -> (Vec<Connection>, Vec<NodeId>) {
        let mut state = lock(&self.txn.state);
        state.voting = true;
        let live = state
            .nodes
            .values()
            .filter_map(|usage| match usage {
                NodeUse::Live(connection) if !connection.is_closed() => Some(connection.clone()),
                _ => None,
            })
            .collect();
        (live, state.nodes.keys().copied().collect())
    }

    fn unregister(&self) {
        lock(&self.shared.transactions).remove(&self.txn.ttid);
    }

    /// For undo (§8.3): what to store to undo `undone_tid` for `oids`, as
    /// seen by this transaction (snapshot = last TID + 1).
    pub async fn undo_serials(
        &mut self,
        undone_tid: Tid,
        oids: &[Oid],
    ) -> Result<HashMap<Oid, UndoSerial>, ClientError> {
        self.check_open()?;
        let last = (*lock(&self.shared.last_tid)).unwrap_or(Tid::ZERO);
        let snapshot = Tid(last.0.saturating_add(1));
        let mut by_partition: BTreeMap<Partition, Vec<Oid>> = BTreeMap::new();
        for oid in oids {
            by_partition
                .entry(self.txn.partition_of(*oid))
                .or_default()
                .push(*oid);
        }
        let failed = lock(&self.txn.state).failed();
        let mut result = HashMap::new();
        for (partition, oids) in by_partition {
            let request = packets::AskObjectUndoSerial {
                ttid: self.txn.ttid,
                ltid: snapshot,
                undone_tid,
                oids,
            };
            let serials = ask_readable(
                &self.shared,
                ReadKey::Partition(partition),
                request,
                &failed,
                |_, answer| match answer {
                    Ok(answer) => Next::Done(answer.serials),
                    Err(error) if error.code == ErrorCode::OidNotFound => {
                        Next::Fail(ClientError::NotUndoable { tid: undone_tid })
                    }
                    Err(error) => Next::Another(error.to_string()),
                },
            )
            .await?;
            result.extend(serials.0);
        }
        Ok(result)
    }
}

async fn send_aborts(ttid: Tid, session: &Session, live: Vec<Connection>, all: Vec<NodeId>) {
    // On each storage connection after our stores, so it comes after them.
    for connection in live {
        let _ = connection
            .notify(packets::AbortTransaction {
                ttid,
                nids: Vec::new(),
            })
            .await;
    }
    if !session.is_closed() {
        let _ = session
            .master
            .notify(packets::AbortTransaction { ttid, nids: all })
            .await;
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        let (live, all) = self.abort_targets();
        self.unregister();
        let ttid = self.txn.ttid;
        let session = self.session.clone();
        self.shared.runtime.spawn(async move {
            send_aborts(ttid, &session, live, all).await;
        });
    }
}
