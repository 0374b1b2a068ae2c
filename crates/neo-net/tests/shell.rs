//! The node shell with a scripted node on real loopback sockets: what a
//! node is told and in which order, connecting out, timers, the limit on
//! accepted connections, peers that stop reading and TLS handshakes that
//! stall.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use neo_net::{
    connect_alone, ConnId, ConnectionConfig, EventKind, Input, Listener, Node, Outbox, Output,
    ShellConfig, Token,
};
use neo_proto::packets::{self as p, Ping, Pong};
use neo_proto::{Address, ErrorCode, Packet, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the scripted node saw, as comparable strings.
type Log = Arc<Mutex<Vec<String>>>;

/// A node that logs its inputs and reacts with `script`.
struct Scripted<F> {
    log: Log,
    out: Outbox,
    timeout: Option<UnixTime>,
    script: F,
}

impl<F: FnMut(&Input, &mut Outbox, &mut Option<UnixTime>) + Send> Node for Scripted<F> {
    fn handle(&mut self, input: Input, _now: UnixTime) {
        let line = match &input {
            Input::Start => "start".to_owned(),
            Input::Accepted { .. } => "accepted".to_owned(),
            Input::Connected { token, .. } => format!("connected {}", token.0),
            Input::ConnectFailed { token } => format!("failed {}", token.0),
            Input::Packet { packet, .. } => format!("packet {}", packet.name()),
            Input::AnswerPart { token, packet, .. } => {
                format!("part {} {}", token.0, packet.name())
            }
            Input::Answer { token, packet, .. } => format!("answer {} {}", token.0, packet.name()),
            Input::Closed { .. } => "closed".to_owned(),
            Input::Timeout => "timeout".to_owned(),
        };
        self.log.lock().unwrap().push(line);
        (self.script)(&input, &mut self.out, &mut self.timeout);
    }

    fn poll_output(&mut self) -> Vec<Output> {
        self.out.take()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        self.timeout
    }
}

fn scripted<F>(script: F) -> (Scripted<F>, Log)
where
    F: FnMut(&Input, &mut Outbox, &mut Option<UnixTime>) + Send,
{
    let log = Log::default();
    let node = Scripted {
        log: log.clone(),
        out: Outbox::default(),
        timeout: None,
        script,
    };
    (node, log)
}

async fn listener() -> Listener {
    Listener::bind(&Address::new("127.0.0.1", 0)).await.unwrap()
}

/// Runs `node` in the shell, listening on a free port of its own.
async fn serve<N: Node + Send + 'static>(
    mut node: N,
) -> (
    Address,
    tokio::task::JoinHandle<Result<(), neo_net::ShellError>>,
) {
    let listener = listener().await;
    let address = listener.local_address().clone();
    let shell = tokio::spawn(async move {
        neo_net::shell::run(
            &mut node,
            Some(listener),
            ShellConfig::default(),
            std::future::pending(),
        )
        .await
    });
    (address, shell)
}

/// Waits until the log has a line `line`.
async fn wait_for(log: &Log, line: &str) {
    for _ in 0..500 {
        if log.lock().unwrap().iter().any(|l| l == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {line:?} in {:?}", log.lock().unwrap());
}

/// How many lines of the log are `line`.
fn count(log: &Log, line: &str) -> usize {
    log.lock().unwrap().iter().filter(|l| *l == line).count()
}

fn identification() -> p::RequestIdentification {
    p::RequestIdentification {
        node_type: neo_proto::NodeType::Client,
        nid: None,
        address: None,
        cluster: "test".into(),
        id_timestamp: None,
        extra: neo_proto::Map::new(),
    }
}

#[tokio::test]
async fn a_peer_is_accepted_before_its_packets_and_answers_come_by_token() {
    // Answers Ping, and asks the peer a Ping of its own tagged 99.
    let (node, log) = scripted(|input, out, _| match input {
        Input::Packet {
            conn,
            msg_id,
            packet: Packet::Ping(_),
        } => {
            out.answer(*conn, *msg_id, Pong {});
            out.request(*conn, Token(99), Ping {});
        }
        Input::Answer { .. } => out.exit(Ok(())),
        _ => {}
    });
    let (address, shell) = serve(node).await;
    let (connection, mut inbox) = connect_alone(&address, &ConnectionConfig::default())
        .await
        .unwrap();
    let Pong {} = connection.ask(Ping {}).await.unwrap();
    // The node's own ping: answer it.
    let frame = loop {
        match inbox.recv().await.unwrap().kind {
            EventKind::Packet(frame) => break frame,
            _ => continue,
        }
    };
    assert_eq!(frame.packet, Packet::Ping(Ping {}));
    connection.answer(frame.msg_id, Pong {}).await.unwrap();
    shell.await.unwrap().unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["start", "accepted", "packet Ping", "answer 99 Pong"]
    );
}

fn add_transaction(tid: u64) -> p::AddTransaction {
    p::AddTransaction {
        tid: neo_proto::Tid(tid),
        user: Default::default(),
        description: Default::default(),
        extension: Default::default(),
        packed: false,
        ttid: neo_proto::Tid(tid),
        oids: vec![],
        pack: None,
    }
}

/// `AddTransaction` sent with the msg_id of a fetch of ours is a part of
/// its answer, with its token; sent with another msg_id, it is a packet
/// like any other (the peer's counter may hit the id of a request of ours
/// by chance, so only what NEO sends by id is matched).
#[tokio::test]
async fn packets_sent_ahead_of_an_answer_come_with_the_token_of_the_request() {
    let (node, log) = scripted(|input, out, _| match input {
        Input::Accepted { conn } => {
            let fetch = p::AskFetchTransactions {
                partition: 0,
                length: 1000,
                min_tid: neo_proto::Tid(0),
                max_tid: neo_proto::Tid(9),
                known_tids: vec![],
                ask_pack_info: false,
            };
            out.request(*conn, Token(5), fetch);
        }
        Input::Answer { .. } => out.exit(Ok(())),
        _ => {}
    });
    let (address, shell) = serve(node).await;
    let (connection, mut inbox) = connect_alone(&address, &ConnectionConfig::default())
        .await
        .unwrap();
    let fetch = loop {
        if let EventKind::Packet(frame) = inbox.recv().await.unwrap().kind {
            break frame;
        }
    };
    connection
        .answer(fetch.msg_id, add_transaction(1))
        .await
        .unwrap();
    connection
        .answer(fetch.msg_id + 1, add_transaction(2))
        .await
        .unwrap();
    let answer = p::AnswerFetchTransactions {
        next_tid: None,
        delete_tids: vec![],
        completed_pack: None,
    };
    connection.answer(fetch.msg_id, answer).await.unwrap();
    shell.await.unwrap().unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "start",
            "accepted",
            "part 5 AddTransaction",
            "packet AddTransaction",
            "answer 5 AnswerFetchTransactions"
        ]
    );
}

/// `Output::CloseClient` ends the node's use of a connection: one it made
/// and never served a request on is closed.
#[tokio::test]
async fn close_client_closes_a_connection_the_peer_does_not_use() {
    let target = listener().await;
    let address = target.local_address().clone();
    let (mut node, log) = scripted(move |input, out, _| match input {
        Input::Start => out.connect(Token(1), address.clone()),
        Input::Connected { conn, .. } => out.close_client(*conn),
        Input::Closed { .. } => out.exit(Ok(())),
        _ => {}
    });
    let accepting = tokio::spawn(async move {
        let accepted = target.accept().await.unwrap();
        let (_connection, mut inbox) = accepted.open(&ConnectionConfig::default()).await.unwrap();
        loop {
            if let EventKind::Closed(reason) = inbox.recv().await.unwrap().kind {
                return reason;
            }
        }
    });
    let result = neo_net::shell::run(
        &mut node,
        None,
        ShellConfig::default(),
        std::future::pending(),
    )
    .await;
    assert!(result.is_ok());
    assert!(accepting.await.unwrap().is_none(), "closed cleanly");
    assert_eq!(*log.lock().unwrap(), ["start", "connected 1", "closed"]);
}

#[tokio::test]
async fn connections_and_timers_come_back_to_the_node() {
    let target = listener().await;
    let reachable = target.local_address().clone();
    // A port nobody listens on: bind one, note it, close it.
    let unreachable = listener().await.local_address().clone();
    let mut outcomes = 0;
    let (mut node, log) = scripted(move |input, out, timeout| match input {
        Input::Start => {
            out.connect(Token(1), reachable.clone());
            out.connect(Token(2), unreachable.clone());
        }
        Input::Connected { .. } | Input::ConnectFailed { .. } => {
            outcomes += 1;
            if outcomes == 2 {
                // A deadline in the past: at once.
                *timeout = Some(0.0);
            }
        }
        Input::Timeout => out.exit(Err("done".to_owned())),
        _ => {}
    });
    // `target` only completes handshakes.
    let accepting = tokio::spawn(async move {
        let accepted = target.accept().await.unwrap();
        accepted.open(&ConnectionConfig::default()).await.unwrap()
    });
    let result = neo_net::shell::run(
        &mut node,
        None,
        ShellConfig::default(),
        std::future::pending(),
    )
    .await;
    assert_eq!(result.unwrap_err().to_string(), "done");
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0], "start");
    assert!(log.contains(&"connected 1".to_owned()), "{log:?}");
    assert!(log.contains(&"failed 2".to_owned()), "{log:?}");
    assert_eq!(log.last().unwrap(), "timeout");
    drop(accepting.await.unwrap());
}

/// Work done outside the node reports back as a completion: applied to
/// the node, whose outputs are then carried out like after any input.
#[tokio::test]
async fn completions_are_applied_to_the_node_and_its_outputs_carried_out() {
    let (node, log) = scripted(|_, _, _| {});
    let (completions, receiver) = tokio::sync::mpsc::channel(1);
    let done: neo_net::shell::Completion<_> = Box::new(|node: &mut Scripted<_>, _now| {
        node.log.lock().unwrap().push("completed".to_owned());
        node.out.exit(Err("stopped by a completion".to_owned()));
    });
    let mut node = node;
    let shell = neo_net::shell::run_with_completions(
        &mut node,
        None,
        ShellConfig::default(),
        std::future::pending(),
        receiver,
    );
    let (result, sent) = tokio::join!(shell, completions.send(done));
    assert!(sent.is_ok());
    assert_eq!(result.unwrap_err().to_string(), "stopped by a completion");
    assert_eq!(*log.lock().unwrap(), ["start", "completed"]);
}

/// The hostile case for the listener's limit: a peer over it is answered
/// NOT_READY ("retry later", as NEO refuses) and closed; once a connection
/// goes away, a new peer is served again.
#[tokio::test]
async fn connections_over_the_limit_are_refused_with_not_ready() {
    let (mut node, log) = scripted(|input, out, _| {
        if let Input::Packet {
            conn,
            msg_id,
            packet: Packet::RequestIdentification(_),
        } = input
        {
            out.answer(*conn, *msg_id, p::Error::ack("welcome"));
        }
    });
    let listener = listener().await;
    let address = listener.local_address().clone();
    let config = ShellConfig {
        max_connections: 2,
        ..ShellConfig::default()
    };
    let shell = tokio::spawn(async move {
        neo_net::shell::run(&mut node, Some(listener), config, std::future::pending()).await
    });
    let connection_config = ConnectionConfig::default();
    let connect = || connect_alone(&address, &connection_config);
    let (first, _first_inbox) = connect().await.unwrap();
    let (second, _second_inbox) = connect().await.unwrap();
    for connection in [&first, &second] {
        let answer = connection
            .ask_packet(identification().into())
            .await
            .unwrap();
        assert_eq!(answer, Packet::Error(p::Error::ack("welcome")));
    }
    let (third, mut third_inbox) = connect().await.unwrap();
    match third.ask_packet(identification().into()).await.unwrap() {
        Packet::Error(error) => {
            assert_eq!(error.code, ErrorCode::NotReady);
            assert!(error.message.contains("too many connections"), "{error}");
        }
        other => panic!("expected NOT_READY, got {other:?}"),
    }
    loop {
        if let EventKind::Closed(_) = third_inbox.recv().await.unwrap().kind {
            break;
        }
    }
    first.close().await;
    wait_for(&log, "closed").await;
    let (fourth, _fourth_inbox) = connect().await.unwrap();
    let answer = fourth.ask_packet(identification().into()).await.unwrap();
    assert_eq!(answer, Packet::Error(p::Error::ack("welcome")));
    assert_eq!(
        count(&log, "accepted"),
        3,
        "the refused peer never reached the node"
    );
    shell.abort();
}

/// A peer that stops reading is given up on (the node sees it closed)
/// instead of holding the node up forever.
#[tokio::test]
async fn a_peer_that_does_not_read_is_aborted() {
    let conns: Arc<Mutex<Option<ConnId>>> = Arc::default();
    let flooded = conns.clone();
    let (mut node, log) = scripted(move |input, out, _| match input {
        Input::Accepted { conn } => {
            *flooded.lock().unwrap() = Some(*conn);
            for tid in 0..2000u64 {
                let oids = (0..1000).map(neo_proto::Oid).collect();
                let packet = p::InvalidateObjects {
                    tid: neo_proto::Tid(tid),
                    oids,
                };
                out.notify(*conn, packet);
            }
        }
        Input::Closed { .. } => out.exit(Ok(())),
        _ => {}
    });
    let listener = listener().await;
    let address = listener.local_address().clone();
    let config = ShellConfig {
        send_timeout: Duration::from_secs(1),
        ..ShellConfig::default()
    };
    let shell = tokio::spawn(async move {
        neo_net::shell::run(&mut node, Some(listener), config, std::future::pending()).await
    });
    // Sends the magic, then never reads.
    let mut stuck = tokio::net::TcpStream::connect((address.host.as_str(), address.port))
        .await
        .unwrap();
    stuck.write_all(&neo_proto::MAGIC).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), shell)
        .await
        .expect("the shell gives up on the peer within the send timeout")
        .unwrap()
        .unwrap();
    assert!(conns.lock().unwrap().is_some());
    assert_eq!(log.lock().unwrap().last().unwrap(), "closed");
    drop(stuck);
}

/// A peer that starts a TLS handshake and stalls halfway holds only its
/// own handshake task: others are served meanwhile, and it is dropped once
/// the handshake timeout is over. The node never hears of it.
#[tokio::test]
async fn a_tls_handshake_stalled_halfway_is_dropped_in_time_and_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let tls = neo_net::test_pki::TestPki::create(dir.path())
        .unwrap()
        .node
        .load()
        .unwrap();
    let (mut node, log) = scripted(|input, out, _| {
        if let Input::Packet {
            conn,
            msg_id,
            packet: Packet::Ping(_),
        } = input
        {
            out.answer(*conn, *msg_id, Pong {});
        }
    });
    let listener = listener().await.with_tls(Some(tls.clone()));
    let address = listener.local_address().clone();
    let handshake_timeout = Duration::from_secs(2);
    let config = ShellConfig {
        connection: ConnectionConfig {
            handshake_timeout,
            ..ConnectionConfig::default()
        },
        ..ShellConfig::default()
    };
    let shell = tokio::spawn(async move {
        neo_net::shell::run(&mut node, Some(listener), config, std::future::pending()).await
    });
    // The start of a ClientHello record announcing 512 bytes, then nothing.
    let started = std::time::Instant::now();
    let mut stalled = tokio::net::TcpStream::connect((address.host.as_str(), address.port))
        .await
        .unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();

    let client_config = ConnectionConfig {
        tls: Some(tls),
        ..ConnectionConfig::default()
    };
    let (client, _inbox) = connect_alone(&address, &client_config).await.unwrap();
    client.ask(Ping {}).await.unwrap();
    assert!(
        started.elapsed() < handshake_timeout,
        "served while the other handshake stalls"
    );

    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled handshake is dropped");
    assert!(closed.is_err() || rest.is_empty(), "{closed:?} {rest:?}");
    assert!(started.elapsed() >= handshake_timeout);
    assert_eq!(
        count(&log, "accepted"),
        1,
        "only the finished handshake reached the node"
    );
    shell.abort();
}
