//! The 111 packet types of protocol 5 with their argument layouts
//! (protocol.md §6, §7), and the records they share.
//!
//! Each packet is a struct whose fields are its arguments in wire order; the
//! [`Packet`] enum holds any of them. Names are NEO/py's.

use bytes::Bytes;

use crate::field::{record_header, Field, FieldError, Map};
use crate::reader::{Reader, Token};
use crate::types::{
    Address, CellState, Checksum, ClusterState, ErrorCode, NodeId, NodeState, NodeType, Oid,
    Partition, Ptid, Tid,
};
use crate::value::{self, Value, ValueError};

/// Counts identifiers, as a constant expression.
macro_rules! count {
    () => { 0usize };
    ($head:ident $($tail:ident)*) => { 1usize + count!($($tail)*) };
}

/// How a record's field is decoded: as its type says, or by the function
/// named after `=>` (for what NEO/py sends in more than one form).
macro_rules! decoder {
    ($ty:ty) => {
        <$ty as Field>::decode
    };
    ($ty:ty, $decode:path) => {
        $decode
    };
}

/// A struct encoded as a fixed-size msgpack array of its fields.
macro_rules! record {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty $(=> $decode:path)?),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// Argument names, in wire order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Decodes the fields, which come next in wire order; on error,
            /// says which field was wrong.
            #[allow(unused_variables)]
            fn decode_fields(
                reader: &mut Reader,
            ) -> Result<Self, (&'static str, FieldError)> {
                $(
                    let $field = decoder!($ty $(, $decode)?)(reader)
                        .map_err(|error| (stringify!($field), error))?;
                )*
                Ok($name { $($field),* })
            }

            #[allow(unused_variables)]
            fn encode_items(&self, out: &mut Vec<u8>) {
                value::write_array_len(out, count!($($field)*));
                $(Field::encode(&self.$field, out);)*
            }
        }

        impl Field for $name {
            fn encode(&self, out: &mut Vec<u8>) {
                self.encode_items(out)
            }
            fn decode(reader: &mut Reader) -> Result<Self, FieldError> {
                record_header(reader, count!($($field)*))?;
                $name::decode_fields(reader).map_err(|(field, error)| {
                    let index = $name::FIELDS.iter().position(|f| *f == field).unwrap_or(0);
                    error.at(index)
                })
            }
        }

        #[cfg(test)]
        impl crate::arb::Arb for $name {
            fn arb() -> proptest::strategy::BoxedStrategy<Self> {
                use proptest::strategy::{Just, Strategy};
                (Just(()), $(<$ty as crate::arb::Arb>::arb()),*)
                    .prop_map(|((), $($field),*)| $name { $($field),* })
                    .boxed()
            }
        }
    };
}

/// How the receiver treats a packet code (protocol.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// Expects an answer (a dedicated answer packet or `Error`).
    Request,
    /// Answers a request; carries the request's msg_id.
    Answer,
    /// Expects no answer.
    Notification,
    /// The `Error` packet (code 0x8000): answers any request.
    Error,
}

/// Why a received packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// No packet has this code in protocol 5.
    #[error("unknown packet code {0:#06x}")]
    UnknownCode(u16),
    /// The argument array has the wrong length.
    #[error("{packet}: expected {expected} arguments, found {found}")]
    ArgumentCount {
        /// Packet name.
        packet: &'static str,
        /// Layout length.
        expected: usize,
        /// Received length.
        found: usize,
    },
    /// The arguments are not msgpack (or need more memory than the packet
    /// justifies).
    #[error("{packet}: {error}")]
    Value {
        /// Packet name.
        packet: &'static str,
        /// What was wrong.
        error: ValueError,
    },
    /// The arguments are not an array.
    #[error("{packet}: arguments must be an array, found {found}")]
    NotAnArray {
        /// Packet name.
        packet: &'static str,
        /// The msgpack type received.
        found: &'static str,
    },
    /// One argument does not fit the layout.
    #[error("{packet}: argument {argument}: {error}")]
    Argument {
        /// Packet name.
        packet: &'static str,
        /// Argument name.
        argument: &'static str,
        /// What was wrong.
        error: FieldError,
    },
}

/// Implemented by every request: which packet answers it.
pub trait Request: Into<Packet> {
    /// The answer packet (`Error` for the requests answered by `Error(ACK)`).
    type Answer: TryFrom<Packet, Error = Packet>;
    /// Code of the answer packet.
    const ANSWER_CODE: u16;
}

macro_rules! packets {
    ($(
        $(#[$meta:meta])*
        $code:literal $name:ident : $kind:ident $(($answer:ident))?
        { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }
    )*) => {
        $(
            record!($(#[$meta])* $name { $($(#[$fmeta])* $field : $ty),* });

            impl $name {
                /// Packet code on the wire.
                pub const CODE: u16 = $code;
            }

            impl From<$name> for Packet {
                fn from(packet: $name) -> Packet {
                    Packet::$name(packet)
                }
            }

            impl TryFrom<Packet> for $name {
                type Error = Packet;
                /// Takes this packet type out of a [`Packet`], or gives it back.
                fn try_from(packet: Packet) -> Result<$name, Packet> {
                    match packet {
                        Packet::$name(inner) => Ok(inner),
                        other => Err(other),
                    }
                }
            }

            $(impl Request for $name {
                type Answer = $answer;
                const ANSWER_CODE: u16 = $answer::CODE;
            })?
        )*

        /// Any packet of protocol 5.
        #[derive(Clone, Debug, PartialEq)]
        #[allow(missing_docs)]
        pub enum Packet {
            $($name($name),)*
        }

        /// Every packet code, in declaration order.
        pub const ALL_CODES: &[u16] = &[$($code),*];

        impl Packet {
            /// Code on the wire.
            pub fn code(&self) -> u16 {
                match self {
                    $(Packet::$name(_) => $code,)*
                }
            }

            /// NEO/py's name of the packet type.
            pub fn name(&self) -> &'static str {
                match self {
                    $(Packet::$name(_) => stringify!($name),)*
                }
            }

            /// Appends the argument array.
            pub fn encode_args(&self, out: &mut Vec<u8>) {
                match self {
                    $(Packet::$name(inner) => inner.encode_items(out),)*
                }
            }

            /// Builds the packet of type `code` from its argument array,
            /// which comes next in `reader`.
            pub fn decode(code: u16, reader: &mut Reader) -> Result<Packet, PacketError> {
                let name = packet_name(code).ok_or(PacketError::UnknownCode(code))?;
                let found = match reader.token() {
                    Ok(Token::Array(found)) => found,
                    Ok(other) => {
                        return Err(PacketError::NotAnArray { packet: name, found: other.type_name() })
                    }
                    Err(error) => return Err(PacketError::Value { packet: name, error }),
                };
                let argument = |(argument, error)| PacketError::Argument {
                    packet: name,
                    argument,
                    error,
                };
                match code {
                    $($code => {
                        let expected = count!($($field)*);
                        if found != expected {
                            return Err(PacketError::ArgumentCount { packet: name, expected, found });
                        }
                        $name::decode_fields(reader).map(Packet::$name).map_err(argument)
                    })*
                    _ => Err(PacketError::UnknownCode(code)),
                }
            }
        }

        /// NEO/py's name of the packet with this code.
        pub fn packet_name(code: u16) -> Option<&'static str> {
            match code {
                $($code => Some(stringify!($name)),)*
                _ => None,
            }
        }

        /// Whether `code` is a request, an answer, a notification or `Error`.
        pub fn packet_kind(code: u16) -> Option<PacketKind> {
            match code {
                $($code => Some(packets!(@kind $kind)),)*
                _ => None,
            }
        }

        /// For a request code, the code of the packet that answers it.
        pub fn answer_code(request_code: u16) -> Option<u16> {
            match request_code {
                $($($code => Some($answer::CODE),)?)*
                _ => None,
            }
        }

        #[cfg(test)]
        pub(crate) fn arb_packet(code: u16) -> Option<proptest::strategy::BoxedStrategy<Packet>> {
            use proptest::strategy::Strategy;
            match code {
                $($code => Some(<$name as crate::arb::Arb>::arb().prop_map(Packet::$name).boxed()),)*
                _ => None,
            }
        }
    };
    (@kind request) => { PacketKind::Request };
    (@kind answer) => { PacketKind::Answer };
    (@kind notification) => { PacketKind::Notification };
    (@kind error) => { PacketKind::Error };
}

impl Packet {
    /// Whether this packet is a request, an answer, a notification or `Error`.
    pub fn kind(&self) -> PacketKind {
        // Every code of the enum is in the table.
        packet_kind(self.code()).unwrap_or(PacketKind::Notification)
    }
}

record!(
    /// One node of the node table (`NodeInfo`).
    NodeInfo {
        node_type: NodeType,
        /// Nil for clients and for storages in `--new-nid` mode.
        address: Option<Address>,
        nid: Option<NodeId>,
        state: NodeState,
        /// When the master accepted the node; nil for the primary itself.
        id_timestamp: Option<f64>,
    }
);

record!(
    /// One cell of a partition table row.
    CellInfo { nid: NodeId, state: CellState }
);

/// The cells of one partition.
pub type Row = Vec<CellInfo>;

record!(
    /// A change of one cell; `Discarded` removes it.
    CellChange { partition: Partition, nid: NodeId, state: CellState }
);

record!(
    /// A pack asked by a client inside a commit.
    PackRequest {
        /// Nil for a full pack, else the only oids to pack.
        oids: Option<Vec<Oid>>,
        pack_tid: Tid,
    }
);

record!(
    /// A pack order as kept by the master and the storages.
    PackOrder {
        /// TID of the transaction that asked for the pack.
        id: Tid,
        /// Nil until signed; then approved or rejected.
        approved: Option<bool>,
        partial: bool,
        oids: Option<Vec<Oid>> => pack_order_oids,
        pack_tid: Tid,
    }
);

/// `PackOrder.oids`: a list of oids, as at `tpc_finish`, or (how NEO/py's
/// storages send an order read back from their `pack` table, which NEO/py's
/// own storages cannot use) one bin of concatenated 8-byte oids. Both are
/// accepted; ours always send the list.
fn pack_order_oids(reader: &mut Reader) -> Result<Option<Vec<Oid>>, FieldError> {
    if reader.take_nil() {
        return Ok(None);
    }
    match reader.token()? {
        Token::Array(len) => {
            let mut oids = reader.vec(len)?;
            for index in 0..len {
                oids.push(Oid::decode(reader).map_err(|e| e.at(index))?);
            }
            Ok(Some(oids))
        }
        Token::Bin(blob) => {
            if blob.len() % 8 != 0 {
                return Err(FieldError::Invalid(format!(
                    "{} bytes of concatenated oids",
                    blob.len()
                )));
            }
            reader.charge(blob.len())?;
            let oids = blob
                .chunks_exact(8)
                .map(|chunk| {
                    let mut bytes = [0; 8];
                    bytes.copy_from_slice(chunk);
                    Oid::from_bytes(bytes)
                })
                .collect();
            Ok(Some(oids))
        }
        other => Err(FieldError::Type {
            expected: "array or bin",
            found: other.type_name(),
        }),
    }
}

record!(
    /// A pack order without its id, as replicated with its transaction.
    PackInfo {
        approved: Option<bool>,
        partial: bool,
        oids: Option<Vec<Oid>>,
        pack_tid: Tid,
    }
);

record!(
    /// Object data as stored: compression flag, SHA-1 and bytes.
    StoredData { compression: u8, checksum: Checksum, data: Bytes }
);

record!(
    /// A conflict found while relocking an object.
    RelockConflict {
        serial: Tid,
        conflict_tid: Tid,
        /// Nil for a readCurrent check or an undo.
        data: Option<StoredData>,
    }
);

record!(
    /// One revision in an object's history.
    HistoryEntry { serial: Tid, size: u64 }
);

record!(
    /// What undoing one object needs.
    UndoSerial {
        /// Serial visible to the undoing transaction.
        current_serial: Tid,
        /// Serial whose data is restored; nil undoes the creation.
        undo_serial: Option<Tid>,
        /// Whether the current data is the one being undone.
        is_current: bool,
    }
);

record!(
    /// Where a replica check compares a partition against.
    CheckSource {
        /// Empty for the local cluster.
        upstream_name: String,
        /// Nil when there is no reference node.
        address: Option<Address>,
    }
);

packets! {
    /// Error or `ACK` answer to any request.
    0x8000 Error: error { code: ErrorCode, message: String }

    /// First packet of a connection, from its initiator.
    0x0001 RequestIdentification: request(AcceptIdentification) {
        node_type: NodeType,
        nid: Option<NodeId>,
        address: Option<Address>,
        cluster: String,
        id_timestamp: Option<f64>,
        extra: Map<String, Value>,
    }
    /// Identification accepted: the acceptor's type and id, the id it gives.
    0x8001 AcceptIdentification: answer {
        node_type: NodeType,
        nid: Option<NodeId>,
        your_nid: Option<NodeId>,
    }
    /// Barrier (clients) and liveness check.
    0x0002 Ping: request(Pong) {}
    /// Answer to `Ping`.
    0x8002 Pong: answer {}
    /// The sender stops using the connection for its own requests.
    0x0003 CloseClient: notification {}
    /// Asks the admin for the primary master's id.
    0x0004 AskPrimary: request(AnswerPrimary) {}
    /// The primary master's id (nil when the admin knows none).
    0x8004 AnswerPrimary: answer { primary: Option<NodeId> }
    /// A secondary master's redirection to the primary, then close.
    0x0005 NotPrimaryMaster: notification {
        /// Index of the primary in `known_masters`, if known.
        primary: Option<u32>,
        known_masters: Vec<Address>,
    }
    /// Node table changes.
    0x0006 NotifyNodeInformation: notification { timestamp: f64, nodes: Vec<NodeInfo> }
    /// Recovery: ptid, backup TID and pending truncation of a storage.
    0x0007 AskRecovery: request(AnswerRecovery) {}
    /// Answer to `AskRecovery`.
    0x8007 AnswerRecovery: answer {
        ptid: Option<Ptid>,
        backup_tid: Option<Tid>,
        truncate_tid: Option<Tid>,
    }
    /// Last TID and OID known to a storage.
    0x0008 AskLastIDs: request(AnswerLastIDs) {}
    /// Answer to `AskLastIDs`; `first_tid` is MAX_TID when empty.
    0x8008 AnswerLastIDs: answer { last_tid: Option<Tid>, last_oid: Option<Oid>, first_tid: Tid }
    /// Recovery: the partition table a storage holds.
    0x0009 AskPartitionTable: request(AnswerPartitionTable) {}
    /// Answer to `AskPartitionTable`.
    0x8009 AnswerPartitionTable: answer { ptid: Option<Ptid>, num_replicas: u32, rows: Vec<Row> }
    /// The whole partition table.
    0x000a SendPartitionTable: notification { ptid: Option<Ptid>, num_replicas: u32, rows: Vec<Row> }
    /// Incremental partition table change (ptid + 1).
    0x000b NotifyPartitionChanges: notification {
        ptid: Ptid,
        num_replicas: u32,
        changes: Vec<CellChange>,
    }
    /// The storage may serve.
    0x000c StartOperation: notification { backup: bool }
    /// The cluster is no longer operational.
    0x000d StopOperation: notification {}
    /// Before replicating: last TID and transactions in progress.
    0x000e AskUnfinishedTransactions: request(AnswerUnfinishedTransactions) {
        partitions: Vec<Partition>,
    }
    /// Answer to `AskUnfinishedTransactions`.
    0x800e AnswerUnfinishedTransactions: answer { max_tid: Tid, ttids: Vec<Tid> }
    /// Verification: transactions in a storage's temporary area.
    0x000f AskLockedTransactions: request(AnswerLockedTransactions) {}
    /// ttid → final TID if locked, nil if only voted.
    0x800f AnswerLockedTransactions: answer { ttids: Map<Tid, Option<Tid>> }
    /// Final TID of a TTID.
    0x0010 AskFinalTID: request(AnswerFinalTID) { ttid: Tid }
    /// Answer to `AskFinalTID`.
    0x8010 AnswerFinalTID: answer { tid: Option<Tid> }
    /// Verification: lock and unlock a transaction locked somewhere.
    0x0011 ValidateTransaction: notification { ttid: Tid, tid: Tid }
    /// tpc_begin: asks a TTID (or imposes a TID).
    0x0012 AskBeginTransaction: request(AnswerBeginTransaction) { tid: Option<Tid> }
    /// Answer to `AskBeginTransaction`.
    0x8012 AnswerBeginTransaction: answer { ttid: Tid }
    /// Some storages failed during the vote.
    0x0013 FailedVote: request(Error) { ttid: Tid, failed_nids: Vec<NodeId> }
    /// tpc_finish.
    0x0014 AskFinishTransaction: request(AnswerTransactionFinished) {
        ttid: Tid,
        oids: Vec<Oid>,
        /// Partitions of objects whose creation was undone.
        deleted: Vec<Partition>,
        /// Partitions of readCurrent-only oids.
        checked: Vec<Partition>,
        pack: Option<PackRequest>,
    }
    /// The commit is done, with this TID.
    0x8014 AnswerTransactionFinished: answer { ttid: Tid, tid: Tid }
    /// 2PC: lock with the final TID.
    0x0015 AskLockInformation: request(AnswerInformationLocked) {
        ttid: Tid,
        tid: Tid,
        pack_approved: bool,
    }
    /// Answer to `AskLockInformation`.
    0x8015 AnswerInformationLocked: answer { ttid: Tid }
    /// Cache invalidation after a commit by another client.
    0x0016 InvalidateObjects: notification { tid: Tid, oids: Vec<Oid> }
    /// Partitions touched by a commit (to backup masters).
    0x0017 InvalidatePartitions: notification { tid: Tid, partitions: Vec<Partition> }
    /// 2PC: make the commit visible.
    0x0018 NotifyUnlockInformation: notification { ttid: Tid }
    /// Allocates OIDs.
    0x0019 AskNewOIDs: request(AnswerNewOIDs) { count: u32 }
    /// Answer to `AskNewOIDs`.
    0x8019 AnswerNewOIDs: answer { oids: Vec<Oid> }
    /// Deadlock avoidance: the client owning `ttid` should relock `oid`.
    0x001a NotifyDeadlock: notification { ttid: Tid, oid: Oid }
    /// Deadlock avoidance: relock an object.
    0x001b AskRelockObject: request(AnswerRelockObject) { ttid: Tid, oid: Oid }
    /// Answer to `AskRelockObject`: nil when relocked.
    0x801b AnswerRelockObject: answer { conflict: Option<RelockConflict> }
    /// Stores one object revision.
    0x001c AskStoreObject: request(AnswerStoreObject) {
        oid: Oid,
        serial: Tid,
        compression: u8,
        checksum: Checksum,
        data: Bytes,
        data_serial: Option<Tid>,
        ttid: Tid,
    }
    /// Nil: stored and locked; ZERO_TID: stored, not locked here; else a conflict.
    0x801c AnswerStoreObject: answer { conflict: Option<Tid> }
    /// tpc_abort.
    0x001d AbortTransaction: notification { ttid: Tid, nids: Vec<NodeId> }
    /// Vote on the storages of the TTID's partition, with the metadata.
    0x001e AskStoreTransaction: request(AnswerStoreTransaction) {
        ttid: Tid,
        user: Bytes,
        description: Bytes,
        extension: Bytes,
        oids: Vec<Oid>,
        pack: Option<PackRequest>,
    }
    /// Answer to `AskStoreTransaction`.
    0x801e AnswerStoreTransaction: answer {}
    /// Vote on the other storages written to.
    0x001f AskVoteTransaction: request(AnswerVoteTransaction) { ttid: Tid }
    /// Answer to `AskVoteTransaction`.
    0x801f AnswerVoteTransaction: answer {}
    /// load / loadBefore / loadSerial.
    0x0020 AskObject: request(AnswerObject) { oid: Oid, at: Option<Tid>, before: Option<Tid> }
    /// One object revision.
    0x8020 AnswerObject: answer {
        oid: Oid,
        serial: Tid,
        next_serial: Option<Tid>,
        compression: Option<u8>,
        checksum: Checksum,
        data: Bytes,
        data_serial: Option<Tid>,
    }
    /// undoLog: TIDs by position, newest first.
    0x0021 AskTIDs: request(AnswerTIDs) { first: u64, last: u64, partition: u32 }
    /// Answer to `AskTIDs`.
    0x8021 AnswerTIDs: answer { tids: Vec<Tid> }
    /// Transaction metadata.
    0x0022 AskTransactionInformation: request(AnswerTransactionInformation) { tid: Tid }
    /// Answer to `AskTransactionInformation`.
    0x8022 AnswerTransactionInformation: answer {
        tid: Tid,
        user: Bytes,
        description: Bytes,
        extension: Bytes,
        packed: bool,
        oids: Vec<Oid>,
    }
    /// Object history by position, newest first.
    0x0023 AskObjectHistory: request(AnswerObjectHistory) { oid: Oid, first: u64, last: u64 }
    /// Answer to `AskObjectHistory`.
    0x8023 AnswerObjectHistory: answer { oid: Oid, history: Vec<HistoryEntry> }
    /// neoctl `print pt`.
    0x0024 AskPartitionList: request(AnswerPartitionList) {
        min_offset: u32,
        max_offset: u32,
        nid: Option<NodeId>,
    }
    /// Rows `min_offset .. max_offset` of the partition table (ptid nil
    /// before the cluster's first start).
    0x8024 AnswerPartitionList: answer { ptid: Option<Ptid>, num_replicas: u32, rows: Vec<Row> }
    /// neoctl `print node`.
    0x0025 AskNodeList: request(AnswerNodeList) { node_type: Option<NodeType> }
    /// Answer to `AskNodeList`.
    0x8025 AnswerNodeList: answer { nodes: Vec<NodeInfo> }
    /// Stop or remove a node.
    0x0026 SetNodeState: request(Error) { nid: NodeId, state: NodeState }
    /// PENDING storages become RUNNING.
    0x0027 AddPendingNodes: request(Error) { nids: Vec<NodeId> }
    /// Rebalance the partition table.
    0x0028 TweakPartitionTable: request(AnswerTweakPartitionTable) {
        dry_run: bool,
        drop_nids: Vec<NodeId>,
    }
    /// The resulting (or simulated) table.
    0x8028 AnswerTweakPartitionTable: answer { changed: bool, rows: Vec<Row> }
    /// Change the number of replicas.
    0x0029 SetNumReplicas: request(Error) { num_replicas: u32 }
    /// start / stop / backup.
    0x002a SetClusterState: request(Error) { state: ClusterState }
    /// Prune orphan data on these storages.
    0x002b Repair: request(Error) { nids: Vec<NodeId>, dry_run: bool }
    /// Prune orphan data.
    0x002c NotifyRepair: notification { dry_run: bool }
    /// Cluster state change.
    0x002d NotifyClusterInformation: notification { state: ClusterState }
    /// Asks the cluster state.
    0x002e AskClusterState: request(AnswerClusterState) {}
    /// Nil when not connected to the master.
    0x802e AnswerClusterState: answer { state: Option<ClusterState> }
    /// Undo: which serials to restore.
    0x002f AskObjectUndoSerial: request(AnswerObjectUndoSerial) {
        ttid: Tid,
        ltid: Tid,
        undone_tid: Tid,
        oids: Vec<Oid>,
    }
    /// Answer to `AskObjectUndoSerial`.
    0x802f AnswerObjectUndoSerial: answer { serials: Map<Oid, UndoSerial> }
    /// iterator: TIDs of one partition in a range.
    0x0030 AskTIDsFrom: request(AnswerTIDsFrom) {
        min_tid: Tid,
        max_tid: Tid,
        length: u32,
        partition: Partition,
    }
    /// Answer to `AskTIDsFrom`.
    0x8030 AnswerTIDsFrom: answer { tids: Vec<Tid> }
    /// Non-deleted OIDs of a partition.
    0x0031 AskOIDsFrom: request(AnswerOIDsFrom) {
        partition: Partition,
        length: u32,
        min_oid: Oid,
        tid: Tid,
    }
    /// Answer to `AskOIDsFrom`; nil `next_min_oid` = finished.
    0x8031 AnswerOIDsFrom: answer { next_min_oid: Option<Oid>, oids: Vec<Oid> }
    /// Wait until a pack order is completed.
    0x0032 WaitForPack: request(WaitedForPack) { pack_id: Tid }
    /// Answer to `WaitForPack`.
    0x8032 WaitedForPack: answer {}
    /// Pack orders with id ≥ `min_id`.
    0x0033 AskPackOrders: request(AnswerPackOrders) { min_id: Tid }
    /// Answer to `AskPackOrders`.
    0x8033 AnswerPackOrders: answer { orders: Vec<PackOrder> }
    /// Pack orders that became approved or rejected.
    0x0034 NotifyPackSigned: notification { approved: Vec<Tid>, rejected: Vec<Tid> }
    /// Every assigned partition is packed up to this order.
    0x0035 NotifyPackCompleted: notification { pack_id: Tid }
    /// Start a replica check.
    0x0036 CheckReplicas: request(Error) {
        /// Partition → reference node (nil = automatic).
        partitions: Map<Partition, Option<NodeId>>,
        min_tid: Tid,
        max_tid: Option<Tid>,
    }
    /// Check one partition against a source.
    0x0037 CheckPartition: notification {
        partition: Partition,
        source: CheckSource,
        min_tid: Tid,
        max_tid: Tid,
    }
    /// Replica check, transactions.
    0x0038 AskCheckTIDRange: request(AnswerCheckTIDRange) {
        partition: Partition,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
    }
    /// Count and digest of the TIDs found.
    0x8038 AnswerCheckTIDRange: answer { count: u32, digest: Checksum, max_tid: Tid }
    /// Replica check, objects.
    0x0039 AskCheckSerialRange: request(AnswerCheckSerialRange) {
        partition: Partition,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    }
    /// Count and digests of the records found.
    0x8039 AnswerCheckSerialRange: answer {
        count: u32,
        tid_digest: Checksum,
        max_tid: Tid,
        oid_digest: Checksum,
        max_oid: Oid,
    }
    /// Replica check result.
    0x003a NotifyPartitionCorrupted: notification { partition: Partition, nids: Vec<NodeId> }
    /// The storage is ready after `StartOperation`.
    0x003b NotifyReady: notification {}
    /// Last committed TID.
    0x003c AskLastTransaction: request(AnswerLastTransaction) {}
    /// Answer to `AskLastTransaction`.
    0x803c AnswerLastTransaction: answer { tid: Tid }
    /// readCurrent.
    0x003d AskCheckCurrentSerial: request(AnswerCheckCurrentSerial) {
        ttid: Tid,
        oid: Oid,
        serial: Tid,
    }
    /// Same semantics as `AnswerStoreObject`.
    0x803d AnswerCheckCurrentSerial: answer { conflict: Option<Tid> }
    /// A transaction blocking replication is finished.
    0x003e NotifyTransactionFinished: notification { ttid: Tid, max_tid: Tid }
    /// Backup: replicate partitions up to `tid`.
    0x003f Replicate: notification {
        tid: Tid,
        upstream_name: String,
        sources: Map<Partition, Option<Address>>,
    }
    /// Partition replicated up to `tid`.
    0x0040 NotifyReplicationDone: notification { partition: Partition, tid: Tid }
    /// Replication, transactions.
    0x0041 AskFetchTransactions: request(AnswerFetchTransactions) {
        partition: Partition,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
        known_tids: Vec<Tid>,
        ask_pack_info: bool,
    }
    /// End of a chunk of transactions.
    0x8041 AnswerFetchTransactions: answer {
        next_tid: Option<Tid>,
        delete_tids: Vec<Tid>,
        completed_pack: Option<Tid>,
    }
    /// Replication, objects.
    0x0042 AskFetchObjects: request(AnswerFetchObjects) {
        partition: Partition,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
        known: Map<Tid, Vec<Oid>>,
    }
    /// End of a chunk of objects.
    0x8042 AnswerFetchObjects: answer {
        next_tid: Option<Tid>,
        next_oid: Option<Oid>,
        delete: Map<Tid, Vec<Oid>>,
    }
    /// Replication data: one transaction.
    0x0043 AddTransaction: notification {
        tid: Tid,
        user: Bytes,
        description: Bytes,
        extension: Bytes,
        packed: bool,
        ttid: Tid,
        oids: Vec<Oid>,
        pack: Option<PackInfo>,
    }
    /// Replication data: one object record.
    0x0044 AddObject: notification {
        oid: Oid,
        serial: Tid,
        compression: u8,
        checksum: Checksum,
        data: Bytes,
        data_serial: Option<Tid>,
    }
    /// Truncate the database after `tid` (a notification from master to storage).
    0x0045 Truncate: request(Error) { tid: Tid }
    /// Flush debug logs.
    0x0046 FlushLog: notification {}
    /// neoctl `print summary`.
    0x0047 AskMonitorInformation: request(AnswerMonitorInformation) {}
    /// Clusters with warnings and problems (nil = this cluster), and a summary.
    0x8047 AnswerMonitorInformation: answer {
        warning: Vec<Option<String>>,
        problem: Vec<Option<String>>,
        summary: String,
    }
    /// Backup admin → upstream admin monitoring data.
    0x0048 NotifyMonitorInformation: notification { info: Map<String, Value> }
    /// Address of an upstream admin to report to.
    0x0049 NotifyUpstreamAdmin: notification { address: Address }
}

impl Error {
    /// An error answer.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// The success answer of requests without an answer packet.
    pub fn ack(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Ack, message)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, encode_frame};
    use proptest::test_runner::{Config, TestRunner};

    #[test]
    fn table_has_protocol_5_shape() {
        assert_eq!(ALL_CODES.len(), 111);
        let count = |kind| {
            ALL_CODES
                .iter()
                .filter(|code| packet_kind(**code) == Some(kind))
                .count()
        };
        assert_eq!(count(PacketKind::Request), 45);
        assert_eq!(count(PacketKind::Notification), 28);
        assert_eq!(count(PacketKind::Answer), 37);
        assert_eq!(count(PacketKind::Error), 1);
        for code in ALL_CODES {
            let is_response = code & crate::RESPONSE_MASK != 0;
            let kind = packet_kind(*code);
            assert_eq!(
                is_response,
                matches!(kind, Some(PacketKind::Answer | PacketKind::Error)),
                "{code:#x}"
            );
            if kind == Some(PacketKind::Request) {
                let answer = answer_code(*code).expect("every request has an answer");
                assert!(answer == Error::CODE || answer == code | crate::RESPONSE_MASK);
            }
        }
        let error_answered = ALL_CODES
            .iter()
            .filter(|code| answer_code(**code) == Some(Error::CODE))
            .count();
        assert_eq!(error_answered, 8);
    }

    /// What NEO/py's storages send for an order read back from their
    /// table: the oids as one bin of concatenated oids.
    #[test]
    fn pack_order_oids_come_as_a_list_or_as_concatenated_oids() {
        let decode = |oids: &dyn Fn(&mut Vec<u8>)| {
            let mut body = Vec::new();
            value::write_array_len(&mut body, 1);
            value::write_array_len(&mut body, 1);
            value::write_array_len(&mut body, 5);
            Tid(7).encode(&mut body);
            value::write_nil(&mut body);
            true.encode(&mut body);
            oids(&mut body);
            Tid(5).encode(&mut body);
            Packet::decode(AnswerPackOrders::CODE, &mut Reader::new(Bytes::from(body)))
        };
        let expected = Packet::AnswerPackOrders(AnswerPackOrders {
            orders: vec![PackOrder {
                id: Tid(7),
                approved: None,
                partial: true,
                oids: Some(vec![Oid(1), Oid(0x0203)]),
                pack_tid: Tid(5),
            }],
        });
        let blob = [Oid(1).to_bytes(), Oid(0x0203).to_bytes()].concat();
        let list = decode(&|out| vec![Oid(1), Oid(0x0203)].encode(out)).unwrap();
        assert_eq!(list, expected);
        let concatenated = decode(&|out| value::write_bin(out, &blob)).unwrap();
        assert_eq!(concatenated, expected);
        // Ours send the list.
        let mut args = Vec::new();
        concatenated.encode_args(&mut args);
        let mut listed = Vec::new();
        list.encode_args(&mut listed);
        assert_eq!(args, listed);
        let error = decode(&|out| value::write_bin(out, &blob[..12])).unwrap_err();
        assert!(
            error.to_string().contains("12 bytes of concatenated oids"),
            "{error}"
        );
    }

    /// Every packet type survives encode → decode unchanged.
    #[test]
    fn every_packet_type_round_trips() {
        for &code in ALL_CODES {
            let strategy = arb_packet(code).expect("strategy for every code");
            let mut runner = TestRunner::new(Config {
                cases: 48,
                failure_persistence: None,
                ..Config::default()
            });
            runner
                .run(&(strategy, 0u32..=u32::MAX), |(packet, msg_id)| {
                    let bytes = encode_frame(msg_id, &packet);
                    let (decoded_id, decoded) = decode_frame(&bytes)
                        .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
                    proptest::prop_assert_eq!(decoded_id, msg_id);
                    proptest::prop_assert_eq!(decoded.code(), code);
                    proptest::prop_assert_eq!(&decoded, &packet);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{}: {e}", packet_name(code).unwrap_or("?")));
        }
    }

    /// The shapes NEO sends in bulk, made of their smallest elements, fit
    /// the decoder's memory ratio without the slack's help.
    #[test]
    fn bulk_packets_fit_the_memory_ratio() {
        const COUNT: usize = 1 << 20;
        let packets = [
            Packet::from(NotifyNodeInformation {
                timestamp: 0.0,
                nodes: vec![
                    NodeInfo {
                        node_type: NodeType::Client,
                        address: None,
                        nid: None,
                        state: NodeState::Running,
                        id_timestamp: None,
                    };
                    COUNT
                ],
            }),
            Packet::from(SendPartitionTable {
                ptid: Some(1),
                num_replicas: 0,
                rows: vec![
                    vec![CellInfo {
                        nid: NodeId(1),
                        state: CellState::UpToDate,
                    }];
                    COUNT
                ],
            }),
            Packet::from(CheckReplicas {
                partitions: (0..COUNT as u32).map(|p| (p % 128, None)).collect(),
                min_tid: Tid(0),
                max_tid: None,
            }),
            Packet::from(AskFinishTransaction {
                ttid: Tid(1),
                oids: vec![Oid(1); COUNT],
                deleted: vec![1; COUNT],
                checked: vec![1; COUNT],
                pack: None,
            }),
        ];
        for packet in packets {
            let bytes = encode_frame(0, &packet);
            let (_, decoded) = decode_frame(&bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(decoded, packet);
        }
    }

    #[test]
    fn bad_arguments_name_the_packet_and_argument() {
        let decode = |code, args: Value| {
            let mut bytes = Vec::new();
            args.encode(&mut bytes);
            Packet::decode(code, &mut Reader::new(Bytes::from(bytes)))
        };
        let args = Value::Array(vec![
            Value::Bin(Bytes::from_static(b"short")),
            Value::Nil,
            Value::Nil,
        ]);
        let error = decode(AskObject::CODE, args).unwrap_err();
        assert_eq!(
            error.to_string(),
            "AskObject: argument oid: expected 8 bytes, found 5"
        );
        let error = decode(Ping::CODE, Value::Array(vec![Value::Nil])).unwrap_err();
        assert_eq!(error.to_string(), "Ping: expected 0 arguments, found 1");
        let error = decode(Ping::CODE, Value::Map(vec![])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Ping: arguments must be an array, found map"
        );
        assert_eq!(
            decode(0x4a, Value::Array(vec![])),
            Err(PacketError::UnknownCode(0x4a))
        );
        // Each cell of a row must be a [nid, state] pair.
        let rows = Value::Array(vec![Value::Array(vec![Value::Int(1)])]);
        let args = Value::Array(vec![Value::Nil, Value::Int(1), rows]);
        let error = decode(SendPartitionTable::CODE, args).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SendPartitionTable: argument rows: element 0: element 0: expected array, found int"
        );
    }
}
