//! What every daemon's `main` shares: logging, the runtime, signals and
//! the one-line fatal error.

use std::path::Path;
use std::process::ExitCode;

use neo_log::LogOptions;
use neo_net::Tls;
use tokio::signal::unix::{signal, SignalKind};

use crate::options::TlsFiles;

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

/// Runs a daemon's node: its log (to `logfile`, or stderr; filtered by
/// `log_level`, else `RUST_LOG`), the runtime and the log signals, then
/// `node` until it returns. An error is printed as one line, and logged.
pub fn serve<Node>(
    program: &str,
    logfile: Option<&Path>,
    log_level: Option<&str>,
    node: Node,
) -> ExitCode
where
    Node: std::future::Future<Output = Result<(), String>>,
{
    let log = LogOptions {
        program,
        file: logfile,
        filter: log_level,
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
            tracing::error!("{program} stopped: {message}");
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
