//! The tokio shell around [`Master`]: accepts connections, feeds their
//! events to the state machine with the wall-clock time, and carries out
//! its outputs. All decisions are the state machine's.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use neo_net::{Connection, ConnectionConfig, ConnectionId, Event, EventKind, Listener};
use tokio::sync::mpsc;

use crate::app::{Input, Master, MasterConfig, Output};

/// Why the master stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration cannot make a cluster.
    #[error("invalid configuration: {0}")]
    Config(#[from] neo_cluster::PtError),
    /// The listening socket failed.
    #[error(transparent)]
    Net(#[from] neo_net::NetError),
}

/// Events of all connections, waiting for the state machine.
const EVENT_QUEUE: usize = 4096;

/// How long connections get to flush when the cluster stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// Runs a primary master on `listener` until the cluster is stopped
/// (`neoctl set cluster STOPPING`) or `shutdown` completes.
pub async fn run(
    config: MasterConfig,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let mut master = Master::new(config)?;
    let (events, mut event_rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let (connected, mut connected_rx) = mpsc::channel::<Connection>(64);
    let accept_loop = tokio::spawn(accept_loop(listener, events, connected));
    let mut connections: HashMap<ConnectionId, Connection> = HashMap::new();
    // Events that overtook the registration of their connection.
    let mut early: HashMap<ConnectionId, Vec<Event>> = HashMap::new();
    tokio::pin!(shutdown);
    let exit = loop {
        let outputs = tokio::select! {
            Some(connection) = connected_rx.recv() => {
                let id = connection.id();
                connections.insert(id, connection);
                let mut outputs = master.handle(Input::Accepted { conn: id.0 }, now());
                for event in early.remove(&id).unwrap_or_default() {
                    if let Some(input) = to_input(event) {
                        outputs.extend(master.handle(input, now()));
                    }
                }
                outputs
            }
            Some(event) = event_rx.recv() => {
                if !connections.contains_key(&event.connection) {
                    early.entry(event.connection).or_default().push(event);
                    continue;
                }
                if let EventKind::Closed(_) = event.kind {
                    connections.remove(&event.connection);
                }
                match to_input(event) {
                    Some(input) => master.handle(input, now()),
                    None => continue,
                }
            }
            () = &mut shutdown => break false,
        };
        if apply(outputs, &connections).await {
            break true;
        }
    };
    accept_loop.abort();
    if exit {
        // Let the last notifications (storages told DOWN) reach their peers.
        let drain = async {
            while !connections.is_empty() {
                match event_rx.recv().await {
                    Some(Event {
                        connection,
                        kind: EventKind::Closed(_),
                    }) => {
                        connections.remove(&connection);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    } else {
        for connection in connections.values() {
            connection.close().await;
        }
    }
    tracing::info!("master stopped");
    Ok(())
}

fn to_input(event: Event) -> Option<Input> {
    let conn = event.connection.0;
    match event.kind {
        EventKind::Packet(frame) => Some(Input::Packet {
            conn,
            msg_id: frame.msg_id,
            packet: frame.packet,
        }),
        EventKind::Answer {
            request_code,
            packet,
            ..
        } => Some(Input::Answer {
            conn,
            request_code,
            packet,
        }),
        // The `Closed` event that follows says all there is to say.
        EventKind::Unanswered { .. } => None,
        EventKind::Closed(reason) => {
            if let Some(error) = reason {
                tracing::info!("connection {conn} closed: {error}");
            }
            Some(Input::Closed { conn })
        }
    }
}

/// Carries out the outputs; returns whether the master must exit.
async fn apply(outputs: Vec<Output>, connections: &HashMap<ConnectionId, Connection>) -> bool {
    let mut exit = false;
    for output in outputs {
        // A failed send means the connection is closing: its `Closed`
        // event will tell the state machine.
        match output {
            Output::Answer {
                conn,
                msg_id,
                packet,
            } => {
                if let Some(connection) = connections.get(&ConnectionId(conn)) {
                    let _ = connection.answer(msg_id, packet).await;
                }
            }
            Output::Notify { conn, packet } => {
                if let Some(connection) = connections.get(&ConnectionId(conn)) {
                    let _ = connection.notify(packet).await;
                }
            }
            Output::Request { conn, packet } => {
                if let Some(connection) = connections.get(&ConnectionId(conn)) {
                    let _ = connection.send_request(packet).await;
                }
            }
            Output::Close { conn } => {
                if let Some(connection) = connections.get(&ConnectionId(conn)) {
                    connection.close().await;
                }
            }
            Output::Exit => exit = true,
        }
    }
    exit
}

async fn accept_loop(
    listener: Listener,
    events: mpsc::Sender<Event>,
    connected: mpsc::Sender<Connection>,
) {
    let config = ConnectionConfig::default();
    loop {
        let accepted = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("{error}");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let events = events.clone();
        let connected = connected.clone();
        let config = config.clone();
        // The handshake runs aside so a slow peer holds up nobody.
        tokio::spawn(async move {
            match accepted.establish(events, &config).await {
                Ok(connection) => {
                    let _ = connected.send(connection).await;
                }
                Err(error) => tracing::info!("{error}"),
            }
        });
    }
}
