//! The client cache (architecture.md §7.3–7.4): uncompressed object
//! revisions `(oid, tid, next_tid, data)` within a byte budget.
//!
//! Invalidations are applied here by the thread that reads the master
//! connection, before the client's last TID moves, so a lookup never serves
//! a revision that an invalidation already ended. Loads in progress record
//! the invalidations of their oid meanwhile (rule 3), and a reconnection
//! drops every current entry (§7.5). Eviction is least-recently-used: only
//! the validity rules matter for correctness.
//!
//! For the persistent cache (`persist.rs`), [`Cache::snapshot`] copies the
//! entries as they stand at one TID, and [`Cache::install`] puts back
//! entries checked against the cluster up to a TID, refusing when newer
//! invalidations were applied meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use neo_proto::{Oid, Tid};

/// Bytes counted per entry on top of its data.
pub const ENTRY_OVERHEAD: usize = 80;

struct Entry {
    tid: Tid,
    /// `None`: current as far as the client knows.
    next: Option<Tid>,
    data: Bytes,
    /// Key in `Inner::lru`.
    used: u64,
}

impl Entry {
    fn cost(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// A load of one oid from a storage, in progress.
#[derive(Default)]
struct Loading {
    count: usize,
    /// Invalidation TIDs received for the oid while loading.
    invalidated: Vec<Tid>,
}

#[derive(Default)]
struct Inner {
    /// Revisions of each oid, ascending by tid.
    entries: HashMap<Oid, Vec<Entry>>,
    lru: BTreeMap<u64, (Oid, Tid)>,
    clock: u64,
    size: usize,
    loading: HashMap<Oid, Loading>,
    /// Bumped by `invalidate_all`: loads started before must not be cached.
    epoch: u64,
    hits: u64,
    misses: u64,
    /// Bumped by every change of the entries or of the TID they are valid
    /// at: the persistent cache saves only when it moved.
    changes: u64,
    /// The highest TID whose invalidation (or own commit) was applied.
    applied: Tid,
}

/// One revision, as the persistent cache saves and restores it.
pub struct Saved {
    pub oid: Oid,
    pub tid: Tid,
    /// `None`: current at the snapshot's TID.
    pub next: Option<Tid>,
    pub data: Bytes,
}

/// The entries as they stood at `tid`, from [`Cache::snapshot`].
pub struct Snapshot {
    /// Every invalidation up to it is reflected in `entries`, none after.
    pub tid: Tid,
    /// Most recently used first.
    pub entries: Vec<Saved>,
    /// [`Cache::changes`] when taken.
    pub changes: u64,
}

/// What a lookup found.
pub struct Hit {
    pub data: Bytes,
    pub serial: Tid,
    pub next: Option<Tid>,
}

/// Handle of a load in progress, from [`Cache::begin_load`].
pub struct LoadToken {
    oid: Oid,
    epoch: u64,
}

/// Counters, for tests and diagnostics.
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub size: usize,
    pub budget: usize,
}

/// The cache; shared between the Python threads and the client's tasks.
pub struct Cache {
    budget: usize,
    inner: Mutex<Inner>,
}

impl Cache {
    pub fn new(budget: usize) -> Cache {
        Cache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The revision current just before `before`, if cached and known valid.
    /// `last` is the client's last TID: an entry still current is only
    /// valid up to it.
    pub fn lookup_before(&self, oid: Oid, before: Tid, last: Tid) -> Option<Hit> {
        let mut inner = self.lock();
        let found = inner.find_before(oid, before, last);
        inner.record(oid, found)
    }

    /// Whether [`Cache::lookup_before`] would hit, without counting it.
    pub fn has_before(&self, oid: Oid, before: Tid, last: Tid) -> bool {
        self.lock().find_before(oid, before, last).is_some()
    }

    /// The revision written by `serial`, if cached.
    pub fn lookup_serial(&self, oid: Oid, serial: Tid) -> Option<Hit> {
        let mut inner = self.lock();
        let found = inner
            .entries
            .get(&oid)
            .and_then(|revisions| revisions.iter().position(|e| e.tid == serial));
        inner.record(oid, found)
    }

    pub fn begin_load(&self, oid: Oid) -> LoadToken {
        let mut inner = self.lock();
        inner.loading.entry(oid).or_default().count += 1;
        LoadToken {
            oid,
            epoch: inner.epoch,
        }
    }

    /// Ends a load; caches what it found (`None`: nothing to cache).
    pub fn end_load(&self, token: LoadToken, found: Option<(Tid, Option<Tid>, Bytes)>) {
        let mut inner = self.lock();
        let oid = token.oid;
        let invalidated = match inner.loading.get_mut(&oid) {
            Some(loading) => {
                loading.count -= 1;
                let invalidated = loading.invalidated.clone();
                if loading.count == 0 {
                    inner.loading.remove(&oid);
                }
                invalidated
            }
            None => Vec::new(),
        };
        let Some((serial, next, data)) = found else {
            return;
        };
        if token.epoch != inner.epoch {
            return;
        }
        let next = next.or_else(|| invalidated.iter().copied().filter(|t| *t > serial).min());
        inner.insert(self.budget, oid, serial, next, data);
    }

    /// `InvalidateObjects(tid, oids)`, or our own commit of them.
    pub fn invalidate(&self, tid: Tid, oids: &[Oid]) {
        let mut inner = self.lock();
        inner.applied = inner.applied.max(tid);
        inner.changes += 1;
        for oid in oids {
            if let Some(loading) = inner.loading.get_mut(oid) {
                loading.invalidated.push(tid);
            }
            if let Some(revisions) = inner.entries.get_mut(oid) {
                if let Some(last) = revisions.last_mut() {
                    if last.next.is_none() && last.tid < tid {
                        last.next = Some(tid);
                    }
                }
            }
        }
    }

    /// Our own commit wrote `data` as revision `tid` of `oid`.
    pub fn committed(&self, oid: Oid, tid: Tid, data: Bytes) {
        let mut inner = self.lock();
        inner.insert(self.budget, oid, tid, None, data);
    }

    /// Invalidations may have been missed: drop every current entry and
    /// forget loads in progress.
    pub fn invalidate_all(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.changes += 1;
        let mut dropped = Vec::new();
        for (oid, revisions) in &inner.entries {
            for entry in revisions.iter().filter(|e| e.next.is_none()) {
                dropped.push((*oid, entry.tid));
            }
        }
        for (oid, tid) in dropped {
            inner.remove(oid, tid);
        }
    }

    /// Drops everything (database truncated, storage closed).
    pub fn clear(&self) {
        let mut inner = self.lock();
        let epoch = inner.epoch + 1;
        let (hits, misses, changes) = (inner.hits, inner.misses, inner.changes + 1);
        *inner = Inner {
            epoch,
            hits,
            misses,
            changes,
            ..Inner::default()
        };
    }

    /// See `Inner::changes`.
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// Bumped whenever invalidations may have been missed.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The entries as they stand at the client's last TID, which `last`
    /// reads under the cache lock. Invalidations are applied here before
    /// the last TID moves, so every one up to it is reflected; what a
    /// later one (applied, the last TID not moved yet) or a later commit of
    /// ours changed is undone in the copy: revisions written after the TID
    /// are left out, and revisions ended after it are current at it. The
    /// data is shared, not copied.
    pub fn snapshot(&self, last: impl FnOnce() -> Tid) -> Snapshot {
        let inner = self.lock();
        let tid = last();
        let mut entries = Vec::with_capacity(inner.lru.len());
        for (oid, serial) in inner.lru.values().rev() {
            if *serial > tid {
                continue;
            }
            let Some(entry) = inner
                .entries
                .get(oid)
                .and_then(|revisions| revisions.iter().find(|e| e.tid == *serial))
            else {
                continue;
            };
            entries.push(Saved {
                oid: *oid,
                tid: entry.tid,
                next: entry.next.filter(|next| *next <= tid),
                data: entry.data.clone(),
            });
        }
        Snapshot {
            tid,
            entries,
            changes: inner.changes,
        }
    }

    /// Puts back `entries` (most recently used first) read from a file and
    /// checked against the cluster up to `checked`: no change committed
    /// after their snapshot and up to `checked` is missing from them.
    ///
    /// Refused (the entries given back) if an invalidation after `checked`
    /// was applied meanwhile: the caller must check further. Invalidations
    /// applied after this call find the entries in place. If a reconnection
    /// happened since `epoch` ([`Cache::epoch`]), invalidations may have
    /// been missed: only the entries with a known end are put back.
    /// Returns how many are in the cache.
    pub fn install(
        &self,
        entries: Vec<Saved>,
        checked: Tid,
        epoch: u64,
    ) -> Result<usize, Vec<Saved>> {
        let mut inner = self.lock();
        if inner.applied > checked {
            return Err(entries);
        }
        let reconnected = inner.epoch != epoch;
        inner.changes += 1;
        for saved in entries.into_iter().rev() {
            if reconnected && saved.next.is_none() {
                continue;
            }
            inner.insert(self.budget, saved.oid, saved.tid, saved.next, saved.data);
        }
        Ok(inner.lru.len())
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        Stats {
            hits: inner.hits,
            misses: inner.misses,
            entries: inner.lru.len(),
            size: inner.size,
            budget: self.budget,
        }
    }
}

impl Inner {
    /// Counts a lookup and marks the entry found as used.
    /// Index of the revision of `oid` valid just before `before`.
    fn find_before(&self, oid: Oid, before: Tid, last: Tid) -> Option<usize> {
        let revisions = self.entries.get(&oid)?;
        let index = revisions.iter().rposition(|e| e.tid < before)?;
        let entry = &revisions[index];
        let valid = match entry.next {
            Some(next) => next >= before,
            None => before.0 <= last.0.saturating_add(1),
        };
        valid.then_some(index)
    }

    fn record(&mut self, oid: Oid, found: Option<usize>) -> Option<Hit> {
        let Some(index) = found else {
            self.misses += 1;
            return None;
        };
        self.hits += 1;
        self.clock += 1;
        let clock = self.clock;
        let revisions = self.entries.get_mut(&oid)?;
        let entry = &mut revisions[index];
        self.lru.remove(&entry.used);
        entry.used = clock;
        self.lru.insert(clock, (oid, entry.tid));
        Some(Hit {
            data: entry.data.clone(),
            serial: entry.tid,
            next: entry.next,
        })
    }

    fn insert(&mut self, budget: usize, oid: Oid, tid: Tid, next: Option<Tid>, data: Bytes) {
        if data.len() + ENTRY_OVERHEAD > budget {
            return;
        }
        self.remove(oid, tid);
        self.clock += 1;
        self.changes += 1;
        let entry = Entry {
            tid,
            next,
            data,
            used: self.clock,
        };
        self.size += entry.cost();
        self.lru.insert(self.clock, (oid, tid));
        let revisions = self.entries.entry(oid).or_default();
        let position = revisions.partition_point(|e| e.tid < tid);
        if next.is_none() {
            // A newer revision is current now: the previous one ended here.
            if let Some(previous) = position.checked_sub(1).map(|i| &mut revisions[i]) {
                if previous.next.is_none() {
                    previous.next = Some(tid);
                }
            }
        }
        revisions.insert(position, entry);
        while self.size > budget {
            let Some((_, (oid, tid))) = self.lru.pop_first() else {
                break;
            };
            self.remove(oid, tid);
        }
    }

    fn remove(&mut self, oid: Oid, tid: Tid) {
        let Some(revisions) = self.entries.get_mut(&oid) else {
            return;
        };
        if let Some(index) = revisions.iter().position(|e| e.tid == tid) {
            let entry = revisions.remove(index);
            self.size -= entry.cost();
            self.lru.remove(&entry.used);
        }
        if revisions.is_empty() {
            self.entries.remove(&oid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    /// A snapshot at TID 50 shows the cache as it stood then: what an
    /// invalidation at 60 (applied, the last TID not moved yet) ended is
    /// current, what a commit at 70 wrote is absent.
    #[test]
    fn snapshot_is_consistent_at_its_tid() {
        let cache = Cache::new(1 << 20);
        cache.committed(Oid(1), Tid(10), data("one"));
        cache.committed(Oid(2), Tid(20), data("two"));
        cache.committed(Oid(3), Tid(5), data("three, old"));
        cache.committed(Oid(3), Tid(30), data("three"));
        cache.invalidate(Tid(60), &[Oid(1)]);
        cache.invalidate(Tid(70), &[Oid(2)]);
        cache.committed(Oid(2), Tid(70), data("two, new"));
        let snapshot = cache.snapshot(|| Tid(50));
        assert_eq!(snapshot.tid, Tid(50));
        let mut got: Vec<_> = snapshot
            .entries
            .iter()
            .map(|e| (e.oid.0, e.tid.0, e.next.map(|n| n.0)))
            .collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                (1, 10, None),
                (2, 20, None),
                (3, 5, Some(30)),
                (3, 30, None)
            ]
        );
        // Most recently used first (the revision at 70 was, but is left out).
        let first = &snapshot.entries[0];
        assert_eq!((first.oid, first.tid), (Oid(3), Tid(30)));
    }

    /// Entries are refused while invalidations newer than what was checked
    /// were applied; after a reconnection only history goes back.
    #[test]
    fn install_follows_invalidations() {
        let saved = || {
            vec![
                Saved {
                    oid: Oid(1),
                    tid: Tid(10),
                    next: None,
                    data: data("one"),
                },
                Saved {
                    oid: Oid(2),
                    tid: Tid(5),
                    next: Some(Tid(8)),
                    data: data("two"),
                },
            ]
        };
        let cache = Cache::new(1 << 20);
        let epoch = cache.epoch();
        cache.invalidate(Tid(60), &[Oid(9)]);
        let refused = cache.install(saved(), Tid(50), epoch);
        assert_eq!(refused.err().map(|e| e.len()), Some(2));
        assert_eq!(cache.install(saved(), Tid(60), epoch).ok(), Some(2));
        let hit = cache.lookup_before(Oid(1), Tid(61), Tid(60));
        assert_eq!(hit.map(|h| h.serial), Some(Tid(10)));
        cache.invalidate(Tid(70), &[Oid(1)]);
        assert!(cache.lookup_before(Oid(1), Tid(71), Tid(70)).is_none());

        let cache = Cache::new(1 << 20);
        let epoch = cache.epoch();
        cache.invalidate_all();
        assert_eq!(cache.install(saved(), Tid(50), epoch).ok(), Some(1));
        assert!(cache.lookup_serial(Oid(2), Tid(5)).is_some());
    }
}
