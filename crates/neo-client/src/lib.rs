//! NEO client library: an async core ([`Client`]) with a blocking facade
//! ([`BlockingClient`]).
//!
//! The client finds the primary master among the configured ones, follows
//! its notifications (node table, partition table, invalidations), reads
//! objects straight from a readable cell of their partition, and commits
//! with NEO's two-phase commit: stores pipelined to every cell, vote on the
//! storages, finish through the master (architecture.md §6, §7).
//!
//! Layout:
//! - `master`: finding the primary, the session task reading the master
//!   connection in order, requests answered in that order;
//! - `storage`: storage connections on demand, routing of pipelined
//!   answers by token to their transaction, choice of the cell to read
//!   from;
//! - `txn`: a transaction's two-phase commit as a state machine without
//!   I/O (`txn::machine`), and [`Transaction`], its shell (store,
//!   readCurrent, vote, finish, abort);
//! - `client`: [`Client`] (load, new_oid, sync, read-side requests);
//! - `blocking`: [`BlockingClient`], [`BlockingTransaction`];
//! - `data`: compression and checksums.

mod blocking;
mod client;
mod config;
pub mod data;
mod error;
mod master;
mod storage;
mod txn;
mod util;

pub use blocking::{BlockingClient, BlockingTransaction};
pub use client::{Client, Loaded, Record, TransactionInfo};
pub use config::{ClientConfig, Invalidation, InvalidationListener};
pub use error::{ClientError, Conflict};
pub use neo_net::{Tls, TlsError};
pub use neo_proto::packets::{HistoryEntry, PackRequest, UndoSerial};
pub use txn::{Transaction, TxnMeta};
