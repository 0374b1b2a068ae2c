//! Write locks, read locks and the transactions a storage node takes part
//! in (architecture.md §6.4, §6.5, §6.9): which oid is locked by which
//! TTID, and the rules that decide between lock, conflict, "lockless" and
//! "wait" without ever deadlocking.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use neo_net::ConnId;
use neo_proto::{NodeId, Oid, Partition, Tid};

use crate::backend::DataId;

/// What a transaction stored (or only checked) for one oid.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The revision the client based its change on.
    pub serial: Tid,
    /// Data written for this store (held until vote); `None` for a check,
    /// a deletion or an undone creation.
    pub data_id: Option<DataId>,
    /// Undo back-pointer.
    pub data_serial: Option<Tid>,
    /// `AskCheckCurrentSerial` (readCurrent) rather than a store.
    pub checked: bool,
}

/// A transaction known to this storage.
#[derive(Debug)]
pub struct Transaction {
    /// The client connection that writes it.
    pub client_conn: ConnId,
    /// The client node.
    pub client: Option<NodeId>,
    /// Stores and checks by oid.
    pub stored: BTreeMap<Oid, Stored>,
    /// Oids accepted without taking the lock (partition not readable here).
    pub lockless: BTreeSet<Oid>,
    /// Voted: the temporary rows are written (no more locks needed).
    pub voted: bool,
    /// Whether the vote stored the transaction metadata here.
    pub has_metadata: bool,
    /// Final TID once locked by the master.
    pub tid: Option<Tid>,
}

/// Outcome of trying to lock an oid for a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock is ours.
    Locked,
    /// Accepted without the lock: another replica checks conflicts.
    Lockless,
    /// Another transaction holds the lock: retry when locks are released.
    Wait,
    /// The object changed since `serial`: this is its current serial.
    Conflict(Tid),
}

/// Transactions and locks of one storage node.
#[derive(Debug, Default)]
pub struct LockManager {
    /// Transactions by TTID.
    pub transactions: BTreeMap<Tid, Transaction>,
    /// Write locks: oid → TTID of the holder.
    write_locks: HashMap<Oid, Tid>,
    /// Read locks: oids of locked, not yet unlocked transactions; loads of
    /// them wait for the unlock.
    read_locks: HashMap<Oid, Tid>,
    /// `(holder, oid)` pairs already sent `NotifyDeadlock`.
    deadlocks_notified: HashSet<(Tid, Oid)>,
}

impl LockManager {
    /// The transaction of `ttid`, created on first use by its client.
    pub fn register(
        &mut self,
        ttid: Tid,
        conn: ConnId,
        client: Option<NodeId>,
    ) -> &mut Transaction {
        self.transactions
            .entry(ttid)
            .or_insert_with(|| Transaction {
                client_conn: conn,
                client,
                stored: BTreeMap::new(),
                lockless: BTreeSet::new(),
                voted: false,
                has_metadata: false,
                tid: None,
            })
    }

    /// Decides how `ttid` may write `oid` based on `serial` (§6.5).
    /// `replicating` says whether the oid's partition is being replicated
    /// here (then writes are accepted without locks); `last_serial` is the
    /// oid's newest committed serial. When the answer is to wait because a
    /// younger transaction holds the lock, the TTID to send
    /// `NotifyDeadlock` to is returned (once per pair).
    pub fn lock(
        &mut self,
        ttid: Tid,
        serial: Tid,
        oid: Oid,
        replicating: bool,
        last_serial: impl FnOnce() -> Option<Tid>,
    ) -> (LockOutcome, Option<Tid>) {
        let Some(transaction) = self.transactions.get_mut(&ttid) else {
            return (LockOutcome::Lockless, None);
        };
        if replicating {
            transaction.lockless.insert(oid);
            return (LockOutcome::Lockless, None);
        }
        if let Some(holder) = self.write_locks.get(&oid).copied() {
            if holder == ttid {
                if transaction.lockless.contains(&oid) {
                    // Its own lock taken for a lockless write once the
                    // partition was replicated (§9.1 step 9): still
                    // lockless for the cluster.
                    return (LockOutcome::Lockless, None);
                }
                // A second store of the same oid: after an undo, it must be
                // based on the undo's back-pointer.
                let previous = transaction.stored.get(&oid);
                if let Some(pointer) = previous.and_then(|p| p.data_serial) {
                    if serial != pointer {
                        return (LockOutcome::Conflict(pointer), None);
                    }
                }
                return (LockOutcome::Locked, None);
            }
            let holder_lockless = match self.transactions.get(&holder) {
                Some(other) if holder > ttid && !other.voted => other.lockless.contains(&oid),
                // An older transaction, or one that voted (it needs no
                // more locks: no deadlock possible).
                _ => return (LockOutcome::Wait, None),
            };
            let Some(transaction) = self.transactions.get_mut(&ttid) else {
                return (LockOutcome::Lockless, None);
            };
            if holder_lockless || transaction.lockless.contains(&oid) {
                // The holder's lock only delays new transactions: the
                // cluster relies on other cells for this oid (§9.1 step 9).
                transaction.lockless.insert(oid);
                return (LockOutcome::Lockless, None);
            }
            // A younger transaction, still storing, holds what an older one
            // wants: ask it to give the lock up (deadlock avoidance).
            let notify = self
                .deadlocks_notified
                .insert((holder, oid))
                .then_some(holder);
            return (LockOutcome::Wait, notify);
        }
        if let Some(last) = last_serial() {
            if last != serial {
                return (LockOutcome::Conflict(last), None);
            }
        }
        self.write_locks.insert(oid, ttid);
        (LockOutcome::Locked, None)
    }

    /// §9.1 step 9, first half: the oids of `partitions` written without
    /// locks by transactions in progress get a write lock, held by the
    /// youngest of their writers, which delays new writes. Returns the
    /// partitions where no oid was written so by two transactions: their
    /// lockless writes can become real locks at once.
    pub fn lock_lockless(
        &mut self,
        partitions: &BTreeSet<Partition>,
        partition_of: impl Fn(Oid) -> Partition,
    ) -> BTreeSet<Partition> {
        let mut ready = partitions.clone();
        for (ttid, transaction) in &self.transactions {
            for oid in &transaction.lockless {
                let partition = partition_of(*oid);
                if !partitions.contains(&partition) {
                    continue;
                }
                if self
                    .write_locks
                    .get(oid)
                    .is_some_and(|holder| holder != ttid)
                {
                    ready.remove(&partition);
                }
                self.write_locks.insert(*oid, *ttid);
            }
        }
        ready
    }

    /// §9.1 step 9, second half: gives up the write locks on oids of
    /// `partitions` so that each is taken again as a store would, and
    /// forgets that they were lockless. Returns `(ttid, oid, serial)` of
    /// each write to lock again.
    pub fn unlock_partitions(
        &mut self,
        partitions: &BTreeSet<Partition>,
        partition_of: impl Fn(Oid) -> Partition,
    ) -> Vec<(Tid, Oid, Tid)> {
        let locked: Vec<(Oid, Tid)> = self
            .write_locks
            .iter()
            .filter(|(oid, _)| partitions.contains(&partition_of(**oid)))
            .map(|(oid, ttid)| (*oid, *ttid))
            .collect();
        let mut relocks = Vec::new();
        for (oid, ttid) in locked {
            self.write_locks.remove(&oid);
            if let Some(transaction) = self.transactions.get_mut(&ttid) {
                transaction.lockless.remove(&oid);
                if let Some(stored) = transaction.stored.get(&oid) {
                    relocks.push((ttid, oid, stored.serial));
                }
            }
        }
        relocks.sort_unstable();
        relocks
    }

    /// Own cells of `partitions` are gone: forgets every lock and write on
    /// their oids. Returns the data ids the forgotten writes held.
    pub fn forget_partitions(
        &mut self,
        partitions: &BTreeSet<Partition>,
        partition_of: impl Fn(Oid) -> Partition,
    ) -> Vec<DataId> {
        let gone = |oid: &Oid| partitions.contains(&partition_of(*oid));
        self.write_locks.retain(|oid, _| !gone(oid));
        self.read_locks.retain(|oid, _| !gone(oid));
        let mut held = Vec::new();
        for transaction in self.transactions.values_mut() {
            transaction.lockless.retain(|oid| !gone(oid));
            transaction.stored.retain(|oid, stored| {
                if gone(oid) {
                    held.extend(stored.data_id);
                }
                !gone(oid)
            });
        }
        held
    }

    /// Gives up `ttid`'s write lock on `oid` (relock).
    pub fn unlock_oid(&mut self, ttid: Tid, oid: Oid) {
        if self.write_locks.get(&oid) == Some(&ttid) {
            self.write_locks.remove(&oid);
        }
        self.deadlocks_notified.remove(&(ttid, oid));
    }

    /// Whether loads of `oid` must wait for an unlock.
    pub fn is_read_locked(&self, oid: Oid) -> bool {
        self.read_locks.contains_key(&oid)
    }

    /// The master locked `ttid` with `tid`: loads of its oids wait.
    pub fn set_locked(&mut self, ttid: Tid, tid: Tid) -> bool {
        let Some(transaction) = self.transactions.get_mut(&ttid) else {
            return false;
        };
        transaction.tid = Some(tid);
        for (oid, stored) in &transaction.stored {
            if !stored.checked {
                self.read_locks.insert(*oid, ttid);
            }
        }
        true
    }

    /// Forgets a transaction and releases all its locks; returns it.
    pub fn release(&mut self, ttid: Tid) -> Option<Transaction> {
        let transaction = self.transactions.remove(&ttid)?;
        self.write_locks.retain(|_, holder| *holder != ttid);
        self.read_locks.retain(|_, holder| *holder != ttid);
        self.deadlocks_notified
            .retain(|(holder, _)| *holder != ttid);
        Some(transaction)
    }

    /// TTIDs of the transactions of a client connection.
    pub fn of_conn(&self, conn: ConnId) -> Vec<Tid> {
        self.transactions
            .iter()
            .filter(|(_, t)| t.client_conn == conn)
            .map(|(ttid, _)| *ttid)
            .collect()
    }

    /// TTIDs of the transactions of a client node.
    pub fn of_client(&self, client: NodeId) -> Vec<Tid> {
        self.transactions
            .iter()
            .filter(|(_, t)| t.client == Some(client))
            .map(|(ttid, _)| *ttid)
            .collect()
    }

    /// Whether a transaction locked with a TID in `first..=last` waits
    /// for its unlock.
    pub fn is_unlocking_in(&self, first: Tid, last: Tid) -> bool {
        self.transactions
            .values()
            .any(|t| t.tid.is_some_and(|tid| first <= tid && tid <= last))
    }

    /// Final TID of a locked transaction.
    pub fn locked_tid(&self, ttid: Tid) -> Option<Tid> {
        self.transactions.get(&ttid).and_then(|t| t.tid)
    }

    /// Forgets every transaction (the master is gone or stopped us).
    pub fn clear(&mut self) -> Vec<Transaction> {
        self.write_locks.clear();
        self.read_locks.clear();
        self.deadlocks_notified.clear();
        std::mem::take(&mut self.transactions)
            .into_values()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: Oid = Oid(1);

    fn manager_with(ttids: &[u64]) -> LockManager {
        let mut manager = LockManager::default();
        for ttid in ttids {
            manager.register(Tid(*ttid), ConnId(1), None);
        }
        manager
    }

    #[test]
    fn conflicts_are_detected_against_the_last_serial() {
        let mut manager = manager_with(&[10]);
        let outcome = manager.lock(Tid(10), Tid(3), OID, false, || Some(Tid(5)));
        assert_eq!(outcome, (LockOutcome::Conflict(Tid(5)), None));
        let outcome = manager.lock(Tid(10), Tid(5), OID, false, || Some(Tid(5)));
        assert_eq!(outcome, (LockOutcome::Locked, None));
    }

    #[test]
    fn older_transactions_wait_younger_ones_are_asked_to_relock() {
        let mut manager = manager_with(&[10, 20]);
        // The younger transaction 20 locks first.
        assert_eq!(
            manager.lock(Tid(20), Tid::ZERO, OID, false, || None).0,
            LockOutcome::Locked
        );
        // The older 10 waits and asks 20 to relock, once.
        assert_eq!(
            manager.lock(Tid(10), Tid::ZERO, OID, false, || None),
            (LockOutcome::Wait, Some(Tid(20)))
        );
        assert_eq!(
            manager.lock(Tid(10), Tid::ZERO, OID, false, || None),
            (LockOutcome::Wait, None)
        );
        // 20 gives the lock up; 10 takes it; 20 now waits for the older one.
        manager.unlock_oid(Tid(20), OID);
        assert_eq!(
            manager.lock(Tid(10), Tid::ZERO, OID, false, || None).0,
            LockOutcome::Locked
        );
        assert_eq!(
            manager.lock(Tid(20), Tid::ZERO, OID, false, || None),
            (LockOutcome::Wait, None)
        );
        // Once 10 is over, 20 sees 10's commit as a conflict.
        manager.release(Tid(10));
        assert_eq!(
            manager
                .lock(Tid(20), Tid::ZERO, OID, false, || Some(Tid(15)))
                .0,
            LockOutcome::Conflict(Tid(15))
        );
    }

    #[test]
    fn voted_holders_are_waited_for_and_unreadable_partitions_are_lockless() {
        let mut manager = manager_with(&[10, 20]);
        assert_eq!(
            manager.lock(Tid(20), Tid::ZERO, OID, false, || None).0,
            LockOutcome::Locked
        );
        if let Some(transaction) = manager.transactions.get_mut(&Tid(20)) {
            transaction.voted = true;
        }
        assert_eq!(
            manager.lock(Tid(10), Tid::ZERO, OID, false, || None),
            (LockOutcome::Wait, None),
            "a voted transaction needs no more locks: no deadlock possible"
        );
        assert_eq!(
            manager.lock(Tid(10), Tid::ZERO, Oid(2), true, || None).0,
            LockOutcome::Lockless
        );
    }

    #[test]
    fn locked_transactions_read_lock_their_oids_until_released() {
        let mut manager = manager_with(&[10]);
        manager.lock(Tid(10), Tid::ZERO, OID, false, || None);
        if let Some(transaction) = manager.transactions.get_mut(&Tid(10)) {
            transaction.stored.insert(
                OID,
                Stored {
                    serial: Tid::ZERO,
                    data_id: Some(1),
                    data_serial: None,
                    checked: false,
                },
            );
        }
        assert!(manager.set_locked(Tid(10), Tid(11)));
        assert!(manager.is_read_locked(OID));
        assert_eq!(manager.locked_tid(Tid(10)), Some(Tid(11)));
        manager.release(Tid(10));
        assert!(!manager.is_read_locked(OID));
    }

    fn stored(serial: Tid) -> Stored {
        Stored {
            serial,
            data_id: Some(serial.0),
            data_serial: None,
            checked: false,
        }
    }

    /// §9.1 step 9: writes accepted without locks while the partition was
    /// replicated become locks of their youngest writer; a partition two
    /// transactions wrote an oid of waits; the others lock again for real.
    #[test]
    fn lockless_writes_of_a_replicated_partition_become_locks() {
        let mut manager = manager_with(&[10, 20, 30, 40]);
        let partition_of = |oid: Oid| (oid.0 % 2) as Partition;
        // Oid 1 (partition 1) by 10 and 20; oid 2 (partition 0) by 30.
        for (ttid, oid) in [(10, 1), (20, 1), (30, 2)] {
            let outcome = manager.lock(Tid(ttid), Tid::ZERO, Oid(oid), true, || None);
            assert_eq!(outcome.0, LockOutcome::Lockless);
            if let Some(transaction) = manager.transactions.get_mut(&Tid(ttid)) {
                transaction.stored.insert(Oid(oid), stored(Tid::ZERO));
            }
        }
        let replicated = [0, 1].into_iter().collect();
        let ready = manager.lock_lockless(&replicated, partition_of);
        assert_eq!(ready, [0].into_iter().collect());
        // The youngest writer's lock delays new writers, lockless for an
        // older one.
        assert_eq!(
            manager.lock(Tid(40), Tid::ZERO, Oid(1), false, || None).0,
            LockOutcome::Wait
        );
        manager.register(Tid(5), ConnId(1), None);
        assert_eq!(
            manager.lock(Tid(5), Tid::ZERO, Oid(1), false, || None).0,
            LockOutcome::Lockless
        );
        let relocks = manager.unlock_partitions(&ready, partition_of);
        assert_eq!(relocks, [(Tid(30), Oid(2), Tid::ZERO)]);
        assert_eq!(
            manager.lock(Tid(30), Tid::ZERO, Oid(2), false, || None).0,
            LockOutcome::Locked,
            "a real lock now"
        );
        // Partition 1 goes: what was written there is forgotten, with the
        // data it held.
        let held = manager.forget_partitions(&[1].into_iter().collect(), partition_of);
        assert_eq!(held.len(), 2);
        assert!(manager
            .transactions
            .values()
            .all(|t| !t.stored.contains_key(&Oid(1)) && !t.lockless.contains(&Oid(1))));
        assert_eq!(
            manager.lock(Tid(40), Tid::ZERO, Oid(1), false, || None).0,
            LockOutcome::Locked
        );
    }
}
