//! The harness of the storage node's state-machine tests: a node over a
//! real SQLite database, operational with one identified client, and
//! helpers to speak for the master and the client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use neo_net::{ConnId, Input, Node, Output};
use neo_proto::packets::{self as p, CellInfo, NodeInfo};
use neo_proto::{Address, CellState, Checksum, Map, NodeId, NodeState, NodeType, Oid, Packet, Tid};
use neo_storage::backend::{OpenOptions, SqliteBackend};
use neo_storage::db::Database;
use neo_storage::node::{Limits, Storage, StorageConfig};

use sha1::{Digest, Sha1};

pub const MASTER: ConnId = ConnId(1);
pub const CLIENT: ConnId = ConnId(2);

pub fn storage_nid() -> NodeId {
    NodeId::new(NodeType::Storage, 1).unwrap()
}

pub fn client_nid() -> NodeId {
    NodeId::new(NodeType::Client, 1).unwrap()
}

pub fn tid(n: u64) -> Tid {
    Tid(0x03f0_0000_0000_0000 + n)
}

/// How a harness' node starts: its limits, its node id, the partition
/// table the master sends, and the other storages it announces.
pub struct Setup {
    pub limits: Limits,
    pub own: NodeId,
    pub rows: Vec<Vec<CellInfo>>,
    /// Other storages, RUNNING (see [`storage_address`]).
    pub storages: Vec<NodeId>,
}

impl Default for Setup {
    /// One partition, UP_TO_DATE on this node, alone.
    fn default() -> Setup {
        Setup {
            limits: Limits::default(),
            own: storage_nid(),
            rows: vec![vec![CellInfo {
                nid: storage_nid(),
                state: CellState::UpToDate,
            }]],
            storages: Vec::new(),
        }
    }
}

/// Where the harness' node listens.
pub fn own_address() -> Address {
    Address::parse("127.0.0.1:1", 1).unwrap()
}

/// Where another storage of a harness listens.
pub fn storage_address(nid: NodeId) -> Address {
    Address::new("127.0.0.1", 100 + nid.0 as u16)
}

/// The `id_timestamp` the master gives a storage (its own included).
pub fn id_timestamp(nid: NodeId) -> f64 {
    1.0 + f64::from(nid.0) / 10.0
}

/// The timestamp of the master's node notification.
pub const NOTIFICATION: f64 = 3.0;

/// A storage node with one partition of its own, operational, with one
/// identified client on [`CLIENT`].
pub struct Harness {
    /// Declared before `dir`, so dropped first: the database's lock is
    /// named after the file's inode, which a deleted directory frees for
    /// another test's new database while the lock would still be held.
    pub storage: Storage,
    pub dir: tempfile::TempDir,
    pub next_msg_id: u32,
    /// The time given with every input.
    pub now: f64,
    /// What the node did when told to start operating.
    pub started: Vec<Output>,
    setup_own: NodeId,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_limits(Limits::default())
    }

    /// [`Harness::new`] with the node's limits set to `limits`.
    pub fn with_limits(limits: Limits) -> Harness {
        Harness::start(Setup {
            limits,
            ..Setup::default()
        })
    }

    /// A node set up as `setup` says, operational.
    pub fn start(setup: Setup) -> Harness {
        Harness::start_in(tempfile::tempdir().unwrap(), setup)
    }

    /// The node stops and starts again on the same database, as `setup`
    /// says (a restart: what it did not commit is lost).
    pub fn restart(self, setup: Setup) -> Harness {
        let Harness { dir, storage, .. } = self;
        drop(storage);
        Harness::start_in(dir, setup)
    }

    fn start_in(dir: tempfile::TempDir, setup: Setup) -> Harness {
        let backend =
            SqliteBackend::open(dir.path().join("neo.sqlite"), &OpenOptions::default()).unwrap();
        let db = Database::new(Box::new(backend)).unwrap();
        let config = StorageConfig {
            cluster: "test".to_owned(),
            address: own_address(),
            masters: vec![Address::new("127.0.0.1", 10000)],
            limits: setup.limits,
            devpath: vec!["host".to_owned(), "device".to_owned()],
        };
        let mut harness = Harness {
            dir,
            storage: Storage::new(config, db).unwrap(),
            next_msg_id: 0,
            now: 1.0,
            started: Vec::new(),
            setup_own: setup.own,
        };
        let connect = harness.input(Input::Start);
        let [Output::Connect { token, address }] = connect.as_slice() else {
            panic!("expected a connection to the master: {connect:?}");
        };
        assert_eq!(address.port, 10000);
        let identify = harness.input(Input::Connected {
            conn: MASTER,
            token: *token,
        });
        let [Output::Request { token, packet, .. }] = identify.as_slice() else {
            panic!("expected the identification: {identify:?}");
        };
        let Packet::RequestIdentification(request) = packet else {
            panic!("expected the identification: {packet:?}");
        };
        // Its place in the topology, as bytes (as NEO/py sends it).
        let devpath = request.extra.0.iter().find(|(key, _)| key == "devpath");
        let bin = |text: &str| neo_proto::Value::Bin(text.as_bytes().to_vec().into());
        assert_eq!(
            devpath.map(|(_, value)| value),
            Some(&neo_proto::Value::Array(vec![bin("host"), bin("device")]))
        );
        harness.input(Input::Answer {
            conn: MASTER,
            token: *token,
            packet: p::AcceptIdentification {
                node_type: NodeType::Master,
                nid: Some(NodeId::new(NodeType::Master, 1).unwrap()),
                your_nid: Some(setup.own),
            }
            .into(),
        });
        harness.master_sends(p::SendPartitionTable {
            ptid: Some(1),
            num_replicas: 0,
            rows: setup.rows,
        });
        let mut nodes = vec![storage_info(setup.own, own_address())];
        nodes.push(NodeInfo {
            node_type: NodeType::Client,
            address: None,
            nid: Some(client_nid()),
            state: NodeState::Running,
            id_timestamp: Some(1.0),
        });
        for nid in setup.storages {
            nodes.push(storage_info(nid, storage_address(nid)));
        }
        harness.master_sends(p::NotifyNodeInformation {
            timestamp: NOTIFICATION,
            nodes,
        });
        harness.started = harness.master_sends(p::StartOperation { backup: false });
        harness.input(Input::Accepted { conn: CLIENT });
        let accepted = harness.client_sends(p::RequestIdentification {
            node_type: NodeType::Client,
            nid: Some(client_nid()),
            address: None,
            cluster: "test".to_owned(),
            id_timestamp: Some(1.0),
            extra: Map(vec![]),
        });
        assert!(
            matches!(
                accepted.as_slice(),
                [Output::Answer {
                    packet: Packet::AcceptIdentification(_),
                    ..
                }]
            ),
            "{accepted:?}"
        );
        harness
    }

    /// This node's id.
    pub fn own(&self) -> NodeId {
        self.setup_own
    }

    /// Voted object rows committed to the database, as another reader sees
    /// them.
    pub fn committed_votes(&self) -> i64 {
        let conn = rusqlite::Connection::open(self.dir.path().join("neo.sqlite")).unwrap();
        conn.query_row("SELECT COUNT(*) FROM tobj", [], |row| row.get(0))
            .unwrap()
    }

    pub fn input(&mut self, input: Input) -> Vec<Output> {
        let outputs = self.input_may_exit(input);
        assert!(
            !outputs.iter().any(|o| matches!(o, Output::Exit(_))),
            "{outputs:?}"
        );
        outputs
    }

    /// [`Harness::input`], without failing when the node exits.
    pub fn input_may_exit(&mut self, input: Input) -> Vec<Output> {
        self.storage.handle(input, self.now);
        self.storage.poll_output()
    }

    pub fn packet(&mut self, conn: ConnId, packet: impl Into<Packet>) -> Vec<Output> {
        self.next_msg_id += 1;
        let msg_id = self.next_msg_id;
        self.input(Input::Packet {
            conn,
            msg_id,
            packet: packet.into(),
        })
    }

    pub fn master_sends(&mut self, packet: impl Into<Packet>) -> Vec<Output> {
        self.packet(MASTER, packet)
    }

    pub fn client_sends(&mut self, packet: impl Into<Packet>) -> Vec<Output> {
        self.packet(CLIENT, packet)
    }

    pub fn store(&mut self, ttid: Tid, oid: Oid, serial: Tid, data: &'static [u8]) -> Vec<Output> {
        self.client_sends(p::AskStoreObject {
            oid,
            serial,
            compression: 0,
            checksum: checksum(data),
            data: data.into(),
            data_serial: None,
            ttid,
        })
    }

    /// The client votes `ttid`, with empty metadata listing `oids`.
    pub fn vote_metadata(&mut self, ttid: Tid, oids: Vec<Oid>) -> Vec<Output> {
        self.client_sends(p::AskStoreTransaction {
            ttid,
            user: Default::default(),
            description: Default::default(),
            extension: Default::default(),
            oids,
            pack: None,
        })
    }

    /// The master locks `ttid` with `tid`.
    pub fn lock(&mut self, ttid: Tid, tid: Tid) -> Vec<Output> {
        self.master_sends(p::AskLockInformation {
            ttid,
            tid,
            pack_approved: false,
        })
    }
}

/// SHA-1 of object data, as clients compute it.
pub fn checksum(data: &[u8]) -> Checksum {
    Checksum(Sha1::digest(data).into())
}

/// The other storage of [`shared_partition`].
pub fn other_storage_nid() -> NodeId {
    NodeId::new(NodeType::Storage, 2).unwrap()
}

/// One partition, in `state` on this node, UP_TO_DATE on the other
/// storage ([`other_storage_nid`]), which is running.
pub fn shared_partition(state: CellState) -> Setup {
    Setup {
        rows: vec![vec![
            CellInfo {
                nid: storage_nid(),
                state,
            },
            CellInfo {
                nid: other_storage_nid(),
                state: CellState::UpToDate,
            },
        ]],
        storages: vec![other_storage_nid()],
        ..Setup::default()
    }
}

/// A RUNNING storage as the master announces it.
pub fn storage_info(nid: NodeId, address: Address) -> NodeInfo {
    NodeInfo {
        node_type: NodeType::Storage,
        address: Some(address),
        nid: Some(nid),
        state: NodeState::Running,
        id_timestamp: Some(id_timestamp(nid)),
    }
}

/// The answers among `outputs`, in order.
pub fn answers(outputs: &[Output]) -> Vec<&Packet> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Answer { packet, .. } => Some(packet),
            _ => None,
        })
        .collect()
}
