//! The commit protocol, storage side (architecture.md §6.4–§6.11):
//! stores and their locks, readCurrent checks, relocks (deadlock
//! avoidance), the vote, the master's lock and unlock, aborts, and the
//! requests that wait for a lock or an unlock.

use bytes::Bytes;
use neo_net::ConnId;
use neo_proto::packets::{self as p, RelockConflict, StoredData};
use std::collections::BTreeSet;

use neo_proto::{Checksum, ErrorCode, NodeId, Oid, Packet, Partition, Tid};

use super::locks::{LockOutcome, Stored};
use super::replication::LockMode;
use super::{checksum, Handled, Storage, DEFERRED_COMMIT_SECONDS};
use crate::backend::{Error, ObjectRow, TransactionMeta};

/// Largest oid list of a vote: NEO's MySQL backend stores it in a
/// MEDIUMBLOB, and every backend enforces the same limit.
const MAX_VOTED_OIDS: usize = (1 << 21) - 1;

/// A request that waits for a lock or an unlock.
#[derive(Debug)]
pub(super) enum Waiting {
    Store(ConnId, u32, p::AskStoreObject),
    Check(ConnId, u32, p::AskCheckCurrentSerial),
    Relock(ConnId, u32, p::AskRelockObject),
    Load(ConnId, u32, p::AskObject),
    UndoSerials(ConnId, u32, p::AskObjectUndoSerial),
    /// A request of [`Storage::read`] (see [`Storage::read_waits`]).
    Read(ConnId, u32, Packet),
    /// A fetch or a check of another storage, which must not miss a
    /// transaction being committed.
    Storage(ConnId, u32, Packet),
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
            Waiting::Load(..) | Waiting::Read(..) | Waiting::Storage(..) => Tid::ZERO,
        }
    }

    /// Who asked, to answer.
    pub(super) fn sender(&self) -> (ConnId, u32) {
        match self {
            Waiting::Store(conn, msg_id, _)
            | Waiting::Check(conn, msg_id, _)
            | Waiting::Relock(conn, msg_id, _)
            | Waiting::Load(conn, msg_id, _)
            | Waiting::UndoSerials(conn, msg_id, _)
            | Waiting::Read(conn, msg_id, _)
            | Waiting::Storage(conn, msg_id, _) => (*conn, *msg_id),
        }
    }

    /// Object data the request holds in memory.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Waiting::Store(_, _, store) => store.data.len(),
            _ => 0,
        }
    }
}

impl Storage {
    pub(super) fn on_client_packet(
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
        self.counters.votes.inc();
        if let Some(transaction) = self.locks.transactions.get_mut(&ttid) {
            transaction.voted = true;
            transaction.has_metadata |= meta.is_some();
        }
        // Transactions waiting for this one's locks may proceed or deadlock-check again.
        self.retry_waiting()
    }

    /// Takes the lock for a store or check; `None` when the request waits.
    fn try_lock(&mut self, ttid: Tid, serial: Tid, oid: Oid) -> Result<Option<LockOutcome>, Error> {
        let replicating = self.lock_mode(oid) == LockMode::Lockless;
        let mut last = Ok(None);
        let (outcome, deadlock) = {
            let db = &mut self.db;
            self.locks.lock(ttid, serial, oid, replicating, || {
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

    pub(super) fn store(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::AskStoreObject,
    ) -> Handled {
        if self.lock_mode(request.oid) == LockMode::Unassigned {
            // Not this node's (§6.4): another cell takes care of it.
            let conflict = Some(Tid::ZERO);
            self.answer(conn, msg_id, p::AnswerStoreObject { conflict });
            return Ok(());
        }
        let Some(outcome) = self.try_lock(request.ttid, request.serial, request.oid)? else {
            self.wait(Waiting::Store(conn, msg_id, request));
            return Ok(());
        };
        let conflict = match outcome {
            LockOutcome::Conflict(serial) => {
                self.counters.conflicts.inc();
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
        self.counters.stores.inc();
        self.answer(conn, msg_id, p::AnswerStoreObject { conflict });
        Ok(())
    }

    pub(super) fn check_current(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::AskCheckCurrentSerial,
    ) -> Handled {
        if self.lock_mode(request.oid) == LockMode::Unassigned {
            return self.answer_check(conn, msg_id, Some(Tid::ZERO));
        }
        let Some(outcome) = self.try_lock(request.ttid, request.serial, request.oid)? else {
            self.wait(Waiting::Check(conn, msg_id, request));
            return Ok(());
        };
        let conflict = match outcome {
            LockOutcome::Conflict(serial) => {
                self.counters.conflicts.inc();
                return self.answer_check(conn, msg_id, Some(serial));
            }
            LockOutcome::Locked => None,
            // Recorded too: once the partition is replicated, it locks as
            // a checked oid (§9.1 step 9).
            _ => Some(Tid::ZERO),
        };
        if let Some(transaction) = self.locks.transactions.get_mut(&request.ttid) {
            transaction.stored.entry(request.oid).or_insert(Stored {
                serial: request.serial,
                data_id: None,
                data_serial: None,
                checked: true,
            });
        }
        self.answer_check(conn, msg_id, conflict)
    }

    fn answer_check(&mut self, conn: ConnId, msg_id: u32, conflict: Option<Tid>) -> Handled {
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
            self.wait(Waiting::Relock(conn, msg_id, request));
            return Ok(());
        };
        let conflict = match outcome {
            LockOutcome::Conflict(conflict_tid) => {
                self.counters.conflicts.inc();
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
    pub(super) fn retry_waiting(&mut self) -> Handled {
        let mut waiting = self.take_waiting();
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
                Waiting::Storage(conn, msg_id, packet) => {
                    (conn, msg_id, self.on_storage_packet(conn, msg_id, packet))
                }
            };
            self.settle(conn, msg_id, result)?;
        }
        Ok(())
    }

    pub(super) fn lock_transaction(
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

    pub(super) fn unlock_transaction(&mut self, ttid: Tid) -> Handled {
        let Some(tid) = self.locks.locked_tid(ttid) else {
            return Ok(());
        };
        self.db.unlock_transaction(ttid, tid)?;
        self.counters.commits.inc();
        // Committed with the next vote or lock, or within a second.
        self.commit_due
            .get_or_insert(self.now + DEFERRED_COMMIT_SECONDS);
        self.released(ttid)
    }

    /// `ttid` is over: its locks go, what waited for them goes on.
    fn released(&mut self, ttid: Tid) -> Handled {
        self.locks.release(ttid);
        if self.replicator.has_replicated() {
            // Its lockless writes may have been the last of a partition.
            self.announce_replicated()?;
        }
        self.retry_waiting()?;
        self.start_check()
    }

    /// A write accepted without a lock while its partition was replicated
    /// locks now as a store would (§9.1 step 9); a conflicting one is
    /// dropped: the cells that locked it told its client.
    pub(super) fn relock_replicated(&mut self, ttid: Tid, oid: Oid, serial: Tid) -> Handled {
        match self.try_lock(ttid, serial, oid)? {
            Some(LockOutcome::Locked) => {}
            Some(LockOutcome::Conflict(_)) => {
                let stored = self
                    .locks
                    .transactions
                    .get_mut(&ttid)
                    .and_then(|t| t.stored.remove(&oid));
                if let Some(data_id) = stored.and_then(|s| s.data_id) {
                    self.db.release_data(&[data_id], true)?;
                }
            }
            other => tracing::warn!(%ttid, %oid, ?other, "a replicated write did not lock"),
        }
        Ok(())
    }

    /// Own cells of `partitions` are gone: transactions in progress forget
    /// their writes there (the rows voted stay until the partition's data
    /// is deleted).
    pub(super) fn forget_partitions(&mut self, partitions: &BTreeSet<Partition>) -> Handled {
        let Some(pt) = self.db.partition_table() else {
            return Ok(());
        };
        if partitions.is_empty() {
            return Ok(());
        }
        let held = self
            .locks
            .forget_partitions(partitions, |oid| pt.partition_of_oid(oid));
        self.db.release_data(&held, true)?;
        self.retry_waiting()
    }

    /// Aborts a transaction unless it is locked (then it completes).
    pub(super) fn abort(&mut self, ttid: Tid) -> Handled {
        let Some(transaction) = self.locks.transactions.get(&ttid) else {
            return Ok(());
        };
        if transaction.tid.is_some() {
            return Ok(());
        }
        let Some(transaction) = self.locks.transactions.get(&ttid) else {
            return Ok(());
        };
        self.counters.aborts.inc();
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
        self.released(ttid)
    }
}
