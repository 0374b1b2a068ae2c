//! The persistent client cache (`cache_file`): the client cache saved to a
//! file and reused at the next start, so that an application's first
//! requests after a restart are served locally, as ZEO's and RelStorage's
//! persistent caches do. Beyond NEO/py, which has none.
//!
//! What it must never do is serve a stale revision. The design, and why:
//!
//! - **What is saved.** A snapshot of the cache ([`Cache::snapshot`]) at
//!   one TID, the *cache TID*: the client's last TID, read under the cache
//!   lock. The client applies an invalidation to the cache before its last
//!   TID moves, so every change up to the cache TID is reflected; changes
//!   after it are undone in the copy. Revisions with a known end are
//!   immutable history; the others were current at the cache TID.
//! - **Cluster identity.** The file names the cluster and the TID of its
//!   first transaction (two databases created apart do not share it), and
//!   the cache TID must be a transaction the cluster knows: a database
//!   restored from a backup and then diverged, or truncated, fails that.
//!   Pack keeps transaction metadata, so neither check fails after a pack.
//! - **Reuse at start** ([`Persistence::restore`], in the constructor,
//!   before the application can load anything): the transactions committed
//!   since the cache TID are listed (`iterate_tids`) and their oids read
//!   (`transaction_info`); each ends the current revision of its oids at its
//!   TID. At most [`MAX_CHECKED_TRANSACTIONS`] transactions are checked:
//!   each costs a round trip, and beyond that checking costs about what
//!   refilling a cache of the default 20 MiB from the cluster costs (10,000
//!   to 40,000 loads of typical 0.5–2 KiB objects). Invalidations keep
//!   arriving meanwhile; the entries go into the cache only if none after
//!   the checked range was applied yet ([`Cache::install`]), else the new
//!   range is checked too. A file too old, of another cluster, ahead of the
//!   cluster, unreadable or corrupt is dropped (deleted), with a log line.
//! - **Writing** is done by a thread of its own, never by the application:
//!   every `interval` if the cache changed, and at `close()`. The snapshot
//!   shares the cached data (no copy under the lock; data evicted during
//!   a write lives until it ends, so at most twice the budget briefly);
//!   the file holds at most the cache's budget, so one write costs at most
//!   that. It goes to a
//!   temporary file, fsynced, then renamed over the previous one: a client
//!   killed at any moment leaves the previous complete file or none, and
//!   the file's checksum catches the rest (`cache_file.rs`).
//! - **Pack.** A revision that a pack removed may stay in the file as
//!   history and be served to a `loadBefore` older than the pack. That is
//!   not stale (it is exactly what was committed, and what ZODB's own object
//!   caches keep serving too); a snapshot older than the pack may simply
//!   fail without the file.
//! - **One client per file**, as ZEO wants one per client name: two writing
//!   the same file waste each other's writes, and a torn result is dropped
//!   by its checksum, never served.
//!
//! The check relies on the storages listing every transaction up to the
//! client's last TID: ours delay a listing that covers a transaction still
//! being unlocked (`neo-storage` `reads.rs`, `read_waits`). A storage that
//! did not could only miss a transaction committed in the very instant of
//! the check.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use neo_client::{BlockingClient, ClientError};
use neo_proto::{Oid, Tid};

use crate::cache::{Cache, Saved};
use crate::cache_file::{self, FileError, Header};

/// The most transactions checked at start by default; older files are
/// dropped.
pub const MAX_CHECKED_TRANSACTIONS: usize = 10_000;
/// TIDs asked per `iterate_tids` call at start.
const TIDS_PER_REQUEST: u32 = 1000;
/// Rounds of checking newer transactions before giving up on a cluster
/// that commits faster than the start-up check reads.
const MAX_CHECK_ROUNDS: usize = 20;
/// Messages kept for Python's log until drained.
const MAX_LOG_LINES: usize = 100;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A log line for Python's `logging`.
#[derive(Clone, Copy)]
pub enum Level {
    Info,
    Warning,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
        }
    }
}

/// Why a file was not reused.
#[derive(Debug, thiserror::Error)]
enum Dropped {
    #[error("{0}")]
    File(#[from] FileError),
    #[error("written for cluster {0:?}")]
    OtherName(String),
    #[error("written for another cluster of that name (first transaction {file}, here {here})")]
    OtherCluster { file: Tid, here: String },
    #[error(
        "its TID {file} is ahead of the cluster's last TID {last} (truncated, or another cluster)"
    )]
    Ahead { file: Tid, last: Tid },
    #[error("its TID {0} is not a transaction of this cluster (another cluster, or truncated)")]
    UnknownTid(Tid),
    #[error("too old: more than {limit} transactions since its TID {tid}")]
    TooOld { tid: Tid, limit: usize },
    #[error("the cluster kept committing faster than the check could follow")]
    Busy,
    #[error("cannot check it against the cluster: {0}")]
    Client(#[from] ClientError),
}

/// What a start-up reused.
struct Restored {
    /// Entries put back.
    restored: usize,
    /// Transactions checked since the file's TID.
    checked: usize,
    /// Current revisions they ended.
    ended: usize,
    /// Entries of the file over the budget.
    skipped: u64,
}

/// The entries of a file, ending current revisions as transactions are
/// checked.
struct Staging {
    entries: Vec<Saved>,
    /// Index in `entries` of each oid's revision still current.
    current: std::collections::HashMap<Oid, usize>,
}

impl Staging {
    fn new(entries: Vec<Saved>) -> Staging {
        let current = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.next.is_none())
            .map(|(i, e)| (e.oid, i))
            .collect();
        Staging { entries, current }
    }

    /// Transaction `tid` (checked in ascending order) modified `oids`.
    fn modified(&mut self, tid: Tid, oids: &[Oid]) -> usize {
        let mut ended = 0;
        for oid in oids {
            if let Some(index) = self.current.remove(oid) {
                let entry = &mut self.entries[index];
                debug_assert!(entry.tid < tid);
                entry.next = Some(tid);
                ended += 1;
            }
        }
        ended
    }
}

/// What the writer thread is asked to do.
#[derive(Default)]
struct Control {
    stop: bool,
}

/// The persistent cache of one client.
pub struct Persistence {
    path: PathBuf,
    cluster: String,
    interval: Duration,
    /// The most transactions checked at start.
    check_limit: usize,
    /// The cluster's first TID, once known.
    first_tid: Mutex<Option<Tid>>,
    control: Mutex<Control>,
    wake: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
    log: Mutex<Vec<(Level, String)>>,
    /// Entries put back from the file at start.
    restored: AtomicUsize,
    /// Files written.
    saves: AtomicU64,
}

impl Persistence {
    pub fn new(
        path: PathBuf,
        cluster: &str,
        interval: Duration,
        check_limit: usize,
    ) -> Persistence {
        Persistence {
            path,
            cluster: cluster.to_owned(),
            interval,
            check_limit,
            first_tid: Mutex::new(None),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            thread: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            restored: AtomicUsize::new(0),
            saves: AtomicU64::new(0),
        }
    }

    fn say(&self, level: Level, message: String) {
        let mut log = lock(&self.log);
        if log.len() < MAX_LOG_LINES {
            log.push((level, message));
        }
    }

    /// Log lines since the last call.
    pub fn drain_log(&self) -> Vec<(Level, String)> {
        std::mem::take(&mut *lock(&self.log))
    }

    pub fn restored(&self) -> usize {
        self.restored.load(Ordering::Relaxed)
    }

    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::Relaxed)
    }

    /// The TID of the cluster's first transaction (`None`: none yet).
    fn first_tid(&self, client: &BlockingClient) -> Result<Option<Tid>, ClientError> {
        if let Some(tid) = *lock(&self.first_tid) {
            return Ok(Some(tid));
        }
        let first = client.iterate_tids(Tid::ZERO, None, 1)?.first().copied();
        *lock(&self.first_tid) = first;
        Ok(first)
    }

    /// Puts back into `cache` what the file holds that is still valid, or
    /// drops the file; says which in the log.
    pub fn restore(&self, client: &BlockingClient, cache: &Cache) {
        let path = self.path.display();
        match self.try_restore(client, cache) {
            Ok(None) => self.say(Level::Info, format!("no cache file {path} yet")),
            Ok(Some(done)) => {
                self.restored.store(done.restored, Ordering::Relaxed);
                let skipped = match done.skipped {
                    0 => String::new(),
                    n => format!("; {n} left out, over cache_size"),
                };
                self.say(
                    Level::Info,
                    format!(
                        "cache file {path}: {} revisions reused ({} transactions \
                         since it was written ended {}{skipped})",
                        done.restored, done.checked, done.ended
                    ),
                );
            }
            Err(dropped) => {
                let removed = match std::fs::remove_file(&self.path) {
                    Ok(()) => String::new(),
                    Err(e) => format!(" (cannot delete it: {e})"),
                };
                self.say(
                    Level::Warning,
                    format!("cache file {path} dropped: {dropped}{removed}"),
                );
            }
        }
    }

    fn try_restore(
        &self,
        client: &BlockingClient,
        cache: &Cache,
    ) -> Result<Option<Restored>, Dropped> {
        let budget = cache.budget();
        // The writer never exceeds the budget; twice that leaves room for a
        // smaller cache_size than the file was written with.
        let max_size = (budget as u64).saturating_mul(2).saturating_add(1 << 20);
        let Some(loaded) = cache_file::load(&self.path, budget, max_size)? else {
            return Ok(None);
        };
        let file = loaded.header;
        if file.cluster != self.cluster {
            return Err(Dropped::OtherName(file.cluster));
        }
        let epoch = cache.epoch();
        let last = client.last_transaction().unwrap_or(Tid::ZERO);
        if file.cache_tid > last {
            return Err(Dropped::Ahead {
                file: file.cache_tid,
                last,
            });
        }
        let first = self.first_tid(client)?;
        if first != Some(file.first_tid) {
            let here = first.map_or_else(|| "none".to_owned(), |t| t.to_string());
            return Err(Dropped::OtherCluster {
                file: file.first_tid,
                here,
            });
        }
        match client.transaction_info(file.cache_tid) {
            Ok(_) => {}
            Err(ClientError::TidNotFound { .. }) => {
                return Err(Dropped::UnknownTid(file.cache_tid))
            }
            Err(e) => return Err(e.into()),
        }
        let mut staging = Staging::new(loaded.entries);
        let (mut checked, mut count, mut ended) = (file.cache_tid, 0, 0);
        for _ in 0..MAX_CHECK_ROUNDS {
            let upto = client.last_transaction().unwrap_or(Tid::ZERO);
            let mut start = Tid(checked.0 + 1);
            while start <= upto {
                let tids = client.iterate_tids(start, Some(upto), TIDS_PER_REQUEST)?;
                let Some(last_listed) = tids.last().copied() else {
                    break;
                };
                count += tids.len();
                if count > self.check_limit {
                    return Err(Dropped::TooOld {
                        tid: file.cache_tid,
                        limit: self.check_limit,
                    });
                }
                for tid in tids {
                    let info = client.transaction_info(tid)?;
                    ended += staging.modified(tid, &info.oids);
                }
                start = Tid(last_listed.0 + 1);
            }
            checked = checked.max(upto);
            match cache.install(staging.entries, checked, epoch) {
                Ok(restored) => {
                    return Ok(Some(Restored {
                        restored,
                        checked: count,
                        ended,
                        skipped: loaded.skipped,
                    }))
                }
                Err(entries) => staging.entries = entries,
            }
        }
        Err(Dropped::Busy)
    }

    /// Writes a snapshot now if the cache changed since `saved`; returns
    /// the changes count saved.
    fn save(&self, client: &BlockingClient, cache: &Cache, saved: u64) -> u64 {
        if cache.changes() == saved {
            return saved;
        }
        let snapshot = cache.snapshot(|| client.last_transaction().unwrap_or(Tid::ZERO));
        if snapshot.tid == Tid::ZERO {
            return saved; // an empty database: nothing to save
        }
        let first_tid = match self.first_tid(client) {
            Ok(Some(first)) => first,
            Ok(None) => return saved,
            Err(e) => {
                self.say(Level::Warning, format!("cache file not written: {e}"));
                return saved;
            }
        };
        let header = Header {
            cluster: self.cluster.clone(),
            first_tid,
            cache_tid: snapshot.tid,
        };
        match cache_file::save(&self.path, &header, &snapshot.entries) {
            Ok(_) => {
                self.saves.fetch_add(1, Ordering::Relaxed);
                snapshot.changes
            }
            Err(e) => {
                self.say(
                    Level::Warning,
                    format!("cache file {} not written: {e}", self.path.display()),
                );
                saved
            }
        }
    }

    /// Starts the writer thread; it holds its own handle on the client.
    pub fn start(self: &Arc<Self>, client: BlockingClient, cache: Arc<Cache>) {
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("neo-cache-file".into())
            .spawn(move || this.run(&client, &cache));
        match spawned {
            Ok(handle) => *lock(&self.thread) = Some(handle),
            Err(e) => self.say(Level::Warning, format!("cache file not kept: {e}")),
        }
    }

    fn run(&self, client: &BlockingClient, cache: &Cache) {
        // What the file holds already (restored) needs no rewrite.
        let mut saved = cache.changes();
        loop {
            let stop = {
                let control = lock(&self.control);
                let (control, _) = self
                    .wake
                    .wait_timeout_while(control, self.interval, |c| !c.stop)
                    .unwrap_or_else(|e| e.into_inner());
                control.stop
            };
            saved = self.save(client, cache, saved);
            if stop {
                return;
            }
        }
    }

    /// Asks the writer for a last write and to end; waits for it if `wait`.
    pub fn stop(&self, wait: bool) {
        lock(&self.control).stop = true;
        self.wake.notify_all();
        if wait {
            if let Some(handle) = lock(&self.thread).take() {
                let _ = handle.join();
            }
        }
    }
}
