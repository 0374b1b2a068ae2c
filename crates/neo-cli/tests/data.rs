//! Data through real clusters of our processes, with the Rust client:
//! objects come back byte for byte, concurrent committers lose no update,
//! and no acknowledged commit is lost across restarts and `kill -9`; each
//! on SQLite storages, on MySQL storages, and with TLS everywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::Setup;
use neo_client::{BlockingClient, ClientError, TxnMeta};
use neo_proto::{Oid, Tid};

fn meta(description: &str) -> TxnMeta {
    TxnMeta {
        user: Bytes::from_static(b"tests"),
        description: Bytes::copy_from_slice(description.as_bytes()),
        extension: Bytes::new(),
        pack: None,
    }
}

/// Deterministic, poorly compressible bytes of a given size.
fn payload(seed: u64, size: usize) -> Bytes {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..size)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 33) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Commits `objects` (new ones, or new revisions based on `serials`) in
/// one transaction; returns its TID.
fn commit(client: &BlockingClient, objects: &[(Oid, Tid, Bytes)]) -> Tid {
    let mut txn = client.begin(None).unwrap();
    for (oid, serial, data) in objects {
        let conflicts = txn.store(*oid, *serial, data.clone()).unwrap();
        assert!(conflicts.is_empty(), "{conflicts:?}");
    }
    txn.vote(&meta("commit")).unwrap();
    txn.finish().unwrap()
}

fn thousands_of_objects_come_back_byte_for_byte(setup: Setup) {
    let mut cluster = setup.cluster("bytes");
    cluster.start(2, 1);
    let client = cluster.client();
    let mut expected: BTreeMap<Oid, (Tid, Bytes)> = BTreeMap::new();
    for batch in 0..10u64 {
        let objects: Vec<(Oid, Tid, Bytes)> = (0..200u64)
            .map(|i| {
                let seed = batch * 1000 + i;
                let size = (seed % 7) as usize * 300 + (seed % 5) as usize;
                (client.new_oid().unwrap(), Tid::ZERO, payload(seed, size))
            })
            .collect();
        let tid = commit(&client, &objects);
        for (oid, _, data) in objects {
            expected.insert(oid, (tid, data));
        }
    }
    // An empty object, a 16 MiB one and highly compressible data.
    let special = vec![
        (client.new_oid().unwrap(), Tid::ZERO, Bytes::new()),
        (client.new_oid().unwrap(), Tid::ZERO, payload(7, 16 << 20)),
        (
            client.new_oid().unwrap(),
            Tid::ZERO,
            Bytes::from(vec![b'z'; 1 << 20]),
        ),
    ];
    let tid = commit(&client, &special);
    for (oid, _, data) in special {
        expected.insert(oid, (tid, data));
    }
    assert_eq!(expected.len(), 2003);

    let reader = cluster.client();
    for (oid, (serial, data)) in &expected {
        let loaded = reader.load(*oid).unwrap();
        assert_eq!(loaded.serial, *serial, "{oid}");
        assert!(
            loaded.data == *data,
            "{oid}: {} bytes back, {} sent",
            loaded.data.len(),
            data.len()
        );
    }
    client.close().unwrap();
    reader.close().unwrap();
    cluster.stop();
}

/// Each worker increments shared counters; a conflict means reloading and
/// trying again. No increment may be lost.
fn concurrent_committers_get_conflicts_and_lose_no_update(setup: Setup) {
    let mut cluster = setup.cluster("counters");
    cluster.start(2, 1);
    let setup = cluster.client();
    let counters: Vec<Oid> = (0..3).map(|_| setup.new_oid().unwrap()).collect();
    let initial: Vec<(Oid, Tid, Bytes)> = counters
        .iter()
        .map(|oid| (*oid, Tid::ZERO, Bytes::from(0u64.to_be_bytes().to_vec())))
        .collect();
    commit(&setup, &initial);

    const WORKERS: usize = 4;
    const INCREMENTS: usize = 15;
    let counters = Arc::new(counters);
    let conflicts_seen: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let client = cluster.client();
                let counters = counters.clone();
                scope.spawn(move || {
                    let mut conflicts = 0;
                    for round in 0..INCREMENTS {
                        // Two overlapping counters per transaction.
                        let chosen = [
                            counters[(worker + round) % 3],
                            counters[(worker + round + 1) % 3],
                        ];
                        loop {
                            client.sync().unwrap();
                            let mut txn = client.begin(None).unwrap();
                            let mut conflicted = false;
                            for oid in chosen {
                                let loaded = client.load(oid).unwrap();
                                let value =
                                    u64::from_be_bytes(loaded.data[..8].try_into().unwrap());
                                let data = Bytes::from((value + 1).to_be_bytes().to_vec());
                                conflicted |=
                                    !txn.store(oid, loaded.serial, data).unwrap().is_empty();
                            }
                            let voted = if conflicted {
                                Err(())
                            } else {
                                txn.vote(&meta("increment")).map_err(|_| ())
                            };
                            match voted {
                                Ok(()) => {
                                    txn.finish().unwrap();
                                    break;
                                }
                                Err(()) => {
                                    conflicts += 1;
                                    txn.abort().unwrap();
                                }
                            }
                        }
                    }
                    client.close().unwrap();
                    conflicts
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    setup.sync().unwrap();
    let total: u64 = counters
        .iter()
        .map(|oid| u64::from_be_bytes(setup.load(*oid).unwrap().data[..8].try_into().unwrap()))
        .sum();
    assert_eq!(total, (WORKERS * INCREMENTS * 2) as u64, "lost updates");
    eprintln!("{conflicts_seen} conflicts resolved by retrying");
    setup.close().unwrap();
    cluster.stop();
}

fn a_full_restart_keeps_every_object_and_revision(setup: Setup) {
    let mut cluster = setup.cluster("restart");
    cluster.start(1, 0);
    let client = cluster.client();
    let oid = client.new_oid().unwrap();
    let mut revisions = Vec::new();
    let mut serial = Tid::ZERO;
    for revision in 0..5u64 {
        let data = payload(revision, 1000);
        serial = commit(&client, &[(oid, serial, data.clone())]);
        revisions.push((serial, data));
    }
    client.close().unwrap();
    cluster.stop();

    cluster.start_master(&[]);
    cluster.start_storage(0);
    cluster.start_admin();
    cluster.wait_state("RUNNING");
    let client = cluster.client();
    assert_eq!(client.last_transaction(), Some(serial));
    for (serial, data) in &revisions {
        assert!(client.load_serial(oid, *serial).unwrap().data == *data);
    }
    let latest = client.load(oid).unwrap();
    assert_eq!(latest.serial, revisions[4].0);
    let before_first = client.load_before(oid, revisions[0].0).unwrap();
    assert!(before_first.is_none(), "nothing before the creation");
    client.close().unwrap();
    cluster.stop();
}

/// Durability: once `tpc_finish` returned, `kill -9` of the storage right
/// after loses nothing (the lock was committed; verification replays the
/// unlock on restart).
fn kill_9_of_the_storage_right_after_finish_loses_nothing(setup: Setup) {
    let mut cluster = setup.cluster("kill9");
    cluster.start(1, 0);
    let client = cluster.client();
    let mut committed = Vec::new();
    for round in 0..3u64 {
        let oid = client.new_oid().unwrap();
        let data = payload(round, 5000);
        let tid = commit(&client, &[(oid, Tid::ZERO, data.clone())]);
        committed.push((oid, tid, data));
        cluster.kill("storage0");
        // Without its only storage the cluster goes back to recovery
        // (waited for: a client asking before the master noticed would
        // lose its connection to the recovery, and its request with it).
        cluster.wait_state("RECOVERING");
        cluster.start_storage(0);
        // It restarts by itself.
        cluster.wait_state("RUNNING");
    }
    let reader = cluster.client();
    for (oid, tid, data) in &committed {
        let loaded = reader.load(*oid).unwrap();
        assert_eq!(loaded.serial, *tid);
        assert!(loaded.data == *data);
    }
    reader.close().unwrap();
    drop(client);
    cluster.stop();
}

fn a_wrong_cluster_name_is_an_error_not_a_hang(setup: Setup) {
    let mut cluster = setup.cluster("rightname");
    cluster.start(1, 0);
    let master = neo_proto::Address::parse(&cluster.master, 0).unwrap();
    let mut config = neo_client::ClientConfig::new(vec![master], "wrongname");
    config.ready_timeout = std::time::Duration::from_secs(2);
    let started = std::time::Instant::now();
    let result = BlockingClient::connect(config).and_then(|client| client.load(Oid(0)));
    assert!(
        matches!(result, Err(ClientError::NotConnected { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    cluster.stop();
}

common::on_every_setup!(
    thousands_of_objects_come_back_byte_for_byte,
    concurrent_committers_get_conflicts_and_lose_no_update,
    a_full_restart_keeps_every_object_and_revision,
    kill_9_of_the_storage_right_after_finish_loses_nothing,
    a_wrong_cluster_name_is_an_error_not_a_hang,
);
