//! The master's metrics (`--metrics`). Counters are bumped where the
//! primary role decides (a commit, an abort, a refusal); gauges of its
//! state are recounted after each batch of inputs, cells only when the
//! table's version moved.

use neo_cluster::PartitionTable;
use neo_net::metrics::{durations, gauge_value, Durations, Tally};
use neo_proto::Ptid;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::master::Master;

/// What the primary role counts as it goes; clones share the counts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    pub commits: Counter,
    pub aborts: Counter,
    /// `tpc_finish` refused: the storages that failed the vote are needed.
    pub incomplete: Counter,
    /// Begins held until the storages are ready.
    pub begins_delayed: Counter,
    /// Requests refused `NOT_READY` over one of the master's limits.
    pub refused: Counter,
    pub pack_orders: Counter,
}

/// The master's metrics, registered in one registry.
#[derive(Debug)]
pub struct MasterMetrics {
    pub(crate) counters: Counters,
    pub(crate) durations: Durations,
    transactions: Gauge,
    packs_pending: Gauge,
    last_tid: Gauge,
    cluster_state: Tally<1>,
    cells: Tally<1>,
    connections: Tally<1>,
    /// The table version the cells were counted at.
    cells_ptid: Option<Option<Ptid>>,
}

impl MasterMetrics {
    /// The master's metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> MasterMetrics {
        let counters = Counters::default();
        let counter = |registry: &mut Registry, name: &str, help: &str, counter: &Counter| {
            registry.register(name, help, counter.clone());
        };
        counter(
            registry,
            "neo_master_commits",
            "Transactions committed",
            &counters.commits,
        );
        counter(
            registry,
            "neo_master_aborts",
            "Transactions aborted by their client",
            &counters.aborts,
        );
        counter(
            registry,
            "neo_master_incomplete_transactions",
            "tpc_finish refused: storages that failed the vote are needed",
            &counters.incomplete,
        );
        counter(
            registry,
            "neo_master_begins_delayed",
            "Transactions whose begin waited for storages to be ready",
            &counters.begins_delayed,
        );
        counter(
            registry,
            "neo_master_refused_requests",
            "Requests refused NOT_READY over one of the master's limits",
            &counters.refused,
        );
        counter(
            registry,
            "neo_master_pack_orders",
            "Pack orders received with a tpc_finish",
            &counters.pack_orders,
        );
        let transactions = Gauge::default();
        registry.register(
            "neo_master_transactions",
            "Transactions in progress",
            transactions.clone(),
        );
        let packs_pending = Gauge::default();
        registry.register(
            "neo_master_pack_orders_pending",
            "Pack orders not completed by every storage with readable cells yet",
            packs_pending.clone(),
        );
        let last_tid = Gauge::default();
        registry.register(
            "neo_master_last_tid",
            "Last committed TID (NEO's 64-bit timestamp)",
            last_tid.clone(),
        );
        MasterMetrics {
            counters,
            durations: durations(registry, "neo_master_request_duration"),
            transactions,
            packs_pending,
            last_tid,
            cluster_state: Tally::new(
                registry,
                "neo_master_cluster_state",
                "The cluster state: 1 for the current one",
            ),
            cells: Tally::new(
                registry,
                "neo_master_cells",
                "Cells of the partition table, by state",
            ),
            connections: Tally::new(
                registry,
                "neo_master_connections",
                "Connections, by type of the identified node",
            ),
            cells_ptid: None,
        }
    }

    /// Updates the gauges from the primary role's state.
    pub(crate) fn observe(&mut self, master: &Master) {
        self.transactions
            .set(gauge_value(master.transactions.in_progress()));
        self.packs_pending.set(gauge_value(master.packs.pending()));
        self.last_tid
            .set(gauge_value(master.transactions.last_tid.0));
        self.cluster_state.set([[("state", master.state.name())]]);
        self.connections.set(master.peers.values().map(|peer| {
            [(
                "node_type",
                peer.node_type.map_or("UNIDENTIFIED", |t| t.name()),
            )]
        }));
        let ptid = master.pt.ptid();
        if self.cells_ptid != Some(ptid) {
            self.cells_ptid = Some(ptid);
            self.cells.set(cell_states(&master.pt));
        }
    }

    /// While a secondary: the primary's figures are not ours to show.
    pub(crate) fn observe_secondary(&mut self) {
        self.transactions.set(0);
        self.cluster_state.set([]);
        self.connections.set([]);
        self.cells.set([]);
        self.cells_ptid = None;
    }
}

/// One label set per cell of `pt`: its state.
fn cell_states(
    pt: &PartitionTable,
) -> impl Iterator<Item = [(&'static str, &'static str); 1]> + '_ {
    (0..pt.partitions())
        .flat_map(|partition| pt.cells(partition))
        .map(|cell| [("state", cell.state.name())])
}
