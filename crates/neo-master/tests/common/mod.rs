//! The harness of the master's state-machine tests: a master, the time,
//! and helpers to speak for its storages, clients and admin.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};

use neo_master::{Master, MasterConfig};
use neo_net::{ConnId, Input, Node, Output, Token};
use neo_proto::packets as p;
use neo_proto::{Address, ClusterState, ErrorCode, Map, NodeId, NodeType, Oid, Packet, Tid, Value};

pub const CLUSTER: &str = "test";
pub const T0: f64 = 1_790_000_000.0;

/// A master and the time, with helpers to speak for its peers.
pub struct Sim {
    pub master: Master,
    pub now: f64,
    next_conn: u64,
    /// The master's requests not answered yet, by connection, oldest
    /// first, with their tokens: the tests answer them by kind of request.
    asked: HashMap<ConnId, VecDeque<(Token, Packet)>>,
}

impl Sim {
    pub fn new(partitions: u32, replicas: u32, autostart: Option<u32>) -> Sim {
        let config = MasterConfig {
            cluster: CLUSTER.into(),
            address: Address::new("127.0.0.1", 10000),
            partitions,
            replicas,
            autostart,
            masters: Vec::new(),
            nid: None,
        };
        Sim {
            master: Master::new(config).unwrap(),
            now: T0,
            next_conn: 1,
            asked: HashMap::new(),
        }
    }

    pub fn input(&mut self, input: Input) -> Vec<Output> {
        self.now += 0.01;
        self.master.handle(input, self.now);
        let outputs = self.master.poll_output();
        for output in &outputs {
            if let Output::Request {
                conn,
                token,
                packet,
            } = output
            {
                self.asked
                    .entry(*conn)
                    .or_default()
                    .push_back((*token, packet.clone()));
            }
        }
        outputs
    }

    pub fn send(&mut self, conn: ConnId, msg_id: u32, packet: impl Into<Packet>) -> Vec<Output> {
        self.input(Input::Packet {
            conn,
            msg_id,
            packet: packet.into(),
        })
    }

    /// Answers the oldest request of kind `request_code` sent on `conn`.
    pub fn reply(
        &mut self,
        conn: ConnId,
        request_code: u16,
        packet: impl Into<Packet>,
    ) -> Vec<Output> {
        self.reply_to(conn, |request| request.code() == request_code, packet)
    }

    /// Answers the oldest request sent on `conn` that `which` selects.
    pub fn reply_to(
        &mut self,
        conn: ConnId,
        which: impl Fn(&Packet) -> bool,
        packet: impl Into<Packet>,
    ) -> Vec<Output> {
        let pending = self.asked.entry(conn).or_default();
        let index = pending
            .iter()
            .position(|(_, request)| which(request))
            .unwrap_or_else(|| panic!("no such request pending on {conn}: {pending:?}"));
        let (token, _) = pending.remove(index).expect("in range");
        self.input(Input::Answer {
            conn,
            token,
            packet: packet.into(),
        })
    }

    /// Answers `AskLockInformation` of `ttid` on `conn`.
    pub fn locked(&mut self, conn: ConnId, ttid: Tid) -> Vec<Output> {
        let lock_of_ttid = |request: &Packet| matches!(request, Packet::AskLockInformation(lock) if lock.ttid == ttid);
        self.reply_to(conn, lock_of_ttid, p::AnswerInformationLocked { ttid })
    }

    pub fn close(&mut self, conn: ConnId) -> Vec<Output> {
        self.input(Input::Closed { conn })
    }

    /// Connects and identifies; returns the connection, the id given, and
    /// the outputs.
    pub fn identify(
        &mut self,
        node_type: NodeType,
        nid: Option<NodeId>,
        port: Option<u16>,
    ) -> (ConnId, Option<NodeId>, Vec<Output>) {
        self.identify_with(node_type, nid, port, Map::new())
    }

    /// [`Sim::identify`] with the `extra` of the identification.
    pub fn identify_with(
        &mut self,
        node_type: NodeType,
        nid: Option<NodeId>,
        port: Option<u16>,
        extra: Map<String, Value>,
    ) -> (ConnId, Option<NodeId>, Vec<Output>) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.input(Input::Accepted { conn });
        let request = p::RequestIdentification {
            node_type,
            nid,
            address: port.map(|port| Address::new("127.0.0.1", port)),
            cluster: CLUSTER.into(),
            id_timestamp: None,
            extra,
        };
        let outputs = self.send(conn, 0, request);
        let given = outputs.iter().find_map(|output| match output {
            Output::Answer {
                packet: Packet::AcceptIdentification(accept),
                ..
            } => accept.your_nid,
            _ => None,
        });
        (conn, given, outputs)
    }
}

/// Packets sent (answers, notifications, requests) to `conn`, in order.
pub fn to(outputs: &[Output], conn: ConnId) -> Vec<&Packet> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Answer {
                conn: c, packet, ..
            }
            | Output::Notify { conn: c, packet }
            | Output::Request {
                conn: c, packet, ..
            } if *c == conn => Some(packet),
            _ => None,
        })
        .collect()
}

pub fn names(packets: &[&Packet]) -> Vec<&'static str> {
    packets.iter().map(|packet| packet.name()).collect()
}

pub fn closed(outputs: &[Output], conn: ConnId) -> bool {
    outputs
        .iter()
        .any(|output| *output == Output::Close { conn })
}

/// An empty storage that answers recovery questions.
pub fn empty_recovery() -> p::AnswerRecovery {
    p::AnswerRecovery {
        ptid: None,
        backup_tid: None,
        truncate_tid: None,
    }
}

/// Brings a new cluster of `count` storages to RUNNING with `neoctl start`;
/// returns the storage connections and the admin connection.
pub fn running_cluster(sim: &mut Sim, count: u16) -> (Vec<ConnId>, ConnId) {
    let mut storages = Vec::new();
    for port in 0..count {
        let (conn, _, outputs) = sim.identify(NodeType::Storage, None, Some(20000 + port));
        assert_eq!(
            names(&to(&outputs, conn)),
            [
                "AcceptIdentification",
                "NotifyNodeInformation",
                "AskRecovery"
            ]
        );
        sim.reply(conn, p::AskRecovery::CODE, empty_recovery());
        storages.push(conn);
    }
    let (admin, _, _) = sim.identify(NodeType::Admin, None, Some(9999));
    let outputs = sim.send(
        admin,
        4,
        p::SetClusterState {
            state: ClusterState::Verifying,
        },
    );
    assert_eq!(
        to(&outputs, admin)[0],
        &Packet::Error(p::Error::ack("Cluster state changed"))
    );
    for &storage in &storages {
        let sent = names(&to(&outputs, storage));
        assert!(sent.ends_with(&[
            "SendPartitionTable",
            "NotifyClusterInformation",
            "AskLockedTransactions"
        ]));
    }
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    for &storage in &storages {
        let answer = p::AnswerLockedTransactions { ttids: Map::new() };
        sim.reply(storage, p::AskLockedTransactions::CODE, answer);
    }
    let mut outputs = Vec::new();
    for &storage in &storages {
        let last_ids = p::AnswerLastIDs {
            last_tid: None,
            last_oid: None,
            first_tid: Tid::MAX,
        };
        outputs = sim.reply(storage, p::AskLastIDs::CODE, last_ids);
    }
    // Then the pack orders are reloaded from the storages (§5.2 step 4).
    for &storage in &storages {
        assert_eq!(
            to(&outputs, storage),
            [&Packet::AskPackOrders(p::AskPackOrders {
                min_id: Tid::ZERO
            })]
        );
    }
    for &storage in &storages {
        let orders = p::AnswerPackOrders { orders: vec![] };
        outputs = sim.reply(storage, p::AskPackOrders::CODE, orders);
    }
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
    for &storage in &storages {
        assert!(
            to(&outputs, storage).contains(&&Packet::StartOperation(p::StartOperation {
                backup: false
            }))
        );
        sim.send(storage, 1, p::NotifyReady {});
    }
    (storages, admin)
}

/// Commits a transaction of `client` through the master, every storage of
/// `storages` locking it; returns the final TID and the outputs of the
/// last lock.
pub fn commit(
    sim: &mut Sim,
    client: ConnId,
    storages: &[ConnId],
    oids: Vec<Oid>,
    pack: Option<p::PackRequest>,
) -> (Tid, bool, Vec<Output>) {
    let outputs = sim.send(client, 10, p::AskBeginTransaction { tid: None });
    let Packet::AnswerBeginTransaction(begin) = to(&outputs, client)[0] else {
        panic!("{outputs:?}")
    };
    let ttid = begin.ttid;
    let finish = p::AskFinishTransaction {
        ttid,
        oids,
        deleted: vec![],
        checked: vec![],
        pack,
    };
    let outputs = sim.send(client, 11, finish);
    let mut lock = None;
    for &storage in storages {
        for packet in to(&outputs, storage) {
            if let Packet::AskLockInformation(request) = packet {
                lock = Some(request.clone());
            }
        }
    }
    let lock = lock.unwrap_or_else(|| panic!("no lock asked: {outputs:?}"));
    let mut outputs = Vec::new();
    for &storage in storages {
        outputs = sim.locked(storage, ttid);
    }
    assert!(outputs.contains(&Output::Answer {
        conn: client,
        msg_id: 11,
        packet: p::AnswerTransactionFinished {
            ttid,
            tid: lock.tid
        }
        .into()
    }));
    (lock.tid, lock.pack_approved, outputs)
}

pub fn pack_signed(approved: Vec<Tid>, rejected: Vec<Tid>) -> Packet {
    p::NotifyPackSigned { approved, rejected }.into()
}

/// The `Error` (ACK or refusal) answered on `conn` as `msg_id`.
pub fn error_answer(outputs: &[Output], conn: ConnId, msg_id: u32) -> (ErrorCode, String) {
    outputs
        .iter()
        .find_map(|output| match output {
            Output::Answer {
                conn: c,
                msg_id: m,
                packet: Packet::Error(error),
            } if *c == conn && *m == msg_id => Some((error.code, error.message.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no error answer on {conn}: {outputs:?}"))
}

/// Sends an admin request and returns the message it is refused with.
pub fn denied(sim: &mut Sim, admin: ConnId, request: impl Into<Packet>) -> String {
    let outputs = sim.send(admin, 90, request);
    let (code, message) = error_answer(&outputs, admin, 90);
    assert_eq!(code, ErrorCode::Denied, "{message}");
    message
}

/// Answers verification's questions: `holders` (storages with readable
/// cells) their locked transactions (none) and pack orders (none), `all`
/// their last ids, up to `last_tid`. Returns the outputs of the last.
pub fn verify(sim: &mut Sim, holders: &[ConnId], all: &[ConnId], last_tid: Tid) -> Vec<Output> {
    for &storage in holders {
        let answer = p::AnswerLockedTransactions { ttids: Map::new() };
        sim.reply(storage, p::AskLockedTransactions::CODE, answer);
    }
    for &storage in all {
        let last_ids = p::AnswerLastIDs {
            last_tid: Some(last_tid),
            last_oid: None,
            first_tid: Tid::MAX,
        };
        sim.reply(storage, p::AskLastIDs::CODE, last_ids);
    }
    let mut outputs = Vec::new();
    for &storage in holders {
        let orders = p::AnswerPackOrders { orders: vec![] };
        outputs = sim.reply(storage, p::AskPackOrders::CODE, orders);
    }
    outputs
}
