//! The transaction a scripted client is committing: its steps, what each
//! sends and to whom, and what each answer does to it.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{Checksum, ErrorCode, NodeId, Oid, Packet, Tid};
use sha1::{Digest, Sha1};

use super::{Asked, Client, StorageLink};
use crate::record::{counter_value, Entry, Write};

/// Where a transaction stands; each step's requests are sent when its
/// turn comes and it moves on once they are all answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Step {
    Load,
    NewOid,
    Begin,
    Store,
    Vote,
    Finish,
}

/// The transaction in progress.
#[derive(Debug)]
pub(super) struct Txn {
    /// Tells its `AskBeginTransaction` from an earlier one's.
    pub(super) id: u64,
    pub(super) counter: Oid,
    pub(super) step: Step,
    /// Answers awaited for the current step (0: not sent yet).
    pub(super) awaiting: usize,
    /// The counter revision read and the value it gets.
    pub(super) base: Tid,
    pub(super) value: u64,
    pub(super) oid: Option<Oid>,
    pub(super) ttid: Option<Tid>,
    /// Seed and size of the new object's data.
    pub(super) seed: u64,
    pub(super) size: usize,
    /// Storages sent a store or a vote.
    pub(super) involved: BTreeSet<NodeId>,
}

impl Txn {
    pub(super) fn writes(&self) -> Vec<Write> {
        let mut writes = Vec::new();
        if let Some(oid) = self.oid {
            writes.push(Write::Payload {
                oid,
                seed: self.seed,
                size: self.size,
            });
        }
        writes.push(Write::Counter {
            oid: self.counter,
            value: self.value,
        });
        writes
    }
}

fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}

impl Client {
    /// Gives the transaction up: the master and the storages it involved
    /// are told; another starts a little later.
    pub(super) fn abort(&mut self) {
        let Some(txn) = self.txn.take() else { return };
        if let Some(ttid) = txn.ttid {
            if let Some((conn, _)) = self.master.ready() {
                let nids = txn.involved.iter().copied().collect();
                self.out.notify(conn, p::AbortTransaction { ttid, nids });
            }
            for nid in &txn.involved {
                if let Some(StorageLink::Ready(conn)) = self.storages.get(nid) {
                    let abort = p::AbortTransaction { ttid, nids: vec![] };
                    self.out.notify(*conn, abort);
                }
            }
        }
        self.end_txn(5, 100);
    }

    /// The transaction is over: its requests still out are forgotten
    /// (but its begin: the TTID it brings is aborted), the next one starts
    /// in `low_ms..=high_ms`.
    pub(super) fn end_txn(&mut self, low_ms: u64, high_ms: u64) {
        self.txn = None;
        let of_txn = |why: &Asked| {
            matches!(
                why,
                Asked::Load | Asked::NewOids | Asked::Store | Asked::Vote | Asked::Finish
            )
        };
        self.asked.retain(|_, why| !of_txn(why));
        self.next_txn_at = self.backoff(low_ms, high_ms);
    }

    /// Sends the requests of the transaction's current step.
    pub(super) fn drive(&mut self, master: ConnId) {
        let Some(txn) = &self.txn else { return };
        if txn.awaiting > 0 {
            return;
        }
        let Some(pt) = &self.pt else { return };
        let (step, counter, oid, ttid) = (txn.step, txn.counter, txn.oid, txn.ttid);
        let requests: Vec<(ConnId, Asked, Packet)> = match (step, oid, ttid) {
            (Step::Load, _, _) => {
                let Some(nid) = self
                    .cells(pt.partition_of_oid(counter), true)
                    .first()
                    .copied()
                else {
                    return self.abort();
                };
                let Some(conn) = self.storage(nid) else {
                    return;
                };
                let load = p::AskObject {
                    oid: counter,
                    at: None,
                    before: None,
                };
                vec![(conn, Asked::Load, load.into())]
            }
            (Step::NewOid, _, _) => {
                vec![(master, Asked::NewOids, p::AskNewOIDs { count: 1 }.into())]
            }
            (Step::Begin, _, _) => {
                let begin = p::AskBeginTransaction { tid: None };
                vec![(master, Asked::Begin(txn.id), begin.into())]
            }
            (Step::Store, Some(oid), Some(ttid)) => match self.stores(oid, ttid) {
                Some(stores) => stores,
                None => return,
            },
            (Step::Vote, Some(_), Some(ttid)) => match self.votes(ttid) {
                Some(votes) => votes,
                None => return,
            },
            (Step::Finish, Some(oid), Some(ttid)) => {
                let finish = p::AskFinishTransaction {
                    ttid,
                    oids: vec![oid, counter],
                    deleted: vec![],
                    checked: vec![],
                    pack: None,
                };
                vec![(master, Asked::Finish, finish.into())]
            }
            // Past its begin, a transaction has an oid and a TTID.
            _ => return self.abort(),
        };
        if requests.is_empty() {
            return self.abort();
        }
        if let Some(txn) = &mut self.txn {
            txn.awaiting = requests.len();
        }
        for (conn, why, packet) in requests {
            self.asked.send(&mut self.out, conn, why, packet);
        }
    }

    /// The stores of the transaction to every running cell of each oid's
    /// partition, once every such storage is connected.
    fn stores(&mut self, oid: Oid, ttid: Tid) -> Option<Vec<(ConnId, Asked, Packet)>> {
        let txn = self.txn.as_ref()?;
        let pt = self.pt.as_ref()?;
        let writes = txn.writes();
        let base = txn.base;
        let mut targets = Vec::new();
        for write in &writes {
            let cells = self.cells(pt.partition_of_oid(write.oid()), false);
            if cells.is_empty() {
                return Some(Vec::new());
            }
            targets.push((write, cells));
        }
        let nids: BTreeSet<NodeId> = targets
            .iter()
            .flat_map(|(_, cells)| cells.clone())
            .collect();
        let conns: BTreeMap<NodeId, ConnId> = self.all_storages(&nids)?.into_iter().collect();
        let mut requests = Vec::new();
        for (write, cells) in targets {
            let data = write.data();
            let store = p::AskStoreObject {
                oid: write.oid(),
                serial: if write.oid() == oid { Tid::ZERO } else { base },
                compression: 0,
                checksum: checksum(&data),
                data: Bytes::from(data),
                data_serial: None,
                ttid,
            };
            for nid in cells {
                requests.push((conns[&nid], Asked::Store, store.clone().into()));
            }
        }
        if let Some(txn) = &mut self.txn {
            txn.involved.extend(nids);
        }
        Some(requests)
    }

    /// The votes: with the metadata on the cells of the TTID's partition,
    /// without on the other storages written to.
    fn votes(&mut self, ttid: Tid) -> Option<Vec<(ConnId, Asked, Packet)>> {
        let txn = self.txn.as_ref()?;
        let pt = self.pt.as_ref()?;
        let metadata: BTreeSet<NodeId> = self
            .cells(pt.partition_of_tid(ttid), false)
            .into_iter()
            .collect();
        if metadata.is_empty() {
            return Some(Vec::new());
        }
        let oids: Vec<Oid> = txn.writes().iter().map(Write::oid).collect();
        let all: BTreeSet<NodeId> = txn.involved.union(&metadata).copied().collect();
        let conns = self.all_storages(&all)?;
        let requests = conns
            .into_iter()
            .map(|(nid, conn)| {
                let packet: Packet = if metadata.contains(&nid) {
                    p::AskStoreTransaction {
                        ttid,
                        user: Bytes::from_static(b"sim"),
                        description: Bytes::new(),
                        extension: Bytes::new(),
                        oids: oids.clone(),
                        pack: None,
                    }
                    .into()
                } else {
                    p::AskVoteTransaction { ttid }.into()
                };
                (conn, Asked::Vote, packet)
            })
            .collect();
        if let Some(txn) = &mut self.txn {
            txn.involved = all;
        }
        Some(requests)
    }

    /// An answer for the transaction's current step.
    pub(super) fn on_txn_answer(&mut self, why: Asked, packet: Packet) {
        let name = self.config.name.clone();
        let Some(txn) = &mut self.txn else { return };
        let done = match (why, packet) {
            (Asked::Load, Packet::AnswerObject(object)) => {
                let value = counter_value(&object.data)
                    .unwrap_or_else(|| panic!("{name}: {} is not a counter", object.oid));
                if let Some(own) = self.own_writes.get(&object.oid) {
                    assert!(
                        object.serial >= *own,
                        "{name}: read {} at {}, older than its own acknowledged write at {own}",
                        object.oid,
                        object.serial
                    );
                }
                txn.base = object.serial;
                txn.value = value + 1;
                true
            }
            (Asked::Load, Packet::Error(error)) if error.code == ErrorCode::OidDoesNotExist => {
                // The first transaction on this counter creates it.
                true
            }
            (Asked::NewOids, Packet::AnswerNewOIDs(answer)) => {
                // Counters are not new objects.
                txn.oid = answer
                    .oids
                    .into_iter()
                    .find(|oid| oid.0 >= self.config.counters);
                txn.oid.is_some()
            }
            (Asked::Begin(id), Packet::AnswerBeginTransaction(begin)) if id == txn.id => {
                txn.ttid = Some(begin.ttid);
                true
            }
            (Asked::Store, Packet::AnswerStoreObject(store)) => {
                // ZERO: stored on a replicating cell without a lock.
                if store.conflict.is_some_and(|serial| serial != Tid::ZERO) {
                    return self.abort();
                }
                true
            }
            (Asked::Vote, Packet::AnswerStoreTransaction(_) | Packet::AnswerVoteTransaction(_)) => {
                true
            }
            (Asked::Finish, Packet::AnswerTransactionFinished(finished)) => {
                let writes = txn.writes();
                self.acknowledge(finished.tid, &writes);
                self.record.push(Entry {
                    tid: Some(finished.tid),
                    writes,
                });
                return self.end_txn(0, 50);
            }
            // Refused: not committed.
            (Asked::Finish, _) => return self.end_txn(5, 100),
            _ => return self.abort(),
        };
        if !done {
            // Another round of the same step (all the oids were counters).
            txn.awaiting = 0;
            return;
        }
        txn.awaiting -= 1;
        if txn.awaiting == 0 {
            txn.step = match txn.step {
                Step::Load => Step::NewOid,
                Step::NewOid => Step::Begin,
                Step::Begin => Step::Store,
                Step::Store => Step::Vote,
                Step::Vote | Step::Finish => Step::Finish,
            };
        }
    }
}
