//! Reads (architecture.md §7.1, §8): loads, history, transaction
//! metadata, TID and OID listings and undo lookups, and when a read must
//! wait for the unlock of a transaction whose commit a client may already
//! have been told about.

use bytes::Bytes;
use neo_net::ConnId;
use neo_proto::packets as p;
use neo_proto::{ErrorCode, Map, Packet, Tid, INVALID_PARTITION};

use super::commit::Waiting;
use super::{Handled, Storage};
use crate::db::{ObjectLookup, UndoLookup};

/// Most items in the answer to a listing (`AskTIDs`, `AskTIDsFrom`,
/// `AskOIDsFrom`, `AskObjectHistory`): it must fit a packet (an entry
/// takes 10 to 20 bytes, a packet at most 64 MiB).
pub const MAX_LIST_LENGTH: u64 = 1_000_000;

impl Storage {
    pub(super) fn load(&mut self, conn: ConnId, msg_id: u32, request: p::AskObject) -> Handled {
        if self.locks.is_read_locked(request.oid) {
            self.wait(Waiting::Load(conn, msg_id, request));
            return Ok(());
        }
        let lookup = self
            .db
            .get_object(request.oid, request.at, request.before)?;
        let counter = match &lookup {
            ObjectLookup::Found(_) => &self.counters.loads_found,
            ObjectLookup::NoMatchingRevision => &self.counters.loads_no_revision,
            ObjectLookup::OidDoesNotExist => &self.counters.loads_no_object,
        };
        counter.inc();
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

    /// What makes a listing request malformed: a partition beyond the
    /// table, or more TIDs than an answer holds from `AskTIDsFrom`, whose
    /// callers read a short answer as the end (the other listings are
    /// answered at most [`MAX_LIST_LENGTH`] items, which their callers
    /// page through).
    fn listing_error(&self, packet: &Packet) -> Option<String> {
        let partitions = self.db.partition_table().map_or(0, |pt| pt.partitions());
        let partition = match packet {
            Packet::AskTIDs(request) => Some(request.partition).filter(|p| *p != INVALID_PARTITION),
            Packet::AskTIDsFrom(request) => {
                if u64::from(request.length) > MAX_LIST_LENGTH {
                    return Some(format!(
                        "AskTIDsFrom: at most {MAX_LIST_LENGTH} TIDs per request"
                    ));
                }
                Some(request.partition)
            }
            Packet::AskOIDsFrom(request) => Some(request.partition),
            _ => None,
        };
        partition
            .filter(|partition| *partition >= partitions)
            .map(|partition| format!("partition {partition} out of range (0..{partitions})"))
    }

    /// History, transaction metadata, TID and OID listings, undo lookups.
    pub(super) fn read(&mut self, conn: ConnId, msg_id: u32, packet: Packet) -> Handled {
        if let Some(message) = self.listing_error(&packet) {
            self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            return Ok(());
        }
        if self.read_waits(&packet) {
            self.wait(Waiting::Read(conn, msg_id, packet));
            return Ok(());
        }
        match packet {
            Packet::AskObjectHistory(request) => {
                let length = request
                    .last
                    .saturating_sub(request.first)
                    .min(MAX_LIST_LENGTH);
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
                let length = (request.last - request.first).min(MAX_LIST_LENGTH);
                let tids = self.db.tid_list(request.first, length, &partitions)?;
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
                    u64::from(request.length).min(MAX_LIST_LENGTH),
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

    pub(super) fn undo_serials(
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
            self.wait(Waiting::UndoSerials(conn, msg_id, request));
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
}
