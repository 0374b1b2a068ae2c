//! Replica checks (architecture.md §9.3): the partitions the master asks
//! this node to check (`CheckPartition`), one at a time, against the other
//! nodes with a readable cell, range by range with NEO's digests; and the
//! `AskCheckTIDRange` / `AskCheckSerialRange` of another checking node.
//! Differences are reported to the master with `NotifyPartitionCorrupted`.

use std::collections::{BTreeMap, VecDeque};

use neo_net::{ConnId, Token};
use neo_proto::packets as p;
use neo_proto::{CellState, ErrorCode, NodeId, Oid, Packet, Partition, Tid};

use super::commit::Waiting;
use super::{Asked, Handled, Storage};

/// Items per range, as NEO/py (`CHECK_COUNT`).
const CHECK_COUNT: u32 = 40_000;

/// Most items a peer may ask digests of at once: each request is computed
/// while clients wait.
pub const MAX_CHECK_LENGTH: u32 = 100_000;

/// Most `CheckPartition` orders kept waiting (one per partition is what
/// a master sends).
const MAX_QUEUED_CHECKS: usize = 1 << 16;

/// A node taking part in a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Participant {
    Own,
    Node(NodeId),
}

/// Where a participant stands for the range being checked.
#[derive(Clone, Debug, PartialEq)]
enum Answer {
    /// Its link is not ready yet.
    Connecting,
    /// Asked with this token.
    Asked(Token),
    /// Its answer.
    Got(Packet),
}

/// The check in progress.
#[derive(Debug)]
struct Check {
    partition: Partition,
    min_tid: Tid,
    max_tid: Tid,
    /// Where the range being checked starts.
    next_tid: Tid,
    /// `None` in the transaction pass; where the range starts in the
    /// object pass.
    next_oid: Option<Oid>,
    /// The reference node: the others are wrong where they differ.
    source: Option<Participant>,
    participants: BTreeMap<Participant, Answer>,
    /// Waiting for the unlock of transactions up to `max_tid` to start.
    started: bool,
}

/// The replica checks asked of this node.
#[derive(Debug, Default)]
pub(super) struct Checker {
    queue: VecDeque<p::CheckPartition>,
    current: Option<Check>,
}

impl Checker {
    pub(super) fn clear(&mut self) {
        self.queue.clear();
        self.current = None;
    }
}

impl Storage {
    /// Whether the check in progress uses storage `nid`.
    pub(super) fn check_uses(&self, nid: NodeId) -> bool {
        self.checker
            .current
            .as_ref()
            .is_some_and(|check| check.participants.contains_key(&Participant::Node(nid)))
    }

    /// `CheckPartition` from the master.
    pub(super) fn on_check_partition(&mut self, check: p::CheckPartition) -> Handled {
        if self.checker.queue.len() >= MAX_QUEUED_CHECKS {
            tracing::warn!(
                partition = check.partition,
                "too many checks queued: ignored"
            );
            return Ok(());
        }
        self.checker.queue.push_back(check);
        if self.checker.current.is_none() {
            self.next_check()?;
        }
        Ok(())
    }

    /// Starts the next queued check that can be done.
    fn next_check(&mut self) -> Handled {
        while let Some(order) = self.checker.queue.pop_front() {
            match self.prepare_check(&order) {
                Ok(check) => {
                    tracing::info!(
                        partition = order.partition,
                        min_tid = %order.min_tid,
                        max_tid = %order.max_tid,
                        "checking replicas"
                    );
                    self.checker.current = Some(check);
                    return self.start_check();
                }
                Err(reason) => {
                    tracing::error!(partition = order.partition, "cannot check: {reason}");
                }
            }
        }
        Ok(())
    }

    /// The participants of a check, or why it can not be done.
    fn prepare_check(&mut self, order: &p::CheckPartition) -> Result<Check, String> {
        let partition = order.partition;
        let own = self.nid;
        let (cells, own_state) = match self.db.partition_table() {
            Some(pt) if partition < pt.partitions() => (
                pt.readable_cells(partition)
                    .map(|cell| cell.nid)
                    .filter(|nid| Some(*nid) != own && self.nodes.is_running(*nid))
                    .collect::<Vec<_>>(),
                own.and_then(|own| pt.cell_state(partition, own)),
            ),
            _ => return Err("no such partition".to_owned()),
        };
        if own_state.is_none_or(|state| state == CellState::OutOfDate) {
            return Err("discarded or out-of-date".to_owned());
        }
        if !order.source.upstream_name.is_empty() {
            return Err("checks against a backup's upstream cluster are not supported".to_owned());
        }
        let mut participants = BTreeMap::new();
        participants.insert(Participant::Own, Answer::Connecting);
        for nid in cells {
            participants.insert(Participant::Node(nid), Answer::Connecting);
        }
        let source = match &order.source.address {
            None => None,
            Some(address) if *address == self.config.address => Some(Participant::Own),
            Some(address) => {
                let node = self.nodes.by_address(address).map(|node| node.nid);
                match node.map(Participant::Node) {
                    Some(node) if participants.contains_key(&node) => Some(node),
                    _ => return Err("unavailable source".to_owned()),
                }
            }
        };
        if participants.len() < 2 {
            return Err("no replica".to_owned());
        }
        Ok(Check {
            partition,
            min_tid: order.min_tid,
            max_tid: order.max_tid,
            next_tid: order.min_tid,
            next_oid: None,
            source,
            participants,
            started: false,
        })
    }

    /// Starts the check in progress once no transaction up to its
    /// `max_tid` waits for its unlock (called again after each unlock).
    pub(super) fn start_check(&mut self) -> Handled {
        let Some(check) = &self.checker.current else {
            return Ok(());
        };
        if check.started || self.locks.is_unlocking_in(Tid::ZERO, check.max_tid) {
            return Ok(());
        }
        if let Some(check) = &mut self.checker.current {
            check.started = true;
        }
        self.check_range()
    }

    /// Asks every participant the digests of the current range, and
    /// computes its own.
    fn check_range(&mut self) -> Handled {
        let Some(check) = &self.checker.current else {
            return Ok(());
        };
        let request = range_request(check);
        let participants: Vec<Participant> = check.participants.keys().copied().collect();
        for participant in participants {
            let answer = match participant {
                Participant::Own => Answer::Got(self.own_range(&request)?),
                Participant::Node(nid) => match self.storage_conn(nid) {
                    Some(conn) => Answer::Asked(self.ask_range(conn, request.clone())),
                    None => Answer::Connecting,
                },
            };
            if let Some(check) = &mut self.checker.current {
                check.participants.insert(participant, answer);
            }
        }
        self.compare_ranges()
    }

    fn ask_range(&mut self, conn: ConnId, request: Packet) -> Token {
        let token = self.asked.register(conn, Asked::Check);
        self.out.request(conn, token, request);
        token
    }

    /// This node's answer to `request`.
    fn own_range(&mut self, request: &Packet) -> Result<Packet, crate::backend::Error> {
        Ok(match request {
            Packet::AskCheckTIDRange(r) => self
                .db
                .check_tid_range(r.partition, r.length, r.min_tid, r.max_tid)?
                .into(),
            Packet::AskCheckSerialRange(r) => self
                .db
                .check_serial_range(r.partition, r.length, r.min_tid, r.max_tid, r.min_oid)?
                .into(),
            other => p::Error::new(
                ErrorCode::ProtocolError,
                format!("{} is not a check", other.name()),
            )
            .into(),
        })
    }

    /// The link to storage `nid` is ready: ask it the current range if it
    /// takes part in the check.
    pub(super) fn check_connected(&mut self, nid: NodeId) {
        let participant = Participant::Node(nid);
        let request = self.checker.current.as_ref().filter(|check| {
            check.started && check.participants.get(&participant) == Some(&Answer::Connecting)
        });
        if let (Some(check), Some(conn)) = (request, self.links.ready(nid)) {
            let token = self.ask_range(conn, range_request(check));
            if let Some(check) = &mut self.checker.current {
                check.participants.insert(participant, Answer::Asked(token));
            }
        }
    }

    /// The answer of a participant.
    pub(super) fn on_check_answer(&mut self, token: Token, packet: Packet) -> Handled {
        let Some(check) = &mut self.checker.current else {
            return Ok(());
        };
        let Some(participant) = check
            .participants
            .iter()
            .find(|(_, answer)| **answer == Answer::Asked(token))
            .map(|(participant, _)| *participant)
        else {
            // Of a range or a check given up: nothing was done to cancel it.
            tracing::debug!("ignoring a stale check answer");
            return Ok(());
        };
        if let (Packet::Error(error), Participant::Node(nid)) = (&packet, participant) {
            tracing::warn!(%nid, "replica check refused: {error}");
            if let Some(conn) = self.links.ready(nid) {
                self.out.close_client(conn);
            }
            return self.check_participant_lost(participant);
        }
        check.participants.insert(participant, Answer::Got(packet));
        self.compare_ranges()
    }

    /// Storage `nid` is gone.
    pub(super) fn check_peer_lost(&mut self, nid: NodeId) {
        if self.check_uses(nid) {
            if let Err(error) = self.check_participant_lost(Participant::Node(nid)) {
                tracing::warn!("replica check: {error}");
            }
        }
    }

    fn check_participant_lost(&mut self, participant: Participant) -> Handled {
        let Some(check) = &mut self.checker.current else {
            return Ok(());
        };
        check.participants.remove(&participant);
        if check.source != Some(participant) && check.participants.len() > 1 {
            tracing::warn!(
                partition = check.partition,
                "a node was lost, the check goes on"
            );
            return self.compare_ranges();
        }
        tracing::warn!(partition = check.partition, "replica check aborted");
        self.end_check()
    }

    /// Once every participant answered: reports those that differ from
    /// the reference (all of them without one), then checks the next
    /// range, or the next partition.
    fn compare_ranges(&mut self) -> Handled {
        let Some(check) = &self.checker.current else {
            return Ok(());
        };
        let mut answers = Vec::new();
        for (participant, answer) in &check.participants {
            match answer {
                Answer::Got(packet) => answers.push((*participant, packet.clone())),
                _ => return Ok(()),
            }
        }
        let Some((_, first)) = answers.first().cloned() else {
            return Ok(());
        };
        let mut agreed = first;
        if answers.iter().any(|(_, answer)| *answer != agreed) {
            let reference = check
                .source
                .and_then(|source| answers.iter().find(|(p, _)| *p == source))
                .map(|(_, answer)| answer.clone());
            let partition = check.partition;
            let wrong: Vec<Participant> = answers
                .iter()
                .filter(|(_, answer)| Some(answer) != reference.as_ref())
                .map(|(participant, _)| *participant)
                .collect();
            self.report_corrupted(partition, &wrong);
            match reference {
                Some(reference) if answers.len() - wrong.len() > 1 => agreed = reference,
                _ => {
                    tracing::warn!(partition, "replica check aborted");
                    self.checker.queue.clear();
                    return self.end_check();
                }
            }
        }
        self.next_range(&agreed)
    }

    /// Tells the master that `wrong` differ, and leaves them out.
    fn report_corrupted(&mut self, partition: Partition, wrong: &[Participant]) {
        let mut nids = Vec::new();
        for participant in wrong {
            if let Some(check) = &mut self.checker.current {
                check.participants.remove(participant);
            }
            match participant {
                Participant::Own => nids.extend(self.nid),
                Participant::Node(nid) => {
                    nids.push(*nid);
                    self.release_storage(*nid);
                }
            }
        }
        tracing::error!(partition, ?nids, "replicas differ");
        if let Some(master) = self.master() {
            self.notify(master, p::NotifyPartitionCorrupted { partition, nids });
        }
    }

    /// After the range whose agreed answer is `agreed`.
    fn next_range(&mut self, agreed: &Packet) -> Handled {
        let Some(check) = &mut self.checker.current else {
            return Ok(());
        };
        match agreed {
            Packet::AnswerCheckTIDRange(answer) if answer.count < CHECK_COUNT => {
                // The transactions are checked: now the object records.
                check.next_tid = check.min_tid;
                check.next_oid = Some(Oid(0));
            }
            Packet::AnswerCheckTIDRange(answer) => {
                check.next_tid = Tid(answer.max_tid.0.saturating_add(1));
            }
            Packet::AnswerCheckSerialRange(answer) if answer.count >= CHECK_COUNT => {
                check.next_tid = answer.max_tid;
                check.next_oid = Some(Oid(answer.max_oid.0.saturating_add(1)));
            }
            _ => {
                tracing::info!(partition = check.partition, "partition checked");
                return self.end_check();
            }
        }
        self.check_range()
    }

    /// The check in progress is over: its links go idle, the next starts.
    fn end_check(&mut self) -> Handled {
        let Some(check) = self.checker.current.take() else {
            return Ok(());
        };
        for participant in check.participants.keys() {
            if let Participant::Node(nid) = participant {
                self.release_storage(*nid);
            }
        }
        self.next_check()
    }

    /// `AskCheckTIDRange` or `AskCheckSerialRange` of a checking node.
    pub(super) fn serve_check(&mut self, conn: ConnId, msg_id: u32, packet: Packet) -> Handled {
        let (partition, length, max_tid) = match &packet {
            Packet::AskCheckTIDRange(r) => (r.partition, r.length, r.max_tid),
            Packet::AskCheckSerialRange(r) => (r.partition, r.length, r.max_tid),
            _ => return Ok(()),
        };
        let partitions = self.db.num_partitions();
        if partition >= partitions || length > MAX_CHECK_LENGTH {
            let message = format!(
                "partition {partition} of 0..{partitions}, length {length} of at most \
                 {MAX_CHECK_LENGTH}"
            );
            self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            return Ok(());
        }
        let state = match (self.db.partition_table(), self.nid) {
            (Some(pt), Some(own)) => pt.cell_state(partition, own),
            _ => None,
        };
        if state.is_none_or(|state| state == CellState::OutOfDate) {
            let message = format!("partition {partition} not readable");
            self.error(conn, msg_id, ErrorCode::CheckingError, message);
            return Ok(());
        }
        if self.locks.is_unlocking_in(Tid::ZERO, max_tid) {
            if matches!(packet, Packet::AskCheckSerialRange(_)) {
                let message = "transactions must be checked before objects";
                self.refuse(conn, msg_id, ErrorCode::ProtocolError, message);
            } else {
                self.wait(Waiting::Storage(conn, msg_id, packet));
            }
            return Ok(());
        }
        let answer = self.own_range(&packet)?;
        self.answer(conn, msg_id, answer);
        Ok(())
    }
}

/// The request for the current range of `check`.
fn range_request(check: &Check) -> Packet {
    match check.next_oid {
        None => p::AskCheckTIDRange {
            partition: check.partition,
            length: CHECK_COUNT,
            min_tid: check.next_tid,
            max_tid: check.max_tid,
        }
        .into(),
        Some(min_oid) => p::AskCheckSerialRange {
            partition: check.partition,
            length: CHECK_COUNT,
            min_tid: check.next_tid,
            max_tid: check.max_tid,
            min_oid,
        }
        .into(),
    }
}
