//! The connection layer in one process: handshake, correlation of answers,
//! notifications, errors, back-pressure and closing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use neo_net::{
    connect_alone, AskError, Connection, ConnectionConfig, EventKind, Inbox, Listener, NetError,
    Outgoing, Side, Token,
};
use neo_proto::packets::{
    AnswerObject, AskLastTransaction, AskObject, Error, InvalidateObjects, Ping, Pong,
    SetClusterState,
};
use neo_proto::{Address, Checksum, ClusterState, ErrorCode, Frame, Oid, Packet, Tid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config() -> ConnectionConfig {
    ConnectionConfig::default()
}

/// Two connected ends over an in-memory pipe.
async fn pair(config: &ConnectionConfig) -> ((Connection, Inbox), (Connection, Inbox)) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (left, right) = tokio::join!(
        Connection::open(a, Side::Initiator, "left".into(), config),
        Connection::open(b, Side::Acceptor, "right".into(), config)
    );
    (left.unwrap(), right.unwrap())
}

async fn next_frame(inbox: &mut Inbox) -> Frame {
    match inbox.recv().await.expect("event").kind {
        EventKind::Packet(frame) => frame,
        other => panic!("expected a packet, got {other:?}"),
    }
}

async fn next_closed(inbox: &mut Inbox) -> Option<NetError> {
    loop {
        if let EventKind::Closed(reason) = inbox.recv().await.expect("event").kind {
            return reason;
        }
    }
}

fn answer_object(oid: u64) -> AnswerObject {
    AnswerObject {
        oid: Oid(oid),
        serial: Tid(oid * 10),
        next_serial: None,
        compression: Some(0),
        checksum: Checksum::ZERO,
        data: bytes::Bytes::from(vec![oid as u8; 3]),
        data_serial: None,
    }
}

#[tokio::test]
async fn late_answers_out_of_order_reach_their_requests() {
    let ((client, _client_inbox), (server, mut server_inbox)) = pair(&config()).await;
    let ask = |oid| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .ask(AskObject {
                    oid: Oid(oid),
                    at: None,
                    before: None,
                })
                .await
        })
    };
    let first = ask(1);
    let first_frame = next_frame(&mut server_inbox).await;
    let second = ask(2);
    let second_frame = next_frame(&mut server_inbox).await;
    assert_eq!((first_frame.msg_id, second_frame.msg_id), (0, 1));

    // Answer the second request first.
    server.answer(1, answer_object(2)).await.unwrap();
    server.answer(0, answer_object(1)).await.unwrap();
    assert_eq!(second.await.unwrap().unwrap(), answer_object(2));
    assert_eq!(first.await.unwrap().unwrap(), answer_object(1));
}

#[tokio::test]
async fn answers_do_not_consume_msg_ids_and_notifications_arrive_as_events() {
    let ((client, mut client_inbox), (server, mut server_inbox)) = pair(&config()).await;
    let pong = tokio::spawn({
        let client = client.clone();
        async move { client.ask(Ping {}).await }
    });
    let ping = next_frame(&mut server_inbox).await;
    assert_eq!((ping.msg_id, ping.packet), (0, Packet::Ping(Ping {})));
    server.answer(ping.msg_id, Pong {}).await.unwrap();
    let notification = InvalidateObjects {
        tid: Tid(5),
        oids: vec![Oid(1)],
    };
    server.notify(notification.clone()).await.unwrap();
    pong.await.unwrap().unwrap();
    let frame = next_frame(&mut client_inbox).await;
    // The server's own counter starts at 0 although it answered msg_id 0.
    assert_eq!(frame.msg_id, 0);
    assert_eq!(frame.packet, Packet::InvalidateObjects(notification));
}

#[tokio::test]
async fn error_answers_are_refusals_except_ack() {
    let ((client, _client_inbox), (server, mut server_inbox)) = pair(&config()).await;
    let refused = tokio::spawn({
        let client = client.clone();
        async move { client.ask(AskLastTransaction {}).await }
    });
    let frame = next_frame(&mut server_inbox).await;
    let error = Error::new(ErrorCode::NotReady, "Retry Later");
    server.answer(frame.msg_id, error.clone()).await.unwrap();
    match refused.await.unwrap() {
        Err(AskError::Refused { error: got, .. }) => assert_eq!(got, error),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let acked = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .ask(SetClusterState {
                    state: ClusterState::Verifying,
                })
                .await
        }
    });
    let frame = next_frame(&mut server_inbox).await;
    server
        .answer(frame.msg_id, Error::ack("Cluster state changed"))
        .await
        .unwrap();
    assert_eq!(acked.await.unwrap().unwrap().code, ErrorCode::Ack);
}

#[tokio::test]
async fn a_wrong_answer_closes_the_connection_and_tells_the_peer() {
    let ((client, mut client_inbox), (server, mut server_inbox)) = pair(&config()).await;
    let asked = tokio::spawn({
        let client = client.clone();
        async move { client.ask(Ping {}).await }
    });
    let frame = next_frame(&mut server_inbox).await;
    server.answer(frame.msg_id, answer_object(1)).await.unwrap();
    assert!(matches!(
        next_closed(&mut client_inbox).await,
        Some(NetError::UnexpectedAnswer {
            answer: "AnswerObject",
            ..
        })
    ));
    // The pending request fails instead of hanging.
    assert!(matches!(
        asked.await.unwrap(),
        Err(AskError::Net(NetError::Closed { .. }))
    ));
    let reply = next_frame(&mut server_inbox).await;
    match reply.packet {
        Packet::Error(error) => assert_eq!(error.code, ErrorCode::ProtocolError),
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(
        next_closed(&mut server_inbox).await.map(|e| e.to_string()),
        None
    );
}

#[tokio::test]
async fn closing_fails_pending_requests() {
    let ((client, mut client_inbox), (server, mut server_inbox)) = pair(&config()).await;
    let asked = tokio::spawn({
        let client = client.clone();
        async move { client.ask(Ping {}).await }
    });
    next_frame(&mut server_inbox).await;
    server.close().await;
    assert!(matches!(
        asked.await.unwrap(),
        Err(AskError::Net(NetError::Closed { .. }))
    ));
    assert!(next_closed(&mut client_inbox).await.is_none());
    assert!(client.is_closed());
    assert!(matches!(
        client.ask(Ping {}).await,
        Err(AskError::Net(NetError::Closed { .. }))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out_in_the_handshake() {
    let (a, _b) = tokio::io::duplex(64);
    let error = Connection::open(a, Side::Initiator, "silent".into(), &config())
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "silent: no handshake within 30 s");
}

#[tokio::test(start_paused = true)]
async fn senders_wait_when_the_peer_does_not_read() {
    let config = config();
    let (a, mut b) = tokio::io::duplex(256);
    b.write_all(&neo_proto::MAGIC).await.unwrap();
    let (connection, _inbox) = Connection::open(a, Side::Initiator, "slow".into(), &config)
        .await
        .unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let sent = sent.clone();
        async move {
            for tid in 0..1000 {
                let oids = (0..10).map(Oid).collect();
                connection
                    .notify(InvalidateObjects {
                        tid: Tid(tid),
                        oids,
                    })
                    .await
                    .unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    // About 100 bytes each: the 256-byte pipe holds a few.
    let blocked_at = sent.load(Ordering::SeqCst);
    assert!(
        blocked_at < 100,
        "sent {blocked_at} packets to a peer that reads nothing"
    );
    let mut drained = Vec::new();
    let reader = tokio::spawn(async move {
        b.read_to_end(&mut drained).await.unwrap();
        drained
    });
    sender.await.unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 1000);
    drop(reader);
}

#[tokio::test]
async fn wrong_version_is_refused_with_both_versions_named() {
    let listener = Listener::bind(&Address::new("127.0.0.1", 0)).await.unwrap();
    let address = listener.local_address().clone();
    let peer = tokio::spawn(async move {
        let mut stream = TcpStream::connect((address.host.as_str(), address.port))
            .await
            .unwrap();
        let local = stream.local_addr().unwrap();
        stream
            .write_all(&[0x92, 0xa3, b'N', b'E', b'O', 4])
            .await
            .unwrap();
        // The acceptor closes without sending anything after its magic.
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.unwrap();
        (local, received)
    });
    let error = listener
        .accept()
        .await
        .unwrap()
        .open(&config())
        .await
        .unwrap_err();
    let (local, received) = peer.await.unwrap();
    assert_eq!(
        error.to_string(),
        format!("{local}: peer speaks NEO protocol version 4, this node speaks version 5")
    );
    assert_eq!(received, neo_proto::MAGIC);
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let listener = Listener::bind(&Address::new("127.0.0.1", 0)).await.unwrap();
    let address = listener.local_address().clone();
    let server = tokio::spawn(async move {
        let mut reasons = Vec::new();
        for _ in 0..2 {
            let (connection, mut inbox) = listener
                .accept()
                .await
                .unwrap()
                .open(&config())
                .await
                .unwrap();
            tokio::spawn(async move {
                while let Some(event) = inbox.recv().await {
                    match event.kind {
                        EventKind::Packet(frame) => {
                            connection.answer(frame.msg_id, Pong {}).await.unwrap();
                        }
                        EventKind::Closed(reason) => return reason.map(|e| e.to_string()),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                None
            })
            .await
            .map(|reason| reasons.push(reason))
            .unwrap();
        }
        reasons
    });

    let mut raw = TcpStream::connect((address.host.as_str(), address.port))
        .await
        .unwrap();
    raw.write_all(&neo_proto::MAGIC).await.unwrap();
    raw.write_all(&[0x93, 0x00, 0xc1]).await.unwrap();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, neo_proto::MAGIC, "closed without a reply");

    let (client, _inbox) = connect_alone(&address, &config()).await.unwrap();
    client.ask(Ping {}).await.unwrap();
    client.close().await;

    let reasons = server.await.unwrap();
    assert!(
        reasons[0]
            .as_deref()
            .unwrap()
            .contains("reserved msgpack marker 0xc1"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1], None);
}

#[tokio::test]
async fn close_client_keeps_the_connection_while_the_peer_still_uses_it() {
    // left initiated the connection; right serves left's requests.
    let ((left, mut left_inbox), (right, mut right_inbox)) = pair(&config()).await;

    // right also asks left something: both ends are now client and server.
    let asked = tokio::spawn({
        let right = right.clone();
        async move { right.ask(Ping {}).await }
    });
    let ping = next_frame(&mut left_inbox).await;
    left.answer(ping.msg_id, Pong {}).await.unwrap();
    asked.await.unwrap().unwrap();

    // left is done as a client but still serves right: CloseClient, stay open.
    left.close_client().await;
    let asked = tokio::spawn({
        let right = right.clone();
        async move { right.ask(Ping {}).await }
    });
    let ping = next_frame(&mut left_inbox).await;
    left.answer(ping.msg_id, Pong {}).await.unwrap();
    asked.await.unwrap().unwrap();
    assert!(!left.is_closed() && !right.is_closed());

    // right is done too and serves nobody any more: the connection closes.
    right.close_client().await;
    assert!(next_closed(&mut left_inbox).await.is_none());
    assert!(next_closed(&mut right_inbox).await.is_none());
}

#[tokio::test]
async fn close_client_closes_when_the_peer_sends_no_requests() {
    let ((left, mut left_inbox), (_right, mut right_inbox)) = pair(&config()).await;
    left.close_client().await;
    assert!(next_closed(&mut left_inbox).await.is_none());
    assert!(next_closed(&mut right_inbox).await.is_none());
}

#[tokio::test]
async fn answers_to_send_request_come_in_order_with_other_packets() {
    let ((client, mut client_inbox), (server, mut server_inbox)) = pair(&config()).await;
    client
        .send_request(AskLastTransaction {}, Token(41))
        .await
        .unwrap();
    let request = next_frame(&mut server_inbox).await;
    // A notification sent before the answer is seen before it.
    let notification = InvalidateObjects {
        tid: Tid(7),
        oids: vec![],
    };
    server.notify(notification.clone()).await.unwrap();
    let answer = neo_proto::packets::AnswerLastTransaction { tid: Tid(7) };
    server.answer(request.msg_id, answer.clone()).await.unwrap();
    assert_eq!(
        next_frame(&mut client_inbox).await.packet,
        Packet::InvalidateObjects(notification)
    );
    match client_inbox.recv().await.unwrap().kind {
        EventKind::Answer { token, packet } => {
            assert_eq!(token, Token(41));
            assert_eq!(packet, Packet::AnswerLastTransaction(answer));
        }
        other => panic!("expected the answer, got {other:?}"),
    }

    // A request still pending when the connection closes is reported.
    client.send_request(Ping {}, Token(42)).await.unwrap();
    next_frame(&mut server_inbox).await;
    server.close().await;
    match client_inbox.recv().await.unwrap().kind {
        EventKind::Unanswered { token } => assert_eq!(token, Token(42)),
        other => panic!("expected Unanswered, got {other:?}"),
    }
    assert!(next_closed(&mut client_inbox).await.is_none());
}

/// A duplex pipe whose sending half counts the writes that carried bytes.
struct CountingPipe {
    pipe: tokio::io::DuplexStream,
    writes: Arc<AtomicUsize>,
}

struct CountingWriter {
    inner: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    writes: Arc<AtomicUsize>,
}

impl tokio::io::AsyncWrite for CountingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl neo_net::Transport for CountingPipe {
    type Reader = tokio::io::ReadHalf<tokio::io::DuplexStream>;
    type Writer = CountingWriter;
    fn split(self) -> (Self::Reader, CountingWriter) {
        let (reader, inner) = tokio::io::split(self.pipe);
        let writes = self.writes;
        (reader, CountingWriter { inner, writes })
    }
}

#[tokio::test]
async fn a_batch_is_one_write_in_order_and_its_requests_are_answered() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let writes = Arc::new(AtomicUsize::new(0));
    let counted = CountingPipe {
        pipe: a,
        writes: writes.clone(),
    };
    let config = config();
    let (left, right) = tokio::join!(
        Connection::open(counted, Side::Initiator, "left".into(), &config),
        Connection::open(b, Side::Acceptor, "right".into(), &config)
    );
    let ((server, mut server_inbox), (client, mut client_inbox)) = (left.unwrap(), right.unwrap());
    client.send_request(Ping {}, Token(1)).await.unwrap();
    let ping = next_frame(&mut server_inbox).await;
    let notification = InvalidateObjects {
        tid: Tid(7),
        oids: vec![Oid(3)],
    };
    let before = writes.load(Ordering::SeqCst);
    server
        .send_batch(vec![
            Outgoing::Answer(ping.msg_id, Pong {}.into()),
            Outgoing::Notify(notification.clone().into()),
            Outgoing::Request(Token(9), AskLastTransaction {}.into()),
        ])
        .await
        .unwrap();
    assert_eq!(writes.load(Ordering::SeqCst), before + 1);

    match client_inbox.recv().await.unwrap().kind {
        EventKind::Answer { token, packet } => {
            assert_eq!(token, Token(1));
            assert_eq!(packet, Packet::Pong(Pong {}));
        }
        other => panic!("expected the answer to Ping, got {other:?}"),
    }
    assert_eq!(
        next_frame(&mut client_inbox).await.packet,
        Packet::InvalidateObjects(notification)
    );
    let request = next_frame(&mut client_inbox).await;
    assert_eq!(
        request.packet,
        Packet::AskLastTransaction(AskLastTransaction {})
    );
    let answer = neo_proto::packets::AnswerLastTransaction { tid: Tid(8) };
    client.answer(request.msg_id, answer.clone()).await.unwrap();
    match server_inbox.recv().await.unwrap().kind {
        EventKind::Answer { token, packet } => {
            assert_eq!(token, Token(9));
            assert_eq!(packet, Packet::AnswerLastTransaction(answer));
        }
        other => panic!("expected the answer to the batch's request, got {other:?}"),
    }

    // On a closed connection a batch fails, and its request is not left
    // waiting for an answer (no Unanswered event for it).
    server.close().await;
    let refused = server
        .send_batch(vec![Outgoing::Request(Token(10), Ping {}.into())])
        .await;
    assert!(refused.is_err());
    loop {
        match server_inbox.recv().await.unwrap().kind {
            EventKind::Closed(_) => break,
            EventKind::Unanswered { token } => panic!("{token:?} was never sent"),
            _ => {}
        }
    }
}

/// A connection started with `Announce::Opened` says so on its channel
/// before any of its packets, even when the peer's first packet is already
/// there when the handshake ends.
#[tokio::test]
async fn an_announced_connection_is_opened_before_its_first_packet() {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    let mut sent = neo_proto::MAGIC.to_vec();
    neo_proto::encode_frame_into(&mut sent, 0, &Packet::Ping(Ping {}));
    b.write_all(&sent).await.unwrap();
    let (events, mut event_rx) = tokio::sync::mpsc::channel(16);
    let announce = neo_net::Announce::Opened {
        token: Some(Token(7)),
        permit: None,
    };
    let id = neo_net::ConnId::next();
    let connection = Connection::establish(
        a,
        Side::Initiator,
        "peer".into(),
        id,
        events,
        &config(),
        announce,
    )
    .await
    .unwrap();
    match event_rx.recv().await.unwrap() {
        neo_net::Event {
            conn,
            kind:
                EventKind::Opened {
                    connection: opened,
                    token,
                },
        } => {
            assert_eq!(conn, id);
            assert_eq!(opened.id(), connection.id());
            assert_eq!(token, Some(Token(7)));
        }
        other => panic!("expected Opened first, got {other:?}"),
    }
    match event_rx.recv().await.unwrap().kind {
        EventKind::Packet(frame) => assert_eq!(frame.packet, Packet::Ping(Ping {})),
        other => panic!("expected the ping, got {other:?}"),
    }
    drop(b);
}

/// A peer that goes silent while we await an answer is pinged, then given
/// up after `patience` (here off TCP, where no kernel can tell a stopped
/// process from a busy one): the request fails instead of waiting forever.
#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_given_up_while_an_answer_is_awaited() {
    let (a, mut b) = tokio::io::duplex(1 << 16);
    b.write_all(&neo_proto::MAGIC).await.unwrap();
    let config = ConnectionConfig {
        liveness: Some(Duration::from_millis(800)),
        patience: Duration::from_secs(5),
        ..ConnectionConfig::default()
    };
    let (client, _inbox) = Connection::open(a, Side::Initiator, "stopped".into(), &config)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let error = client.ask(Ping {}).await.unwrap_err();
    assert!(
        matches!(error, AskError::Net(NetError::Silent { .. })),
        "{error:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(5800) && elapsed <= Duration::from_millis(6000),
        "given up once probed and silent for the patience: {elapsed:?}"
    );
    // It pinged before giving up: the peer's side holds our request, then
    // the ping.
    let mut received = vec![0; 1024];
    let read = b.read(&mut received).await.unwrap();
    let mut decoder = neo_proto::StreamDecoder::new();
    decoder.extend(&received[..read]);
    let names: Vec<&str> = std::iter::from_fn(|| decoder.next_frame().unwrap())
        .map(|frame| frame.packet.name())
        .collect();
    assert_eq!(names, ["Ping", "Ping"]);
}

/// A busy peer (its kernel acknowledges, its process answers nothing, not
/// even pings, for seconds: a storage fsyncing under load) is not a dead
/// one: the connection is kept and the answer arrives.
#[tokio::test]
async fn a_busy_peer_is_kept_over_tcp() {
    let config = ConnectionConfig {
        liveness: Some(Duration::from_millis(200)),
        ..ConnectionConfig::default()
    };
    let listener = Listener::bind(&Address::new("127.0.0.1", 0)).await.unwrap();
    let address = listener.local_address().clone();
    let busy = tokio::spawn(async move {
        let server_config = ConnectionConfig::default();
        let (server, mut inbox) = listener
            .accept()
            .await
            .unwrap()
            .open(&server_config)
            .await
            .unwrap();
        let request = next_frame(&mut inbox).await;
        // Ten times the liveness limit without a byte back.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let answer = neo_proto::packets::AnswerLastTransaction { tid: Tid(7) };
        server.answer(request.msg_id, answer).await.unwrap();
        // The pings, answered late.
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await
        {
            if let EventKind::Packet(frame) = event.kind {
                let _ = server.answer(frame.msg_id, Pong {}).await;
            }
        }
    });
    let (client, _inbox) = connect_alone(&address, &config).await.unwrap();
    let answer = client.ask(AskLastTransaction {}).await.unwrap();
    assert_eq!(answer.tid, Tid(7));
    assert!(!client.is_closed());
    busy.await.unwrap();
}

/// A peer that answers pings may take as long as it likes to answer the
/// request itself: liveness times no request out.
#[tokio::test(start_paused = true)]
async fn a_slow_peer_that_answers_pings_is_kept() {
    let config = ConnectionConfig {
        liveness: Some(Duration::from_millis(800)),
        ..ConnectionConfig::default()
    };
    let ((client, _client_inbox), (server, mut server_inbox)) = pair(&config).await;
    let slow = tokio::spawn(async move {
        let request = next_frame(&mut server_inbox).await;
        // Pings are answered, the request only after 10 s.
        let answer_at = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            tokio::select! {
                frame = next_frame(&mut server_inbox) => {
                    assert_eq!(frame.packet, Packet::Ping(Ping {}));
                    server.answer(frame.msg_id, Pong {}).await.unwrap();
                }
                () = tokio::time::sleep_until(answer_at) => break,
            }
        }
        let answer = neo_proto::packets::AnswerLastTransaction { tid: Tid(3) };
        server.answer(request.msg_id, answer).await.unwrap();
    });
    let answer = client.ask(AskLastTransaction {}).await.unwrap();
    assert_eq!(answer.tid, Tid(3));
    slow.await.unwrap();
    assert!(!client.is_closed());
}

/// With a keepalive, an idle connection whose peer stopped is found out
/// too (a storage waiting for orders from a master that is gone), while an
/// idle peer that answers pings is kept.
#[tokio::test(start_paused = true)]
async fn a_keepalive_finds_a_dead_peer_on_an_idle_connection() {
    let config = ConnectionConfig {
        liveness: Some(Duration::from_millis(800)),
        keepalive: Some(Duration::from_secs(1)),
        ..ConnectionConfig::default()
    };
    // A peer that answers: still open after a minute of idleness.
    let ((alive, _alive_inbox), (server, mut server_inbox)) = pair(&config).await;
    let responder = tokio::spawn(async move {
        while let Some(event) = server_inbox.recv().await {
            if let EventKind::Packet(frame) = event.kind {
                let _ = server.answer(frame.msg_id, Pong {}).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!alive.is_closed());
    // A peer that stopped (off TCP): given up once pinged and silent for
    // the patience.
    let (a, mut b) = tokio::io::duplex(1 << 16);
    b.write_all(&neo_proto::MAGIC).await.unwrap();
    let (_dead, mut inbox) = Connection::open(a, Side::Initiator, "stopped".into(), &config)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let reason = next_closed(&mut inbox).await;
    assert!(
        matches!(reason, Some(NetError::Silent { .. })),
        "{reason:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed <= Duration::from_millis(1000) + config.patience + Duration::from_millis(200),
        "{elapsed:?}"
    );
    responder.abort();
}
