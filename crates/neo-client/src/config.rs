//! How a client is set up.

use std::sync::Arc;
use std::time::Duration;

use neo_net::metrics::round_trips;
use neo_net::ConnectionConfig;
use neo_proto::{Oid, Tid};
use prometheus_client::registry::Registry;

/// What the client tells its user about commits of other clients, in
/// commit order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// `InvalidateObjects`: these oids changed in transaction `tid`.
    Objects {
        /// The committed transaction.
        tid: Tid,
        /// The oids it modified.
        oids: Vec<Oid>,
    },
    /// After a reconnection to the master: invalidations may have been
    /// missed (or the database truncated), so every cached current revision
    /// must be dropped. `tid` is the new last transaction.
    All {
        /// The last committed transaction now.
        tid: Tid,
    },
}

/// Receives [`Invalidation`]s. It is called from the task that reads the
/// master connection, strictly in order and *before* `last_transaction()`
/// reports the TID, so it must be quick and must not wait on the client.
pub type InvalidationListener = Arc<dyn Fn(&Invalidation) + Send + Sync>;

/// Client settings; [`ClientConfig::new`] gives the defaults.
#[derive(Clone)]
pub struct ClientConfig {
    /// Addresses of the masters; the primary is found among them.
    pub masters: Vec<neo_proto::Address>,
    /// Cluster name; the master refuses another.
    pub cluster: String,
    /// Identify as a read-only client (`extra = {read_only: true}`):
    /// commits are refused locally.
    pub read_only: bool,
    /// How long an operation waits for a usable primary master before
    /// failing with [`crate::ClientError::NotConnected`].
    pub ready_timeout: Duration,
    /// Bound on one attempt to reach a master or a storage: TCP connect,
    /// handshake and identification.
    pub connect_timeout: Duration,
    /// At most one connection attempt per address per this interval.
    pub retry_interval: Duration,
    /// Bytes of store data a transaction may have unanswered before
    /// `store` waits for answers (NEO/py: the cache size, 20 MiB).
    pub max_store_bytes_in_flight: usize,
    /// Largest object accepted, stored or loaded (after decompression).
    pub max_object_size: usize,
    /// Compress stored data with zlib when that makes it smaller.
    pub compress: bool,
    /// Tunables of every connection, TLS among them (with
    /// `connection.tls`, every connection to masters and storages is TLS).
    pub connection: ConnectionConfig,
    /// Who gets invalidations, if anyone.
    pub invalidation_listener: Option<InvalidationListener>,
    /// When every readable cell sends an object whose data does not match
    /// its checksum: return that data anyway (decompressed, or empty if it
    /// cannot be) instead of failing with `ChecksumMismatch`, as NEO/py's
    /// `ignore_wrong_checksum` does — to salvage a damaged database.
    pub ignore_wrong_checksum: bool,
    /// NEO's dynamic master list file: its masters are tried after
    /// `masters`, and it is kept current with the masters learnt.
    pub dynamic_master_list: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("masters", &self.masters)
            .field("cluster", &self.cluster)
            .field("read_only", &self.read_only)
            .field("ready_timeout", &self.ready_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Defaults for a cluster named `cluster` with these masters.
    pub fn new(masters: Vec<neo_proto::Address>, cluster: impl Into<String>) -> ClientConfig {
        ClientConfig {
            masters,
            cluster: cluster.into(),
            read_only: false,
            ready_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            retry_interval: Duration::from_millis(250),
            max_store_bytes_in_flight: 20 << 20,
            // Leaves room for the packet header below the 64 MiB limit.
            max_object_size: (64 << 20) - 4096,
            compress: true,
            connection: ConnectionConfig::default(),
            invalidation_listener: None,
            dynamic_master_list: None,
            ignore_wrong_checksum: false,
        }
    }

    /// Sets the invalidation listener.
    pub fn on_invalidation(
        mut self,
        listener: impl Fn(&Invalidation) + Send + Sync + 'static,
    ) -> ClientConfig {
        self.invalidation_listener = Some(Arc::new(listener));
        self
    }

    /// Times the round trip of every request the client sends, by request
    /// (`neo_client_round_trip_seconds{request="AskObject"}`: loads,
    /// stores, votes, tpc_finish...), in `registry`, which the embedding
    /// program serves or encodes.
    pub fn with_metrics(mut self, registry: &mut Registry) -> ClientConfig {
        self.connection.round_trips = Some(round_trips(registry, "neo_client_round_trip"));
        self
    }
}
