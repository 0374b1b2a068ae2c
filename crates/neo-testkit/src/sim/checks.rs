//! Invariants the simulation checks as the run goes, on what nodes output
//! (the end-of-run checks are in the world).

use std::collections::BTreeSet;

use neo_net::{Input, Output};
use neo_proto::{Packet, Tid};
use neo_storage::node::Storage;

use crate::record::Entry;

/// A storage never lets out the answer to a vote, or the lock of a
/// transaction whose metadata it holds, before what it promises is
/// committed: its database has nothing uncommitted once such an answer is
/// among its outputs (it commits everything at once). A lock on a storage
/// without the metadata writes nothing: other writes (stores' data) may
/// wait for a later commit.
#[derive(Debug, Default)]
pub struct Durability {
    /// Transactions voted here with their metadata, not locked yet.
    metadata: BTreeSet<Tid>,
}

impl Durability {
    /// Takes note of the inputs a storage is about to handle.
    pub fn inputs(&mut self, inputs: &[Input]) {
        for input in inputs {
            if let Input::Packet {
                packet: Packet::AskStoreTransaction(vote),
                ..
            } = input
            {
                self.metadata.insert(vote.ttid);
            }
        }
    }

    /// Checks the outputs of `storage` (named `name`).
    pub fn outputs(&mut self, name: &str, storage: &Storage, outputs: &[Output]) {
        let mut promise = None;
        for output in outputs {
            let Output::Answer { packet, .. } = output else {
                continue;
            };
            let promised = match packet {
                Packet::AnswerStoreTransaction(_) | Packet::AnswerVoteTransaction(_) => true,
                Packet::AnswerInformationLocked(locked) => self.metadata.remove(&locked.ttid),
                _ => false,
            };
            if promised {
                promise = Some(packet.name());
            }
        }
        if let Some(answer) = promise {
            assert!(
                !storage.has_uncommitted(),
                "{name} answers {answer} with writes not committed"
            );
        }
    }
}

/// The commits the master announced (to the committing client, to the
/// others, to `AskFinalTID`): the TIDs of new commits never go back over
/// the whole run, master restarts included (they complete in TID order),
/// and every announced commit must be in the storages.
#[derive(Debug, Default)]
pub struct Announced {
    last: Tid,
    tids: BTreeSet<Tid>,
}

impl Announced {
    /// Takes note of what the master outputs.
    pub fn master_outputs(&mut self, outputs: &[Output]) {
        for output in outputs {
            let (Output::Answer { packet, .. } | Output::Notify { packet, .. }) = output else {
                continue;
            };
            match packet {
                Packet::AnswerTransactionFinished(finished) => self.commit(finished.tid),
                Packet::InvalidateObjects(invalidation) => self.commit(invalidation.tid),
                // An older commit, looked up.
                Packet::AnswerFinalTID(answer) => {
                    if let Some(tid) = answer.tid.filter(|tid| *tid != Tid::MAX) {
                        self.tids.insert(tid);
                    }
                }
                _ => {}
            }
        }
    }

    fn commit(&mut self, tid: Tid) {
        // The committing client's answer and the others' invalidations
        // carry the same TID.
        assert!(
            tid >= self.last,
            "the master announced commit {tid} after {}: out of TID order",
            self.last
        );
        self.last = tid;
        self.tids.insert(tid);
    }

    /// Every announced commit, as record entries (no writes known).
    pub fn entries(&self) -> Vec<Entry> {
        self.tids
            .iter()
            .map(|tid| Entry {
                tid: Some(*tid),
                writes: Vec::new(),
            })
            .collect()
    }
}
