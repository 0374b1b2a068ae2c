//! `neobench import`: the Importer (`-a Importer`) on a FileStorage of a
//! gigabyte or more. It reports how soon the cluster runs, which must not
//! depend on the source's size (so a source a tenth of the size is started
//! too), and how fast the source is then imported into SQLite. Separate
//! from the default run: it writes gigabytes.

use std::path::Path;
use std::time::{Duration, Instant};

use neo_filestorage::{NewRecord, NewTransaction, Writer};
use serde_json::{json, Value};

use crate::cluster::{Cluster, Store};
use crate::Rng;

/// Records of the source: ZODB-sized objects, half of them compressible.
const RECORD_SIZE: usize = 4 << 10;
/// Records per transaction of the source.
const RECORDS_PER_TRANSACTION: usize = 64;
/// How long an import may take before the benchmark gives up.
const IMPORT_LIMIT: Duration = Duration::from_secs(3600);

/// Writes a FileStorage of about `bytes` at `path` with our writer (ZODB
/// would take minutes); its size.
fn write_source(path: &Path, bytes: u64) -> Result<u64, String> {
    let mut writer = Writer::open(path).map_err(|e| e.to_string())?;
    let mut rng = Rng(0x1337_5eed);
    let transactions = bytes.div_ceil((RECORD_SIZE * RECORDS_PER_TRANSACTION) as u64);
    // Tids of a few years ago, one per second apart at most.
    let first_tid = 0x03e0_0000_0000_0000u64;
    let mut oid = 0u64;
    for number in 0..transactions {
        let payloads: Vec<Vec<u8>> = (0..RECORDS_PER_TRANSACTION)
            .map(|index| {
                if index % 2 == 0 {
                    (0..RECORD_SIZE / 8)
                        .flat_map(|_| rng.next().to_le_bytes())
                        .collect()
                } else {
                    format!("object {oid} of transaction {number}; ")
                        .into_bytes()
                        .into_iter()
                        .cycle()
                        .take(RECORD_SIZE)
                        .collect()
                }
            })
            .collect();
        let records = payloads
            .iter()
            .map(|data| {
                oid += 1;
                NewRecord {
                    oid,
                    data: Some(data),
                    data_txn: None,
                }
            })
            .collect();
        writer
            .append(&NewTransaction {
                tid: first_tid + (number << 20),
                status: b' ',
                user: b"neobench",
                description: b"import source",
                extension: b"",
                records,
            })
            .map_err(|e| e.to_string())?;
    }
    writer.close().map_err(|e| e.to_string())?;
    std::fs::metadata(path)
        .map(|metadata| metadata.len())
        .map_err(|e| e.to_string())
}

/// Starts a cluster whose storage imports `source`; the time until it
/// runs, then the time until everything is imported (from RUNNING).
fn import(bin_dir: &Path, dir: &Path, source: &Path, compress: bool) -> Result<(f64, f64), String> {
    let conf = dir.join("importer.conf");
    let destination = dir.join("destination.sqlite");
    let _ = std::fs::remove_file(&destination);
    std::fs::write(
        &conf,
        format!(
            "[neo]\nadapter = SQLite\ndatabase = {}\ncompress = {compress}\n\n[source]\n\
             storage =\n  <filestorage>\n    path {}\n  </filestorage>\n",
            destination.display(),
            source.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let cluster = Cluster::start(bin_dir, dir, 1, &Store::Importer(conf), None)?;
    let to_running = started.elapsed();
    let log = dir.join("storage0.log");
    let running = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        if text.contains("All data are imported") {
            break;
        }
        if running.elapsed() > IMPORT_LIMIT {
            return Err(format!(
                "the import took more than {} s",
                IMPORT_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let imported = running.elapsed();
    cluster.stop()?;
    Ok((to_running.as_secs_f64(), imported.as_secs_f64()))
}

/// The whole measure: a small and a large source, imported with and
/// without compression.
pub fn run(bin_dir: &Path, dir: &Path, gigabytes: f64) -> Result<Value, String> {
    let large_bytes = (gigabytes * (1u64 << 30) as f64) as u64;
    let mut sources = Vec::new();
    for (name, bytes) in [("small", large_bytes / 10), ("large", large_bytes)] {
        let path = dir.join(format!("{name}.fs"));
        eprintln!("neobench: writing a {} MiB FileStorage", bytes >> 20);
        let size = write_source(&path, bytes)?;
        sources.push((name, path, size));
    }
    let mut runs = Vec::new();
    let large = &sources[1].1;
    let plan = [
        (&sources[0], false, "small"),
        (&sources[1], false, "large"),
        (&sources[1], true, "large"),
        // Without its `.index`, the file is scanned before the storage
        // starts (ZODB would scan too).
        (&sources[1], false, "large, no .index"),
    ];
    for ((_, path, size), compress, label) in plan {
        if label.ends_with("no .index") {
            let index = format!("{}.index", large.display());
            std::fs::remove_file(&index).map_err(|e| format!("{index}: {e}"))?;
        }
        eprintln!("neobench: importing the {label} source (compress = {compress})");
        let (to_running, seconds) = import(bin_dir, dir, path, compress)?;
        runs.push(json!({
            "source": label,
            "bytes": size,
            "compress": compress,
            "to_running_seconds": to_running,
            "import_seconds": seconds,
            "mib_per_second": *size as f64 / (1 << 20) as f64 / seconds,
        }));
    }
    Ok(json!({ "import": runs }))
}

/// The report as a table.
pub fn markdown(report: &Value) -> String {
    let mut table = String::from(
        "## Importer: a FileStorage served, then imported into SQLite\n\n\
         | source | size | compress | start to RUNNING | import | throughput |\n\
         |---|---|---|---|---|---|\n",
    );
    for run in report["import"].as_array().into_iter().flatten() {
        table += &format!(
            "| {} | {:.0} MiB | {} | {:.2} s | {:.1} s | {:.0} MiB/s |\n",
            run["source"].as_str().unwrap_or("?"),
            run["bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
            run["compress"],
            run["to_running_seconds"].as_f64().unwrap_or(f64::NAN),
            run["import_seconds"].as_f64().unwrap_or(f64::NAN),
            run["mib_per_second"].as_f64().unwrap_or(f64::NAN),
        );
    }
    table += "\nStart to RUNNING: from the processes' start to `print cluster` saying RUNNING \
              (clients are served from then on, the import going on behind). Import: from \
              RUNNING to the storage's \"All data are imported\".\n";
    table
}
