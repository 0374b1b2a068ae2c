//! Why the database failed, by what the node does about it: an open error
//! stops the program before the node starts, a request error is answered
//! to the peer that sent the request and the node goes on, a fatal error
//! stops the node.

use neo_proto::{Oid, Partition, Tid};

use super::Adapter;

/// The database could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process already uses this database (§12.1 "lock").
    #[error("database is locked: {database} is used by another process")]
    Locked {
        /// The database, as named by `-d`.
        database: String,
    },
    /// A system call failed while opening or locking the database.
    #[error("{context} ({database}): {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The database, as named by `-d`.
        database: String,
        /// The system error.
        source: std::io::Error,
    },
    /// The database was written by a newer NEO; it can not be downgraded.
    #[error(
        "database {database} has schema version {found}, newer than the supported version \
         {supported}: it can not be downgraded"
    )]
    NewerSchema {
        /// The database, as named by `-d`.
        database: String,
        /// `config.version` found.
        found: u32,
        /// The version this code writes.
        supported: u32,
    },
    /// The database was written by an older NEO; migrations are not
    /// implemented yet.
    #[error(
        "database {database} has schema version {found}, older than {supported}: migration is \
         not supported yet (upgrade it with NEO/py first)"
    )]
    OlderSchema {
        /// The database, as named by `-d`.
        database: String,
        /// `config.version` found (0 when absent).
        found: u32,
        /// The version this code writes.
        supported: u32,
    },
    /// The database string does not name a database of this engine.
    #[error("invalid database {database:?}: {reason}")]
    BadDatabase {
        /// The database, as named by `-d`.
        database: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `-e/--engine` names an engine the adapter does not have (NEO/py's
    /// message).
    #[error("Unsupported engine: '{engine}'")]
    UnsupportedEngine {
        /// The engine asked for.
        engine: String,
    },
    /// The database or its server is not fit for NEO as it is.
    #[error("database {database} can not be used: {reason}")]
    Unsuitable {
        /// The database, as named by `-d`.
        database: String,
        /// What is wrong, and what to do about it.
        reason: String,
    },
    /// An adapter that is not an engine (the Importer wraps one).
    #[error(
        "the {} adapter is not an engine: it is opened with importer::open_database",
        adapter.name()
    )]
    NotAnEngine {
        /// The engine asked for.
        adapter: Adapter,
    },
    /// The Importer's configuration or sources can not be used.
    #[error(transparent)]
    Import(#[from] crate::importer::ImportError),
    /// The database failed while it was being opened.
    #[error("opening {database}: {source}")]
    Failed {
        /// The database, as named by `-d`.
        database: String,
        /// What failed.
        source: FatalError,
    },
}

/// A request can not be served; the node answers an error to the peer
/// that sent it and goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A read on a partition this node can not serve; the node answers
    /// `Error(NON_READABLE_CELL)` and the client tries another replica.
    #[error("partition {partition} is not readable on this node")]
    NonReadableCell {
        /// The partition that was read.
        partition: Partition,
    },
    /// An undo points at a record that pack removed (`UNDO_PACK_ERROR`).
    #[error("undo of {oid} refers to serial {data_tid}, which was removed by pack")]
    UndoPack {
        /// The undone object.
        oid: Oid,
        /// The back-pointer sent by the client.
        data_tid: Tid,
    },
    /// A value does not fit what the database stores (SQL databases store
    /// signed 64-bit integers: NEO's `MAX_TID` is `2^63 - 1`).
    #[error("{what} {value:#018x} is out of range (greater than 2^63 - 1)")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A partition-table change names a partition beyond what a storage
    /// holds.
    #[error("partition {partition} is beyond the partitions a storage holds")]
    PartitionOutOfRange {
        /// The partition named.
        partition: Partition,
    },
    /// What this node can not do yet while it imports (§12.7: undo).
    #[error("{what} is not possible before the import is finished")]
    Importing {
        /// What was asked.
        what: &'static str,
    },
    /// The partition table is empty, so partitions can not be computed.
    #[error("no partition table: the number of partitions is unknown ({context})")]
    NoPartitionTable {
        /// What needed it.
        context: &'static str,
    },
}

/// The database can not be trusted or used any more: the node stops.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// The database holds something this code can not interpret.
    #[error("corrupted database: {0}")]
    Corrupted(String),
    /// The database engine failed.
    #[error("{engine} error while {context}: {source}")]
    Engine {
        /// Which engine (`SQLite`, `MySQL`).
        engine: &'static str,
        /// What was being done.
        context: &'static str,
        /// The engine's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connection to the database server was lost while changes were
    /// waiting for their commit: they are gone with it, so the node stops
    /// rather than go on without them on a new connection.
    #[error(
        "lost the connection to the database server while {context}, with uncommitted \
         changes: they are lost, so the node stops instead of reconnecting ({source})"
    )]
    ConnectionLost {
        /// What was being done.
        context: &'static str,
        /// The engine's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Connecting again to the database server after it went away failed.
    #[error("reconnecting to the database server: {0}")]
    Reconnect(String),
    /// A commit is larger than the Native engine writes at once.
    #[error(
        "a commit of {size} bytes is over the {limit}-byte limit of the Native engine's batches"
    )]
    BatchTooLarge {
        /// The size of the commit's records.
        size: u64,
        /// The largest batch.
        limit: u64,
    },
    /// The import can not go on: a source can not be read.
    #[error("import: {0}")]
    Import(String),
    /// `-e/--engine` names an engine the database server does not have.
    #[error(
        "the database server has no {engine} engine: install it (for MariaDB, its \
         RocksDB plugin) or create the database with another engine"
    )]
    EngineUnavailable {
        /// The engine asked for.
        engine: &'static str,
    },
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Answered to the peer; the node goes on.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The node stops.
    #[error(transparent)]
    Fatal(#[from] FatalError),
}

impl Error {
    /// Corruption found while reading `what`.
    pub fn corrupted(what: impl Into<String>) -> Error {
        Error::Fatal(FatalError::Corrupted(what.into()))
    }
}
