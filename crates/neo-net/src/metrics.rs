//! What every node's metrics share: the OpenMetrics endpoint (`--metrics`)
//! and the timing of requests from their arrival to their answer.
//!
//! The registry and the exposition are `prometheus-client`'s; this module
//! only serves them, on [`crate::http`]'s server: bounded in what a peer
//! controls (head size, time to send it, connections at once), as the
//! node's own listener is.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use neo_proto::{Address, Packet, UnixTime};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::error::NetError;
use crate::http::{self, HttpLimits, Response};
use crate::node::{ConnId, Input, Node, Output};

/// The content type of OpenMetrics text (what `prometheus-client` encodes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapes served at once: a scraper asks every few seconds.
const MAX_SCRAPES: usize = 8;

/// The one path served.
pub const PATH: &str = "/metrics";

/// A bound metrics endpoint, not serving yet.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    local: Address,
    limits: HttpLimits,
}

impl MetricsEndpoint {
    /// Listens on `address` (NEO's syntax; port 0 picks one).
    pub async fn bind(address: &Address) -> Result<MetricsEndpoint, NetError> {
        let (listener, local) = http::bind(address).await?;
        Ok(MetricsEndpoint {
            listener,
            local,
            limits: HttpLimits {
                max_connections: MAX_SCRAPES,
                ..HttpLimits::default()
            },
        })
    }

    /// The endpoint with other limits (tests make them small).
    pub fn with_limits(self, limits: HttpLimits) -> MetricsEndpoint {
        MetricsEndpoint { limits, ..self }
    }

    /// Where it listens (with the port picked for port 0).
    pub fn local_address(&self) -> &Address {
        &self.local
    }

    /// Serves `GET /metrics` with `registry` encoded at each scrape, and
    /// 404 for anything else, forever (drop the future to stop).
    pub async fn serve(self, registry: Arc<Registry>) {
        http::serve(self.listener, self.limits, move |path: String| {
            let registry = registry.clone();
            async move {
                if path != PATH {
                    return Response::error(404, "not found");
                }
                let mut body = String::new();
                match encode(&mut body, &registry) {
                    Ok(()) => Response::ok(CONTENT_TYPE, body),
                    Err(_) => Response::error(500, "cannot encode the metrics"),
                }
            }
        })
        .await;
    }
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

    /// The node timed, for work done outside its inputs (completions).
    pub fn node_mut(&mut self) -> &mut N {
        &mut self.node
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
