//! `neobench replication`: how fast a new replica catches up with a large
//! database, and how long a storage that missed many transactions takes
//! to be UP_TO_DATE again after its restart. Separate from the default run:
//! it writes a database of a gigabyte or more.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{Cluster, Store};
use crate::{commit_new, connect, Rng};

/// Size of the objects of the large database: incompressible, so what is
/// replicated is what is measured.
const OBJECT_SIZE: usize = 64 << 10;

/// Objects per transaction while writing the large database.
const OBJECTS_PER_TRANSACTION: usize = 64;

/// How long a replica may take to catch up before the benchmark gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(1800);

/// Whether every cell of `neoctl print pt` is UP_TO_DATE.
fn all_up_to_date(cluster: &Cluster, bin_dir: &Path) -> Result<bool, String> {
    let table = cluster.neoctl(bin_dir, "print pt")?;
    let rows: Vec<&str> = table.lines().filter(|line| line.starts_with('S')).collect();
    Ok(!rows.is_empty()
        && rows.iter().all(|line| {
            line.split_whitespace()
                .last()
                .is_some_and(|cells| cells.chars().all(|c| c == 'U' || c == '.'))
        }))
}

/// Polls until every cell is UP_TO_DATE; how long it took.
fn time_until_up_to_date(cluster: &Cluster, bin_dir: &Path) -> Result<Duration, String> {
    let started = Instant::now();
    while !all_up_to_date(cluster, bin_dir)? {
        if started.elapsed() > CATCH_UP_LIMIT {
            return Err(format!(
                "the replicas did not catch up within {} s",
                CATCH_UP_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(started.elapsed())
}

/// A new replica of a database of `gigabytes`, then a storage restarted
/// after missing `missed` transactions.
pub fn run(bin_dir: &Path, dir: &Path, gigabytes: f64, missed: usize) -> Result<Value, String> {
    let mut cluster = Cluster::start(bin_dir, dir, 1, &Store::Sqlite, None)?;
    let client = connect(&cluster)?;
    let mut rng = Rng(0x5eed);
    let total = (gigabytes * (1u64 << 30) as f64) as usize;
    let transactions = total.div_ceil(OBJECT_SIZE * OBJECTS_PER_TRANSACTION);
    eprintln!(
        "neobench: writing {transactions} transactions of {OBJECTS_PER_TRANSACTION} × 64 KiB"
    );
    let written = Instant::now();
    let sizes = vec![OBJECT_SIZE; OBJECTS_PER_TRANSACTION];
    for _ in 0..transactions {
        commit_new(&client, &mut rng, &sizes)?;
    }
    let write_seconds = written.elapsed().as_secs_f64();
    let objects = transactions * OBJECTS_PER_TRANSACTION;
    let bytes = objects * OBJECT_SIZE;

    eprintln!("neobench: a second storage joins, replicas 1, tweak");
    cluster.start_storage(bin_dir, dir, 1, &Store::Sqlite)?;
    wait_for(|| {
        Ok(cluster
            .neoctl(bin_dir, "print node")?
            .lines()
            .any(|line| line.contains("PENDING")))
    })?;
    cluster.neoctl(bin_dir, "add all")?;
    cluster.neoctl(bin_dir, "set replicas 1")?;
    cluster.neoctl(bin_dir, "tweak")?;
    let full = time_until_up_to_date(&cluster, bin_dir)?;

    eprintln!("neobench: the second storage misses {missed} transactions");
    cluster.kill("storage1")?;
    for _ in 0..missed {
        commit_new(&client, &mut rng, &[1024])?;
    }
    // Its cells were outdated when it died: "all UP_TO_DATE" again means
    // it caught up.
    cluster.start_storage(bin_dir, dir, 1, &Store::Sqlite)?;
    let catch_up = time_until_up_to_date(&cluster, bin_dir)?;
    let _ = client.close();
    cluster.stop()?;
    let seconds = full.as_secs_f64();
    Ok(json!({
        "database_bytes": bytes,
        "database_objects": objects,
        "write_seconds": write_seconds,
        "replication_seconds": seconds,
        "replication_mb_per_s": bytes as f64 / seconds / 1e6,
        "replication_objects_per_s": objects as f64 / seconds,
        "missed_transactions": missed,
        "catch_up_seconds": catch_up.as_secs_f64(),
    }))
}

/// Polls `ready` every 50 ms for up to a minute.
fn wait_for(mut ready: impl FnMut() -> Result<bool, String>) -> Result<(), String> {
    let started = Instant::now();
    while !ready()? {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("timed out".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The report as a table.
pub fn markdown(report: &Value) -> String {
    let number = |key: &str| report.get(key).and_then(Value::as_f64).unwrap_or(0.0);
    format!(
        "| measure | value |\n|---|---|\n\
         | database | {:.2} GB, {} objects of 64 KiB (written at {:.1} MB/s) |\n\
         | new replica: replication time | {:.1} s |\n\
         | new replica: throughput | {:.1} MB/s, {:.0} objects/s |\n\
         | restarted storage, {} transactions missed: UP_TO_DATE after | {:.2} s |\n",
        number("database_bytes") / 1e9,
        number("database_objects"),
        number("database_bytes") / 1e6 / number("write_seconds").max(1e-9),
        number("replication_seconds"),
        number("replication_mb_per_s"),
        number("replication_objects_per_s"),
        number("missed_transactions"),
        number("catch_up_seconds"),
    )
}
