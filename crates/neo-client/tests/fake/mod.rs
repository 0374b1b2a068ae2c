//! Fake NEO nodes for the client tests: an in-process primary master and
//! storages on real loopback sockets, answering like NEO/py does in
//! `session-basic.jsonl` and recording every packet they receive.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use neo_net::{Connection, ConnectionConfig, EventKind, Inbox, Listener};
use neo_proto::packets::{self, CellInfo, NodeInfo, Row};
use neo_proto::{Address, CellState, ErrorCode, NodeId, NodeState, NodeType, Oid, Packet, Tid};

pub const CLUSTER: &str = "demo";
/// What the master gives the client as `id_timestamp` (session-basic seq 90).
pub const CLIENT_TS: f64 = 1795643158.1856833;
pub const FIRST_TID: u64 = 0x040d_42d9_f853_a3df;

pub fn client_nid(number: u32) -> NodeId {
    NodeId::new(NodeType::Client, number).unwrap()
}

pub fn master_nid() -> NodeId {
    NodeId::new(NodeType::Master, 1).unwrap()
}

pub async fn listen() -> Listener {
    Listener::bind(&Address::new("127.0.0.1", 0)).await.unwrap()
}

/// Polls `condition` every 10 ms for up to 5 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// What the fake master does.
pub struct MasterScript {
    pub cluster: String,
    pub storages: Vec<(NodeId, Address)>,
    pub rows: Vec<Row>,
    pub last_tid: Tid,
    pub next_oid: u64,
    /// Answer identification with this error, then close.
    pub identify_error: Option<packets::Error>,
    /// Act as a secondary master: `NotPrimaryMaster(primary, known)`.
    pub redirect: Option<(Option<u32>, Vec<Address>)>,
    /// Close the connection on the next `AskFinishTransaction`, after
    /// committing it.
    pub close_on_finish: bool,
    /// Close the connection on the next `AskBeginTransaction`... no: on
    /// the next store phase, driven by the test with `drop_clients`.
    pub final_tids: HashMap<Tid, Option<Tid>>,
    /// Client ids given, in order.
    pub next_client: u32,
}

#[derive(Default)]
pub struct FakeMaster {
    pub address: Mutex<Option<Address>>,
    pub log: Mutex<Vec<Packet>>,
    pub clients: Mutex<Vec<Connection>>,
    pub script: Mutex<Option<MasterScript>>,
}

impl FakeMaster {
    pub fn address(&self) -> Address {
        self.address.lock().unwrap().clone().unwrap()
    }

    pub fn received(&self) -> Vec<Packet> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self, name: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.name() == name)
            .count()
    }

    pub fn script<T>(&self, f: impl FnOnce(&mut MasterScript) -> T) -> T {
        f(self.script.lock().unwrap().as_mut().unwrap())
    }

    /// Sends a notification to every identified client.
    pub async fn broadcast(&self, packet: impl Into<Packet>) {
        let packet = packet.into();
        let clients = self.clients.lock().unwrap().clone();
        for client in clients {
            let _ = client.notify(packet.clone()).await;
        }
    }

    /// Closes every client connection (master lost).
    pub async fn drop_clients(&self) {
        let clients: Vec<Connection> = self.clients.lock().unwrap().drain(..).collect();
        for client in clients {
            client.close().await;
        }
    }

    pub async fn start(script: MasterScript) -> Arc<FakeMaster> {
        let master = Arc::new(FakeMaster::default());
        *master.script.lock().unwrap() = Some(script);
        let listener = listen().await;
        *master.address.lock().unwrap() = Some(listener.local_address().clone());
        let serving = master.clone();
        tokio::spawn(async move {
            while let Ok(accepted) = listener.accept().await {
                let master = serving.clone();
                tokio::spawn(async move {
                    if let Ok((connection, inbox)) =
                        accepted.open(&ConnectionConfig::default()).await
                    {
                        serve_master(master, connection, inbox).await;
                    }
                });
            }
        });
        master
    }
}

pub fn storage_info(nid: NodeId, address: &Address, state: NodeState) -> NodeInfo {
    NodeInfo {
        node_type: NodeType::Storage,
        address: Some(address.clone()),
        nid: Some(nid),
        state,
        id_timestamp: Some(1795643157.076762),
    }
}

async fn serve_master(master: Arc<FakeMaster>, connection: Connection, mut inbox: Inbox) {
    while let Some(event) = inbox.recv().await {
        let EventKind::Packet(frame) = event.kind else {
            if matches!(event.kind, EventKind::Closed(_)) {
                break;
            }
            continue;
        };
        master.log.lock().unwrap().push(frame.packet.clone());
        let msg_id = frame.msg_id;
        match frame.packet {
            Packet::RequestIdentification(request) => {
                let (redirect, error, nid, notification, table) = master.script(|s| {
                    let nid = request.nid.unwrap_or_else(|| {
                        s.next_client += 1;
                        client_nid(s.next_client)
                    });
                    let mut nodes = vec![
                        NodeInfo {
                            node_type: NodeType::Client,
                            address: None,
                            nid: Some(nid),
                            state: NodeState::Running,
                            id_timestamp: Some(CLIENT_TS),
                        },
                        NodeInfo {
                            node_type: NodeType::Master,
                            address: None,
                            nid: Some(master_nid()),
                            state: NodeState::Running,
                            id_timestamp: None,
                        },
                    ];
                    for (snid, address) in &s.storages {
                        nodes.push(storage_info(*snid, address, NodeState::Running));
                    }
                    let error = if request.cluster != s.cluster {
                        Some(packets::Error::new(
                            ErrorCode::ProtocolError,
                            "invalid cluster name",
                        ))
                    } else {
                        s.identify_error.clone()
                    };
                    (
                        s.redirect.clone(),
                        error,
                        nid,
                        packets::NotifyNodeInformation {
                            timestamp: 1795643158.1857867,
                            nodes,
                        },
                        packets::SendPartitionTable {
                            ptid: Some(1),
                            num_replicas: 1,
                            rows: s.rows.clone(),
                        },
                    )
                });
                if let Some((primary, known_masters)) = redirect {
                    let _ = connection
                        .notify(packets::NotPrimaryMaster {
                            primary,
                            known_masters,
                        })
                        .await;
                    connection.close().await;
                    return;
                }
                if let Some(error) = error {
                    let _ = connection.answer(msg_id, error).await;
                    connection.close().await;
                    return;
                }
                let accept = packets::AcceptIdentification {
                    node_type: NodeType::Master,
                    nid: Some(master_nid()),
                    your_nid: Some(nid),
                };
                connection.answer(msg_id, accept).await.unwrap();
                connection.notify(notification).await.unwrap();
                connection.notify(table).await.unwrap();
                master.clients.lock().unwrap().push(connection.clone());
            }
            Packet::AskLastTransaction(_) => {
                let tid = master.script(|s| s.last_tid);
                let _ = connection
                    .answer(msg_id, packets::AnswerLastTransaction { tid })
                    .await;
            }
            Packet::Ping(_) => {
                let _ = connection.answer(msg_id, packets::Pong {}).await;
            }
            Packet::AskNewOIDs(request) => {
                let oids = master.script(|s| {
                    let first = s.next_oid;
                    s.next_oid += u64::from(request.count);
                    (first..s.next_oid).map(Oid).collect()
                });
                let _ = connection
                    .answer(msg_id, packets::AnswerNewOIDs { oids })
                    .await;
            }
            Packet::AskBeginTransaction(request) => {
                let ttid = request.tid.unwrap_or_else(|| {
                    master.script(|s| Tid(s.last_tid.0.max(FIRST_TID) + 0x1000))
                });
                let _ = connection
                    .answer(msg_id, packets::AnswerBeginTransaction { ttid })
                    .await;
            }
            Packet::AskFinishTransaction(request) => {
                let (tid, close) = master.script(|s| {
                    let tid = Tid(request.ttid.0 + 4);
                    s.last_tid = tid;
                    s.final_tids.insert(request.ttid, Some(tid));
                    let close = std::mem::take(&mut s.close_on_finish);
                    (tid, close)
                });
                if close {
                    master.clients.lock().unwrap().clear();
                    connection.close().await;
                    return;
                }
                let _ = connection
                    .answer(
                        msg_id,
                        packets::AnswerTransactionFinished {
                            ttid: request.ttid,
                            tid,
                        },
                    )
                    .await;
            }
            Packet::AskFinalTID(request) => {
                let tid = master.script(|s| s.final_tids.get(&request.ttid).copied().flatten());
                let _ = connection
                    .answer(msg_id, packets::AnswerFinalTID { tid })
                    .await;
            }
            Packet::FailedVote(_) => {
                let _ = connection.answer(msg_id, packets::Error::ack("")).await;
            }
            _ => {}
        }
    }
}

/// One revision kept by a fake storage.
#[derive(Clone)]
pub struct Revision {
    pub serial: Tid,
    pub data: Option<Bytes>,
}

#[derive(Default)]
pub struct StorageScript {
    pub non_readable: bool,
    pub bad_checksum: bool,
    /// Answer the next store of these oids with a conflict.
    pub conflicts: HashMap<Oid, Tid>,
    /// After the next store of this oid, send `NotifyDeadlock`.
    pub deadlock: Option<Oid>,
    /// Answer the stores of this oid twice (a broken or hostile storage).
    pub answer_twice: Option<Oid>,
    /// Transactions known: tid → (description, oids).
    pub transactions: HashMap<Tid, (Bytes, Vec<Oid>)>,
}

pub struct FakeStorage {
    pub nid: NodeId,
    pub address: Address,
    pub log: Mutex<Vec<Packet>>,
    pub objects: Mutex<HashMap<Oid, Vec<Revision>>>,
    pub script: Mutex<StorageScript>,
    pub clients: Mutex<Vec<Connection>>,
}

impl FakeStorage {
    pub async fn start(number: i32) -> Arc<FakeStorage> {
        let listener = listen().await;
        let storage = Arc::new(FakeStorage {
            nid: NodeId(number),
            address: listener.local_address().clone(),
            log: Mutex::new(Vec::new()),
            objects: Mutex::new(HashMap::new()),
            script: Mutex::new(StorageScript::default()),
            clients: Mutex::new(Vec::new()),
        });
        let serving = storage.clone();
        tokio::spawn(async move {
            while let Ok(accepted) = listener.accept().await {
                let storage = serving.clone();
                tokio::spawn(async move {
                    if let Ok((connection, inbox)) =
                        accepted.open(&ConnectionConfig::default()).await
                    {
                        serve_storage(storage, connection, inbox).await;
                    }
                });
            }
        });
        storage
    }

    pub fn received(&self) -> Vec<Packet> {
        self.log.lock().unwrap().clone()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.log.lock().unwrap().iter().map(|p| p.name()).collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.name() == name)
            .count()
    }

    pub fn put(&self, oid: Oid, serial: Tid, data: &[u8]) {
        self.objects
            .lock()
            .unwrap()
            .entry(oid)
            .or_default()
            .push(Revision {
                serial,
                data: Some(Bytes::copy_from_slice(data)),
            });
    }

    pub async fn drop_clients(&self) {
        let clients: Vec<Connection> = self.clients.lock().unwrap().drain(..).collect();
        for client in clients {
            client.close().await;
        }
    }
}

fn find(
    revisions: &[Revision],
    at: Option<Tid>,
    before: Option<Tid>,
) -> Option<(Revision, Option<Tid>)> {
    let mut sorted = revisions.to_vec();
    sorted.sort_by_key(|r| r.serial);
    let index = match (at, before) {
        (Some(at), _) => sorted.iter().position(|r| r.serial == at)?,
        (None, Some(before)) => sorted.iter().rposition(|r| r.serial < before)?,
        (None, None) => sorted.len().checked_sub(1)?,
    };
    let next = sorted.get(index + 1).map(|r| r.serial);
    Some((sorted[index].clone(), next))
}

async fn serve_storage(storage: Arc<FakeStorage>, connection: Connection, mut inbox: Inbox) {
    while let Some(event) = inbox.recv().await {
        let EventKind::Packet(frame) = event.kind else {
            if matches!(event.kind, EventKind::Closed(_)) {
                break;
            }
            continue;
        };
        storage.log.lock().unwrap().push(frame.packet.clone());
        let msg_id = frame.msg_id;
        let answer: Option<Packet> = match frame.packet {
            Packet::RequestIdentification(request) => {
                storage.clients.lock().unwrap().push(connection.clone());
                Some(
                    packets::AcceptIdentification {
                        node_type: NodeType::Storage,
                        nid: Some(storage.nid),
                        your_nid: request.nid,
                    }
                    .into(),
                )
            }
            Packet::AskObject(request) => {
                let script = storage.script.lock().unwrap();
                if script.non_readable {
                    Some(packets::Error::new(ErrorCode::NonReadableCell, "").into())
                } else {
                    let objects = storage.objects.lock().unwrap();
                    match objects.get(&request.oid) {
                        None => Some(
                            packets::Error::new(ErrorCode::OidDoesNotExist, "0000000000000000")
                                .into(),
                        ),
                        Some(revisions) => match find(revisions, request.at, request.before) {
                            None => Some(packets::Error::new(ErrorCode::OidNotFound, "").into()),
                            Some((revision, next_serial)) => {
                                let encoded = match &revision.data {
                                    Some(data) => neo_client::data::encode(data, true),
                                    None => neo_client::data::no_data(),
                                };
                                let mut checksum = encoded.checksum;
                                if script.bad_checksum {
                                    checksum.0[0] ^= 1;
                                }
                                Some(
                                    packets::AnswerObject {
                                        oid: request.oid,
                                        serial: revision.serial,
                                        next_serial,
                                        compression: Some(encoded.compression),
                                        checksum,
                                        data: encoded.data,
                                        data_serial: None,
                                    }
                                    .into(),
                                )
                            }
                        },
                    }
                }
            }
            Packet::AskStoreObject(request) => {
                let (conflict, deadlock, twice) = {
                    let mut script = storage.script.lock().unwrap();
                    let deadlock = if script.deadlock == Some(request.oid) {
                        script.deadlock.take()
                    } else {
                        None
                    };
                    let twice = script.answer_twice == Some(request.oid);
                    (script.conflicts.remove(&request.oid), deadlock, twice)
                };
                let answer = packets::AnswerStoreObject { conflict };
                let _ = connection.answer(msg_id, answer.clone()).await;
                if twice {
                    let _ = connection.answer(msg_id, answer).await;
                }
                if let Some(oid) = deadlock {
                    let _ = connection
                        .notify(packets::NotifyDeadlock {
                            ttid: request.ttid,
                            oid,
                        })
                        .await;
                }
                None
            }
            Packet::AskCheckCurrentSerial(_) => {
                Some(packets::AnswerCheckCurrentSerial { conflict: None }.into())
            }
            Packet::AskStoreTransaction(_) => Some(packets::AnswerStoreTransaction {}.into()),
            Packet::AskVoteTransaction(_) => Some(packets::AnswerVoteTransaction {}.into()),
            Packet::AskRelockObject(_) => {
                Some(packets::AnswerRelockObject { conflict: None }.into())
            }
            Packet::AskObjectUndoSerial(_) => Some(
                packets::AnswerObjectUndoSerial {
                    serials: neo_proto::Map(Default::default()),
                }
                .into(),
            ),
            Packet::AskTIDs(request) => {
                let script = storage.script.lock().unwrap();
                let mut tids: Vec<Tid> = script.transactions.keys().copied().collect();
                tids.sort_unstable_by(|a, b| b.cmp(a));
                let tids = tids
                    .into_iter()
                    .skip(request.first as usize)
                    .take((request.last - request.first) as usize)
                    .collect();
                Some(packets::AnswerTIDs { tids }.into())
            }
            Packet::AskTransactionInformation(request) => {
                let script = storage.script.lock().unwrap();
                Some(match script.transactions.get(&request.tid) {
                    Some((description, oids)) => packets::AnswerTransactionInformation {
                        tid: request.tid,
                        user: Bytes::new(),
                        description: description.clone(),
                        extension: Bytes::new(),
                        packed: false,
                        oids: oids.clone(),
                    }
                    .into(),
                    None => packets::Error::new(ErrorCode::TidNotFound, "").into(),
                })
            }
            _ => None,
        };
        if let Some(answer) = answer {
            let _ = connection.answer(msg_id, answer).await;
        }
    }
}

/// A master and `storages` storages; `partitions` rows, each on `replicas`
/// consecutive storages (round robin), all UP_TO_DATE.
pub struct Cluster {
    pub master: Arc<FakeMaster>,
    pub storages: Vec<Arc<FakeStorage>>,
}

impl Cluster {
    pub async fn start(storages: usize, partitions: usize, copies: usize) -> Cluster {
        let mut started = Vec::new();
        for number in 1..=storages {
            started.push(FakeStorage::start(number as i32).await);
        }
        let rows: Vec<Row> = (0..partitions)
            .map(|p| {
                (0..copies)
                    .map(|c| CellInfo {
                        nid: started[(p + c) % storages].nid,
                        state: CellState::UpToDate,
                    })
                    .collect()
            })
            .collect();
        let master = FakeMaster::start(MasterScript {
            cluster: CLUSTER.into(),
            storages: started.iter().map(|s| (s.nid, s.address.clone())).collect(),
            rows,
            last_tid: Tid(FIRST_TID),
            next_oid: 1,
            identify_error: None,
            redirect: None,
            close_on_finish: false,
            final_tids: HashMap::new(),
            next_client: 0,
        })
        .await;
        Cluster {
            master,
            storages: started,
        }
    }

    pub fn config(&self) -> neo_client::ClientConfig {
        let mut config = neo_client::ClientConfig::new(vec![self.master.address()], CLUSTER);
        config.ready_timeout = Duration::from_secs(5);
        config.retry_interval = Duration::from_millis(100);
        config
    }

    pub fn storage(&self, nid: NodeId) -> &Arc<FakeStorage> {
        self.storages.iter().find(|s| s.nid == nid).unwrap()
    }
}
