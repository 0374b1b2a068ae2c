//! Storages on the Native engine as real processes: `kill -9` at random
//! moments under a commit load loses no acknowledged commit, and an
//! SQLite cluster converts to Native by replication (a Native storage
//! added, tweaked in, the SQLite one dropped). The data, pack,
//! replication and redundancy tests also run on Native storages
//! (`native::*` in their files).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Cluster, CommitLoad, Store, NEOSTORAGE};
use neo_client::{BlockingClient, TxnMeta};
use neo_proto::{Oid, Tid};

/// Rounds of `kill -9`.
const ROUNDS: usize = 5;

/// `kill -9` of the only storage, 5 times at random moments while 3
/// clients commit; restarted each time, it comes back with every commit
/// acknowledged before (its log cut at the last whole batch), and once
/// the load is over every acknowledged commit is read back byte for byte.
#[test]
fn kill_9_of_a_native_storage_under_a_commit_load_loses_no_acknowledged_commit() {
    let mut cluster = Cluster::with_store("nativekill", Store::Native);
    cluster.start(1, 0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    eprintln!("moments of the kills drawn from seed {seed}");
    let mut random = u64::from(seed) | 1;
    let load = CommitLoad::default();
    std::thread::scope(|scope| {
        for worker in 0..3u64 {
            let client = cluster.client();
            let load = &load;
            scope.spawn(move || load.run(&client, worker, true));
        }
        for round in 0..ROUNDS {
            // The load runs again before each kill.
            load.wait_for_acknowledged(load.acknowledged_count() + 10);
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            std::thread::sleep(Duration::from_millis(random % 300));
            let before = load.acknowledged_count();
            cluster.kill("storage0");
            eprintln!("round {round}: killed with {before} commits acknowledged");
            cluster.wait_state("RECOVERING");
            cluster.start_storage(0);
            cluster.wait_state("RUNNING");
        }
        load.wait_for_acknowledged(load.acknowledged_count() + 10);
        load.stop.store(true, Ordering::Relaxed);
    });
    let reader = cluster.client();
    let checked = load.check(&reader);
    eprintln!(
        "{checked} acknowledged commits all found after {ROUNDS} kill -9 ({} failed commits)",
        load.failures.load(Ordering::Relaxed)
    );
    reader.close().unwrap();
    cluster.stop();
}

/// Every revision committed, by oid: `(serial, data)`, oldest first.
type Revisions = BTreeMap<Oid, Vec<(Tid, Bytes)>>;

/// Commits `rounds` transactions each writing a new revision of every
/// object of `revisions` (created first when empty) and a new object.
fn commit_rounds(
    client: &BlockingClient,
    revisions: &mut Revisions,
    objects: usize,
    rounds: usize,
) {
    if revisions.is_empty() {
        for _ in 0..objects {
            revisions.insert(client.new_oid().unwrap(), Vec::new());
        }
    }
    for round in 0..rounds {
        revisions.insert(client.new_oid().unwrap(), Vec::new());
        let mut txn = client.begin(None).unwrap();
        let mut written = Vec::new();
        for (n, (oid, history)) in revisions.iter().enumerate() {
            let serial = history.last().map_or(Tid::ZERO, |(serial, _)| *serial);
            let data = Bytes::from(format!("{oid} {round} {}", "x".repeat(n * 31 % 2000)));
            assert!(txn.store(*oid, serial, data.clone()).unwrap().is_empty());
            written.push((*oid, data));
        }
        txn.vote(&TxnMeta::default()).unwrap();
        let tid = txn.finish().unwrap();
        for (oid, data) in written {
            revisions.get_mut(&oid).unwrap().push((tid, data));
        }
    }
}

/// Every revision of every object is read back exactly, and the latest
/// is current.
fn check_revisions(client: &BlockingClient, revisions: &Revisions) {
    for (oid, history) in revisions {
        for (serial, data) in history {
            let loaded = client.load_serial(*oid, *serial).unwrap();
            assert!(loaded.data == *data, "{oid} at {serial:?}");
        }
        let (serial, data) = history.last().unwrap();
        let latest = client.load(*oid).unwrap();
        assert_eq!(latest.serial, *serial, "{oid}");
        assert!(latest.data == *data, "{oid}");
    }
}

/// Polls `print pt` until it ends with `rows` (bounded).
fn wait_for_table(cluster: &Cluster, rows: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let table = cluster.neoctl_stdout("print pt");
        if table.ends_with(rows) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partition table {table:?}, expected it to end with {rows:?}; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// operations.md's way to move a storage to another engine, from SQLite
/// to Native: a Native storage joins the cluster, a tweak gives it a
/// replica of every partition, it replicates them while clients commit,
/// then the SQLite storage is killed and dropped. The Native storage
/// alone then serves every revision, and again after a full restart.
#[test]
fn an_sqlite_cluster_converts_to_native_by_replication() {
    let mut cluster = Cluster::new("convert");
    cluster.start(1, 1);
    let client = cluster.client();
    let mut revisions = Revisions::new();
    commit_rounds(&client, &mut revisions, 20, 10);

    let native = cluster.dir.path().join("storage1.native");
    let native = native.to_str().unwrap().to_owned();
    let (name, master) = (cluster.name.clone(), cluster.master.clone());
    let args = ["-c", &name, "-m", &master, "-a", "Native", "-d", &native];
    cluster.spawn("storage1", NEOSTORAGE, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.neoctl_stdout("print node").contains("PENDING") {
        assert!(Instant::now() < deadline, "{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cluster.neoctl_stdout("add all"), "Nodes added: S2\n");
    assert_eq!(cluster.neoctl_stdout("tweak"), "S1 R UUUU\nS2 R OOOO\n");
    // Commits go on while it replicates.
    commit_rounds(&client, &mut revisions, 20, 10);
    wait_for_table(&cluster, "S1 R UUUU\nS2 R UUUU\n");

    assert_eq!(cluster.neoctl_stdout("kill S1"), "state changed\n");
    assert_eq!(
        cluster.neoctl_stdout("drop S1"),
        "node permanently removed\n"
    );
    wait_for_table(&cluster, "replicas: 1\nS2 R UUUU\n");
    cluster.kill("storage0");
    // Nothing can come from the SQLite file any more.
    std::fs::remove_file(cluster.database(0)).unwrap();
    commit_rounds(&client, &mut revisions, 20, 5);
    let reader = cluster.client();
    check_revisions(&reader, &revisions);
    reader.close().unwrap();
    client.close().unwrap();
    cluster.stop();

    cluster.start_master(&[]);
    cluster.spawn("storage1", NEOSTORAGE, &args);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
    let reader = cluster.client();
    check_revisions(&reader, &revisions);
    reader.close().unwrap();
    cluster.stop();
}
