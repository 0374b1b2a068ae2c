//! `--tls`: what TLS costs. Clusters of the same binaries, plain and with
//! TLS for every node and the clients (throw-away certificates), measured
//! with the same workloads (serial cold loads, serial commits, concurrent
//! commits) one cluster at a time, in the order plain, TLS, TLS, plain:
//! the mean of each pair cancels a drift of the machine during the run.
//! (Running both at once, taking turns, was tried: the machine's noise
//! then changed the figures from one run to the next.)

use std::path::Path;
use std::time::{Duration, Instant};

use neo_net::test_pki::{Credentials, TestPki};
use serde_json::{json, Value};

use super::{commit_new, connect, fill, load_each, percentiles, throughput, Rng, Size};
use crate::cluster::{Cluster, Store};

/// Counts of the comparison.
struct Counts {
    objects: usize,
    serial_commits: usize,
    committers: usize,
    commit_window: Duration,
}

impl Counts {
    fn of(size: Size) -> Counts {
        match size {
            Size::Smoke => Counts {
                objects: 300,
                serial_commits: 20,
                committers: 2,
                commit_window: Duration::from_millis(300),
            },
            Size::Default => Counts {
                objects: 5_000,
                serial_commits: 300,
                committers: 4,
                commit_window: Duration::from_secs(3),
            },
        }
    }
}

/// Measures plain, TLS, TLS, plain clusters, all under `dir`.
pub fn compare(bin_dir: &Path, dir: &Path, size: Size) -> Result<Value, String> {
    let counts = Counts::of(size);
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir).map_err(|e| e.to_string())?;
    let pki = TestPki::create(&pki_dir).map_err(|e| e.to_string())?;
    let mut runs: Vec<(&str, Value)> = Vec::new();
    for (run, label) in ["plain", "tls", "tls", "plain"].into_iter().enumerate() {
        let tls = (label == "tls").then_some(&pki.node);
        let cluster_dir = dir.join(format!("{run}-{label}"));
        std::fs::create_dir_all(&cluster_dir).map_err(|e| e.to_string())?;
        runs.push((label, measure(bin_dir, &cluster_dir, tls, &counts)?));
    }
    let mut report = serde_json::Map::new();
    for label in ["plain", "tls"] {
        let figures: Vec<&Value> = runs
            .iter()
            .filter(|(run, _)| *run == label)
            .map(|(_, figures)| figures)
            .collect();
        report.insert(label.into(), mean(&figures));
    }
    report.insert("committers".into(), json!(counts.committers));
    Ok(Value::Object(report))
}

/// The mean of each figure over runs.
fn mean(runs: &[&Value]) -> Value {
    let mut mean = serde_json::Map::new();
    if let Some(Value::Object(first)) = runs.first() {
        for key in first.keys() {
            let values: Vec<f64> = runs.iter().filter_map(|run| run[key].as_f64()).collect();
            let sum: f64 = values.iter().sum();
            mean.insert(key.clone(), json!(sum / values.len().max(1) as f64));
        }
    }
    Value::Object(mean)
}

fn measure(
    bin_dir: &Path,
    dir: &Path,
    tls: Option<&Credentials>,
    counts: &Counts,
) -> Result<Value, String> {
    let cluster = Cluster::start(bin_dir, dir, 1, &Store::Sqlite, tls)?;
    let mut rng = Rng(0x5eed_0000_7153);
    let writer = connect(&cluster)?;
    let mut oids = fill(&writer, &mut rng, counts.objects)?;
    // As the main run: the last unlocks are committed within a second.
    std::thread::sleep(Duration::from_millis(1500));

    let reader = connect(&cluster)?;
    rng.shuffle(&mut oids);
    let mut samples = load_each(&reader, &oids)?;
    let (load_median, load_p99) = percentiles(&mut samples);
    let _ = reader.close();

    let mut samples = Vec::with_capacity(counts.serial_commits);
    let started = Instant::now();
    for _ in 0..counts.serial_commits {
        let start = Instant::now();
        commit_new(&writer, &mut rng, &[1024; 10])?;
        samples.push(start.elapsed());
    }
    let serial_tx_per_s = counts.serial_commits as f64 / started.elapsed().as_secs_f64();
    let (commit_median, _) = percentiles(&mut samples);
    let _ = writer.close();

    let concurrent = throughput(
        &cluster,
        counts.committers,
        counts.commit_window,
        |client, rng| commit_new(client, rng, &[1024; 10]).map(drop),
    )?;
    cluster.stop()?;
    Ok(json!({
        "cold_load_median_us": load_median,
        "cold_load_p99_us": load_p99,
        "serial_commit_median_us": commit_median,
        "serial_commit_tx_per_s": serial_tx_per_s,
        "concurrent_commit_tx_per_s": concurrent,
    }))
}

/// The comparison as a markdown table.
pub fn markdown(tls: &Value) -> String {
    let committers = tls["committers"].as_u64().unwrap_or(0);
    let rows = [
        ("serial cold load, median (µs)", "cold_load_median_us"),
        ("serial cold load, p99 (µs)", "cold_load_p99_us"),
        (
            "serial commit 10 × 1 KiB, median (µs)",
            "serial_commit_median_us",
        ),
        ("serial commits 10 × 1 KiB (tx/s)", "serial_commit_tx_per_s"),
    ];
    let mut table = String::from(
        "| TLS against plain TCP | plain TCP | TLS | TLS ÷ plain |\n|---|---|---|---|\n",
    );
    let concurrent = format!("10 × 1 KiB commits, {committers} committers (tx/s)");
    let all = rows
        .iter()
        .map(|(name, key)| ((*name).to_owned(), *key))
        .chain([(concurrent, "concurrent_commit_tx_per_s")]);
    for (name, key) in all {
        let plain = tls["plain"][key].as_f64().unwrap_or(f64::NAN);
        let secure = tls["tls"][key].as_f64().unwrap_or(f64::NAN);
        table.push_str(&format!(
            "| {name} | {plain:.1} | {secure:.1} | {:.2} |\n",
            secure / plain
        ));
    }
    table
}
