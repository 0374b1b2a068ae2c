//! `neobench`: measures a NEO cluster of this project's release binaries
//! against the machine's floors (a loopback TCP round trip between two
//! processes, an append + fsync), in one run, and prints ratios.
//!
//! In the same run, the ZODB side (`python/zodb_bench.py`, in a virtualenv
//! that neobench makes) runs the same workloads through the ZODB API on
//! NEO (this cluster, through our `neo` wheel), ZEO (a `runzeo` started
//! here) and FileStorage, and a chart of it all is drawn (bench.png).
//!
//! Every loop is bounded in count and in time. Sizes: `--size smoke`
//! (seconds, to prove it works), `--size default` (a few minutes).

mod cluster;
mod import;
mod python;
mod replication;
mod tls;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use neo_client::{BlockingClient, ClientConfig, TxnMeta};
use neo_proto::{Oid, Tid};
use serde_json::{json, Value};

use cluster::{Cluster, Store};

#[derive(Parser)]
#[command(
    name = "neobench",
    about = "Benchmark a NEO cluster against the machine's floors"
)]
struct Cli {
    /// How much to measure.
    #[arg(long, value_enum, default_value = "default")]
    size: Size,
    /// Where the release binaries are (neomaster, neostorage, neoadmin).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where to write bench.json and bench.md.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Skip the ZODB side (ZEO, FileStorage and NEO through the ZODB API).
    #[arg(long)]
    no_python: bool,
    /// The storage engine of the cluster measured (the Rust side and the
    /// ZODB side).
    #[arg(long, value_enum, default_value = "sqlite")]
    adapter: Engine,
    /// Also measure what TLS costs: a plain and a TLS cluster, side by
    /// side (loads and commits).
    #[arg(long)]
    tls: bool,
    /// The virtualenv of the ZODB side, created on first use.
    #[arg(long, default_value = "target/bench-venv")]
    venv: PathBuf,
    /// The Python that creates the virtualenv.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Measure the loads and commits again with the storage on this MySQL
    /// or MariaDB database (`neostorage -d` syntax:
    /// `[user[:password]@]database[socket]`), emptied first, and report
    /// them beside SQLite's.
    #[arg(long, value_name = "DATABASE")]
    mysql: Option<String>,
    #[command(subcommand)]
    command: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// (internal) the other end of the loopback round-trip floor.
    #[command(hide = true)]
    Echo,
    /// The Importer instead of the default run: time to RUNNING and
    /// import throughput with a FileStorage of this size (and a tenth).
    Import {
        /// Size of the large source.
        #[arg(long, default_value_t = 1.0)]
        gigabytes: f64,
    },
    /// Replication instead of the default run: a new replica of a large
    /// database, and a storage restarted after missing transactions.
    Replication {
        /// Size of the database to replicate.
        #[arg(long, default_value_t = 1.0)]
        gigabytes: f64,
        /// Transactions the restarted storage misses.
        #[arg(long, default_value_t = 10_000)]
        missed: usize,
    },
}

/// The engines `--adapter` chooses from.
#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    /// NEO/py's SQLite schema, the embedded default.
    Sqlite,
    /// The append-only log of this implementation.
    Native,
}

impl Engine {
    fn store(self) -> Store {
        match self {
            Engine::Sqlite => Store::Sqlite,
            Engine::Native => Store::Native,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "SQLite",
            Engine::Native => "Native",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Size {
    Smoke,
    Default,
}

/// Counts and time limits of one run.
struct Plan {
    round_trips: usize,
    fsyncs: usize,
    objects: usize,
    load_clients: &'static [usize],
    parallel_window: Duration,
    serial_commits: usize,
    commit_clients: &'static [usize],
    commit_window: Duration,
    zodb: Zodb,
}

/// Sizes of the ZODB side, the same for NEO, ZEO and FileStorage (its
/// client counts are the Rust side's).
struct Zodb {
    objects: usize,
    load_window: Duration,
    serial_commits: usize,
    commit_window: Duration,
    app_items: usize,
    app_batch: usize,
    app_lookups: usize,
    /// Lookups of the start-up measure (cold vs persistent client cache).
    app_startup_lookups: usize,
    /// Items a prefetching scan prefetches at a time.
    app_prefetch_window: usize,
    /// The most any one loop of zodb_bench.py may take.
    phase_limit: Duration,
    /// The most one storage's zodb_bench.py may take.
    script_limit: Duration,
}

impl Plan {
    /// The ZODB side's plan, as zodb_bench.py reads it.
    fn zodb_json(&self) -> Value {
        let zodb = &self.zodb;
        json!({
            "objects": zodb.objects,
            "load_clients": self.load_clients,
            "load_window": zodb.load_window.as_secs_f64(),
            "serial_commits": zodb.serial_commits,
            "committers": self.commit_clients,
            "commit_window": zodb.commit_window.as_secs_f64(),
            "app_items": zodb.app_items,
            "app_batch": zodb.app_batch,
            "app_lookups": zodb.app_lookups,
            "app_startup_lookups": zodb.app_startup_lookups,
            "app_prefetch_window": zodb.app_prefetch_window,
            "phase_limit": zodb.phase_limit.as_secs_f64(),
            "seed": 20_240_601,
        })
    }

    fn of(size: Size) -> Plan {
        match size {
            Size::Smoke => Plan {
                round_trips: 500,
                fsyncs: 20,
                objects: 300,
                load_clients: &[1, 2],
                parallel_window: Duration::from_millis(300),
                serial_commits: 20,
                commit_clients: &[1, 2],
                commit_window: Duration::from_millis(300),
                zodb: Zodb {
                    objects: 300,
                    load_window: Duration::from_millis(300),
                    serial_commits: 20,
                    commit_window: Duration::from_millis(300),
                    app_items: 2_000,
                    app_batch: 200,
                    app_lookups: 200,
                    app_startup_lookups: 500,
                    app_prefetch_window: 100,
                    phase_limit: Duration::from_secs(5),
                    script_limit: Duration::from_secs(60),
                },
            },
            Size::Default => Plan {
                round_trips: 20_000,
                fsyncs: 300,
                objects: 20_000,
                load_clients: &[1, 2, 4, 8, 16],
                parallel_window: Duration::from_secs(3),
                serial_commits: 400,
                commit_clients: &[1, 2, 4, 8],
                commit_window: Duration::from_secs(3),
                zodb: Zodb {
                    objects: 10_000,
                    load_window: Duration::from_secs(2),
                    serial_commits: 200,
                    commit_window: Duration::from_secs(2),
                    app_items: 20_000,
                    app_batch: 500,
                    app_lookups: 2_000,
                    app_startup_lookups: 10_000,
                    app_prefetch_window: 500,
                    phase_limit: Duration::from_secs(15),
                    script_limit: Duration::from_secs(200),
                },
            },
        }
    }
}

/// Median and 99th percentile of durations, in µs.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// A small deterministic generator (xorshift), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, size: usize) -> Bytes {
        (0..size)
            .map(|_| self.next() as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

fn echo() -> Result<(), String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    println!(
        "{}",
        listener.local_addr().map_err(|e| e.to_string())?.port()
    );
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 64];
    loop {
        let read = stream.read(&mut buffer).map_err(|e| e.to_string())?;
        if read == 0 {
            return Ok(());
        }
        stream
            .write_all(&buffer[..read])
            .map_err(|e| e.to_string())?;
    }
}

/// Round trip of a small message between two processes over 127.0.0.1:
/// min, median, p99 and max in µs (the spread is the run's noise
/// indicator).
fn floor_round_trip(count: usize) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("echo")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut port = String::new();
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
        port.push(byte[0] as char);
    }
    let mut stream = std::net::TcpStream::connect((
        "127.0.0.1",
        port.trim().parse::<u16>().map_err(|e| e.to_string())?,
    ))
    .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(count);
    let message = [7u8; 32];
    let mut answer = [0u8; 32];
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&message).map_err(|e| e.to_string())?;
        stream.read_exact(&mut answer).map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
    }
    // What the echo process spent per round trip: the kernel's own cost of
    // serving one small request over loopback, a floor for server CPU.
    let echo_cpu = cluster::main_thread_cpu_time(child.id());
    drop(stream);
    let _ = child.wait();
    let (median, p99) = percentiles(&mut samples);
    let us = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e6);
    Ok(json!({
        "min": us(samples.first()),
        "median": median,
        "p99": p99,
        "max": us(samples.last()),
        "server_cpu_per_round_trip": echo_cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / count.max(1) as f64),
    }))
}

/// A 4 KiB append + fsync in the data directory.
fn floor_fsync(dir: &Path, count: usize) -> Result<(f64, f64), String> {
    let path = dir.join("fsync-floor");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    let block = [0x5a_u8; 4096];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        file.write_all(&block).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
    }
    let _ = std::fs::remove_file(path);
    Ok(percentiles(&mut samples))
}

fn connect(cluster: &Cluster) -> Result<BlockingClient, String> {
    let mut config = ClientConfig::new(vec![cluster.master.clone()], cluster.name.clone());
    config.connection = cluster.connection.clone();
    BlockingClient::connect(config).map_err(|e| e.to_string())
}

fn meta() -> TxnMeta {
    TxnMeta {
        user: Bytes::from_static(b"bench"),
        description: Bytes::new(),
        extension: Bytes::new(),
        pack: None,
    }
}

/// Commits new objects of these sizes in one transaction.
fn commit_new(client: &BlockingClient, rng: &mut Rng, sizes: &[usize]) -> Result<Vec<Oid>, String> {
    let mut txn = client.begin(None).map_err(|e| e.to_string())?;
    let mut oids = Vec::with_capacity(sizes.len());
    for size in sizes {
        let oid = client.new_oid().map_err(|e| e.to_string())?;
        txn.store(oid, Tid::ZERO, rng.bytes(*size))
            .map_err(|e| e.to_string())?;
        oids.push(oid);
    }
    txn.vote(&meta()).map_err(|e| e.to_string())?;
    txn.finish().map_err(|e| e.to_string())?;
    Ok(oids)
}

/// Commits `count` new objects of 100 B to 1 KiB, 100 per transaction.
fn fill(client: &BlockingClient, rng: &mut Rng, count: usize) -> Result<Vec<Oid>, String> {
    let mut oids = Vec::with_capacity(count);
    while oids.len() < count {
        let sizes: Vec<usize> = (0..100)
            .map(|_| 100 + (rng.next() % 924) as usize)
            .collect();
        oids.extend(commit_new(client, rng, &sizes)?);
    }
    Ok(oids)
}

/// Loads each of `oids` once, in this order: the latency of each.
fn load_each(client: &BlockingClient, oids: &[Oid]) -> Result<Vec<Duration>, String> {
    let mut samples = Vec::with_capacity(oids.len());
    for oid in oids {
        let start = Instant::now();
        client.load(*oid).map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

fn server_cpu(cluster: &Cluster, labels: &[&str]) -> Duration {
    cluster
        .nodes()
        .iter()
        .filter(|node| labels.iter().any(|label| node.label.starts_with(label)))
        .map(|node| node.cpu_time())
        .sum()
}

/// Runs `operation` in a loop on `clients` threads, each with its own
/// client, during `window`; returns operations per second over all.
fn throughput(
    cluster: &Cluster,
    clients: usize,
    window: Duration,
    operation: impl Fn(&BlockingClient, &mut Rng) -> Result<(), String> + Sync,
) -> Result<f64, String> {
    let clients: Vec<BlockingClient> = (0..clients)
        .map(|_| connect(cluster))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let operation = &operation;
    let total: Result<usize, String> = std::thread::scope(|scope| {
        let workers: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(index, client)| {
                scope.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
                    let mut done = 0usize;
                    while start.elapsed() < window {
                        operation(client, &mut rng)?;
                        done += 1;
                    }
                    Ok::<usize, String>(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| "worker panicked".to_owned())?)
            .sum()
    });
    let elapsed = start.elapsed().as_secs_f64();
    for client in clients {
        let _ = client.close();
    }
    Ok(total? as f64 / elapsed)
}

/// The Rust side's workloads on `cluster`: cold and parallel loads,
/// serial and concurrent commits; `floors` are the round-trip and fsync
/// medians the latencies are compared with.
fn measure(
    cluster: &Cluster,
    plan: &Plan,
    rng: &mut Rng,
    floors: (f64, f64),
) -> Result<serde_json::Map<String, Value>, String> {
    let (rtt_median, fsync_median) = floors;
    let mut report = serde_json::Map::new();
    // Objects to load: 100 B to 1 KiB, 100 per transaction.
    let writer = connect(cluster)?;
    let mut oids = Vec::with_capacity(plan.objects);
    while oids.len() < plan.objects {
        let sizes: Vec<usize> = (0..100)
            .map(|_| 100 + (rng.next() % 924) as usize)
            .collect();
        oids.extend(commit_new(&writer, rng, &sizes)?);
    }

    // The storage commits the last unlocks within a second (§12.2): let it,
    // so that the loads are not charged for it.
    std::thread::sleep(Duration::from_millis(1500));

    // Serial cold loads by a fresh client, each object once, random order.
    let reader = connect(cluster)?;
    let mut order = oids.clone();
    rng.shuffle(&mut order);
    let cpu_before = server_cpu(cluster, &["storage"]);
    let mut samples = Vec::with_capacity(order.len());
    for oid in &order {
        let start = Instant::now();
        reader.load(*oid).map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
    }
    let storage_cpu = server_cpu(cluster, &["storage"]) - cpu_before;
    let (load_median, load_p99) = percentiles(&mut samples);
    report.insert(
        "serial_cold_load_us".into(),
        json!({"median": load_median, "p99": load_p99, "ratio_to_round_trip": load_median / rtt_median}),
    );
    report.insert(
        "storage_cpu_per_load_us".into(),
        json!(storage_cpu.as_secs_f64() * 1e6 / order.len() as f64),
    );
    let _ = reader.close();

    let mut parallel = serde_json::Map::new();
    for clients in plan.load_clients {
        let loads = throughput(cluster, *clients, plan.parallel_window, |client, rng| {
            let oid = oids[(rng.next() % oids.len() as u64) as usize];
            client.load(oid).map(drop).map_err(|e| e.to_string())
        })?;
        parallel.insert(clients.to_string(), json!(loads));
    }
    report.insert("parallel_loads_per_s".into(), Value::Object(parallel));

    // Serial commits: latency of 10-object transactions of three sizes.
    let mut commits = serde_json::Map::new();
    for size in [100usize, 1024, 65536] {
        let cpu_before = server_cpu(cluster, &["master", "storage"]);
        let mut samples = Vec::with_capacity(plan.serial_commits);
        let started = Instant::now();
        for _ in 0..plan.serial_commits {
            let start = Instant::now();
            commit_new(&writer, rng, &[size; 10])?;
            samples.push(start.elapsed());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = server_cpu(cluster, &["master", "storage"]) - cpu_before;
        let (median, p99) = percentiles(&mut samples);
        commits.insert(
            format!("10x{size}B"),
            json!({
                "median_us": median,
                "p99_us": p99,
                "tx_per_s": plan.serial_commits as f64 / elapsed,
                "server_cpu_per_tx_us": cpu.as_secs_f64() * 1e6 / plan.serial_commits as f64,
                "ratio_to_fsync": median / fsync_median,
            }),
        );
    }
    report.insert("serial_commits".into(), Value::Object(commits));

    let mut concurrent = serde_json::Map::new();
    for clients in plan.commit_clients {
        let commits = throughput(cluster, *clients, plan.commit_window, |client, rng| {
            commit_new(client, rng, &[1024; 10]).map(drop)
        })?;
        concurrent.insert(clients.to_string(), json!(commits));
    }
    report.insert(
        "concurrent_commits_tx_per_s".into(),
        Value::Object(concurrent),
    );
    let _ = writer.close();

    Ok(report)
}

fn run(cli: &Cli, venv: Option<&python::Venv>) -> Result<Value, String> {
    let plan = Plan::of(cli.size);
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut report = serde_json::Map::new();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    report.insert(
        "size".into(),
        json!(match cli.size {
            Size::Smoke => "smoke",
            Size::Default => "default",
        }),
    );

    let round_trip = floor_round_trip(plan.round_trips)?;
    let rtt_median = round_trip["median"].as_f64().unwrap_or(f64::NAN);
    let (fsync_median, fsync_p99) = floor_fsync(data.path(), plan.fsyncs)?;
    report.insert("floor_round_trip_us".into(), round_trip);
    report.insert(
        "floor_fsync_4k_us".into(),
        json!({"median": fsync_median, "p99": fsync_p99}),
    );

    report.insert("adapter".into(), json!(cli.adapter.name()));
    let cluster = Cluster::start(&cli.bin_dir, data.path(), 1, &cli.adapter.store(), None)?;
    let rest_rss: u64 = cluster.nodes().iter().map(|node| node.rss_kib()).sum();
    report.insert("rss_at_rest_kib".into(), json!(rest_rss));
    let floors = (rtt_median, fsync_median);
    report.extend(measure(&cluster, &plan, &mut rng, floors)?);

    let peak: serde_json::Map<String, Value> = cluster
        .nodes()
        .iter()
        .map(|node| (node.label.clone(), json!(node.peak_rss_kib())))
        .collect();
    report.insert("peak_rss_kib".into(), Value::Object(peak));

    if let Some(venv) = venv {
        let zodb_dir = data.path().join("zodb");
        std::fs::create_dir_all(&zodb_dir).map_err(|e| e.to_string())?;
        let started = Instant::now();
        match python::measure(
            venv,
            &plan.zodb_json(),
            &cluster,
            &zodb_dir,
            plan.zodb.script_limit,
        ) {
            Ok(zodb) => {
                report.insert("zodb".into(), zodb);
            }
            Err(message) => {
                eprintln!("neobench: the ZODB side failed: {message}");
                report.insert("zodb_error".into(), json!(message));
            }
        }
        report.insert(
            "zodb_seconds".into(),
            json!(started.elapsed().as_secs_f64()),
        );
    }
    cluster.stop()?;
    if cli.tls {
        let tls = tls::compare(&cli.bin_dir, &data.path().join("tls"), cli.size)?;
        report.insert("tls".into(), tls);
    }

    if let Some(database) = &cli.mysql {
        let dir = data.path().join("mysql");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let store = Store::MySql(database.clone());
        let cluster = Cluster::start(&cli.bin_dir, &dir, 1, &store, None)?;
        let mut mysql = measure(&cluster, &plan, &mut rng, (rtt_median, fsync_median))?;
        mysql.insert("database".into(), json!(database));
        cluster.stop()?;
        report.insert("mysql".into(), Value::Object(mysql));
    }

    // The floor again: how much the machine drifted during the run.
    report.insert(
        "floor_round_trip_after_us".into(),
        floor_round_trip(plan.round_trips)?,
    );
    Ok(Value::Object(report))
}

/// The report as a markdown table.
fn markdown(report: &Value) -> String {
    let number = |path: &[&str]| {
        path.iter()
            .try_fold(report, |value, key| value.get(*key))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let mut table = String::from("| measure | value |\n|---|---|\n");
    let mut row = |name: &str, value: String| table.push_str(&format!("| {name} | {value} |\n"));
    row(
        "storage engine",
        report["adapter"].as_str().unwrap_or("?").to_owned(),
    );
    row(
        "loopback round trip (floor), median",
        format!("{:.1} µs", number(&["floor_round_trip_us", "median"])),
    );
    row(
        "noise: round-trip floor min / median / max; median at the end",
        format!(
            "{:.1} / {:.1} / {:.1} µs; {:.1} µs",
            number(&["floor_round_trip_us", "min"]),
            number(&["floor_round_trip_us", "median"]),
            number(&["floor_round_trip_us", "max"]),
            number(&["floor_round_trip_after_us", "median"])
        ),
    );
    row(
        "4 KiB append + fsync (floor), median",
        format!("{:.1} µs", number(&["floor_fsync_4k_us", "median"])),
    );
    row(
        "serial cold load, median / p99",
        format!(
            "{:.1} / {:.1} µs ({:.2} × round trip)",
            number(&["serial_cold_load_us", "median"]),
            number(&["serial_cold_load_us", "p99"]),
            number(&["serial_cold_load_us", "ratio_to_round_trip"])
        ),
    );
    row(
        "storage CPU per load (floor: echo server CPU per round trip)",
        format!(
            "{:.1} µs ({:.1} µs)",
            number(&["storage_cpu_per_load_us"]),
            number(&["floor_round_trip_us", "server_cpu_per_round_trip"])
        ),
    );
    if let Some(Value::Object(parallel)) = report.get("parallel_loads_per_s") {
        for clients in sort_numeric(parallel.keys().cloned().collect()) {
            row(
                &format!("parallel loads, {clients} clients"),
                format!("{:.0} loads/s", parallel[&clients].as_f64().unwrap_or(0.0)),
            );
        }
    }
    if let Some(Value::Object(commits)) = report.get("serial_commits") {
        for (kind, figures) in commits {
            let get = |key: &str| figures.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
            row(
                &format!("serial commit {kind}"),
                format!(
                    "{:.0} µs median, {:.0} tx/s, server CPU {:.0} µs/tx, {:.1} × fsync",
                    get("median_us"),
                    get("tx_per_s"),
                    get("server_cpu_per_tx_us"),
                    get("ratio_to_fsync")
                ),
            );
        }
    }
    if let Some(Value::Object(concurrent)) = report.get("concurrent_commits_tx_per_s") {
        for clients in sort_numeric(concurrent.keys().cloned().collect()) {
            row(
                &format!("10 × 1 KiB commits, {clients} committers"),
                format!("{:.0} tx/s", concurrent[&clients].as_f64().unwrap_or(0.0)),
            );
        }
    }
    row(
        "RSS of the 3 servers at rest",
        format!("{:.1} MiB", number(&["rss_at_rest_kib"]) / 1024.0),
    );
    if let Some(Value::Object(peak)) = report.get("peak_rss_kib") {
        for (node, kib) in peak {
            row(
                &format!("peak RSS {node}"),
                format!("{:.1} MiB", kib.as_f64().unwrap_or(0.0) / 1024.0),
            );
        }
    }
    if let Some(mysql) = report.get("mysql") {
        table.push('\n');
        table.push_str(&mysql_markdown(report, mysql));
    }
    if let Some(tls) = report.get("tls") {
        table.push('\n');
        table.push_str(&tls::markdown(tls));
    }
    if let Some(zodb) = report.get("zodb") {
        table.push('\n');
        table.push_str(&zodb_markdown(report, zodb));
    }
    if let Some(error) = report.get("zodb_error").and_then(Value::as_str) {
        table.push_str(&format!("\nThe ZODB side did not run: {error}\n"));
    }
    table.push('\n');
    table.push_str(&targets_markdown(report));
    table
}

/// The figures the performance work aims at, each beside its goal, from
/// this run only: ratios to ZEO or to this run's floors, and the storage's
/// CPU beside the echo server's (the kernel's own cost of a round trip).
fn targets_markdown(report: &Value) -> String {
    let at = |path: &[&str]| {
        path.iter()
            .try_fold(report, |value, key| value.get(*key))
            .and_then(Value::as_f64)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let zodb = |kind: &str, path: &[&str]| {
        let mut full = vec!["zodb", kind];
        full.extend_from_slice(path);
        at(&full)
    };
    let neo_to_zeo = |path: &[&str]| ratio(zodb("neo", path), zodb("zeo", path));
    let rtt = at(&["floor_round_trip_us", "median"]);
    let echo_cpu = at(&["floor_round_trip_us", "server_cpu_per_round_trip"]);
    let mut table = String::from(
        "Targets (ratios from this run; a goal marked ≥ is a floor, ≤ a ceiling):\n\n\
         | figure | measured | goal | met |\n|---|---|---|---|\n",
    );
    let mut row = |name: &str, value: Option<f64>, unit: &str, goal: f64, at_least: bool| {
        let (measured, met) = match value {
            Some(value) => (
                format!("{value:.2}{unit}"),
                if (at_least && value >= goal) || (!at_least && value <= goal) {
                    "yes"
                } else {
                    "no"
                },
            ),
            None => ("–".to_owned(), "–"),
        };
        let sign = if at_least { "≥" } else { "≤" };
        table.push_str(&format!(
            "| {name} | {measured} | {sign} {goal}{unit} | {met} |\n"
        ));
    };
    let commits = ["serial_commits_10x1KiB", "tx_per_s"];
    row(
        "ZODB serial commits 10 × 1 KiB, NEO ÷ ZEO",
        neo_to_zeo(&commits),
        " ×",
        2.0,
        true,
    );
    row(
        "server CPU per such commit (ZODB side)",
        zodb("neo", &["serial_commits_10x1KiB", "server_cpu_per_tx_us"]),
        " µs",
        500.0,
        false,
    );
    row(
        "ZODB, 8 committers, NEO ÷ ZEO",
        neo_to_zeo(&["concurrent_commits_tx_per_s", "8"]),
        " ×",
        3.0,
        true,
    );
    row(
        "storage CPU per cold load (Rust side)",
        at(&["storage_cpu_per_load_us"]),
        " µs",
        15.0,
        false,
    );
    row(
        "storage CPU per cold load (ZODB side)",
        zodb("neo", &["serial_cold_load_us", "server_cpu_per_load_us"]),
        " µs",
        15.0,
        false,
    );
    row(
        "… the echo server's CPU per round trip, for scale",
        echo_cpu,
        " µs",
        15.0,
        false,
    );
    row(
        "serial cold load, Rust client ÷ round trip",
        at(&["serial_cold_load_us", "ratio_to_round_trip"]),
        " ×",
        1.5,
        false,
    );
    row(
        "serial cold load, ZODB ÷ round trip",
        ratio(zodb("neo", &["serial_cold_load_us", "median"]), rtt),
        " ×",
        2.0,
        false,
    );
    row(
        "ZODB, 16 parallel loaders, NEO ÷ ZEO",
        neo_to_zeo(&["parallel_loads_per_s", "16"]),
        " ×",
        8.0,
        true,
    );
    table
}

/// The same workloads with the storage on SQLite and on MySQL, side by
/// side.
fn mysql_markdown(sqlite: &Value, mysql: &Value) -> String {
    let get = |report: &Value, path: &[&str]| {
        path.iter()
            .try_fold(report, |value, key| value.get(*key))
            .and_then(Value::as_f64)
    };
    let mut table = format!(
        "Loads and commits with the storage on SQLite and on MySQL ({}):\n\n\
         | measure | SQLite | MySQL | MySQL ÷ SQLite |\n|---|---|---|---|\n",
        mysql["database"].as_str().unwrap_or("?")
    );
    let mut row = |name: String, path: &[&str], unit: &str| {
        let cell = |value: Option<f64>| match value {
            Some(value) if value >= 100.0 => format!("{value:.0} {unit}"),
            Some(value) => format!("{value:.1} {unit}"),
            None => "–".to_owned(),
        };
        let (a, b) = (get(sqlite, path), get(mysql, path));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
            _ => "–".to_owned(),
        };
        table.push_str(&format!(
            "| {name} | {} | {} | {ratio} |\n",
            cell(a),
            cell(b)
        ));
    };
    row(
        "serial cold load, median".into(),
        &["serial_cold_load_us", "median"],
        "µs",
    );
    row(
        "serial cold load, p99".into(),
        &["serial_cold_load_us", "p99"],
        "µs",
    );
    row(
        "storage CPU per load¹".into(),
        &["storage_cpu_per_load_us"],
        "µs",
    );
    let keys = |name: &str| -> Vec<String> {
        mysql[name]
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    };
    for clients in sort_numeric(keys("parallel_loads_per_s")) {
        row(
            format!("parallel loads, {clients} clients"),
            &["parallel_loads_per_s", &clients],
            "loads/s",
        );
    }
    for kind in keys("serial_commits") {
        row(
            format!("serial commit {kind}, median"),
            &["serial_commits", &kind, "median_us"],
            "µs",
        );
        row(
            format!("serial commits {kind}"),
            &["serial_commits", &kind, "tx_per_s"],
            "tx/s",
        );
    }
    for clients in sort_numeric(keys("concurrent_commits_tx_per_s")) {
        row(
            format!("10 × 1 KiB commits, {clients} committers"),
            &["concurrent_commits_tx_per_s", &clients],
            "tx/s",
        );
    }
    table.push_str("\n¹ The storage process only: the MySQL server's own CPU is not counted.\n");
    table
}

/// The ZODB side's table: NEO, ZEO and FileStorage side by side, with
/// NEO's ratio to ZEO and latencies' ratios to the floors.
fn zodb_markdown(report: &Value, zodb: &Value) -> String {
    const KINDS: [&str; 3] = ["neo", "zeo", "filestorage"];
    let floor = |name: &str| {
        report
            .get(name)
            .and_then(|floor| floor.get("median"))
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    };
    let (rtt, fsync) = (floor("floor_round_trip_us"), floor("floor_fsync_4k_us"));
    let get = |kind: &str, path: &[&str]| {
        path.iter()
            .try_fold(&zodb[kind], |value, key| value.get(*key))
            .and_then(Value::as_f64)
    };
    let plan = &zodb["neo"]["plan"];
    let mut table = format!(
        "Through the ZODB API, same workloads for the three ({} objects of \
         100 B–1 KiB; application: {} OOBTree items of persistent objects, {} per \
         transaction, {} cold lookups; start-up: opening, then the first {} \
         lookups):\n\n\
         | measure | NEO | ZEO | FileStorage | NEO ÷ ZEO |\n|---|---|---|---|---|\n",
        plan["objects"],
        plan["app_items"],
        plan["app_batch"],
        plan["app_lookups"],
        plan["app_startup_lookups"]
    );
    // One row: `show` formats a value, `floor` (if any) adds its ratio.
    let mut row = |name: &str, path: &[&str], unit: &str, floor: Option<(f64, &str)>| {
        let cells: Vec<String> = KINDS
            .iter()
            .map(|kind| match get(kind, path) {
                None => "–".to_owned(),
                Some(value) => {
                    let mut cell = if value >= 100.0 {
                        format!("{value:.0} {unit}")
                    } else {
                        format!("{value:.1} {unit}")
                    };
                    if let Some((floor, floor_name)) = floor {
                        cell.push_str(&format!(" ({:.1} × {floor_name})", value / floor));
                    }
                    cell
                }
            })
            .collect();
        let ratio = match (get("neo", path), get("zeo", path)) {
            (Some(neo), Some(zeo)) if zeo > 0.0 => format!("{:.2}", neo / zeo),
            _ => "–".to_owned(),
        };
        table.push_str(&format!("| {name} | {} | {ratio} |\n", cells.join(" | ")));
    };
    let rtt = Some((rtt, "rtt"));
    row(
        "serial cold load, median",
        &["serial_cold_load_us", "median"],
        "µs",
        rtt,
    );
    row(
        "serial cold load, p99",
        &["serial_cold_load_us", "p99"],
        "µs",
        rtt,
    );
    row(
        "server CPU per cold load",
        &["serial_cold_load_us", "server_cpu_per_load_us"],
        "µs",
        None,
    );
    let clients: Vec<String> = zodb["neo"]["parallel_loads_per_s"]
        .as_object()
        .map(|map| map.keys().cloned().collect())
        .unwrap_or_default();
    for clients in sort_numeric(clients) {
        row(
            &format!("parallel loads, {clients} clients¹"),
            &["parallel_loads_per_s", &clients],
            "loads/s",
            None,
        );
    }
    let fsync = Some((fsync, "fsync"));
    row(
        "serial commit 10 × 1 KiB, median",
        &["serial_commits_10x1KiB", "median_us"],
        "µs",
        fsync,
    );
    row(
        "serial commit 10 × 1 KiB, p99",
        &["serial_commits_10x1KiB", "p99_us"],
        "µs",
        fsync,
    );
    row(
        "serial commits 10 × 1 KiB",
        &["serial_commits_10x1KiB", "tx_per_s"],
        "tx/s",
        None,
    );
    row(
        "server CPU per commit",
        &["serial_commits_10x1KiB", "server_cpu_per_tx_us"],
        "µs",
        None,
    );
    let committers: Vec<String> = zodb["neo"]["concurrent_commits_tx_per_s"]
        .as_object()
        .map(|map| map.keys().cloned().collect())
        .unwrap_or_default();
    for committers in sort_numeric(committers) {
        row(
            &format!("10 × 1 KiB commits, {committers} committers²"),
            &["concurrent_commits_tx_per_s", &committers],
            "tx/s",
            None,
        );
    }
    row(
        "app: insert",
        &["app", "insert_items_per_s"],
        "items/s",
        None,
    );
    row(
        "app: insert, one batch, median",
        &["app", "insert_batch_median_us"],
        "µs",
        None,
    );
    row(
        "app: cold random lookup, median",
        &["app", "lookup_median_us"],
        "µs",
        rtt,
    );
    row(
        "app: cold random lookups",
        &["app", "lookups_per_s"],
        "lookups/s",
        None,
    );
    row(
        "app: full scan (cold)",
        &["app", "scan_items_per_s"],
        "items/s",
        None,
    );
    row(
        "app: full scan (cold), prefetching⁵",
        &["app", "prefetch_scan_items_per_s"],
        "items/s",
        None,
    );
    row(
        "app: start-up, cold client cache",
        &["app", "startup_cold_ms"],
        "ms",
        None,
    );
    row(
        "app: start-up, warm persistent cache⁴",
        &["app", "startup_warm_ms"],
        "ms",
        None,
    );
    let neo_peak: f64 = zodb["neo_servers_peak_rss_kib"]
        .as_object()
        .map(|map| map.values().filter_map(Value::as_f64).sum())
        .unwrap_or(f64::NAN);
    let zeo_peak = zodb["zeo_server"]["peak_rss_kib"]
        .as_f64()
        .unwrap_or(f64::NAN);
    table.push_str(&format!(
        "| server peak RSS³ | {:.1} MiB | {:.1} MiB | – | {:.2} |\n",
        neo_peak / 1024.0,
        zeo_peak / 1024.0,
        neo_peak / zeo_peak
    ));
    table.push_str(
        "\n¹ Separate processes, each with its own storage, each loading the \
         objects once in its own random order (no cache hits) until the window \
         closes; FileStorage readers (read-only, no cache) go round again.  \n\
         ² Separate processes, each with its own storage; FileStorage: \
         threads sharing the one storage (a FileStorage has one writer).  \n\
         ³ NEO: master + storage + admin, after the Rust side and the ZODB \
         side; ZEO: its one server process.  \n\
         ⁴ The client cache a previous start-up (the same lookups) left on \
         disk, checked against the cluster (NEO: `cache_file`) or the server \
         (ZEO: `client`, `var`) at start; FileStorage has no client cache.  \n\
         ⁵ The buckets of each level of the tree prefetched at once, then \
         the items a window at a time (`Connection.prefetch`); FileStorage \
         does not prefetch, so its row repeats the plain scan.  \n\
         FileStorage runs in the benchmark's process: its loads read the \
         OS page cache, there is no network.\n",
    );
    table
}

fn sort_numeric(mut keys: Vec<String>) -> Vec<String> {
    keys.sort_by_key(|key| key.parse::<u64>().unwrap_or(u64::MAX));
    keys
}

/// A measure run instead of the default one, in a directory of its own:
/// its table is printed, its report written to `«out»/«name».json`.
fn separate_mode(
    cli: &Cli,
    name: &str,
    run: impl FnOnce(&Path) -> Result<Value, String>,
    markdown: fn(&Value) -> String,
) -> ExitCode {
    let result = tempfile::tempdir()
        .map_err(|e| e.to_string())
        .and_then(|dir| run(dir.path()));
    let report = match result {
        Ok(report) => report,
        Err(message) => {
            eprintln!("neobench: error: {message}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", markdown(&report));
    let written = std::fs::create_dir_all(&cli.out)
        .and_then(|()| std::fs::write(cli.out.join(format!("{name}.json")), report.to_string()));
    if let Err(error) = written {
        eprintln!(
            "neobench: error: cannot write {}: {error}",
            cli.out.display()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Mode::Echo) => {
            return match echo() {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("neobench echo: {message}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Mode::Replication { gigabytes, missed }) => {
            let run = |dir: &Path| replication::run(&cli.bin_dir, dir, gigabytes, missed);
            return separate_mode(&cli, "replication", run, replication::markdown);
        }
        Some(Mode::Import { gigabytes }) => {
            let run = |dir: &Path| import::run(&cli.bin_dir, dir, gigabytes);
            return separate_mode(&cli, "import", run, import::markdown);
        }
        None => {}
    }
    let started = Instant::now();
    let (venv, setup_error) = if cli.no_python {
        (None, None)
    } else {
        let neo_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../neo-py");
        match python::setup(&cli.venv, &cli.python, &neo_py) {
            Ok(venv) => (Some(venv), None),
            Err(message) => {
                eprintln!(
                    "neobench: the ZODB side (ZEO, FileStorage, NEO through the ZODB API) \
                     cannot run, because the Python virtualenv {} could not be set up: \
                     {message}\nneobench: measuring the Rust side only \
                     (--no-python skips the ZODB side on purpose)",
                    cli.venv.display()
                );
                (None, Some(message))
            }
        }
    };
    let mut report = match run(&cli, venv.as_ref()) {
        Ok(report) => report,
        Err(message) => {
            eprintln!("neobench: error: {message}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(message), Value::Object(map)) = (setup_error, &mut report) {
        map.insert(
            "zodb_error".into(),
            json!(format!(
                "the Python virtualenv could not be set up: {message}"
            )),
        );
    }
    if let Value::Object(map) = &mut report {
        map.insert(
            "total_seconds".into(),
            json!(started.elapsed().as_secs_f64()),
        );
    }
    let table = markdown(&report);
    print!("{table}");
    let written = std::fs::create_dir_all(&cli.out)
        .and_then(|()| std::fs::write(cli.out.join("bench.md"), &table))
        .and_then(|()| std::fs::write(cli.out.join("bench.json"), report.to_string()));
    if let Err(error) = written {
        eprintln!(
            "neobench: error: cannot write {}: {error}",
            cli.out.display()
        );
        return ExitCode::FAILURE;
    }
    let mut failed = report.get("zodb_error").is_some();
    if let (Some(venv), Some(_)) = (&venv, report.get("zodb")) {
        let png = cli.out.join("bench.png");
        match python::chart(venv, &cli.out.join("bench.json"), &png) {
            Ok(()) => println!("chart: {}", png.display()),
            Err(message) => {
                eprintln!("neobench: error: no chart: {message}");
                failed = true;
            }
        }
    }
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    if failed {
        eprintln!(
            "neobench: the ZODB side failed (see above); the Rust side's figures are complete"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each target is judged against its own goal, in the right direction,
    /// and a figure the run lacks is shown as such, not as met.
    #[test]
    fn targets_are_judged_by_their_goals() {
        let side = |commits: f64, cpu: f64, eight: f64, sixteen: f64, load: f64| {
            json!({"serial_commits_10x1KiB": {"tx_per_s": commits, "server_cpu_per_tx_us": cpu},
                   "concurrent_commits_tx_per_s": {"8": eight},
                   "parallel_loads_per_s": {"16": sixteen},
                   "serial_cold_load_us": {"median": load, "server_cpu_per_load_us": 20.0}})
        };
        let report = json!({
            "floor_round_trip_us": {"median": 50.0, "server_cpu_per_round_trip": 12.0},
            "serial_cold_load_us": {"ratio_to_round_trip": 1.4},
            "storage_cpu_per_load_us": 14.0,
            "zodb": {"neo": side(900.0, 600.0, 900.0, 8000.0, 120.0),
                     "zeo": side(400.0, 1000.0, 300.0, 1000.0, 400.0)},
        });
        let table = targets_markdown(&report);
        for expected in [
            "| ZODB serial commits 10 × 1 KiB, NEO ÷ ZEO | 2.25 × | ≥ 2 × | yes |",
            "| server CPU per such commit (ZODB side) | 600.00 µs | ≤ 500 µs | no |",
            "| ZODB, 8 committers, NEO ÷ ZEO | 3.00 × | ≥ 3 × | yes |",
            "| storage CPU per cold load (Rust side) | 14.00 µs | ≤ 15 µs | yes |",
            "| storage CPU per cold load (ZODB side) | 20.00 µs | ≤ 15 µs | no |",
            "| serial cold load, Rust client ÷ round trip | 1.40 × | ≤ 1.5 × | yes |",
            "| serial cold load, ZODB ÷ round trip | 2.40 × | ≤ 2 × | no |",
            "| ZODB, 16 parallel loaders, NEO ÷ ZEO | 8.00 × | ≥ 8 × | yes |",
        ] {
            assert!(table.contains(expected), "{expected} not in\n{table}");
        }
        let without_zodb = targets_markdown(&json!({}));
        assert!(
            without_zodb.contains("| ZODB, 8 committers, NEO ÷ ZEO | – | ≥ 3 × | – |"),
            "{without_zodb}"
        );
    }

    /// The start-up figures reach the printed table, NEO ÷ ZEO included.
    #[test]
    fn zodb_table_shows_the_start_up() {
        let plan = json!({"objects": 10, "app_items": 20, "app_batch": 5,
                          "app_lookups": 4, "app_startup_lookups": 8});
        let app = |cold: f64, warm: f64| json!({"plan": plan, "app": {"startup_cold_ms": cold, "startup_warm_ms": warm}});
        let zodb = json!({"neo": app(1400.0, 130.0), "zeo": app(3500.0, 200.0),
                          "filestorage": {"plan": plan, "app": {}}});
        let table = zodb_markdown(&json!({}), &zodb);
        assert!(table.contains("the first 8 lookups"), "{table}");
        assert!(
            table.contains("| app: start-up, cold client cache | 1400 ms | 3500 ms | – | 0.40 |"),
            "{table}"
        );
        assert!(
            table
                .contains("| app: start-up, warm persistent cache⁴ | 130 ms | 200 ms | – | 0.65 |"),
            "{table}"
        );
    }
}
