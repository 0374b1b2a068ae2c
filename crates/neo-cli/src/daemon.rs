//! What every daemon's `main` shares: logging, the runtime, signals and
//! the one-line fatal error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use neo_log::LogOptions;
use neo_net::metrics::MetricsEndpoint;
use neo_net::{Listener, Tls};
use neo_proto::Address;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

use crate::options::{CommonOptions, TlsFiles};

/// Loads the node's TLS credentials if it has some (operations.md §8): a
/// file that cannot be used stops the program before it does anything.
pub fn load_tls(files: Option<&TlsFiles>) -> Result<Option<Tls>, String> {
    files
        .map(TlsFiles::load)
        .transpose()
        .map_err(|error| error.to_string())
}

/// What the log signals do (operations.md §7.5, §7.6).
#[derive(Clone, Copy, Debug)]
enum LogSignal {
    /// SIGHUP (logrotate's usual signal) and SIGRTMIN+1 (NEO/py's).
    Reopen,
    /// SIGRTMIN: NEO/py flushes its backlog; ours has none, so it syncs.
    Flush,
    /// SIGUSR1: the packet log on or off.
    TogglePackets,
}

impl LogSignal {
    fn act(self) {
        match self {
            LogSignal::Reopen => match neo_log::logging().and_then(|log| log.reopen()) {
                Ok(()) => tracing::info!("log file reopened"),
                Err(error) => tracing::warn!("cannot reopen the log: {error}"),
            },
            LogSignal::Flush => neo_log::flush_requested(),
            LogSignal::TogglePackets => {
                let on = !neo_log::packet_log_enabled();
                match neo_log::set_packet_log(on) {
                    Ok(()) => tracing::info!(on, "packet log switched"),
                    Err(error) => tracing::warn!("cannot switch the packet log: {error}"),
                }
            }
        }
    }
}

/// Acts on the log signals for as long as the runtime runs.
fn watch_log_signals() {
    let rtmin = libc::SIGRTMIN();
    for (kind, action) in [
        (SignalKind::hangup(), LogSignal::Reopen),
        (SignalKind::from_raw(rtmin + 1), LogSignal::Reopen),
        (SignalKind::from_raw(rtmin), LogSignal::Flush),
        (SignalKind::user_defined1(), LogSignal::TogglePackets),
    ] {
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        action.act();
                    }
                });
            }
            Err(error) => tracing::warn!(?action, "cannot watch the signal: {error}"),
        }
    }
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

/// The daemon's listener on `-b`, with its TLS credentials.
pub async fn listen(common: &CommonOptions, tls: Option<Tls>) -> Result<Listener, String> {
    Ok(Listener::bind(&common.bind)
        .await
        .map_err(|e| e.to_string())?
        .with_tls(tls))
}

/// The multi-threaded runtime the daemons start on (2 workers): the admin
/// node with its tasks (e-mails, status page), signals and the metrics
/// endpoint. The master and the storage nodes run on threads of their own
/// (`neo_net::shell::run_on_own_thread`).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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

/// Where a program logs, and what.
#[derive(Clone, Debug, Default)]
pub struct LogSetup {
    /// `-l`: the log file; stderr without one.
    pub file: Option<PathBuf>,
    /// `--log-level`; else `RUST_LOG`.
    pub level: Option<String>,
}

impl LogSetup {
    /// As a daemon's options say.
    pub fn of(common: &CommonOptions) -> LogSetup {
        LogSetup {
            file: common.logfile.clone(),
            level: common.log_level.clone(),
        }
    }
}

/// Runs a daemon's node: its log, the runtime and the log signals, then
/// `node` until it returns. An error is printed as one line, and logged.
pub fn serve<Node>(program: &str, log: LogSetup, node: Node) -> ExitCode
where
    Node: std::future::Future<Output = Result<(), String>>,
{
    let to_file = log.file.is_some();
    let log = LogOptions {
        program,
        file: log.file.as_deref(),
        filter: log.level.as_deref(),
    };
    if let Err(error) = neo_log::init(log) {
        return fail(program, error);
    }
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(message) => return fail(program, message),
    };
    let outcome = runtime.block_on(async {
        watch_log_signals();
        node.await
    });
    let status = match outcome {
        Ok(()) => {
            tracing::info!("{program} stopped");
            ExitCode::SUCCESS
        }
        Err(message) => {
            // On stderr, the one line of `fail` says it already.
            if to_file {
                tracing::error!("{program} stopped: {message}");
            }
            fail(program, message)
        }
    };
    neo_log::flush_requested();
    status
}

/// Prints `«program»: error: «message»` and gives the failure status.
pub fn fail(program: &str, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{program}: error: {message}");
    ExitCode::FAILURE
}
