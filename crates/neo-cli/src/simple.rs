//! `neosimple`: a whole cluster in one process — one or more masters, one
//! storage per database name and an admin on one IP — for trying NEO and
//! for tests. It takes NEO/py's options, so NEO/py's command lines work
//! unchanged; unlike NEO/py's version it starts the cluster by itself,
//! waits until it runs, and stops it cleanly on SIGINT/SIGTERM, so the
//! same data directory can be used again.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use neo_admin::AdminConfig;
use neo_master::MasterConfig;
use neo_net::{connect_alone, ConnectionConfig, Listener, Tls};
use neo_proto::packets::{AskClusterState, SetClusterState};
use neo_proto::{Address, ClusterState};
use neo_storage::backend::{Adapter, OpenOptions};
use neo_storage::importer::open_database;
use neo_storage::node::{Limits, Storage, StorageConfig};
use tokio::task::JoinHandle;

/// Command line of `neosimple` (NEO/py's option names where they apply).
#[derive(Parser, Debug)]
#[command(name = "neosimple", about = "Run a whole NEO cluster on this machine")]
pub struct SimpleOptions {
    /// Directory of the SQLite databases (created if missing).
    #[arg(long = "temp_dir", default_value = "neo-data")]
    pub temp_dir: PathBuf,
    /// Cluster name.
    #[arg(long, default_value = "neosimple")]
    pub name: String,
    /// Number of partitions of a new cluster.
    #[arg(long, default_value_t = 12)]
    pub partitions: u32,
    /// Number of extra replicas of a new cluster.
    #[arg(long, default_value_t = 0)]
    pub replicas: u32,
    /// IP address every node listens on (default: the loopback address
    /// of `--address_type`).
    #[arg(long = "bind_ip")]
    pub bind_ip: Option<String>,
    /// Socket family when `--bind_ip` is not given, by number as NEO/py
    /// takes it: 2 (IPv4, 127.0.0.1) or 10 (IPv6, ::1).
    #[arg(long = "address_type", default_value_t = 2)]
    pub address_type: u32,
    /// Number of masters: they elect one primary, the others are spares.
    #[arg(long = "master_count", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=MAX_MASTERS as i64))]
    pub master_count: u32,
    /// Accepted for NEO/py's command lines: this neosimple always creates
    /// the cluster once every storage is there.
    #[arg(long)]
    pub autostart: bool,
    /// Accepted for NEO/py's command lines, where it seeds random ports,
    /// ids and names: here the kernel picks the ports and the name is
    /// `--name`.
    #[arg(long)]
    pub seed: Option<String>,
    /// Log to `neosimple.log` in the data directory instead of stderr
    /// (NEO/py writes one file per node; here every node is in one
    /// process).
    #[arg(long)]
    pub logger: bool,
    /// Accepted for NEO/py's command lines (no effect there either).
    #[arg(long = "cleanup_on_delete")]
    pub cleanup_on_delete: bool,
    /// NEO/py's Python-only options: refused with a reason.
    #[arg(long)]
    pub importer: Option<String>,
    #[arg(long = "storage_kw")]
    pub storage_kw: Option<String>,
    /// Port of the master (0: any free port).
    #[arg(long = "master_port", default_value_t = 0)]
    pub master_port: u16,
    /// Port of the admin, where neoctl connects (0: any free port).
    #[arg(long = "admin_port", default_value_t = 0)]
    pub admin_port: u16,
    /// Delete the databases first.
    #[arg(long = "clear_databases")]
    pub clear_databases: bool,
    /// Storage engine, by NEO/py's name (SQLite or MySQL), or Native.
    #[arg(long, default_value = "SQLite")]
    pub adapter: String,
    /// TLS for every node: CA certificate(s) and CRLs, PEM.
    #[arg(long, requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
    /// TLS: the nodes' certificate, PEM.
    #[arg(long, requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// TLS: its private key, PEM.
    #[arg(long, requires_all = ["ca", "cert"])]
    pub key: Option<PathBuf>,
    /// One storage node per name: with SQLite, database `«name».sqlite` in
    /// the data directory (or the path, if it holds a `/`); with MySQL,
    /// the database string as `neostorage -d` takes it
    /// (`[user[:password]@]database[socket]`).
    #[arg(default_values_t = vec!["0".to_owned()])]
    pub db: Vec<String>,
}

/// Most masters `--master_count` starts.
const MAX_MASTERS: usize = 16;

impl SimpleOptions {
    /// Where the log goes with `--logger`.
    pub fn logfile(&self) -> Option<PathBuf> {
        self.logger.then(|| self.temp_dir.join("neosimple.log"))
    }

    /// The IP every node listens on.
    fn ip(&self) -> Result<String, String> {
        if let Some(ip) = &self.bind_ip {
            return Ok(ip.clone());
        }
        match self.address_type {
            2 => Ok("127.0.0.1".to_owned()),
            10 => Ok("::1".to_owned()),
            other => Err(format!("--address_type {other}: use 2 (IPv4) or 10 (IPv6)")),
        }
    }
}

/// How long the cluster may take to reach RUNNING.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the nodes may take to stop after `STOPPING`.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the masters get to stop once the other nodes have.
const SPARE_GRACE: Duration = Duration::from_secs(3);

/// Runs the cluster until `shutdown` completes, printing what a client
/// needs once it runs.
pub async fn run(
    options: SimpleOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    // Its nodes share one log: none of their NIDs names all the lines.
    neo_log::pin_node("neosimple");
    let adapter = Adapter::from_name(&options.adapter)
        .ok_or_else(|| format!("unknown adapter {:?}", options.adapter))?;
    if options.importer.is_some() || options.storage_kw.is_some() {
        return Err(
            "--importer and --storage_kw take Python structures, which a command \
                    line cannot give (NEO/py cannot use them either)"
                .to_owned(),
        );
    }
    let tls = match (&options.ca, &options.cert, &options.key) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(Tls::load(ca, cert, key).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    std::fs::create_dir_all(&options.temp_dir)
        .map_err(|e| format!("cannot create {}: {e}", options.temp_dir.display()))?;
    let ip = options.ip()?;
    let bind = |port| bind(&ip, port, tls.clone());
    // Every master listens before any starts, so each knows them all.
    let mut master_listeners = vec![bind(options.master_port).await?];
    for _ in 1..options.master_count {
        master_listeners.push(bind(0).await?);
    }
    let masters: Vec<Address> = master_listeners
        .iter()
        .map(|listener| listener.local_address().clone())
        .collect();
    let mut master_tasks: Vec<JoinHandle<Result<(), String>>> = Vec::new();
    let mut nodes: Vec<JoinHandle<Result<(), String>>> = Vec::new();
    for listener in master_listeners {
        let master = MasterConfig {
            cluster: options.name.clone(),
            address: listener.local_address().clone(),
            partitions: options.partitions,
            replicas: options.replicas,
            autostart: Some(options.db.len() as u32),
            masters: masters.clone(),
            nid: None,
        };
        master_tasks.push(tokio::spawn(async move {
            neo_master::run(master, listener, None, std::future::pending())
                .await
                .map_err(|e| format!("master: {e}"))
        }));
    }
    for db in &options.db {
        // A file per name, in the data directory, for the engines of files.
        let extension = match adapter {
            Adapter::Sqlite => Some("sqlite"),
            Adapter::Native => Some("native"),
            _ => None,
        };
        let database = match extension {
            Some(extension) if !db.contains('/') => {
                let path = options.temp_dir.join(format!("{db}.{extension}"));
                path.to_str()
                    .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))?
                    .to_owned()
            }
            _ => db.clone(),
        };
        let open = OpenOptions {
            reset: options.clear_databases,
            ..OpenOptions::default()
        };
        let mut db =
            open_database(adapter, &database, &open).map_err(|e| format!("{database}: {e}"))?;
        let listener = bind(0).await?;
        let config = StorageConfig {
            cluster: options.name.clone(),
            address: listener.local_address().clone(),
            masters: masters.clone(),
            limits: Limits::default(),
            devpath: db.topology_path(),
        };
        let storage = Storage::new(config, db).map_err(|e| format!("{database}: {e}"))?;
        nodes.push(tokio::spawn(async move {
            neo_storage::run(storage, listener, std::future::pending())
                .await
                .map_err(|e| format!("storage: {e}"))
        }));
    }
    let admin_listener = bind(options.admin_port).await?;
    let admin_address = admin_listener.local_address().clone();
    let admin = AdminConfig {
        cluster: options.name.clone(),
        masters: masters.clone(),
        bind: admin_address.clone(),
        monitor_backup: Vec::new(),
        nid: None,
        monitor: Default::default(),
    };
    nodes.push(tokio::spawn(async move {
        neo_admin::run(admin, admin_listener, std::future::pending())
            .await
            .map_err(|e| format!("admin: {e}"))
    }));

    let ctl = ConnectionConfig {
        tls,
        ..ConnectionConfig::default()
    };
    tokio::time::timeout(START_TIMEOUT, wait_running(&admin_address, &ctl))
        .await
        .map_err(|_| format!("the cluster did not start within {START_TIMEOUT:?}"))?;
    println!("Cluster running");
    let master_nodes: Vec<String> = masters.iter().map(Address::to_string).collect();
    println!("master_nodes = {}", master_nodes.join(" "));
    println!("name = {}", options.name);
    println!("admin = {admin_address}");
    println!("data = {}", options.temp_dir.display());

    shutdown.await;
    println!("Stopping the cluster");
    stop(&admin_address, &ctl).await?;
    let all = async {
        for node in nodes {
            joined(node.await);
        }
    };
    tokio::time::timeout(STOP_TIMEOUT, all)
        .await
        .map_err(|_| "the cluster did not stop in time".to_owned())?;
    // The primary stops once the storages have. A spare master that was
    // between two primaries when the cluster stopped never heard of it and
    // plays the primary role of nothing: it is stopped here, as an
    // operator stops the masters left (operations.md §7.5).
    let deadline = tokio::time::Instant::now() + SPARE_GRACE;
    for master in master_tasks {
        let abort = master.abort_handle();
        match tokio::time::timeout_at(deadline, master).await {
            Ok(result) => joined(result),
            Err(_) => {
                tracing::info!("a spare master missed the stop: stopping it");
                abort.abort();
            }
        }
    }
    Ok(())
}

/// Logs how a node's task ended, if not well.
fn joined(result: Result<Result<(), String>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(message)) => tracing::warn!("{message}"),
        Err(error) => tracing::warn!("node task failed: {error}"),
    }
}

async fn bind(ip: &str, port: u16, tls: Option<Tls>) -> Result<Listener, String> {
    let address = Address::parse(ip, port).map_err(|e| e.to_string())?;
    let listener = Listener::bind(&address).await.map_err(|e| e.to_string())?;
    Ok(listener.with_tls(tls))
}

/// Polls the admin until the cluster is RUNNING.
async fn wait_running(admin: &Address, config: &ConnectionConfig) {
    loop {
        if let Ok((connection, _inbox)) = connect_alone(admin, config).await {
            let state = connection
                .ask(AskClusterState {})
                .await
                .ok()
                .and_then(|a| a.state);
            connection.close().await;
            if state == Some(ClusterState::Running) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `neoctl set cluster STOPPING`.
async fn stop(admin: &Address, config: &ConnectionConfig) -> Result<(), String> {
    let (connection, _inbox) = connect_alone(admin, config)
        .await
        .map_err(|e| format!("cannot reach the admin to stop the cluster: {e}"))?;
    connection
        .ask(SetClusterState {
            state: ClusterState::Stopping,
        })
        .await
        .map_err(|e| format!("cannot stop the cluster: {e}"))?;
    Ok(())
}
