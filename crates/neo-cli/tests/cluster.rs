//! Real clusters of our processes on 127.0.0.1: start-up through
//! `neoctl start` and through `--autostart`, neoctl's view, clean stop,
//! restart, and the one-line errors of bad configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{one_line_error, Cluster, NEOADMIN, NEOMASTER, NEOSTORAGE};

#[test]
fn a_new_cluster_runs_after_neoctl_start_and_stops_cleanly() {
    let mut cluster = Cluster::new("ctlstart");
    cluster.start_master(&["-r", "1"]);
    cluster.start_storage(0);
    cluster.start_storage(1);
    cluster.start_admin();
    cluster.wait_state("RECOVERING");
    // Both storages are known and pending before the start.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster
        .neoctl_stdout("print node")
        .matches("PENDING")
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = cluster.neoctl("start");
    assert_eq!(
        String::from_utf8_lossy(&start.stdout).trim(),
        "Cluster state changed"
    );
    assert!(start.status.success());
    cluster.wait_state("RUNNING");

    assert_eq!(
        cluster.neoctl_stdout("print pt"),
        "# ptid: 1, replicas: 1\nS1 R UUUU\nS2 R UUUU\n"
    );
    let nodes = cluster.neoctl_stdout("print node");
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(lines.len(), 4, "{nodes}");
    assert!(lines[0].starts_with(&format!("A1 | ADMIN   | {} | RUNNING | ", cluster.admin)));
    assert_eq!(
        lines[1],
        format!("M1 | MASTER  | {} | RUNNING | None", cluster.master)
    );
    assert!(
        lines[2].starts_with("S1 | STORAGE | 127.0.0.1:") && lines[2].contains(" | RUNNING | ")
    );
    assert_eq!(
        cluster.neoctl_stdout("print ids"),
        "last_oid = 0x0\nlast_tid = 0x0 (1900-01-01 00:00:00)\nlast_ptid = 1\n"
    );

    let stop = cluster.neoctl("set cluster STOPPING");
    assert_eq!(
        String::from_utf8_lossy(&stop.stdout).trim(),
        "Cluster state changed"
    );
    assert!(cluster.wait_exit(), "every node exits with success");
}

#[test]
fn autostart_and_restart_from_the_same_databases() {
    let mut cluster = Cluster::new("autostart");
    cluster.start_master(&["--autostart", "1"]);
    cluster.start_storage(0);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
    assert!(cluster.neoctl("set cluster STOPPING").status.success());
    assert!(cluster.wait_exit());

    // Without autostart: the table in the database is enough to restart.
    cluster.start_master(&[]);
    cluster.start_storage(0);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
    assert_eq!(
        cluster.neoctl_stdout("print pt"),
        "# ptid: 1, replicas: 0\nS1 R UUUU\n"
    );
    assert!(cluster.neoctl("set cluster STOPPING").status.success());
    assert!(cluster.wait_exit());
}

#[test]
fn values_given_only_in_the_config_file_are_used() {
    config_file_only(Cluster::new("fromfile"));
}

/// TLS files too: `ca`, `cert`, `key` in `[DEFAULT]`.
#[test]
fn tls_given_only_in_the_config_file_is_used() {
    config_file_only(Cluster::with_tls("fromfile"));
}

fn config_file_only(mut cluster: Cluster) {
    let conf = cluster.dir.path().join("neo.conf");
    let tls = cluster.pki.as_ref().map_or_else(String::new, |pki| {
        let node = &pki.node;
        format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            node.ca.display(),
            node.cert.display(),
            node.key.display()
        )
    });
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\ncluster: fromfile\nmasters: {master}\npartitions: 3\nautostart: 1\n{tls}\
             [master]\nbind: {master}\n\n[admin]\nbind: {admin}\n",
            master = cluster.master,
            admin = cluster.admin
        ),
    )
    .unwrap();
    let conf = conf.to_str().unwrap().to_owned();
    let from_file = |section: &str| ["-f", &conf, "-s", section].map(str::to_owned);
    cluster.spawn_plain("master", NEOMASTER, &from_file("master"));
    cluster.start_storage(0);
    cluster.spawn_plain("admin", NEOADMIN, &from_file("admin"));
    cluster.wait_state("RUNNING");
    assert_eq!(
        cluster.neoctl_stdout("print pt"),
        "# ptid: 1, replicas: 0\nS1 R UUU\n"
    );
    assert!(cluster.neoctl("set cluster STOPPING").status.success());
    assert!(cluster.wait_exit());
}

#[test]
fn bad_configuration_gets_a_one_line_error() {
    let error = one_line_error(NEOMASTER, &["-b", "127.0.0.1:0"]);
    assert!(
        error.starts_with("neomaster: error:") && error.contains("cluster"),
        "{error}"
    );
    let error = one_line_error(NEOMASTER, &["-c", "x", "--bogus"]);
    assert!(error.contains("--bogus"), "{error}");
    let error = one_line_error(NEOMASTER, &["-c", "x", "-b", "127.0.0.1:notaport"]);
    assert!(error.contains("notaport"), "{error}");
    let error = one_line_error(NEOMASTER, &["-f", "/nonexistent/neo.conf", "-s", "master"]);
    assert!(error.contains("/nonexistent/neo.conf"), "{error}");
    let error = one_line_error(
        NEOSTORAGE,
        &[
            "-c",
            "x",
            "-a",
            "SQLite",
            "-d",
            "/nonexistent/dir/db.sqlite",
        ],
    );
    assert!(error.contains("/nonexistent/dir/db.sqlite"), "{error}");
}

/// NEO/py's usual `masters` line names the master itself too: a master
/// alone in its list is the primary.
#[test]
fn a_master_naming_itself_in_its_masters_is_alone() {
    let mut cluster = Cluster::new("alone");
    let own = cluster.master.clone();
    cluster.start_master(&["-m", &own, "--autostart", "1"]);
    cluster.start_storage(0);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
}

#[test]
fn a_database_of_another_cluster_is_refused() {
    let mut cluster = Cluster::new("first");
    cluster.start_master(&["--autostart", "1"]);
    cluster.start_storage(0);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
    assert!(cluster.neoctl("set cluster STOPPING").status.success());
    assert!(cluster.wait_exit());
    let database = cluster.database(0);
    let error = one_line_error(
        NEOSTORAGE,
        &[
            "-c",
            "second",
            "-m",
            "127.0.0.1:1",
            "-a",
            "SQLite",
            "-d",
            &database,
        ],
    );
    assert!(
        error.contains("\"first\"") && error.contains("\"second\""),
        "{error}"
    );
}

/// Garbage on a connection closes that connection only: the master, the
/// storage and the admin keep serving.
#[test]
fn garbage_closes_only_that_connection() {
    use std::io::{Read, Write};
    let mut cluster = Cluster::new("garbage");
    cluster.start(1, 0);
    for address in [cluster.master.clone(), cluster.admin.clone()] {
        for garbage in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0x92, 0xa3, b'N', b'E', b'O', 5, 0xc1, 0xff][..],
        ] {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            stream.write_all(garbage).unwrap();
            let mut rest = Vec::new();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            // The node closes the connection (after its own magic).
            stream.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, neo_proto::MAGIC, "{address}");
        }
    }
    assert_eq!(cluster.neoctl_stdout("print cluster").trim(), "RUNNING");
    let client = cluster.client();
    let oid = client.new_oid().unwrap();
    let mut txn = client.begin(None).unwrap();
    txn.store(
        oid,
        neo_proto::Tid::ZERO,
        bytes::Bytes::from_static(b"still here"),
    )
    .unwrap();
    txn.vote(&neo_client::TxnMeta {
        user: bytes::Bytes::new(),
        description: bytes::Bytes::new(),
        extension: bytes::Bytes::new(),
        pack: None,
    })
    .unwrap();
    txn.finish().unwrap();
    assert_eq!(&client.load(oid).unwrap().data[..], b"still here");
    client.close().unwrap();
    cluster.stop();
}
