//! The NEO master node.
//!
//! [`Master`] is the primary master as a state machine ([`neo_net::Node`]):
//! it is fed inputs with the time and gives back what to send, with no I/O
//! of its own. [`run`] runs it on `neo-net`'s node shell.

mod cluster_state;
mod commit;
mod elasticity;
mod identification;
mod master;
mod pack;
mod recovery;
mod replication;
mod shell;
mod transactions;
mod verification;

pub use master::{Master, MasterConfig};
pub use shell::{run, RunError};
