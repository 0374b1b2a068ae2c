//! The one shell that runs any node's state machine ([`Node`]) on real
//! connections: it accepts peers on the node's listener (a bounded number
//! of them), makes the connections the node asks for, feeds every event
//! with the wall-clock time, wakes the node when its timer is due, and
//! carries out its outputs. All decisions are the node's.
//!
//! Every connection's events go through one bounded channel; a connection
//! announces itself there ([`EventKind::Opened`]) before its first packet,
//! so the shell never sees a packet of a connection it does not know and
//! nothing is parked.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use neo_proto::packets::Error as ErrorPacket;
use neo_proto::{Address, ErrorCode, Packet, UnixTime};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::connection::{Announce, Connection, ConnectionConfig, Event, EventKind, Outgoing};
use crate::error::NetError;
use crate::node::{ConnId, Input, Node, Output, Token};
use crate::tcp::{connect_announced, Accepted, Listener};

/// How a shell treats its connections; the defaults suit every node.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// Most connections accepted on the listener at once; more peers are
    /// refused with `NOT_READY` (NEO's "retry later").
    pub max_connections: usize,
    /// How long one connection attempt (TCP connect and handshake) may
    /// take: a black-holed address must not stall the node's search for a
    /// peer for the system's multi-minute SYN timeout.
    pub connect_timeout: Duration,
    /// How long connections get to flush their last packets when the node
    /// stops.
    pub drain_timeout: Duration,
    /// How long one send may wait for a peer that does not read before
    /// that connection is aborted: one stuck peer must not hold up the
    /// node.
    pub send_timeout: Duration,
    /// Tunables of each connection.
    pub connection: ConnectionConfig,
}

impl Default for ShellConfig {
    fn default() -> Self {
        ShellConfig {
            max_connections: MAX_CONNECTIONS,
            connect_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
            connection: ConnectionConfig::default(),
        }
    }
}

/// Default limit on accepted connections: far above what a cluster's
/// clients and nodes need, far below a process's descriptors.
pub const MAX_CONNECTIONS: usize = 4096;

/// Events of all connections waiting for the node; when the node falls
/// behind, readers stop reading and TCP pushes back.
const EVENT_QUEUE: usize = 4096;

/// At most this many events are handled before the node's outputs are
/// carried out, so that answers keep flowing under a steady stream of
/// requests.
const BATCH: usize = 64;

/// Refusals of peers over the connection limit in progress at once; more
/// are dropped at once.
const MAX_REFUSALS: usize = 16;

/// How long a refused peer gets to send its first packet.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a node's shell stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The node decided it cannot go on (its own reason).
    #[error("{0}")]
    Node(String),
    /// The listening socket failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The node's thread could not be started or died.
    #[error("{0}")]
    Thread(String),
}

/// The wall clock, as nodes are given it.
pub fn now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// Runs `node` until it exits or `shutdown` completes, serving peers on
/// `listener` if it has one. A node's TLS is that of its connection
/// config or else its listener's: all its connections, accepted or made,
/// use it (protocol.md §1.3).
pub async fn run<N: Node>(
    node: &mut N,
    listener: Option<Listener>,
    config: ShellConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ShellError> {
    let (_, completions) = mpsc::channel(1);
    run_with_completions(node, listener, config, shutdown, completions).await
}

/// Work done for a node outside its connections (a task its owner
/// started: an e-mail sent, a question of a local HTTP client) reporting
/// back: applied to the node, with the time, between two batches of
/// events, like an input.
pub type Completion<N> = Box<dyn FnOnce(&mut N, UnixTime) + Send>;

/// [`run`], also applying what arrives on `completions` to the node
/// (whose outputs are then carried out as after any input).
pub async fn run_with_completions<N: Node>(
    node: &mut N,
    listener: Option<Listener>,
    mut config: ShellConfig,
    shutdown: impl Future<Output = ()>,
    mut completions: mpsc::Receiver<Completion<N>>,
) -> Result<(), ShellError> {
    if config.connection.tls.is_none() {
        config.connection.tls = listener.as_ref().and_then(|l| l.tls().cloned());
    }
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    let (failed_tx, mut failed) = mpsc::channel::<Token>(64);
    let mut tasks = JoinSet::new();
    if let Some(listener) = listener {
        tasks.spawn(accept_loop(listener, events_tx.clone(), config.clone()));
    }
    let mut shell = Shell {
        connections: HashMap::new(),
        events: events_tx,
        failed: failed_tx,
        config,
    };
    tokio::pin!(shutdown);
    node.handle(Input::Start, now());
    let mut exit = shell.apply(node.poll_output(), &mut tasks).await;
    while exit.is_none() {
        let timer = node
            .poll_timeout()
            .map(|due| Duration::from_secs_f64((due - now()).max(0.0)));
        tokio::select! {
            // Connections first: the node's own timers (background work
            // among them) wait for what peers sent.
            biased;
            () = &mut shutdown => break,
            Some(event) = events.recv() => {
                let mut next = Some(event);
                let mut fed = 0;
                while let Some(event) = next.take() {
                    if let Some(input) = shell.input_of(event) {
                        node.handle(input, now());
                        fed += 1;
                    }
                    if fed < BATCH {
                        next = events.try_recv().ok();
                    }
                }
            }
            Some(token) = failed.recv() => node.handle(Input::ConnectFailed { token }, now()),
            Some(complete) = completions.recv() => complete(node, now()),
            () = sleep(timer) => {}
        }
        // Due timers run after every batch, so a steady stream of events
        // cannot starve them (nor the node's background work).
        let now = now();
        if node.poll_timeout().is_some_and(|due| due <= now) {
            node.handle(Input::Timeout, now);
        }
        exit = shell.apply(node.poll_output(), &mut tasks).await;
    }
    tasks.abort_all();
    shell.close_all(&mut events).await;
    match exit {
        Some(Err(reason)) => Err(ShellError::Node(reason)),
        _ => Ok(()),
    }
}

/// [`run`] on a thread of its own, with a single-threaded runtime: a
/// request is read, served and answered on that one thread with no
/// hand-off between threads, and work the node does synchronously (the
/// storage's database) never holds up the caller's runtime.
pub async fn run_on_own_thread<N: Node + Send + 'static>(
    name: &str,
    mut node: N,
    listener: Option<Listener>,
    config: ShellConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ShellError> {
    let tls = listener.as_ref().and_then(|l| l.tls().cloned());
    let listener = listener.map(Listener::into_std).transpose()?;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move {
                    let listener = listener
                        .map(|l| Listener::from_std(l).map(|l| l.with_tls(tls)))
                        .transpose()?;
                    run(&mut node, listener, config, shutdown).await
                }),
                Err(error) => Err(ShellError::Thread(format!(
                    "cannot start a runtime: {error}"
                ))),
            };
            let _ = done.send(result);
        })
        .map_err(|error| ShellError::Thread(format!("cannot start the {name} thread: {error}")))?;
    result
        .await
        .map_err(|_| ShellError::Thread(format!("the {name} thread died")))?
}

/// Sleeps `duration`, or forever without one.
async fn sleep(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// What to do on one connection, in order.
enum Step {
    /// Packets, written together.
    Send(Vec<Outgoing>),
    CloseClient,
    Close,
}

/// The steps of one turn of the node, by connection, the connections in
/// the order the node first named them. Packets on different connections
/// are not ordered anyway (each peer reads its own socket), so this only
/// groups each connection's packets into one write and keeps their order.
#[derive(Default)]
struct Plan {
    connections: Vec<(ConnId, Vec<Step>)>,
}

impl Plan {
    fn steps(&mut self, conn: ConnId) -> &mut Vec<Step> {
        let index = match self.connections.iter().position(|(c, _)| *c == conn) {
            Some(index) => index,
            None => {
                self.connections.push((conn, Vec::new()));
                self.connections.len() - 1
            }
        };
        &mut self.connections[index].1
    }

    fn send(&mut self, conn: ConnId, outgoing: Outgoing) {
        let steps = self.steps(conn);
        match steps.last_mut() {
            Some(Step::Send(packets)) => packets.push(outgoing),
            _ => steps.push(Step::Send(vec![outgoing])),
        }
    }
}

/// The shell's view of the node's connections.
struct Shell {
    connections: HashMap<ConnId, Connection>,
    events: mpsc::Sender<Event>,
    failed: mpsc::Sender<Token>,
    config: ShellConfig,
}

impl Shell {
    /// What the node is told of `event`, if anything.
    fn input_of(&mut self, event: Event) -> Option<Input> {
        let conn = event.conn;
        match event.kind {
            EventKind::Opened { connection, token } => {
                self.connections.insert(conn, connection);
                Some(match token {
                    Some(token) => Input::Connected { conn, token },
                    None => Input::Accepted { conn },
                })
            }
            EventKind::Packet(frame) => Some(Input::Packet {
                conn,
                msg_id: frame.msg_id,
                packet: frame.packet,
            }),
            EventKind::AnswerPart { token, packet } => Some(Input::AnswerPart {
                conn,
                token,
                packet,
            }),
            EventKind::Answer { token, packet } => Some(Input::Answer {
                conn,
                token,
                packet,
            }),
            // Nodes learn it from the `Closed` that follows.
            EventKind::Unanswered { .. } => None,
            EventKind::Closed(reason) => {
                let connection = self.connections.remove(&conn)?;
                if let Some(error) = reason {
                    tracing::info!(
                        peer = connection.peer(),
                        "connection {conn} closed: {error}"
                    );
                }
                Some(Input::Closed { conn })
            }
        }
    }

    /// Carries out the outputs; `Some` once the node exits.
    async fn apply(
        &mut self,
        outputs: Vec<Output>,
        tasks: &mut JoinSet<()>,
    ) -> Option<Result<(), String>> {
        let mut exit = None;
        let mut plan = Plan::default();
        for output in outputs {
            match output {
                Output::Answer {
                    conn,
                    msg_id,
                    packet,
                } => plan.send(conn, Outgoing::Answer(msg_id, packet)),
                Output::Notify { conn, packet } => plan.send(conn, Outgoing::Notify(packet)),
                Output::Request {
                    conn,
                    token,
                    packet,
                } => plan.send(conn, Outgoing::Request(token, packet)),
                Output::CloseClient { conn } => plan.steps(conn).push(Step::CloseClient),
                Output::Close { conn } => plan.steps(conn).push(Step::Close),
                Output::Connect { token, address } => {
                    tasks.spawn(connect(
                        address,
                        token,
                        self.events.clone(),
                        self.failed.clone(),
                        self.config.clone(),
                    ));
                }
                Output::Exit(result) => exit = Some(result),
            }
        }
        for (conn, steps) in plan.connections {
            for step in steps {
                self.carry_out(conn, step).await;
            }
        }
        exit
    }

    /// Carries out a step on `conn`, if it is still there, within the send
    /// timeout. A failed send means the connection is closing: its
    /// `Closed` event tells the node.
    async fn carry_out(&self, conn: ConnId, step: Step) {
        let Some(connection) = self.connections.get(&conn) else {
            return;
        };
        let limit = self.config.send_timeout;
        match step {
            Step::Send(packets) => {
                bounded(connection, limit, connection.send_batch(packets)).await;
            }
            Step::CloseClient => {
                bounded(connection, limit, connection.close_client()).await;
            }
            Step::Close => {
                bounded(connection, limit, connection.close()).await;
            }
        }
    }

    /// Closes every connection, then waits (at most the drain timeout)
    /// until their `Closed` events say the last packets were flushed.
    async fn close_all(&mut self, events: &mut mpsc::Receiver<Event>) {
        for connection in self.connections.values() {
            bounded(connection, self.config.send_timeout, connection.close()).await;
        }
        let drain = async {
            while !self.connections.is_empty() {
                match events.recv().await {
                    Some(Event {
                        conn,
                        kind: EventKind::Closed(_),
                    }) => {
                        self.connections.remove(&conn);
                    }
                    // Late arrivals are closed too.
                    Some(Event {
                        kind: EventKind::Opened { connection, .. },
                        ..
                    }) => connection.abort(),
                    Some(_) => {}
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(self.config.drain_timeout, drain).await;
    }
}

/// Runs a send, aborting the connection if it takes longer than `limit`
/// (the peer stopped reading and its socket buffer is full).
async fn bounded<T>(
    connection: &Connection,
    limit: Duration,
    send: impl Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout(limit, send).await {
        Ok(result) => Some(result),
        Err(_) => {
            tracing::warn!(peer = connection.peer(), "peer does not read");
            connection.abort();
            None
        }
    }
}

/// One connection attempt the node asked for; its outcome is the
/// connection's `Opened` event, or `token` sent to `failed`.
async fn connect(
    address: Address,
    token: Token,
    events: mpsc::Sender<Event>,
    failed: mpsc::Sender<Token>,
    config: ShellConfig,
) {
    let announce = Announce::Opened {
        token: Some(token),
        permit: None,
    };
    let attempt = connect_announced(&address, events, &config.connection, announce);
    let error = match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(Ok(_)) => return,
        Ok(Err(error)) if error.is_tls() => {
            tracing::warn!("cannot connect to {address}: {error}");
            let _ = failed.send(token).await;
            return;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!(
            "no connection within {} s",
            config.connect_timeout.as_secs()
        ),
    };
    tracing::info!("cannot connect to {address}: {error}");
    let _ = failed.send(token).await;
}

/// Accepts connections forever, at most `max_connections` at once: each
/// handshake runs in a task of its own so a slow peer holds up nobody;
/// established connections announce themselves on `events`.
async fn accept_loop(listener: Listener, events: mpsc::Sender<Event>, config: ShellConfig) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    loop {
        let incoming = match listener.accept().await {
            Ok(incoming) => incoming,
            Err(error) => {
                tracing::warn!("{error}");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                peer = incoming.peer(),
                limit = config.max_connections,
                "too many connections: refusing"
            );
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                let connection = config.connection.clone();
                let limit = config.max_connections;
                tokio::spawn(async move {
                    refuse(incoming, connection, limit).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let events = events.clone();
        let connection = config.connection.clone();
        tokio::spawn(async move {
            let announce = Announce::Opened {
                token: None,
                permit: Some(permit),
            };
            match incoming.establish(events, &connection, announce).await {
                Err(error) if error.is_tls() => tracing::warn!("{error}"),
                Err(error) => tracing::info!("{error}"),
                Ok(_) => {}
            }
        });
    }
}

/// Refuses a peer over the connection limit as a NEO node refuses what it
/// cannot serve yet: its first request is answered `NOT_READY`, which makes
/// NEO nodes try again later, then the connection is closed.
async fn refuse(incoming: Accepted, config: ConnectionConfig, limit: usize) {
    let exchange = async {
        let (connection, mut inbox) = incoming.open(&config).await.ok()?;
        if let Some(Event {
            kind: EventKind::Packet(frame),
            ..
        }) = inbox.recv().await
        {
            let message = format!("too many connections (at most {limit}): retry later");
            let error: Packet = ErrorPacket::new(ErrorCode::NotReady, message).into();
            let _ = connection.answer(frame.msg_id, error).await;
        }
        connection.close().await;
        Some(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, exchange).await;
}
