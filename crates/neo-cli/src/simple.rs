//! `neosimple`: a whole cluster in one process — a master, one SQLite
//! storage per database name and an admin on one IP — for trying NEO and
//! for tests. Unlike NEO/py's version it starts the cluster by itself,
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
use neo_storage::backend::{self, Adapter, OpenOptions};
use neo_storage::db::Database;
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
    /// IP address every node listens on.
    #[arg(long = "bind_ip", default_value = "127.0.0.1")]
    pub bind_ip: String,
    /// Port of the master (0: any free port).
    #[arg(long = "master_port", default_value_t = 0)]
    pub master_port: u16,
    /// Port of the admin, where neoctl connects (0: any free port).
    #[arg(long = "admin_port", default_value_t = 0)]
    pub admin_port: u16,
    /// Delete the databases first.
    #[arg(long = "clear_databases")]
    pub clear_databases: bool,
    /// Storage engine, by NEO/py's name (SQLite or MySQL).
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

/// How long the cluster may take to reach RUNNING.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the nodes may take to stop after `STOPPING`.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the cluster until `shutdown` completes, printing what a client
/// needs once it runs.
pub async fn run(
    options: SimpleOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let adapter = Adapter::from_name(&options.adapter)
        .ok_or_else(|| format!("unknown adapter {:?}", options.adapter))?;
    let tls = match (&options.ca, &options.cert, &options.key) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(Tls::load(ca, cert, key).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    std::fs::create_dir_all(&options.temp_dir)
        .map_err(|e| format!("cannot create {}: {e}", options.temp_dir.display()))?;
    let ip = options.bind_ip.as_str();
    let bind = |port| bind(ip, port, tls.clone());
    let master_listener = bind(options.master_port).await?;
    let master_address = master_listener.local_address().clone();
    let mut nodes: Vec<JoinHandle<Result<(), String>>> = Vec::new();
    let master = MasterConfig {
        cluster: options.name.clone(),
        address: master_address.clone(),
        partitions: options.partitions,
        replicas: options.replicas,
        autostart: Some(options.db.len() as u32),
    };
    nodes.push(tokio::spawn(async move {
        neo_master::run(master, master_listener, std::future::pending())
            .await
            .map_err(|e| format!("master: {e}"))
    }));
    for db in &options.db {
        // An SQLite database per name, in the data directory.
        let database = if adapter == Adapter::Sqlite && !db.contains('/') {
            let path = options.temp_dir.join(format!("{db}.sqlite"));
            path.to_str()
                .ok_or_else(|| format!("{} is not valid UTF-8", path.display()))?
                .to_owned()
        } else {
            db.clone()
        };
        let open = OpenOptions {
            reset: options.clear_databases,
            ..OpenOptions::default()
        };
        let backend = backend::open(adapter, &database, &open).map_err(|e| e.to_string())?;
        let mut db = Database::new(backend).map_err(|e| format!("{database}: {e}"))?;
        let listener = bind(0).await?;
        let config = StorageConfig {
            cluster: options.name.clone(),
            address: listener.local_address().clone(),
            masters: vec![master_address.clone()],
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
        masters: vec![master_address.clone()],
        bind: admin_address.clone(),
        monitor_backup: Vec::new(),
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
    println!("master_nodes = {master_address}");
    println!("name = {}", options.name);
    println!("admin = {admin_address}");
    println!("data = {}", options.temp_dir.display());

    shutdown.await;
    println!("Stopping the cluster");
    stop(&admin_address, &ctl).await?;
    let all = async {
        for node in nodes {
            match node.await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => tracing::warn!("{message}"),
                Err(error) => tracing::warn!("node task failed: {error}"),
            }
        }
    };
    tokio::time::timeout(STOP_TIMEOUT, all)
        .await
        .map_err(|_| "the cluster did not stop in time".to_owned())
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
