//! `neo._neo`: the native half of the `neo` Python package. The ZODB
//! storage itself (`neo.client.Storage`) is Python; it calls this module for
//! everything that touches the network, through [`neo_client`].
//!
//! Rules kept here:
//! - every call that may wait (network, locks held by the client) runs with
//!   the GIL released (`allow_threads`), so Python threads keep running;
//! - no Python code ever runs on the client's own threads: invalidations
//!   and commit notifications are applied to the cache there (pure Rust)
//!   and queued as events, which Python threads drain and deliver to ZODB
//!   in commit order;
//! - a panic never crosses into Python as an abort: it becomes a
//!   `NeoError("panic", ...)`.
//!
//! Ids cross the boundary as ZODB does: 8-byte big-endian `bytes`.

mod cache;
mod cache_file;
mod log;
mod metrics;
mod persist;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use neo_client::{
    BlockingClient, BlockingTransaction, ClientConfig, ClientError, Conflict, Invalidation, Tls,
    TxnMeta,
};
use neo_proto::{Address, Oid, Tid};
use prometheus_client::registry::Registry;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::cache::Cache;
use crate::metrics::CacheCollector;
use crate::persist::Persistence;

create_exception!(
    _neo,
    NeoError,
    PyException,
    "Error of the NEO client: args are (kind, message, oid, serial)."
);

/// NEO's default master port, for addresses given without one.
const DEFAULT_MASTER_PORT: u16 = 10000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn id_bytes(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

fn to_u64(what: &str, bytes: &[u8]) -> PyResult<u64> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| {
        PyValueError::new_err(format!("{what} must be 8 bytes, got {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(array))
}

fn oid_of(bytes: &[u8]) -> PyResult<Oid> {
    to_u64("oid", bytes).map(Oid)
}

fn oids_of(oids: &[Vec<u8>]) -> PyResult<Vec<Oid>> {
    oids.iter().map(|oid| oid_of(oid)).collect()
}

fn tid_of(bytes: &[u8]) -> PyResult<Tid> {
    to_u64("tid", bytes).map(Tid)
}

fn py_id(py: Python<'_>, value: u64) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &id_bytes(value))
}

fn py_opt_tid(py: Python<'_>, tid: Option<Tid>) -> PyObject {
    match tid {
        Some(tid) => py_id(py, tid.0).into_any().unbind(),
        None => py.None(),
    }
}

fn py_opt_data(py: Python<'_>, data: Option<&Bytes>) -> PyObject {
    match data {
        Some(data) => PyBytes::new(py, data).into_any().unbind(),
        None => py.None(),
    }
}

/// What went wrong, as `NeoError((kind, message, oid, serial))`.
enum Failure {
    Client(ClientError),
    Panic(String),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::Client(error)
    }
}

fn to_pyerr(failure: Failure) -> PyErr {
    let (kind, message, oid, serial) = match failure {
        Failure::Panic(message) => ("panic", message, None, None),
        Failure::Client(error) => {
            let message = error.to_string();
            match error {
                ClientError::NotConnected { .. } => ("not_connected", message, None, None),
                ClientError::MasterLost { .. } => ("master_lost", message, None, None),
                ClientError::Closed => ("closed", message, None, None),
                ClientError::ReadOnly(_) => ("read_only", message, None, None),
                ClientError::OidDoesNotExist { oid } => {
                    ("oid_does_not_exist", message, Some(oid.0), None)
                }
                ClientError::OidNotFound { oid, .. } => {
                    ("oid_not_found", message, Some(oid.0), None)
                }
                ClientError::NoData { oid, serial } => {
                    ("no_data", message, Some(oid.0), Some(serial.0))
                }
                ClientError::TidNotFound { tid } => ("tid_not_found", message, None, Some(tid.0)),
                ClientError::NotUndoable { tid } => ("not_undoable", message, None, Some(tid.0)),
                ClientError::TransactionFailed { .. } => {
                    ("transaction_failed", message, None, None)
                }
                ClientError::InvalidUse(_) => ("invalid_use", message, None, None),
                ClientError::Conflicts(conflicts) => {
                    let first = conflicts.first();
                    (
                        "conflict",
                        message,
                        first.map(|c| c.oid.0),
                        first.map(|c| c.conflict_serial.0),
                    )
                }
                _ => ("error", message, None, None),
            }
        }
    };
    NeoError::new_err((
        kind,
        message,
        oid.map(|o| id_bytes(o).to_vec()),
        serial.map(|s| id_bytes(s).to_vec()),
    ))
}

/// Runs `f` without the GIL, turning a panic into an error.
fn nogil<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, ClientError> + Send,
) -> PyResult<T> {
    py.allow_threads(|| match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Failure::Client(error)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::Panic(format!("internal error (panic): {message}")))
        }
    })
    .map_err(to_pyerr)
}

/// What the client tells Python, in commit order.
enum Event {
    /// Another client committed `tid`, modifying these oids.
    Objects(Tid, Vec<Oid>),
    /// Invalidations may have been missed; `tid` is the last TID now.
    All(Tid),
    /// Our own transaction `ttid` committed as `tid`.
    Finished(Tid, Tid),
}

#[derive(Default)]
struct Events {
    queue: Mutex<VecDeque<Event>>,
    ready: Condvar,
}

impl Events {
    fn push(&self, event: Event) {
        lock(&self.queue).push_back(event);
        self.ready.notify_all();
    }
}

fn conflicts_to_py(py: Python<'_>, conflicts: Vec<Conflict>) -> PyResult<Bound<'_, PyList>> {
    let items: Vec<Bound<'_, PyTuple>> = conflicts
        .iter()
        .map(|c| {
            PyTuple::new(
                py,
                [
                    py_id(py, c.oid.0).into_any(),
                    py_id(py, c.serial.0).into_any(),
                    py_id(py, c.conflict_serial.0).into_any(),
                    py_opt_data(py, c.data.as_ref()).into_bound(py),
                    c.checked.into_pyobject(py)?.to_owned().into_any(),
                ],
            )
        })
        .collect::<PyResult<_>>()?;
    PyList::new(py, items)
}

fn parse_masters(text: &str) -> PyResult<Vec<Address>> {
    let masters = text
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Address::parse(s, DEFAULT_MASTER_PORT)
                .map_err(|e| PyValueError::new_err(format!("invalid master address {s:?}: {e}")))
        })
        .collect::<PyResult<Vec<_>>>()?;
    if masters.is_empty() {
        return Err(PyValueError::new_err("no master address given"));
    }
    Ok(masters)
}

/// A connection to one NEO cluster, with its cache.
#[pyclass(module = "neo._neo", frozen)]
struct Client {
    client: Mutex<Option<BlockingClient>>,
    cache: Arc<Cache>,
    events: Arc<Events>,
    /// The persistent cache (`cache_file`), if any.
    persist: Option<Arc<Persistence>>,
    /// The client's round trips and the cache's figures.
    registry: Arc<Registry>,
    /// Where they are served (`metrics`), if anywhere.
    metrics_address: Option<Address>,
}

impl Drop for Client {
    /// Not closed: the writer still saves once, then lets the client go.
    fn drop(&mut self) {
        if let Some(persist) = &self.persist {
            persist.stop(false);
        }
    }
}

impl Client {
    fn get(&self) -> Result<BlockingClient, ClientError> {
        lock(&self.client).clone().ok_or(ClientError::Closed)
    }

    fn last(&self) -> Result<Tid, ClientError> {
        Ok(self.get()?.last_transaction().unwrap_or(Tid::ZERO))
    }

    /// Calls `f` with each page of the oids existing at `tid`, partition
    /// by partition (`AskOIDsFrom`, §8.6).
    fn each_oid_at(
        &self,
        client: &BlockingClient,
        tid: Tid,
        mut f: impl FnMut(&[Oid]),
    ) -> Result<(), ClientError> {
        let partitions = client.client().readable_cells().len() as u32;
        for partition in 0..partitions {
            let mut min_oid = Oid::ZERO;
            loop {
                let (oids, next) = client.oids_from(partition, 1000, min_oid, tid)?;
                f(&oids);
                match next {
                    Some(next) => min_oid = next,
                    None => break,
                }
            }
        }
        Ok(())
    }

    fn load_before_inner(
        &self,
        oid: Oid,
        before: Tid,
    ) -> Result<Option<(Bytes, Tid, Option<Tid>)>, ClientError> {
        let client = self.get()?;
        let last = client.last_transaction().unwrap_or(Tid::ZERO);
        if let Some(hit) = self.cache.lookup_before(oid, before, last) {
            return Ok(Some((hit.data, hit.serial, hit.next)));
        }
        let token = self.cache.begin_load(oid);
        match client.object(oid, None, Some(before)) {
            Ok(record) => match record.data {
                Some(data) => {
                    self.cache.end_load(
                        token,
                        Some((record.serial, record.next_serial, data.clone())),
                    );
                    Ok(Some((data, record.serial, record.next_serial)))
                }
                None => {
                    self.cache.end_load(token, None);
                    Err(ClientError::NoData {
                        oid,
                        serial: record.serial,
                    })
                }
            },
            Err(ClientError::OidNotFound { .. }) => {
                self.cache.end_load(token, None);
                Ok(None)
            }
            Err(error) => {
                self.cache.end_load(token, None);
                Err(error)
            }
        }
    }
}

#[pymethods]
impl Client {
    /// Connects to the cluster, waiting at most `ready_timeout` seconds for
    /// the primary master to accept us. With `cache_file`, the cache is
    /// restored from that file (what is still valid) before this returns,
    /// and saved to it every `cache_save_interval` seconds and at close; a
    /// file more than `cache_check_limit` transactions old is dropped.
    #[new]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    #[pyo3(signature = (master_nodes, name, read_only=false, compress=true, cache_size=20<<20, ready_timeout=10.0, dynamic_master_list=None, tls=None, ignore_wrong_checksum=false, cache_file=None, cache_save_interval=30.0, cache_check_limit=persist::MAX_CHECKED_TRANSACTIONS, metrics=None))]
    fn new(
        py: Python<'_>,
        master_nodes: &str,
        name: &str,
        read_only: bool,
        compress: bool,
        cache_size: usize,
        ready_timeout: f64,
        dynamic_master_list: Option<String>,
        tls: Option<(String, String, String)>,
        ignore_wrong_checksum: bool,
        cache_file: Option<PathBuf>,
        cache_save_interval: f64,
        cache_check_limit: usize,
        metrics: Option<&str>,
    ) -> PyResult<Client> {
        let masters = parse_masters(master_nodes)?;
        if name.is_empty() {
            return Err(PyValueError::new_err("the cluster name is empty"));
        }
        if !(ready_timeout.is_finite() && ready_timeout > 0.0) {
            return Err(PyValueError::new_err("ready_timeout must be positive"));
        }
        if !(cache_save_interval.is_finite() && cache_save_interval > 0.0) {
            return Err(PyValueError::new_err(
                "cache_save_interval must be positive",
            ));
        }
        let metrics = metrics
            .map(|text| Address::parse(text, 0))
            .transpose()
            .map_err(|error| PyValueError::new_err(format!("metrics: {error}")))?;
        let cache = Arc::new(Cache::new(cache_size));
        let events = Arc::new(Events::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(CacheCollector(cache.clone())));
        let mut config = ClientConfig::new(masters, name).with_metrics(&mut registry);
        let registry = Arc::new(registry);
        config.read_only = read_only;
        config.compress = compress;
        config.ready_timeout = Duration::from_secs_f64(ready_timeout);
        // Read at start, kept current (operations.md §2.3).
        config.dynamic_master_list = dynamic_master_list.map(Into::into);
        config.ignore_wrong_checksum = ignore_wrong_checksum;
        if let Some((ca, cert, key)) = tls {
            let loaded = Tls::load(ca.as_ref(), cert.as_ref(), key.as_ref());
            config.connection.tls =
                Some(loaded.map_err(|error| PyValueError::new_err(error.to_string()))?);
        }
        config.connect_timeout = config.connect_timeout.min(config.ready_timeout);
        if cache_size > 0 {
            config.max_store_bytes_in_flight = cache_size.max(1 << 20);
        }
        let (listener_cache, listener_events) = (cache.clone(), events.clone());
        let config = config.on_invalidation(move |invalidation| match invalidation {
            Invalidation::Objects { tid, oids } => {
                listener_cache.invalidate(*tid, oids);
                listener_events.push(Event::Objects(*tid, oids.clone()));
            }
            Invalidation::All { tid } => {
                listener_cache.invalidate_all();
                listener_events.push(Event::All(*tid));
            }
        });
        let client = nogil(py, move || BlockingClient::connect(config))?;
        let metrics_address = metrics
            .map(|address| nogil(py, || client.serve_metrics(&address, registry.clone())))
            .transpose()?;
        // No cache, nothing to keep.
        let persist = cache_file.filter(|_| cache_size > 0).map(|path| {
            let interval = Duration::from_secs_f64(cache_save_interval.min(1e6));
            Arc::new(Persistence::new(path, name, interval, cache_check_limit))
        });
        if let Some(persist) = &persist {
            nogil(py, || {
                persist.restore(&client, &cache);
                persist.start(client.clone(), cache.clone());
                Ok(())
            })?;
        }
        Ok(Client {
            client: Mutex::new(Some(client)),
            cache,
            events,
            persist,
            registry,
            metrics_address,
        })
    }

    /// Closes the connections; later calls raise `NeoError("closed")`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let client = lock(&self.client).take();
        if let Some(persist) = &self.persist {
            // Its last write, before the cache is emptied.
            nogil(py, || {
                persist.stop(true);
                Ok(())
            })?;
        }
        self.cache.clear();
        self.events.ready.notify_all();
        if let Some(client) = client {
            nogil(py, move || client.close())?;
        }
        Ok(())
    }

    fn is_closed(&self) -> bool {
        lock(&self.client).is_none()
    }

    /// The client's last TID (may be ahead of the events not yet drained).
    fn last_tid<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let last = self.last().map_err(|e| to_pyerr(e.into()))?;
        Ok(py_id(py, last.0))
    }

    /// Network barrier: the invalidations of every transaction committed
    /// before the call are queued on return.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        nogil(py, || self.get()?.sync())
    }

    /// Events queued since the last call, in commit order:
    /// `("objects", tid, [oids])`, `("all", tid)`, `("finished", tid, ttid)`.
    fn drain_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let events: Vec<Event> = lock(&self.events.queue).drain(..).collect();
        let list = PyList::empty(py);
        for event in events {
            let item = match event {
                Event::Objects(tid, oids) => {
                    let oids = PyList::new(py, oids.iter().map(|o| py_id(py, o.0)))?;
                    PyTuple::new(
                        py,
                        [
                            "objects".into_pyobject(py)?.into_any(),
                            py_id(py, tid.0).into_any(),
                            oids.into_any(),
                        ],
                    )?
                }
                Event::All(tid) => PyTuple::new(
                    py,
                    [
                        "all".into_pyobject(py)?.into_any(),
                        py_id(py, tid.0).into_any(),
                    ],
                )?,
                Event::Finished(tid, ttid) => PyTuple::new(
                    py,
                    [
                        "finished".into_pyobject(py)?.into_any(),
                        py_id(py, tid.0).into_any(),
                        py_id(py, ttid.0).into_any(),
                    ],
                )?,
            };
            list.append(item)?;
        }
        Ok(list)
    }

    /// Waits (without the GIL) up to `timeout` seconds for an event;
    /// returns whether one is queued. Returns at once once closed.
    fn wait_events(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        let closed = self.is_closed();
        let events = self.events.clone();
        Ok(py.allow_threads(move || {
            let queue = lock(&events.queue);
            if !queue.is_empty() || closed {
                return !queue.is_empty();
            }
            let (queue, _) = events
                .ready
                .wait_timeout(queue, timeout)
                .unwrap_or_else(|e| e.into_inner());
            !queue.is_empty()
        }))
    }

    fn new_oid<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let oid = nogil(py, || self.get()?.new_oid())?;
        Ok(py_id(py, oid.0))
    }

    /// `(data, serial, next_serial or None)` of the revision current just
    /// before `before`, or `None` if the object did not exist then.
    fn load_before<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        before: &[u8],
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let (oid, before) = (oid_of(oid)?, tid_of(before)?);
        let found = nogil(py, || self.load_before_inner(oid, before))?;
        found
            .map(|(data, serial, next)| {
                PyTuple::new(
                    py,
                    [
                        PyBytes::new(py, &data).into_any(),
                        py_id(py, serial.0).into_any(),
                        py_opt_tid(py, next).into_bound(py),
                    ],
                )
            })
            .transpose()
    }

    /// `prefetch(oids, before)`: loads into the cache the revisions current
    /// before `before` of the oids not cached yet, every request in flight
    /// at once; returns how many were loaded. A hint: what fails is left to
    /// the loads that follow.
    fn prefetch(&self, py: Python<'_>, oids: Vec<Vec<u8>>, before: &[u8]) -> PyResult<usize> {
        let before = tid_of(before)?;
        let oids = oids_of(&oids)?;
        nogil(py, || {
            let client = self.get()?;
            let last = client.last_transaction().unwrap_or(Tid::ZERO);
            let mut tokens = HashMap::new();
            for &oid in &oids {
                if !tokens.contains_key(&oid) && !self.cache.has_before(oid, before, last) {
                    tokens.insert(oid, self.cache.begin_load(oid));
                }
            }
            let wanted: Vec<Oid> = tokens.keys().copied().collect();
            let mut loaded = 0;
            let result = client.objects_before(&wanted, before, |oid, result| {
                let Some(token) = tokens.remove(&oid) else {
                    return;
                };
                let found = result.ok().and_then(|record| {
                    let data = record.data?;
                    Some((record.serial, record.next_serial, data))
                });
                loaded += usize::from(found.is_some());
                self.cache.end_load(token, found);
            });
            // Loads that did not end (the client closed meanwhile).
            for (_, token) in tokens {
                self.cache.end_load(token, None);
            }
            result.map(|()| loaded)
        })
    }

    /// Of `oids`, those without data just before `before` (deleted or never
    /// created), all asked at once; a failed read is an error.
    fn missing<'py>(
        &self,
        py: Python<'py>,
        oids: Vec<Vec<u8>>,
        before: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        let before = tid_of(before)?;
        let oids = oids_of(&oids)?;
        let mut missing = nogil(py, || {
            let (mut missing, mut failure) = (Vec::new(), None);
            self.get()?
                .objects_before(&oids, before, |oid, result| match result {
                    Ok(record) if record.data.is_some() => {}
                    Ok(_)
                    | Err(ClientError::OidNotFound { .. } | ClientError::OidDoesNotExist { .. }) => {
                        missing.push(oid)
                    }
                    Err(error) => {
                        failure.get_or_insert(error);
                    }
                })?;
            match failure {
                Some(error) => Err(error),
                None => Ok(missing),
            }
        })?;
        missing.sort_unstable();
        PyList::new(py, missing.iter().map(|o| py_id(py, o.0)))
    }

    /// The data of revision `serial`.
    fn load_serial<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        serial: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let (oid, serial) = (oid_of(oid)?, tid_of(serial)?);
        let data = nogil(py, || {
            if let Some(hit) = self.cache.lookup_serial(oid, serial) {
                return Ok(hit.data);
            }
            let client = self.get()?;
            let token = self.cache.begin_load(oid);
            let result = client.load_serial(oid, serial);
            // Only a current revision's end is unknown; the others are exact.
            let found = result.as_ref().ok().and_then(|l| {
                l.next_serial
                    .map(|next| (l.serial, Some(next), l.data.clone()))
            });
            self.cache.end_load(token, found);
            result.map(|loaded| loaded.data)
        })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Any revision, "no data" ones included:
    /// `(serial, next_serial, data or None, data_serial or None)`.
    #[pyo3(signature = (oid, at=None, before=None))]
    fn object<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        at: Option<&[u8]>,
        before: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let oid = oid_of(oid)?;
        let at = at.map(tid_of).transpose()?;
        let before = before.map(tid_of).transpose()?;
        let record = nogil(py, || self.get()?.object(oid, at, before))?;
        PyTuple::new(
            py,
            [
                py_id(py, record.serial.0).into_any(),
                py_opt_tid(py, record.next_serial).into_bound(py),
                py_opt_data(py, record.data.as_ref()).into_bound(py),
                py_opt_tid(py, record.data_serial).into_bound(py),
            ],
        )
    }

    /// `(user, description, extension, packed, [oids])`.
    fn transaction_info<'py>(&self, py: Python<'py>, tid: &[u8]) -> PyResult<Bound<'py, PyTuple>> {
        let tid = tid_of(tid)?;
        let info = nogil(py, || self.get()?.transaction_info(tid))?;
        let oids = PyList::new(py, info.oids.iter().map(|o| py_id(py, o.0)))?;
        PyTuple::new(
            py,
            [
                PyBytes::new(py, &info.user).into_any(),
                PyBytes::new(py, &info.description).into_any(),
                PyBytes::new(py, &info.extension).into_any(),
                info.packed.into_pyobject(py)?.to_owned().into_any(),
                oids.into_any(),
            ],
        )
    }

    /// `[(serial, size)]`, newest first, positions `first..last`.
    fn history<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        first: u64,
        last: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        let oid = oid_of(oid)?;
        let entries = nogil(py, || self.get()?.history(oid, first, last))?;
        let items = entries
            .iter()
            .map(|e| {
                PyTuple::new(
                    py,
                    [
                        py_id(py, e.serial.0).into_any(),
                        e.size.into_pyobject(py)?.into_any(),
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// TIDs for `undoLog`, newest first.
    fn undo_log_tids<'py>(
        &self,
        py: Python<'py>,
        first: u64,
        last: u64,
    ) -> PyResult<Bound<'py, PyList>> {
        let tids = nogil(py, || self.get()?.undo_log_tids(first, last))?;
        PyList::new(py, tids.iter().map(|t| py_id(py, t.0)))
    }

    /// One chunk of TIDs for the iterator, ascending.
    #[pyo3(signature = (start, stop, limit=100))]
    fn iterate_tids<'py>(
        &self,
        py: Python<'py>,
        start: &[u8],
        stop: Option<&[u8]>,
        limit: u32,
    ) -> PyResult<Bound<'py, PyList>> {
        let start = tid_of(start)?;
        let stop = stop.map(tid_of).transpose()?;
        let tids = nogil(py, || self.get()?.iterate_tids(start, stop, limit))?;
        PyList::new(py, tids.iter().map(|t| py_id(py, t.0)))
    }

    /// Number of objects existing at `tid` (every oid listed).
    fn object_count_at(&self, py: Python<'_>, tid: &[u8]) -> PyResult<u64> {
        let tid = tid_of(tid)?;
        nogil(py, || {
            let client = self.get()?;
            let mut count = 0u64;
            self.each_oid_at(&client, tid, |oids| count += oids.len() as u64)?;
            Ok(count)
        })
    }

    /// One page of the oids of `partition` existing at `tid`, from
    /// `min_oid`, ascending: `([oids], next min_oid or None at the end)`.
    fn oids_page<'py>(
        &self,
        py: Python<'py>,
        partition: u32,
        min_oid: &[u8],
        tid: &[u8],
        length: u32,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let (min_oid, tid) = (oid_of(min_oid)?, tid_of(tid)?);
        let (oids, next) = nogil(py, || {
            self.get()?
                .oids_from(partition, length.clamp(1, 10_000), min_oid, tid)
        })?;
        let oids = PyList::new(py, oids.iter().map(|o| py_id(py, o.0)))?;
        let next = match next {
            Some(next) => py_id(py, next.0).into_any(),
            None => py.None().into_bound(py),
        };
        PyTuple::new(py, [oids.into_any(), next])
    }

    /// Number of partitions of the cluster.
    fn partition_count(&self) -> PyResult<u32> {
        let client = self.get().map_err(|e| to_pyerr(e.into()))?;
        Ok(client.client().readable_cells().len() as u32)
    }

    /// The oids existing at `tid` (their latest record at or before it has
    /// data), ascending: what pack's garbage collection starts from.
    fn oids_at<'py>(&self, py: Python<'py>, tid: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let tid = tid_of(tid)?;
        let mut all = nogil(py, || {
            let client = self.get()?;
            let mut all = Vec::new();
            self.each_oid_at(&client, tid, |oids| all.extend_from_slice(oids))?;
            Ok(all)
        })?;
        all.sort_unstable();
        PyList::new(py, all.iter().map(|o| py_id(py, o.0)))
    }

    /// `tpc_begin`: a new transaction (with an imposed TID, to restore).
    #[pyo3(signature = (tid=None))]
    fn begin(&self, py: Python<'_>, tid: Option<&[u8]>) -> PyResult<Txn> {
        let tid = tid.map(tid_of).transpose()?;
        let txn = nogil(py, || self.get()?.begin(tid))?;
        Ok(Txn {
            state: Mutex::new(Some(TxnState {
                txn,
                stored: HashMap::new(),
                stored_bytes: 0,
            })),
            cache: self.cache.clone(),
            events: self.events.clone(),
        })
    }

    /// Asks the cluster to pack at `pack_tid` (clamped to the last TID),
    /// only the given oids if `oids` is not `None` (a partial pack);
    /// returns the pack id (the TID of the transaction carrying the order),
    /// or `None` when there is nothing to pack.
    #[pyo3(signature = (pack_tid, oids=None))]
    fn pack<'py>(
        &self,
        py: Python<'py>,
        pack_tid: &[u8],
        oids: Option<Vec<Vec<u8>>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let pack_tid = tid_of(pack_tid)?;
        let oids = oids.as_deref().map(oids_of).transpose()?;
        let pack_id = nogil(py, || self.get()?.pack(pack_tid, oids))?;
        Ok(pack_id.map(|tid| py_id(py, tid.0)))
    }

    /// Waits until every storage completed the pack order `pack_id`.
    fn wait_for_pack(&self, py: Python<'_>, pack_id: &[u8]) -> PyResult<()> {
        let pack_id = tid_of(pack_id)?;
        nogil(py, || self.get()?.wait_for_pack(pack_id))
    }

    /// Every pack order, oldest first:
    /// `[(id, approved or None, partial, pack_tid)]`.
    fn pack_orders<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        // From TID 1, not ZERO_TID (no order has it): NEO/py's master
        // computes `min_id - 1` when it collects old orders, and dies on 0.
        let orders = nogil(py, || self.get()?.pack_orders(Tid(1)))?;
        let items = orders
            .iter()
            .map(|order| {
                let approved = match order.approved {
                    Some(approved) => approved.into_pyobject(py)?.to_owned().into_any(),
                    None => py.None().into_bound(py),
                };
                PyTuple::new(
                    py,
                    [
                        py_id(py, order.id.0).into_any(),
                        approved,
                        order.partial.into_pyobject(py)?.to_owned().into_any(),
                        py_id(py, order.pack_tid.0).into_any(),
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// Cache counters: hits, misses, entries, size, budget.
    fn cache_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.cache.stats();
        let dict = PyDict::new(py);
        dict.set_item("hits", stats.hits)?;
        dict.set_item("misses", stats.misses)?;
        dict.set_item("entries", stats.entries)?;
        dict.set_item("size", stats.size)?;
        dict.set_item("budget", stats.budget)?;
        if let Some(persist) = &self.persist {
            dict.set_item("restored", persist.restored())?;
            dict.set_item("saves", persist.saves())?;
        }
        Ok(dict)
    }

    /// Log lines of the persistent cache since the last call:
    /// `[(level, message)]`, level "info" or "warning".
    fn cache_file_log<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let lines = self
            .persist
            .as_ref()
            .map(|persist| persist.drain_log())
            .unwrap_or_default();
        PyList::new(
            py,
            lines
                .iter()
                .map(|(level, message)| (level.name(), message.as_str())),
        )
    }

    /// Empties the cache.
    fn clear_cache(&self) {
        self.cache.clear();
    }

    /// The client's metrics as OpenMetrics text (what `metrics` serves).
    fn metrics(&self) -> PyResult<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(|_| PyRuntimeError::new_err("cannot encode the metrics"))?;
        Ok(text)
    }

    /// Where `metrics` serves them (`host:port`), if it does.
    fn metrics_address(&self) -> Option<String> {
        self.metrics_address.as_ref().map(ToString::to_string)
    }
}

/// What our own commit changed, for the cache.
enum Stored {
    Data(Bytes),
    /// Deleted, or data not kept (over the cache budget).
    Unknown,
}

struct TxnState {
    txn: BlockingTransaction,
    stored: HashMap<Oid, Stored>,
    stored_bytes: usize,
}

/// A transaction between `tpc_begin` and `tpc_finish`/`tpc_abort`.
#[pyclass(module = "neo._neo", frozen)]
struct Txn {
    state: Mutex<Option<TxnState>>,
    cache: Arc<Cache>,
    events: Arc<Events>,
}

impl Txn {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut TxnState) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut state = lock(&self.state);
        match state.as_mut() {
            Some(state) => f(state),
            None => Err(ClientError::InvalidUse("transaction already ended".into())),
        }
    }
}

#[pymethods]
impl Txn {
    #[getter]
    fn ttid<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let ttid = self
            .with(|s| Ok(s.txn.ttid()))
            .map_err(|e| to_pyerr(e.into()))?;
        Ok(py_id(py, ttid.0))
    }

    /// Stores (data) or deletes (`data=None`) `oid` based on `serial`;
    /// returns the conflicts known so far:
    /// `[(oid, serial, conflict_serial, data, checked)]`.
    #[pyo3(signature = (oid, serial, data, data_serial=None))]
    fn store<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        serial: &[u8],
        data: Option<&[u8]>,
        data_serial: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (oid, serial) = (oid_of(oid)?, tid_of(serial)?);
        let data_serial = data_serial.map(tid_of).transpose()?;
        let data = data.map(Bytes::copy_from_slice);
        let budget = self.cache.budget();
        let conflicts = nogil(py, || {
            self.with(|state| {
                let conflicts = state
                    .txn
                    .store_record(oid, serial, data.clone(), data_serial)?;
                let kept = match data {
                    Some(data) if state.stored_bytes + data.len() <= budget => {
                        state.stored_bytes += data.len();
                        Stored::Data(data)
                    }
                    _ => Stored::Unknown,
                };
                state.stored.insert(oid, kept);
                Ok(conflicts)
            })
        })?;
        conflicts_to_py(py, conflicts)
    }

    /// readCurrent: the commit fails if `oid` is no longer at `serial`.
    fn check_current<'py>(
        &self,
        py: Python<'py>,
        oid: &[u8],
        serial: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        let (oid, serial) = (oid_of(oid)?, tid_of(serial)?);
        let conflicts = nogil(py, || {
            self.with(|s| s.txn.check_current_serial(oid, serial))
        })?;
        conflicts_to_py(py, conflicts)
    }

    /// Waits for every store answer; returns the conflicts not yet reported.
    fn wait_stores<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let conflicts = nogil(py, || self.with(|s| s.txn.wait_stores()))?;
        conflicts_to_py(py, conflicts)
    }

    /// Votes; returns the conflicts to resolve first (then vote again), or
    /// an empty list once voted.
    fn vote<'py>(
        &self,
        py: Python<'py>,
        user: &[u8],
        description: &[u8],
        extension: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        let meta = TxnMeta {
            user: Bytes::copy_from_slice(user),
            description: Bytes::copy_from_slice(description),
            extension: Bytes::copy_from_slice(extension),
            pack: None,
        };
        let conflicts = nogil(py, || {
            self.with(|s| match s.txn.vote(&meta) {
                Ok(()) => Ok(Vec::new()),
                Err(ClientError::Conflicts(conflicts)) => Ok(conflicts),
                Err(error) => Err(error),
            })
        })?;
        conflicts_to_py(py, conflicts)
    }

    /// Finishes; returns the TID. The cache is updated and a `finished`
    /// event queued in commit order, before the client's last TID moves.
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let (cache, events) = (self.cache.clone(), self.events.clone());
        let tid = nogil(py, move || {
            let mut state = lock(&self.state);
            let Some(current) = state.as_mut() else {
                return Err(ClientError::InvalidUse("transaction already ended".into()));
            };
            let ttid = current.txn.ttid();
            let stored = std::mem::take(&mut current.stored);
            let result = current.txn.finish_with(move |tid| {
                let oids: Vec<Oid> = stored.keys().copied().collect();
                cache.invalidate(tid, &oids);
                for (oid, kept) in stored {
                    if let Stored::Data(data) = kept {
                        cache.committed(oid, tid, data);
                    }
                }
                events.push(Event::Finished(tid, ttid));
            });
            if result.is_ok() {
                *state = None;
            }
            result
        })?;
        Ok(py_id(py, tid.0))
    }

    /// Aborts (also after a failed vote or finish); idempotent.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        nogil(py, || {
            let state = lock(&self.state).take();
            if let Some(mut state) = state {
                state.txn.abort()?;
            }
            Ok(())
        })
    }

    /// For undo: `{oid: (current_serial, undo_serial or None, is_current)}`.
    fn undo_serials<'py>(
        &self,
        py: Python<'py>,
        undone_tid: &[u8],
        oids: Vec<Vec<u8>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let undone = tid_of(undone_tid)?;
        let oids = oids_of(&oids)?;
        let serials = nogil(py, || self.with(|s| s.txn.undo_serials(undone, &oids)))?;
        let dict = PyDict::new(py);
        for (oid, serial) in serials {
            let value = PyTuple::new(
                py,
                [
                    py_id(py, serial.current_serial.0).into_any(),
                    py_opt_tid(py, serial.undo_serial).into_bound(py),
                    serial.is_current.into_pyobject(py)?.to_owned().into_any(),
                ],
            )?;
            dict.set_item(py_id(py, oid.0), value)?;
        }
        Ok(dict)
    }
}

/// `references(record)`: the oids `ZODB.serialize.referencesf(record)`
/// returns (a list of `bytes`, in its order), or `None` when this cannot
/// tell and `referencesf` must be asked (see `neo_pickle::references`). It does not
/// panic on any bytes; were it to, the answer would be `None` too.
#[pyfunction(name = "references")]
fn py_references<'py>(py: Python<'py>, record: &[u8]) -> Option<Vec<Bound<'py, PyBytes>>> {
    let oids = catch_unwind(|| neo_pickle::references(record)).ok()??;
    Some(oids.into_iter().map(|oid| PyBytes::new(py, oid)).collect())
}

#[pymodule]
fn _neo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Txn>()?;
    m.add("NeoError", m.py().get_type::<NeoError>())?;
    m.add_function(wrap_pyfunction!(log::log_to, m)?)?;
    m.add_function(wrap_pyfunction!(log::reopen_log, m)?)?;
    m.add_function(wrap_pyfunction!(log::log, m)?)?;
    m.add_function(wrap_pyfunction!(py_references, m)?)?;
    Ok(())
}
