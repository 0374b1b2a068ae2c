//! The NEO admin node (operations.md §4): it follows the primary master's
//! node table, partition table and cluster state, and serves `neoctl`,
//! answering what it knows and relaying the rest to the master.
//!
//! [`Admin`] is the node as a state machine: it is fed [`Input`]s with the
//! time and returns [`Output`]s, with no I/O of its own. [`run`] is the
//! tokio shell that runs it on real connections.

mod app;
mod shell;
pub mod summary;

pub use app::{
    Admin, AdminConfig, ConfigError, ConnId, Input, Output, Token, MONITOR_TIMEOUT, NOT_CONNECTED,
    RETRY_INTERVAL,
};
pub use shell::{run, AdminError};
