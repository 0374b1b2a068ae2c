//! What can go wrong, as values: every variant says what was asked and,
//! when a node is to blame, which one.

use std::time::Duration;

use bytes::Bytes;
use neo_net::{AskError, NetError};
use neo_proto::{packets, Oid, Tid};

/// A write conflict (or a failed readCurrent check) found by a storage.
///
/// The Python layer resolves it with ZODB's `tryToResolveConflict(oid,
/// conflict_serial, serial, data)` and stores the result again with
/// `serial = conflict_serial`; a `checked` conflict is a `ReadConflictError`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conflict {
    /// The object.
    pub oid: Oid,
    /// The revision our store was based on.
    pub serial: Tid,
    /// The revision committed meanwhile by another transaction.
    pub conflict_serial: Tid,
    /// The data we tried to store (uncompressed); `None` for a deletion, a
    /// readCurrent check, or when a relock gave nothing back.
    pub data: Option<Bytes>,
    /// The oid was only checked (readCurrent), not stored.
    pub checked: bool,
}

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No primary master accepted us in time (wrong address, wrong cluster
    /// name, cluster not running...): the last failure says which.
    #[error("not connected to the primary master after {waited:?}: {last_error}")]
    NotConnected {
        /// How long we waited.
        waited: Duration,
        /// Why the last attempt failed.
        last_error: String,
    },
    /// The connection to the primary master closed during the operation.
    #[error("connection to the primary master lost{context}")]
    MasterLost {
        /// What was going on, as `": ..."` or empty.
        context: String,
    },
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// A write was asked of a read-only client, or refused by the cluster.
    #[error("read-only access{0}")]
    ReadOnly(String),
    /// The object never existed (ZODB's `POSKeyError`).
    #[error("oid {oid} does not exist")]
    OidDoesNotExist {
        /// The object.
        oid: Oid,
    },
    /// No revision of the object matches (`POSKeyError`; `None` for
    /// `loadBefore`).
    #[error("oid {oid}: no revision {what}")]
    OidNotFound {
        /// The object.
        oid: Oid,
        /// Which revision was asked, as text.
        what: String,
    },
    /// The revision found is a deletion or an undone creation.
    #[error("oid {oid}: revision {serial} has no data (deleted or creation undone)")]
    NoData {
        /// The object.
        oid: Oid,
        /// The revision without data.
        serial: Tid,
    },
    /// Unknown transaction.
    #[error("transaction {tid} not found")]
    TidNotFound {
        /// The transaction.
        tid: Tid,
    },
    /// The transaction to undo is not visible from our snapshot
    /// (ZODB's `UndoError`).
    #[error("transaction {tid} is not undoable")]
    NotUndoable {
        /// The transaction.
        tid: Tid,
    },
    /// Every readable cell sent data whose SHA-1 differs from its checksum.
    #[error("oid {oid} serial {serial}: checksum mismatch on every readable cell")]
    ChecksumMismatch {
        /// The object.
        oid: Oid,
        /// The revision.
        serial: Tid,
    },
    /// Data that cannot be decompressed or is too large.
    #[error("oid {oid}: bad data: {reason}")]
    BadData {
        /// The object.
        oid: Oid,
        /// What is wrong with it.
        reason: String,
    },
    /// No storage could serve or take the request.
    #[error("no storage available: {0}")]
    NoStorage(String),
    /// Stores met conflicts; resolve them and store again.
    #[error("{} conflict(s), first on oid {}", .0.len(), .0.first().map(|c| c.oid.to_string()).unwrap_or_default())]
    Conflicts(Vec<Conflict>),
    /// The transaction cannot commit (failed storages, lost master, a
    /// storage refusing a store...); it must be aborted.
    #[error("transaction {ttid} failed: {reason}")]
    TransactionFailed {
        /// The transaction.
        ttid: Tid,
        /// Why.
        reason: String,
    },
    /// The API was used out of order (store after vote, ...).
    #[error("invalid use: {0}")]
    InvalidUse(String),
    /// A node answered with an error we do not turn into another variant.
    #[error("{peer} refused {request}: {error}")]
    Refused {
        /// The node.
        peer: String,
        /// The request refused.
        request: &'static str,
        /// Its error packet.
        error: packets::Error,
    },
    /// A node sent something that breaks the protocol.
    #[error("{peer}: protocol error: {reason}")]
    Protocol {
        /// The node.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// A connection failed.
    #[error(transparent)]
    Net(#[from] NetError),
}

impl ClientError {
    pub(crate) fn master_lost(context: impl std::fmt::Display) -> ClientError {
        ClientError::MasterLost {
            context: format!(": {context}"),
        }
    }

    /// An [`AskError`] to a request named `request`.
    pub(crate) fn from_ask(request: &'static str, error: AskError) -> ClientError {
        match error {
            AskError::Net(error) => ClientError::Net(error),
            AskError::Refused { peer, error } => ClientError::Refused {
                peer,
                request,
                error,
            },
        }
    }
}
