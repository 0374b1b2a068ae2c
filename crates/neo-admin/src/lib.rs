//! The NEO admin node (operations.md §4): it follows the primary master's
//! node table, partition table and cluster state, and serves `neoctl`,
//! answering what it knows and relaying the rest to the master.
//!
//! [`Admin`] is the node as a state machine ([`neo_net::Node`]): it is fed
//! inputs with the time and gives back outputs, with no I/O of its own.
//! [`run`] runs it on `neo-net`'s node shell.

mod app;
pub mod http;
mod imports;
pub mod mail;
mod metrics;
pub mod monitor;
mod shell;
pub mod smtp;
pub mod status;
pub mod summary;

pub use app::{Admin, AdminConfig, ConfigError, MonitorConfig, MONITOR_TIMEOUT, NOT_CONNECTED};
pub use metrics::AdminMetrics;
pub use shell::{run, run_with, AdminError, Services};
