//! NEO's identifiers, enums and constants (protocol.md §3.1, §4, §5).

use std::fmt;

/// Protocol version spoken by this implementation; peers must speak the same.
pub const PROTOCOL_VERSION: u8 = 5;

/// Bit set in the code of every answer (and of `Error`).
pub const RESPONSE_MASK: u16 = 0x8000;

/// Partition number meaning "all partitions" in `AskTIDs`.
pub const INVALID_PARTITION: u32 = u32::MAX;

/// Largest number of master addresses a node remembers: lists of masters
/// come from the network (`NotPrimaryMaster`, node notifications) and from
/// files, and must not grow without bound.
pub const MAX_MASTERS: usize = 64;

macro_rules! id64 {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The all-zero id (`ZERO_TID` / `ZERO_OID`).
            pub const ZERO: $name = $name(0);
            /// The all-ones id (`INVALID_TID` / `INVALID_OID`).
            pub const INVALID: $name = $name(u64::MAX);

            /// The 8 big-endian bytes carried on the wire.
            pub fn to_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }

            /// Reads the 8 big-endian bytes of the wire form.
            pub fn from_bytes(bytes: [u8; 8]) -> Self {
                $name(u64::from_be_bytes(bytes))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#018x})", stringify!($name), self.0)
            }
        }

        /// Lower-case hex of the 8 bytes, as NEO prints ids.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:016x}", self.0)
            }
        }
    };
}

id64!(
    /// Object id: 64-bit number, big-endian on the wire.
    Oid
);
id64!(
    /// Transaction id (also a TTID): a ZODB timestamp, big-endian on the wire.
    Tid
);

impl Tid {
    /// Largest TID an SQL backend can store (2^63 - 1).
    pub const MAX: Tid = Tid(i64::MAX as u64);
}

/// Partition table id: increments with every change of the table.
pub type Ptid = u64;

/// Seconds since the Unix epoch, as NEO's clocks give them. Node logic is
/// handed the time; only the shells read a clock.
pub type UnixTime = f64;

/// Partition number (offset in the partition table).
pub type Partition = u32;

/// SHA-1 digest of object data (or of replica-check id lists).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Checksum(pub [u8; 20]);

impl Checksum {
    /// "No data": the checksum of a deleted object or of an undone creation.
    pub const ZERO: Checksum = Checksum([0; 20]);
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum(")?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident = ext $ext:literal { $($(#[$vmeta:meta])* $variant:ident = $value:literal => $wire_name:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)*
        }

        impl $name {
            /// msgpack ext type number of this enum.
            pub const EXT_TYPE: i8 = $ext;
            /// Every member, in value order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The member with this integer value, if any.
            pub fn from_value(value: u64) -> Option<Self> {
                match value {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// NEO/py's member name (`UP_TO_DATE`, `RUNNING`, ...).
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $wire_name,)*
                }
            }

            /// The member whose NEO/py name is `name`.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|member| member.name() == name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum!(
    /// State of one cell (one replica of one partition on one storage).
    CellState = ext 0 {
        /// Being filled by replication: writable, not readable.
        OutOfDate = 0 => "OUT_OF_DATE",
        /// Readable and writable.
        UpToDate = 1 => "UP_TO_DATE",
        /// Readable and writable, dropped once replicated elsewhere.
        Feeding = 2 => "FEEDING",
        /// A replica check found a difference: neither readable nor writable.
        Corrupted = 3 => "CORRUPTED",
        /// Only in change lists: the cell is removed.
        Discarded = 4 => "DISCARDED",
    }
);

impl CellState {
    /// Whether a client may read from a cell in this state.
    pub fn is_readable(self) -> bool {
        matches!(self, CellState::UpToDate | CellState::Feeding)
    }
}

wire_enum!(
    /// State of the whole cluster, owned by the primary master.
    ClusterState = ext 1 {
        /// Gathering partition tables and last ids from storages.
        Recovering = 0 => "RECOVERING",
        /// Replaying or dropping unfinished transactions.
        Verifying = 1 => "VERIFYING",
        /// Normal service.
        Running = 2 => "RUNNING",
        /// Shutting down.
        Stopping = 3 => "STOPPING",
        /// (Re)connecting to the upstream cluster.
        StartingBackup = 4 => "STARTING_BACKUP",
        /// Replicating from an upstream cluster, read-only for clients.
        BackingUp = 5 => "BACKINGUP",
        /// Leaving backup mode.
        StoppingBackup = 6 => "STOPPING_BACKUP",
    }
);

wire_enum!(
    /// Code of an `Error` packet (sent there as a plain integer).
    ErrorCode = ext 2 {
        /// Success answer of requests that have no answer packet.
        Ack = 0 => "ACK",
        /// An admin operation was refused.
        Denied = 1 => "DENIED",
        /// The node cannot serve yet.
        NotReady = 2 => "NOT_READY",
        /// No matching revision of the object.
        OidNotFound = 3 => "OID_NOT_FOUND",
        /// Unknown transaction.
        TidNotFound = 4 => "TID_NOT_FOUND",
        /// The object never existed.
        OidDoesNotExist = 5 => "OID_DOES_NOT_EXIST",
        /// Malformed or unexpected packet; the sender closes after it.
        ProtocolError = 6 => "PROTOCOL_ERROR",
        /// The replication source cannot serve the partition.
        ReplicationError = 7 => "REPLICATION_ERROR",
        /// The replica-check peer cannot check the partition.
        CheckingError = 8 => "CHECKING_ERROR",
        /// The storage backend lacks a feature.
        BackendNotImplemented = 9 => "BACKEND_NOT_IMPLEMENTED",
        /// The partition is not readable on this storage.
        NonReadableCell = 10 => "NON_READABLE_CELL",
        /// Write refused to a read-only client.
        ReadOnlyAccess = 11 => "READ_ONLY_ACCESS",
        /// The commit cannot complete without failed storages.
        IncompleteTransaction = 12 => "INCOMPLETE_TRANSACTION",
        /// Undo references packed data.
        UndoPackError = 13 => "UNDO_PACK_ERROR",
    }
);

wire_enum!(
    /// State of a node in the node table.
    NodeState = ext 3 {
        /// In notifications: forget this node.
        Unknown = 0 => "UNKNOWN",
        /// Known but not connected.
        Down = 1 => "DOWN",
        /// Connected and in service.
        Running = 2 => "RUNNING",
        /// Storage connected but not yet part of the cluster.
        Pending = 3 => "PENDING",
    }
);

wire_enum!(
    /// Kind of node.
    NodeType = ext 4 {
        /// Master node (primary or secondary).
        Master = 0 => "MASTER",
        /// Storage node.
        Storage = 1 => "STORAGE",
        /// Client node (a ZODB storage).
        Client = 2 => "CLIENT",
        /// Admin node.
        Admin = 3 => "ADMIN",
    }
);

impl NodeType {
    /// High byte of the node ids of this type (protocol.md §5.2).
    pub fn namespace(self) -> i8 {
        match self {
            NodeType::Storage => 0x00,
            NodeType::Master => -0x10,
            NodeType::Client => -0x20,
            NodeType::Admin => -0x30,
        }
    }

    /// Letter used in the human-readable form of node ids.
    pub fn letter(self) -> char {
        match self {
            NodeType::Master => 'M',
            NodeType::Storage => 'S',
            NodeType::Client => 'C',
            NodeType::Admin => 'A',
        }
    }
}

/// Node id ("uuid"): signed 32 bits whose high byte is the type namespace.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub i32);

impl NodeId {
    /// Largest per-type number: the low 24 bits.
    pub const NUMBER_MAX: u32 = 0x00ff_ffff;

    /// The id number `number` (1, 2, ...) in the namespace of `node_type`.
    pub fn new(node_type: NodeType, number: u32) -> Option<NodeId> {
        if number == 0 || number > Self::NUMBER_MAX {
            return None;
        }
        let high = i32::from(node_type.namespace()) << 24;
        Some(NodeId(high | number as i32))
    }

    /// The node type whose namespace this id is in, if any.
    pub fn node_type(self) -> Option<NodeType> {
        let high = (self.0 >> 24) as i8;
        NodeType::ALL
            .iter()
            .copied()
            .find(|node_type| node_type.namespace() == high)
    }

    /// The per-type number (low 24 bits).
    pub fn number(self) -> u32 {
        (self.0 as u32) & Self::NUMBER_MAX
    }

    /// Parses the human-readable form (`S1`, `M2`, ...) or a plain integer.
    pub fn parse(text: &str) -> Option<NodeId> {
        let mut chars = text.chars();
        let first = chars.next()?;
        if let Some(node_type) = NodeType::ALL.iter().find(|t| t.letter() == first) {
            let number: u32 = chars.as_str().parse().ok()?;
            return NodeId::new(*node_type, number);
        }
        text.parse().ok().map(NodeId)
    }
}

/// `S1`, `M1`, `C2`, `A1`; ids outside every namespace print as integers.
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node_type() {
            Some(node_type) => write!(f, "{}{}", node_type.letter(), self.number()),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// A node address: host (an IP literal on the wire, without brackets) and port.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Address {
    /// IP literal or, before resolution, a host name.
    pub host: String,
    /// TCP port; 0 asks the kernel for an ephemeral port when binding.
    pub port: u16,
}

/// Why an address string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing to parse.
    #[error("empty address")]
    Empty,
    /// A `[` without its `]`, or text after `]` that is not `:port`.
    #[error("malformed bracketed IPv6 address {0:?}")]
    Brackets(String),
    /// The port is not a number in 0..=65535.
    #[error("invalid port {port:?} in address {address:?}")]
    Port {
        /// The whole address.
        address: String,
        /// The text where a port was expected.
        port: String,
    },
}

impl Address {
    /// An address from its parts.
    pub fn new(host: impl Into<String>, port: u16) -> Address {
        Address {
            host: host.into(),
            port,
        }
    }

    /// Parses NEO's address syntax (operations.md §2.4): `host:port`,
    /// `[v6]:port`, `[v6]`, `host` or a bare IPv6 address. A missing port is
    /// `default_port`. Host names are kept as given: resolving them is I/O.
    pub fn parse(text: &str, default_port: u16) -> Result<Address, AddressError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| AddressError::Brackets(text.to_owned()))?;
            if host.is_empty() {
                return Err(AddressError::Brackets(text.to_owned()));
            }
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(AddressError::Brackets(text.to_owned())),
                },
            }
        } else {
            match text.split_once(':') {
                // Exactly one colon: host and port. Several: a bare IPv6 address.
                Some((host, port)) if !port.contains(':') => (host, Some(port)),
                _ => (text, None),
            }
        };
        if host.is_empty() {
            return Err(AddressError::Empty);
        }
        let port = match port {
            None => default_port,
            Some(port) => port.parse().map_err(|_| AddressError::Port {
                address: text.to_owned(),
                port: port.to_owned(),
            })?,
        };
        Ok(Address::new(host, port))
    }
}

/// `host:port`, or `[host]:port` when the host contains a colon.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<std::net::SocketAddr> for Address {
    fn from(address: std::net::SocketAddr) -> Address {
        Address::new(address.ip().to_string(), address.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_display_in_their_namespace() {
        assert_eq!(NodeId(1).to_string(), "S1");
        assert_eq!(NodeId(-268435455).to_string(), "M1");
        assert_eq!(NodeId(-536870911).to_string(), "C1");
        assert_eq!(NodeId(-805306367).to_string(), "A1");
        assert_eq!(NodeId::new(NodeType::Master, 2), Some(NodeId(-268435454)));
        assert_eq!(NodeId::new(NodeType::Storage, 0), None);
        assert_eq!(NodeId::parse("C1"), Some(NodeId(-536870911)));
        assert_eq!(NodeId::parse("17"), Some(NodeId(17)));
        assert_eq!(NodeId::parse("X1"), None);
        assert_eq!(NodeId(0x4000_0000).to_string(), "1073741824");
    }

    #[test]
    fn addresses_follow_neo_syntax() {
        let parse = |text| Address::parse(text, 9999);
        assert_eq!(
            parse("127.0.0.1:10000"),
            Ok(Address::new("127.0.0.1", 10000))
        );
        assert_eq!(parse("localhost"), Ok(Address::new("localhost", 9999)));
        assert_eq!(parse("[::1]:21800"), Ok(Address::new("::1", 21800)));
        assert_eq!(parse("[::1]"), Ok(Address::new("::1", 9999)));
        assert_eq!(parse("fe80::1"), Ok(Address::new("fe80::1", 9999)));
        assert!(matches!(
            parse("host:99999"),
            Err(AddressError::Port { .. })
        ));
        assert!(matches!(parse("host:x"), Err(AddressError::Port { .. })));
        assert!(matches!(parse("[::1"), Err(AddressError::Brackets(_))));
        assert!(matches!(parse("[::1]x"), Err(AddressError::Brackets(_))));
        assert_eq!(parse("  "), Err(AddressError::Empty));
        assert_eq!(parse(":5"), Err(AddressError::Empty));
        assert_eq!(Address::new("::1", 5).to_string(), "[::1]:5");
        assert_eq!(Address::new("10.0.0.1", 5).to_string(), "10.0.0.1:5");
    }

    #[test]
    fn enum_names_round_trip() {
        for state in CellState::ALL {
            assert_eq!(CellState::from_name(state.name()), Some(*state));
            assert_eq!(CellState::from_value(*state as u64), Some(*state));
        }
        assert_eq!(ClusterState::BackingUp.to_string(), "BACKINGUP");
        assert_eq!(ErrorCode::from_value(14), None);
        assert_eq!(
            Tid::MAX.to_bytes(),
            [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }
}
