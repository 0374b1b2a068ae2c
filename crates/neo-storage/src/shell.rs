//! Runs [`Storage`] on the node shell of `neo-net`, on a thread of its own
//! with a single-threaded runtime: a request is read, served and answered
//! on that one thread with no hand-off between threads (each cost a
//! wake-up per request: 25% of a load's latency), and the database work,
//! bounded per event (a commit, a pack step), never holds up the runtime
//! of the process that started the node (the other nodes of `neosimple`).

use std::future::Future;

use neo_net::metrics::Timed;
use neo_net::{Listener, ShellConfig, ShellError};

use crate::metrics::timed;
use crate::node::Storage;

/// Why the storage node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The node's shell failed, or the node stopped on a database failure.
    #[error(transparent)]
    Shell(#[from] ShellError),
}

/// Runs a storage node until the master tells it to stop or `shutdown`
/// completes.
pub async fn run(
    storage: Storage,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let config = ShellConfig {
        drain_timeout: std::time::Duration::from_secs(2),
        ..ShellConfig::default()
    };
    let durations = storage.request_durations();
    let storage = Timed::new(storage, timed, durations);
    neo_net::shell::run_on_own_thread("neo-storage", storage, Some(listener), config, shutdown)
        .await?;
    Ok(())
}
