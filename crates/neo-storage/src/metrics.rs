//! The storage node's metrics (`--metrics`). The node bumps counters
//! where it decides (a load answered, a store written, a conflict, a
//! commit, a chunk replicated, a pack step); gauges of its state (requests
//! waiting, transactions, connections, own cells) are recounted after
//! each batch of inputs, cells only when the table's version moved.
//! Times to answer are measured around the node, in the shell.

use neo_net::metrics::{durations, gauge_value, Durations, Tally};
use neo_proto::{NodeId, Packet, Ptid};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// What the node counts as it goes; clones share the counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub loads_found: Counter,
    /// `OID_NOT_FOUND`: the object exists, not the revision asked.
    pub loads_no_revision: Counter,
    /// `OID_DOES_NOT_EXIST`.
    pub loads_no_object: Counter,
    /// Stores written (lockless ones of a replicated partition included).
    pub stores: Counter,
    /// Stores, checks and relocks answered with a conflict.
    pub conflicts: Counter,
    pub votes: Counter,
    /// Transactions unlocked: committed here.
    pub commits: Counter,
    pub aborts: Counter,
    /// Requests refused because too many wait for locks.
    pub refused: Counter,
    pub replicated_partitions: Counter,
    pub replicated_transactions: Counter,
    pub replicated_objects: Counter,
    pub replicated_bytes: Counter,
    /// Bounded steps of pack (a few hundred oids each).
    pub pack_steps: Counter,
    pub packs_completed: Counter,
}

/// The storage node's metrics, registered in one registry.
#[derive(Debug)]
pub struct StorageMetrics {
    pub(crate) counters: Counters,
    pub(crate) durations: Durations,
    waiting: Gauge,
    transactions: Gauge,
    replicating: Gauge,
    /// The Importer's bytes imported and to import since this start,
    /// transactions imported.
    import_bytes: Gauge,
    import_total_bytes: Gauge,
    import_transactions: Gauge,
    connections: Tally<1>,
    cells: Tally<1>,
    /// The table version the cells were counted at.
    cells_ptid: Option<Option<Ptid>>,
}

/// Label sets of the counters with a `result` label.
type Results = Family<[(&'static str, &'static str); 1], Counter>;

impl StorageMetrics {
    /// The storage node's metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> StorageMetrics {
        let loads = Results::default();
        // Clones of the family's counters: the node bumps them without
        // taking the family's lock.
        let load = |result| loads.get_or_create(&[("result", result)]).clone();
        let counters = Counters {
            loads_found: load("found"),
            loads_no_revision: load("no_revision"),
            loads_no_object: load("no_object"),
            ..Counters::default()
        };
        registry.register("neo_storage_loads", "Loads answered, by result", loads);
        let plain: [(&str, &str, &Counter); 11] = [
            ("neo_storage_stores", "Stores written", &counters.stores),
            (
                "neo_storage_conflicts",
                "Stores, checks and relocks answered with a conflict",
                &counters.conflicts,
            ),
            ("neo_storage_votes", "Votes", &counters.votes),
            (
                "neo_storage_commits",
                "Transactions committed (unlocked)",
                &counters.commits,
            ),
            (
                "neo_storage_aborts",
                "Transactions aborted",
                &counters.aborts,
            ),
            (
                "neo_storage_refused_requests",
                "Requests refused NOT_READY: too many waiting for locks",
                &counters.refused,
            ),
            (
                "neo_storage_replicated_partitions",
                "Partitions replicated and announced to the master",
                &counters.replicated_partitions,
            ),
            (
                "neo_storage_replicated_transactions",
                "Transactions fetched by replication",
                &counters.replicated_transactions,
            ),
            (
                "neo_storage_replicated_objects",
                "Object revisions fetched by replication",
                &counters.replicated_objects,
            ),
            (
                "neo_storage_pack_steps",
                "Steps of pack (a few hundred oids of a partition each)",
                &counters.pack_steps,
            ),
            (
                "neo_storage_packs_completed",
                "Pack orders completed",
                &counters.packs_completed,
            ),
        ];
        for (name, help, counter) in plain {
            registry.register(name, help, counter.clone());
        }
        registry.register_with_unit(
            "neo_storage_replicated",
            "Data fetched by replication",
            Unit::Bytes,
            counters.replicated_bytes.clone(),
        );
        let waiting = Gauge::default();
        registry.register(
            "neo_storage_waiting_requests",
            "Requests waiting for a lock or an unlock",
            waiting.clone(),
        );
        let transactions = Gauge::default();
        registry.register(
            "neo_storage_transactions",
            "Transactions in progress (storing to locked)",
            transactions.clone(),
        );
        let replicating = Gauge::default();
        registry.register(
            "neo_storage_replication_pending_partitions",
            "Partitions still to fetch by replication, the one in progress included",
            replicating.clone(),
        );
        let import_bytes = Gauge::default();
        registry.register_with_unit(
            "neo_storage_import",
            "Importer: data of the sources imported since the node started",
            Unit::Bytes,
            import_bytes.clone(),
        );
        let import_total_bytes = Gauge::default();
        registry.register_with_unit(
            "neo_storage_import_total",
            "Importer: data of the sources to import when the node started",
            Unit::Bytes,
            import_total_bytes.clone(),
        );
        let import_transactions = Gauge::default();
        registry.register(
            "neo_storage_import_transactions",
            "Importer: transactions imported since the node started",
            import_transactions.clone(),
        );
        StorageMetrics {
            counters,
            replicating,
            import_bytes,
            import_total_bytes,
            import_transactions,
            durations: durations(registry, "neo_storage_request_duration"),
            waiting,
            transactions,
            connections: Tally::new(
                registry,
                "neo_storage_connections",
                "Connections, by type of the peer",
            ),
            cells: Tally::new(
                registry,
                "neo_storage_cells",
                "Own cells, by state (OUT_OF_DATE ones are to replicate)",
            ),
            cells_ptid: None,
        }
    }

    /// Updates the gauges from the node's state.
    pub(crate) fn observe(&mut self, state: Observed<'_, impl Iterator<Item = &'static str>>) {
        self.waiting.set(gauge_value(state.waiting));
        self.transactions.set(gauge_value(state.transactions));
        self.replicating.set(gauge_value(state.replicating));
        if let Some(import) = state.import {
            let value = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.import_bytes.set(value(import.bytes));
            self.import_total_bytes.set(value(import.total));
            self.import_transactions.set(value(import.transactions));
        }
        self.connections
            .set(state.connections.map(|peer| [("peer", peer)]));
        let ptid = state.pt.and_then(|pt| pt.ptid());
        if self.cells_ptid != Some(ptid) {
            self.cells_ptid = Some(ptid);
            let own = state.nid.zip(state.pt);
            self.cells.set(own.into_iter().flat_map(|(nid, pt)| {
                pt.cells_of(nid)
                    .into_iter()
                    .map(|(_, cell_state)| [("state", cell_state.name())])
            }));
        }
    }
}

/// What the gauges are recounted from.
pub(crate) struct Observed<'a, Connections> {
    pub waiting: usize,
    pub transactions: usize,
    /// Partitions still to replicate.
    pub replicating: usize,
    /// The kind of each connection.
    pub connections: Connections,
    pub nid: Option<NodeId>,
    pub pt: Option<&'a neo_cluster::PartitionTable>,
    /// With the Importer.
    pub import: Option<crate::importer::ImportProgress>,
}

/// The requests whose time to answer is measured, by operation.
pub(crate) fn timed(packet: &Packet) -> Option<&'static str> {
    match packet {
        Packet::AskObject(_) => Some("load"),
        Packet::AskStoreObject(_) => Some("store"),
        Packet::AskCheckCurrentSerial(_) => Some("check_current"),
        Packet::AskVoteTransaction(_) => Some("vote"),
        // Until the lock is durable (the commit decision).
        Packet::AskLockInformation(_) => Some("lock"),
        Packet::AskObjectHistory(_) => Some("history"),
        Packet::AskObjectUndoSerial(_) => Some("undo"),
        Packet::AskTIDs(_) | Packet::AskTIDsFrom(_) | Packet::AskOIDsFrom(_) => Some("list"),
        _ => None,
    }
}
