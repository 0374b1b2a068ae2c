//! `--tls`: what TLS costs. Two clusters of the same binaries run side by
//! side, one plain and one where every node and the clients use TLS
//! (throw-away certificates). The workloads (serial cold loads, serial
//! commits, concurrent commits) alternate between them in rounds, so that
//! the machine's noise (fsync above all) falls on both alike.

use std::path::Path;
use std::time::{Duration, Instant};

use neo_client::BlockingClient;
use neo_net::test_pki::{Credentials, TestPki};
use neo_proto::Oid;
use serde_json::{json, Value};

use super::{commit_new, connect, fill, load_each, percentiles, throughput, Rng, Size};
use crate::cluster::Cluster;

/// Counts of the comparison, for each cluster.
struct Counts {
    objects: usize,
    serial_commits: usize,
    committers: usize,
    commit_window: Duration,
}

/// Each workload is cut in this many rounds, alternating the clusters.
const ROUNDS: usize = 5;

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

/// One of the two clusters and what was measured on it.
struct Side {
    label: &'static str,
    cluster: Cluster,
    writer: BlockingClient,
    reader: BlockingClient,
    oids: Vec<Oid>,
    rng: Rng,
    loads: Vec<Duration>,
    commits: Vec<Duration>,
    commit_time: Duration,
    concurrent: Vec<f64>,
}

impl Side {
    fn start(
        label: &'static str,
        bin_dir: &Path,
        dir: &Path,
        tls: Option<&Credentials>,
        objects: usize,
    ) -> Result<Side, String> {
        let dir = dir.join(label);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let cluster = Cluster::start(bin_dir, &dir, 1, tls)?;
        let mut rng = Rng(0x5eed_0000_7153);
        let writer = connect(&cluster)?;
        let mut oids = fill(&writer, &mut rng, objects)?;
        rng.shuffle(&mut oids);
        let reader = connect(&cluster)?;
        Ok(Side {
            label,
            cluster,
            writer,
            reader,
            oids,
            rng,
            loads: Vec::new(),
            commits: Vec::new(),
            commit_time: Duration::ZERO,
            concurrent: Vec::new(),
        })
    }

    /// Round `round` of every workload.
    fn round(&mut self, round: usize, counts: &Counts) -> Result<(), String> {
        let per_round = self.oids.len().div_ceil(ROUNDS);
        let oids: Vec<Oid> = self
            .oids
            .iter()
            .skip(round * per_round)
            .take(per_round)
            .copied()
            .collect();
        self.loads.extend(load_each(&self.reader, &oids)?);
        let started = Instant::now();
        for _ in 0..counts.serial_commits.div_ceil(ROUNDS) {
            let start = Instant::now();
            commit_new(&self.writer, &mut self.rng, &[1024; 10])?;
            self.commits.push(start.elapsed());
        }
        self.commit_time += started.elapsed();
        let window = counts.commit_window / ROUNDS as u32;
        self.concurrent.push(throughput(
            &self.cluster,
            counts.committers,
            window,
            |client, rng| commit_new(client, rng, &[1024; 10]).map(drop),
        )?);
        Ok(())
    }

    fn report(mut self) -> Result<Value, String> {
        let (load_median, load_p99) = percentiles(&mut self.loads);
        let (commit_median, _) = percentiles(&mut self.commits);
        let serial_tx_per_s = self.commits.len() as f64 / self.commit_time.as_secs_f64();
        let concurrent = self.concurrent.iter().sum::<f64>() / self.concurrent.len().max(1) as f64;
        let _ = self.reader.close();
        let _ = self.writer.close();
        self.cluster.stop()?;
        Ok(json!({
            "cold_load_median_us": load_median,
            "cold_load_p99_us": load_p99,
            "serial_commit_median_us": commit_median,
            "serial_commit_tx_per_s": serial_tx_per_s,
            "concurrent_commit_tx_per_s": concurrent,
        }))
    }
}

/// Measures a plain and a TLS cluster, both under `dir`.
pub fn compare(bin_dir: &Path, dir: &Path, size: Size) -> Result<Value, String> {
    let counts = Counts::of(size);
    let pki_dir = dir.join("pki");
    std::fs::create_dir_all(&pki_dir).map_err(|e| e.to_string())?;
    let pki = TestPki::create(&pki_dir).map_err(|e| e.to_string())?;
    let mut sides = [
        Side::start("plain", bin_dir, dir, None, counts.objects)?,
        Side::start("tls", bin_dir, dir, Some(&pki.node), counts.objects)?,
    ];
    // As the main run: the last unlocks are committed within a second.
    std::thread::sleep(Duration::from_millis(1500));
    for round in 0..ROUNDS {
        // Each goes first in every other round.
        let first = round % 2;
        sides[first].round(round, &counts)?;
        sides[1 - first].round(round, &counts)?;
    }
    let mut report = serde_json::Map::new();
    for side in sides {
        let label = side.label;
        report.insert(label.into(), side.report()?);
    }
    report.insert("committers".into(), json!(counts.committers));
    Ok(Value::Object(report))
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
