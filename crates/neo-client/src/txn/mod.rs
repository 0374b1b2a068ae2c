//! Two-phase commit, client side (architecture.md §6): [`ClientTxn`] (in
//! `machine`) decides, [`Transaction`] is its shell.
//!
//! Stores are pipelined: `store` queues the machine's `AskStoreObject`s to
//! every cell of the oid's partition and returns. The queue goes out, one
//! write per storage, as soon as an answer is awaited (the vote, a store
//! over the in-flight budget) or 64 KiB of data wait: a transaction of ten
//! small objects costs one `sendto` instead of ten, and the storage reads
//! them at once. Each request is sent with a fresh [`Token`], registered
//! with the storage dispatcher before it leaves; the dispatcher hands its
//! answer back to the machine, where conflicts are collected for the caller
//! to resolve at its next call, and wakes the shell. `vote` waits for every
//! answer. An abort drops what is still queued: those storages never heard
//! of the transaction, the master is told of them all.

mod machine;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use neo_cluster::{NodeTable, PartitionTable};
use neo_net::{AskError, ConnId, Connection, Token};
use neo_proto::packets::{self, PackRequest, UndoSerial};
use neo_proto::{ErrorCode, NodeId, Oid, Packet, Tid};
use tokio::sync::Notify;

use crate::data;
use crate::error::{ClientError, Conflict};
use crate::master::{FinishHook, Session, Shared, FINISH_RECOVERY};
use crate::storage::{ask_readable, Next, ReadKey};
use crate::util::{lock, next_token};
use machine::{ClientTxn, Limits, Outgoing, Store};

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

/// The machine and the connections its shell uses for it, under one lock.
struct Core {
    machine: ClientTxn,
    /// The connection used for each storage, as first obtained: a storage
    /// that lost it dropped our stores, so it is never replaced within the
    /// transaction.
    links: HashMap<NodeId, Connection>,
}

/// The part of a transaction the storage dispatcher updates.
pub(crate) struct TxnShared {
    pub ttid: Tid,
    core: Mutex<Core>,
    /// Wakes the shell when an answer came or a storage was lost.
    changed: Notify,
    /// Runs with the final TID when `AnswerTransactionFinished` is processed.
    hook: Arc<Mutex<Option<FinishHook>>>,
}

impl TxnShared {
    /// The answer to a request of this transaction, or `None`: none will
    /// come (see [`ClientTxn::on_answer`]).
    pub fn on_answer(&self, token: Token, answer: Option<Packet>) {
        let known = lock(&self.core).machine.on_answer(token, answer);
        if known {
            self.changed.notify_one();
        } else {
            tracing::debug!(ttid = %self.ttid, token = token.0, "answer to no pending request, ignored");
        }
    }

    /// Connection `conn` closed: the storages this transaction used it for
    /// failed in it.
    fn lost(&self, conn: ConnId) {
        let mut core = lock(&self.core);
        let Core { machine, links } = &mut *core;
        let mut used = false;
        for (nid, _) in links.iter().filter(|(_, link)| link.id() == conn) {
            machine.node_failed(*nid);
            used = true;
        }
        drop(core);
        if used {
            self.changed.notify_one();
        }
    }
}

/// Sends `outgoing` on `connection`, its answer routed back to `txn`; a
/// request that cannot be sent is one that gets no answer.
async fn send_routed(
    shared: &Shared,
    txn: &Arc<TxnShared>,
    connection: &Connection,
    outgoing: Outgoing,
) {
    let Outgoing { nid, token, packet } = outgoing;
    // Routed before it leaves: the answer may beat `send_request` back.
    shared.route(connection.id(), token, Arc::downgrade(txn));
    if let Err(error) = connection.send_request(packet, token).await {
        tracing::info!(%nid, "request to storage failed: {error}");
        shared.unroute(connection.id(), token);
        txn.on_answer(token, None);
    }
}

/// [`send_routed`] of several requests to one storage, in one write.
async fn send_routed_batch(
    shared: &Shared,
    txn: &Arc<TxnShared>,
    connection: &Connection,
    requests: Vec<Outgoing>,
) {
    let tokens: Vec<Token> = requests.iter().map(|outgoing| outgoing.token).collect();
    for token in &tokens {
        shared.route(connection.id(), *token, Arc::downgrade(txn));
    }
    let batch = requests
        .into_iter()
        .map(|outgoing| neo_net::Outgoing::Request(outgoing.token, outgoing.packet))
        .collect();
    if let Err(error) = connection.send_batch(batch).await {
        tracing::info!("requests to storage {} failed: {error}", connection.peer());
        for token in tokens {
            shared.unroute(connection.id(), token);
            txn.on_answer(token, None);
        }
    }
}

/// `NotifyDeadlock(ttid, oid)` on storage connection `conn` (§6.5): the
/// relock the machine decides on, if any, on that same connection.
pub(crate) fn on_deadlock(shared: &Arc<Shared>, conn: ConnId, ttid: Tid, oid: Oid) {
    let txn = lock(&shared.transactions)
        .get(&ttid)
        .and_then(Weak::upgrade);
    let Some(txn) = txn else {
        return;
    };
    let relock = {
        let mut core = lock(&txn.core);
        let Core { machine, links } = &mut *core;
        // Only from a storage the transaction uses, on the connection it
        // uses: another peer cannot make us relock.
        let link = links.iter().find(|(_, link)| link.id() == conn);
        link.and_then(|(nid, connection)| {
            let relock = machine.on_deadlock(oid, *nid, &mut next_token)?;
            Some((connection.clone(), relock))
        })
    };
    let Some((connection, relock)) = relock else {
        return;
    };
    tracing::debug!(%ttid, %oid, nid = %relock.nid, "deadlock avoidance: relocking");
    // Not on the dispatcher: a storage that does not read would stop it.
    let task_shared = shared.clone();
    shared.runtime.spawn(async move {
        send_routed(&task_shared, &txn, &connection, relock).await;
    });
}

/// A storage connection closed: the transactions that used it lost what
/// they had stored there.
pub(crate) fn on_storage_lost(shared: &Shared, conn: ConnId) {
    let transactions: Vec<Arc<TxnShared>> = {
        let mut registry = lock(&shared.transactions);
        registry.retain(|_, txn| txn.strong_count() > 0);
        registry.values().filter_map(Weak::upgrade).collect()
    };
    for txn in transactions {
        txn.lost(conn);
    }
}

/// A transaction between `tpc_begin` and `tpc_finish`/`tpc_abort`.
/// Dropping it unfinished aborts it (in the background).
pub struct Transaction {
    shared: Arc<Shared>,
    session: Arc<Session>,
    txn: Arc<TxnShared>,
    /// Stores and checks decided but not sent yet: they go out together,
    /// one write per storage, when an answer is awaited or enough data
    /// waits (see [`Transaction::store_record`]).
    queued: Vec<Outgoing>,
    /// The object data in `queued`.
    queued_bytes: usize,
}

/// Object data kept back before the queued stores go out: enough that a
/// transaction of small objects costs one write per storage, little enough
/// that a large transaction keeps the storages busy while it is stored.
const QUEUED_BYTES: usize = 64 << 10;

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("ttid", &self.txn.ttid)
            .field("phase", &lock(&self.txn.core).machine.phase())
            .finish_non_exhaustive()
    }
}

impl Transaction {
    pub(crate) fn new(shared: Arc<Shared>, session: Arc<Session>, ttid: Tid) -> Transaction {
        let limits = Limits {
            max_bytes_in_flight: shared.config.max_store_bytes_in_flight,
            max_object_size: shared.config.max_object_size,
        };
        let txn = Arc::new(TxnShared {
            ttid,
            core: Mutex::new(Core {
                machine: ClientTxn::new(ttid, limits),
                links: HashMap::new(),
            }),
            changed: Notify::new(),
            hook: Arc::new(Mutex::new(None)),
        });
        lock(&shared.transactions).insert(ttid, Arc::downgrade(&txn));
        Transaction {
            shared,
            session,
            txn,
            queued: Vec::new(),
            queued_bytes: 0,
        }
    }

    /// The TTID given by the master at `tpc_begin`.
    pub fn ttid(&self) -> Tid {
        self.txn.ttid
    }

    fn check_open(&self) -> Result<(), ClientError> {
        lock(&self.txn.core).machine.check_open()?;
        if self.session.is_closed() {
            // §2.5: transactions not yet in tpc_finish fail with the master.
            return Err(self.failed("connection to the primary master lost since tpc_begin"));
        }
        Ok(())
    }

    fn failed(&self, reason: impl Into<String>) -> ClientError {
        ClientError::TransactionFailed {
            ttid: self.txn.ttid,
            reason: reason.into(),
        }
    }

    /// Runs `decide` on the machine with the session's partition table and
    /// node table (locked in this order, the only order they are taken in).
    fn decide<T>(
        &self,
        decide: impl FnOnce(&mut ClientTxn, &PartitionTable, &NodeTable) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let view = lock(&self.session.view);
        let pt = view
            .pt
            .as_ref()
            .ok_or_else(|| self.failed("no partition table"))?;
        decide(&mut lock(&self.txn.core).machine, pt, &view.nodes)
    }

    /// The connection this transaction uses to `nid`, connecting the first
    /// time; `None` if the node failed in this transaction.
    async fn link(&self, nid: NodeId) -> Option<Connection> {
        {
            let core = lock(&self.txn.core);
            if core.machine.is_failed(nid) {
                return None;
            }
            if let Some(connection) = core.links.get(&nid) {
                return (!connection.is_closed()).then(|| connection.clone());
            }
        }
        match self.session.storage(&self.shared, nid).await {
            Ok(connection) => {
                lock(&self.txn.core).links.insert(nid, connection.clone());
                Some(connection)
            }
            Err(error) => {
                tracing::info!(%nid, "storage unavailable for transaction: {error}");
                None
            }
        }
    }

    /// Sends what the machine decided, connecting to storages as needed.
    async fn send(&self, requests: Vec<Outgoing>) {
        for outgoing in requests {
            match self.link(outgoing.nid).await {
                Some(connection) => {
                    send_routed(&self.shared, &self.txn, &connection, outgoing).await
                }
                None => self.txn.on_answer(outgoing.token, None),
            }
        }
    }

    /// Keeps requests for [`Transaction::flush`]: stores and checks are
    /// only waited for later, so they can go out together.
    fn queue(&mut self, requests: Vec<Outgoing>) {
        for outgoing in &requests {
            if let Packet::AskStoreObject(store) = &outgoing.packet {
                self.queued_bytes += store.data.len();
            }
        }
        self.queued.extend(requests);
    }

    /// Sends the queued requests: those to one storage in one write, in
    /// the order they were decided.
    async fn flush(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        self.queued_bytes = 0;
        let mut by_storage: Vec<(NodeId, Vec<Outgoing>)> = Vec::new();
        for outgoing in queued {
            match by_storage.iter_mut().find(|(nid, _)| *nid == outgoing.nid) {
                Some((_, requests)) => requests.push(outgoing),
                None => by_storage.push((outgoing.nid, vec![outgoing])),
            }
        }
        for (nid, requests) in by_storage {
            match self.link(nid).await {
                Some(connection) => {
                    send_routed_batch(&self.shared, &self.txn, &connection, requests).await
                }
                None => {
                    for outgoing in requests {
                        self.txn.on_answer(outgoing.token, None);
                    }
                }
            }
        }
    }

    /// Waits until `done` holds of the machine; fails as soon as the
    /// transaction cannot commit.
    async fn wait_until(&self, done: impl Fn(&ClientTxn) -> bool) -> Result<(), ClientError> {
        loop {
            let notified = self.txn.changed.notified();
            {
                let core = lock(&self.txn.core);
                core.machine.check_fatal()?;
                if done(&core.machine) {
                    return Ok(());
                }
            }
            notified.await;
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
        let store = Store {
            oid,
            serial,
            data,
            encoded,
            data_serial,
        };
        let requests = self.decide(|machine, pt, _| machine.store(pt, store, &mut next_token))?;
        self.queue(requests);
        let over_budget = lock(&self.txn.core).machine.over_budget();
        if over_budget || self.queued_bytes >= QUEUED_BYTES {
            self.flush().await;
        }
        if over_budget {
            self.wait_until(|machine| !machine.over_budget()).await?;
        }
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
        let requests =
            self.decide(|machine, pt, _| machine.check_current(pt, oid, serial, &mut next_token))?;
        self.queue(requests);
        lock(&self.txn.core).machine.check_fatal()?;
        Ok(self.take_conflicts())
    }

    /// Conflicts reported since the last call, without waiting.
    pub fn take_conflicts(&mut self) -> Vec<Conflict> {
        lock(&self.txn.core).machine.take_conflicts()
    }

    /// Waits for the answer to every store and check; returns the conflicts
    /// not yet reported.
    pub async fn wait_stores(&mut self) -> Result<Vec<Conflict>, ClientError> {
        self.flush().await;
        self.wait_until(ClientTxn::all_answered).await?;
        Ok(self.take_conflicts())
    }

    /// `tpc_vote` (§6.8). Conflicts still to resolve are returned as
    /// [`ClientError::Conflicts`]: store the resolved data, vote again.
    pub async fn vote(&mut self, meta: &TxnMeta) -> Result<(), ClientError> {
        self.check_open()?;
        let requests = loop {
            let conflicts = self.wait_stores().await?;
            if !conflicts.is_empty() {
                return Err(ClientError::Conflicts(conflicts));
            }
            // A `NotifyDeadlock` may come between the last answer and the
            // vote: its relock must be answered (maybe with a conflict)
            // first. Checked under the lock that deadlocks are handled with.
            let requests = self.decide(|machine, pt, _| {
                if !machine.all_answered() {
                    return Ok(None);
                }
                machine.vote(pt, meta, &mut next_token).map(Some)
            })?;
            if let Some(requests) = requests {
                break requests;
            }
        };
        self.send(requests).await;
        self.wait_until(ClientTxn::all_answered).await?;
        let failed_vote =
            self.decide(|machine, pt, nodes| machine.vote_result(pt, |nid| nodes.is_running(nid)))?;
        if let Some(failed_vote) = failed_vote {
            match self.session.master.ask(failed_vote).await {
                Ok(_) => {}
                Err(AskError::Refused { error, .. }) => {
                    return Err(self.failed(format!("master refused the failed storages: {error}")))
                }
                // The master-lost check that follows reports it.
                Err(AskError::Net(_)) => {}
            }
        }
        if self.session.is_closed() {
            // Finishing would likely fail: better fail now (§6.8 step 7).
            return Err(self.failed("connection to the primary master lost since tpc_begin"));
        }
        lock(&self.txn.core).machine.voted();
        Ok(())
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

    async fn finish_inner(&mut self, hook: Option<FinishHook>) -> Result<Tid, ClientError> {
        let request = lock(&self.txn.core).machine.finish_request()?;
        let ttid = self.txn.ttid;
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
        let ordered = match self.session.send_ordered(request).await {
            Ok(ordered) => ordered,
            Err(error) => {
                self.session.take_finish_hook(ttid);
                // Not sent: the master never saw it; abort is still right.
                return Err(self.failed(error.to_string()));
            }
        };
        // From here on, the transaction must never be aborted.
        lock(&self.txn.core).machine.finished();
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
        if let Some((live, tried)) = self.start_abort() {
            send_aborts(self.txn.ttid, &self.session, live, tried).await;
        }
        Ok(())
    }

    /// Marks the transaction aborted and forgets it; returns the storage
    /// connections and the nodes the abort goes to, `None` if there is no
    /// abort to send (aborted already, or finishing).
    fn start_abort(&self) -> Option<(Vec<Connection>, Vec<NodeId>)> {
        let mut core = lock(&self.txn.core);
        let abort = core.machine.abort()?;
        let live = abort
            .live
            .iter()
            .filter_map(|nid| core.links.get(nid))
            .filter(|connection| !connection.is_closed())
            .cloned()
            .collect();
        drop(core);
        self.unregister();
        Some((live, abort.tried))
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
        // The storages answer from this transaction's stores too (undoing
        // several transactions at once builds on the earlier undos): the
        // queued ones go out first, on the connections the questions take.
        self.flush().await;
        let last = (*lock(&self.shared.last_tid)).unwrap_or(Tid::ZERO);
        let snapshot = Tid(last.0.saturating_add(1));
        let (groups, failed) = self
            .decide(|machine, pt, _| Ok((machine.undo_groups(pt, oids), machine.failed_nodes())))?;
        let mut result = HashMap::new();
        for (partition, oids) in groups {
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

async fn send_aborts(ttid: Tid, session: &Session, live: Vec<Connection>, tried: Vec<NodeId>) {
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
            .notify(packets::AbortTransaction { ttid, nids: tried })
            .await;
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        let Some((live, tried)) = self.start_abort() else {
            return;
        };
        let ttid = self.txn.ttid;
        let session = self.session.clone();
        self.shared.runtime.spawn(async move {
            send_aborts(ttid, &session, live, tried).await;
        });
    }
}
