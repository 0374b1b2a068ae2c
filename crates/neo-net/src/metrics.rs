//! What every node's metrics share: the OpenMetrics endpoint (`--metrics`)
//! and the timing of requests from their arrival to their answer.
//!
//! The registry and the exposition are `prometheus-client`'s; this module
//! only serves them. The endpoint is a minimal HTTP/1.1 responder, one
//! request per connection, because what a scraper sends is one line and a
//! few headers: it is bounded in what a peer controls (head size, time to
//! send it, connections at once), as the node's own listener is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use neo_proto::{Address, Packet, UnixTime};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::NetError;
use crate::node::{ConnId, Input, Node, Output};
use crate::tcp::resolve;

/// The content type of OpenMetrics text (what `prometheus-client` encodes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The one path served.
pub const PATH: &str = "/metrics";

/// What a scraper may make the endpoint hold.
#[derive(Clone, Debug)]
pub struct EndpointLimits {
    /// Bytes of request line and headers; a longer head is answered 431.
    pub max_head_bytes: usize,
    /// Time to send the whole head (a slowloris sending a byte a second
    /// is cut) and, separately, to take the whole answer.
    pub io_timeout: Duration,
    /// Scrapes served at once; a connection over it is closed at once.
    pub max_connections: usize,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        EndpointLimits {
            max_head_bytes: 8 * 1024,
            io_timeout: Duration::from_secs(5),
            max_connections: 8,
        }
    }
}

/// A bound metrics endpoint, not serving yet.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    local: Address,
    limits: EndpointLimits,
}

impl MetricsEndpoint {
    /// Listens on `address` (NEO's syntax; port 0 picks one).
    pub async fn bind(address: &Address) -> Result<MetricsEndpoint, NetError> {
        let socket_address = resolve(address).await?;
        let listener = TcpListener::bind(socket_address)
            .await
            .map_err(|e| NetError::io(format!("bind {address}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| NetError::io(format!("bind {address}"), e))?;
        Ok(MetricsEndpoint {
            listener,
            local: local.into(),
            limits: EndpointLimits::default(),
        })
    }

    /// The endpoint with other limits (tests make them small).
    pub fn with_limits(self, limits: EndpointLimits) -> MetricsEndpoint {
        MetricsEndpoint { limits, ..self }
    }

    /// Where it listens (with the port picked for port 0).
    pub fn local_address(&self) -> &Address {
        &self.local
    }

    /// Serves `GET /metrics` with `registry` encoded at each scrape,
    /// forever (drop the future to stop).
    pub async fn serve(self, registry: Arc<Registry>) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let limits = Arc::new(self.limits);
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("metrics endpoint: {error}");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Dropping the stream closes it: a flood costs an accept each.
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "metrics endpoint: too many scrapes at once");
                continue;
            };
            let registry = registry.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                scrape(stream, &registry, &limits).await;
                drop(permit);
            });
        }
    }
}

/// Serves one request on `stream`, then closes it.
async fn scrape(mut stream: TcpStream, registry: &Registry, limits: &EndpointLimits) {
    let head = tokio::time::timeout(limits.io_timeout, read_head(&mut stream, limits)).await;
    let response = match head {
        Err(_) | Ok(Head::Closed) => return,
        Ok(Head::TooLarge) => response(431, "text/plain", "request head too large\n"),
        Ok(Head::Line(line)) if is_scrape(&line) => {
            let mut body = String::new();
            match encode(&mut body, registry) {
                Ok(()) => response(200, CONTENT_TYPE, &body),
                Err(_) => response(500, "text/plain", "cannot encode the metrics\n"),
            }
        }
        Ok(Head::Line(_)) => response(404, "text/plain", "not found\n"),
    };
    let answer = async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        // Closing with unread bytes would reset the connection and could
        // destroy the answer before the peer reads it (a 431 is sent
        // while the head still comes): read what is left, bounded.
        let mut left = [0u8; 1024];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            match stream.read(&mut left).await? {
                0 => break,
                read => drained += read,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(limits.io_timeout, answer).await;
}

/// Most bytes read after the answer, before closing.
const DRAIN_BYTES: usize = 64 * 1024;

/// What a connection sent before its blank line.
enum Head {
    /// The request line of a whole head.
    Line(String),
    /// More than the limit without the blank line.
    TooLarge,
    /// The peer closed (or failed) first.
    Closed,
}

async fn read_head(stream: &mut TcpStream, limits: &EndpointLimits) -> Head {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    loop {
        let read = match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(read) => read,
        };
        // Look for the end only where it can be: in what came plus the 3
        // bytes before it.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buffer[..read]);
        if let Some(end) = find_blank_line(&head[from..]) {
            if from + end > limits.max_head_bytes {
                return Head::TooLarge;
            }
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            return Head::Line(String::from_utf8_lossy(line).trim_end().to_owned());
        }
        if head.len() > limits.max_head_bytes {
            return Head::TooLarge;
        }
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// `GET /metrics` (a query string allowed) in HTTP/1.x.
fn is_scrape(request_line: &str) -> bool {
    let mut words = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return false;
    };
    let path = target.split('?').next().unwrap_or_default();
    method == "GET" && path == PATH && version.starts_with("HTTP/1.")
}

fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let mut bytes = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Latency buckets, in seconds: 25 µs (a load from a warm storage takes
/// a few tens) to about 3 s (a commit waiting for a slow disk), doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000025, 2.0, 18)
}

/// Names the operation a request is, for the requests a node times.
pub type Classify = fn(&Packet) -> Option<&'static str>;

/// Most requests timed at once: past it, new ones go untimed rather than
/// let peers that never get answers grow the table.
const MAX_TIMED: usize = 65536;

/// Durations by one label (`operation`, `request`), in seconds.
pub type Durations = Family<Labels<1>, Histogram>;

/// Registers the durations of requests served as `name` in `registry`.
pub fn durations(registry: &mut Registry, name: &str) -> Durations {
    histograms(
        registry,
        name,
        "Time from a request's arrival to its answer",
    )
}

/// Registers the round trips of requests sent as `name` in `registry`
/// (for [`crate::ConnectionConfig::round_trips`]).
pub fn round_trips(registry: &mut Registry, name: &str) -> Durations {
    histograms(
        registry,
        name,
        "Time from sending a request to its answer, by request",
    )
}

fn histograms(registry: &mut Registry, name: &str, help: &str) -> Durations {
    let durations = Durations::new_with_constructor(|| Histogram::new(latency_buckets()));
    registry.register_with_unit(name, help, Unit::Seconds, durations.clone());
    durations
}

/// A node whose requests are timed from their arrival to their answer,
/// per operation, whatever the node made them wait for (locks, a group
/// commit): the node itself is untouched and reads no clock.
pub struct Timed<N> {
    node: N,
    classify: Classify,
    /// `None`: nothing is timed (no `--metrics`).
    durations: Option<Durations>,
    /// The histogram of each operation seen, so that an answer takes no
    /// lock of the family.
    histograms: HashMap<&'static str, Histogram>,
    /// Requests waiting for their answer: operation and arrival.
    pending: HashMap<(ConnId, u32), (&'static str, Instant)>,
}

impl<N: Node> Timed<N> {
    /// Times the requests of `node` that `classify` names in `durations`.
    pub fn new(node: N, classify: Classify, durations: Option<Durations>) -> Timed<N> {
        Timed {
            node,
            classify,
            durations,
            histograms: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// The node timed.
    pub fn node(&self) -> &N {
        &self.node
    }

    fn observe(&mut self, operation: &'static str, elapsed: Duration) {
        let Some(durations) = &self.durations else {
            return;
        };
        let histogram = self
            .histograms
            .entry(operation)
            .or_insert_with(|| durations.get_or_create(&[("operation", operation)]).clone());
        histogram.observe(elapsed.as_secs_f64());
    }
}

impl<N: Node> Node for Timed<N> {
    fn handle(&mut self, input: Input, now: UnixTime) {
        match &input {
            Input::Packet {
                conn,
                msg_id,
                packet,
            } if self.durations.is_some() && self.pending.len() < MAX_TIMED => {
                if let Some(operation) = (self.classify)(packet) {
                    self.pending
                        .insert((*conn, *msg_id), (operation, Instant::now()));
                }
            }
            Input::Closed { conn } if !self.pending.is_empty() => {
                self.pending.retain(|(pending, _), _| pending != conn);
            }
            _ => {}
        }
        self.node.handle(input, now);
    }

    fn poll_output(&mut self) -> Vec<Output> {
        let outputs = self.node.poll_output();
        if !self.pending.is_empty() {
            let answered = Instant::now();
            for output in &outputs {
                if let Output::Answer { conn, msg_id, .. } = output {
                    if let Some((operation, arrived)) = self.pending.remove(&(*conn, *msg_id)) {
                        self.observe(operation, answered - arrived);
                    }
                }
            }
        }
        outputs
    }

    fn poll_timeout(&self) -> Option<UnixTime> {
        self.node.poll_timeout()
    }
}

/// A count as a gauge's value (saturating: gauges are `i64`).
pub fn gauge_value(count: impl TryInto<i64>) -> i64 {
    count.try_into().unwrap_or(i64::MAX)
}

/// Labels of a [`Tally`]: `N` (name, value) pairs.
pub type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Gauges counting things by label (cells by state, connections by node
/// type), recounted from the node's state: a label set no longer seen is
/// set to 0, and only changed gauges are written.
#[derive(Debug)]
pub struct Tally<const N: usize> {
    family: Family<Labels<N>, Gauge>,
    /// The counts last set, to write only what changed.
    last: Vec<(Labels<N>, i64)>,
    counts: Vec<(Labels<N>, i64)>,
}

impl<const N: usize> Tally<N> {
    /// Gauges registered as `name` in `registry`.
    pub fn new(registry: &mut Registry, name: &str, help: &str) -> Tally<N> {
        let family = Family::<Labels<N>, Gauge>::default();
        registry.register(name, help, family.clone());
        Tally {
            family,
            last: Vec::new(),
            counts: Vec::new(),
        }
    }

    /// Counts `items` (each a label set) and sets the gauges.
    pub fn set(&mut self, items: impl IntoIterator<Item = Labels<N>>) {
        self.counts.clear();
        for labels in items {
            match self.counts.iter_mut().find(|(seen, _)| *seen == labels) {
                Some((_, count)) => *count += 1,
                None => self.counts.push((labels, 1)),
            }
        }
        for (labels, count) in &self.counts {
            if !self.last.contains(&(*labels, *count)) {
                self.family.get_or_create(labels).set(*count);
            }
        }
        for (labels, _) in &self.last {
            if !self.counts.iter().any(|(seen, _)| seen == labels) {
                self.family.get_or_create(labels).set(0);
            }
        }
        std::mem::swap(&mut self.last, &mut self.counts);
    }
}
