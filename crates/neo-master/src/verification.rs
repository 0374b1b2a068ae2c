//! Verification (architecture.md §5.2): settle the transactions the
//! storages voted or locked before the cluster stopped, learn the last
//! ids and reload the pack orders, then start operation.

use std::collections::{BTreeMap, BTreeSet};

use neo_proto::packets as p;
use neo_proto::{ClusterState, NodeId, NodeState, NodeType, Tid};

use crate::master::{Asked, Master};

/// Verification bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Verification {
    /// ttid → storages that voted it.
    pub voted: BTreeMap<Tid, BTreeSet<NodeId>>,
    /// ttid → final tid, for transactions locked somewhere.
    pub locked: BTreeMap<Tid, Tid>,
    /// Whether the `AskFinalTID` round started.
    pub final_round_started: bool,
    /// Whether the `AskLastIDs` round started.
    pub asking_last_ids: bool,
    /// Whether the `AskPackOrders` round started.
    pub asking_pack_orders: bool,
    /// Greatest last TID the storages reported.
    pub last_tid: Option<Tid>,
}

impl Verification {
    /// A storage's `AnswerLockedTransactions`: what it voted and locked.
    pub fn on_locked_transactions(&mut self, nid: NodeId, answer: p::AnswerLockedTransactions) {
        for (ttid, tid) in answer.ttids.0 {
            self.voted.entry(ttid).or_default().insert(nid);
            if let Some(tid) = tid {
                self.locked.insert(ttid, tid);
            }
        }
    }
}

impl Master {
    /// Each step waits for every answer of the previous one.
    pub(crate) fn continue_verification(&mut self) {
        let verifying = |why: &Asked| {
            matches!(
                why,
                Asked::LockedTransactions | Asked::FinalTid(_) | Asked::LastIds | Asked::PackOrders
            )
        };
        if self.is_asking(verifying) {
            return;
        }
        let v = &self.verification;
        if !v.asking_last_ids {
            // Voted somewhere, locked nowhere: maybe already unlocked on a
            // node that did not report it (§5.2 step 2).
            let unresolved: Vec<(Tid, BTreeSet<NodeId>)> = v
                .voted
                .iter()
                .filter(|(ttid, _)| !v.locked.contains_key(ttid))
                .map(|(ttid, voters)| (*ttid, voters.clone()))
                .collect();
            if !v.final_round_started && !unresolved.is_empty() {
                self.verification.final_round_started = true;
                let mut asked = false;
                for (ttid, voters) in unresolved {
                    let partition = self.pt.partition_of_tid(ttid);
                    let askable: Vec<NodeId> = self
                        .pt
                        .readable_cells(partition)
                        .map(|cell| cell.nid)
                        .filter(|nid| !voters.contains(nid) && self.conn_of.contains_key(nid))
                        .collect();
                    for nid in askable {
                        self.ask_node(nid, Asked::FinalTid(ttid), p::AskFinalTID { ttid });
                        asked = true;
                    }
                }
                if asked {
                    return;
                }
            }
            let v = &self.verification;
            let validations: Vec<(Tid, Tid, BTreeSet<NodeId>)> = v
                .locked
                .iter()
                .filter_map(|(ttid, tid)| Some((*ttid, *tid, v.voted.get(ttid)?.clone())))
                .collect();
            for (ttid, tid, voters) in validations {
                tracing::info!(%ttid, %tid, "replaying a locked transaction");
                for nid in voters {
                    self.notify_node(nid, p::ValidateTransaction { ttid, tid });
                }
                self.transactions.raise_last_ids(Some(tid), None);
            }
            // Every storage, pending ones too: this is where they carry
            // out a pending truncation (§5.2 step 3).
            self.verification.asking_last_ids = true;
            let storages: Vec<NodeId> = self
                .identified()
                .into_iter()
                .filter(|(_, node_type, _)| *node_type == NodeType::Storage)
                .map(|(nid, _, _)| nid)
                .collect();
            for nid in storages {
                self.ask_node(nid, Asked::LastIds, p::AskLastIDs {});
            }
            return;
        }
        if !self.verification.asking_pack_orders {
            // What the storages hold is the truth, lower than before after
            // a truncation, which is now done.
            let last_tid = self.verification.last_tid.unwrap_or(Tid::ZERO);
            self.transactions.set_last_tid(last_tid);
            if let Some(tid) = self.truncate_tid.take() {
                tracing::info!(%tid, %last_tid, "truncation carried out");
            }
            // Reload the pack orders not completed everywhere (§5.2 step 4).
            self.verification.asking_pack_orders = true;
            let holders = self.readable_nodes();
            let min_id = self
                .packs
                .min_reported(&holders)
                .map_or(Tid::ZERO, |id| Tid(id.0.saturating_add(1)));
            for nid in holders {
                self.ask_node(nid, Asked::PackOrders, p::AskPackOrders { min_id });
            }
            if self.is_asking(verifying) {
                return;
            }
        }
        self.update_completed_pack();
        self.verification = Verification::default();
        self.set_state(ClusterState::Running);
        for nid in self.storages_in(NodeState::Running) {
            self.start_storage(nid);
        }
    }
}
