//! The client's log (`logfile=`): the Rust client's records and those of
//! the `neo` Python loggers, in the same file and the same lines as the
//! daemons' (`neo_log`), so `neolog` reads them.

use std::path::PathBuf;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

fn os_error(error: neo_log::LogError) -> PyErr {
    PyOSError::new_err(error.to_string())
}

/// Logs this process to `path` from now on (one NEO log per process: the
/// last one configured wins, as with NEO/py).
#[pyfunction]
pub fn log_to(path: PathBuf) -> PyResult<()> {
    neo_log::log_to("client", &path).map_err(os_error)
}

/// Opens the log file's path again, after logrotate moved it.
#[pyfunction]
pub fn reopen_log() -> PyResult<()> {
    neo_log::logging()
        .and_then(|logging| logging.reopen())
        .map_err(os_error)
}

/// One record of a Python logger, at Python's numeric `level`.
#[pyfunction]
pub fn log(level: i32, logger: &str, message: &str) {
    match level {
        ..=9 => tracing::trace!(target: "neo_py", logger, "{message}"),
        10..=19 => tracing::debug!(target: "neo_py", logger, "{message}"),
        20..=29 => tracing::info!(target: "neo_py", logger, "{message}"),
        30..=39 => tracing::warn!(target: "neo_py", logger, "{message}"),
        _ => tracing::error!(target: "neo_py", logger, "{message}"),
    }
}
