//! Storage nodes: connections made on demand (§9.3), answers of pipelined
//! requests routed to their transaction, and the choice of the cell a read
//! goes to (§7.2).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use neo_net::{AskError, ConnId, Connection, Event, EventKind, Token};
use neo_proto::packets;
use neo_proto::{ErrorCode, Map, NodeId, NodeType, Oid, Packet, Partition, Request, Tid};
use tokio::sync::mpsc;

use crate::error::ClientError;
use crate::master::{Session, Shared};
use crate::txn::{self, TxnShared};
use crate::util::{lock, next_random};

/// A storage whose connection failed this recently is tried last (§7.2).
const FAILURE_MEMORY: Duration = Duration::from_secs(600);

/// Connections to storage nodes of one master session (our node id and
/// `id_timestamp` are only valid with it).
#[derive(Default)]
pub(crate) struct StoragePool {
    connections: Mutex<HashMap<NodeId, Connection>>,
    /// One connection attempt at a time per node; others wait for it.
    connecting: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
}

impl StoragePool {
    fn get(&self, nid: NodeId) -> Option<Connection> {
        lock(&self.connections)
            .get(&nid)
            .filter(|connection| !connection.is_closed())
            .cloned()
    }

    /// Closes every connection (the session is over).
    pub async fn close_all(&self) {
        let connections: Vec<Connection> =
            lock(&self.connections).drain().map(|(_, c)| c).collect();
        for connection in connections {
            connection.close().await;
        }
    }

    /// Closes the connection to a storage the master says is not running.
    pub async fn drop_node(&self, nid: NodeId) {
        let connection = lock(&self.connections).remove(&nid);
        if let Some(connection) = connection {
            tracing::debug!(%nid, "storage no longer running, closing");
            connection.close().await;
        }
    }

    /// Forgets a closed connection; returns the node it was to.
    pub fn forget(&self, id: ConnId) -> Option<NodeId> {
        let mut connections = lock(&self.connections);
        let nid = connections
            .iter()
            .find(|(_, connection)| connection.id() == id)
            .map(|(nid, _)| *nid)?;
        connections.remove(&nid);
        Some(nid)
    }
}

impl Session {
    /// The connection to storage `nid`, connecting and identifying if
    /// needed: `(CLIENT, own nid, nil, cluster, own id_timestamp, {})`.
    pub async fn storage(&self, shared: &Shared, nid: NodeId) -> Result<Connection, ClientError> {
        if let Some(connection) = self.storages.get(nid) {
            return Ok(connection);
        }
        let gate = lock(&self.storages.connecting)
            .entry(nid)
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if let Some(connection) = self.storages.get(nid) {
            return Ok(connection);
        }
        let result = self.connect_storage(shared, nid).await;
        if result.is_err() {
            shared.note_failure(nid);
        }
        result
    }

    async fn connect_storage(
        &self,
        shared: &Shared,
        nid: NodeId,
    ) -> Result<Connection, ClientError> {
        if self.is_closed() {
            return Err(ClientError::master_lost("connecting to a storage"));
        }
        let (address, id_timestamp) = {
            let view = lock(&self.view);
            let node = view.nodes.get(nid).filter(|node| {
                node.node_type == NodeType::Storage && node.state == neo_proto::NodeState::Running
            });
            let address = node.and_then(|node| node.address.clone());
            (address, view.id_timestamp)
        };
        let address = address.ok_or_else(|| {
            ClientError::NoStorage(format!("storage {nid} is not known as running"))
        })?;
        let timeout = shared.config.connect_timeout;
        let connect = neo_net::connect(
            &address,
            shared.storage_events.clone(),
            &shared.connection_config,
        );
        let connection = tokio::time::timeout(timeout, connect).await.map_err(|_| {
            ClientError::NoStorage(format!(
                "storage {nid} at {address}: no connection within {timeout:?}"
            ))
        })??;
        let request = packets::RequestIdentification {
            node_type: NodeType::Client,
            nid: Some(self.nid),
            address: None,
            cluster: shared.config.cluster.clone(),
            id_timestamp,
            extra: Map::new(),
        };
        let accepted = match tokio::time::timeout(timeout, connection.ask(request)).await {
            Ok(Ok(accept)) => accept,
            Ok(Err(error)) => {
                connection.close().await;
                return Err(ClientError::from_ask("RequestIdentification", error));
            }
            Err(_) => {
                connection.close().await;
                return Err(ClientError::NoStorage(format!(
                    "storage {nid} at {address}: no identification answer within {timeout:?}"
                )));
            }
        };
        let valid = accepted.node_type == NodeType::Storage
            && accepted.nid == Some(nid)
            && accepted.your_nid.is_none_or_eq(self.nid);
        if !valid {
            connection.close().await;
            return Err(ClientError::Protocol {
                peer: address.to_string(),
                reason: format!(
                    "expected storage {nid}, got {} {:?} (our id {:?})",
                    accepted.node_type, accepted.nid, accepted.your_nid
                ),
            });
        }
        if self.is_closed() {
            connection.close().await;
            return Err(ClientError::master_lost("connecting to a storage"));
        }
        lock(&self.storages.connections).insert(nid, connection.clone());
        tracing::debug!(%nid, %address, "connected to storage");
        Ok(connection)
    }
}

trait NoneOrEq<T> {
    fn is_none_or_eq(&self, value: T) -> bool;
}

impl<T: PartialEq> NoneOrEq<T> for Option<T> {
    fn is_none_or_eq(&self, value: T) -> bool {
        match self {
            None => true,
            Some(mine) => *mine == value,
        }
    }
}

/// Where the answers to pipelined storage requests go: to the transaction
/// that sent each, by connection and token. A route is registered before
/// its request is sent and removed by its answer (or by the failure to
/// send it), so the map holds the requests in flight, which `store` bounds
/// in bytes and the machine to one relock per oid and storage.
///
/// A peer never sees our tokens: neo-net gives an answer the token of the
/// request pending under its msg_id on that same connection, once. So a
/// storage answering twice is a protocol error there (or, for an `Error`,
/// a packet answering nothing), and a storage cannot send a transaction
/// anything but the answer to that transaction's own request.
#[derive(Default)]
pub(crate) struct Routes {
    map: HashMap<(ConnId, Token), Weak<TxnShared>>,
}

impl Shared {
    /// Registers that the answer to `token` on `conn` goes to `txn`.
    pub fn route(&self, conn: ConnId, token: Token, txn: Weak<TxnShared>) {
        let previous = lock(&self.routes).map.insert((conn, token), txn);
        debug_assert!(previous.is_none(), "token {} routed twice", token.0);
    }

    /// Forgets a route whose request could not be sent.
    pub fn unroute(&self, conn: ConnId, token: Token) {
        lock(&self.routes).map.remove(&(conn, token));
    }

    fn on_routed(&self, conn: ConnId, token: Token, answer: Option<Packet>) {
        let route = lock(&self.routes).map.remove(&(conn, token));
        // No route: its sender failed to send it and said so itself. No
        // transaction: it is over, and so is its interest in answers.
        if let Some(txn) = route.and_then(|txn| txn.upgrade()) {
            txn.on_answer(token, answer);
        }
    }

    /// Remembers that a connection to `nid` failed.
    pub fn note_failure(&self, nid: NodeId) {
        lock(&self.failures).insert(nid, Instant::now());
    }

    /// Readable cells in the order to try them: random, with nodes that
    /// failed recently last, oldest failure first.
    pub fn read_order(&self, mut cells: Vec<NodeId>) -> Vec<NodeId> {
        if cells.len() > 1 {
            let start = (next_random(&self.rng) % cells.len() as u64) as usize;
            cells.rotate_left(start);
            let failures = lock(&self.failures);
            let now = Instant::now();
            let failed_at = |nid: &NodeId| {
                failures
                    .get(nid)
                    .filter(|at| now.duration_since(**at) < FAILURE_MEMORY)
                    .copied()
            };
            // Stable: the random order stays among nodes that did not fail.
            cells.sort_by_key(|nid| failed_at(nid));
        }
        cells
    }
}

/// Reads the events of every storage connection: routed answers,
/// `NotifyDeadlock`, closures.
pub(crate) async fn dispatch(shared: Arc<Shared>, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        let conn = event.conn;
        match event.kind {
            EventKind::Answer { token, packet } => shared.on_routed(conn, token, Some(packet)),
            EventKind::Unanswered { token } => shared.on_routed(conn, token, None),
            EventKind::Packet(frame) => match frame.packet {
                Packet::NotifyDeadlock(deadlock) => {
                    txn::on_deadlock(&shared, conn, deadlock.ttid, deadlock.oid)
                }
                Packet::Error(error) => tracing::warn!("storage sent {error}"),
                other => tracing::debug!("storage sent {}, ignored", other.name()),
            },
            EventKind::Closed(reason) => {
                let session = shared.state.borrow().session.clone();
                let nid = session.and_then(|session| session.storages.forget(conn));
                if let Some(nid) = nid {
                    if let Some(reason) = &reason {
                        tracing::info!(%nid, "storage connection lost: {reason}");
                        shared.note_failure(nid);
                    }
                }
                txn::on_storage_lost(&shared, conn);
            }
            // Storage connections are made with `neo_net::connect`, which
            // never announces them: one nobody asked for is not kept open.
            EventKind::Opened { connection, .. } => connection.abort(),
            // Nothing a client asks is answered in parts.
            EventKind::AnswerPart { .. } => {}
        }
    }
}

/// Which partition a read is about.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ReadKey {
    Oid(Oid),
    Tid(Tid),
    Partition(Partition),
}

/// What a read does with one answer.
pub(crate) enum Next<T> {
    /// Done.
    Done(T),
    /// This cell's answer is not usable (bad checksum...): try another.
    Another(String),
    /// Stop with this error.
    Fail(ClientError),
}

/// Asks `request` to readable cells of the partition of `key` until one
/// gives a usable answer (§7.2): on `NON_READABLE_CELL`, a connection
/// failure or what `check` refuses, the next cell; after a full round, a
/// `Ping` to the master (a PT update may be in flight) and one more round.
pub(crate) async fn ask_readable<R, T>(
    shared: &Shared,
    key: ReadKey,
    request: R,
    exclude: &[NodeId],
    mut check: impl FnMut(NodeId, Result<R::Answer, packets::Error>) -> Next<T>,
) -> Result<T, ClientError>
where
    R: Request + Clone,
{
    let mut failures: Vec<String> = Vec::new();
    for round in 0..2 {
        let session = shared.session().await?;
        let cells: Vec<NodeId> = {
            let view = lock(&session.view);
            match &view.pt {
                Some(pt) => {
                    let partition = match key {
                        ReadKey::Oid(oid) => pt.partition_of_oid(oid),
                        ReadKey::Tid(tid) => pt.partition_of_tid(tid),
                        ReadKey::Partition(partition) => partition,
                    };
                    pt.readable_cells(partition)
                        .map(|cell| cell.nid)
                        .filter(|nid| view.nodes.is_running(*nid) && !exclude.contains(nid))
                        .collect()
                }
                None => Vec::new(),
            }
        };
        if cells.is_empty() {
            failures.push("no readable cell on a running storage".into());
        }
        for nid in shared.read_order(cells) {
            let connection = match session.storage(shared, nid).await {
                Ok(connection) => connection,
                Err(error) => {
                    failures.push(format!("{nid}: {error}"));
                    continue;
                }
            };
            let answer = match connection.ask(request.clone()).await {
                Ok(answer) => Ok(answer),
                Err(AskError::Refused { error, .. })
                    if error.code == ErrorCode::NonReadableCell =>
                {
                    failures.push(format!("{nid}: {error}"));
                    continue;
                }
                Err(AskError::Refused { error, .. }) => Err(error),
                Err(AskError::Net(error)) => {
                    shared.note_failure(nid);
                    failures.push(format!("{nid}: {error}"));
                    continue;
                }
            };
            match check(nid, answer) {
                Next::Done(value) => return Ok(value),
                Next::Fail(error) => return Err(error),
                Next::Another(why) => failures.push(format!("{nid}: {why}")),
            }
        }
        if round == 0 {
            // A barrier: partition table changes in flight are applied.
            let _ = session.ask_ordered(packets::Ping {}).await;
        }
    }
    Err(ClientError::NoStorage(failures.join("; ")))
}
