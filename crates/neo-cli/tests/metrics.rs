//! `--metrics` on a real cluster (a master, two storages with one replica,
//! an admin): a known workload through the Rust client moves every node's
//! counters by exactly what it did, and each endpoint's answer parses as
//! OpenMetrics text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{commit_new_object, free_port, meta, Cluster, NEOADMIN};
use neo_client::BlockingClient;
use neo_proto::{Oid, Tid};
use prometheus_client::registry::Registry;

/// Commits of the workload, and new objects in each.
const COMMITS: usize = 5;
const OBJECTS: usize = 4;
/// Loads of existing objects.
const LOADS: usize = 7;

/// The samples of an OpenMetrics text, by `name{labels}` as written;
/// panics on anything that is not OpenMetrics.
fn parse(text: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let mut samples = BTreeMap::new();
    let mut families = Vec::new();
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap());
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "{line}");
            assert!(name.starts_with("neo_"), "{line}");
            if kind == "TYPE" {
                families.push(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(
            families
                .iter()
                .any(|family| name.starts_with(family.as_str())),
            "sample of no declared family: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

/// `GET /metrics` of the endpoint at `address`, parsed; `None` while
/// nothing listens there.
fn scrape(address: &str) -> Option<BTreeMap<String, f64>> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    Some(parse(body))
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// A series summed over several nodes' samples.
fn sum(nodes: &[BTreeMap<String, f64>], series: &str) -> f64 {
    nodes.iter().map(|samples| value(samples, series)).sum()
}

/// Scrapes `address` until `done` holds of its samples (gauges are
/// recounted after the node's next batch of inputs; a node started last
/// may not listen yet).
fn scrape_until(
    address: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match scrape(address) {
            Some(samples) if done(&samples) || Instant::now() > deadline => return samples,
            None => assert!(Instant::now() < deadline, "nothing listens on {address}"),
            Some(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The workload: `COMMITS` commits of `OBJECTS` new objects, `LOADS`
/// loads, one load of an oid never written, one store in conflict (as a
/// new object while it exists) and its transaction aborted.
fn workload(client: &BlockingClient) {
    let mut oids = Vec::new();
    for commit in 0..COMMITS {
        let mut txn = client.begin(None).unwrap();
        for object in 0..OBJECTS {
            let oid = client.new_oid().unwrap();
            let data = Bytes::from(format!("object {object} of commit {commit}"));
            assert!(txn.store(oid, Tid::ZERO, data).unwrap().is_empty());
            oids.push(oid);
        }
        txn.vote(&meta()).unwrap();
        txn.finish().unwrap();
    }
    for oid in oids.iter().cycle().take(LOADS) {
        client.load(*oid).unwrap();
    }
    assert!(client.load(Oid(1 << 40)).is_err());
    let mut txn = client.begin(None).unwrap();
    let mut conflicts = txn
        .store(oids[0], Tid::ZERO, Bytes::from_static(b"late"))
        .unwrap();
    conflicts.extend(txn.wait_stores().unwrap());
    assert!(!conflicts.is_empty());
    txn.abort().unwrap();
}

/// The metrics endpoints of a cluster's nodes.
struct Endpoints {
    master: String,
    storages: [String; 2],
    admin: String,
}

/// Starts a master, two storages with one replica and an admin, each
/// with `--metrics`, and waits until the cluster runs.
fn start_with_metrics(cluster: &mut Cluster) -> Endpoints {
    let address = || format!("127.0.0.1:{}", free_port());
    let endpoints = Endpoints {
        master: address(),
        storages: [address(), address()],
        admin: address(),
    };
    cluster.start_master(&[
        "--autostart",
        "2",
        "-r",
        "1",
        "--metrics",
        &endpoints.master,
    ]);
    for (index, address) in endpoints.storages.iter().enumerate() {
        cluster.start_storage_with(index, &["--metrics", address]);
    }
    let (name, masters, bind) = (
        cluster.name.clone(),
        cluster.master.clone(),
        cluster.admin.clone(),
    );
    let admin = [
        "-c",
        &name,
        "-m",
        &masters,
        "-b",
        &bind,
        "--metrics",
        &endpoints.admin,
    ];
    cluster.spawn("admin", NEOADMIN, &admin);
    cluster.wait_state("RUNNING");
    endpoints
}

#[test]
fn every_node_counts_the_workload_it_served() {
    let mut cluster = Cluster::new("metrics");
    let Endpoints {
        master,
        storages,
        admin,
    } = start_with_metrics(&mut cluster);

    let mut registry = Registry::default();
    let config = neo_client::ClientConfig::new(
        vec![neo_proto::Address::parse(&cluster.master, 0).unwrap()],
        cluster.name.clone(),
    )
    .with_metrics(&mut registry);
    let client = BlockingClient::connect(config).unwrap();
    workload(&client);

    let cells = 4 * 2;
    let storage_samples: Vec<_> = storages
        .iter()
        .map(|address| {
            scrape_until(address, |s| {
                value(s, r#"neo_storage_cells{state="UP_TO_DATE"}"#) == 4.0
                    && value(s, "neo_storage_transactions") == 0.0
            })
        })
        .collect();
    let written = (COMMITS * OBJECTS * 2) as f64;
    let stores_sent = written + 2.0;
    for (series, expected) in [
        ("neo_storage_stores_total", written),
        ("neo_storage_conflicts_total", 2.0),
        ("neo_storage_votes_total", (COMMITS * 2) as f64),
        ("neo_storage_commits_total", (COMMITS * 2) as f64),
        (r#"neo_storage_loads_total{result="found"}"#, LOADS as f64),
        (r#"neo_storage_loads_total{result="no_object"}"#, 1.0),
        (r#"neo_storage_cells{state="UP_TO_DATE"}"#, cells as f64),
        (
            r#"neo_storage_request_duration_seconds_count{operation="store"}"#,
            stores_sent,
        ),
        (
            r#"neo_storage_request_duration_seconds_count{operation="load"}"#,
            (LOADS + 1) as f64,
        ),
        ("neo_storage_waiting_requests", 0.0),
    ] {
        assert_eq!(sum(&storage_samples, series), expected, "{series}");
    }
    for samples in &storage_samples {
        assert_eq!(
            value(samples, r#"neo_storage_connections{peer="MASTER"}"#),
            1.0
        );
    }

    let master_samples = scrape_until(&master, |s| {
        value(s, "neo_master_transactions") == 0.0
            && value(s, r#"neo_master_cells{state="UP_TO_DATE"}"#) == cells as f64
    });
    for (series, expected) in [
        ("neo_master_commits_total", COMMITS as f64),
        ("neo_master_aborts_total", 1.0),
        ("neo_master_transactions", 0.0),
        (r#"neo_master_cluster_state{state="RUNNING"}"#, 1.0),
        (r#"neo_master_cells{state="UP_TO_DATE"}"#, cells as f64),
        (r#"neo_master_connections{node_type="STORAGE"}"#, 2.0),
        (r#"neo_master_connections{node_type="ADMIN"}"#, 1.0),
        (r#"neo_master_connections{node_type="CLIENT"}"#, 1.0),
        (
            r#"neo_master_request_duration_seconds_count{operation="finish"}"#,
            COMMITS as f64,
        ),
        (
            r#"neo_master_request_duration_seconds_count{operation="begin"}"#,
            (COMMITS + 1) as f64,
        ),
    ] {
        assert_eq!(value(&master_samples, series), expected, "{series}");
    }
    assert!(value(&master_samples, "neo_master_last_tid") > 0.0);

    let admin_samples = scrape_until(&admin, |s| {
        value(s, r#"neo_admin_cells{state="UP_TO_DATE"}"#) == cells as f64
    });
    for (series, expected) in [
        ("neo_admin_connected", 1.0),
        (r#"neo_admin_cluster_state{state="RUNNING"}"#, 1.0),
        (r#"neo_admin_cells{state="UP_TO_DATE"}"#, cells as f64),
        (
            r#"neo_admin_nodes{node_type="STORAGE",state="RUNNING"}"#,
            2.0,
        ),
        (
            r#"neo_admin_nodes{node_type="MASTER",state="RUNNING"}"#,
            1.0,
        ),
    ] {
        assert_eq!(value(&admin_samples, series), expected, "{series}");
    }
    // `wait_state`'s neoctl requests: `print cluster`.
    assert!(
        value(
            &admin_samples,
            r#"neo_admin_request_duration_seconds_count{operation="AskClusterState"}"#
        ) >= 1.0
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let client_samples = parse(&text);
    for (request, expected) in [
        ("AskStoreObject", stores_sent),
        ("AskObject", (LOADS + 1) as f64),
        ("AskFinishTransaction", COMMITS as f64),
        ("AskBeginTransaction", (COMMITS + 1) as f64),
    ] {
        let series = format!(r#"neo_client_round_trip_seconds_count{{request="{request}"}}"#);
        assert_eq!(value(&client_samples, &series), expected, "{series}");
    }
    client.close().unwrap();
    cluster.stop();
}

#[test]
fn a_metrics_address_that_cannot_be_used_stops_the_node_with_one_line() {
    let error = common::one_line_error(
        common::NEOMASTER,
        &[
            "-c",
            "x",
            "-b",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:port",
        ],
    );
    assert!(error.contains("--metrics"), "{error}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let error = common::one_line_error(
        common::NEOADMIN,
        &["-c", "x", "-b", "127.0.0.1:0", "--metrics", &address],
    );
    assert!(error.starts_with("neoadmin: error: --metrics: "), "{error}");
}

#[test]
fn a_storage_back_from_down_counts_what_it_replicated() {
    let mut cluster = Cluster::new("metricsrepl");
    let endpoints = start_with_metrics(&mut cluster);
    let client = cluster.client();
    let commit = |count: usize| {
        for _ in 0..count {
            commit_new_object(&client, b"replicated");
        }
    };
    commit(3);
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let since = "neo_admin_out_of_date_since_seconds";
    scrape_until(&endpoints.admin, |s| s.get(since) == Some(&0.0));
    let lost_at = unix_now();
    cluster.kill("storage1");
    let missed = 12;
    commit(missed);
    // The admin dates the lag from when it saw the cells outdated.
    let admin = scrape_until(&endpoints.admin, |s| value(s, since) > 0.0);
    let outdated_at = value(&admin, since);
    assert!(
        outdated_at >= lost_at && outdated_at <= unix_now(),
        "{outdated_at}"
    );
    let address = format!("127.0.0.1:{}", free_port());
    cluster.start_storage_with(1, &["--metrics", &address]);
    let samples = scrape_until(&address, |s| {
        value(s, r#"neo_storage_cells{state="UP_TO_DATE"}"#) == 4.0
    });
    scrape_until(&endpoints.admin, |s| s.get(since) == Some(&0.0));
    // Every cell was outdated: each partition is fetched and announced.
    assert_eq!(
        value(&samples, "neo_storage_replicated_partitions_total"),
        4.0
    );
    assert_eq!(
        value(&samples, "neo_storage_replication_pending_partitions"),
        0.0
    );
    assert!(value(&samples, "neo_storage_replicated_transactions_total") >= missed as f64);
    assert!(value(&samples, "neo_storage_replicated_objects_total") >= missed as f64);
    assert!(
        value(&samples, "neo_storage_replicated_bytes_total")
            >= (missed * b"replicated".len()) as f64
    );
    client.close().unwrap();
    cluster.stop();
}

#[test]
fn a_pack_is_counted_by_the_master_and_every_storage() {
    let mut cluster = Cluster::new("metricspack");
    let endpoints = start_with_metrics(&mut cluster);
    let client = cluster.client();
    let tid = commit_new_object(&client, b"packed");
    let pack_id = client.pack(tid, None).unwrap().unwrap();
    client.wait_for_pack(pack_id).unwrap();
    let master = scrape_until(&endpoints.master, |s| {
        value(s, "neo_master_pack_orders_pending") == 0.0
    });
    assert_eq!(value(&master, "neo_master_pack_orders_total"), 1.0);
    assert_eq!(value(&master, "neo_master_pack_orders_pending"), 0.0);
    for address in &endpoints.storages {
        let storage = scrape_until(address, |s| {
            value(s, "neo_storage_packs_completed_total") == 1.0
        });
        assert_eq!(value(&storage, "neo_storage_packs_completed_total"), 1.0);
        // One step per partition at least (4 partitions, each on both).
        assert!(value(&storage, "neo_storage_pack_steps_total") >= 4.0);
    }
    client.close().unwrap();
    cluster.stop();
}
