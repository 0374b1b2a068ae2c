//! The metrics endpoint: what it serves, and the limits on what a peer
//! can make it hold (head size, time to send the head, connections); the
//! gauges counted from a node's state and the timing of its requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use neo_net::http::HttpLimits as Limits;
use neo_net::metrics::{durations, Classify, MetricsEndpoint, Tally, Timed, CONTENT_TYPE};
use neo_net::{ConnId, Input, Node, Output};
use neo_proto::{packets, Address, Packet, UnixTime};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An endpoint on an ephemeral loopback port serving one counter (at 3),
/// with `limits`; its address.
async fn endpoint(limits: Limits) -> std::net::SocketAddr {
    let mut registry = Registry::default();
    let counter: Counter = Counter::default();
    counter.inc_by(3);
    registry.register("neo_test_things", "Things", counter);
    let endpoint = MetricsEndpoint::bind(&Address::new("127.0.0.1", 0))
        .await
        .unwrap()
        .with_limits(limits);
    let address = endpoint.local_address().to_string().parse().unwrap();
    tokio::spawn(endpoint.serve(Arc::new(registry)));
    address
}

fn small_limits() -> Limits {
    Limits {
        max_head_bytes: 1024,
        read_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_millis(500),
        max_connections: 2,
    }
}

/// Sends `request` and reads the whole response (until the endpoint
/// closes).
async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn get_metrics_is_openmetrics_text_and_anything_else_is_404() {
    let address = endpoint(Limits::default()).await;
    let response = exchange(
        address,
        b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
    )
    .await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
    assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
    assert!(body.contains("# TYPE neo_test_things counter\n"), "{body}");
    assert!(body.contains("neo_test_things_total 3\n"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    for (request, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "404"),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", "404"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "405",
        ),
        (b"GET /metrics\r\n\r\n", "400"),
        (b"GET /metrics SPDY/3\r\n\r\n", "400"),
    ] {
        let response = exchange(address, request).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{response}"
        );
    }
    // A query string is still the metrics.
    let response = exchange(address, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
}

#[tokio::test]
async fn an_oversized_head_is_refused_431() {
    let address = endpoint(small_limits()).await;
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    request.extend_from_slice(&[b'a'; 2000]);
    request.extend_from_slice(b"\r\n\r\n");
    let response = exchange(address, &request).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    // Without a blank line at all, the same once past the limit.
    let mut stream = TcpStream::connect(address).await.unwrap();
    let endless = vec![b'a'; 4096];
    let _ = stream.write_all(&endless).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    assert!(response.starts_with(b"HTTP/1.1 431 "));
}

#[tokio::test]
async fn a_slowloris_is_cut_at_the_timeout() {
    let address = endpoint(small_limits()).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    // A byte every 100 ms: each read comes well within any per-read
    // timeout; only a limit on the whole head ends it.
    let mut answer = Vec::new();
    for byte in b"GET /metrics HTTP/1.1\r\nHost: a-very-long-host-name-sent-slowly\r\n".iter() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buffer = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 "),
        "the endpoint kept a slowloris: {answer}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_at_once() {
    let address = endpoint(Limits {
        read_timeout: Duration::from_secs(30),
        ..small_limits()
    })
    .await;
    // Two idle connections take the two places...
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(address).await.unwrap());
    }
    // ...(once accepted: a scrape goes through the same accept loop)...
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so a third is refused, and quickly.
    let response = tokio::time::timeout(
        Duration::from_secs(2),
        exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n"),
    )
    .await
    .expect("a connection over the limit is kept");
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
    // Once one place is free, scrapes are served again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
}

/// Counts as a [`Tally`] shows them: `name{label="value"}` → count.
fn encoded(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[test]
fn a_tally_zeroes_what_is_no_longer_counted() {
    let mut registry = Registry::default();
    let mut tally: Tally<1> = Tally::new(&mut registry, "neo_test_cells", "Cells");
    tally.set([
        [("state", "UP_TO_DATE")],
        [("state", "OUT_OF_DATE")],
        [("state", "UP_TO_DATE")],
    ]);
    let text = encoded(&registry);
    assert!(
        text.contains("neo_test_cells{state=\"UP_TO_DATE\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("neo_test_cells{state=\"OUT_OF_DATE\"} 1\n"),
        "{text}"
    );
    tally.set([[("state", "UP_TO_DATE")]; 3]);
    let text = encoded(&registry);
    assert!(
        text.contains("neo_test_cells{state=\"UP_TO_DATE\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("neo_test_cells{state=\"OUT_OF_DATE\"} 0\n"),
        "{text}"
    );
}

/// A node that answers each request one batch after it came (as a
/// storage answers a store that waited for a lock).
#[derive(Default)]
struct Late {
    arrived: Vec<(ConnId, u32)>,
    due: Vec<(ConnId, u32)>,
}

impl Node for Late {
    fn handle(&mut self, input: Input, _now: UnixTime) {
        if let Input::Packet { conn, msg_id, .. } = input {
            self.arrived.push((conn, msg_id));
        }
    }

    fn poll_output(&mut self) -> Vec<Output> {
        let answers = std::mem::replace(&mut self.due, std::mem::take(&mut self.arrived));
        answers
            .into_iter()
            .map(|(conn, msg_id)| Output::Answer {
                conn,
                msg_id,
                packet: packets::Pong {}.into(),
            })
            .collect()
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        None
    }
}

#[test]
fn requests_are_timed_from_arrival_to_their_late_answer_by_operation() {
    let mut registry = Registry::default();
    let durations = durations(&mut registry, "neo_test_request_duration");
    let classify: Classify = |packet| matches!(packet, Packet::Ping(_)).then_some("ping");
    let mut node = Timed::new(Late::default(), classify, Some(durations));
    let ping = |conn, msg_id| Input::Packet {
        conn: ConnId(conn),
        msg_id,
        packet: packets::Ping {}.into(),
    };
    node.handle(ping(1, 7), 0.0);
    node.handle(ping(2, 7), 0.0);
    assert!(node.poll_output().is_empty());
    // The second's connection goes before its answer: it is not timed.
    node.handle(Input::Closed { conn: ConnId(2) }, 0.0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(node.poll_output().len(), 2);
    let text = encoded(&registry);
    assert!(
        text.contains("neo_test_request_duration_seconds_count{operation=\"ping\"} 1\n"),
        "{text}"
    );
    // At least the 20 ms waited: no bucket below 12.8 ms has it.
    assert!(
        text.contains(
            "neo_test_request_duration_seconds_bucket{le=\"0.0128\",operation=\"ping\"} 0\n"
        ),
        "{text}"
    );
}
