//! The tokio shell around the storage [`Storage`] state machine: connects
//! to the master (again when lost), accepts clients, feeds events and time
//! to the state machine and carries out its outputs.
//!
//! The state machine does the database work; it runs under
//! `block_in_place`, so the connection tasks keep reading and writing on
//! the other worker threads meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use neo_net::{connect, Connection, ConnectionConfig, ConnectionId, Event, EventKind, Listener};
use neo_proto::Address;
use tokio::sync::mpsc;

use crate::backend::Backend;
use crate::node::{Input, Output, Storage};

/// Why the storage node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database failed; the node cannot go on safely.
    #[error("database failure: {0}")]
    Database(String),
}

/// How often the state machine is given the time (deferred commits).
const TICK: Duration = Duration::from_millis(200);

/// At most one connection attempt per master address per second (NEO's
/// `CONNECT_LIMIT`).
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// What the connection tasks tell the main loop.
enum Arrival {
    Accepted(Connection),
    Master(Connection),
}

/// Runs a storage node until the master tells it to stop or `shutdown`
/// completes. Needs the multi-threaded tokio runtime.
pub async fn run<B: Backend + Send>(
    mut storage: Storage<B>,
    masters: Vec<Address>,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let (events, mut event_rx) = mpsc::channel::<Event>(4096);
    let (arrivals, mut arrival_rx) = mpsc::channel::<Arrival>(64);
    let accept_task = tokio::spawn(accept_loop(listener, events.clone(), arrivals.clone()));
    let mut connect_task = Some(tokio::spawn(connect_master(
        masters.clone(),
        events.clone(),
        arrivals.clone(),
        Duration::ZERO,
    )));
    let mut connections: HashMap<ConnectionId, Connection> = HashMap::new();
    let mut early: HashMap<ConnectionId, Vec<Event>> = HashMap::new();
    let mut ticks = tokio::time::interval(TICK);
    tokio::pin!(shutdown);
    let handle = |storage: &mut Storage<B>, input: Input| {
        tokio::task::block_in_place(|| storage.handle(input, now()))
    };
    let result = loop {
        let outputs = tokio::select! {
            Some(arrival) = arrival_rx.recv() => {
                let (connection, input) = match arrival {
                    Arrival::Accepted(c) => { let conn = c.id().0; (c, Input::Accepted { conn }) }
                    Arrival::Master(c) => { let conn = c.id().0; (c, Input::MasterConnected { conn }) }
                };
                let id = connection.id();
                connections.insert(id, connection);
                let mut outputs = handle(&mut storage, input);
                for event in early.remove(&id).unwrap_or_default() {
                    if let Some(input) = to_input(event) {
                        outputs.extend(handle(&mut storage, input));
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
                    Some(input) => handle(&mut storage, input),
                    None => continue,
                }
            }
            _ = ticks.tick() => handle(&mut storage, Input::Tick),
            // Background work (pack) goes on step by step, interleaved with
            // the events above.
            () = tokio::task::yield_now(), if storage.has_background_work() => {
                handle(&mut storage, Input::Tick)
            }
            () = &mut shutdown => break Ok(()),
        };
        let mut exit = None;
        for output in outputs {
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
                Output::ConnectMaster => {
                    if let Some(task) = connect_task.take() {
                        task.abort();
                    }
                    connect_task = Some(tokio::spawn(connect_master(
                        masters.clone(),
                        events.clone(),
                        arrivals.clone(),
                        RECONNECT_DELAY,
                    )));
                }
                Output::Exit(result) => exit = Some(result),
            }
        }
        if let Some(result) = exit {
            break result.map_err(RunError::Database);
        }
    };
    accept_task.abort();
    if let Some(task) = connect_task {
        task.abort();
    }
    for connection in connections.values() {
        connection.close().await;
    }
    result
}

fn to_input(event: Event) -> Option<Input> {
    let conn = event.connection.0;
    match event.kind {
        EventKind::Packet(frame) => Some(Input::Packet {
            conn,
            msg_id: frame.msg_id,
            packet: frame.packet,
        }),
        EventKind::Answer { packet, .. } => Some(Input::Answer { conn, packet }),
        EventKind::Unanswered { .. } => None,
        EventKind::Closed(reason) => {
            if let Some(error) = reason {
                tracing::info!("connection {conn} closed: {error}");
            }
            Some(Input::Closed { conn })
        }
    }
}

/// Tries the masters in turn until one accepts a TCP connection and the
/// handshake.
async fn connect_master(
    masters: Vec<Address>,
    events: mpsc::Sender<Event>,
    arrivals: mpsc::Sender<Arrival>,
    first_delay: Duration,
) {
    let config = ConnectionConfig::default();
    tokio::time::sleep(first_delay).await;
    loop {
        for address in &masters {
            match connect(address, events.clone(), &config).await {
                Ok(connection) => {
                    let _ = arrivals.send(Arrival::Master(connection)).await;
                    return;
                }
                Err(error) => tracing::info!("cannot reach master {address}: {error}"),
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn accept_loop(
    listener: Listener,
    events: mpsc::Sender<Event>,
    arrivals: mpsc::Sender<Arrival>,
) {
    let config = ConnectionConfig::default();
    loop {
        let accepted = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!("{error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let events = events.clone();
        let arrivals = arrivals.clone();
        let config = config.clone();
        tokio::spawn(async move {
            match accepted.establish(events, &config).await {
                Ok(connection) => {
                    let _ = arrivals.send(Arrival::Accepted(connection)).await;
                }
                Err(error) => tracing::info!("{error}"),
            }
        });
    }
}
