//! The NEO master node.
//!
//! [`Master`] is the primary master as a state machine: it is fed
//! [`Input`]s with the time and returns [`Output`]s, with no I/O of its own.
//! [`run`] is the tokio shell that runs it on real connections.

mod app;
mod pack;
mod shell;
mod transactions;

pub use app::{ConnId, Input, Master, MasterConfig, Output};
pub use shell::{run, RunError};
