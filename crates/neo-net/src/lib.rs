//! NEO connections over tokio.
//!
//! This crate turns byte streams into NEO connections: TCP with NEO/py's
//! socket options, the protocol-5 handshake, `[msg_id, code, args]` framing
//! (through `neo-proto`), msg_id allocation, and matching of answers to the
//! requests waiting for them. It knows nothing of node roles: what a packet
//! means is the business of the node logic that receives [`Event`]s.

mod connection;
mod error;
mod registry;
mod tcp;
mod transport;

pub use connection::{
    AskError, Connection, ConnectionConfig, ConnectionId, Event, EventKind, Inbox, Side,
};
pub use error::NetError;
pub use registry::{accept_loop, Registry};
pub use tcp::{connect, connect_alone, resolve, Accepted, Listener};
pub use transport::Transport;
