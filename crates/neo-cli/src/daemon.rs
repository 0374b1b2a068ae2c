//! What every daemon's `main` shares: logging, the runtime, signals and
//! the one-line fatal error.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use neo_net::metrics::MetricsEndpoint;
use neo_net::Tls;
use neo_proto::Address;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::options::TlsFiles;

/// Loads the node's TLS credentials if it has some (operations.md §8): a
/// file that cannot be used stops the program before it does anything.
pub fn load_tls(files: Option<&TlsFiles>) -> Result<Option<Tls>, String> {
    files
        .map(TlsFiles::load)
        .transpose()
        .map_err(|error| error.to_string())
}

/// With `--metrics`, a registry for the node's metrics, `register`ed, and
/// its endpoint serving it from now on (`metrics listening` logs where);
/// an address that cannot be bound stops the program with one line.
pub async fn serve_metrics<Metrics>(
    address: Option<&Address>,
    register: impl FnOnce(&mut Registry) -> Metrics,
) -> Result<Option<Metrics>, String> {
    let Some(address) = address else {
        return Ok(None);
    };
    let endpoint = MetricsEndpoint::bind(address)
        .await
        .map_err(|e| format!("--metrics: {e}"))?;
    let mut registry = Registry::default();
    let metrics = register(&mut registry);
    tracing::info!(address = %endpoint.local_address(), "metrics listening");
    tokio::spawn(endpoint.serve(Arc::new(registry)));
    Ok(Some(metrics))
}

/// Logs to `logfile` (appending) or to stderr. The level comes from
/// `NEO_LOG` (`info` by default), in `tracing`'s filter syntax.
pub fn init_logging(logfile: Option<&Path>) -> Result<(), String> {
    let filter = EnvFilter::try_from_env("NEO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// The multi-threaded runtime the daemons run on (2 workers: connections
/// keep flowing while a node does database work on the other).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::warn!("cannot watch SIGTERM: {error}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Runs a daemon's node: logging to `logfile` (or stderr), the runtime,
/// then `node` until it returns; an error is printed as one line.
pub fn serve<Node>(program: &str, logfile: Option<&Path>, node: Node) -> ExitCode
where
    Node: std::future::Future<Output = Result<(), String>>,
{
    if let Err(message) = init_logging(logfile) {
        return fail(program, message);
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(message) => return fail(program, message),
    };
    match runtime.block_on(node) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(program, message),
    }
}

/// Prints `«program»: error: «message»` and gives the failure status.
pub fn fail(program: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{program}: error: {message}");
    ExitCode::FAILURE
}
