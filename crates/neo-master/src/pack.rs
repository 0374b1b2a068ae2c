//! The master's pack orders (architecture.md §11.3): orders registered at
//! `tpc_finish`, their signature, what each storage reports as completed,
//! and the clients waiting for a pack to finish.

use std::collections::{BTreeMap, BTreeSet};

use neo_net::ConnId;
use neo_proto::packets::{PackOrder, PackRequest};
use neo_proto::{NodeId, Tid};

/// Most `WaitForPack` requests held at once.
pub const MAX_PACK_WAITERS: usize = 4096;

/// What to do with a `WaitForPack` request.
#[derive(Debug, PartialEq, Eq)]
pub enum PackWait {
    /// Answer now: the order is unknown or completed.
    Done,
    /// Held until the order completes.
    Held,
    /// Refused: too many requests are held already.
    TooMany,
}

/// Orders still to complete, and who waits for them.
#[derive(Debug, Default)]
pub struct PackManager {
    /// Orders by id (the TID of the transaction that carried them).
    orders: BTreeMap<Tid, PackOrder>,
    /// `WaitForPack` requests by order id.
    waiters: BTreeMap<Tid, Vec<(ConnId, u32)>>,
    /// Last `NotifyPackCompleted` of each storage.
    reported: BTreeMap<NodeId, Tid>,
    /// Greatest id known to be completed by the whole cluster.
    max_completed: Option<Tid>,
}

impl PackManager {
    /// Forgets the orders and what storages reported (new verification:
    /// they are reloaded from the storages).
    pub fn reset(&mut self) {
        self.orders.clear();
        self.reported.clear();
        self.max_completed = None;
    }

    /// Registers the order carried by transaction `tid` (§11.3 step 2);
    /// returns whether it is approved: automatically, unless an older order
    /// is still unsigned.
    pub fn new_order(&mut self, tid: Tid, request: PackRequest) -> bool {
        let approved = self.orders.values().all(|order| order.approved.is_some());
        self.orders.insert(
            tid,
            PackOrder {
                id: tid,
                approved: approved.then_some(true),
                partial: request.oids.is_some(),
                oids: request.oids,
                pack_tid: request.pack_tid,
            },
        );
        approved
    }

    /// An order reported by a storage (verification): new ones are added,
    /// a known unsigned one takes the signature reported.
    pub fn add(&mut self, order: PackOrder) {
        if self.max_completed.is_some_and(|done| order.id <= done) {
            return;
        }
        match self.orders.get_mut(&order.id) {
            Some(known) => {
                if known.approved.is_none() {
                    known.approved = order.approved;
                }
            }
            None => {
                self.orders.insert(order.id, order);
            }
        }
    }

    /// Whether order `id` is approved.
    pub fn is_approved(&self, id: Tid) -> bool {
        self.orders
            .get(&id)
            .is_some_and(|order| order.approved == Some(true))
    }

    /// Whether an order with an id `>= min_id` is approved, or completed
    /// (truncating before it is refused, §11.1).
    pub fn approved_from(&self, min_id: Tid) -> bool {
        self.max_completed.is_some_and(|done| done >= min_id)
            || self
                .orders
                .range(min_id..)
                .any(|(_, order)| order.approved == Some(true))
    }

    /// `AskPackOrders` from a storage: the first approved order with an
    /// id `>= min_id`, if known.
    pub fn first_approved(&self, min_id: Tid) -> Vec<PackOrder> {
        self.orders
            .range(min_id..)
            .map(|(_, order)| order)
            .find(|order| order.approved == Some(true))
            .cloned()
            .into_iter()
            .collect()
    }

    /// `AskPackOrders` from a client: every known order with an id
    /// `>= min_id`.
    pub fn orders_from(&self, min_id: Tid) -> Vec<PackOrder> {
        self.orders
            .range(min_id..)
            .map(|(_, order)| order.clone())
            .collect()
    }

    /// Signed orders, for a storage that becomes ready: approved ids (the
    /// greatest completed one included, so the storage knows how far the
    /// cluster went) and rejected ids.
    pub fn signed(&self) -> (Vec<Tid>, Vec<Tid>) {
        let mut approved: Vec<Tid> = self.max_completed.into_iter().collect();
        let mut rejected = Vec::new();
        for order in self.orders.values() {
            match order.approved {
                Some(true) => approved.push(order.id),
                Some(false) => rejected.push(order.id),
                None => {}
            }
        }
        (approved, rejected)
    }

    /// Records a storage's `NotifyPackCompleted`.
    pub fn set_reported(&mut self, storage: NodeId, pack_id: Tid) {
        self.reported.insert(storage, pack_id);
    }

    /// Smallest completed id reported by `storages`, if any reported.
    pub fn min_reported(&self, storages: &BTreeSet<NodeId>) -> Option<Tid> {
        storages
            .iter()
            .filter_map(|nid| self.reported.get(nid).copied())
            .min()
    }

    /// Cluster-wide completion: the smallest id reported by the storages
    /// with readable cells. Orders up to it are forgotten; returns the
    /// `WaitForPack` requests to answer.
    pub fn update_completed(&mut self, readable: &BTreeSet<NodeId>) -> Vec<(ConnId, u32)> {
        let Some(completed) = self.min_reported(readable) else {
            return Vec::new();
        };
        if completed > Tid::ZERO {
            self.max_completed = self.max_completed.max(Some(completed));
        }
        let mut answers = Vec::new();
        let done: Vec<Tid> = self.orders.range(..=completed).map(|(id, _)| *id).collect();
        for id in done {
            self.orders.remove(&id);
            self.max_completed = self.max_completed.max(Some(id));
        }
        let waited: Vec<Tid> = self
            .waiters
            .range(..=completed)
            .map(|(id, _)| *id)
            .collect();
        for id in waited {
            answers.extend(self.waiters.remove(&id).unwrap_or_default());
        }
        answers
    }

    /// `WaitForPack(id)`: answered now (unknown or completed order), or
    /// held until the order completes, within [`MAX_PACK_WAITERS`].
    pub fn wait(&mut self, id: Tid, conn: ConnId, msg_id: u32) -> PackWait {
        if !self.orders.contains_key(&id) {
            return PackWait::Done;
        }
        if self.waiters.values().map(Vec::len).sum::<usize>() >= MAX_PACK_WAITERS {
            return PackWait::TooMany;
        }
        self.waiters.entry(id).or_default().push((conn, msg_id));
        PackWait::Held
    }

    /// A client is gone: forget its waits.
    pub fn client_lost(&mut self, conn: ConnId) {
        for waiting in self.waiters.values_mut() {
            waiting.retain(|(c, _)| *c != conn);
        }
        self.waiters.retain(|_, waiting| !waiting.is_empty());
    }
}
