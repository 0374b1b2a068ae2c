//! Runs [`Master`] on the node shell of `neo-net`, on a thread of its own
//! with a single-threaded runtime: a packet is read and handled, and the
//! answers written, on that one thread (on the daemon's two workers, each
//! packet woke the other one: 183 µs of master CPU per serial commit of
//! 10 objects became 134). All decisions are the state machine's.

use std::future::Future;

use neo_net::metrics::Timed;
use neo_net::{Listener, ShellConfig, ShellError};
use neo_proto::Packet;

use crate::master::MasterConfig;
use crate::metrics::MasterMetrics;
use crate::roles::MasterNode;

/// Why the master stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot make a cluster.
    #[error("invalid configuration: {0}")]
    Config(#[from] neo_cluster::PtError),
    /// The node's shell failed.
    #[error(transparent)]
    Shell(#[from] ShellError),
}

/// Runs a master (primary or secondary, as elected) on `listener` until the cluster is stopped
/// (`neoctl set cluster STOPPING`) or `shutdown` completes, keeping
/// `metrics` if given.
pub async fn run(
    config: MasterConfig,
    listener: Listener,
    metrics: Option<MasterMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let mut master = MasterNode::new(config)?;
    let durations = metrics.as_ref().map(|metrics| metrics.durations.clone());
    if let Some(metrics) = metrics {
        master = master.with_metrics(metrics);
    }
    let master = Timed::new(master, timed, durations);
    neo_net::shell::run_on_own_thread(
        "neo-master",
        master,
        Some(listener),
        ShellConfig::default(),
        shutdown,
    )
    .await?;
    tracing::info!("master stopped");
    Ok(())
}

/// The clients' requests whose time to answer is measured.
fn timed(packet: &Packet) -> Option<&'static str> {
    match packet {
        Packet::AskBeginTransaction(_) => Some("begin"),
        Packet::AskNewOIDs(_) => Some("new_oids"),
        // From tpc_finish to its answer: the storages' locks included.
        Packet::AskFinishTransaction(_) => Some("finish"),
        _ => None,
    }
}
