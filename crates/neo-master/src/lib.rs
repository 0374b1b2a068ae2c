//! The NEO master node.
//!
//! [`MasterNode`] is a master as a state machine ([`neo_net::Node`]): it
//! is fed inputs with the time and gives back what to send, with no I/O of
//! its own. It plays the primary role ([`Master`], which elects with the
//! other masters while RECOVERING) or the secondary role ([`Secondary`]).
//! [`run`] runs it on `neo-net`'s node shell.

mod cluster_state;
mod commit;
mod elasticity;
mod election;
mod identification;
mod master;
mod metrics;
mod pack;
mod recovery;
mod replication;
mod roles;
mod secondary;
mod shell;
mod transactions;
mod verification;

pub use election::Elected;
pub use master::{Master, MasterConfig};
pub use metrics::MasterMetrics;
pub use roles::MasterNode;
pub use secondary::Secondary;
pub use shell::{run, RunError};
