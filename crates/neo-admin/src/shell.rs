//! Runs [`Admin`] on the node shell of `neo-net`: it serves `neoctl` on
//! the listener and makes the master connections the state machine asks
//! for. All decisions are the state machine's.

use std::future::Future;

use neo_net::{Listener, ShellConfig, ShellError};

use crate::app::{Admin, AdminConfig, ConfigError};
use crate::metrics::{AdminMetrics, Metered};

/// Why the admin node could not run.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configuration cannot make an admin node.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The node's shell failed.
    #[error(transparent)]
    Shell(#[from] ShellError),
}

/// Runs an admin node: serves `neoctl` on `listener` and follows the
/// primary master among `config.masters`, reconnecting forever when it is
/// lost. Returns `Ok` once the cluster has been stopped (the master
/// announced STOPPING, then went away) or when `shutdown` completes.
/// Keeps `metrics` if given.
pub async fn run(
    config: AdminConfig,
    listener: Listener,
    metrics: Option<AdminMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    let mut admin = Metered::new(Admin::new(config)?, metrics);
    neo_net::shell::run(&mut admin, Some(listener), ShellConfig::default(), shutdown).await?;
    tracing::info!("admin stopped");
    Ok(())
}
