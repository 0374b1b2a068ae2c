//! The master's pack orders (architecture.md §11.3): orders registered at
//! `tpc_finish`, their signature, what each storage reports as completed,
//! the clients waiting for a pack to finish, and the clients asking for
//! orders the master forgot (completed ones), collected from the storages.

use std::collections::{BTreeMap, BTreeSet};

use neo_net::ConnId;
use neo_proto::packets::{PackOrder, PackRequest};
use neo_proto::{NodeId, Tid};

/// Most `WaitForPack` requests held at once.
pub const MAX_PACK_WAITERS: usize = 4096;

/// Most client `AskPackOrders` collecting completed orders from the
/// storages at once.
pub const MAX_OLD_ORDER_REQUESTS: usize = 64;

/// What to do with a client's `AskPackOrders`.
#[derive(Debug, PartialEq)]
pub enum OrdersQuery {
    /// Every order asked for is known here: answer these.
    Answer(Vec<PackOrder>),
    /// Some were forgotten: ask these storages, with the request's id
    /// (see [`PackManager::old_orders_answered`]).
    AskStorages(u64, BTreeSet<NodeId>),
    /// Refused: too many collections are in progress already.
    TooMany,
}

/// A client's `AskPackOrders` waiting for the storages' orders.
#[derive(Debug)]
struct OldOrders {
    client: ConnId,
    msg_id: u32,
    min_id: Tid,
    waiting: BTreeSet<NodeId>,
    orders: BTreeMap<Tid, PackOrder>,
}

/// An answer to a client: connection, message id, orders.
pub type OrdersAnswer = (ConnId, u32, Vec<PackOrder>);

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
    /// Client requests for completed orders, by request id.
    old: BTreeMap<u64, OldOrders>,
    next_old: u64,
}

impl PackManager {
    /// Forgets the orders and what storages reported (new verification:
    /// they are reloaded from the storages).
    pub fn reset(&mut self) {
        self.orders.clear();
        self.reported.clear();
        self.max_completed = None;
    }

    /// Orders not completed by the whole cluster yet.
    pub fn pending(&self) -> usize {
        self.orders.len()
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

    /// `AskPackOrders(min_id)` from a client, which wants every order with
    /// an id `>= min_id` (to tell which transactions pack made
    /// unreachable). Completed orders are forgotten here but kept by the
    /// storages with the transactions that carried them: when some may be
    /// wanted, they are collected from `readable` (the storages owning
    /// readable cells), as NEO/py's master does.
    pub fn query_orders(
        &mut self,
        client: ConnId,
        msg_id: u32,
        min_id: Tid,
        readable: BTreeSet<NodeId>,
    ) -> OrdersQuery {
        if self.max_completed.is_none_or(|done| done < min_id) || readable.is_empty() {
            return OrdersQuery::Answer(self.orders_from(min_id));
        }
        if self.old.len() >= MAX_OLD_ORDER_REQUESTS {
            return OrdersQuery::TooMany;
        }
        let id = self.next_old;
        self.next_old += 1;
        let request = OldOrders {
            client,
            msg_id,
            min_id,
            waiting: readable.clone(),
            orders: BTreeMap::new(),
        };
        self.old.insert(id, request);
        OrdersQuery::AskStorages(id, readable)
    }

    /// A storage's orders for request `id`; the answer to the client once
    /// every storage asked answered (or was lost).
    pub fn old_orders_answered(
        &mut self,
        id: u64,
        storage: NodeId,
        orders: Vec<PackOrder>,
    ) -> Option<OrdersAnswer> {
        let request = self.old.get_mut(&id)?;
        if !request.waiting.remove(&storage) {
            return None;
        }
        for order in orders {
            if order.id >= request.min_id {
                request.orders.entry(order.id).or_insert(order);
            }
        }
        if !request.waiting.is_empty() {
            return None;
        }
        let request = self.old.remove(&id)?;
        Some(self.complete_old(request))
    }

    /// A storage is gone: the collections that waited only for it end.
    pub fn old_orders_storage_lost(&mut self, storage: NodeId) -> Vec<OrdersAnswer> {
        for request in self.old.values_mut() {
            request.waiting.remove(&storage);
        }
        let done: Vec<u64> = self
            .old
            .iter()
            .filter(|(_, request)| request.waiting.is_empty())
            .map(|(id, _)| *id)
            .collect();
        let mut answers = Vec::new();
        for id in done {
            if let Some(request) = self.old.remove(&id) {
                answers.push(self.complete_old(request));
            }
        }
        answers
    }

    /// The storages' orders, completed by what is known here (which has
    /// the latest signatures).
    fn complete_old(&self, mut request: OldOrders) -> OrdersAnswer {
        for order in self.orders_from(request.min_id) {
            request.orders.insert(order.id, order);
        }
        let orders = request.orders.into_values().collect();
        (request.client, request.msg_id, orders)
    }

    /// Every order known here (not completed yet) with an id `>= min_id`.
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

    /// A client is gone: forget its waits and requests.
    pub fn client_lost(&mut self, conn: ConnId) {
        self.old.retain(|_, request| request.client != conn);
        for waiting in self.waiters.values_mut() {
            waiting.retain(|(c, _)| *c != conn);
        }
        self.waiters.retain(|_, waiting| !waiting.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_of_completed_orders_are_bounded() {
        let mut packs = PackManager {
            max_completed: Some(Tid(10)),
            ..PackManager::default()
        };
        let storages = BTreeSet::from([NodeId(1)]);
        for msg_id in 0..MAX_OLD_ORDER_REQUESTS as u32 {
            let query = packs.query_orders(ConnId(1), msg_id, Tid::ZERO, storages.clone());
            assert!(matches!(query, OrdersQuery::AskStorages(..)));
        }
        let query = packs.query_orders(ConnId(1), 99, Tid::ZERO, storages.clone());
        assert_eq!(query, OrdersQuery::TooMany);
        // Orders not completed yet need no collection.
        let query = packs.query_orders(ConnId(1), 100, Tid(11), storages);
        assert_eq!(query, OrdersQuery::Answer(vec![]));
        // The client's requests go with it.
        packs.client_lost(ConnId(1));
        assert!(packs.old.is_empty());
    }
}
