//! The primary master: finding it (architecture.md §2.4), the session that
//! follows its notifications (§1.4, §3.3, §7.4, §7.5), and requests whose
//! answers must be processed in order with those notifications
//! (`AskFinishTransaction`, `Ping`).
//!
//! One task (the supervisor) owns the master connection: it connects,
//! identifies, then reads every event of the connection in order until it
//! closes, and starts again. Everything else reads the state it publishes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use neo_cluster::{NodeTable, PartitionTable, PrimaryFinder};
use neo_net::{Connection, ConnectionConfig, Event, EventKind, Inbox, Token};
use neo_proto::packets::{self, NodeInfo, NotPrimaryMaster};
use neo_proto::{
    Address, ClusterState, ErrorCode, Map, NodeId, NodeState, NodeType, Oid, Packet, Tid, UnixTime,
    Value,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{ClientConfig, Invalidation};
use crate::error::ClientError;
use crate::storage::{Routes, StoragePool};
use crate::txn::TxnShared;
use crate::util::{lock, next_token};
use neo_net::master_list::MasterList;

/// Called with the final TID when `AnswerTransactionFinished` is processed,
/// in order with invalidations.
pub(crate) type FinishHook = Box<dyn FnOnce(Tid) + Send>;

/// What the client knows of the cluster, from the master's notifications.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub nodes: NodeTable,
    pub pt: Option<PartitionTable>,
    /// Our `id_timestamp`, from the first node notification about us.
    pub id_timestamp: Option<f64>,
    /// Timestamp of the last `NotifyNodeInformation`.
    pub last_notification: Option<f64>,
    pub cluster_state: Option<ClusterState>,
    /// `AnswerLastTransaction` was processed: invalidations count from now.
    pub got_last_tid: bool,
}

impl View {
    /// Usable: identified, last TID known, and every partition readable on
    /// a running storage (§3.5).
    pub fn is_ready(&self) -> bool {
        self.got_last_tid
            && self.id_timestamp.is_some()
            && self
                .pt
                .as_ref()
                .is_some_and(|pt| pt.is_operational(|nid| self.nodes.is_running(nid)))
    }
}

/// Requests to the master whose answers come through the session task, by
/// token: one per caller waiting, registered before its request is sent.
#[derive(Default)]
struct Waiters {
    closed: bool,
    waiting: HashMap<Token, oneshot::Sender<Option<Packet>>>,
}

/// One identified connection to the primary master, and everything that is
/// only valid with it: our node id, the PT, storage connections, OID pool.
pub(crate) struct Session {
    pub master: Connection,
    pub nid: NodeId,
    pub view: Mutex<View>,
    waiters: Mutex<Waiters>,
    finish_hooks: Mutex<HashMap<Tid, FinishHook>>,
    pub storages: StoragePool,
    /// OIDs from `AskNewOIDs`, discarded with the session (§6.3).
    pub oids: tokio::sync::Mutex<VecDeque<Oid>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("master", &self.master)
            .field("nid", &self.nid)
            .finish_non_exhaustive()
    }
}

/// A request sent to the master, its answer to come in order.
pub(crate) struct Ordered(oneshot::Receiver<Option<Packet>>);

impl Ordered {
    /// The answer; `None` if the master connection closed first.
    pub async fn answer(self) -> Option<Packet> {
        self.0.await.ok().flatten()
    }
}

impl Session {
    fn new(master: Connection, nid: NodeId) -> Session {
        Session {
            master,
            nid,
            view: Mutex::new(View::default()),
            waiters: Mutex::new(Waiters::default()),
            finish_hooks: Mutex::new(HashMap::new()),
            storages: StoragePool::default(),
            oids: tokio::sync::Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether the master connection of this session is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.master.is_closed()
    }

    /// Sends a request whose answer is processed by the session task in
    /// order with notifications. Fails if the request could not be sent.
    pub async fn send_ordered(&self, packet: impl Into<Packet>) -> Result<Ordered, ClientError> {
        let packet = packet.into();
        let name = packet.name();
        let token = next_token();
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = lock(&self.waiters);
            if waiters.closed {
                return Err(ClientError::master_lost(format!("sending {name}")));
            }
            waiters.waiting.insert(token, tx);
        }
        if let Err(error) = self.master.send_request(packet, token).await {
            lock(&self.waiters).waiting.remove(&token);
            return Err(ClientError::master_lost(format!("sending {name}: {error}")));
        }
        Ok(Ordered(rx))
    }

    /// [`Session::send_ordered`] and wait for the answer.
    pub async fn ask_ordered(&self, packet: impl Into<Packet>) -> Result<Packet, ClientError> {
        let packet = packet.into();
        let name = packet.name();
        self.send_ordered(packet)
            .await?
            .answer()
            .await
            .ok_or_else(|| ClientError::master_lost(format!("waiting for the answer to {name}")))
    }

    /// Registers what to do when transaction `ttid` is finished (before
    /// sending `AskFinishTransaction`, so that it runs in order).
    pub fn on_finish(&self, ttid: Tid, hook: FinishHook) {
        lock(&self.finish_hooks).insert(ttid, hook);
    }

    /// Takes back a hook that will not run.
    pub fn take_finish_hook(&self, ttid: Tid) -> Option<FinishHook> {
        lock(&self.finish_hooks).remove(&ttid)
    }

    fn deliver(&self, token: Token, answer: Option<Packet>) {
        // No waiter: it gave up (its send failed), or the session closed.
        if let Some(tx) = lock(&self.waiters).waiting.remove(&token) {
            let _ = tx.send(answer);
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut waiters = lock(&self.waiters);
        waiters.closed = true;
        // Dropping the senders tells every waiter there is no answer.
        waiters.waiting.clear();
        drop(waiters);
        lock(&self.finish_hooks).clear();
    }

    /// The partition table's number of partitions, once known.
    pub fn partitions(&self) -> Option<u32> {
        lock(&self.view).pt.as_ref().map(PartitionTable::partitions)
    }
}

/// The connection state every operation looks at.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnState {
    /// The current session, ready or not.
    pub session: Option<Arc<Session>>,
    /// The session is usable (see [`View::is_ready`]).
    pub ready: bool,
    /// Why the last attempt to reach the primary failed.
    pub last_error: Option<String>,
    /// The client was closed.
    pub closed: bool,
}

/// State shared by the client handles and its tasks.
pub(crate) struct Shared {
    pub config: ClientConfig,
    /// `config.connection` with the handshake bounded by `connect_timeout`.
    pub connection_config: ConnectionConfig,
    pub state: watch::Sender<ConnState>,
    /// The last committed TID known (§7.4); survives reconnections.
    pub last_tid: Mutex<Option<Tid>>,
    /// Where storage connections send their events.
    pub storage_events: mpsc::Sender<Event>,
    /// Answers of storage requests pipelined by transactions.
    pub routes: Mutex<Routes>,
    /// Transactions in progress, by TTID (for `NotifyDeadlock` and lost
    /// storage connections).
    pub transactions: Mutex<HashMap<Tid, Weak<TxnShared>>>,
    /// When a connection to a storage last failed, to try it last.
    pub failures: Mutex<HashMap<NodeId, Instant>>,
    pub rng: AtomicU64,
    /// Runtime the client tasks run on (for best-effort aborts on drop).
    pub runtime: tokio::runtime::Handle,
    /// The masters known: configured, in the dynamic master list, learnt.
    pub masters: Mutex<MasterList>,
}

impl Shared {
    pub fn new(
        config: ClientConfig,
        storage_events: mpsc::Sender<Event>,
        runtime: tokio::runtime::Handle,
    ) -> Shared {
        let mut connection_config = config.connection.clone();
        connection_config.handshake_timeout = connection_config
            .handshake_timeout
            .min(config.connect_timeout);
        let masters = MasterList::new(&config.masters, config.dynamic_master_list.clone());
        Shared {
            masters: Mutex::new(masters),
            config,
            connection_config,
            state: watch::channel(ConnState::default()).0,
            last_tid: Mutex::new(None),
            storage_events,
            routes: Mutex::new(Routes::default()),
            transactions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            rng: AtomicU64::new(crate::util::seed()),
            runtime,
        }
    }

    /// The ready session, waiting up to `ready_timeout` for one.
    pub async fn session(&self) -> Result<Arc<Session>, ClientError> {
        {
            // Fast path: no allocation, no task switch.
            let state = self.state.borrow();
            if state.closed {
                return Err(ClientError::Closed);
            }
            if let (true, Some(session)) = (state.ready, &state.session) {
                return Ok(session.clone());
            }
        }
        let mut rx = self.state.subscribe();
        let wait = async {
            rx.wait_for(|state| state.closed || (state.ready && state.session.is_some()))
                .await
                .ok()
                .and_then(|state| state.session.clone().filter(|_| !state.closed))
        };
        match tokio::time::timeout(self.config.ready_timeout, wait).await {
            Ok(Some(session)) => Ok(session),
            Ok(None) => Err(ClientError::Closed),
            Err(_) => {
                let state = self.state.borrow();
                Err(ClientError::NotConnected {
                    waited: self.config.ready_timeout,
                    last_error: state.last_error.clone().unwrap_or_else(|| {
                        if state.session.is_some() {
                            "connected, but the partition table is not operational".into()
                        } else {
                            "no answer from any master yet".into()
                        }
                    }),
                })
            }
        }
    }

    /// The current session if it is ready, without waiting.
    pub fn current_session(&self) -> Option<Arc<Session>> {
        let state = self.state.borrow();
        state.session.clone().filter(|_| state.ready)
    }

    fn set_error(&self, error: String) {
        tracing::info!("primary master: {error}");
        self.state
            .send_modify(|state| state.last_error = Some(error));
    }

    fn notify(&self, invalidation: &Invalidation) {
        if let Some(listener) = &self.config.invalidation_listener {
            listener(invalidation);
        }
    }

    /// Raises `last_tid`; never lowers it except on reconnection.
    pub fn advance_last_tid(&self, tid: Tid) {
        let mut last = lock(&self.last_tid);
        match *last {
            Some(known) if known >= tid => {}
            _ => *last = Some(tid),
        }
    }

    /// Stops everything: no more reconnections, connections closed.
    pub async fn shutdown(&self) {
        let session = self.state.borrow().session.clone();
        self.state.send_modify(|state| {
            state.closed = true;
            state.ready = false;
        });
        if let Some(session) = session {
            session.close();
            session.storages.close_all().await;
            session.master.close().await;
        }
    }
}

/// Why one attempt to identify to a master failed.
enum Attempt {
    /// A secondary master told us where the primary is.
    Redirect(NotPrimaryMaster),
    Failed(String),
}

/// The client's clock for [`PrimaryFinder`]: seconds since the client
/// started, monotonic.
struct RetryClock {
    start: Instant,
}

impl RetryClock {
    fn now(&self) -> UnixTime {
        self.start.elapsed().as_secs_f64()
    }

    /// Real time from `now` until `at`.
    fn until(&self, at: UnixTime, now: UnixTime) -> Duration {
        Duration::from_secs_f64((at - now).max(0.0))
    }
}

/// The next master to try, waiting until the attempt is due.
async fn next_master(finder: &mut PrimaryFinder, clock: &RetryClock) -> Address {
    loop {
        let now = clock.now();
        if let Some(address) = finder.due(now) {
            return address;
        }
        let at = finder.deadline().unwrap_or(now);
        tokio::time::sleep(clock.until(at, now)).await;
    }
}

/// Finds the primary master and follows it, forever (until shutdown).
pub(crate) async fn supervise(shared: Arc<Shared>) {
    let known = lock(&shared.masters).known().to_vec();
    let Some(finder) = PrimaryFinder::new(&known) else {
        shared.set_error("no master address configured".into());
        return;
    };
    let mut finder = finder.with_retry_interval(shared.config.retry_interval.as_secs_f64());
    let clock = RetryClock {
        start: Instant::now(),
    };
    let mut preferred: Option<Address> = None;
    let mut previous_nid: Option<NodeId> = None;
    loop {
        if shared.state.borrow().closed {
            return;
        }
        for address in lock(&shared.masters).known() {
            finder.learn(address);
        }
        finder.schedule(preferred.take(), clock.now());
        let address = next_master(&mut finder, &clock).await;
        match identify(&shared, &address, previous_nid).await {
            Ok((connection, inbox, nid)) => {
                neo_log::set_node(&nid.to_string());
                tracing::info!(%address, %nid, "identified to the primary master");
                previous_nid = Some(nid);
                let error = run_session(&shared, connection, inbox, nid).await;
                shared.set_error(format!(
                    "connection to primary master {address} lost: {error}"
                ));
                // The same master first: it is probably back.
                preferred = Some(address);
            }
            Err(Attempt::Redirect(redirect)) => {
                preferred = finder.redirected(&redirect);
                lock(&shared.masters).learn(&redirect.known_masters);
                shared.set_error(format!(
                    "{address} is not the primary master (primary: {})",
                    preferred
                        .as_ref()
                        .map_or_else(|| "unknown".to_owned(), ToString::to_string)
                ));
            }
            Err(Attempt::Failed(error)) => shared.set_error(error),
        }
    }
}

/// Connects to `address` and identifies as a client.
async fn identify(
    shared: &Shared,
    address: &Address,
    previous_nid: Option<NodeId>,
) -> Result<(Connection, Inbox, NodeId), Attempt> {
    let timeout = shared.config.connect_timeout;
    let connect = neo_net::connect_alone(address, &shared.connection_config);
    let (connection, mut inbox) = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(error)) => return Err(Attempt::Failed(format!("master {address}: {error}"))),
        Err(_) => {
            return Err(Attempt::Failed(format!(
                "master {address}: no connection within {timeout:?}"
            )))
        }
    };
    let extra = if shared.config.read_only {
        Map(vec![("read_only".to_owned(), Value::Bool(true))])
    } else {
        Map::new()
    };
    let request = packets::RequestIdentification {
        node_type: NodeType::Client,
        nid: previous_nid,
        address: None,
        cluster: shared.config.cluster.clone(),
        id_timestamp: None,
        extra,
    };
    let exchange = async {
        let identification = next_token();
        connection
            .send_request(request, identification)
            .await
            .map_err(|e| Attempt::Failed(format!("master {address}: {e}")))?;
        // Bounded by the timeout around this block.
        loop {
            let Some(event) = inbox.recv().await else {
                return Err(Attempt::Failed(format!(
                    "master {address}: connection closed"
                )));
            };
            match event.kind {
                EventKind::Answer { token, packet } if token == identification => {
                    return match packet {
                        Packet::AcceptIdentification(accept) => {
                            match (accept.node_type, accept.your_nid) {
                                (NodeType::Master, Some(nid)) => Ok(nid),
                                (NodeType::Master, None) => Err(Attempt::Failed(format!(
                                    "master {address} gave us no node id"
                                ))),
                                (other, _) => Err(Attempt::Failed(format!(
                                    "{address} is a {other} node, not a master"
                                ))),
                            }
                        }
                        Packet::Error(error) => Err(Attempt::Failed(format!(
                            "master {address} refused identification: {error}"
                        ))),
                        other => Err(Attempt::Failed(format!(
                            "master {address} answered identification with {}",
                            other.name()
                        ))),
                    };
                }
                EventKind::Packet(frame) => match frame.packet {
                    Packet::NotPrimaryMaster(redirect) => return Err(Attempt::Redirect(redirect)),
                    other => tracing::debug!(
                        "master {address}: {} before identification, ignored",
                        other.name()
                    ),
                },
                EventKind::Closed(reason) => {
                    return Err(Attempt::Failed(match reason {
                        Some(error) => format!("master {address}: {error}"),
                        None => format!("master {address} closed the connection"),
                    }))
                }
                EventKind::Answer { .. }
                | EventKind::AnswerPart { .. }
                | EventKind::Unanswered { .. }
                | EventKind::Opened { .. } => {}
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(nid)) => Ok((connection, inbox, nid)),
        Ok(Err(error)) => {
            connection.close().await;
            Err(error)
        }
        Err(_) => {
            connection.close().await;
            Err(Attempt::Failed(format!(
                "master {address}: no identification answer within {timeout:?}"
            )))
        }
    }
}

/// Follows one master connection until it closes; returns why it closed.
async fn run_session(
    shared: &Arc<Shared>,
    connection: Connection,
    mut inbox: Inbox,
    nid: NodeId,
) -> String {
    let session = Arc::new(Session::new(connection.clone(), nid));
    shared.state.send_modify(|state| {
        state.session = Some(session.clone());
        state.ready = false;
    });
    let last_tid_request = next_token();
    let reason = match connection
        .send_request(packets::AskLastTransaction {}, last_tid_request)
        .await
    {
        Err(error) => error.to_string(),
        Ok(()) => follow(shared, &session, &mut inbox, last_tid_request).await,
    };
    session.close();
    shared.state.send_modify(|state| {
        if state
            .session
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, &session))
        {
            state.session = None;
            state.ready = false;
        }
    });
    session.storages.close_all().await;
    connection.close().await;
    reason
}

/// Processes the master's packets in order (the heart of §7.4).
async fn follow(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    inbox: &mut Inbox,
    last_tid_request: Token,
) -> String {
    let peer = session.master.peer().to_owned();
    let mut ready = false;
    loop {
        let Some(event) = inbox.recv().await else {
            return "connection closed".into();
        };
        match event.kind {
            EventKind::Packet(frame) => {
                if let Err(error) = on_packet(shared, session, frame).await {
                    tracing::warn!("primary master {peer}: {error}; closing");
                    return error;
                }
            }
            EventKind::Answer { token, packet } if token == last_tid_request => match packet {
                Packet::AnswerLastTransaction(answer) => {
                    on_last_transaction(shared, session, answer.tid);
                }
                other => return format!("unexpected answer to AskLastTransaction: {other:?}"),
            },
            EventKind::Answer { token, packet } => {
                if let Packet::AnswerTransactionFinished(finished) = &packet {
                    // Our own commit: visible before any later invalidation.
                    if let Some(hook) = session.take_finish_hook(finished.ttid) {
                        hook(finished.tid);
                    }
                    shared.advance_last_tid(finished.tid);
                }
                session.deliver(token, Some(packet));
            }
            EventKind::Unanswered { token } => session.deliver(token, None),
            // `connect_alone` never announces its connection, and nothing
            // a client asks is answered in parts.
            EventKind::Opened { .. } | EventKind::AnswerPart { .. } => {}
            EventKind::Closed(reason) => {
                return reason.map_or_else(|| "closed by the master".into(), |e| e.to_string())
            }
        }
        let now_ready = lock(&session.view).is_ready();
        if now_ready != ready {
            ready = now_ready;
            shared.state.send_modify(|state| {
                if state
                    .session
                    .as_ref()
                    .is_some_and(|current| Arc::ptr_eq(current, session))
                {
                    state.ready = now_ready;
                    if now_ready {
                        state.last_error = None;
                    }
                }
            });
        }
    }
}

fn on_last_transaction(shared: &Shared, session: &Session, tid: Tid) {
    let previous = *lock(&shared.last_tid);
    if let Some(previous) = previous {
        if previous != tid {
            // Newer: invalidations were missed; older: truncated (§7.5).
            shared.notify(&Invalidation::All { tid });
        }
    }
    *lock(&shared.last_tid) = Some(tid);
    lock(&session.view).got_last_tid = true;
}

async fn on_packet(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    frame: neo_proto::Frame,
) -> Result<(), String> {
    match frame.packet {
        Packet::NotifyNodeInformation(notification) => {
            let stopped = on_nodes(session, notification.timestamp, &notification.nodes);
            // Masters the primary knows: a failover may need them.
            let masters = notification
                .nodes
                .iter()
                .filter(|node| node.node_type == NodeType::Master)
                .filter_map(|node| node.address.as_ref());
            lock(&shared.masters).learn(masters);
            for nid in stopped {
                session.storages.drop_node(nid).await;
            }
        }
        Packet::SendPartitionTable(table) => {
            let pt = PartitionTable::from_rows(table.ptid, table.num_replicas, &table.rows)
                .map_err(|e| format!("bad partition table: {e}"))?;
            lock(&session.view).pt = Some(pt);
        }
        Packet::NotifyPartitionChanges(changes) => {
            let mut view = lock(&session.view);
            let pt = view
                .pt
                .as_mut()
                .ok_or("partition changes before the partition table")?;
            pt.apply_changes(changes.ptid, changes.num_replicas, &changes.changes)
                .map_err(|e| format!("partition table: {e}"))?;
        }
        Packet::NotifyClusterInformation(info) => {
            lock(&session.view).cluster_state = Some(info.state);
        }
        Packet::InvalidateObjects(invalidate) => {
            // Ignored until the last TID is known (§7.4 rule 1).
            if lock(&session.view).got_last_tid {
                let tid = invalidate.tid;
                shared.notify(&Invalidation::Objects {
                    tid,
                    oids: invalidate.oids,
                });
                shared.advance_last_tid(tid);
            }
        }
        Packet::Ping(_) => {
            let _ = session.master.answer(frame.msg_id, packets::Pong {}).await;
        }
        Packet::Error(error) => {
            if matches!(error.code, ErrorCode::ProtocolError | ErrorCode::NotReady) {
                return Err(format!("master sent {error}"));
            }
            tracing::warn!("primary master sent {error}");
        }
        other => tracing::debug!("primary master sent {}, ignored", other.name()),
    }
    Ok(())
}

/// Applies a node notification; returns the storages no longer running.
fn on_nodes(session: &Session, timestamp: f64, nodes: &[NodeInfo]) -> Vec<NodeId> {
    let mut view = lock(&session.view);
    if view.last_notification.is_some_and(|last| timestamp <= last) {
        tracing::warn!("node notification timestamps do not increase ({timestamp})");
    }
    view.last_notification = Some(timestamp);
    let mut stopped = Vec::new();
    for info in nodes {
        if info.nid == Some(session.nid) && info.id_timestamp.is_some() {
            view.id_timestamp = info.id_timestamp;
        }
        view.nodes.apply(info);
        if let (NodeType::Storage, Some(nid)) = (info.node_type, info.nid) {
            if info.state != NodeState::Running {
                stopped.push(nid);
            }
        }
    }
    stopped
}

/// How long to wait before giving up on the outcome of a commit whose
/// master connection was lost in `tpc_finish`.
pub(crate) const FINISH_RECOVERY: Duration = Duration::from_secs(600);
