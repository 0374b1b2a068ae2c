//! The tokio shell around [`Admin`]: accepts `neoctl` connections, makes
//! the master connections the state machine asks for, feeds every event to
//! it with the wall-clock time, and carries out its outputs. All decisions
//! are the state machine's.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use neo_net::{
    accept_loop, Connection, ConnectionConfig, ConnectionId, Event, EventKind, Listener, Registry,
};
use neo_proto::Address;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::{Admin, AdminConfig, ConfigError, Input, Output, Token};

/// Why the admin node could not run.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configuration cannot make an admin node.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Events of all connections, waiting for the state machine.
const EVENT_QUEUE: usize = 4096;

/// One connection attempt to a master: TCP connect plus handshake. A
/// black-holed address must not stall the search for the primary for the
/// system's multi-minute SYN timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the state machine is told that time passes.
const TICK: Duration = Duration::from_secs(1);

/// How long connections get to flush their last answers when exiting.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// What a connection attempt to a master gave.
enum Attempt {
    Connected(Connection, Address),
    Failed(Address),
}

/// The shell's view of the connections and of the requests in flight.
struct Shell {
    registry: Registry,
    /// Token of each request sent, by connection and msg_id.
    tokens: HashMap<(ConnectionId, u32), Token>,
    events: mpsc::Sender<Event>,
    attempts: mpsc::Sender<Attempt>,
    /// The connection attempt in progress, if any.
    connecting: Option<JoinHandle<()>>,
}

/// Runs an admin node: serves `neoctl` on `listener` and follows the
/// primary master among `config.masters`, reconnecting forever when it is
/// lost. Returns `Ok` once the cluster has been stopped (the master
/// announced STOPPING, then went away) or when `shutdown` completes.
pub async fn run(
    config: AdminConfig,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AdminError> {
    let mut admin = Admin::new(config)?;
    let (events, mut event_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let (accepted, mut accepted_rx) = mpsc::channel::<Connection>(64);
    let (attempts, mut attempt_rx) = mpsc::channel::<Attempt>(4);
    let accept_loop = tokio::spawn(accept_loop(listener, events.clone(), accepted));
    let mut shell = Shell {
        registry: Registry::new(),
        tokens: HashMap::new(),
        events,
        attempts,
        connecting: None,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut outputs = admin.handle(Input::Start, now());
    let exited = loop {
        if shell.apply(std::mem::take(&mut outputs)).await {
            break true;
        }
        outputs = tokio::select! {
            Some(connection) = accepted_rx.recv() => {
                let conn = connection.id().0;
                let early = shell.registry.register(connection);
                let mut outputs = admin.handle(Input::Accepted { conn }, now());
                outputs.extend(shell.replay(early, &mut admin));
                outputs
            }
            Some(attempt) = attempt_rx.recv() => {
                shell.connecting = None;
                match attempt {
                    Attempt::Connected(connection, address) => {
                        let conn = connection.id().0;
                        let early = shell.registry.register(connection);
                        let mut outputs =
                            admin.handle(Input::MasterConnected { conn, address }, now());
                        outputs.extend(shell.replay(early, &mut admin));
                        outputs
                    }
                    Attempt::Failed(address) => {
                        admin.handle(Input::MasterUnreachable { address }, now())
                    }
                }
            }
            Some(event) = event_rx.recv() => {
                let Some(event) = shell.registry.admit(event) else {
                    continue;
                };
                match shell.input_of(event) {
                    Some(input) => admin.handle(input, now()),
                    None => continue,
                }
            }
            _ = tick.tick() => admin.handle(Input::Tick, now()),
            () = &mut shutdown => break false,
        };
    };
    accept_loop.abort();
    if let Some(connecting) = shell.connecting.take() {
        connecting.abort();
    }
    // Let the last answers (the acknowledgement of `set cluster STOPPING`)
    // reach `neoctl`.
    shell.registry.close_all(&mut event_rx, DRAIN_TIMEOUT).await;
    if exited {
        tracing::info!("cluster stopped; admin exiting");
    } else {
        tracing::info!("admin shut down");
    }
    Ok(())
}

impl Shell {
    /// Feeds the events that arrived before their connection was registered.
    fn replay(&mut self, early: Vec<Event>, admin: &mut Admin) -> Vec<Output> {
        let mut outputs = Vec::new();
        for event in early {
            if let Some(input) = self.input_of(event) {
                outputs.extend(admin.handle(input, now()));
            }
        }
        outputs
    }

    fn input_of(&mut self, event: Event) -> Option<Input> {
        let id = event.connection;
        let conn = id.0;
        match event.kind {
            EventKind::Packet(frame) => Some(Input::Packet {
                conn,
                msg_id: frame.msg_id,
                packet: frame.packet,
            }),
            EventKind::Answer { msg_id, packet, .. } => {
                let token = self.tokens.remove(&(id, msg_id))?;
                Some(Input::Answer {
                    conn,
                    token,
                    packet,
                })
            }
            // The state machine learns it from the `Closed` that follows.
            EventKind::Unanswered { msg_id, .. } => {
                self.tokens.remove(&(id, msg_id));
                None
            }
            EventKind::Closed(reason) => {
                if let Some(error) = reason {
                    tracing::info!("connection {conn} closed: {error}");
                }
                self.tokens.retain(|(connection, _), _| *connection != id);
                Some(Input::Closed { conn })
            }
        }
    }

    /// Carries out the outputs; returns whether the admin must exit.
    async fn apply(&mut self, outputs: Vec<Output>) -> bool {
        let mut exit = false;
        for output in outputs {
            // A failed send means the connection is closing: its `Closed`
            // event will tell the state machine.
            match output {
                Output::Connect { address, delay } => self.connect(address, delay),
                Output::Request {
                    conn,
                    token,
                    packet,
                } => {
                    if let Some(msg_id) = self.registry.request(conn, packet).await {
                        // The answer cannot be processed before this:
                        // events are handled by this same task.
                        self.tokens.insert((ConnectionId(conn), msg_id), token);
                    }
                }
                Output::Answer {
                    conn,
                    msg_id,
                    packet,
                } => self.registry.answer(conn, msg_id, packet).await,
                Output::Notify { conn, packet } => self.registry.notify(conn, packet).await,
                Output::Close { conn } => self.registry.close(conn).await,
                Output::Exit => exit = true,
            }
        }
        exit
    }

    /// Starts one connection attempt, after `delay`; its outcome comes back
    /// through `attempts`.
    fn connect(&mut self, address: Address, delay: Duration) {
        if let Some(previous) = self.connecting.take() {
            previous.abort();
        }
        let events = self.events.clone();
        let attempts = self.attempts.clone();
        self.connecting = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let config = ConnectionConfig {
                handshake_timeout: CONNECT_TIMEOUT,
                ..ConnectionConfig::default()
            };
            let attempt =
                tokio::time::timeout(CONNECT_TIMEOUT, neo_net::connect(&address, events, &config))
                    .await;
            let outcome = match attempt {
                Ok(Ok(connection)) => Attempt::Connected(connection, address),
                Ok(Err(error)) => {
                    tracing::info!("cannot connect to master {address}: {error}");
                    Attempt::Failed(address)
                }
                Err(_) => {
                    tracing::info!("connection to master {address} timed out");
                    Attempt::Failed(address)
                }
            };
            let _ = attempts.send(outcome).await;
        }));
    }
}
