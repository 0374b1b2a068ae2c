//! The admin node's metrics (`--metrics`): the cluster as the master
//! announced it (state, nodes, cells), recounted after each batch of
//! inputs (cells only when the table's version moved), and the `neoctl`
//! requests served, timed from arrival to answer by the shell.

use std::sync::atomic::AtomicU64;

use neo_cluster::UnixTime;
use neo_net::metrics::{durations, Durations, Tally, Timed};
use neo_net::{Input, Node, Output};
use neo_proto::packets::PacketKind;
use neo_proto::{Packet, Ptid};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::app::Admin;

/// The admin node's metrics, registered in one registry.
#[derive(Debug)]
pub struct AdminMetrics {
    durations: Durations,
    connected: Gauge,
    /// A float gauge: UNIX times have fractions.
    out_of_date_since: Gauge<f64, AtomicU64>,
    cluster_state: Tally<1>,
    nodes: Tally<2>,
    cells: Tally<1>,
    /// The table version the cells were counted at.
    cells_ptid: Option<Option<Ptid>>,
}

impl AdminMetrics {
    /// The admin node's metrics, registered in `registry`.
    pub fn new(registry: &mut Registry) -> AdminMetrics {
        let connected = Gauge::default();
        registry.register(
            "neo_admin_connected",
            "1 while identified to the primary master (neoctl is served)",
            connected.clone(),
        );
        let out_of_date_since = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "neo_admin_out_of_date_since_seconds",
            "UNIX time since which the cell out of date the longest has been so (replication \
             lag: time() minus this); 0 when every cell is up to date",
            out_of_date_since.clone(),
        );
        AdminMetrics {
            durations: durations(registry, "neo_admin_request_duration"),
            connected,
            out_of_date_since,
            cluster_state: Tally::new(
                registry,
                "neo_admin_cluster_state",
                "The cluster state the master announced: 1 for the current one",
            ),
            nodes: Tally::new(
                registry,
                "neo_admin_nodes",
                "Nodes the master announced, by type and state",
            ),
            cells: Tally::new(
                registry,
                "neo_admin_cells",
                "Cells of the partition table, by state",
            ),
            cells_ptid: None,
        }
    }

    fn observe(&mut self, admin: &Admin) {
        self.connected.set(i64::from(admin.is_connected()));
        self.out_of_date_since
            .set(admin.out_of_date_since().unwrap_or(0.0));
        self.cluster_state
            .set(admin.cluster_state().map(|state| [("state", state.name())]));
        self.nodes.set(admin.nodes().iter().map(|node| {
            [
                ("node_type", node.node_type.name()),
                ("state", node.state.name()),
            ]
        }));
        let pt = admin.partition_table();
        let ptid = pt.and_then(|pt| pt.ptid());
        if self.cells_ptid != Some(ptid) {
            self.cells_ptid = Some(ptid);
            self.cells.set(pt.into_iter().flat_map(|pt| {
                (0..pt.partitions())
                    .flat_map(|partition| pt.cells(partition))
                    .map(|cell| [("state", cell.state.name())])
            }));
        }
    }
}

/// The admin with its metrics: requests timed, gauges recounted after
/// each batch.
pub(crate) struct Metered {
    admin: Timed<Admin>,
    metrics: Option<AdminMetrics>,
}

impl Metered {
    pub(crate) fn new(admin: Admin, metrics: Option<AdminMetrics>) -> Metered {
        let durations = metrics.as_ref().map(|metrics| metrics.durations.clone());
        Metered {
            admin: Timed::new(admin, timed, durations),
            metrics,
        }
    }

    /// The admin itself, for what its shell carries out.
    pub(crate) fn admin_mut(&mut self) -> &mut Admin {
        self.admin.node_mut()
    }
}

impl Node for Metered {
    fn handle(&mut self, input: Input, now: UnixTime) {
        self.admin.handle(input, now);
    }

    fn poll_output(&mut self) -> Vec<Output> {
        let outputs = self.admin.poll_output();
        if let Some(metrics) = &mut self.metrics {
            metrics.observe(self.admin.node());
        }
        outputs
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        self.admin.poll_timeout()
    }
}

/// Requests are `neoctl`'s (the master only notifies the admin), by
/// packet name; the master's pings are not.
fn timed(packet: &Packet) -> Option<&'static str> {
    let neoctl = packet.kind() == PacketKind::Request && !matches!(packet, Packet::Ping(_));
    neoctl.then(|| packet.name())
}
