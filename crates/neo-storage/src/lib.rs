//! The storage node, its database and the engines under it.
//!
//! [`node::Storage`] is the node as a state machine over a
//! [`db::Database`], which holds the storage rules over a
//! [`backend::Backend`] (an engine: storage only); [`run`] is the node's
//! tokio shell.

pub mod backend;
pub mod db;
pub mod importer;
mod metrics;
pub mod node;
mod shell;

pub use metrics::StorageMetrics;
pub use shell::{run, RunError};
