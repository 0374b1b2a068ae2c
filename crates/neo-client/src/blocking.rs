//! The blocking facade: the async core on a runtime of its own, callable
//! from plain threads (the Python storage, tests, benchmarks).
//!
//! Calls run the operation's future on the calling thread
//! (`Handle::block_on`) while the connections' reader and writer tasks run
//! on the runtime's workers: a load costs the caller no extra task switch
//! beyond the wake-up by the reader.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use neo_net::metrics::MetricsEndpoint;
use neo_proto::packets::{HistoryEntry, UndoSerial};
use neo_proto::{Address, NodeId, Oid, Partition, Tid};
use prometheus_client::registry::Registry;
use tokio::runtime::{Handle, Runtime};

use crate::client::{Client, Loaded, Record, TransactionInfo};
use crate::config::ClientConfig;
use crate::error::{ClientError, Conflict};
use crate::txn::{Transaction, TxnMeta};

/// Most loads [`BlockingClient::objects_before`] has in flight at once.
pub const MAX_OBJECTS_IN_FLIGHT: usize = 256;

type ObjectResult = (Oid, Result<Record, ClientError>);

fn deliver(
    done: Result<ObjectResult, tokio::task::JoinError>,
    each: &mut impl FnMut(Oid, Result<Record, ClientError>),
) {
    match done {
        Ok((oid, result)) => each(oid, result),
        // A load's task cannot be cancelled here; a panic is a bug, said.
        Err(error) => tracing::error!("a load of objects_before failed: {error}"),
    }
}

/// Owns the runtime; shuts it down without waiting when the last handle
/// goes (dropping a runtime must not block, nor happen inside another).
struct RuntimeOwner(Option<Runtime>);

impl Drop for RuntimeOwner {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Clone)]
struct Driver {
    handle: Handle,
    _runtime: Arc<RuntimeOwner>,
}

impl Driver {
    fn run<T>(
        &self,
        future: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        if Handle::try_current().is_ok() {
            return Err(ClientError::InvalidUse(
                "blocking client called from inside an async runtime: use Client".into(),
            ));
        }
        self.handle.block_on(future)
    }
}

/// A [`Client`] for synchronous code; cheap to clone, safe to share
/// between threads.
#[derive(Clone)]
pub struct BlockingClient {
    // Dropped before the runtime it runs on.
    client: Client,
    driver: Driver,
}

impl std::fmt::Debug for BlockingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingClient")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl BlockingClient {
    /// Starts a runtime with 2 worker threads and connects (see
    /// [`Client::connect`]).
    pub fn connect(config: ClientConfig) -> Result<BlockingClient, ClientError> {
        BlockingClient::connect_with_threads(config, 2)
    }

    /// [`BlockingClient::connect`] with `threads` runtime workers.
    pub fn connect_with_threads(
        config: ClientConfig,
        threads: usize,
    ) -> Result<BlockingClient, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("neo-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::InvalidUse(format!("cannot start a runtime: {e}")))?;
        let driver = Driver {
            handle: runtime.handle().clone(),
            _runtime: Arc::new(RuntimeOwner(Some(runtime))),
        };
        let client = driver.run(async { Ok(Client::start(config)) })?;
        let blocking = BlockingClient { client, driver };
        // Wait for readiness, so that configuration errors show here.
        blocking.driver.run(blocking.client.partitions())?;
        Ok(blocking)
    }

    /// Serves `registry` as OpenMetrics on `address` (`GET /metrics`) from
    /// the client's runtime, until the runtime stops; where it listens.
    pub fn serve_metrics(
        &self,
        address: &Address,
        registry: Arc<Registry>,
    ) -> Result<Address, ClientError> {
        let endpoint = self.driver.run(async {
            MetricsEndpoint::bind(address)
                .await
                .map_err(ClientError::from)
        })?;
        let bound = endpoint.local_address().clone();
        self.driver.handle.spawn(endpoint.serve(registry));
        Ok(bound)
    }

    /// The async client, to use from async code.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// See [`Client::close`].
    pub fn close(&self) -> Result<(), ClientError> {
        self.driver.run(async {
            self.client.close().await;
            Ok(())
        })
    }

    /// See [`Client::node_id`].
    pub fn node_id(&self) -> Option<NodeId> {
        self.client.node_id()
    }

    /// See [`Client::is_ready`].
    pub fn is_ready(&self) -> bool {
        self.client.is_ready()
    }

    /// See [`Client::last_transaction`].
    pub fn last_transaction(&self) -> Option<Tid> {
        self.client.last_transaction()
    }

    /// See [`Client::sync`].
    pub fn sync(&self) -> Result<(), ClientError> {
        self.driver.run(self.client.sync())
    }

    /// See [`Client::new_oid`].
    pub fn new_oid(&self) -> Result<Oid, ClientError> {
        self.driver.run(self.client.new_oid())
    }

    /// See [`Client::load`].
    pub fn load(&self, oid: Oid) -> Result<Loaded, ClientError> {
        self.driver.run(self.client.load(oid))
    }

    /// See [`Client::load_before`].
    pub fn load_before(&self, oid: Oid, before: Tid) -> Result<Option<Loaded>, ClientError> {
        self.driver.run(self.client.load_before(oid, before))
    }

    /// See [`Client::load_serial`].
    pub fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Loaded, ClientError> {
        self.driver.run(self.client.load_serial(oid, serial))
    }

    /// See [`Client::object`].
    pub fn object(
        &self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<Record, ClientError> {
        self.driver.run(self.client.object(oid, at, before))
    }

    /// [`Client::object`] of many oids at once (`before`): at most
    /// [`MAX_OBJECTS_IN_FLIGHT`] requests are in flight, spread over the
    /// storages' connections, so many objects cost about one round trip.
    /// `each` gets every result on the calling thread, in completion order.
    pub fn objects_before(
        &self,
        oids: &[Oid],
        before: Tid,
        mut each: impl FnMut(Oid, Result<Record, ClientError>),
    ) -> Result<(), ClientError> {
        self.driver.run(async {
            let mut in_flight = tokio::task::JoinSet::new();
            for &oid in oids {
                if in_flight.len() >= MAX_OBJECTS_IN_FLIGHT {
                    if let Some(done) = in_flight.join_next().await {
                        deliver(done, &mut each);
                    }
                }
                let client = self.client.clone();
                in_flight.spawn(async move { (oid, client.object(oid, None, Some(before)).await) });
            }
            while let Some(done) = in_flight.join_next().await {
                deliver(done, &mut each);
            }
            Ok(())
        })
    }

    /// See [`Client::transaction_info`].
    pub fn transaction_info(&self, tid: Tid) -> Result<TransactionInfo, ClientError> {
        self.driver.run(self.client.transaction_info(tid))
    }

    /// See [`Client::history`].
    pub fn history(
        &self,
        oid: Oid,
        first: u64,
        last: u64,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        self.driver.run(self.client.history(oid, first, last))
    }

    /// See [`Client::undo_log_tids`].
    pub fn undo_log_tids(&self, first: u64, last: u64) -> Result<Vec<Tid>, ClientError> {
        self.driver.run(self.client.undo_log_tids(first, last))
    }

    /// See [`Client::iterate_tids`].
    pub fn iterate_tids(
        &self,
        start: Tid,
        stop: Option<Tid>,
        limit: u32,
    ) -> Result<Vec<Tid>, ClientError> {
        self.driver
            .run(self.client.iterate_tids(start, stop, limit))
    }

    /// See [`Client::oids_from`].
    pub fn oids_from(
        &self,
        partition: Partition,
        length: u32,
        min_oid: Oid,
        tid: Tid,
    ) -> Result<(Vec<Oid>, Option<Oid>), ClientError> {
        self.driver
            .run(self.client.oids_from(partition, length, min_oid, tid))
    }

    /// See [`Client::pack`].
    pub fn pack(&self, pack_tid: Tid, oids: Option<Vec<Oid>>) -> Result<Option<Tid>, ClientError> {
        self.driver.run(self.client.pack(pack_tid, oids))
    }

    /// See [`Client::wait_for_pack`].
    pub fn wait_for_pack(&self, pack_id: Tid) -> Result<(), ClientError> {
        self.driver.run(self.client.wait_for_pack(pack_id))
    }

    /// See [`Client::pack_orders`].
    pub fn pack_orders(
        &self,
        min_id: Tid,
    ) -> Result<Vec<neo_proto::packets::PackOrder>, ClientError> {
        self.driver.run(self.client.pack_orders(min_id))
    }

    /// See [`Client::begin`].
    pub fn begin(&self, tid: Option<Tid>) -> Result<BlockingTransaction, ClientError> {
        let txn = self.driver.run(self.client.begin(tid))?;
        Ok(BlockingTransaction {
            txn,
            driver: self.driver.clone(),
        })
    }
}

/// A [`Transaction`] for synchronous code.
pub struct BlockingTransaction {
    txn: Transaction,
    driver: Driver,
}

impl std::fmt::Debug for BlockingTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.txn.fmt(f)
    }
}

impl BlockingTransaction {
    /// See [`Transaction::ttid`].
    pub fn ttid(&self) -> Tid {
        self.txn.ttid()
    }

    /// See [`Transaction::store`].
    pub fn store(
        &mut self,
        oid: Oid,
        serial: Tid,
        data: Bytes,
    ) -> Result<Vec<Conflict>, ClientError> {
        self.driver.run(self.txn.store(oid, serial, data))
    }

    /// See [`Transaction::delete`].
    pub fn delete(&mut self, oid: Oid, serial: Tid) -> Result<Vec<Conflict>, ClientError> {
        self.driver.run(self.txn.delete(oid, serial))
    }

    /// See [`Transaction::store_record`].
    pub fn store_record(
        &mut self,
        oid: Oid,
        serial: Tid,
        data: Option<Bytes>,
        data_serial: Option<Tid>,
    ) -> Result<Vec<Conflict>, ClientError> {
        self.driver
            .run(self.txn.store_record(oid, serial, data, data_serial))
    }

    /// See [`Transaction::check_current_serial`].
    pub fn check_current_serial(
        &mut self,
        oid: Oid,
        serial: Tid,
    ) -> Result<Vec<Conflict>, ClientError> {
        self.driver.run(self.txn.check_current_serial(oid, serial))
    }

    /// See [`Transaction::take_conflicts`].
    pub fn take_conflicts(&mut self) -> Vec<Conflict> {
        self.txn.take_conflicts()
    }

    /// See [`Transaction::wait_stores`].
    pub fn wait_stores(&mut self) -> Result<Vec<Conflict>, ClientError> {
        self.driver.run(self.txn.wait_stores())
    }

    /// See [`Transaction::vote`].
    pub fn vote(&mut self, meta: &TxnMeta) -> Result<(), ClientError> {
        self.driver.run(self.txn.vote(meta))
    }

    /// See [`Transaction::finish`].
    pub fn finish(&mut self) -> Result<Tid, ClientError> {
        self.driver.run(self.txn.finish())
    }

    /// See [`Transaction::finish_with`].
    pub fn finish_with(
        &mut self,
        hook: impl FnOnce(Tid) + Send + 'static,
    ) -> Result<Tid, ClientError> {
        self.driver.run(self.txn.finish_with(hook))
    }

    /// See [`Transaction::abort`].
    pub fn abort(&mut self) -> Result<(), ClientError> {
        self.driver.run(self.txn.abort())
    }

    /// See [`Transaction::undo_serials`].
    pub fn undo_serials(
        &mut self,
        undone_tid: Tid,
        oids: &[Oid],
    ) -> Result<HashMap<Oid, UndoSerial>, ClientError> {
        self.driver.run(self.txn.undo_serials(undone_tid, oids))
    }
}
