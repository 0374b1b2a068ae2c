//! Replication of the node's OUT_OF_DATE cells (architecture.md §9.1), the
//! replicating side: which partition next and from which source, the
//! chunks of transactions then objects fetched from it, progress persisted
//! per chunk so that a restart resumes, the transactions the master said
//! were in progress, and the announcement once every lockless write of
//! the partition became a real lock.
//!
//! One partition at a time; `fetch.rs` fetches it from its source. Each
//! request is sent by a background step (after committing what the
//! previous chunk brought), so clients are served first; what a source
//! sends is stored as it comes.

use std::collections::{BTreeMap, BTreeSet};

use neo_cluster::UnixTime;
use neo_net::Token;
use neo_proto::packets::{self as p};
use neo_proto::{NodeId, Oid, Partition, Tid};

use super::{Asked, Handled, Storage};

/// Items asked per chunk, as NEO/py (`FETCH_COUNT`).
pub(super) const FETCH_COUNT: u32 = 1000;

/// How long after an aborted replication the next one starts (NEO's rate
/// of reconnections to one address).
const RETRY_SECONDS: f64 = 1.0;

/// Where the transactions in progress when the node asked the master
/// stand, for one partition (§9.1 step 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unfinished {
    /// Asked, not answered yet.
    Unknown,
    /// Waiting for the end of transactions up to this TTID.
    Until(Tid),
    /// None any more.
    Done,
}

/// Where an own OUT_OF_DATE cell stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Being replicated: writes are accepted without locks.
    Replicating,
    /// Replicated up to this tid; announced once its lockless writes
    /// are locks (§9.1 step 9). Writes take locks again.
    Replicated(Tid),
    /// Announced: the master makes it UP_TO_DATE.
    Announced,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Cell {
    /// Where the next fetch of transactions starts.
    pub(super) next_trans: Tid,
    /// Where the next fetch of object records starts.
    pub(super) next_obj: Tid,
    unfinished: Unfinished,
    phase: Phase,
}

/// A chunk to fetch; `None`: the first one of its kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Fetch {
    Transactions(Option<Tid>),
    Objects(Option<(Tid, Oid)>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Step {
    /// Waiting for the link to the source.
    Connecting,
    /// To ask at the next background step.
    Ready(Fetch),
    /// Asked: its parts and answer come with `token`; `min` is where it
    /// started (an answer must move past it); `parts` came so far (at most
    /// [`FETCH_COUNT`]).
    Asked {
        token: Token,
        fetch: Fetch,
        min: (Tid, Oid),
        parts: u32,
    },
    /// Everything fetched: to finish at the next background step.
    Finishing,
}

/// The replication in progress.
#[derive(Debug)]
pub(super) struct Current {
    pub(super) partition: Partition,
    pub(super) source: NodeId,
    pub(super) max_tid: Tid,
    pub(super) step: Step,
    /// For the log: when it started, what came.
    started: UnixTime,
    pub(super) transactions: u64,
    pub(super) objects: u64,
    pub(super) bytes: u64,
}

/// What the node knows and does about replicating its cells.
#[derive(Debug, Default)]
pub(super) struct Replicator {
    /// Own OUT_OF_DATE cells.
    pub(super) cells: BTreeMap<Partition, Cell>,
    /// Partitions to replicate, and up to which tid.
    todo: BTreeMap<Partition, Tid>,
    /// TTIDs the master said were in progress, not finished yet.
    unfinished: BTreeSet<Tid>,
    pub(super) current: Option<Current>,
    /// No replication starts before (after an abort).
    retry_at: Option<UnixTime>,
    /// The last partition aborted, tried after the others.
    last_aborted: Option<Partition>,
    /// State of the pseudo-random choice of sources.
    seed: u64,
}

/// How a write to a partition is locked (§6.5, §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LockMode {
    /// Conflicts are checked and a write lock taken.
    Locking,
    /// Accepted without a lock: the cell is being replicated.
    Lockless,
    /// Not this node's: answered as lockless, not stored.
    Unassigned,
}

impl Replicator {
    /// Partitions still to fetch, the one in progress included.
    pub(super) fn pending(&self) -> usize {
        self.todo.len() + usize::from(self.current.is_some())
    }

    /// How writes to `partition` are locked, if the cell is not readable.
    pub(super) fn lock_mode(&self, partition: Partition) -> LockMode {
        match self.cells.get(&partition).map(|cell| cell.phase) {
            Some(Phase::Replicating) => LockMode::Lockless,
            Some(_) => LockMode::Locking,
            None => LockMode::Unassigned,
        }
    }

    /// Whether a partition is replicated, waiting for its lockless writes.
    pub(super) fn has_replicated(&self) -> bool {
        self.cells
            .values()
            .any(|cell| matches!(cell.phase, Phase::Replicated(_)))
    }

    /// Whether a background step has something to do.
    pub(super) fn has_step(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|current| matches!(current.step, Step::Ready(_) | Step::Finishing))
    }

    /// When an aborted replication is retried.
    pub(super) fn retry_at(&self) -> Option<UnixTime> {
        self.retry_at
    }

    /// Forgets everything but the seed (operation stopped).
    pub(super) fn reset(&mut self) {
        *self = Replicator {
            seed: self.seed,
            ..Replicator::default()
        };
    }

    /// A pseudo-random index below `n` (source choice).
    fn pick(&mut self, n: usize, now: UnixTime) -> usize {
        self.seed = self
            .seed
            .wrapping_add(now.to_bits())
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.seed >> 33) as usize % n.max(1)
    }
}

impl Storage {
    /// Whether replication uses storage `nid` as its source.
    pub(super) fn replication_uses(&self, nid: NodeId) -> bool {
        self.replicator
            .current
            .as_ref()
            .is_some_and(|current| current.source == nid)
    }

    /// How writes to the partition of `oid` are locked.
    pub(super) fn lock_mode(&self, oid: Oid) -> LockMode {
        let Some(pt) = self.db.partition_table() else {
            return LockMode::Unassigned;
        };
        if self.db.is_oid_readable(oid) {
            return LockMode::Locking;
        }
        self.replicator.lock_mode(pt.partition_of_oid(oid))
    }

    /// Start of operation: every own OUT_OF_DATE cell is replicated (§9.1
    /// step 1), from where its persisted progress says.
    pub(super) fn start_replication(&mut self) {
        self.replicator.reset();
        let outdated: Vec<(Partition, Tid)> = self
            .db
            .assigned_cells()
            .into_iter()
            .filter_map(|cell| Some((cell.partition, cell.complete_up_to?)))
            .collect();
        self.add_replicated_cells(&outdated);
    }

    /// New own OUT_OF_DATE cells (`(partition, complete up to)`): writes to
    /// them are lockless from now on, and the master is asked which
    /// transactions are in progress (§9.1 step 2).
    fn add_replicated_cells(&mut self, cells: &[(Partition, Tid)]) {
        if cells.is_empty() {
            return;
        }
        for &(partition, complete) in cells {
            // Complete up to 0 means nothing yet.
            let next = if complete == Tid::ZERO {
                Tid::ZERO
            } else {
                Tid(complete.0.saturating_add(1))
            };
            let cell = Cell {
                next_trans: next,
                next_obj: next,
                unfinished: Unfinished::Unknown,
                phase: Phase::Replicating,
            };
            self.replicator.cells.insert(partition, cell);
        }
        let partitions: Vec<Partition> = cells.iter().map(|(partition, _)| *partition).collect();
        if let Some(master) = self.master() {
            let why = Asked::Unfinished(partitions.clone());
            let request = p::AskUnfinishedTransactions { partitions };
            self.asked.send(&mut self.out, master, why, request);
        }
    }

    /// Own cells changed (`NotifyPartitionChanges`): new OUT_OF_DATE cells
    /// are replicated, discarded ones forgotten (their replication
    /// aborted), readable ones done.
    pub(super) fn replication_cells_changed(&mut self, changes: &[p::CellChange]) -> Handled {
        let mut added = Vec::new();
        let mut abort = false;
        for change in changes.iter().filter(|change| Some(change.nid) == self.nid) {
            let partition = change.partition;
            let current = self.replicator.current.as_ref().map(|c| c.partition);
            if change.state == neo_proto::CellState::OutOfDate {
                if !self.replicator.cells.contains_key(&partition) {
                    let complete = self
                        .db
                        .assigned_cells()
                        .into_iter()
                        .find(|cell| cell.partition == partition)
                        .and_then(|cell| cell.complete_up_to)
                        .unwrap_or(Tid::ZERO);
                    added.push((partition, complete));
                }
                continue;
            }
            // Readable, corrupted or discarded: nothing more to replicate.
            self.replicator.cells.remove(&partition);
            self.replicator.todo.remove(&partition);
            abort |= current == Some(partition);
        }
        self.add_replicated_cells(&added);
        if abort {
            self.abort_replication("its cell changed");
        }
        // A partition waiting for a source may have one now.
        self.next_replication()
    }

    /// `AnswerUnfinishedTransactions` (§9.1 step 3): replicate `partitions`
    /// up to `max_tid`, and wait for the end of `ttids`.
    pub(super) fn on_unfinished(
        &mut self,
        partitions: &[Partition],
        answer: p::AnswerUnfinishedTransactions,
    ) -> Handled {
        let max_ttid = answer.ttids.iter().max().copied();
        self.replicator.unfinished.extend(answer.ttids);
        for partition in partitions {
            if let Some(cell) = self.replicator.cells.get_mut(partition) {
                cell.unfinished = max_ttid.map_or(Unfinished::Done, Unfinished::Until);
                self.replicator.todo.insert(*partition, answer.max_tid);
            }
        }
        self.next_replication()
    }

    /// A transaction the master said was in progress is over, committed
    /// up to `max_tid` or aborted (§9.1 step 8).
    pub(super) fn replication_transaction_finished(
        &mut self,
        ttid: Tid,
        max_tid: Option<Tid>,
    ) -> Handled {
        if !self.replicator.unfinished.remove(&ttid) {
            return Ok(());
        }
        let oldest = self.replicator.unfinished.first().copied();
        let current = self.replicator.current.as_ref().map(|c| c.partition);
        let mut replicated = Vec::new();
        for (&partition, cell) in &mut self.replicator.cells {
            let Unfinished::Until(until) = cell.unfinished else {
                continue;
            };
            if let Some(max_tid) = max_tid {
                // What the finished transactions committed is fetched too.
                self.replicator.todo.insert(partition, max_tid);
            }
            if oldest.is_none_or(|oldest| until < oldest) {
                cell.unfinished = Unfinished::Done;
                if current != Some(partition) && !self.replicator.todo.contains_key(&partition) {
                    // Its last replication is done: it was only waiting.
                    replicated.push((partition, until));
                }
            }
        }
        for (partition, tid) in replicated {
            self.set_replicated(partition, tid)?;
        }
        self.next_replication()
    }

    /// Starts replicating the partition furthest behind, if none is in
    /// progress, from a source chosen at random among the running nodes
    /// with a readable cell of it.
    pub(super) fn next_replication(&mut self) -> Handled {
        let replicator = &self.replicator;
        if replicator.current.is_some()
            || replicator.retry_at.is_some_and(|at| self.now < at)
            || !self.operational
        {
            return Ok(());
        }
        let mut candidates: Vec<(Partition, Tid)> = replicator
            .todo
            .iter()
            .map(|(partition, tid)| (*partition, *tid))
            .collect();
        candidates.sort_by_key(|(partition, _)| {
            let cell = replicator.cells.get(partition);
            (
                replicator.last_aborted == Some(*partition),
                cell.map(|cell| cell.next_obj),
                cell.is_some_and(|cell| cell.unfinished != Unfinished::Done),
            )
        });
        for (partition, max_tid) in candidates {
            let sources = self.sources(partition);
            if sources.is_empty() {
                tracing::warn!(partition, "no running storage to replicate from");
                continue;
            }
            let index = self.replicator.pick(sources.len(), self.now);
            let source = sources[index];
            self.replicator.todo.remove(&partition);
            let step = match self.storage_conn(source) {
                Some(_) => Step::Ready(Fetch::Transactions(None)),
                None => Step::Connecting,
            };
            self.replicator.current = Some(Current {
                partition,
                source,
                max_tid,
                step,
                started: self.now,
                transactions: 0,
                objects: 0,
                bytes: 0,
            });
            tracing::info!(partition, %source, %max_tid, "replicating");
            return Ok(());
        }
        Ok(())
    }

    /// Running storages with a readable cell of `partition`.
    fn sources(&self, partition: Partition) -> Vec<NodeId> {
        let Some(pt) = self.db.partition_table() else {
            return Vec::new();
        };
        pt.readable_cells(partition)
            .map(|cell| cell.nid)
            .filter(|nid| Some(*nid) != self.nid && self.nodes.is_running(*nid))
            .collect()
    }

    /// The link to storage `nid` is ready.
    pub(super) fn replication_connected(&mut self, nid: NodeId) {
        if let Some(current) = &mut self.replicator.current {
            if current.source == nid && current.step == Step::Connecting {
                current.step = Step::Ready(Fetch::Transactions(None));
            }
        }
    }

    /// The link to storage `nid` is gone.
    pub(super) fn replication_source_lost(&mut self, nid: NodeId) {
        if self.replication_uses(nid) {
            self.abort_replication("lost the source");
        }
    }

    /// Gives up the replication in progress; it is retried later, after
    /// the other partitions if there are some (another source, maybe).
    pub(super) fn abort_replication(&mut self, reason: &str) {
        let Some(current) = self.replicator.current.take() else {
            return;
        };
        tracing::warn!(
            partition = current.partition,
            source = %current.source,
            "replication aborted: {reason}"
        );
        let replicator = &mut self.replicator;
        if replicator.cells.contains_key(&current.partition) {
            replicator
                .todo
                .entry(current.partition)
                .or_insert(current.max_tid);
            replicator.last_aborted = Some(current.partition);
        }
        replicator.retry_at = Some(self.now + RETRY_SECONDS);
        self.release_storage(current.source);
    }

    /// Retries after an abort, once due.
    pub(super) fn replication_retry(&mut self) -> Handled {
        if self.replicator.retry_at.is_some_and(|at| at <= self.now) {
            self.replicator.retry_at = None;
            return self.next_replication();
        }
        Ok(())
    }

    /// One background step: asks the next chunk, or finishes.
    pub(super) fn replication_step(&mut self) -> Handled {
        let Some(current) = &self.replicator.current else {
            return Ok(());
        };
        match current.step {
            Step::Ready(fetch) => self.ask_fetch(fetch),
            Step::Finishing => self.finish_replication(),
            Step::Connecting | Step::Asked { .. } => Ok(()),
        }
    }

    /// The partition is replicated up to `max_tid` (§9.1 step 7): persisted,
    /// then announced unless transactions it waits for are in progress.
    fn finish_replication(&mut self) -> Handled {
        let Some(current) = self.replicator.current.take() else {
            return Ok(());
        };
        let partition = current.partition;
        let max_tid = current.max_tid;
        let next = Tid(max_tid.0.saturating_add(1));
        let waiting = match self.replicator.cells.get_mut(&partition) {
            Some(cell) => {
                cell.next_obj = next;
                cell.unfinished != Unfinished::Done
            }
            None => true,
        };
        self.db.update_cell_tid(partition, max_tid)?;
        self.commit()?;
        let seconds = (self.now - current.started).max(1e-3);
        tracing::info!(
            partition,
            source = %current.source,
            %max_tid,
            transactions = current.transactions,
            objects = current.objects,
            bytes = current.bytes,
            objects_per_second = (current.objects as f64 / seconds).round(),
            "partition replicated"
        );
        if !waiting && !self.replicator.todo.contains_key(&partition) {
            self.set_replicated(partition, max_tid)?;
        }
        self.next_replication()?;
        self.release_storage(current.source);
        Ok(())
    }

    /// The partition is complete up to `tid`: once its lockless writes are
    /// real locks, the master is told (§9.1 steps 9 and 10).
    fn set_replicated(&mut self, partition: Partition, tid: Tid) -> Handled {
        if let Some(cell) = self.replicator.cells.get_mut(&partition) {
            cell.phase = Phase::Replicated(tid);
        }
        self.announce_replicated()
    }

    /// §9.1 steps 9 and 10 for every replicated partition: lockless writes
    /// of transactions in progress become write locks; a partition where
    /// two transactions wrote an oid without locks waits for one of them
    /// to end. The others are announced, and each of their lockless
    /// writes locks as a store would, a conflicting one being dropped (the
    /// locking cells already told its client).
    pub(super) fn announce_replicated(&mut self) -> Handled {
        let replicated: BTreeMap<Partition, Tid> = self
            .replicator
            .cells
            .iter()
            .filter_map(|(partition, cell)| match cell.phase {
                Phase::Replicated(tid) => Some((*partition, tid)),
                _ => None,
            })
            .collect();
        let Some(pt) = self.db.partition_table() else {
            return Ok(());
        };
        let partition_of = |oid: Oid| pt.partition_of_oid(oid);
        let partitions: BTreeSet<Partition> = replicated.keys().copied().collect();
        let ready = self.locks.lock_lockless(&partitions, partition_of);
        let relocks = self.locks.unlock_partitions(&ready, partition_of);
        let Some(master) = self.master() else {
            return Ok(());
        };
        for partition in ready {
            if let Some(cell) = self.replicator.cells.get_mut(&partition) {
                cell.phase = Phase::Announced;
            }
            let tid = replicated.get(&partition).copied().unwrap_or(Tid::ZERO);
            tracing::info!(partition, %tid, "replication done");
            self.counters.replicated_partitions.inc();
            self.notify(master, p::NotifyReplicationDone { partition, tid });
        }
        for (ttid, oid, serial) in relocks {
            self.relock_replicated(ttid, oid, serial)?;
        }
        Ok(())
    }
}
