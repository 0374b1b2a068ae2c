//! Test harness: a cluster of our processes on 127.0.0.1 with free ports.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use neo_net::test_pki::{Credentials, TestPki};

pub const NEOMASTER: &str = env!("CARGO_BIN_EXE_neomaster");
pub const NEOSTORAGE: &str = env!("CARGO_BIN_EXE_neostorage");
pub const NEOADMIN: &str = env!("CARGO_BIN_EXE_neoadmin");
pub const NEOCTL: &str = env!("CARGO_BIN_EXE_neoctl");

/// Runs a program that must fail at once with one line on stderr.
pub fn one_line_error(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(!output.status.success(), "{program} {args:?} succeeded");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{program} {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim().to_owned()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Processes of one cluster, killed on drop.
pub struct Cluster {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub master: String,
    pub admin: String,
    pub children: Vec<(String, Child)>,
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
        Cluster {
            name: name.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            master: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
            children: Vec::new(),
            pki: None,
        }
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
        let database = self.database(index);
        let (name, master) = (self.name.clone(), self.master.clone());
        let database = database.to_str().unwrap().to_owned();
        let args = ["-c", &name, "-m", &master, "-a", "SQLite", "-d", &database];
        self.spawn(&format!("storage{index}"), NEOSTORAGE, &args);
    }

    pub fn start_admin(&mut self) {
        let (name, master, admin) = (self.name.clone(), self.master.clone(), self.admin.clone());
        self.spawn(
            "admin",
            NEOADMIN,
            &["-c", &name, "-m", &master, "-b", &admin],
        );
    }

    pub fn database(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("storage{index}.sqlite"))
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
        let master = neo_proto::Address::parse(&self.master, 0).unwrap();
        let mut config = neo_client::ClientConfig::new(vec![master], self.name.clone());
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
    }
}
