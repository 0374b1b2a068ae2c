//! The storage node and its backends.
//!
//! [`node::Storage`] is the node as a state machine over a
//! [`backend::Backend`]; [`run`] is its tokio shell.

pub mod backend;
pub mod node;
mod shell;

pub use shell::{run, RunError};
