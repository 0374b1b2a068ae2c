//! A cluster of release binaries started for the benchmark, and what
//! /proc says about its processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use neo_net::test_pki::Credentials;
use neo_net::{connect_alone, ConnectionConfig};
use neo_proto::packets::{AskClusterState, SetClusterState};
use neo_proto::{Address, ClusterState};

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// One node process.
pub struct Node {
    /// `master`, `storage0`, `admin`.
    pub label: String,
    child: Child,
}

/// Where the storages keep their data.
#[derive(Clone, Debug)]
pub enum Store {
    /// An SQLite file each, in the benchmark's directory.
    Sqlite,
    /// A file each of the Native engine, in the benchmark's directory.
    Native,
    /// This MySQL database (`neostorage -d` syntax), emptied first; one
    /// storage only.
    MySql(String),
    /// The Importer, configured by this `importer.conf`; one storage only.
    Importer(PathBuf),
}

/// The benchmark's cluster: killed on drop if not stopped.
pub struct Cluster {
    /// Cluster name.
    pub name: String,
    /// Master address.
    pub master: Address,
    admin: Address,
    nodes: Vec<Node>,
    /// How to connect to it: with TLS when its nodes use TLS.
    pub connection: ConnectionConfig,
    /// `--ca --cert --key` of every node, if they use TLS.
    tls_args: Vec<String>,
}

fn tls_args(credentials: &Credentials) -> Vec<String> {
    [
        ("--ca", &credentials.ca),
        ("--cert", &credentials.cert),
        ("--key", &credentials.key),
    ]
    .into_iter()
    .flat_map(|(option, path)| [option.to_owned(), path.to_string_lossy().into_owned()])
    .collect()
}

impl Cluster {
    /// Starts a master, `storages` storages on `store` and an admin from
    /// the binaries in `bin_dir` (logs in `dir`), all with `tls` if given,
    /// and waits until it runs.
    pub fn start(
        bin_dir: &Path,
        dir: &Path,
        storages: usize,
        store: &Store,
        tls: Option<&Credentials>,
    ) -> Result<Cluster, String> {
        let name = "bench".to_owned();
        let master = Address::new("127.0.0.1", free_port()?);
        let admin = Address::new("127.0.0.1", free_port()?);
        let connection = ConnectionConfig {
            tls: tls
                .map(Credentials::load)
                .transpose()
                .map_err(|e| e.to_string())?,
            ..ConnectionConfig::default()
        };
        let mut cluster = Cluster {
            name: name.clone(),
            master: master.clone(),
            admin: admin.clone(),
            nodes: Vec::new(),
            connection,
            tls_args: tls.map(tls_args).unwrap_or_default(),
        };
        let autostart = storages.to_string();
        let (master_text, admin_text) = (master.to_string(), admin.to_string());
        cluster.spawn(
            bin_dir,
            dir,
            "master",
            "neomaster",
            &[
                "-c",
                &name,
                "-b",
                &master_text,
                "-p",
                "12",
                "--autostart",
                &autostart,
            ],
        )?;
        for index in 0..storages {
            cluster.start_storage(bin_dir, dir, index, store)?;
        }
        cluster.spawn(
            bin_dir,
            dir,
            "admin",
            "neoadmin",
            &["-c", &name, "-m", &master_text, "-b", &admin_text],
        )?;
        cluster.wait_running()?;
        Ok(cluster)
    }

    /// Starts storage `index` on `store` (an SQLite database
    /// `storage«index».sqlite` in `dir`, or the MySQL database, emptied
    /// first, for storage 0 only); a new one joins pending.
    pub fn start_storage(
        &mut self,
        bin_dir: &Path,
        dir: &Path,
        index: usize,
        store: &Store,
    ) -> Result<(), String> {
        let (adapter, database) = match store {
            Store::Sqlite => {
                let database = dir.join(format!("storage{index}.sqlite"));
                ("SQLite", database.to_string_lossy().into_owned())
            }
            Store::Native => {
                let database = dir.join(format!("storage{index}.neo"));
                ("Native", database.to_string_lossy().into_owned())
            }
            Store::MySql(_) | Store::Importer(_) if index > 0 => {
                return Err("one storage only on a MySQL database or an import".to_owned());
            }
            Store::Importer(conf) => ("Importer", conf.to_string_lossy().into_owned()),
            Store::MySql(database) => {
                reset(bin_dir, database)?;
                ("MySQL", database.clone())
            }
        };
        let (name, master) = (self.name.clone(), self.master.to_string());
        let args = ["-c", &name, "-m", &master, "-a", adapter, "-d", &database];
        self.spawn(
            bin_dir,
            dir,
            &format!("storage{index}"),
            "neostorage",
            &args,
        )
    }

    /// `kill -9` of a node.
    pub fn kill(&mut self, label: &str) -> Result<(), String> {
        let index = self
            .nodes
            .iter()
            .position(|node| node.label == label)
            .ok_or_else(|| format!("no node {label}"))?;
        let mut node = self.nodes.remove(index);
        node.child.kill().map_err(|e| e.to_string())?;
        node.child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Runs `neoctl` against the cluster's admin; its standard output.
    pub fn neoctl(&self, bin_dir: &Path, command: &str) -> Result<String, String> {
        let admin = self.admin.to_string();
        let output = Command::new(bin_dir.join("neoctl"))
            .args(["-a", &admin])
            .args(&self.tls_args)
            .args(command.split_whitespace())
            .output()
            .map_err(|e| format!("neoctl {command}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "neoctl {command}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn spawn(
        &mut self,
        bin_dir: &Path,
        dir: &Path,
        label: &str,
        program: &str,
        args: &[&str],
    ) -> Result<(), String> {
        let log =
            std::fs::File::create(dir.join(format!("{label}.log"))).map_err(|e| e.to_string())?;
        let path: PathBuf = bin_dir.join(program);
        let child = Command::new(&path)
            .args(args)
            .args(&self.tls_args)
            .env("NEO_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        self.nodes.push(Node {
            label: label.to_owned(),
            child,
        });
        Ok(())
    }

    fn wait_running(&self) -> Result<(), String> {
        let runtime = runtime()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        runtime.block_on(async {
            loop {
                if let Ok((connection, _inbox)) = connect_alone(&self.admin, &self.connection).await
                {
                    let state = connection
                        .ask(AskClusterState {})
                        .await
                        .ok()
                        .and_then(|a| a.state);
                    connection.close().await;
                    if state == Some(ClusterState::Running) {
                        return Ok(());
                    }
                }
                if Instant::now() > deadline {
                    return Err("the benchmark cluster did not start within 30 s".to_owned());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    /// The node processes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Stops the cluster cleanly and waits for the processes.
    pub fn stop(mut self) -> Result<(), String> {
        let runtime = runtime()?;
        runtime.block_on(async {
            let (connection, _inbox) = connect_alone(&self.admin, &self.connection)
                .await
                .map_err(|e| e.to_string())?;
            connection
                .ask(SetClusterState {
                    state: ClusterState::Stopping,
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &mut self.nodes {
            while node.child.try_wait().map_err(|e| e.to_string())?.is_none() {
                if Instant::now() > deadline {
                    return Err(format!("{} did not stop", node.label));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.nodes.clear();
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

impl Node {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the process used so far.
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.child.id()).unwrap_or_default()
    }

    /// Peak resident set size so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_field(self.child.id(), "VmHWM:").unwrap_or(0)
    }

    /// Current resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_field(self.child.id(), "VmRSS:").unwrap_or(0)
    }
}

/// Empties a MySQL database with `neostorage --reset`.
fn reset(bin_dir: &Path, database: &str) -> Result<(), String> {
    let path = bin_dir.join("neostorage");
    let output = Command::new(&path)
        .args(["-c", "bench", "-a", "MySQL", "-d", database, "--reset"])
        .output()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    if !output.status.success() {
        return Err(format!(
            "emptying the MySQL database {database}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// CPU time (user + system) of any process so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Linux reports clock ticks of 1/100 s on every supported platform.
    Some(Duration::from_millis((utime + stime) * 10))
}

/// CPU time of a single-threaded process so far, to the nanosecond
/// (`/proc/PID/schedstat` covers its main thread only).
pub fn main_thread_cpu_time(pid: u32) -> Option<Duration> {
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    let nanos: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// A KiB figure of /proc/PID/status (`VmHWM:`, `VmRSS:`).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A small runtime for the benchmark's own admin requests.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}
