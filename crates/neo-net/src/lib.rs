//! NEO connections over tokio, and the one runtime every node role runs on.
//!
//! This crate turns byte streams into NEO connections: TCP with NEO/py's
//! socket options, TLS when the node has credentials ([`Tls`]), the
//! protocol-5 handshake, `[msg_id, code, args]` framing
//! (through `neo-proto`), msg_id allocation, and matching of answers to the
//! requests waiting for them. [`node`] is the I/O model of a node's state
//! machine, without I/O (inputs, outputs, tokens, timers); [`shell`] runs
//! any such machine on real connections; [`metrics`] serves a node's
//! metrics and times its requests. It knows nothing of node roles: what a
//! packet means is the business of the node logic.

mod connection;
mod error;
pub mod http;
pub mod master_list;
pub mod metrics;
pub mod node;
pub mod shell;
mod tcp;
#[cfg(feature = "test-pki")]
pub mod test_pki;
mod tls;
mod transport;

pub use connection::{
    is_answer_part, Announce, AskError, Connection, ConnectionConfig, Event, EventKind, Inbox,
    Outgoing, Side,
};
pub use error::NetError;
pub use node::{ConnId, Input, Node, Outbox, Output, Requests, Token};
pub use shell::{ShellConfig, ShellError};
pub use tcp::{connect, connect_alone, resolve, Accepted, Listener};
pub use tls::{Tls, TlsError};
pub use transport::Transport;
