//! Redundancy commands against real processes of ours: `neoctl add`,
//! `tweak`, `kill`, `drop` and `truncate` print what NEO/py's print, a new
//! storage's cells become UP_TO_DATE by replication, and a truncation cuts
//! the history of our storages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::Setup;
use neo_client::TxnMeta;
use neo_proto::{Oid, Tid};

fn commit(client: &neo_client::BlockingClient, oid: Oid, serial: Tid, data: &'static [u8]) -> Tid {
    let mut txn = client.begin(None).unwrap();
    assert!(txn
        .store(oid, serial, Bytes::from_static(data))
        .unwrap()
        .is_empty());
    let meta = TxnMeta {
        user: Bytes::new(),
        description: Bytes::new(),
        extension: Bytes::new(),
        pack: None,
    };
    txn.vote(&meta).unwrap();
    txn.finish().unwrap()
}

common::on_every_setup!(
    truncate_cuts_the_history_and_the_cluster_restarts_alone,
    add_tweak_kill_and_drop_print_what_neo_py_prints,
);

fn truncate_cuts_the_history_and_the_cluster_restarts_alone(setup: Setup) {
    let mut cluster = setup.cluster("truncate");
    cluster.start(2, 1);
    let client = cluster.client();
    let oid = client.new_oid().unwrap();
    let first = commit(&client, oid, Tid::ZERO, b"first");
    let second = commit(&client, oid, first, b"second");
    client.close().unwrap();
    let refused = cluster.neoctl(&format!("truncate tid:{}", second.0));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "Truncating after last transaction does nothing\n"
    );
    let out = cluster.neoctl(&format!("truncate tid:{}", first.0));
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    cluster.wait_state("RUNNING");
    let ids = cluster.neoctl_stdout("print ids");
    assert!(
        ids.contains(&format!("last_tid = {:#x} ", first.0)),
        "{ids}\n{}",
        cluster.logs()
    );
    let client = cluster.client();
    let loaded = client.load(oid).unwrap();
    assert_eq!((loaded.serial, &loaded.data[..]), (first, &b"first"[..]));
    client.close().unwrap();
    cluster.stop();
}

/// operations.md §11.6 with our storages: a new storage is added, gets
/// cells by a tweak, is killed and dropped.
fn add_tweak_kill_and_drop_print_what_neo_py_prints(setup: Setup) {
    let mut cluster = setup.cluster("elastic");
    cluster.start(1, 1);
    cluster.start_storage(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cluster.neoctl_stdout("print node").contains("PENDING") {
        assert!(std::time::Instant::now() < deadline, "{}", cluster.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(cluster.neoctl_stdout("add S3"), "No node added\n");
    assert_eq!(cluster.neoctl_stdout("add all"), "Nodes added: S2\n");
    assert_eq!(cluster.neoctl_stdout("tweak -n"), "S1 R UUUU\nS2 R OOOO\n");
    assert_eq!(cluster.neoctl_stdout("tweak"), "S1 R UUUU\nS2 R OOOO\n");
    assert_eq!(cluster.neoctl_stdout("tweak"), "No change done.\n");
    // S2 replicates its cells, then the master sets them UP_TO_DATE.
    while !cluster
        .neoctl_stdout("print pt")
        .ends_with("S1 R UUUU\nS2 R UUUU\n")
    {
        assert!(std::time::Instant::now() < deadline, "{}", cluster.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let refused = cluster.neoctl("drop S2");
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        "a running node must be stopped before removal\n"
    );
    assert_eq!(cluster.neoctl_stdout("kill S2"), "state changed\n");
    assert_eq!(
        cluster.neoctl_stdout("drop S2"),
        "node permanently removed\n"
    );
    // ptid 2 by the tweak, then 4 cells set UP_TO_DATE, kill, drop.
    assert_eq!(
        cluster.neoctl_stdout("print pt"),
        "# ptid: 8, replicas: 1\nS1 R UUUU\n"
    );
    cluster.stop();
}
