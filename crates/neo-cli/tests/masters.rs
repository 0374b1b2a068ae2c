//! Several masters (architecture.md §2): a brand-new cluster whose masters
//! and storages all start at the same moment always reaches RUNNING (NEO/py
//! hands two storages the same id during the election and stays in
//! RECOVERING forever about once in 13 starts), `neosimple --master_count`,
//! and a secondary that redirects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A cluster of `masters` masters on free ports, nothing started.
fn cluster_of_masters(name: &str, masters: usize) -> (Cluster, Vec<String>) {
    let mut cluster = Cluster::new(name);
    let addresses: Vec<String> = (0..masters)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    cluster.master = addresses.join(" ");
    (cluster, addresses)
}

fn start_masters(cluster: &mut Cluster, addresses: &[String], storages: usize) {
    let (name, list) = (cluster.name.clone(), cluster.master.clone());
    let autostart = storages.to_string();
    for (index, address) in addresses.iter().enumerate() {
        let args = [
            "-c",
            &name,
            "-b",
            address,
            "-m",
            &list,
            "-p",
            "4",
            "-r",
            "1",
            "--autostart",
            &autostart,
        ];
        cluster.spawn(&format!("master{index}"), NEOMASTER, &args);
    }
}

/// Starts 3 masters, 2 storages and an admin at once; `true` once RUNNING.
fn cold_start(run: usize) -> Result<Duration, String> {
    let (mut cluster, addresses) = cluster_of_masters(&format!("cold{run}"), 3);
    let started = Instant::now();
    start_masters(&mut cluster, &addresses, 2);
    cluster.start_storage(0);
    cluster.start_storage(1);
    cluster.start_admin();
    let deadline = started + Duration::from_secs(30);
    loop {
        if cluster.neoctl_stdout("print cluster").trim() == "RUNNING" {
            let nodes = cluster.neoctl_stdout("print node");
            let storages = nodes.lines().filter(|l| l.contains("STORAGE")).count();
            if storages != 2 {
                return Err(format!(
                    "run {run}: RUNNING with {storages} storages:\n{nodes}"
                ));
            }
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "run {run}: not RUNNING after 30 s: {}\n{}",
                cluster.neoctl_stdout("print node"),
                cluster.logs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hundred_simultaneous_cold_starts_of_3_masters_and_2_storages_all_run() {
    const STARTS: usize = 100;
    const PARALLEL: usize = 4;
    let results: Vec<Result<Duration, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARALLEL)
            .map(|worker| {
                scope.spawn(move || {
                    (worker..STARTS)
                        .step_by(PARALLEL)
                        .map(cold_start)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect()
    });
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let mut times: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(Duration::as_secs_f64)
        .collect();
    times.sort_by(f64::total_cmp);
    if let (Some(median), Some(worst)) = (times.get(times.len() / 2), times.last()) {
        eprintln!(
            "{} of {STARTS} cold starts RUNNING; median {median:.2} s, worst {worst:.2} s",
            times.len()
        );
    }
    assert!(
        failures.is_empty(),
        "{} failed; first: {}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn a_secondary_master_sends_every_node_to_the_primary() {
    let (mut cluster, addresses) = cluster_of_masters("redirect", 2);
    start_masters(&mut cluster, &addresses, 1);
    // The storage and the admin know only the second master: whichever
    // is the secondary redirects them.
    cluster.master = addresses[1].clone();
    cluster.start_storage(0);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
    let nodes = cluster.neoctl_stdout("print node");
    for address in &addresses {
        assert!(
            nodes
                .lines()
                .any(|l| l.contains("MASTER") && l.contains(address.as_str())),
            "{nodes}"
        );
    }
    // A client given only one master finds the primary too, and keeps
    // every master in its dynamic master list for its next start.
    let list = cluster.dir.path().join("masters.json");
    let mut config = neo_client::ClientConfig::new(
        vec![neo_proto::Address::parse(&addresses[1], 0).unwrap()],
        cluster.name.clone(),
    );
    config.dynamic_master_list = Some(list.clone());
    let client = neo_client::BlockingClient::connect(config).unwrap();
    let oid = client.new_oid().unwrap();
    let mut txn = client.begin(None).unwrap();
    txn.store(oid, neo_proto::Tid::ZERO, b"x".to_vec().into())
        .unwrap();
    txn.vote(&neo_client::TxnMeta::default()).unwrap();
    txn.finish().unwrap();
    let known = neo_net::master_list::read(&list).unwrap().unwrap();
    for address in &addresses {
        let address = neo_proto::Address::parse(address, 0).unwrap();
        assert!(known.contains(&address), "{known:?}");
    }
    cluster.stop();
}

#[test]
fn neosimple_runs_several_masters_with_neo_py_options() {
    let dir = tempfile::tempdir().unwrap();
    let temp_dir = dir.path().to_str().unwrap();
    let mut child = std::process::Command::new(NEOSIMPLE)
        .args([
            "--adapter",
            "SQLite",
            "--temp_dir",
            temp_dir,
            "--autostart",
            "--logger",
            "--seed",
            "1",
            "--address_type",
            "2",
            "--master_count",
            "3",
            "--name",
            "simple3",
            "--partitions",
            "4",
            "--replicas",
            "1",
            "db1",
            "db2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..5 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        lines.push(line.trim().to_owned());
    }
    assert_eq!(lines[0], "Cluster running", "{lines:?}");
    let masters = lines[1].strip_prefix("master_nodes = ").unwrap();
    assert_eq!(masters.split_whitespace().count(), 3, "{lines:?}");
    let admin = lines[3].strip_prefix("admin = ").unwrap();
    let nodes = std::process::Command::new(NEOCTL)
        .args(["-a", admin, "print", "node"])
        .output()
        .unwrap();
    let nodes = String::from_utf8(nodes.stdout).unwrap();
    assert_eq!(
        nodes.lines().filter(|l| l.contains("| MASTER ")).count(),
        3,
        "{nodes}"
    );
    assert!(dir.path().join("neosimple.log").exists());
    interrupt(child.id());
    let status = child.wait().unwrap();
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert!(
        status.success(),
        "{status}: {}\n{}",
        log("stderr"),
        log("neosimple.log")
    );
    // Its nodes share the log: no NID names its lines.
    let lines = log("neosimple.log");
    assert!(lines.lines().count() > 10, "{lines}");
    for line in lines.lines() {
        let parsed = neo_log::parse_line(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(parsed.node, "neosimple", "{line}");
    }
}

/// SIGINT, as an operator's Ctrl-C.
fn interrupt(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `-i` (NEO/py's `--nid`, which its neosimple passes to every node): the
/// master's id, the id a new storage proposes (an id its database already
/// has wins), the admin's.
#[test]
fn each_daemon_takes_its_id_from_dash_i() {
    let mut cluster = Cluster::new("nids");
    let master = cluster.master.clone();
    let name = cluster.name.clone();
    let args = [
        "-c",
        &name,
        "-b",
        &master,
        "-p",
        "2",
        "--autostart",
        "1",
        "-i",
        "-268435453",
    ];
    cluster.spawn("master", NEOMASTER, &args);
    cluster.start_storage_with(0, &["-i", "7"]);
    let admin = cluster.admin.clone();
    let args = ["-c", &name, "-m", &master, "-b", &admin, "-i", "-805306363"];
    cluster.spawn("admin", NEOADMIN, &args);
    cluster.wait_state("RUNNING");
    let nodes = cluster.neoctl_stdout("print node");
    for id in ["M3 ", "S7 ", "A5 "] {
        assert!(nodes.lines().any(|l| l.starts_with(id)), "{id}: {nodes}");
    }
    cluster.stop();
    // Restarted with another -i, the storage keeps the id of its database.
    cluster.spawn("master", NEOMASTER, &args_master(&name, &master));
    cluster.start_storage_with(0, &["-i", "9"]);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
    let nodes = cluster.neoctl_stdout("print node");
    assert!(nodes.lines().any(|l| l.starts_with("S7 ")), "{nodes}");
    cluster.stop();
}

fn args_master<'a>(name: &'a str, master: &'a str) -> [&'a str; 6] {
    ["-c", name, "-b", master, "-p", "2"]
}
