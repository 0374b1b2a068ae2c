//! Runs [`Master`] on the node shell of `neo-net`. All decisions are the
//! state machine's.

use std::future::Future;

use neo_net::{Listener, ShellConfig, ShellError};

use crate::master::MasterConfig;
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
/// (`neoctl set cluster STOPPING`) or `shutdown` completes.
pub async fn run(
    config: MasterConfig,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut master = MasterNode::new(config)?;
    neo_net::shell::run(
        &mut master,
        Some(listener),
        ShellConfig::default(),
        shutdown,
    )
    .await?;
    tracing::info!("master stopped");
    Ok(())
}
