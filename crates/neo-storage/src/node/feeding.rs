//! Replication, the source side (architecture.md §9.1 steps 5 and 6):
//! `AskFetchTransactions` and `AskFetchObjects` of another storage are
//! answered with what it lacks, one `AddTransaction` or `AddObject` per
//! item sent with the msg_id of its request, then the answer. The items
//! are pushed by background steps of bounded size, so clients are served
//! first.

use std::collections::{BTreeMap, HashSet, VecDeque};

use bytes::Bytes;
use neo_net::ConnId;
use neo_proto::packets::{self as p, PackInfo};
use neo_proto::{ErrorCode, Map, Oid, Packet, Partition, Tid};

use super::commit::Waiting;
use super::{Handled, Storage};
use crate::backend::{Error, RequestError};

/// Most items a fetch is answered with, whatever it asks: NEO asks
/// [`super::replication::FETCH_COUNT`]; more would only make one
/// request hold the node longer.
pub const MAX_FETCH_LENGTH: u32 = 10_000;

/// Most fetches being pushed at once; over it a fetch is refused with
/// `REPLICATION_ERROR`, which makes its requester try again later.
const MAX_PUSHES: usize = 32;

/// What one background step sends at most: packets, and object bytes.
const PUSH_PACKETS: usize = 256;
const PUSH_BYTES: usize = 4 << 20;

/// A fetch being answered.
#[derive(Debug)]
struct Push {
    conn: ConnId,
    msg_id: u32,
    partition: Partition,
    items: Items,
    /// Sent once every item is.
    answer: Packet,
}

#[derive(Debug)]
enum Items {
    Transactions(VecDeque<Tid>),
    Objects(VecDeque<(Tid, Oid)>),
}

/// The fetches being answered, served in turn.
#[derive(Debug, Default)]
pub(super) struct Feeding {
    pushes: VecDeque<Push>,
}

impl Feeding {
    /// Whether a background step has something to send.
    pub(super) fn has_step(&self) -> bool {
        !self.pushes.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.pushes.clear();
    }
}

impl Storage {
    /// A fetch from a replicating storage.
    pub(super) fn feed(&mut self, conn: ConnId, msg_id: u32, packet: Packet) -> Handled {
        let (partition, max_tid, known) = match &packet {
            Packet::AskFetchTransactions(r) => (r.partition, r.max_tid, r.known_tids.len()),
            Packet::AskFetchObjects(r) => (
                r.partition,
                r.max_tid,
                r.known.0.iter().map(|(_, oids)| oids.len()).sum(),
            ),
            _ => return Ok(()),
        };
        let partitions = self.db.num_partitions();
        if partition >= partitions {
            let message = format!("partition {partition} out of range (0..{partitions})");
            self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            return Ok(());
        }
        if known > MAX_FETCH_LENGTH as usize {
            let message = format!("at most {MAX_FETCH_LENGTH} known items per fetch");
            self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            return Ok(());
        }
        if !self.db.is_readable(partition) {
            let message = format!("partition {partition} not readable");
            self.error(conn, msg_id, ErrorCode::ReplicationError, message);
            return Ok(());
        }
        // What is still only in the sources would be missed (§12.7).
        if self.db.importing() {
            let message = "this storage imports: it can feed replicas once the import is finished";
            self.error(conn, msg_id, ErrorCode::ReplicationError, message);
            return Ok(());
        }
        if self.feeding.pushes.len() >= MAX_PUSHES {
            let message = "too many replications in progress: retry later";
            self.error(conn, msg_id, ErrorCode::ReplicationError, message);
            return Ok(());
        }
        // What is asked must not miss a transaction being committed.
        if self.locks.is_unlocking_in(Tid::ZERO, max_tid) {
            if let Packet::AskFetchObjects(_) = packet {
                let message = "transactions must be fetched before objects";
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, message);
            } else {
                self.wait(Waiting::Storage(conn, msg_id, packet));
            }
            return Ok(());
        }
        let (items, answer) = match packet {
            Packet::AskFetchTransactions(request) => self.list_transactions(request)?,
            Packet::AskFetchObjects(request) => self.list_objects(request)?,
            _ => return Ok(()),
        };
        self.feeding.pushes.push_back(Push {
            conn,
            msg_id,
            partition,
            items,
            answer,
        });
        Ok(())
    }

    /// What the requester of `AskFetchTransactions` lacks, and what it has
    /// that this node does not, in this chunk only (the rest is compared
    /// with the next one; and a requester has nothing to delete outside
    /// what it asked).
    fn list_transactions(
        &mut self,
        request: p::AskFetchTransactions,
    ) -> Result<(Items, Packet), Error> {
        let length = request.length.min(MAX_FETCH_LENGTH);
        let mut tids = self.db.replication_tid_list(
            request.min_tid,
            request.max_tid,
            u64::from(length) + 1,
            request.partition,
        )?;
        let next_tid = (tids.len() > length as usize).then(|| tids.pop()).flatten();
        let mut known: HashSet<Tid> = request.known_tids.into_iter().collect();
        let missing: VecDeque<Tid> = tids.into_iter().filter(|tid| !known.remove(tid)).collect();
        let end = next_tid.unwrap_or(Tid(request.max_tid.0.saturating_add(1)));
        let mut delete_tids: Vec<Tid> = known
            .into_iter()
            .filter(|tid| request.min_tid <= *tid && *tid < end)
            .collect();
        delete_tids.sort_unstable();
        let completed_pack = request.ask_pack_info.then(|| {
            self.db
                .assigned_cells()
                .into_iter()
                .find(|cell| cell.partition == request.partition)
                .and_then(|cell| cell.pack)
                .unwrap_or(Tid::ZERO)
        });
        let answer = p::AnswerFetchTransactions {
            next_tid,
            delete_tids,
            completed_pack,
        };
        Ok((Items::Transactions(missing), answer.into()))
    }

    /// [`Storage::list_transactions`] for `AskFetchObjects`.
    fn list_objects(&mut self, request: p::AskFetchObjects) -> Result<(Items, Packet), Error> {
        let length = request.length.min(MAX_FETCH_LENGTH);
        let mut records = self.db.replication_object_list(
            request.min_tid,
            request.max_tid,
            u64::from(length) + 1,
            request.partition,
            request.min_oid,
        )?;
        let next = (records.len() > length as usize)
            .then(|| records.pop())
            .flatten();
        let mut known: HashSet<(Tid, Oid)> = request
            .known
            .0
            .into_iter()
            .flat_map(|(serial, oids)| oids.into_iter().map(move |oid| (serial, oid)))
            .collect();
        let missing: VecDeque<(Tid, Oid)> = records
            .into_iter()
            .filter(|record| !known.remove(record))
            .collect();
        let start = (request.min_tid, request.min_oid);
        let in_chunk = |record: (Tid, Oid)| {
            start <= record && record.0 <= request.max_tid && next.is_none_or(|next| record < next)
        };
        let mut delete: BTreeMap<Tid, Vec<Oid>> = BTreeMap::new();
        for (serial, oid) in known {
            if in_chunk((serial, oid)) {
                delete.entry(serial).or_default().push(oid);
            }
        }
        for oids in delete.values_mut() {
            oids.sort_unstable();
        }
        let answer = p::AnswerFetchObjects {
            next_tid: next.map(|(tid, _)| tid),
            next_oid: next.map(|(_, oid)| oid),
            delete: Map(delete.into_iter().collect()),
        };
        Ok((Items::Objects(missing), answer.into()))
    }

    /// One background step: sends the next items of the first fetch (then
    /// its answer, once they are all sent), and lets the next fetch go
    /// first next time.
    pub(super) fn feeding_step(&mut self) -> Handled {
        let Some(mut push) = self.feeding.pushes.pop_front() else {
            return Ok(());
        };
        let (mut packets, mut bytes) = (0, 0);
        while packets < PUSH_PACKETS && bytes < PUSH_BYTES {
            let item = match &mut push.items {
                Items::Transactions(tids) => tids.pop_front().map(|tid| (tid, None)),
                Items::Objects(records) => {
                    records.pop_front().map(|(serial, oid)| (serial, Some(oid)))
                }
            };
            let Some((tid, oid)) = item else {
                self.answer(push.conn, push.msg_id, push.answer);
                return Ok(());
            };
            let packet = match oid {
                None => self.add_transaction(tid)?,
                Some(oid) => self.add_object(oid, tid)?,
            };
            let Some(packet) = packet else {
                // Gone since it was listed: the cell was dropped or truncated.
                let message = format!("partition {} dropped or truncated", push.partition);
                self.error(push.conn, push.msg_id, ErrorCode::ReplicationError, message);
                return Ok(());
            };
            if let Packet::AddObject(add) = &packet {
                bytes += add.data.len();
            }
            packets += 1;
            // Sent with the msg_id of the request (protocol.md §2.3).
            self.answer(push.conn, push.msg_id, packet);
        }
        self.feeding.pushes.push_back(push);
        Ok(())
    }

    /// `AddTransaction` for `tid`, if this node still has it.
    fn add_transaction(&mut self, tid: Tid) -> Result<Option<Packet>, Error> {
        let Some((meta, pack)) = readable(self.db.fetch_transaction(tid))? else {
            return Ok(None);
        };
        let pack = pack.map(|order| PackInfo {
            approved: order.approved,
            partial: order.partial,
            oids: order.oids,
            pack_tid: order.pack_tid,
        });
        Ok(Some(
            p::AddTransaction {
                tid,
                user: Bytes::from(meta.user),
                description: Bytes::from(meta.description),
                extension: Bytes::from(meta.extension),
                packed: meta.packed,
                ttid: meta.ttid,
                oids: meta.oids,
                pack,
            }
            .into(),
        ))
    }

    /// `AddObject` for `oid` at `serial`, if this node still has it; a
    /// record without data goes as no compression, `ZERO_HASH`, no bytes.
    fn add_object(&mut self, oid: Oid, serial: Tid) -> Result<Option<Packet>, Error> {
        let Some(record) = readable(self.db.fetch_object(oid, serial))? else {
            return Ok(None);
        };
        Ok(Some(
            p::AddObject {
                oid,
                serial,
                compression: record.compression.unwrap_or(0),
                checksum: record.checksum,
                data: Bytes::from(record.data),
                data_serial: record.data_serial,
            }
            .into(),
        ))
    }

    /// The connection of a requester closed: its fetches are dropped.
    pub(super) fn feeding_closed(&mut self, conn: ConnId) {
        self.feeding.pushes.retain(|push| push.conn != conn);
    }
}

/// A read of a cell that stopped being readable finds nothing.
fn readable<T>(read: Result<Option<T>, Error>) -> Result<Option<T>, Error> {
    match read {
        Err(Error::Request(RequestError::NonReadableCell { .. })) => Ok(None),
        other => other,
    }
}
