//! One NEO connection: the handshake, then a reader task around a
//! [`Connection`] handle.
//!
//! The reader decodes packets, hands answers to the requests waiting for
//! them (by msg_id: to the task awaiting [`Connection::ask`], or as an
//! [`EventKind::Answer`] carrying the [`Token`] the request was sent with)
//! and sends everything else — requests, notifications, unsolicited
//! errors — as [`Event`]s to the node, through a bounded channel: when the
//! node falls behind, the reader stops reading and TCP pushes back. A
//! request is registered before it leaves, so its answer always finds it.
//! Senders write their packets to the socket themselves, one at a time
//! (no writer task: one thread hand-off less per request); a sender that
//! outruns the peer waits in its write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use neo_proto::{
    answer_code, encode_frame_into, packets, ErrorCode, Frame, Packet, Request, StreamDecoder,
    MAGIC, MAX_PACKET_SIZE, RESPONSE_MASK,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use crate::error::NetError;
use crate::metrics::Durations;
use crate::node::{ConnId, Token};
use crate::tls::{self, Tls, TLS_ALERT, TLS_HANDSHAKE};
use crate::transport::Transport;

/// Tunables of a connection; the defaults suit every node.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    /// How long the peer may take to send its magic. NEO/py sends it at
    /// once, so a silent peer is not a NEO node.
    pub handshake_timeout: Duration,
    /// Received packets waiting for the node before the reader waits.
    pub event_capacity: usize,
    /// Largest packet accepted from the peer.
    pub max_packet_size: usize,
    /// How long a peer may stay silent while we wait for an answer before
    /// we probe it with a `Ping` (`None`: never). On TCP the same limit is
    /// the socket's `TCP_USER_TIMEOUT`: if the peer's kernel acknowledges
    /// nothing for that long (a host cut off, a network silently dropping
    /// packets), the kernel gives the connection up, so such a peer is left
    /// within twice this. A peer whose kernel acknowledges is alive, only
    /// busy: it may take as long as it likes to answer, up to `patience`.
    /// This finds dead or unreachable peers; it times no request out.
    pub liveness: Option<Duration>,
    /// How long a probed peer may stay silent before it is given up all
    /// the same: a process stopped or hung while its kernel still
    /// acknowledges (or, off TCP, any silent peer). Long, since a busy
    /// process (a storage fsyncing under load) is not a dead one.
    pub patience: Duration,
    /// How long a connection may stay idle (nothing received) before it is
    /// pinged anyway, so that a dead or cut-off peer is found also when no
    /// answer is awaited — a storage waiting for orders from a master that
    /// is gone (`None`: only while answers are awaited). Needs `liveness`.
    pub keepalive: Option<Duration>,
    /// The node's TLS credentials: with them every connection is TLS
    /// (protocol.md §1.3), without them none is.
    pub tls: Option<Tls>,
    /// Where the round trip of each request sent is timed, by request
    /// (label `request`); `None`: not timed (no metrics).
    pub round_trips: Option<Durations>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            handshake_timeout: Duration::from_secs(30),
            event_capacity: 1024,
            max_packet_size: MAX_PACKET_SIZE,
            // A storage cut off is left within 2 s (a probe after 0.8 s of
            // silence, unacknowledged for 0.8 s more).
            liveness: Some(Duration::from_millis(800)),
            patience: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(1)),
            tls: None,
            round_trips: None,
        }
    }
}

/// Which end of the TCP connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// We connected.
    Initiator,
    /// We accepted.
    Acceptor,
}

/// Something that happened on a connection.
#[derive(Debug)]
pub struct Event {
    /// The connection it happened on.
    pub conn: ConnId,
    /// What happened.
    pub kind: EventKind,
}

/// What happened on a connection.
#[derive(Debug)]
pub enum EventKind {
    /// The connection is established: the first event of a connection
    /// started with [`Announce::Opened`], before any of its packets, on the
    /// same channel (so whoever keeps connections by id never sees a
    /// packet of one it does not know).
    Opened {
        /// The connection.
        connection: Connection,
        /// For a connection we made, the token it was asked for with.
        token: Option<Token>,
    },
    /// A request or notification from the peer, or an `Error` that answers
    /// no pending request.
    Packet(Frame),
    /// A packet the peer sent with the msg_id of a request sent with
    /// [`Connection::send_request`] and not answered yet: the part of its
    /// answer that comes first (`AddTransaction` and `AddObject` stream
    /// the answer to `AskFetchTransactions` and `AskFetchObjects`,
    /// protocol.md §2.3).
    AnswerPart {
        /// The token the request was sent with.
        token: Token,
        /// The packet.
        packet: Packet,
    },
    /// The answer to a request sent with [`Connection::send_request`].
    Answer {
        /// The token the request was sent with.
        token: Token,
        /// The answer: the request's answer packet or `Error`.
        packet: Packet,
    },
    /// A request sent with [`Connection::send_request`] will get no answer:
    /// the connection closed first. Comes before `Closed`.
    Unanswered {
        /// The token the request was sent with.
        token: Token,
    },
    /// The connection is gone: `None` after a clean close, else why.
    Closed(Option<NetError>),
}

/// Whether a new connection announces itself with [`EventKind::Opened`].
#[derive(Debug, Default)]
pub enum Announce {
    /// No: the caller gets the [`Connection`] back and registers it itself
    /// (it has no packets to route before that).
    #[default]
    Silent,
    /// Yes, as the first event of the connection.
    Opened {
        /// The token of the connection attempt, for one we made.
        token: Option<Token>,
        /// Held as long as the connection lives (a listener's limit on
        /// connections).
        permit: Option<OwnedSemaphorePermit>,
    },
}

/// The receiving end of a single connection's events.
#[derive(Debug)]
pub struct Inbox {
    events: mpsc::Receiver<Event>,
}

impl Inbox {
    /// The next event; `None` once the connection is closed and drained.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

/// The channel of a connection that has one of its own.
pub(crate) fn events_channel(config: &ConnectionConfig) -> (mpsc::Sender<Event>, Inbox) {
    let (events, rx) = mpsc::channel(config.event_capacity);
    (events, Inbox { events: rx })
}

/// Why a request did not get the answer it asked for.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The connection failed or closed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer answered with an `Error` packet.
    #[error("{peer} refused: {error}")]
    Refused {
        /// The remote address.
        peer: String,
        /// The error packet received.
        error: packets::Error,
    },
}

/// A packet to send with [`Connection::send_batch`].
#[derive(Debug)]
pub enum Outgoing {
    /// The answer to the request that came with this msg_id.
    Answer(u32, Packet),
    /// A notification, with a fresh msg_id.
    Notify(Packet),
    /// A request whose answer comes back as an event tagged with the token
    /// (as [`Connection::send_request`]).
    Request(Token, Packet),
}

struct Pending {
    /// Code of the answer that request expects (`Error` is always accepted).
    expected: u16,
    reply: Reply,
    /// When it was sent and what it was, if round trips are timed.
    sent: Option<(Instant, &'static str)>,
}

/// Where the answer to a request goes.
enum Reply {
    /// To the task awaiting it in `ask`.
    Waiter(oneshot::Sender<Result<Packet, NetError>>),
    /// Into the event stream, in order with the connection's other
    /// packets, tagged with the sender's token.
    Event(Token),
    /// A ping of the liveness watchdog: any answer is proof of life, and
    /// nobody waits for it.
    Liveness,
}

/// The sending half of the stream, written by whoever sends.
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

struct Shared {
    id: ConnId,
    peer: String,
    /// Counter for the msg_id of the packets we originate.
    next_msg_id: AtomicU32,
    /// Requests sent and not answered yet, by msg_id.
    pending: Mutex<HashMap<u32, Pending>>,
    /// The sending half: senders write their packets directly, one at a
    /// time (no writer task, so no thread hand-off on the way out); `None`
    /// once closed. A sender waits while the peer does not read.
    writer: tokio::sync::Mutex<Option<Writer>>,
    /// Set once the connection is closing; stops the reader.
    closing: watch::Sender<bool>,
    /// Set by the reader before it fails the pending requests, so that a
    /// request registered later knows no answer will come.
    closed: AtomicBool,
    /// We use this connection for our own requests (protocol.md §9.5).
    client: AtomicBool,
    /// The peer uses this connection for its requests to us.
    server: AtomicBool,
    /// When the connection was established: the origin of `last_received`.
    started: tokio::time::Instant,
    /// Milliseconds after `started` when bytes last came from the peer.
    last_received: AtomicU64,
    /// Why the connection was given up, when it was not the peer's doing.
    abort_reason: Mutex<Option<NetError>>,
    round_trips: Option<Durations>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<u32, Pending>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn closed_error(&self) -> NetError {
        NetError::Closed {
            peer: self.peer.clone(),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn note_received(&self) {
        self.last_received
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// Whether a request of ours (not a liveness ping) awaits its answer.
    fn awaits_answer(&self) -> bool {
        self.pending()
            .values()
            .any(|pending| !matches!(pending.reply, Reply::Liveness))
    }

    /// Gives up on the connection for `reason`: the reader stops and
    /// reports it with the `Closed` event.
    fn abort_with(&self, reason: NetError) {
        let mut slot = self
            .abort_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.get_or_insert(reason);
        drop(slot);
        self.closing.send_replace(true);
    }

    fn take_abort_reason(&self) -> Option<NetError> {
        self.abort_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Fails the requests still waiting, with `reason` if the connection
    /// was given up for one; returns the tokens of those whose failure goes
    /// into the event stream, in the order they were sent.
    fn fail_pending(&self, reason: Option<&NetError>) -> Vec<Token> {
        let mut unanswered = Vec::new();
        for (msg_id, pending) in self.pending().drain() {
            match pending.reply {
                Reply::Waiter(waiter) => {
                    // A waiter learns the peer went silent; otherwise that
                    // the connection closed.
                    let error = match reason {
                        Some(NetError::Silent { peer, seconds }) => NetError::Silent {
                            peer: peer.clone(),
                            seconds: *seconds,
                        },
                        _ => self.closed_error(),
                    };
                    let _ = waiter.send(Err(error));
                }
                Reply::Event(token) => unanswered.push((msg_id, token)),
                Reply::Liveness => {}
            }
        }
        unanswered.sort_unstable_by_key(|(msg_id, _)| *msg_id);
        unanswered.into_iter().map(|(_, token)| token).collect()
    }
}

/// Handle on an established connection; cheap to clone. The connection
/// closes when [`Connection::close`] is called, when the peer closes it, or
/// on a protocol error; then an [`EventKind::Closed`] event is sent.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .finish()
    }
}

impl Connection {
    /// Runs the handshake on `stream` and starts the connection as `id`;
    /// its events go to `events`, the first one being
    /// [`EventKind::Opened`] if `announce` says so. `peer` names the remote
    /// end in logs and errors.
    pub async fn establish<T: Transport>(
        stream: T,
        side: Side,
        peer: String,
        id: ConnId,
        events: mpsc::Sender<Event>,
        config: &ConnectionConfig,
        announce: Announce,
    ) -> Result<Connection, NetError> {
        let (mut reader, mut writer) = stream.split();
        let mut decoder = StreamDecoder::new().with_max_packet_size(config.max_packet_size);
        // Both ends send the magic without waiting for the other's.
        write_out(&mut writer, &MAGIC)
            .await
            .map_err(|e| NetError::io(&peer, e))?;
        let handshake = read_magic(&mut reader, &mut decoder, &peer);
        tokio::time::timeout(config.handshake_timeout, handshake)
            .await
            .map_err(|_| NetError::HandshakeTimeout {
                peer: peer.clone(),
                seconds: config.handshake_timeout.as_secs(),
            })??;

        let (closing, closing_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            id,
            peer,
            next_msg_id: AtomicU32::new(0),
            pending: Mutex::new(HashMap::new()),
            writer: tokio::sync::Mutex::new(Some(Box::new(writer))),
            closing,
            closed: AtomicBool::new(false),
            client: AtomicBool::new(side == Side::Initiator),
            server: AtomicBool::new(side == Side::Acceptor),
            started: tokio::time::Instant::now(),
            last_received: AtomicU64::new(0),
            abort_reason: Mutex::new(None),
            round_trips: config.round_trips.clone(),
        });
        tracing::debug!(peer = %shared.peer, id = shared.id.0, "connection established");
        let connection = Connection {
            shared: shared.clone(),
        };
        let permit = match announce {
            Announce::Silent => None,
            Announce::Opened { token, permit } => {
                let opened = Event {
                    conn: id,
                    kind: EventKind::Opened {
                        connection: connection.clone(),
                        token,
                    },
                };
                if events.send(opened).await.is_err() {
                    return Err(connection.shared.closed_error());
                }
                permit
            }
        };
        if let Some(limit) = config.liveness {
            let patience = config.patience.max(limit);
            tokio::spawn(watch_liveness(
                connection.clone(),
                limit,
                patience,
                config.keepalive,
            ));
        }
        tokio::spawn(read_loop(
            reader, decoder, closing_rx, shared, events, permit,
        ));
        Ok(connection)
    }

    /// [`Connection::establish`] with a channel of its own.
    pub async fn open<T: Transport>(
        stream: T,
        side: Side,
        peer: String,
        config: &ConnectionConfig,
    ) -> Result<(Connection, Inbox), NetError> {
        let (events, inbox) = events_channel(config);
        let connection = Connection::establish(
            stream,
            side,
            peer,
            ConnId::next(),
            events,
            config,
            Announce::Silent,
        )
        .await?;
        Ok((connection, inbox))
    }

    /// Identifies this connection in events.
    pub fn id(&self) -> ConnId {
        self.shared.id
    }

    /// The remote end, as given when connecting or as accepted.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Whether the connection is closing or closed.
    pub fn is_closed(&self) -> bool {
        *self.shared.closing.borrow() || self.shared.closed.load(Ordering::SeqCst)
    }

    fn next_msg_id(&self) -> u32 {
        // Wraps modulo 2^32, as NEO/py's counter does.
        self.shared.next_msg_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn send_frame(&self, msg_id: u32, packet: &Packet) -> Result<(), NetError> {
        let mut bytes = Vec::new();
        encode_frame_into(&mut bytes, msg_id, packet);
        log_packet(msg_id, packet, '>', &self.shared.peer);
        self.write_frames(&bytes).await
    }

    /// Writes encoded frames, whole, in one write.
    async fn write_frames(&self, bytes: &[u8]) -> Result<(), NetError> {
        let mut slot = self.shared.writer.lock().await;
        let Some(writer) = slot.as_mut().filter(|_| !*self.shared.closing.borrow()) else {
            return Err(self.shared.closed_error());
        };
        // A sender cancelled in the middle of a packet would leave half of
        // it on the wire: the connection is then unusable and is closed.
        let mut torn = TornWriteGuard {
            shared: &self.shared,
            armed: true,
        };
        let written = write_out(writer, bytes).await;
        torn.armed = false;
        if let Err(error) = written {
            tracing::debug!(peer = %self.shared.peer, %error, "write failed");
            *slot = None;
            self.shared.closing.send_replace(true);
            return Err(NetError::io(&self.shared.peer, error));
        }
        Ok(())
    }

    /// Sends a notification (or a request whose answer is not awaited, like
    /// `Truncate` from master to storage) with a fresh msg_id.
    pub async fn notify(&self, packet: impl Into<Packet>) -> Result<(), NetError> {
        let msg_id = self.next_msg_id();
        self.send_frame(msg_id, &packet.into()).await
    }

    /// Answers the request that came with `msg_id`.
    pub async fn answer(&self, msg_id: u32, packet: impl Into<Packet>) -> Result<(), NetError> {
        self.shared.server.store(true, Ordering::SeqCst);
        self.send_frame(msg_id, &packet.into()).await
    }

    /// Sends several packets in one write: a node's answers, notifications
    /// and requests of one turn on this connection cost one system call,
    /// not one each (a vote after ten stores is eleven answers). Requests
    /// are registered first, as [`Connection::send_request`] does. On
    /// error, none of the requests is left pending.
    pub async fn send_batch(&self, batch: Vec<Outgoing>) -> Result<(), NetError> {
        let mut bytes = Vec::new();
        let mut registered = Vec::new();
        for outgoing in batch {
            let (msg_id, packet) = match outgoing {
                Outgoing::Answer(msg_id, packet) => {
                    self.shared.server.store(true, Ordering::SeqCst);
                    (msg_id, packet)
                }
                Outgoing::Notify(packet) => (self.next_msg_id(), packet),
                Outgoing::Request(token, packet) => {
                    let msg_id = self.register(&packet, Reply::Event(token));
                    registered.push(msg_id);
                    (msg_id, packet)
                }
            };
            encode_frame_into(&mut bytes, msg_id, &packet);
            log_packet(msg_id, &packet, '>', &self.shared.peer);
        }
        let mut sent = if self.shared.closed.load(Ordering::SeqCst) {
            // The reader failed the pending requests before ours were
            // registered: no answer can come.
            Err(self.shared.closed_error())
        } else {
            Ok(())
        };
        if sent.is_ok() {
            sent = self.write_frames(&bytes).await;
        }
        if sent.is_err() {
            let mut pending = self.shared.pending();
            for msg_id in registered {
                pending.remove(&msg_id);
            }
        }
        sent
    }

    /// Registers a request about to be sent, before it is sent (the answer
    /// may beat the sender back); returns its msg_id.
    fn register(&self, request: &Packet, reply: Reply) -> u32 {
        self.shared.client.store(true, Ordering::SeqCst);
        let expected = answer_code(request.code()).unwrap_or(packets::Error::CODE);
        let msg_id = self.next_msg_id();
        let sent = (self.shared.round_trips.as_ref()).map(|_| (Instant::now(), request.name()));
        let pending = Pending {
            expected,
            reply,
            sent,
        };
        self.shared.pending().insert(msg_id, pending);
        msg_id
    }

    /// Sends a request and waits for its answer packet, which is either the
    /// request's answer type or `Error`. There is no timeout: NEO answers
    /// may come arbitrarily late; a closed connection ends the wait.
    pub async fn ask_packet(&self, request: Packet) -> Result<Packet, NetError> {
        self.ask_with_id(request).await.1
    }

    async fn ask_with_id(&self, request: Packet) -> (u32, Result<Packet, NetError>) {
        let (reply, answer) = oneshot::channel();
        let msg_id = match self.register_and_send(request, Reply::Waiter(reply)).await {
            Ok(msg_id) => msg_id,
            Err((msg_id, error)) => return (msg_id, Err(error)),
        };
        let answer = answer
            .await
            .unwrap_or_else(|_| Err(self.shared.closed_error()));
        (msg_id, answer)
    }

    /// Sends a request whose answer comes back as an [`EventKind::Answer`]
    /// tagged with `token` (or [`EventKind::Unanswered`]) in the event
    /// stream, in order with the connection's other packets: what node
    /// state machines want. The request is registered before it is sent.
    pub async fn send_request(
        &self,
        request: impl Into<Packet>,
        token: Token,
    ) -> Result<(), NetError> {
        self.register_and_send(request.into(), Reply::Event(token))
            .await
            .map(drop)
            .map_err(|(_, error)| error)
    }

    async fn register_and_send(
        &self,
        request: Packet,
        reply: Reply,
    ) -> Result<u32, (u32, NetError)> {
        let msg_id = self.register(&request, reply);
        if self.shared.closed.load(Ordering::SeqCst) {
            // The reader failed the pending requests before ours was
            // registered: no answer can come.
            self.shared.pending().remove(&msg_id);
            return Err((msg_id, self.shared.closed_error()));
        }
        if let Err(error) = self.send_frame(msg_id, &request).await {
            self.shared.pending().remove(&msg_id);
            return Err((msg_id, error));
        }
        Ok(msg_id)
    }

    /// Sends a request and returns its typed answer; an `Error` answer is
    /// [`AskError::Refused`], except `Error(ACK)` for the requests that are
    /// answered that way.
    pub async fn ask<R: Request>(&self, request: R) -> Result<R::Answer, AskError> {
        let (msg_id, answer) = self.ask_with_id(request.into()).await;
        let acked = R::ANSWER_CODE == packets::Error::CODE;
        match answer? {
            Packet::Error(error) if !(acked && error.code == ErrorCode::Ack) => {
                Err(AskError::Refused {
                    peer: self.shared.peer.clone(),
                    error,
                })
            }
            // The reader only hands over the expected code or Error, so
            // this fails only for an `Error(ACK)` to a request with an answer.
            answer => R::Answer::try_from(answer).map_err(|other| {
                NetError::UnexpectedAnswer {
                    peer: self.shared.peer.clone(),
                    msg_id,
                    answer: other.name(),
                    expected: String::new(),
                }
                .into()
            }),
        }
    }

    /// We are done with our own requests on this connection: if the peer
    /// still sends us requests, tell it with `CloseClient` and keep the
    /// connection for it; otherwise close (protocol.md §9.5).
    pub async fn close_client(&self) {
        if self.shared.server.load(Ordering::SeqCst) {
            self.shared.client.store(false, Ordering::SeqCst);
            let _ = self.notify(packets::CloseClient {}).await;
        } else {
            self.close().await;
        }
    }

    /// Gives up on the connection at once, without waiting for packets
    /// being written: the reader stops (a `Closed` event follows), further
    /// sends fail. For a peer that stopped reading.
    pub fn abort(&self) {
        tracing::warn!(peer = %self.shared.peer, "aborting the connection");
        self.shared.closing.send_replace(true);
    }

    /// Closes the connection once packets being sent are written: stops
    /// reading, shuts the stream down. Pending requests fail.
    pub async fn close(&self) {
        let mut slot = self.shared.writer.lock().await;
        if let Some(mut writer) = slot.take() {
            let _ = writer.shutdown().await;
        }
        self.shared.closing.send_replace(true);
    }
}

/// Writes `bytes` and flushes them: TLS may keep the end of a write in its
/// own buffer when the socket is full, to be sent only by a flush (for
/// TCP, the flush does nothing).
async fn write_out<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Closes the connection if dropped while armed: armed around a write,
/// disarmed once the write completed.
struct TornWriteGuard<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for TornWriteGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            tracing::warn!(peer = %self.shared.peer, "send cancelled in the middle of a packet: closing");
            self.shared.closing.send_replace(true);
        }
    }
}

/// Watches a connection while requests await their answer (and, with a
/// `keepalive`, once it has been idle that long): after `limit` of silence
/// from the peer, a `Ping`. Over TCP, a peer whose kernel does not
/// acknowledge it is given up by the kernel (`TCP_USER_TIMEOUT`); here, a
/// peer still silent after `patience` is given up (`NetError::Silent`).
/// A sender still writing counts as activity (a full socket buffer is the
/// send timeout's business).
async fn watch_liveness(
    connection: Connection,
    limit: Duration,
    patience: Duration,
    keepalive: Option<Duration>,
) {
    let shared = &connection.shared;
    let to_ms = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let limit_ms = to_ms(limit);
    let patience_ms = to_ms(patience);
    let idle_ms = keepalive.map_or(u64::MAX, to_ms).max(limit_ms);
    let period = (limit / 8).max(Duration::from_millis(10));
    let mut closing = shared.closing.subscribe();
    let mut pinged_at: Option<u64> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = closing.wait_for(|closing| *closing) => return,
        }
        let now = shared.elapsed_ms();
        let last = shared.last_received.load(Ordering::Relaxed);
        if let Some(at) = pinged_at {
            if last >= at {
                pinged_at = None;
            } else if now.saturating_sub(at) >= patience_ms {
                let seconds = now.saturating_sub(last) as f64 / 1000.0;
                tracing::warn!(peer = %shared.peer, seconds, "peer silent: giving up the connection");
                shared.abort_with(NetError::Silent {
                    peer: shared.peer.clone(),
                    seconds,
                });
                return;
            }
            continue;
        }
        let silent = now.saturating_sub(last);
        let due = if shared.awaits_answer() {
            limit_ms
        } else {
            idle_ms
        };
        let writing = shared.writer.try_lock().is_err();
        if writing || silent < due {
            continue;
        }
        pinged_at = Some(now);
        let ping = connection.register_and_send(packets::Ping {}.into(), Reply::Liveness);
        if tokio::time::timeout(limit, ping).await.is_err() {
            // Our own ping cannot even leave: the send timeout of whoever
            // is stuck writing will give the connection up.
            pinged_at = None;
        }
    }
}

async fn read_magic<R: AsyncRead + Unpin>(
    reader: &mut R,
    decoder: &mut StreamDecoder,
    peer: &str,
) -> Result<(), NetError> {
    loop {
        match decoder.check_magic() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            // A TLS record where NEO's magic should be: a TLS peer's
            // ClientHello, or the alert of a TLS acceptor refusing us.
            Err(_)
                if matches!(
                    decoder.buffer_mut().first(),
                    Some(&(TLS_HANDSHAKE | TLS_ALERT))
                ) =>
            {
                return Err(NetError::PeerUsesTls {
                    peer: peer.to_owned(),
                })
            }
            Err(error) => return Err(NetError::from_frame(peer, error)),
        }
        // With TLS 1.3 the initiator may learn only now that the acceptor
        // refused its certificate.
        let read = reader
            .read_buf(decoder.buffer_mut())
            .await
            .map_err(|e| tls::handshake_error(peer, e))?;
        if read == 0 {
            return Err(NetError::ClosedInHandshake {
                peer: peer.to_owned(),
            });
        }
    }
}

/// What the reader does with one received packet.
enum Dispatch {
    /// Give it to the node.
    Deliver(EventKind),
    /// Handled here (an answer to a pending request, or `CloseClient`).
    Answered,
    /// The peer no longer needs the connection, nor do we.
    Close,
}

fn dispatch(shared: &Shared, frame: Frame) -> Result<Dispatch, NetError> {
    let code = frame.packet.code();
    if let Packet::CloseClient(_) = frame.packet {
        shared.server.store(false, Ordering::SeqCst);
        return Ok(if shared.client.load(Ordering::SeqCst) {
            Dispatch::Answered
        } else {
            Dispatch::Close
        });
    }
    if code & RESPONSE_MASK == 0 {
        if is_answer_part(&frame.packet) {
            if let Some(Reply::Event(token)) = shared.pending().get(&frame.msg_id).map(|p| &p.reply)
            {
                return Ok(Dispatch::Deliver(EventKind::AnswerPart {
                    token: *token,
                    packet: frame.packet,
                }));
            }
        }
        return Ok(Dispatch::Deliver(EventKind::Packet(frame)));
    }
    let mut pending = shared.pending();
    let expected = pending.get(&frame.msg_id).map(|p| p.expected);
    match expected {
        Some(expected) if code == expected || code == packets::Error::CODE => {
            let Some(request) = pending.remove(&frame.msg_id) else {
                return Ok(Dispatch::Answered);
            };
            drop(pending);
            if let (Some(round_trips), Some((sent, name))) = (&shared.round_trips, request.sent) {
                round_trips
                    .get_or_create(&[("request", name)])
                    .observe(sent.elapsed().as_secs_f64());
            }
            match request.reply {
                Reply::Waiter(waiter) => {
                    let _ = waiter.send(Ok(frame.packet));
                    Ok(Dispatch::Answered)
                }
                Reply::Event(token) => Ok(Dispatch::Deliver(EventKind::Answer {
                    token,
                    packet: frame.packet,
                })),
                Reply::Liveness => Ok(Dispatch::Answered),
            }
        }
        // NEO/py sends some errors with a fresh msg_id (protocol.md §2.3).
        None if code == packets::Error::CODE => Ok(Dispatch::Deliver(EventKind::Packet(frame))),
        expected => Err(NetError::UnexpectedAnswer {
            peer: shared.peer.clone(),
            msg_id: frame.msg_id,
            answer: frame.packet.name(),
            expected: expected
                .and_then(neo_proto::packet_name)
                .map(|name| format!(", expected {name}"))
                .unwrap_or_default(),
        }),
    }
}

/// Notifications NEO sends with the msg_id of the request whose answer
/// they precede, never with a fresh one (protocol.md §2.3): any other
/// notification's msg_id is the peer's own counter, which may equal the id
/// of a request of ours by chance.
pub fn is_answer_part(packet: &Packet) -> bool {
    matches!(packet, Packet::AddTransaction(_) | Packet::AddObject(_))
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    mut decoder: StreamDecoder,
    mut closing: watch::Receiver<bool>,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    // Released when the connection is over.
    _permit: Option<OwnedSemaphorePermit>,
) {
    let reason: Option<NetError> = 'connection: loop {
        // Packets that arrived with the magic or in the last read.
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => break 'connection Some(NetError::from_frame(&shared.peer, error)),
            };
            log_packet(frame.msg_id, &frame.packet, '<', &shared.peer);
            match dispatch(&shared, frame) {
                Ok(Dispatch::Answered) => {}
                Ok(Dispatch::Close) => break 'connection None,
                Ok(Dispatch::Deliver(kind)) => {
                    let event = Event {
                        conn: shared.id,
                        kind,
                    };
                    if events.send(event).await.is_err() {
                        // Nobody listens any more.
                        break 'connection None;
                    }
                }
                Err(error) => {
                    if let NetError::UnexpectedAnswer { msg_id, .. } = &error {
                        // As NEO/py: tell the peer, then close.
                        let reply =
                            packets::Error::new(ErrorCode::ProtocolError, "unexpected answer");
                        let connection = Connection {
                            shared: shared.clone(),
                        };
                        let _ = connection.answer(*msg_id, reply).await;
                    }
                    break 'connection Some(error);
                }
            }
        }
        decoder.buffer_mut().reserve(64 << 10);
        tokio::select! {
            read = reader.read_buf(decoder.buffer_mut()) => match read {
                Ok(0) if decoder.buffered() == 0 => break None,
                Ok(0) => break Some(NetError::Protocol {
                    peer: shared.peer.clone(),
                    error: neo_proto::FrameError::Frame("connection closed inside a packet".into()),
                }),
                Ok(_) => shared.note_received(),
                // TLS peers (NEO/py's among them) may close the TCP
                // connection without a TLS close_notify: a close like any
                // other (protocol.md §1.3).
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof
                    && decoder.buffered() == 0 => break None,
                Err(error) => break Some(NetError::io(&shared.peer, error)),
            },
            _ = closing.wait_for(|closing| *closing) => break shared.take_abort_reason(),
        }
    };
    match &reason {
        None => tracing::debug!(peer = %shared.peer, "connection closed"),
        Some(error) => tracing::warn!("closing connection: {error}"),
    }
    // Everything sent so far is written; shut our side down unless a
    // sender is stuck writing to a peer that does not read (its write fails
    // once the peer is gone).
    if let Ok(mut slot) = shared.writer.try_lock() {
        if let Some(mut writer) = slot.take() {
            let _ = writer.shutdown().await;
        }
    }
    shared.closing.send_replace(true);
    shared.closed.store(true, Ordering::SeqCst);
    for token in shared.fail_pending(reason.as_ref()) {
        let kind = EventKind::Unanswered { token };
        let _ = events
            .send(Event {
                conn: shared.id,
                kind,
            })
            .await;
    }
    let _ = events
        .send(Event {
            conn: shared.id,
            kind: EventKind::Closed(reason),
        })
        .await;
}

/// Longest rendering of a packet's arguments in the packet log: object data
/// would otherwise fill it.
const PACKET_LOG_ARGUMENTS: usize = 512;

/// Text that takes at most [`PACKET_LOG_ARGUMENTS`] bytes, then refuses
/// more (an error ends the formatting).
struct Bounded(String);

impl std::fmt::Write for Bounded {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let room = PACKET_LOG_ARGUMENTS - self.0.len();
        if text.len() <= room {
            self.0.push_str(text);
            return Ok(());
        }
        let mut end = room;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.0.push_str(&text[..end]);
        Err(std::fmt::Error)
    }
}

/// A line of the packet log (`neo_log::PACKET_TARGET`), when it is on:
/// `#0x0012 AskObject > 127.0.0.1:40000 | «arguments»`, `>` sent to the
/// peer, `<` received from it.
fn log_packet(msg_id: u32, packet: &Packet, direction: char, peer: &str) {
    if !tracing::enabled!(target: neo_log::PACKET_TARGET, tracing::Level::DEBUG) {
        return;
    }
    // Formatting stops at the bound: a 64 MiB object is not rendered
    // whole to keep 512 bytes of it.
    let mut arguments = Bounded(String::new());
    if std::fmt::write(&mut arguments, format_args!("{packet:?}")).is_err() {
        arguments.0.push_str("...");
    }
    let arguments = arguments.0;
    tracing::debug!(
        target: neo_log::PACKET_TARGET,
        "#0x{msg_id:04x} {} {direction} {peer} | {arguments}",
        packet.name()
    );
}

#[cfg(test)]
mod tests {
    use neo_proto::packets::Error;
    use neo_proto::ErrorCode;

    use super::*;

    #[test]
    fn a_packet_line_is_cut_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packets.log");
        let (subscriber, _logging) = neo_log::build(neo_log::LogOptions {
            program: "test",
            file: Some(&path),
            filter: Some("neo::packet=debug"),
        })
        .unwrap();
        let huge = Packet::Error(Error::new(ErrorCode::NotReady, "é".repeat(10_000)));
        tracing::subscriber::with_default(subscriber, || {
            log_packet(7, &huge, '<', "127.0.0.1:1");
        });
        let log = std::fs::read_to_string(&path).unwrap();
        let line = neo_log::parse_line(log.trim_end()).unwrap();
        assert_eq!(line.packet(), Some("Error"));
        let (head, arguments) = line.message.split_once(" | ").unwrap();
        assert_eq!(head, "#0x0007 Error < 127.0.0.1:1");
        assert!(arguments.ends_with("..."), "{arguments}");
        assert!(arguments.len() <= PACKET_LOG_ARGUMENTS + 3);
    }
}
