//! The tokio shell around [`Master`]: accepts connections, feeds their
//! events to the state machine with the wall-clock time, and carries out
//! its outputs. All decisions are the state machine's.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use neo_net::{accept_loop, Connection, Event, EventKind, Listener, Registry};
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
    let (accepted, mut accepted_rx) = mpsc::channel::<Connection>(64);
    let accept_task = tokio::spawn(accept_loop(listener, events, accepted));
    let mut registry = Registry::new();
    tokio::pin!(shutdown);
    loop {
        let outputs = tokio::select! {
            Some(connection) = accepted_rx.recv() => {
                let conn = connection.id().0;
                let early = registry.register(connection);
                let mut outputs = master.handle(Input::Accepted { conn }, now());
                for input in early.into_iter().filter_map(to_input) {
                    outputs.extend(master.handle(input, now()));
                }
                outputs
            }
            Some(event) = event_rx.recv() => {
                match registry.admit(event).and_then(to_input) {
                    Some(input) => master.handle(input, now()),
                    None => continue,
                }
            }
            () = &mut shutdown => break,
        };
        if apply(outputs, &registry).await {
            break;
        }
    }
    accept_task.abort();
    // Let the last notifications (storages told DOWN) reach their peers.
    registry.close_all(&mut event_rx, DRAIN_TIMEOUT).await;
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
async fn apply(outputs: Vec<Output>, registry: &Registry) -> bool {
    let mut exit = false;
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
            Output::Exit => exit = true,
        }
    }
    exit
}
