//! A cluster of our processes spread over [`Net`] hosts: the admin on the
//! bridge, each storage on a host of its own (so its network can be held
//! or cut alone), one master on the bridge or several each on a host of
//! its own, and `neo-load` client processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::hosts::Net;
use crate::record::{self, Entry, Recorder, Write};

/// The port every storage listens on, each on its own host address.
const STORAGE_PORT: u16 = 20000;
const MASTER_PORT: u16 = 10000;
const ADMIN_PORT: u16 = 9999;

/// Processes of one cluster; killed on drop.
pub struct NetCluster {
    pub net: Net,
    pub name: String,
    pub dir: tempfile::TempDir,
    /// Where neomaster, neostorage, neoadmin, neoctl and neo-load are.
    bin: PathBuf,
    storages: usize,
    /// Number of masters: one runs on the bridge, several each on a host
    /// after the storages'.
    masters: usize,
    children: Vec<(String, Child)>,
    /// Every node ever started, for the logs (also once stopped).
    labels: Vec<String>,
    loads: Vec<(usize, Child)>,
}

/// Where the programs are for a test of this package: beside the test
/// binary's `deps` directory (`target/<profile>`).
pub fn test_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    deps.parent().unwrap_or(deps).to_owned()
}

impl NetCluster {
    /// A network of `storages` hosts and nothing running yet. `bin` holds
    /// the programs (the test's `target/<profile>`).
    pub fn new(name: &str, storages: usize, bin: &Path) -> Result<NetCluster, String> {
        NetCluster::with_masters(name, storages, 1, bin)
    }

    /// [`NetCluster::new`] with `masters` masters, each on a host of its
    /// own when there are several.
    pub fn with_masters(
        name: &str,
        storages: usize,
        masters: usize,
        bin: &Path,
    ) -> Result<NetCluster, String> {
        let hosts = if masters > 1 {
            storages + masters
        } else {
            storages
        };
        let net = Net::new(hosts).map_err(|e| format!("network namespaces: {e}"))?;
        Ok(NetCluster {
            net,
            name: name.to_owned(),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            bin: bin.to_owned(),
            storages,
            masters,
            children: Vec::new(),
            labels: Vec::new(),
            loads: Vec::new(),
        })
    }

    /// Keeps the test directory (databases, records, logs) after the test,
    /// to study a failure; returns where it is.
    pub fn keep(&self) -> PathBuf {
        let kept =
            std::env::temp_dir().join(format!("neo-kept-{}-{}", self.name, std::process::id()));
        let _ = Command::new("cp")
            .arg("-a")
            .arg(self.dir.path())
            .arg(&kept)
            .status();
        kept
    }

    /// Every master's address, as `-m` takes them.
    pub fn master(&self) -> String {
        (0..self.masters)
            .map(|index| self.master_address(index))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The address of master `index`.
    pub fn master_address(&self, index: usize) -> String {
        match self.master_host(index) {
            Some(host) => format!("{}:{MASTER_PORT}", self.net.address(host)),
            None => format!("{}:{MASTER_PORT}", self.net.gateway()),
        }
    }

    /// The host of master `index` (none: the bridge).
    pub fn master_host(&self, index: usize) -> Option<usize> {
        (self.masters > 1).then_some(self.storages + index)
    }

    /// The process label of master `index`.
    pub fn master_label(&self, index: usize) -> String {
        if self.masters > 1 {
            format!("master{index}")
        } else {
            "master".to_owned()
        }
    }

    /// Which master is the primary, as the admin says (`print primary`
    /// names it, `print node` gives its address); `None` if no answer.
    pub fn primary(&self) -> Option<usize> {
        let nid = self.neoctl_stdout("print primary").trim().to_owned();
        if nid.is_empty() {
            return None;
        }
        let nodes = self.neoctl_stdout("print node");
        let address = nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            (fields.first() == Some(&nid.as_str()) && fields.get(1) == Some(&"MASTER"))
                .then(|| fields.get(2).map(|a| (*a).to_owned()))
                .flatten()
        })?;
        (0..self.masters).find(|index| self.master_address(*index) == address)
    }

    pub fn admin(&self) -> String {
        format!("{}:{ADMIN_PORT}", self.net.gateway())
    }

    fn program(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    fn log(&self, label: &str) -> std::fs::File {
        let path = self.dir.path().join(format!("{label}.log"));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("log file in the test directory")
    }

    fn spawn(&mut self, label: &str, mut command: Command) {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(label))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        self.children.push((label.to_owned(), child));
        if !self.labels.iter().any(|l| l == label) {
            self.labels.push(label.to_owned());
        }
    }

    /// The masters, creating the cluster once every storage is pending.
    pub fn start_master(&mut self, partitions: u32, replicas: u32) {
        for index in 0..self.masters {
            self.start_master_index(index, partitions, replicas);
        }
    }

    /// Master `index` (on its host when there are several).
    pub fn start_master_index(&mut self, index: usize, partitions: u32, replicas: u32) {
        let program = self.program("neomaster");
        let mut command = match self.master_host(index) {
            Some(host) => self.net.command(host, &program),
            None => Command::new(program),
        };
        let (partitions, replicas) = (partitions.to_string(), replicas.to_string());
        let autostart = self.storages.to_string();
        let bind = self.master_address(index);
        command.args(["-c", &self.name, "-b", &bind, "-m", &self.master()]);
        command.args([
            "-p",
            &partitions,
            "-r",
            &replicas,
            "--autostart",
            &autostart,
        ]);
        let label = self.master_label(index);
        self.spawn(&label, command);
    }

    /// The process id of a node, to signal it.
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, child)| child.id())
    }

    pub fn database(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("storage{index}.sqlite"))
    }

    /// Storage `index`, on its host.
    pub fn start_storage(&mut self, index: usize) {
        let bind = format!("{}:{STORAGE_PORT}", self.net.address(index));
        let database = self.database(index).display().to_string();
        let mut command = self.net.command(index, &self.program("neostorage"));
        command.args(["-c", &self.name, "-m", &self.master(), "-b", &bind]);
        command.args(["-a", "SQLite", "-d", &database]);
        self.spawn(&format!("storage{index}"), command);
    }

    pub fn start_admin(&mut self) {
        let mut command = Command::new(self.program("neoadmin"));
        command.args(["-c", &self.name, "-m", &self.master(), "-b", &self.admin()]);
        self.spawn("admin", command);
    }

    /// Master, storages and admin; waits until the cluster runs.
    pub fn start(&mut self, partitions: u32, replicas: u32) {
        self.start_master(partitions, replicas);
        for index in 0..self.storages {
            self.start_storage(index);
        }
        self.start_admin();
        self.wait_for("the cluster to run", |cluster| {
            cluster.neoctl_stdout("print cluster").trim() == "RUNNING"
        });
    }

    /// `kill -9` of a node.
    pub fn kill(&mut self, label: &str) {
        let index = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        let (_, mut child) = self.children.remove(index);
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn neoctl(&self, command: &str) -> Output {
        let mut args = vec!["-a".to_owned(), self.admin()];
        args.extend(command.split_whitespace().map(str::to_owned));
        Command::new(self.program("neoctl"))
            .args(args)
            .output()
            .expect("neoctl runs")
    }

    pub fn neoctl_stdout(&self, command: &str) -> String {
        String::from_utf8_lossy(&self.neoctl(command).stdout).into_owned()
    }

    /// Whether every cell of `print pt` is UP_TO_DATE.
    pub fn all_up_to_date(&self) -> bool {
        let table = self.neoctl_stdout("print pt");
        let rows: Vec<&str> = table.lines().filter(|line| line.starts_with('S')).collect();
        !rows.is_empty()
            && rows.iter().all(|line| {
                line.split_whitespace()
                    .last()
                    .is_some_and(|cells| cells.chars().all(|c| c == 'U' || c == '.'))
            })
    }

    /// Polls `ready` every 50 ms for up to 60 s; returns how long it took.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&NetCluster) -> bool) -> Duration {
        let started = Instant::now();
        while !ready(self) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    }

    /// A client of this cluster, in this process.
    pub fn client(&self) -> neo_client::BlockingClient {
        let masters = self
            .master()
            .split_whitespace()
            .map(|address| neo_proto::Address::parse(address, 0).expect("master address"))
            .collect();
        let mut config = neo_client::ClientConfig::new(masters, self.name.clone());
        config.ready_timeout = Duration::from_secs(30);
        neo_client::BlockingClient::connect(config).expect("a client")
    }

    /// Waits until `more` more transactions were acknowledged.
    pub fn wait_for_commits(&self, more: usize) {
        let target = self.acknowledged() + more;
        self.wait_for("more commits", |cluster| cluster.acknowledged() >= target);
    }

    /// The end of every fault test: clients still commit, every cell comes
    /// back UP_TO_DATE, the replicas are equal (`neoctl check`: any
    /// difference would turn a cell CORRUPTED), the cluster stops, and
    /// every acknowledged transaction is in every replica with its exact
    /// data (the directory is kept if not). Returns the check's report,
    /// how long the cells took to be UP_TO_DATE, and the clients' stats.
    pub fn heal_and_verify(&mut self, fault: &str) -> (record::Report, Duration, Vec<String>) {
        self.wait_for_commits(20);
        let back = self.wait_for("every cell UP_TO_DATE", NetCluster::all_up_to_date);
        let stats = self.stop_loads();
        let check = self.neoctl("check :");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        // The check runs in the background; nothing may turn CORRUPTED.
        std::thread::sleep(Duration::from_secs(1));
        assert!(self.all_up_to_date(), "{}", self.neoctl_stdout("print pt"));
        self.stop();
        let databases = self.databases();
        let paths: Vec<&Path> = databases.iter().map(PathBuf::as_path).collect();
        let report = record::verify(&self.records(), &paths).unwrap_or_else(|error| {
            let kept = self.keep();
            panic!(
                "{fault}: {error} (kept in {})\n{}",
                kept.display(),
                self.logs()
            )
        });
        assert!(report.acknowledged > 40, "{report:?}");
        (report, back, stats)
    }

    /// Creates `count` counters at value 0 with a client of this
    /// process; returns their oids.
    pub fn create_counters(&self, count: usize) -> Vec<neo_proto::Oid> {
        let client = self.client();
        let mut txn = client.begin(None).expect("begin");
        let mut oids = Vec::new();
        let mut writes = Vec::new();
        for _ in 0..count {
            let oid = client.new_oid().expect("an oid");
            let write = Write::Counter { oid, value: 0 };
            txn.store(oid, neo_proto::Tid::ZERO, write.data().into())
                .expect("store");
            oids.push(oid);
            writes.push(write);
        }
        txn.vote(&neo_client::TxnMeta::default()).expect("vote");
        let tid = txn.finish().expect("finish");
        let mut recorder =
            Recorder::create(&self.dir.path().join("setup.record")).expect("setup record");
        recorder
            .record(&Entry {
                tid: Some(tid),
                writes,
            })
            .expect("record");
        let _ = client.close();
        oids
    }

    fn stop_file(&self) -> PathBuf {
        self.dir.path().join("stop-loads")
    }

    /// Starts `clients` load processes incrementing `counters`.
    pub fn start_loads(&mut self, clients: usize, counters: &[neo_proto::Oid]) {
        let counters: Vec<String> = counters
            .iter()
            .map(|oid| format!("{:016x}", oid.0))
            .collect();
        for index in 0..clients {
            let record = self.dir.path().join(format!("load{index}.record"));
            let child = Command::new(self.program("neo-load"))
                .args(["--masters", &self.master(), "--cluster", &self.name])
                .arg("--record")
                .arg(&record)
                .args(["--counters", &counters.join(",")])
                .args(["--seed", &(index + 1).to_string()])
                .arg("--stop-file")
                .arg(self.stop_file())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(self.log(&format!("load{index}")))
                .spawn()
                .expect("neo-load starts");
            self.loads.push((index, child));
        }
    }

    /// Acknowledged transactions recorded so far by every load process.
    pub fn acknowledged(&self) -> usize {
        self.records()
            .iter()
            .filter(|entry| entry.tid.is_some())
            .count()
    }

    /// Stops the load processes and checks they ended well; returns their
    /// last log lines (their statistics).
    pub fn stop_loads(&mut self) -> Vec<String> {
        std::fs::write(self.stop_file(), b"").expect("stop file");
        let mut stats = Vec::new();
        for (index, mut child) in std::mem::take(&mut self.loads) {
            let status = child.wait().expect("neo-load ends");
            let log = std::fs::read_to_string(self.dir.path().join(format!("load{index}.log")))
                .unwrap_or_default();
            assert!(status.success(), "load{index} failed: {log}");
            stats.push(log.lines().last().unwrap_or_default().to_owned());
        }
        stats
    }

    /// Every record written so far: the setup, then each load process's.
    pub fn records(&self) -> Vec<Entry> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("test directory") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|ext| ext == "record") {
                all.extend(record::read(&path).expect("a readable record"));
            }
        }
        all
    }

    /// `neoctl set cluster STOPPING` and waits for every node to exit.
    pub fn stop(&mut self) {
        assert!(
            self.neoctl("set cluster STOPPING").status.success(),
            "{}",
            self.logs()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for (label, child) in &mut self.children {
            loop {
                if child.try_wait().expect("wait").is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "{label} did not exit");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.children.clear();
    }

    /// Every storage's database (after [`NetCluster::stop`]).
    pub fn databases(&self) -> Vec<PathBuf> {
        (0..self.storages)
            .map(|index| self.database(index))
            .collect()
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        let mut labels = self.labels.clone();
        let mut loads: Vec<String> = std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter_map(|name| Some(name.strip_prefix("load")?.strip_suffix(".log")?.to_owned()))
            .map(|index| format!("load{index}"))
            .collect();
        loads.sort();
        labels.extend(loads);
        // NEO_FULL_LOGS=1: whole logs, to study a failure.
        let lines = if std::env::var_os("NEO_FULL_LOGS").is_some() {
            usize::MAX
        } else {
            40
        };
        for label in labels {
            let Ok(log) = std::fs::read_to_string(self.dir.path().join(format!("{label}.log")))
            else {
                continue;
            };
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            all += &format!("--- {label}\n");
            for line in tail.into_iter().rev() {
                all += line;
                all.push('\n');
            }
        }
        all
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.loads) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
