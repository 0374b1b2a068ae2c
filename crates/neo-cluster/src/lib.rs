//! The cluster model every NEO node shares: the partition table, the node
//! table, TIDs as timestamps and how to find the primary master.
//!
//! Pure logic: no I/O, no clock (time is passed in), so the master, storage,
//! admin and client state machines built on it can be tested
//! deterministically.

pub mod masters;
pub mod nodes;
pub mod pt;
pub mod tid;

pub use masters::{PrimaryFinder, RETRY_INTERVAL};
pub use nodes::{Node, NodeTable};
pub use pt::{Cell, Member, PartitionTable, PtError, Tweaked};
pub use tid::{
    add_tid, civil_from_days, datetime_of_tid, days_from_civil, tid_fields, tid_from_unix,
    DateTime, TidFields, TidGenerator, UnixTime,
};
