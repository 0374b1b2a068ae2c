//! A transaction's two-phase commit as the client sees it (architecture.md
//! §6), without I/O: [`ClientTxn`] owns what was stored, checked and
//! answered, and decides what to send to which storage. Its shell
//! ([`super::Transaction`]) sends the [`Outgoing`] requests it returns and
//! feeds their answers back by [`Token`].
//!
//! Every partition computation of a transaction is made here, through
//! [`PartitionTable`]: oid → cells of a store or check, ttid → cells of the
//! metadata, lockless partitions, the deleted and checked partitions of
//! `AskFinishTransaction`, undo's grouping.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use neo_cluster::PartitionTable;
use neo_net::Token;
use neo_proto::packets::{self, PackRequest};
use neo_proto::{NodeId, Oid, Packet, Partition, Tid};

use crate::data::{self, Encoded};
use crate::error::{ClientError, Conflict};
use crate::txn::TxnMeta;

/// A request to send: `packet` to storage `nid`; its answer (or its
/// failure) comes back to [`ClientTxn::on_answer`] with `token`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Outgoing {
    pub nid: NodeId,
    pub token: Token,
    pub packet: Packet,
}

/// One revision to store, its data already encoded (compression is the
/// shell's work, done outside any lock).
#[derive(Debug)]
pub(crate) struct Store {
    pub oid: Oid,
    /// The revision the change is based on.
    pub serial: Tid,
    /// Uncompressed data, kept for a conflict report; `None`: no data.
    pub data: Option<Bytes>,
    pub encoded: Encoded,
    /// Back-pointer of an undo.
    pub data_serial: Option<Tid>,
}

/// Bounds of one transaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Encoded bytes of stores not settled yet, above which the caller
    /// waits for answers.
    pub max_bytes_in_flight: usize,
    /// Largest data a relock may give back, once decompressed (the storage
    /// chooses what it sends).
    pub max_object_size: usize,
}

/// Where the transaction is in two-phase commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Stores and checks are taken; deadlocks are answered by relocking.
    Open,
    /// Votes sent: `NotifyDeadlock` is ignored from now on (§6.8 step 2).
    Voting,
    /// Every storage voted: the transaction may be finished.
    Voted,
    /// Finish sent, or aborted: nothing more is sent.
    Done,
}

/// How a storage takes part in the transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Involvement {
    /// Sent something, or about to.
    Live,
    /// Unreachable or lost during the transaction: never used again by it,
    /// since the storage dropped what it had of the transaction (§6.4).
    Failed,
}

/// What a request waiting for its answer asked.
#[derive(Clone, Copy, Debug)]
enum Asked {
    /// `AskStoreObject` of generation `generation` of the oid's stores.
    Store { oid: Oid, generation: u32 },
    /// `AskCheckCurrentSerial`.
    Check { oid: Oid, generation: u32 },
    /// `AskRelockObject` after `NotifyDeadlock`.
    Relock { oid: Oid, generation: u32 },
    /// `AskStoreTransaction` (with the metadata) or `AskVoteTransaction`.
    Vote { metadata: bool },
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    nid: NodeId,
    asked: Asked,
}

/// One oid stored or checked by the transaction.
#[derive(Debug)]
struct ObjectState {
    partition: Partition,
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

impl ObjectState {
    /// An oid first stored or checked (`checked`) at `serial`.
    fn new(partition: Partition, serial: Tid, checked: bool) -> ObjectState {
        ObjectState {
            partition,
            generation: 0,
            serial,
            data: None,
            checked,
            deleted: false,
            waiting: 0,
            stored: false,
            conflict: None,
            unresolved: false,
            bytes: 0,
        }
    }
}

/// Which storages an abort goes to (§6.11).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Abort {
    /// Storages still taking part: each gets the abort on its connection,
    /// after our stores.
    pub live: Vec<NodeId>,
    /// Every storage asked something, for the master's abort.
    pub tried: Vec<NodeId>,
}

/// The state of one transaction, from `tpc_begin` to `tpc_finish` or
/// `tpc_abort`, and what to send next.
#[derive(Debug)]
pub(crate) struct ClientTxn {
    ttid: Tid,
    limits: Limits,
    phase: Phase,
    objects: HashMap<Oid, ObjectState>,
    /// Oids in first-store order (the vote's oid list).
    order: Vec<Oid>,
    nodes: BTreeMap<NodeId, Involvement>,
    /// Nodes that stored without locking, by partition.
    lockless: BTreeMap<Partition, BTreeSet<NodeId>>,
    /// Requests sent (or being sent) and not answered; an answer whose
    /// token is not here is ignored.
    pending: HashMap<Token, Pending>,
    /// Relocks in flight: one per oid and node, however many
    /// `NotifyDeadlock` a storage sends.
    relocking: HashSet<(Oid, NodeId)>,
    /// Conflicts not yet handed to the caller.
    conflicts: Vec<Conflict>,
    in_flight_bytes: usize,
    /// A storage stored the transaction metadata in this vote.
    metadata_stored: bool,
    /// The pack order voted, sent again at finish.
    pack: Option<PackRequest>,
    /// Why the transaction can no longer commit.
    fatal: Option<String>,
}

impl ClientTxn {
    /// A transaction begun with `ttid`.
    pub fn new(ttid: Tid, limits: Limits) -> ClientTxn {
        ClientTxn {
            ttid,
            limits,
            phase: Phase::Open,
            objects: HashMap::new(),
            order: Vec::new(),
            nodes: BTreeMap::new(),
            lockless: BTreeMap::new(),
            pending: HashMap::new(),
            relocking: HashSet::new(),
            conflicts: Vec::new(),
            in_flight_bytes: 0,
            metadata_stored: false,
            pack: None,
            fatal: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn failed(&self, reason: impl Into<String>) -> ClientError {
        ClientError::TransactionFailed {
            ttid: self.ttid,
            reason: reason.into(),
        }
    }

    /// Fails once the transaction can no longer commit.
    pub fn check_fatal(&self) -> Result<(), ClientError> {
        match &self.fatal {
            Some(reason) => Err(self.failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Stores and checks are still taken.
    pub fn check_open(&self) -> Result<(), ClientError> {
        if self.phase != Phase::Open {
            return Err(ClientError::InvalidUse(format!(
                "transaction {} is not open for stores",
                self.ttid
            )));
        }
        self.check_fatal()
    }

    /// Whether `nid` failed in this transaction.
    pub fn is_failed(&self, nid: NodeId) -> bool {
        self.nodes.get(&nid) == Some(&Involvement::Failed)
    }

    /// The nodes that failed in this transaction.
    pub fn failed_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, involvement)| **involvement == Involvement::Failed)
            .map(|(nid, _)| *nid)
            .collect()
    }

    /// The connection to `nid` was lost: the storage dropped what it had of
    /// the transaction. Its requests still pending are failed by their own
    /// [`ClientTxn::on_answer`].
    pub fn node_failed(&mut self, nid: NodeId) {
        if let Some(involvement) = self.nodes.get_mut(&nid) {
            *involvement = Involvement::Failed;
        }
    }

    /// Every request sent has its answer (or its failure).
    pub fn all_answered(&self) -> bool {
        self.pending.is_empty()
    }

    /// Stores in flight weigh more than the budget: the caller waits for
    /// answers before storing more (§6.4 step 4).
    pub fn over_budget(&self) -> bool {
        self.in_flight_bytes > self.limits.max_bytes_in_flight
    }

    /// Conflicts found since the last call.
    pub fn take_conflicts(&mut self) -> Vec<Conflict> {
        std::mem::take(&mut self.conflicts)
    }

    /// Registers a request to `nid`, which takes part from now on.
    fn ask(
        &mut self,
        nid: NodeId,
        asked: Asked,
        packet: Packet,
        next_token: &mut impl FnMut() -> Token,
    ) -> Outgoing {
        self.nodes.entry(nid).or_insert(Involvement::Live);
        let token = next_token();
        self.pending.insert(token, Pending { nid, asked });
        Outgoing { nid, token, packet }
    }

    /// `packet` to every cell of the oid's partition but failed nodes (§6.4
    /// step 2); the oid settles once each of them answered.
    fn fan_out(
        &mut self,
        pt: &PartitionTable,
        oid: Oid,
        asked: Asked,
        packet: Packet,
        next_token: &mut impl FnMut() -> Token,
    ) -> Vec<Outgoing> {
        let Some(partition) = self.objects.get(&oid).map(|object| object.partition) else {
            return Vec::new();
        };
        let cells: Vec<NodeId> = pt
            .cells(partition)
            .iter()
            .map(|cell| cell.nid)
            .filter(|nid| !self.is_failed(*nid))
            .collect();
        let requests: Vec<Outgoing> = cells
            .into_iter()
            .map(|nid| self.ask(nid, asked, packet.clone(), next_token))
            .collect();
        if let Some(object) = self.objects.get_mut(&oid) {
            object.waiting = requests.len();
        }
        // No cell to send to: settles at once, as stored nowhere.
        self.settle(oid);
        requests
    }

    /// A store of `store.oid` (§6.4): `AskStoreObject` to every cell of its
    /// partition. A new store of the same oid supersedes the previous one.
    pub fn store(
        &mut self,
        pt: &PartitionTable,
        store: Store,
        next_token: &mut impl FnMut() -> Token,
    ) -> Result<Vec<Outgoing>, ClientError> {
        self.check_open()?;
        let Store {
            oid,
            serial,
            data,
            encoded,
            data_serial,
        } = store;
        let object = match self.objects.get_mut(&oid) {
            Some(object) if object.checked => {
                return Err(ClientError::InvalidUse(format!(
                    "oid {oid} was checked (readCurrent) in this transaction, it cannot be stored"
                )))
            }
            Some(object) => object,
            None => {
                self.order.push(oid);
                let partition = pt.partition_of_oid(oid);
                let object = ObjectState::new(partition, serial, false);
                self.objects.entry(oid).or_insert(object)
            }
        };
        let bytes = encoded.data.len();
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(object.bytes) + bytes;
        object.generation = object.generation.wrapping_add(1);
        object.serial = serial;
        // A store without data is a deletion unless it is a back-pointer
        // (an undo to a revision without data), as NEO/py's delete_list.
        object.deleted = data.is_none() && data_serial.is_none();
        object.data = data;
        object.stored = false;
        object.conflict = None;
        object.unresolved = false;
        object.bytes = bytes;
        let asked = Asked::Store {
            oid,
            generation: object.generation,
        };
        let packet = packets::AskStoreObject {
            oid,
            serial,
            compression: encoded.compression,
            checksum: encoded.checksum,
            data: encoded.data,
            data_serial,
            ttid: self.ttid,
        };
        Ok(self.fan_out(pt, oid, asked, packet.into(), next_token))
    }

    /// readCurrent (§6.6): `AskCheckCurrentSerial` to every cell of the
    /// oid's partition; a conflict on it is reported with `checked`.
    pub fn check_current(
        &mut self,
        pt: &PartitionTable,
        oid: Oid,
        serial: Tid,
        next_token: &mut impl FnMut() -> Token,
    ) -> Result<Vec<Outgoing>, ClientError> {
        self.check_open()?;
        if self.objects.contains_key(&oid) {
            return Err(ClientError::InvalidUse(format!(
                "oid {oid} already stored or checked in this transaction"
            )));
        }
        self.order.push(oid);
        let object = ObjectState::new(pt.partition_of_oid(oid), serial, true);
        let asked = Asked::Check {
            oid,
            generation: object.generation,
        };
        self.objects.insert(oid, object);
        let packet = packets::AskCheckCurrentSerial {
            ttid: self.ttid,
            oid,
            serial,
        };
        Ok(self.fan_out(pt, oid, asked, packet.into(), next_token))
    }

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

    /// The answer to the request sent with `token`, or `None` when none
    /// will come (its connection closed, or it could not be sent): the node
    /// failed for this transaction. Returns false for a token not waiting
    /// for an answer (answered already), which changes nothing.
    pub fn on_answer(&mut self, token: Token, answer: Option<Packet>) -> bool {
        let Some(Pending { nid, asked }) = self.pending.remove(&token) else {
            return false;
        };
        if answer.is_none() {
            self.node_failed(nid);
        }
        match asked {
            Asked::Store { oid, generation } | Asked::Check { oid, generation } => {
                self.on_store_answer(nid, oid, generation, answer)
            }
            Asked::Relock { oid, generation } => {
                self.relocking.remove(&(oid, nid));
                self.on_relock_answer(nid, oid, generation, answer)
            }
            Asked::Vote { metadata } => self.on_vote_answer(nid, metadata, answer),
        }
        true
    }

    fn on_store_answer(&mut self, nid: NodeId, oid: Oid, generation: u32, answer: Option<Packet>) {
        let Some(object) = self.objects.get_mut(&oid) else {
            return;
        };
        if object.generation != generation {
            // Answer to a store superseded by a newer one (after a conflict).
            return;
        }
        object.waiting = object.waiting.saturating_sub(1);
        let conflict = match answer {
            None => None,
            Some(Packet::AnswerStoreObject(answer)) => Some(answer.conflict),
            Some(Packet::AnswerCheckCurrentSerial(answer)) => Some(answer.conflict),
            Some(Packet::Error(error)) => {
                self.fatal
                    .get_or_insert_with(|| format!("storage {nid} refused oid {oid}: {error}"));
                None
            }
            Some(other) => {
                self.fatal.get_or_insert_with(|| {
                    format!("storage {nid} answered {} for oid {oid}", other.name())
                });
                None
            }
        };
        match conflict {
            Some(None) => object.stored = true,
            Some(Some(Tid::ZERO)) => {
                object.stored = true;
                self.lockless
                    .entry(object.partition)
                    .or_default()
                    .insert(nid);
            }
            Some(Some(serial)) => {
                object.conflict = Some(object.conflict.map_or(serial, |c| c.max(serial)));
            }
            None => {}
        }
        self.settle(oid);
    }

    fn on_relock_answer(&mut self, nid: NodeId, oid: Oid, generation: u32, answer: Option<Packet>) {
        let conflict = match answer {
            None
            | Some(Packet::AnswerRelockObject(packets::AnswerRelockObject { conflict: None })) => {
                return
            }
            Some(Packet::AnswerRelockObject(packets::AnswerRelockObject {
                conflict: Some(conflict),
            })) => conflict,
            Some(other) => {
                self.fatal.get_or_insert_with(|| {
                    format!("storage {nid} answered {other:?} to relocking oid {oid}")
                });
                return;
            }
        };
        let Some(object) = self.objects.get_mut(&oid) else {
            return;
        };
        if object.generation != generation {
            return;
        }
        // The storage gave back and forgot our data: store again (§6.5).
        let data = match conflict.data {
            None => None,
            Some(stored) => match data::decode(
                Some(stored.compression),
                &stored.checksum,
                &stored.data,
                self.limits.max_object_size,
            ) {
                Ok(data) => data,
                Err(error) => {
                    self.fatal.get_or_insert_with(|| {
                        format!("storage {nid}: relocked data of oid {oid}: {error}")
                    });
                    return;
                }
            },
        };
        object.unresolved = true;
        self.conflicts.push(Conflict {
            oid,
            serial: conflict.serial,
            conflict_serial: conflict.conflict_tid,
            data,
            checked: object.checked,
        });
    }

    fn on_vote_answer(&mut self, nid: NodeId, metadata: bool, answer: Option<Packet>) {
        match answer {
            // The node failed: `vote_result` reports it to the master.
            None => {}
            Some(Packet::AnswerStoreTransaction(_)) => self.metadata_stored |= metadata,
            Some(Packet::AnswerVoteTransaction(_)) => {}
            Some(Packet::Error(error)) => {
                self.fatal
                    .get_or_insert_with(|| format!("storage {nid} refused the vote: {error}"));
            }
            Some(other) => {
                self.fatal.get_or_insert_with(|| {
                    format!("storage {nid} answered {} to the vote", other.name())
                });
            }
        }
    }

    /// `NotifyDeadlock(ttid, oid)` from storage `nid` (§6.5): unless voting,
    /// ask it to relock the oid, once while a relock of it is in flight.
    pub fn on_deadlock(
        &mut self,
        oid: Oid,
        nid: NodeId,
        next_token: &mut impl FnMut() -> Token,
    ) -> Option<Outgoing> {
        if self.phase != Phase::Open || self.nodes.get(&nid) != Some(&Involvement::Live) {
            return None;
        }
        let generation = self.objects.get(&oid)?.generation;
        if !self.relocking.insert((oid, nid)) {
            return None;
        }
        let packet = packets::AskRelockObject {
            ttid: self.ttid,
            oid,
        };
        let asked = Asked::Relock { oid, generation };
        Some(self.ask(nid, asked, packet.into(), next_token))
    }

    /// Starts `tpc_vote` (§6.8 steps 2–4), every store answered and no
    /// conflict left: `AskStoreTransaction` to the cells of the ttid's
    /// partition, `AskVoteTransaction` to the other nodes that took part.
    pub fn vote(
        &mut self,
        pt: &PartitionTable,
        meta: &TxnMeta,
        next_token: &mut impl FnMut() -> Token,
    ) -> Result<Vec<Outgoing>, ClientError> {
        self.check_open()?;
        if !self.pending.is_empty() {
            // A relock asked after the stores were answered still holds
            // the oid's lock in question: voting now would commit a store
            // whose lock the storage gave up, unchecked (a lost update).
            return Err(ClientError::InvalidUse(
                "vote while stores or relocks are unanswered".into(),
            ));
        }
        if let Some(oid) = self.order.iter().find(|oid| {
            self.objects
                .get(oid)
                .is_some_and(|object| object.unresolved)
        }) {
            return Err(ClientError::InvalidUse(format!(
                "conflict on oid {oid} reported but not resolved by a new store"
            )));
        }
        self.phase = Phase::Voting;
        let metadata_cells: Vec<NodeId> = pt
            .cells(pt.partition_of_tid(self.ttid))
            .iter()
            .map(|cell| cell.nid)
            .filter(|nid| !self.is_failed(*nid))
            .collect();
        if metadata_cells.is_empty() {
            return Err(self.failed("no storage available for the transaction metadata"));
        }
        let others: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(nid, involvement)| {
                **involvement == Involvement::Live && !metadata_cells.contains(nid)
            })
            .map(|(nid, _)| *nid)
            .collect();
        self.pack = meta.pack.clone();
        let store_transaction: Packet = packets::AskStoreTransaction {
            ttid: self.ttid,
            user: meta.user.clone(),
            description: meta.description.clone(),
            extension: meta.extension.clone(),
            oids: self.order.clone(),
            pack: meta.pack.clone(),
        }
        .into();
        let mut requests = Vec::with_capacity(metadata_cells.len() + others.len());
        for nid in metadata_cells {
            let asked = Asked::Vote { metadata: true };
            requests.push(self.ask(nid, asked, store_transaction.clone(), next_token));
        }
        for nid in others {
            let packet = packets::AskVoteTransaction { ttid: self.ttid }.into();
            requests.push(self.ask(nid, Asked::Vote { metadata: false }, packet, next_token));
        }
        Ok(requests)
    }

    /// The outcome of the vote once every storage answered (§6.8 step 6):
    /// with failed nodes, every lockless partition must still be locked on
    /// some other cell, and those of them `running` (per the master) are to
    /// be reported in `FailedVote`.
    pub fn vote_result(
        &self,
        pt: &PartitionTable,
        running: impl Fn(NodeId) -> bool,
    ) -> Result<Option<packets::FailedVote>, ClientError> {
        debug_assert!(self.pending.is_empty(), "vote result before every answer");
        if !self.metadata_stored {
            return Err(self.failed("no storage stored the transaction metadata"));
        }
        let failed = self.failed_nodes();
        if failed.is_empty() {
            return Ok(None);
        }
        for (partition, lockless) in &self.lockless {
            let locked = pt
                .cells(*partition)
                .iter()
                .any(|cell| !failed.contains(&cell.nid) && !lockless.contains(&cell.nid));
            if !locked {
                return Err(self.failed(format!("partition {partition} not fully write-locked")));
            }
        }
        let failed_nids: Vec<NodeId> = failed.into_iter().filter(|nid| running(*nid)).collect();
        Ok((!failed_nids.is_empty()).then_some(packets::FailedVote {
            ttid: self.ttid,
            failed_nids,
        }))
    }

    /// The vote succeeded (the master accepted the failed nodes, if any).
    pub fn voted(&mut self) {
        if self.phase == Phase::Voting {
            self.phase = Phase::Voted;
        }
    }

    /// `AskFinishTransaction` (§6.9 step 2): the oids to invalidate, the
    /// partitions of deleted and of checked oids, the pack order voted.
    pub fn finish_request(&self) -> Result<packets::AskFinishTransaction, ClientError> {
        if self.phase != Phase::Voted {
            return Err(ClientError::InvalidUse(format!(
                "transaction {} must be voted before finishing",
                self.ttid
            )));
        }
        let mut oids = Vec::new();
        let mut deleted = BTreeSet::new();
        let mut checked = BTreeSet::new();
        for oid in &self.order {
            let Some(object) = self.objects.get(oid) else {
                continue;
            };
            if object.checked {
                checked.insert(object.partition);
            } else if object.deleted {
                deleted.insert(object.partition);
            } else {
                oids.push(*oid);
            }
        }
        Ok(packets::AskFinishTransaction {
            ttid: self.ttid,
            oids,
            deleted: deleted.into_iter().collect(),
            checked: checked.into_iter().collect(),
            pack: self.pack.clone(),
        })
    }

    /// `AskFinishTransaction` was sent: the transaction must never be
    /// aborted from now on.
    pub fn finished(&mut self) {
        self.phase = Phase::Done;
    }

    /// `tpc_abort` (§6.11): where the aborts go; `None` once finishing or
    /// aborted already.
    pub fn abort(&mut self) -> Option<Abort> {
        if self.phase == Phase::Done {
            return None;
        }
        self.phase = Phase::Done;
        let live = self
            .nodes
            .iter()
            .filter(|(_, involvement)| **involvement == Involvement::Live)
            .map(|(nid, _)| *nid)
            .collect();
        Some(Abort {
            live,
            tried: self.nodes.keys().copied().collect(),
        })
    }

    /// Undo (§8.3) asks the undo serials of `oids` partition by partition.
    pub fn undo_groups(&self, pt: &PartitionTable, oids: &[Oid]) -> BTreeMap<Partition, Vec<Oid>> {
        let mut groups: BTreeMap<Partition, Vec<Oid>> = BTreeMap::new();
        for oid in oids {
            groups
                .entry(pt.partition_of_oid(*oid))
                .or_default()
                .push(*oid);
        }
        groups
    }
}

#[cfg(test)]
mod tests;
