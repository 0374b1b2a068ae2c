//! What every node's shell needs around its connections: accepting them
//! (handshake aside), knowing them by id, and sending what the node's
//! state machine decided.

use std::collections::HashMap;
use std::time::Duration;

use neo_proto::Packet;
use tokio::sync::mpsc;

use crate::connection::{Connection, ConnectionConfig, ConnectionId, Event, EventKind};
use crate::tcp::Listener;

/// Events of connections not registered yet that are kept, at most, so a
/// flood of connections cannot grow memory without bound.
const MAX_EARLY_EVENTS: usize = 4096;

/// A node's connections by id.
///
/// A connection's reader may deliver events before the shell registered
/// the connection (they travel on different channels); such events are
/// held and handed back at registration, so the state machine always sees
/// a connection before its packets.
#[derive(Default)]
pub struct Registry {
    connections: HashMap<ConnectionId, Connection>,
    early: HashMap<ConnectionId, Vec<Event>>,
    early_count: usize,
}

impl Registry {
    /// No connections.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a connection; returns the events that arrived before it.
    pub fn register(&mut self, connection: Connection) -> Vec<Event> {
        let id = connection.id();
        self.connections.insert(id, connection);
        let held = self.early.remove(&id).unwrap_or_default();
        self.early_count -= held.len();
        held
    }

    /// The event if its connection is registered (a `Closed` event also
    /// forgets the connection); `None` when it is held for later.
    pub fn admit(&mut self, event: Event) -> Option<Event> {
        if !self.connections.contains_key(&event.connection) {
            if self.early_count < MAX_EARLY_EVENTS {
                self.early_count += 1;
                self.early.entry(event.connection).or_default().push(event);
            } else {
                tracing::warn!("dropping an event of an unregistered connection");
            }
            return None;
        }
        if let EventKind::Closed(_) = event.kind {
            self.connections.remove(&event.connection);
        }
        Some(event)
    }

    /// A registered connection.
    pub fn get(&self, id: u64) -> Option<&Connection> {
        self.connections.get(&ConnectionId(id))
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    // A failed send means the connection is closing: its `Closed` event
    // tells the node, so the send helpers ignore errors. A send that cannot
    // complete within SEND_TIMEOUT (the peer stopped reading and its socket
    // buffer is full) aborts that connection, so one stuck peer cannot hold
    // up the whole node.

    /// Answers the request `msg_id` on connection `id`.
    pub async fn answer(&self, id: u64, msg_id: u32, packet: Packet) {
        if let Some(connection) = self.get(id) {
            bounded(connection, connection.answer(msg_id, packet)).await;
        }
    }

    /// Sends a notification on connection `id`.
    pub async fn notify(&self, id: u64, packet: Packet) {
        if let Some(connection) = self.get(id) {
            bounded(connection, connection.notify(packet)).await;
        }
    }

    /// Sends a request on connection `id` (answer as an event); returns
    /// its msg_id.
    pub async fn request(&self, id: u64, packet: Packet) -> Option<u32> {
        let connection = self.get(id)?;
        bounded(connection, connection.send_request(packet))
            .await?
            .ok()
    }

    /// Closes connection `id` after what is queued.
    pub async fn close(&self, id: u64) {
        if let Some(connection) = self.get(id) {
            bounded(connection, connection.close()).await;
        }
    }

    /// Closes every connection, then waits (at most `timeout`) until their
    /// `Closed` events say the last packets were flushed.
    pub async fn close_all(&mut self, events: &mut mpsc::Receiver<Event>, timeout: Duration) {
        for connection in self.connections.values() {
            connection.close().await;
        }
        let drain = async {
            while !self.connections.is_empty() {
                match events.recv().await {
                    Some(Event {
                        connection,
                        kind: EventKind::Closed(_),
                    }) => {
                        self.connections.remove(&connection);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        };
        let _ = tokio::time::timeout(timeout, drain).await;
    }
}

/// How long one send may wait for a peer that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a send, aborting the connection if it takes longer than
/// [`SEND_TIMEOUT`].
async fn bounded<T>(
    connection: &Connection,
    send: impl std::future::Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout(SEND_TIMEOUT, send).await {
        Ok(result) => Some(result),
        Err(_) => {
            tracing::warn!(peer = connection.peer(), "peer does not read");
            connection.abort();
            None
        }
    }
}

/// Accepts connections forever: each handshake runs in a task of its own
/// so a slow peer holds up nobody; established connections go to
/// `accepted`, their events to `events`.
pub async fn accept_loop(
    listener: Listener,
    events: mpsc::Sender<Event>,
    accepted: mpsc::Sender<Connection>,
) {
    let config = ConnectionConfig::default();
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
        let events = events.clone();
        let accepted = accepted.clone();
        let config = config.clone();
        tokio::spawn(async move {
            match incoming.establish(events, &config).await {
                Ok(connection) => {
                    let _ = accepted.send(connection).await;
                }
                Err(error) => tracing::info!("{error}"),
            }
        });
    }
}
