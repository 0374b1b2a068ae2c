//! The master's transaction manager (architecture.md §6.2, §6.3, §6.9,
//! §6.12): TTIDs and final TIDs, OID allocation, and the commit queue that
//! completes transactions strictly in TID order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use neo_cluster::{TidGenerator, UnixTime};
use neo_proto::{NodeId, Oid, Tid};

use neo_net::ConnId;

/// A transaction between `tpc_begin` and its completion.
#[derive(Debug)]
pub struct Transaction {
    /// Its temporary id.
    pub ttid: Tid,
    /// The committing client's connection.
    pub client_conn: ConnId,
    /// Storages ready at begin: only they are expected to have it in full.
    pub ready_at_begin: BTreeSet<NodeId>,
    /// The client imposed the TID (imports): the final TID is the TTID.
    requested_tid: bool,
    /// Storages the client reported as failed during its vote.
    pub failed: BTreeSet<NodeId>,
    /// Set by `tpc_finish`.
    pub finish: Option<Finish>,
    /// Final TID, once prepared.
    tid: Option<Tid>,
    /// Clients that asked `AskFinalTID` while it was finishing.
    final_tid_waiters: Vec<(ConnId, u32)>,
}

/// What `tpc_finish` brought.
#[derive(Debug)]
pub struct Finish {
    /// msg_id of `AskFinishTransaction`, to answer.
    pub msg_id: u32,
    /// Modified oids, to invalidate in other clients.
    pub oids: Vec<Oid>,
    /// Involved storages that have not answered `AskLockInformation`.
    pub awaiting: BTreeSet<NodeId>,
    /// Every involved storage, to unlock.
    pub involved: BTreeSet<NodeId>,
}

/// A transaction ready to complete.
#[derive(Debug)]
pub struct Committed {
    /// Temporary id.
    pub ttid: Tid,
    /// Final TID.
    pub tid: Tid,
    /// The committing client's connection.
    pub client_conn: ConnId,
    /// msg_id of its `AskFinishTransaction`.
    pub msg_id: u32,
    /// Oids to invalidate.
    pub oids: Vec<Oid>,
    /// Storages to unlock.
    pub involved: BTreeSet<NodeId>,
    /// `AskFinalTID` requests to answer.
    pub final_tid_waiters: Vec<(ConnId, u32)>,
}

/// A begin request waiting for storages to be ready.
type QueuedBegin = (ConnId, u32, Option<Tid>);

/// Most transactions between `tpc_begin` and their end at once: clients
/// cannot make the master's memory grow without bound.
pub const MAX_TRANSACTIONS: usize = 65_536;

/// Most begin requests held while storages get ready.
pub const MAX_QUEUED_BEGINS: usize = 4096;

/// Most `AskFinalTID` requests held until their transaction completes.
pub const MAX_FINAL_TID_WAITERS: usize = 4096;

/// Pending transactions and the ids the master hands out.
#[derive(Debug, Default)]
pub struct TransactionManager {
    /// Pending transactions by TTID.
    transactions: BTreeMap<Tid, Transaction>,
    /// TTIDs of prepared transactions, in final-TID order.
    commit_queue: VecDeque<Tid>,
    /// Last committed TID.
    pub last_tid: Tid,
    /// Last OID handed out or committed.
    last_oid: Oid,
    /// Greatest TID or TTID handed out: new ones must be greater.
    last_used: Tid,
    queued_begins: Vec<QueuedBegin>,
    /// `AskFinalTID` requests held, over every transaction.
    final_tid_waiters: usize,
    /// Storages to tell when a transaction ends (they replicate, §9.1).
    watchers: BTreeMap<Tid, BTreeSet<NodeId>>,
}

impl TransactionManager {
    /// A new TTID (or the imposed TID) for a client.
    pub fn begin(
        &mut self,
        client_conn: ConnId,
        tid: Option<Tid>,
        ready: BTreeSet<NodeId>,
        now: UnixTime,
        partitions: u32,
    ) -> Result<Tid, &'static str> {
        let (ttid, requested_tid) = match tid {
            Some(tid) => {
                if !self.transactions.is_empty() {
                    return Err("cannot impose a TID while other transactions are pending");
                }
                if tid <= self.last_tid {
                    return Err("the imposed TID is not greater than the last committed one");
                }
                (tid, true)
            }
            None => {
                // An imposed TID began alone and every TTID since is above
                // it: if one is pending, it is the first transaction.
                let importing = self
                    .transactions
                    .values()
                    .next()
                    .is_some_and(|t| t.requested_tid && t.finish.is_none());
                if importing {
                    return Err("a transaction with an imposed TID is pending");
                }
                (
                    TidGenerator::next(now, self.last_used, None, partitions),
                    false,
                )
            }
        };
        self.last_used = self.last_used.max(ttid);
        self.transactions.insert(
            ttid,
            Transaction {
                ttid,
                client_conn,
                ready_at_begin: ready,
                requested_tid,
                failed: BTreeSet::new(),
                finish: None,
                tid: None,
                final_tid_waiters: Vec::new(),
            },
        );
        Ok(ttid)
    }

    /// Whether [`MAX_TRANSACTIONS`] are in progress: no more may begin.
    pub fn is_full(&self) -> bool {
        self.transactions.len() >= MAX_TRANSACTIONS
    }

    /// How many transactions are in progress.
    pub fn in_progress(&self) -> usize {
        self.transactions.len()
    }

    /// `count` new OIDs, following the last one known.
    pub fn new_oids(&mut self, count: u32) -> Vec<Oid> {
        let first = self.last_oid.0 + 1;
        let oids: Vec<Oid> = (first..first + u64::from(count)).map(Oid).collect();
        if let Some(last) = oids.last() {
            self.last_oid = *last;
        }
        oids
    }

    /// A pending transaction.
    pub fn get(&self, ttid: Tid) -> Option<&Transaction> {
        self.transactions.get(&ttid)
    }

    /// Forgets a transaction (abort).
    pub fn remove(&mut self, ttid: Tid) {
        if let Some(transaction) = self.transactions.remove(&ttid) {
            self.final_tid_waiters -= transaction.final_tid_waiters.len();
        }
        self.commit_queue.retain(|queued| *queued != ttid);
    }

    /// Back to recovery: every transaction is forgotten, those in
    /// `tpc_finish` too. Whether they committed is for verification to find
    /// out from the storages; completing one here would announce a commit
    /// the storages may have dropped. Their `AskFinalTID` waiters get no
    /// answer (their connections are closed).
    pub fn drop_unfinished(&mut self) {
        self.transactions.clear();
        self.commit_queue.clear();
        self.final_tid_waiters = 0;
        self.queued_begins.clear();
    }

    /// Records storages that failed during the vote.
    pub fn add_failed(&mut self, ttid: Tid, failed: BTreeSet<NodeId>) {
        if let Some(transaction) = self.transactions.get_mut(&ttid) {
            transaction.failed.extend(failed);
        }
    }

    /// `tpc_finish`: allocates the final TID and queues the transaction.
    pub fn prepare(&mut self, ttid: Tid, finish: Finish, now: UnixTime, partitions: u32) -> Tid {
        let requested = self
            .transactions
            .get(&ttid)
            .is_some_and(|t| t.requested_tid);
        let tid = if requested {
            ttid
        } else {
            TidGenerator::next(now, self.last_used, Some(ttid), partitions)
        };
        debug_assert!(tid >= ttid && tid > self.last_tid);
        self.last_used = self.last_used.max(tid);
        if let Some(max) = finish.oids.iter().max() {
            self.last_oid = self.last_oid.max(*max);
        }
        if let Some(transaction) = self.transactions.get_mut(&ttid) {
            transaction.tid = Some(tid);
            transaction.finish = Some(finish);
            self.commit_queue.push_back(ttid);
        }
        tid
    }

    /// A storage locked the transaction.
    pub fn locked(&mut self, ttid: Tid, storage: NodeId) {
        if let Some(finish) = self
            .transactions
            .get_mut(&ttid)
            .and_then(|t| t.finish.as_mut())
        {
            finish.awaiting.remove(&storage);
        }
    }

    /// A storage is gone: no transaction waits for its lock any more.
    pub fn storage_lost(&mut self, storage: NodeId) {
        for transaction in self.transactions.values_mut() {
            if let Some(finish) = transaction.finish.as_mut() {
                finish.awaiting.remove(&storage);
                finish.involved.remove(&storage);
            }
        }
        for watchers in self.watchers.values_mut() {
            watchers.remove(&storage);
        }
    }

    /// The oldest prepared transaction, if every involved storage locked it:
    /// transactions complete strictly in TID order.
    pub fn pop_committable(&mut self) -> Option<Committed> {
        let ttid = *self.commit_queue.front()?;
        let ready = self
            .transactions
            .get(&ttid)
            .and_then(|t| t.finish.as_ref())
            .is_some_and(|finish| finish.awaiting.is_empty());
        if !ready {
            return None;
        }
        self.commit_queue.pop_front();
        let transaction = self.transactions.remove(&ttid)?;
        self.final_tid_waiters -= transaction.final_tid_waiters.len();
        let finish = transaction.finish?;
        let tid = transaction.tid?;
        self.last_tid = self.last_tid.max(tid);
        Some(Committed {
            ttid,
            tid,
            client_conn: transaction.client_conn,
            msg_id: finish.msg_id,
            oids: finish.oids,
            involved: finish.involved,
            final_tid_waiters: transaction.final_tid_waiters,
        })
    }

    /// `AskFinalTID` from a client: `Some(answer)` now, or `None` to answer
    /// when the transaction completes (§6.10).
    pub fn final_tid_query(&self, ttid: Tid) -> Option<Option<Tid>> {
        match self.transactions.get(&ttid) {
            Some(transaction) if transaction.finish.is_some() => None,
            _ if ttid > self.last_used => Some(None),
            // Committed or aborted earlier: the storages know which.
            _ => Some(Some(Tid::MAX)),
        }
    }

    /// Answers `AskFinalTID` when the transaction completes; `false` when
    /// too many requests wait already.
    pub fn wait_final_tid(&mut self, ttid: Tid, conn: ConnId, msg_id: u32) -> bool {
        if self.final_tid_waiters >= MAX_FINAL_TID_WAITERS {
            return false;
        }
        if let Some(transaction) = self.transactions.get_mut(&ttid) {
            transaction.final_tid_waiters.push((conn, msg_id));
            self.final_tid_waiters += 1;
        }
        true
    }

    /// A client is gone: its transactions not yet in `tpc_finish` are
    /// dropped (returned with the storages to tell); prepared ones complete.
    pub fn client_lost(&mut self, conn: ConnId) -> Vec<(Tid, BTreeSet<NodeId>)> {
        let dropped: Vec<Tid> = self
            .transactions
            .values()
            .filter(|t| t.client_conn == conn && t.finish.is_none())
            .map(|t| t.ttid)
            .collect();
        dropped
            .into_iter()
            .filter_map(|ttid| {
                let transaction = self.transactions.remove(&ttid)?;
                self.final_tid_waiters -= transaction.final_tid_waiters.len();
                Some((ttid, transaction.ready_at_begin))
            })
            .collect()
    }

    /// Holds a begin request until storages are ready; `false` when too
    /// many are held already.
    pub fn queue_begin(&mut self, conn: ConnId, msg_id: u32, tid: Option<Tid>) -> bool {
        if self.queued_begins.len() >= MAX_QUEUED_BEGINS {
            return false;
        }
        self.queued_begins.push((conn, msg_id, tid));
        true
    }

    /// The begin requests held so far.
    pub fn take_queued_begins(&mut self) -> Vec<QueuedBegin> {
        std::mem::take(&mut self.queued_begins)
    }

    /// Stopping: queued begins are never answered.
    pub fn drop_queued_begins(&mut self) {
        self.queued_begins.clear();
    }

    /// Whether any transaction is pending.
    pub fn has_pending(&self) -> bool {
        !self.transactions.is_empty()
    }

    /// A storage about to replicate wants to know when the pending
    /// transactions end; returns their TTIDs.
    pub fn watch_unfinished(&mut self, storage: NodeId) -> Vec<Tid> {
        let ttids: Vec<Tid> = self.transactions.keys().copied().collect();
        for ttid in &ttids {
            self.watchers.entry(*ttid).or_default().insert(storage);
        }
        ttids
    }

    /// The storages waiting for the end of `ttid`.
    pub fn take_watchers(&mut self, ttid: Tid) -> BTreeSet<NodeId> {
        self.watchers.remove(&ttid).unwrap_or_default()
    }

    /// Raises the last TID and OID to what storages report (verification).
    pub fn raise_last_ids(&mut self, tid: Option<Tid>, oid: Option<Oid>) {
        if let Some(tid) = tid {
            self.last_tid = self.last_tid.max(tid);
            self.last_used = self.last_used.max(tid);
        }
        if let Some(oid) = oid {
            self.last_oid = self.last_oid.max(oid);
        }
    }

    /// The last committed TID as the storages report it at the end of
    /// verification (lower than before after a truncation); the TIDs
    /// handed out stay above every one used before.
    pub fn set_last_tid(&mut self, tid: Tid) {
        self.last_tid = tid;
        self.last_used = self.last_used.max(tid);
    }

    /// Last committed TID and last OID.
    pub fn last_ids(&self) -> (Tid, Oid) {
        (self.last_tid, self.last_oid)
    }
}
