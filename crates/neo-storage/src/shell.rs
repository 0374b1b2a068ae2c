//! The tokio shell around the storage [`Storage`] state machine: connects
//! to the master (again when lost), accepts clients, feeds events and time
//! to the state machine and carries out its outputs.
//!
//! The node runs on a thread of its own, with its own single-threaded
//! runtime: its connections and its state machine, which does the database
//! work. A request is read, served and answered on that one thread, with
//! no hand-off between threads (each cost a wake-up per request: 25% of a
//! load's latency). The database work is bounded per event (a commit, a
//! pack step), and it never holds up the runtime of the process that
//! started the node (the other nodes of `neosimple`): the storage's own
//! sockets wait in the kernel meanwhile, as the state machine would make
//! them wait anyway.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use neo_net::{
    accept_loop, connect, Connection, ConnectionConfig, Event, EventKind, Listener, Registry,
};
use neo_proto::Address;
use tokio::sync::mpsc;

use crate::node::{Input, Output, Storage};

/// Why the storage node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The database failed; the node cannot go on safely.
    #[error("database failure: {0}")]
    Database(String),
    /// The listening socket could not be moved to the node's thread.
    #[error("{0}")]
    Listener(#[from] neo_net::NetError),
    /// The thread of the node could not be started or died.
    #[error("{0}")]
    Thread(String),
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

/// At most this many events are handled before their answers are sent
/// (and the commit they need is made), so that answers keep flowing under
/// a steady stream of requests.
const GROUP_COMMIT_EVENTS: usize = 64;

/// How long connections get to flush when the node stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a storage node until the master tells it to stop or `shutdown`
/// completes.
pub async fn run(
    storage: Storage,
    masters: Vec<Address>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let listener = listener.into_std()?;
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("neo-storage".to_owned())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move {
                    let listener = Listener::from_std(listener)?;
                    node_loop(storage, masters, listener, shutdown).await
                }),
                Err(error) => Err(RunError::Thread(format!("cannot start a runtime: {error}"))),
            };
            let _ = done.send(result);
        })
        .map_err(|error| RunError::Thread(format!("cannot start the storage thread: {error}")))?;
    result
        .await
        .map_err(|_| RunError::Thread("the storage thread died".to_owned()))?
}

/// The node's event loop, on the storage thread.
async fn node_loop(
    mut storage: Storage,
    masters: Vec<Address>,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let (events, mut event_rx) = mpsc::channel::<Event>(4096);
    let (accepted, mut accepted_rx) = mpsc::channel::<Connection>(64);
    let (master, mut master_rx) = mpsc::channel::<Connection>(1);
    let accept_task = tokio::spawn(accept_loop(listener, events.clone(), accepted));
    let connect = |delay| {
        tokio::spawn(connect_master(
            masters.clone(),
            events.clone(),
            master.clone(),
            delay,
        ))
    };
    let mut connect_task = Some(connect(Duration::ZERO));
    let mut registry = Registry::new();
    let mut ticks = tokio::time::interval(TICK);
    tokio::pin!(shutdown);
    let handle = |storage: &mut Storage, input: Input| storage.handle(input, now());
    let result = loop {
        let outputs = tokio::select! {
            Some(connection) = accepted_rx.recv() => {
                let conn = connection.id().0;
                let early = registry.register(connection);
                let mut outputs = handle(&mut storage, Input::Accepted { conn });
                for input in early.into_iter().filter_map(to_input) {
                    outputs.extend(handle(&mut storage, input));
                }
                outputs
            }
            Some(connection) = master_rx.recv() => {
                let conn = connection.id().0;
                let early = registry.register(connection);
                let mut outputs = handle(&mut storage, Input::MasterConnected { conn });
                for input in early.into_iter().filter_map(to_input) {
                    outputs.extend(handle(&mut storage, input));
                }
                outputs
            }
            Some(event) = event_rx.recv() => {
                // Every event already waiting goes in before one flush:
                // concurrent votes and locks share one commit (one fsync).
                let mut fed = 0;
                let mut next = Some(event);
                while let Some(event) = next.take() {
                    if let Some(input) = registry.admit(event).and_then(to_input) {
                        storage.feed(input, now());
                        fed += 1;
                    }
                    if fed < GROUP_COMMIT_EVENTS {
                        next = event_rx.try_recv().ok();
                    }
                }
                storage.flush()
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
                } => registry.answer(conn, msg_id, packet).await,
                Output::Notify { conn, packet } => registry.notify(conn, packet).await,
                Output::Request { conn, packet } => {
                    registry.request(conn, packet).await;
                }
                Output::Close { conn } => registry.close(conn).await,
                Output::ConnectMaster => {
                    if let Some(task) = connect_task.take() {
                        task.abort();
                    }
                    connect_task = Some(connect(RECONNECT_DELAY));
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
    registry.close_all(&mut event_rx, DRAIN_TIMEOUT).await;
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
    connected: mpsc::Sender<Connection>,
    first_delay: Duration,
) {
    let config = ConnectionConfig::default();
    tokio::time::sleep(first_delay).await;
    loop {
        for address in &masters {
            match connect(address, events.clone(), &config).await {
                Ok(connection) => {
                    let _ = connected.send(connection).await;
                    return;
                }
                Err(error) => tracing::info!("cannot reach master {address}: {error}"),
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
