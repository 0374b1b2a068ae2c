//! `neo-load`: a client process for fault tests. It commits transactions
//! that each write a new object and increment one of the shared counters
//! (so concurrent clients conflict), retries through failures, and records
//! every transaction it saw acknowledged (see `neo_testkit::record`). It
//! stops when the stop file appears.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use neo_client::{BlockingClient, BlockingTransaction, ClientConfig, ClientError, TxnMeta};
use neo_proto::{Address, Oid, Tid};
use neo_testkit::record::{counter_value, Entry, Recorder, Write};

#[derive(Parser)]
#[command(about = "Commit through faults and record what was acknowledged")]
struct Options {
    /// Masters, `host:port` separated by spaces.
    #[arg(long)]
    masters: String,
    /// Cluster name.
    #[arg(long)]
    cluster: String,
    /// Where to record the transactions.
    #[arg(long)]
    record: PathBuf,
    /// The counters to increment (oids, in hex).
    #[arg(long, value_delimiter = ',')]
    counters: Vec<String>,
    /// Seed of the data and of the choice of counters.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop once this file exists.
    #[arg(long)]
    stop_file: PathBuf,
}

/// How long to wait after a failure before trying again.
const BACKOFF: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    let options = Options::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NEO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run(&options) {
        Ok(stats) => {
            eprintln!("neo-load: {stats}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("neo-load: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What one run did.
#[derive(Default)]
struct Stats {
    acknowledged: u64,
    unknown: u64,
    conflicts: u64,
    failures: u64,
    /// Longest time without an acknowledgement while committing.
    longest_gap: Duration,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledged={} unknown={} conflicts={} failures={} longest_gap_ms={}",
            self.acknowledged,
            self.unknown,
            self.conflicts,
            self.failures,
            self.longest_gap.as_millis()
        )
    }
}

/// A small deterministic generator (the choices need no quality, only
/// reproducibility from the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn run(options: &Options) -> Result<Stats, String> {
    let masters = options
        .masters
        .split_whitespace()
        .map(|address| Address::parse(address, 0).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let counters = options
        .counters
        .iter()
        .map(|oid| u64::from_str_radix(oid, 16).map(Oid))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad counter oid: {e}"))?;
    if counters.is_empty() {
        return Err("no counters".into());
    }
    let mut config = ClientConfig::new(masters, options.cluster.clone());
    config.ready_timeout = Duration::from_secs(60);
    let client = BlockingClient::connect(config).map_err(|e| e.to_string())?;
    let mut recorder = Recorder::create(&options.record).map_err(|e| e.to_string())?;
    let mut rng = Rng(options.seed);
    let mut stats = Stats::default();
    let mut last_ack = Instant::now();
    let mut sequence = 0u64;
    while !options.stop_file.exists() {
        let counter = counters[(rng.next() % counters.len() as u64) as usize];
        sequence += 1;
        let seed = options.seed.wrapping_mul(1_000_003).wrapping_add(sequence);
        let size = 100 + (rng.next() % 4000) as usize;
        match commit_one(&client, counter, seed, size) {
            Outcome::Acknowledged(entry) => {
                recorder.record(&entry).map_err(|e| e.to_string())?;
                stats.acknowledged += 1;
                stats.longest_gap = stats.longest_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
            }
            Outcome::Unknown(entry) => {
                recorder.record(&entry).map_err(|e| e.to_string())?;
                stats.unknown += 1;
            }
            Outcome::Conflict => stats.conflicts += 1,
            Outcome::Failed(error) => {
                stats.failures += 1;
                tracing::warn!("commit failed, trying again: {error}");
                std::thread::sleep(BACKOFF);
            }
        }
    }
    let _ = client.close();
    Ok(stats)
}

enum Outcome {
    Acknowledged(Entry),
    /// `tpc_finish` failed in a way that leaves the outcome unknown.
    Unknown(Entry),
    Conflict,
    Failed(ClientError),
}

fn commit_one(client: &BlockingClient, counter: Oid, seed: u64, size: usize) -> Outcome {
    // The counter's current revision, as of now.
    if let Err(error) = client.sync() {
        return Outcome::Failed(error);
    }
    let (serial, value) = match client.load(counter) {
        Ok(loaded) => match counter_value(&loaded.data) {
            Some(value) => (loaded.serial, value),
            None => return Outcome::Failed(ClientError::InvalidUse("not a counter".into())),
        },
        Err(error) => return Outcome::Failed(error),
    };
    let oid = match client.new_oid() {
        Ok(oid) => oid,
        Err(error) => return Outcome::Failed(error),
    };
    let writes = vec![
        Write::Payload { oid, seed, size },
        Write::Counter {
            oid: counter,
            value: value + 1,
        },
    ];
    let mut txn = match client.begin(None) {
        Ok(txn) => txn,
        Err(error) => return Outcome::Failed(error),
    };
    match vote(&mut txn, &writes, serial) {
        Ok(true) => {}
        Ok(false) => {
            let _ = txn.abort();
            return Outcome::Conflict;
        }
        Err(error) => {
            let _ = txn.abort();
            return Outcome::Failed(error);
        }
    }
    match txn.finish() {
        Ok(tid) => Outcome::Acknowledged(Entry {
            tid: Some(tid),
            writes,
        }),
        Err(error) => {
            tracing::warn!("tpc_finish failed, outcome unknown: {error}");
            Outcome::Unknown(Entry { tid: None, writes })
        }
    }
}

/// Stores and votes; `Ok(false)` on a conflict.
fn vote(txn: &mut BlockingTransaction, writes: &[Write], serial: Tid) -> Result<bool, ClientError> {
    for write in writes {
        let based_on = match write {
            Write::Payload { .. } => Tid::ZERO,
            Write::Counter { .. } => serial,
        };
        let conflicts = txn.store(write.oid(), based_on, Bytes::from(write.data()))?;
        if !conflicts.is_empty() {
            return Ok(false);
        }
    }
    if !txn.wait_stores()?.is_empty() {
        return Ok(false);
    }
    let meta = TxnMeta {
        user: Bytes::from_static(b"neo-load"),
        description: Bytes::from_static(b"fault test"),
        ..TxnMeta::default()
    };
    match txn.vote(&meta) {
        Ok(()) => Ok(true),
        Err(ClientError::Conflicts(_)) => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_reproducible_from_their_seed() {
        let (mut a, mut b) = (Rng(1), Rng(1));
        let first = a.next();
        assert_eq!(first, b.next());
        assert_ne!(first, a.next());
    }
}
