//! The scripted client node: a `Node` that commits transactions by the
//! protocol, one at a time, and records what was acknowledged to it (the
//! real client library is async and cannot run inside the simulation).
//!
//! Each transaction reads one of the shared counters from a readable cell
//! (creating it at 0 if it does not exist yet), asks a new oid and a
//! TTID, stores a new object with deterministic data and the counter
//! incremented (based on the revision read, so concurrent clients
//! conflict) to every cell of each oid's partition, votes
//! (`AskStoreTransaction` on the cells of the TTID's partition,
//! `AskVoteTransaction` on the other storages written to) and finishes
//! with the master. A conflict, a deadlock notice, an error or a lost
//! connection before `tpc_finish` aborts it and a new one starts a little
//! later. A master lost during `tpc_finish` leaves the outcome unknown:
//! once connected again, the client asks `AskFinalTID` of the master, and
//! of a storage if the master no longer knows.
//!
//! It panics on what it can see break: an acknowledged TID not above the
//! previous one, a read older than its own acknowledged write, a master
//! whose last TID is below one it acknowledged.

mod txn;

use std::collections::{BTreeMap, BTreeSet};

use neo_cluster::{NodeTable, PartitionTable};
use neo_net::{ConnId, Input, Node, Outbox, Output, Requests, Token};
use neo_proto::packets as p;
use neo_proto::{Address, Map, NodeId, NodeType, Oid, Packet, Tid, UnixTime};

use super::rng::Rng;
use super::session::{Event, MasterLink};
use crate::record::{Entry, Write};
use txn::{Step, Txn};

/// Why the client asked something.
#[derive(Debug, Clone, Copy)]
enum Asked {
    IdentifyStorage(NodeId),
    LastTransaction,
    Load,
    NewOids,
    /// For the transaction of this id.
    Begin(u64),
    Store,
    Vote,
    Finish,
    FinalTid,
}

/// A connection to a storage.
#[derive(Debug, Clone, Copy)]
enum StorageLink {
    Connecting(Token),
    Identifying(ConnId),
    Ready(ConnId),
}

/// A transaction whose `tpc_finish` had no answer.
#[derive(Debug)]
struct Doubt {
    ttid: Tid,
    /// Its entry in the record.
    entry: usize,
    /// The master did not know: a storage is asked.
    ask_storage: bool,
    sent: bool,
}

/// How a scripted client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name in the trace.
    pub name: String,
    /// Cluster name.
    pub cluster: String,
    /// The master.
    pub master: Address,
    /// Counters are oids `0..counters` (the master hands out oids from 1;
    /// those that are counters are skipped).
    pub counters: u64,
    /// No transaction begins from then on.
    pub stop_at: UnixTime,
}

/// The scripted client.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    rng: Rng,
    now: UnixTime,
    out: Outbox,
    asked: Requests<Asked>,
    master: MasterLink,
    id_timestamp: Option<f64>,
    nodes: NodeTable,
    pt: Option<PartitionTable>,
    storages: BTreeMap<NodeId, StorageLink>,
    txn: Option<Txn>,
    txn_id: u64,
    /// When the next transaction (or question about one in doubt) may go.
    next_txn_at: UnixTime,
    doubts: Vec<Doubt>,
    /// Every transaction acknowledged or left in doubt, in that order.
    record: Vec<Entry>,
    last_acked: Option<Tid>,
    /// The last acknowledged write of each counter: reads must see it.
    own_writes: BTreeMap<Oid, Tid>,
    last_ack_at: Option<UnixTime>,
}

impl Client {
    /// A client whose choices come from `rng`.
    pub fn new(config: ClientConfig, rng: Rng) -> Client {
        let master = MasterLink::new(
            config.master.clone(),
            config.cluster.clone(),
            NodeType::Client,
        );
        Client {
            config,
            rng,
            now: 0.0,
            out: Outbox::default(),
            asked: Requests::default(),
            master,
            id_timestamp: None,
            nodes: NodeTable::new(),
            pt: None,
            storages: BTreeMap::new(),
            txn: None,
            txn_id: 0,
            next_txn_at: 0.0,
            doubts: Vec::new(),
            record: Vec::new(),
            last_acked: None,
            own_writes: BTreeMap::new(),
            last_ack_at: None,
        }
    }

    /// The transactions acknowledged or left in doubt so far, with the one
    /// in `tpc_finish` (if any) as in doubt: what survives a crash.
    pub fn record(&self) -> Vec<Entry> {
        let mut record = self.record.clone();
        if let Some(txn) = self.txn.as_ref().filter(|txn| txn.step == Step::Finish) {
            record.push(Entry {
                tid: None,
                writes: txn.writes(),
            });
        }
        record
    }

    /// When a transaction was last acknowledged.
    pub fn last_ack_at(&self) -> Option<UnixTime> {
        self.last_ack_at
    }

    fn fresh(&mut self) -> Token {
        self.asked.fresh()
    }

    fn backoff(&mut self, low_ms: u64, high_ms: u64) -> UnixTime {
        self.now + self.rng.range(low_ms, high_ms) as f64 / 1000.0
    }

    fn on_master_lost(&mut self) {
        if let Some(txn) = self.txn.take() {
            match (txn.step, txn.ttid) {
                (Step::Finish, Some(ttid)) if txn.awaiting > 0 => {
                    self.doubts.push(Doubt {
                        ttid,
                        entry: self.record.len(),
                        ask_storage: false,
                        sent: false,
                    });
                    self.record.push(Entry {
                        tid: None,
                        writes: txn.writes(),
                    });
                }
                // The master aborts it on the storages (or they drop it
                // when they lose the master).
                _ => {}
            }
        }
        for doubt in &mut self.doubts {
            doubt.sent = false;
        }
        // A new identification makes a new node: start afresh.
        for link in std::mem::take(&mut self.storages).into_values() {
            if let StorageLink::Identifying(conn) | StorageLink::Ready(conn) = link {
                self.out.close(conn);
            }
        }
        self.asked.clear();
        self.id_timestamp = None;
        self.nodes = NodeTable::new();
        self.pt = None;
        let retry_at = self.backoff(200, 1000);
        self.master.lose(retry_at);
    }

    /// Connection `conn` to storage `nid` (or its attempt) is gone.
    fn on_storage_lost(&mut self, nid: NodeId, conn: Option<ConnId>) {
        self.storages.remove(&nid);
        let unanswered = conn.map(|conn| self.asked.closed(conn)).unwrap_or_default();
        let waited = |what: fn(&Asked) -> bool| unanswered.iter().any(what);
        let hit = self.txn.as_ref().is_some_and(|txn| {
            txn.step < Step::Finish
                // It dropped what it had of the transaction.
                && (txn.involved.contains(&nid)
                    || waited(|why| matches!(why, Asked::Load | Asked::Store | Asked::Vote))
                    // The step waits for this connection to send.
                    || (conn.is_none() && txn.awaiting == 0))
        });
        if hit {
            self.abort();
        }
        let doubt_hit = waited(|why| matches!(why, Asked::FinalTid)) || conn.is_none();
        if doubt_hit && self.doubts.first().is_some_and(|doubt| doubt.ask_storage) {
            self.doubts[0].sent = false;
            self.next_txn_at = self.backoff(200, 500);
        }
    }

    fn acknowledge(&mut self, tid: Tid, writes: &[Write]) {
        if let Some(last) = self.last_acked {
            assert!(
                tid > last,
                "{}: acknowledged {tid} after {last}: TIDs must increase",
                self.config.name
            );
        }
        self.last_acked = Some(tid);
        self.last_ack_at = Some(self.now);
        for write in writes {
            if let Write::Counter { oid, .. } = write {
                self.own_writes.insert(*oid, tid);
            }
        }
    }

    /// The running storages holding cells of `partition`, readable ones
    /// only if `readable`.
    fn cells(&self, partition: u32, readable: bool) -> Vec<NodeId> {
        let Some(pt) = &self.pt else {
            return Vec::new();
        };
        pt.cells(partition)
            .iter()
            .filter(|cell| !readable || pt.readable_cells(partition).any(|r| r.nid == cell.nid))
            .map(|cell| cell.nid)
            .filter(|nid| self.nodes.is_running(*nid))
            .collect()
    }

    /// The identified connection to storage `nid`, or `None` while it is
    /// being made (started here if needed).
    fn storage(&mut self, nid: NodeId) -> Option<ConnId> {
        match self.storages.get(&nid) {
            Some(StorageLink::Ready(conn)) => return Some(*conn),
            Some(_) => return None,
            None => {}
        }
        let address = self.nodes.get(nid)?.address.clone()?;
        let token = self.fresh();
        self.out.connect(token, address);
        self.storages.insert(nid, StorageLink::Connecting(token));
        None
    }

    /// Identified connections to every storage of `nids`, or `None` while
    /// some are being made.
    fn all_storages(&mut self, nids: &BTreeSet<NodeId>) -> Option<Vec<(NodeId, ConnId)>> {
        let links: Vec<(NodeId, Option<ConnId>)> =
            nids.iter().map(|nid| (*nid, self.storage(*nid))).collect();
        links
            .into_iter()
            .map(|(nid, conn)| conn.map(|conn| (nid, conn)))
            .collect()
    }

    /// Does what comes next, if nothing is awaited.
    fn advance(&mut self) {
        self.master
            .poll(self.now, || self.asked.fresh(), &mut self.out);
        let Some((master, _)) = self.master.ready() else {
            return;
        };
        if self.pt.is_none() || self.id_timestamp.is_none() {
            return;
        }
        if !self.doubts.is_empty() {
            if self.now >= self.next_txn_at {
                self.resolve(master);
            }
            return;
        }
        if self.txn.is_none() {
            if self.now >= self.config.stop_at || self.now < self.next_txn_at {
                return;
            }
            self.txn_id += 1;
            self.txn = Some(Txn {
                id: self.txn_id,
                counter: Oid(self.rng.range(0, self.config.counters - 1)),
                step: Step::Load,
                awaiting: 0,
                base: Tid::ZERO,
                value: 0,
                oid: None,
                ttid: None,
                seed: self.rng.next(),
                size: self.rng.range(50, 2000) as usize,
                involved: BTreeSet::new(),
            });
        }
        self.drive(master);
    }

    /// Asks what became of the first transaction in doubt.
    fn resolve(&mut self, master: ConnId) {
        let Some(doubt) = self.doubts.first() else {
            return;
        };
        if doubt.sent {
            return;
        }
        let (ttid, ask_storage) = (doubt.ttid, doubt.ask_storage);
        let conn = if ask_storage {
            let Some(pt) = &self.pt else { return };
            let Some(nid) = self.cells(pt.partition_of_tid(ttid), true).first().copied() else {
                return;
            };
            match self.storage(nid) {
                Some(conn) => conn,
                None => return,
            }
        } else {
            master
        };
        self.doubts[0].sent = true;
        self.asked.send(
            &mut self.out,
            conn,
            Asked::FinalTid,
            p::AskFinalTID { ttid },
        );
    }

    /// The answer about the first transaction in doubt: `Some` if it was
    /// committed with that TID, `None` if not; `Some(MAX)` from the master
    /// means it forgot, and a storage is asked.
    fn on_final_tid(&mut self, tid: Option<Tid>) {
        if self.doubts.is_empty() {
            return;
        }
        match tid {
            Some(Tid::MAX) if !self.doubts[0].ask_storage => {
                self.doubts[0].ask_storage = true;
                self.doubts[0].sent = false;
            }
            Some(tid) => {
                let doubt = self.doubts.remove(0);
                let writes = self.record[doubt.entry].writes.clone();
                self.acknowledge(tid, &writes);
                self.record[doubt.entry].tid = Some(tid);
            }
            // Not committed: it stays in doubt in the record, which claims
            // nothing about it.
            None => {
                self.doubts.remove(0);
            }
        }
    }
}

impl Client {
    fn on_master_packet(&mut self, packet: Packet, nid: NodeId) {
        match packet {
            Packet::NotifyNodeInformation(notification) => {
                for info in &notification.nodes {
                    if info.nid == Some(nid) && info.id_timestamp.is_some() {
                        self.id_timestamp = info.id_timestamp;
                    }
                    self.nodes.apply(info);
                }
            }
            Packet::SendPartitionTable(table) => {
                self.pt = table.ptid.and_then(|ptid| {
                    PartitionTable::from_rows(Some(ptid), table.num_replicas, &table.rows).ok()
                });
            }
            Packet::NotifyPartitionChanges(changes) => {
                if let Some(pt) = &mut self.pt {
                    if let Err(error) =
                        pt.apply_changes(changes.ptid, changes.num_replicas, &changes.changes)
                    {
                        panic!(
                            "{}: the master's table changes do not apply: {error}",
                            self.config.name
                        );
                    }
                }
            }
            Packet::InvalidateObjects(invalidation) => self.check_last_tid(invalidation.tid),
            _ => {}
        }
    }

    /// The master says `tid` is its last committed TID.
    fn check_last_tid(&self, tid: Tid) {
        if let Some(acked) = self.last_acked {
            assert!(
                tid >= acked,
                "{}: the master's last TID {tid} is below {acked}, which it acknowledged",
                self.config.name
            );
        }
    }

    fn on_answer(&mut self, conn: ConnId, why: Asked, packet: Packet) {
        match (why, packet) {
            (Asked::IdentifyStorage(nid), Packet::AcceptIdentification(accept))
                if accept.node_type == NodeType::Storage =>
            {
                self.storages.insert(nid, StorageLink::Ready(conn));
            }
            (Asked::IdentifyStorage(nid), _) => {
                self.out.close(conn);
                self.on_storage_lost(nid, Some(conn));
            }
            (Asked::LastTransaction, Packet::AnswerLastTransaction(last)) => {
                self.check_last_tid(last.tid)
            }
            (Asked::FinalTid, Packet::AnswerFinalTID(answer)) => self.on_final_tid(answer.tid),
            (Asked::FinalTid, _) => {
                if let Some(doubt) = self.doubts.first_mut() {
                    doubt.sent = false;
                }
                self.next_txn_at = self.backoff(200, 500);
            }
            (Asked::Begin(id), Packet::AnswerBeginTransaction(begin))
                if self.txn.as_ref().is_none_or(|txn| txn.id != id) =>
            {
                // Begun for a transaction given up meanwhile.
                let abort = p::AbortTransaction {
                    ttid: begin.ttid,
                    nids: vec![],
                };
                self.out.notify(conn, abort);
            }
            (why, packet) => self.on_txn_answer(why, packet),
        }
    }

    fn on_connected(&mut self, conn: ConnId, token: Token, id_timestamp: Option<f64>, nid: NodeId) {
        let storage = self
            .storages
            .iter()
            .find(|(_, link)| matches!(link, StorageLink::Connecting(t) if *t == token))
            .map(|(storage, _)| *storage);
        let Some(storage) = storage else {
            return self.out.close(conn);
        };
        self.storages
            .insert(storage, StorageLink::Identifying(conn));
        let request = p::RequestIdentification {
            node_type: NodeType::Client,
            nid: Some(nid),
            address: None,
            cluster: self.config.cluster.clone(),
            id_timestamp,
            extra: Map::new(),
        };
        self.asked.send(
            &mut self.out,
            conn,
            Asked::IdentifyStorage(storage),
            request,
        );
    }

    fn storage_of(&self, conn: ConnId) -> Option<NodeId> {
        self.storages
            .iter()
            .find(|(_, link)| matches!(link, StorageLink::Identifying(c) | StorageLink::Ready(c) if *c == conn))
            .map(|(nid, _)| *nid)
    }
}

impl Node for Client {
    fn handle(&mut self, input: Input, now: UnixTime) {
        self.now = now;
        match self
            .master
            .handle(&input, || self.asked.fresh(), &mut self.out)
        {
            Event::Handled => {}
            Event::Identified { conn, .. } => {
                self.asked.send(
                    &mut self.out,
                    conn,
                    Asked::LastTransaction,
                    p::AskLastTransaction {},
                );
            }
            Event::Lost => self.on_master_lost(),
            Event::Other => self.on_input(input),
        }
        self.advance();
    }

    fn poll_output(&mut self) -> Vec<Output> {
        self.out.take()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        let next_txn = (self.txn.is_none()
            && self.master.ready().is_some()
            && (!self.doubts.is_empty() || self.next_txn_at < self.config.stop_at)
            && self.next_txn_at > self.now)
            .then_some(self.next_txn_at);
        [self.master.deadline(), next_txn]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
    }
}

impl Client {
    /// What is not the master link's business.
    fn on_input(&mut self, input: Input) {
        let master = self.master.ready();
        match input {
            Input::Connected { conn, token } => match master {
                Some((_, nid)) => self.on_connected(conn, token, self.id_timestamp, nid),
                None => self.out.close(conn),
            },
            Input::ConnectFailed { token } => {
                let storage = self
                    .storages
                    .iter()
                    .find(|(_, link)| matches!(link, StorageLink::Connecting(t) if *t == token))
                    .map(|(nid, _)| *nid);
                if let Some(nid) = storage {
                    self.on_storage_lost(nid, None);
                }
            }
            Input::Packet { conn, packet, .. } => match master {
                Some((master, nid)) if master == conn => self.on_master_packet(packet, nid),
                _ => {
                    if let Packet::NotifyDeadlock(deadlock) = packet {
                        let voting = self.txn.as_ref().is_some_and(|txn| {
                            txn.ttid == Some(deadlock.ttid) && txn.step < Step::Vote
                        });
                        // Simpler than relocking: start again.
                        if voting {
                            self.abort();
                        }
                    }
                }
            },
            Input::Answer {
                conn,
                token,
                packet,
            } => {
                if let Some(why) = self.asked.answered(conn, token) {
                    self.on_answer(conn, why, packet);
                }
            }
            Input::Closed { conn } => {
                if let Some(nid) = self.storage_of(conn) {
                    self.on_storage_lost(nid, Some(conn));
                }
            }
            Input::Accepted { conn } => self.out.close(conn),
            // It asks nothing whose answer comes in parts.
            Input::Start | Input::Timeout | Input::AnswerPart { .. } => {}
        }
    }
}
