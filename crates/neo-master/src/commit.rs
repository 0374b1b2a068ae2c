//! The commit protocol, master side (architecture.md §6): clients' requests
//! (OIDs, TTIDs, `tpc_finish`, aborts, failed votes, final TIDs, pack
//! orders), the storages' service requests, and the completion of
//! transactions strictly in TID order.

use std::collections::BTreeSet;

use neo_cluster::UnixTime;
use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{ClusterState, ErrorCode, NodeId, NodeType, Packet, Tid};

use crate::master::{Asked, Master};
use crate::pack::{OrdersQuery, PackWait};
use crate::transactions::Finish;

/// Largest `AskNewOIDs` count served, so a client cannot make us allocate
/// without bound.
const MAX_NEW_OIDS: u32 = 10_000;

impl Master {
    pub(crate) fn on_client_packet(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        packet: Packet,
        now: UnixTime,
    ) {
        let read_only = self.peers.get(&conn).is_some_and(|peer| peer.read_only);
        match packet {
            Packet::AskLastTransaction(_) => {
                let tid = self.transactions.last_tid;
                self.answer(conn, msg_id, p::AnswerLastTransaction { tid });
            }
            Packet::AskNewOIDs(request) => {
                if read_only {
                    return self.read_only_refusal(conn, msg_id);
                }
                if request.count > MAX_NEW_OIDS {
                    let message = format!("at most {MAX_NEW_OIDS} oids at a time");
                    return self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
                }
                let oids = self.transactions.new_oids(request.count);
                self.answer(conn, msg_id, p::AnswerNewOIDs { oids });
            }
            Packet::AskBeginTransaction(request) => {
                if read_only {
                    return self.read_only_refusal(conn, msg_id);
                }
                if self.state == ClusterState::Stopping || !self.starting.is_empty() {
                    // Answered once storages are ready (or never, when stopping).
                    if self.transactions.queue_begin(conn, msg_id, request.tid) {
                        self.counters.begins_delayed.inc();
                    } else {
                        self.busy(conn, msg_id, "too many transactions waiting to begin");
                    }
                    return;
                }
                self.begin(conn, msg_id, request.tid, now);
            }
            Packet::AskFinishTransaction(request) => self.finish(conn, msg_id, request, now),
            Packet::AbortTransaction(request) => self.abort(conn, msg_id, request),
            Packet::FailedVote(request) => self.failed_vote(conn, msg_id, request),
            Packet::AskFinalTID(request) => match self.transactions.final_tid_query(request.ttid) {
                Some(answer) => self.answer(conn, msg_id, p::AnswerFinalTID { tid: answer }),
                None => {
                    if !self.transactions.wait_final_tid(request.ttid, conn, msg_id) {
                        self.busy(conn, msg_id, "too many AskFinalTID requests waiting");
                    }
                }
            },
            Packet::AskPackOrders(request) => self.client_pack_orders(conn, msg_id, request.min_id),
            Packet::WaitForPack(request) => match self.packs.wait(request.pack_id, conn, msg_id) {
                PackWait::Done => self.answer(conn, msg_id, p::WaitedForPack {}),
                PackWait::Held => {}
                PackWait::TooMany => self.busy(conn, msg_id, "too many WaitForPack requests"),
            },
            packet => {
                let message = format!("unexpected packet {} from a client", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
    }

    /// A client's `AskPackOrders` (§11.3): from memory, or collected from
    /// the storages when completed orders may be wanted.
    fn client_pack_orders(&mut self, conn: ConnId, msg_id: u32, min_id: Tid) {
        let readable: BTreeSet<NodeId> = self
            .readable_nodes()
            .into_iter()
            .filter(|nid| self.conn_of.contains_key(nid))
            .collect();
        match self.packs.query_orders(conn, msg_id, min_id, readable) {
            OrdersQuery::Answer(orders) => {
                self.answer(conn, msg_id, p::AnswerPackOrders { orders })
            }
            OrdersQuery::AskStorages(id, storages) => {
                for nid in storages {
                    self.ask_node(nid, Asked::OldPackOrders(id), p::AskPackOrders { min_id });
                }
            }
            OrdersQuery::TooMany => self.busy(conn, msg_id, "too many AskPackOrders in progress"),
        }
    }

    /// A request over one of the master's limits: `NOT_READY` ("retry
    /// later"), the connection stays open.
    fn busy(&mut self, conn: ConnId, msg_id: u32, message: &str) {
        self.counters.refused.inc();
        tracing::warn!(%conn, message, "refusing");
        self.answer(conn, msg_id, p::Error::new(ErrorCode::NotReady, message));
    }

    fn read_only_refusal(&mut self, conn: ConnId, msg_id: u32) {
        self.answer(
            conn,
            msg_id,
            p::Error::new(ErrorCode::ReadOnlyAccess, "read-only access"),
        );
    }

    fn begin(&mut self, conn: ConnId, msg_id: u32, tid: Option<Tid>, now: UnixTime) {
        if self.transactions.is_full() {
            return self.busy(conn, msg_id, "too many transactions in progress");
        }
        let ready = self.ready.clone();
        match self
            .transactions
            .begin(conn, tid, ready, now, self.pt.partitions())
        {
            Ok(ttid) => self.answer(conn, msg_id, p::AnswerBeginTransaction { ttid }),
            Err(message) => self.refuse(conn, msg_id, ErrorCode::ProtocolError, message),
        }
    }

    fn finish(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::AskFinishTransaction,
        now: UnixTime,
    ) {
        if let Some(pack) = &request.pack {
            let last_tid = self.transactions.last_tid;
            if pack.pack_tid == Tid::ZERO || pack.pack_tid > last_tid {
                return self.refuse(conn, msg_id, ErrorCode::ProtocolError, "invalid pack time");
            }
        }
        let partitions_count = self.pt.partitions();
        if let Some(bad) = request
            .deleted
            .iter()
            .chain(&request.checked)
            .find(|partition| **partition >= partitions_count)
        {
            let message = format!("partition {bad} out of range (0..{partitions_count})");
            return self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
        }
        let Some(begun) = self.transactions.get(request.ttid) else {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "unknown transaction",
            );
        };
        if begun.client_conn != conn || begun.finish.is_some() {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "unexpected tpc_finish",
            );
        }
        let failed = begun.failed.clone();
        let ready_at_begin = begun.ready_at_begin.clone();
        if !failed.is_empty()
            && !self
                .pt
                .is_operational(|nid| self.nodes.is_running(nid) && !failed.contains(&nid))
        {
            self.transactions.remove(request.ttid);
            for storage in ready_at_begin {
                self.notify_node(
                    storage,
                    p::AbortTransaction {
                        ttid: request.ttid,
                        nids: vec![],
                    },
                );
            }
            self.counters.incomplete.inc();
            let error = p::Error::new(
                ErrorCode::IncompleteTransaction,
                "transaction cannot complete without failed storages",
            );
            return self.answer(conn, msg_id, error);
        }
        for nid in &failed {
            // Disconnecting outdates their cells before the lock (§6.9).
            if let Some(storage_conn) = self.conn_of.get(nid).copied() {
                self.out.close(storage_conn);
                self.on_closed(storage_conn, now);
            }
        }
        let mut partitions: BTreeSet<u32> = request
            .oids
            .iter()
            .map(|oid| self.pt.partition_of_oid(*oid))
            .collect();
        partitions.extend(request.deleted.iter().copied());
        partitions.extend(request.checked.iter().copied());
        partitions.insert(self.pt.partition_of_tid(request.ttid));
        let involved: BTreeSet<NodeId> = partitions
            .iter()
            .flat_map(|partition| self.pt.cells(*partition).iter().map(|cell| cell.nid))
            .filter(|nid| ready_at_begin.contains(nid) && self.conn_of.contains_key(nid))
            .collect();
        let finish = Finish {
            msg_id,
            oids: request.oids,
            awaiting: involved.clone(),
            involved: involved.clone(),
        };
        let tid = self
            .transactions
            .prepare(request.ttid, finish, now, self.pt.partitions());
        let pack_approved = match request.pack {
            Some(pack) => {
                self.counters.pack_orders.inc();
                self.packs.new_order(tid, pack)
            }
            None => false,
        };
        for storage in involved {
            let lock = p::AskLockInformation {
                ttid: request.ttid,
                tid,
                pack_approved,
            };
            self.ask_node(storage, Asked::Lock(request.ttid), lock);
        }
    }

    fn abort(&mut self, conn: ConnId, msg_id: u32, request: p::AbortTransaction) {
        let Some(begun) = self.transactions.get(request.ttid) else {
            return; // Already gone: aborts may cross.
        };
        if begun.client_conn != conn || begun.finish.is_some() {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "cannot abort a finishing transaction",
            );
        }
        self.transactions.remove(request.ttid);
        self.counters.aborts.inc();
        let mut storages: BTreeSet<NodeId> = request
            .nids
            .into_iter()
            .filter(|nid| self.ready.contains(nid))
            .collect();
        storages.extend(self.transactions.take_watchers(request.ttid));
        for storage in storages {
            self.notify_node(
                storage,
                p::AbortTransaction {
                    ttid: request.ttid,
                    nids: vec![],
                },
            );
        }
        self.finished_for_replication(request.ttid);
    }

    fn failed_vote(&mut self, conn: ConnId, msg_id: u32, request: p::FailedVote) {
        let Some(begun) = self.transactions.get(request.ttid) else {
            return self.refuse(
                conn,
                msg_id,
                ErrorCode::ProtocolError,
                "unknown transaction",
            );
        };
        let failed: BTreeSet<NodeId> = request
            .failed_nids
            .into_iter()
            .filter(|nid| begun.ready_at_begin.contains(nid))
            .collect();
        if !self
            .pt
            .is_operational(|nid| self.nodes.is_running(nid) && !failed.contains(&nid))
        {
            let error = p::Error::new(ErrorCode::IncompleteTransaction, "not enough storages");
            return self.answer(conn, msg_id, error);
        }
        self.transactions.add_failed(request.ttid, failed);
        self.answer(conn, msg_id, p::Error::ack(""));
    }

    pub(crate) fn on_storage_packet(
        &mut self,
        conn: ConnId,
        nid: NodeId,
        msg_id: u32,
        packet: Packet,
        now: UnixTime,
    ) {
        match packet {
            Packet::NotifyReady(_) => {
                if self.starting.remove(&nid) {
                    self.ready.insert(nid);
                    let (approved, rejected) = self.packs.signed();
                    if !approved.is_empty() || !rejected.is_empty() {
                        self.notify(conn, p::NotifyPackSigned { approved, rejected });
                    }
                }
                if self.starting.is_empty() && self.state == ClusterState::Running {
                    for (conn, msg_id, tid) in self.transactions.take_queued_begins() {
                        self.begin(conn, msg_id, tid, now);
                    }
                }
            }
            Packet::AskUnfinishedTransactions(request) => {
                self.unfinished_transactions(conn, nid, msg_id, &request.partitions)
            }
            Packet::AskPackOrders(request) => {
                let orders = self.packs.first_approved(request.min_id);
                self.answer(conn, msg_id, p::AnswerPackOrders { orders })
            }
            Packet::NotifyPackCompleted(completed) => {
                tracing::debug!(%nid, pack_id = %completed.pack_id, "pack completed");
                self.packs.set_reported(nid, completed.pack_id);
                self.update_completed_pack();
            }
            Packet::NotifyReplicationDone(done) => self.replication_done(conn, nid, msg_id, &done),
            Packet::NotifyPartitionCorrupted(corrupted) => {
                self.partition_corrupted(conn, nid, msg_id, corrupted)
            }
            Packet::AskLastTransaction(_) => {
                let tid = self.transactions.last_tid;
                self.answer(conn, msg_id, p::AnswerLastTransaction { tid });
            }
            packet => {
                let message = format!("unexpected packet {} from a storage", packet.name());
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        }
    }

    /// Completes, strictly in TID order, the transactions every involved
    /// storage has locked (§6.9).
    pub(crate) fn commit_ready_transactions(&mut self) {
        while let Some(done) = self.transactions.pop_committable() {
            tracing::debug!(ttid = %done.ttid, tid = %done.tid, "transaction committed");
            self.counters.commits.inc();
            self.first_tid = self.first_tid.min(done.tid);
            self.answer(
                done.client_conn,
                done.msg_id,
                p::AnswerTransactionFinished {
                    ttid: done.ttid,
                    tid: done.tid,
                },
            );
            for (_, node_type, conn) in self.identified() {
                if node_type == NodeType::Client && conn != done.client_conn {
                    self.notify(
                        conn,
                        p::InvalidateObjects {
                            tid: done.tid,
                            oids: done.oids.clone(),
                        },
                    );
                }
            }
            for storage in &done.involved {
                self.notify_node(*storage, p::NotifyUnlockInformation { ttid: done.ttid });
            }
            if self.packs.is_approved(done.tid) {
                let ready: Vec<NodeId> = self.ready.iter().copied().collect();
                for storage in ready {
                    self.notify_node(
                        storage,
                        p::NotifyPackSigned {
                            approved: vec![done.tid],
                            rejected: vec![],
                        },
                    );
                }
            }
            for storage in self.transactions.take_watchers(done.ttid) {
                self.notify_node(
                    storage,
                    p::NotifyTransactionFinished {
                        ttid: done.ttid,
                        max_tid: done.tid,
                    },
                );
            }
            for (conn, msg_id) in done.final_tid_waiters {
                self.answer(
                    conn,
                    msg_id,
                    p::AnswerFinalTID {
                        tid: Some(done.tid),
                    },
                );
            }
        }
    }

    /// Answers the `WaitForPack` requests of orders the whole cluster
    /// completed (§11.3 step 8).
    pub(crate) fn update_completed_pack(&mut self) {
        let readable = self.readable_nodes();
        for (conn, msg_id) in self.packs.update_completed(&readable) {
            self.answer(conn, msg_id, p::WaitedForPack {});
        }
    }

    /// A transaction some storage waited for (before replicating) is over.
    pub(crate) fn finished_for_replication(&mut self, ttid: Tid) {
        let max_tid = self.transactions.last_tid;
        for storage in self.transactions.take_watchers(ttid) {
            self.notify_node(storage, p::NotifyTransactionFinished { ttid, max_tid });
        }
    }
}
