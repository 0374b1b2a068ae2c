//! Replication of one partition from its source (architecture.md §9.1
//! steps 5 and 6): the chunk requests with what this node already has,
//! `AddTransaction` and `AddObject` stored as they come, the deletions and
//! the next chunk the answers say. What a source sends beyond what was
//! asked ends the replication and the link: a source can not make this
//! node write to another partition or loop forever.

use std::collections::BTreeMap;

use neo_net::{ConnId, Token};
use neo_proto::packets as p;
use neo_proto::{Checksum, ErrorCode, Map, Oid, Packet, Partition, Tid};

use super::replication::{Cell, Fetch, Step, FETCH_COUNT};
use super::{checksum, Asked, Handled, Storage};
use crate::backend::TransactionMeta;

impl Storage {
    /// Sends the request of a chunk, having committed what came before so
    /// that an interruption resumes from here (§9.1 steps 5 and 6).
    pub(super) fn ask_fetch(&mut self, fetch: Fetch) -> Handled {
        let Some(current) = &self.replicator.current else {
            return Ok(());
        };
        let (partition, source, max_tid) = (current.partition, current.source, current.max_tid);
        let Some(conn) = self.links.ready(source) else {
            self.abort_replication("lost the source");
            return Ok(());
        };
        let Some(cell) = self.replicator.cells.get(&partition).copied() else {
            self.abort_replication("its cell is gone");
            return Ok(());
        };
        let (request, min): (Packet, (Tid, Oid)) = match fetch {
            Fetch::Transactions(min) => {
                let min_tid = min.unwrap_or(cell.next_trans);
                self.set_cell(partition, |cell| cell.next_trans = min_tid);
                self.commit()?;
                let known_tids = self.db.replication_tid_list(
                    min_tid,
                    max_tid,
                    FETCH_COUNT.into(),
                    partition,
                )?;
                let request = p::AskFetchTransactions {
                    partition,
                    length: FETCH_COUNT,
                    min_tid,
                    max_tid,
                    known_tids,
                    ask_pack_info: min.is_none(),
                };
                (request.into(), (min_tid, Oid(0)))
            }
            Fetch::Objects(min) => {
                let (min_tid, min_oid) = match min {
                    Some((min_tid, min_oid)) => {
                        self.set_cell(partition, |cell| cell.next_obj = min_tid);
                        // Complete up to just before this chunk (§9.1 step 6).
                        self.db
                            .update_cell_tid(partition, Tid(min_tid.0.saturating_sub(1)))?;
                        (min_tid, min_oid)
                    }
                    None => {
                        let next = Tid(max_tid.0.saturating_add(1));
                        self.set_cell(partition, |cell| cell.next_trans = next);
                        (cell.next_obj, Oid(0))
                    }
                };
                self.commit()?;
                let mut known: BTreeMap<Tid, Vec<Oid>> = BTreeMap::new();
                let records = self.db.replication_object_list(
                    min_tid,
                    max_tid,
                    FETCH_COUNT.into(),
                    partition,
                    min_oid,
                )?;
                for (serial, oid) in records {
                    known.entry(serial).or_default().push(oid);
                }
                let request = p::AskFetchObjects {
                    partition,
                    length: FETCH_COUNT,
                    min_tid,
                    max_tid,
                    min_oid,
                    known: Map(known.into_iter().collect()),
                };
                (request.into(), (min_tid, min_oid))
            }
        };
        let token = self.asked.register(conn, Asked::Fetch);
        self.out.request(conn, token, request);
        if let Some(current) = &mut self.replicator.current {
            current.step = Step::Asked {
                token,
                fetch,
                min,
                parts: 0,
            };
        }
        Ok(())
    }

    fn set_cell(&mut self, partition: Partition, change: impl FnOnce(&mut Cell)) {
        if let Some(cell) = self.replicator.cells.get_mut(&partition) {
            change(cell);
        }
    }

    /// The chunk `token` asks for, if it is the one in progress on `conn`.
    fn fetching(&self, conn: ConnId, token: Token) -> Option<(Partition, Tid, Fetch, (Tid, Oid))> {
        let current = self.replicator.current.as_ref()?;
        match current.step {
            Step::Asked {
                token: asked,
                fetch,
                min,
                ..
            } if asked == token && self.links.ready(current.source) == Some(conn) => {
                Some((current.partition, current.max_tid, fetch, min))
            }
            _ => None,
        }
    }

    /// `AddTransaction` or `AddObject` of a chunk: stored as it comes.
    /// Those of an aborted replication are ignored (§9.1).
    pub(super) fn on_fetch_part(&mut self, conn: ConnId, token: Token, packet: Packet) -> Handled {
        let Some((partition, max_tid, _, (min_tid, _))) = self.fetching(conn, token) else {
            tracing::debug!(%conn, packet = packet.name(), "ignoring a part of an aborted replication");
            return Ok(());
        };
        if !self.count_part() {
            self.source_misbehaved(conn, "more items than asked");
            return Ok(());
        }
        // A source may only send what was asked.
        let asked = |tid: Tid, partition_of: Option<Partition>| {
            partition_of == Some(partition) && min_tid <= tid && tid <= max_tid
        };
        let pt = self.db.partition_table();
        let error = match packet {
            Packet::AddTransaction(add)
                if asked(add.tid, pt.map(|pt| pt.partition_of_tid(add.tid))) =>
            {
                let meta = TransactionMeta {
                    oids: add.oids,
                    user: add.user.to_vec(),
                    description: add.description.to_vec(),
                    extension: add.extension.to_vec(),
                    packed: add.packed,
                    ttid: add.ttid,
                };
                self.db
                    .store_transaction(add.tid, &[], Some(&meta), false)?;
                if let Some(pack) = add.pack {
                    self.db.store_pack_order(&p::PackOrder {
                        id: add.tid,
                        approved: pack.approved,
                        partial: pack.partial,
                        oids: pack.oids,
                        pack_tid: pack.pack_tid,
                    })?;
                }
                self.count_fetched(1, 0, 0);
                return Ok(());
            }
            Packet::AddObject(add)
                if asked(add.serial, pt.map(|pt| pt.partition_of_oid(add.oid))) =>
            {
                let no_data = add.data.is_empty() && add.checksum == Checksum::ZERO;
                if add.compression > 1 || (!no_data && checksum(&add.data) != add.checksum) {
                    "an object with a bad checksum or compression".to_owned()
                } else {
                    let data = (!no_data).then_some((add.compression, add.checksum, &add.data[..]));
                    self.db
                        .add_object(add.oid, add.serial, data, add.data_serial)?;
                    self.count_fetched(0, 1, add.data.len() as u64);
                    return Ok(());
                }
            }
            other => format!("{} outside of what was asked", other.name()),
        };
        self.source_misbehaved(conn, &error);
        Ok(())
    }

    /// Counts one more part of the chunk in progress; whether the source
    /// sent no more than asked.
    fn count_part(&mut self) -> bool {
        match self
            .replicator
            .current
            .as_mut()
            .map(|current| &mut current.step)
        {
            Some(Step::Asked { parts, .. }) if *parts < FETCH_COUNT => {
                *parts += 1;
                true
            }
            _ => false,
        }
    }

    /// Counts what came, for the log.
    fn count_fetched(&mut self, transactions: u64, objects: u64, bytes: u64) {
        self.counters.replicated_transactions.inc_by(transactions);
        self.counters.replicated_objects.inc_by(objects);
        self.counters.replicated_bytes.inc_by(bytes);
        if let Some(current) = &mut self.replicator.current {
            current.transactions += transactions;
            current.objects += objects;
            current.bytes += bytes;
        }
    }

    /// The source sent what it must not: the link is closed, the
    /// replication aborted.
    pub(super) fn source_misbehaved(&mut self, conn: ConnId, error: &str) {
        tracing::warn!(%conn, "replication source error: {error}");
        self.out.close(conn);
        self.abort_replication(error);
    }

    /// The answer to a chunk: deletions, and the next chunk (§9.1 steps 5
    /// and 6). `REPLICATION_ERROR` (or any error) aborts.
    pub(super) fn on_fetch_answer(
        &mut self,
        conn: ConnId,
        token: Token,
        packet: Packet,
    ) -> Handled {
        let Some((partition, max_tid, fetch, min)) = self.fetching(conn, token) else {
            tracing::debug!(%conn, "ignoring an answer of an aborted replication");
            return Ok(());
        };
        let Some(pt) = self.db.partition_table() else {
            return Ok(());
        };
        let in_chunk = |tid: Tid| min.0 <= tid && tid <= max_tid;
        let next = match (fetch, packet) {
            (_, Packet::Error(error)) => {
                if error.code != ErrorCode::ReplicationError {
                    tracing::warn!(%conn, "unexpected error from a replication source: {error}");
                }
                self.abort_replication(&format!("the source said: {}", error.message));
                return Ok(());
            }
            (Fetch::Transactions(_), Packet::AnswerFetchTransactions(answer)) => {
                if let Some(tid) = answer
                    .delete_tids
                    .iter()
                    .find(|tid| !in_chunk(**tid) || pt.partition_of_tid(**tid) != partition)
                {
                    let error = format!("deletion of {tid} outside of what was asked");
                    self.source_misbehaved(conn, &error);
                    return Ok(());
                }
                for tid in answer.delete_tids {
                    self.db.delete_transaction(tid)?;
                }
                if let Some(pack_id) = answer.completed_pack {
                    self.db
                        .update_completed_pack_by_replication(partition, pack_id)?;
                }
                match answer.next_tid {
                    Some(next) if next > min.0 && next <= max_tid => {
                        Step::Ready(Fetch::Transactions(Some(next)))
                    }
                    Some(next) => {
                        let error = format!("next tid {next} does not move forward");
                        self.source_misbehaved(conn, &error);
                        return Ok(());
                    }
                    None => Step::Ready(Fetch::Objects(None)),
                }
            }
            (Fetch::Objects(_), Packet::AnswerFetchObjects(answer)) => {
                let deletions: Vec<(Tid, Oid)> = answer
                    .delete
                    .0
                    .iter()
                    .flat_map(|(serial, oids)| oids.iter().map(move |oid| (*serial, *oid)))
                    .collect();
                if let Some((serial, oid)) = deletions.iter().find(|(serial, oid)| {
                    !in_chunk(*serial) || pt.partition_of_oid(*oid) != partition
                }) {
                    let error = format!("deletion of {oid} at {serial} outside of what was asked");
                    self.source_misbehaved(conn, &error);
                    return Ok(());
                }
                for (serial, oid) in deletions {
                    self.db.delete_object(oid, serial)?;
                }
                match (answer.next_tid, answer.next_oid) {
                    (Some(tid), Some(oid)) if (tid, oid) > min && tid <= max_tid => {
                        Step::Ready(Fetch::Objects(Some((tid, oid))))
                    }
                    (None, _) => Step::Finishing,
                    (tid, oid) => {
                        let error = format!("next record {tid:?} {oid:?} does not move forward");
                        self.source_misbehaved(conn, &error);
                        return Ok(());
                    }
                }
            }
            (_, other) => {
                let error = format!("unexpected answer {}", other.name());
                self.source_misbehaved(conn, &error);
                return Ok(());
            }
        };
        if let Some(current) = &mut self.replicator.current {
            current.step = next;
        }
        Ok(())
    }
}
