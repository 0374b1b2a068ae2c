//! Test harness: a cluster of our processes on 127.0.0.1 with free ports,
//! its storages on SQLite files, MySQL databases or Native logs; and a
//! commit load that records what was acknowledged, for fault tests.
#![allow(dead_code, unused_macros, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use neo_net::test_pki::{Credentials, TestPki};
use neo_storage::backend::Adapter;

pub mod smtp_sink;

pub const NEOMASTER: &str = env!("CARGO_BIN_EXE_neomaster");
pub const NEOSTORAGE: &str = env!("CARGO_BIN_EXE_neostorage");
pub const NEOADMIN: &str = env!("CARGO_BIN_EXE_neoadmin");
pub const NEOCTL: &str = env!("CARGO_BIN_EXE_neoctl");
pub const NEOSIMPLE: &str = env!("CARGO_BIN_EXE_neosimple");

/// Metadata of the tests' transactions.
pub fn meta() -> neo_client::TxnMeta {
    neo_client::TxnMeta {
        user: bytes::Bytes::from_static(b"tests"),
        description: bytes::Bytes::new(),
        extension: bytes::Bytes::new(),
        pack: None,
    }
}

/// Commits one new object holding `data`; its TID.
pub fn commit_new_object(
    client: &neo_client::BlockingClient,
    data: &'static [u8],
) -> neo_proto::Tid {
    let mut txn = client.begin(None).unwrap();
    let oid = client.new_oid().unwrap();
    let conflicts = txn
        .store(oid, neo_proto::Tid::ZERO, bytes::Bytes::from_static(data))
        .unwrap();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    txn.vote(&meta()).unwrap();
    txn.finish().unwrap()
}

/// Runs a program that must fail at once with one line on stderr.
pub fn one_line_error(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(!output.status.success(), "{program} {args:?} succeeded");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{program} {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim().to_owned()
}

/// The Python with ZODB: `$NEO_PY_VENV/bin/python`, else the workspace's
/// `target/py-venv` (`.ci/run` and `scripts/test` make it). Missing, the
/// test fails.
pub fn python() -> PathBuf {
    let venv = std::env::var_os("NEO_PY_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv"),
        PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "no Python with ZODB at {} (set NEO_PY_VENV to a virtualenv with ZODB, as .ci/run does)",
        python.display()
    );
    python
}

/// A free port on 127.0.0.1, for a node to bind a moment later. Taken
/// below Linux's ephemeral range (32768 and up): the kernel gives those to
/// outgoing connections, which could take a port between this check and
/// the node's bind (an admin once failed so, under load). Each test process
/// starts at its own offset and hands the ports out in turn.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20000;
    const LAST: u16 = 32000;
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap();
    let offset = (std::process::id() % 100) as u16 * 120;
    let port = next.get_or_insert(FIRST + offset);
    loop {
        let candidate = *port;
        *port = if candidate >= LAST {
            FIRST
        } else {
            candidate + 1
        };
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return candidate;
        }
    }
}

/// Where the storages of a cluster keep their data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// A file each in the cluster's directory.
    Sqlite,
    /// A database each on the MySQL server of this Unix socket.
    MySql(String),
    /// A Native log each in the cluster's directory.
    Native,
}

impl Store {
    /// MySQL databases on the test server (`NEO_MYSQL_SOCKET`).
    pub fn mysql() -> Store {
        Store::MySql(std::env::var("NEO_MYSQL_SOCKET").unwrap_or_else(|_| {
            panic!(
                "the MySQL variants of these tests need a MariaDB or MySQL server: set \
                 NEO_MYSQL_SOCKET to its Unix socket (scripts/mariadb start DIR starts one)"
            )
        }))
    }
}

/// The clusters a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Setup {
    /// SQLite storages.
    Sqlite,
    /// MySQL storages (on `NEO_MYSQL_SOCKET`'s server).
    MySql,
    /// SQLite storages, and TLS for every node, neoctl and the clients.
    Tls,
    /// Native storages.
    Native,
}

impl Setup {
    /// A cluster named `name` of this setup (not started).
    pub fn cluster(self, name: &str) -> Cluster {
        match self {
            Setup::Sqlite => Cluster::new(name),
            Setup::MySql => Cluster::with_store(name, Store::mysql()),
            Setup::Tls => Cluster::with_tls(name),
            Setup::Native => Cluster::with_store(name, Store::Native),
        }
    }
}

/// Each test function `name(setup)` given, as a test on SQLite storages
/// (`sqlite::name`), one on MySQL storages (`mysql::name`), one with TLS
/// everywhere (`tls::name`) and one on Native storages (`native::name`).
macro_rules! on_every_setup {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $test() {
                super::$test(super::common::Setup::Sqlite);
            })*
        }
        mod mysql {
            $(#[test]
            fn $test() {
                super::$test(super::common::Setup::MySql);
            })*
        }
        mod tls {
            $(#[test]
            fn $test() {
                super::$test(super::common::Setup::Tls);
            })*
        }
        mod native {
            $(#[test]
            fn $test() {
                super::$test(super::common::Setup::Native);
            })*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_every_setup;

/// A connection as root to the MySQL server of `socket`.
pub fn mysql_admin(socket: &str) -> mysql::Conn {
    let opts = mysql::OptsBuilder::new()
        .user(Some("root"))
        .socket(Some(socket));
    mysql::Conn::new(opts).unwrap()
}

/// Processes of one cluster, killed on drop (and its MySQL databases
/// dropped).
pub struct Cluster {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub master: String,
    pub admin: String,
    pub children: Vec<(String, Child)>,
    pub store: Store,
    /// MySQL databases created for the storages.
    created: Vec<String>,
    /// With TLS: the certificates, made in `dir`; every node, neoctl and
    /// client uses `pki.node` unless told otherwise.
    pub pki: Option<TestPki>,
}

/// `--ca --cert --key` for these credentials.
pub fn tls_args(credentials: &Credentials) -> Vec<String> {
    let mut args = Vec::new();
    for (option, path) in [
        ("--ca", &credentials.ca),
        ("--cert", &credentials.cert),
        ("--key", &credentials.key),
    ] {
        args.push(option.to_owned());
        args.push(path.to_str().unwrap().to_owned());
    }
    args
}

impl Cluster {
    pub fn new(name: &str) -> Cluster {
        Cluster::with_store(name, Store::Sqlite)
    }

    pub fn with_store(name: &str, store: Store) -> Cluster {
        Cluster {
            name: name.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            master: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
            children: Vec::new(),
            store,
            created: Vec::new(),
            pki: None,
        }
    }

    /// The storages' `-a`.
    pub fn adapter(&self) -> Adapter {
        match self.store {
            Store::Sqlite => Adapter::Sqlite,
            Store::MySql(_) => Adapter::MySql,
            Store::Native => Adapter::Native,
        }
    }

    /// The `-d` of storage `index`.
    pub fn database(&self, index: usize) -> String {
        match &self.store {
            Store::Sqlite => {
                let path = self.dir.path().join(format!("storage{index}.sqlite"));
                path.to_str().unwrap().to_owned()
            }
            Store::MySql(socket) => format!("root@{}{socket}", self.mysql_database(index)),
            Store::Native => {
                let path = self.dir.path().join(format!("storage{index}.native"));
                path.to_str().unwrap().to_owned()
            }
        }
    }

    /// The MySQL database of storage `index`: one per process, cluster
    /// and storage, as tests run side by side on one server.
    pub fn mysql_database(&self, index: usize) -> String {
        format!("neo_{}_{}_{}", self.name, index, std::process::id())
    }

    /// A cluster whose nodes, neoctl and clients all use TLS.
    pub fn with_tls(name: &str) -> Cluster {
        let mut cluster = Cluster::new(name);
        cluster.pki = Some(TestPki::create(cluster.dir.path()).unwrap());
        cluster
    }

    /// The TLS options of the cluster's nodes (none without TLS).
    pub fn tls_args(&self) -> Vec<String> {
        self.pki
            .as_ref()
            .map_or_else(Vec::new, |pki| tls_args(&pki.node))
    }

    /// Starts a node with the cluster's TLS options.
    pub fn spawn(&mut self, label: &str, program: &str, args: &[&str]) {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        args.extend(self.tls_args());
        self.spawn_plain(label, program, &args);
    }

    /// Starts a process with exactly these arguments.
    pub fn spawn_plain(&mut self, label: &str, program: &str, args: &[String]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{label}.log"))).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((label.to_owned(), child));
    }

    pub fn start_master(&mut self, extra: &[&str]) {
        let (name, master) = (self.name.clone(), self.master.clone());
        let mut args = vec!["-c", &name, "-b", &master, "-p", "4"];
        args.extend_from_slice(extra);
        self.spawn("master", NEOMASTER, &args);
    }

    pub fn start_storage(&mut self, index: usize) {
        self.start_storage_with(index, &[]);
    }

    /// Starts storage `index` with more options; its MySQL database is
    /// created on first use.
    pub fn start_storage_with(&mut self, index: usize, extra: &[&str]) {
        if let Store::MySql(socket) = &self.store {
            let database = self.mysql_database(index);
            if !self.created.contains(&database) {
                mysql_admin(socket)
                    .query_drop(format!("CREATE DATABASE IF NOT EXISTS {database}"))
                    .unwrap();
                self.created.push(database);
            }
        }
        let database = self.database(index);
        let (name, master) = (self.name.clone(), self.master.clone());
        let adapter = self.adapter().name();
        let mut args = vec!["-c", &name, "-m", &master, "-a", adapter, "-d", &database];
        args.extend_from_slice(extra);
        self.spawn(&format!("storage{index}"), NEOSTORAGE, &args);
    }

    pub fn start_admin(&mut self) {
        self.start_admin_with(&[]);
    }

    /// Starts the admin with more options.
    pub fn start_admin_with(&mut self, extra: &[&str]) {
        let (name, master, admin) = (self.name.clone(), self.master.clone(), self.admin.clone());
        let mut args = vec!["-c", &name, "-m", &master, "-b", &admin];
        args.extend_from_slice(extra);
        self.spawn("admin", NEOADMIN, &args);
    }

    /// Starts a master and `storages` storages with autostart and one
    /// replica, and an admin with `admin` options; waits until it runs.
    pub fn start_with_admin(&mut self, storages: usize, admin: &[&str]) {
        let autostart = storages.to_string();
        self.start_master(&["--autostart", &autostart, "-r", "1"]);
        for index in 0..storages {
            self.start_storage(index);
        }
        self.start_admin_with(admin);
        self.wait_state("RUNNING");
    }

    pub fn neoctl(&self, command: &str) -> Output {
        let mut args = self.tls_args();
        args.extend(["-a".to_owned(), self.admin.clone()]);
        args.extend(command.split_whitespace().map(str::to_owned));
        Command::new(NEOCTL).args(args).output().unwrap()
    }

    pub fn neoctl_stdout(&self, command: &str) -> String {
        String::from_utf8(self.neoctl(command).stdout).unwrap()
    }

    /// Polls `print cluster` until it says `state` (bounded).
    pub fn wait_state(&self, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let current = self.neoctl_stdout("print cluster");
            if current.trim() == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster still {current:?}, expected {state}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every process exited by itself (bounded); returns
    /// whether they all did with success.
    pub fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut all_ok = true;
        for (label, child) in &mut self.children {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    all_ok &= status.success();
                    if !status.success() {
                        eprintln!("{label} exited with {status}");
                    }
                    break;
                }
                assert!(Instant::now() < deadline, "{label} did not exit");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.children.clear();
        all_ok
    }

    /// `kill -9` of one node; it does not get to flush or commit anything.
    pub fn kill(&mut self, label: &str) {
        let index = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label}"));
        let (_, mut child) = self.children.remove(index);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A client of this cluster.
    pub fn client(&self) -> neo_client::BlockingClient {
        let masters = self
            .master
            .split_whitespace()
            .map(|master| neo_proto::Address::parse(master, 0).unwrap())
            .collect();
        let mut config = neo_client::ClientConfig::new(masters, self.name.clone());
        config.connection.tls = self.pki.as_ref().map(|pki| pki.node.load().unwrap());
        neo_client::BlockingClient::connect(config).unwrap()
    }

    /// Starts master, `storages` storages and an admin with autostart,
    /// and waits until the cluster runs.
    pub fn start(&mut self, storages: usize, replicas: u32) {
        let autostart = storages.to_string();
        let replicas = replicas.to_string();
        self.start_master(&["--autostart", &autostart, "-r", &replicas]);
        for index in 0..storages {
            self.start_storage(index);
        }
        self.start_admin();
        self.wait_state("RUNNING");
    }

    /// `neoctl set cluster STOPPING` and wait for every process to exit.
    pub fn stop(&mut self) {
        assert!(self.neoctl("set cluster STOPPING").status.success());
        assert!(self.wait_exit(), "{}", self.logs());
    }

    /// Polls the log of `label` until it holds `text` (bounded by
    /// `within`); the log.
    pub fn wait_log(&self, label: &str, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let path = self.dir.path().join(format!("{label}.log"));
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{label} did not log {text:?} in time; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (label, _) in &self.children {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{label}.log")));
            all += &format!("--- {label}\n{}\n", log.unwrap_or_default());
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Store::MySql(socket) = &self.store {
            // The server may be one a test stopped: nothing to drop then.
            let opts = mysql::OptsBuilder::new()
                .user(Some("root"))
                .socket(Some(socket));
            if let Ok(mut conn) = mysql::Conn::new(opts) {
                for database in &self.created {
                    let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS {database}"));
                }
            }
        }
    }
}

/// A MariaDB server of its own (`scripts/mariadb`), for tests that stop,
/// kill or reconfigure it; stopped on drop.
pub struct PrivateServer {
    pub dir: tempfile::TempDir,
    pub socket: String,
}

impl PrivateServer {
    pub fn start() -> PrivateServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = PrivateServer {
            dir,
            socket: String::new(),
        };
        server.socket = server.run("start");
        server
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb")
    }

    fn run(&self, action: &str) -> String {
        let output = Command::new(PrivateServer::script())
            .arg(action)
            .arg(self.dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/mariadb {action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Starts it again on the same data.
    pub fn restart(&mut self) {
        self.socket = self.run("start");
    }

    /// `kill -9` of `mariadbd`: no shutdown, whatever was in flight.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("pid")).unwrap();
        let pid = pid.trim();
        let status = Command::new("kill").args(["-9", pid]).status().unwrap();
        assert!(status.success());
        // Gone, or a zombie nobody reaps (it is not our child).
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while alive() {
            assert!(Instant::now() < deadline, "mariadbd {pid} still there");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new(PrivateServer::script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Clients committing new objects while faults hit the cluster, and the
/// record of every commit acknowledged to them (`tpc_finish` returned):
/// what no fault may lose.
#[derive(Default)]
pub struct CommitLoad {
    /// `(oid, tid, data)` of each acknowledged commit.
    pub acknowledged: Mutex<Vec<(neo_proto::Oid, neo_proto::Tid, bytes::Bytes)>>,
    /// Set to end the workers (after their commit in progress).
    pub stop: AtomicBool,
    /// Commits that failed: not acknowledged, so they may or may not be
    /// there.
    pub failures: AtomicUsize,
}

impl CommitLoad {
    /// Commits one new object per transaction with `client` until
    /// `stop`; after a failed commit, goes on only with `retry` (a
    /// moment later).
    pub fn run(&self, client: &neo_client::BlockingClient, worker: u64, retry: bool) {
        for round in 0..100_000u64 {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let data = bytes::Bytes::from(format!("worker {worker} round {round}").repeat(20));
            let committed = (|| {
                let oid = client.new_oid()?;
                let mut txn = client.begin(None)?;
                txn.store(oid, neo_proto::Tid::ZERO, data.clone())?;
                txn.vote(&neo_client::TxnMeta {
                    user: bytes::Bytes::from_static(b"load"),
                    ..neo_client::TxnMeta::default()
                })?;
                Ok::<_, neo_client::ClientError>((oid, txn.finish()?))
            })();
            match committed {
                Ok((oid, tid)) => self.acknowledged.lock().unwrap().push((oid, tid, data)),
                Err(_) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    if !retry {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// How many commits were acknowledged so far.
    pub fn acknowledged_count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits until `count` commits were acknowledged (bounded).
    pub fn wait_for_acknowledged(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acknowledged_count() < count {
            assert!(Instant::now() < deadline, "the load does not commit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads every acknowledged commit back with `reader`: the object,
    /// at its TID, byte for byte. Returns how many there were.
    pub fn check(&self, reader: &neo_client::BlockingClient) -> usize {
        let acknowledged = self.acknowledged.lock().unwrap();
        for (oid, tid, data) in acknowledged.iter() {
            let loaded = reader.load(*oid).unwrap();
            assert_eq!(loaded.serial, *tid, "{oid}");
            assert!(loaded.data == *data, "{oid}");
        }
        acknowledged.len()
    }
}
