//! A storage on a MariaDB server of its own that the tests kill and
//! reconfigure (`scripts/mariadb`): acknowledged commits survive
//! `kill -9` of the server, the storage waits for a server that is not
//! there yet (`-w`), and refuses one whose `max_allowed_packet` is too
//! small.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{mysql_admin, Cluster, PrivateServer, Store, NEOSTORAGE};
use mysql::prelude::Queryable;
use neo_client::TxnMeta;
use neo_proto::{Oid, Tid};

/// Acknowledged commits wanted before the server is killed, and at most
/// after it.
const BEFORE_KILL: usize = 40;

/// `kill -9` of `mariadbd` while clients commit: the storage stops (its
/// changes in flight are lost with the connection, it does not go on on a
/// new one), and once the server and the storage are back, every commit
/// whose `tpc_finish` returned, before or after, is there, byte for byte.
#[test]
fn kill_9_of_mariadbd_under_a_commit_load_loses_no_acknowledged_commit() {
    let mut server = PrivateServer::start();
    let mut cluster = Cluster::with_store("sigkill", Store::MySql(server.socket.clone()));
    cluster.start(1, 0);

    let acknowledged: Mutex<Vec<(Oid, Tid, Bytes)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let failures = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for worker in 0..3u64 {
            let client = cluster.client();
            let (acknowledged, stop, failures) = (&acknowledged, &stop, &failures);
            scope.spawn(move || {
                for round in 0..10_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let data = Bytes::from(format!("worker {worker} round {round}").repeat(20));
                    let committed = (|| {
                        let oid = client.new_oid()?;
                        let mut txn = client.begin(None)?;
                        txn.store(oid, Tid::ZERO, data.clone())?;
                        txn.vote(&TxnMeta {
                            user: Bytes::from_static(b"load"),
                            ..TxnMeta::default()
                        })?;
                        Ok::<_, neo_client::ClientError>((oid, txn.finish()?))
                    })();
                    match committed {
                        Ok((oid, tid)) => acknowledged.lock().unwrap().push((oid, tid, data)),
                        // Not acknowledged: may or may not be there.
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                drop(client);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while acknowledged.lock().unwrap().len() < BEFORE_KILL {
            assert!(Instant::now() < deadline, "the load does not commit");
            std::thread::sleep(Duration::from_millis(10));
        }
        server.kill();
        let deadline = Instant::now() + Duration::from_secs(60);
        while failures.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "commits still succeed");
            std::thread::sleep(Duration::from_millis(10));
        }

        // The storage stopped by itself, with an error: it did not
        // reconnect.
        let storage = cluster
            .children
            .iter_mut()
            .find(|(label, _)| label == "storage0")
            .map(|(_, child)| child)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = storage.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the storage still runs");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success());
        let log = cluster.logs();
        assert!(
            log.contains("MySQL error")
                || log.contains("lost the connection to the database server"),
            "{log}"
        );
        cluster.children.retain(|(label, _)| label != "storage0");

        // A storage started before the server is back waits for it (-w).
        // Committers still waiting for the cluster go on once it runs.
        cluster.start_storage_with(0, &["-w", "120"]);
        server.restart();
        cluster.wait_state("RUNNING");
        stop.store(true, Ordering::Relaxed);
    });

    let reader = cluster.client();
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(acknowledged.len() >= BEFORE_KILL);
    for (oid, tid, data) in &acknowledged {
        let loaded = reader.load(*oid).unwrap();
        assert_eq!(loaded.serial, *tid, "{oid}");
        assert!(loaded.data == *data, "{oid}");
    }
    eprintln!(
        "{} acknowledged commits all found after kill -9 of mariadbd",
        acknowledged.len()
    );
    reader.close().unwrap();
    cluster.stop();
}

/// A server whose `max_allowed_packet` can not take NEO's largest rows is
/// refused at start, saying what to set.
#[test]
fn a_small_max_allowed_packet_is_refused_saying_what_to_set() {
    let server = PrivateServer::start();
    let mut admin = mysql_admin(&server.socket);
    admin.query_drop("CREATE DATABASE neo").unwrap();
    admin
        .query_drop("SET GLOBAL max_allowed_packet = 16777216")
        .unwrap();
    let database = format!("root@neo{}", server.socket);
    let output = std::process::Command::new(NEOSTORAGE)
        .args(["-c", "small", "-a", "MySQL", "-d", &database])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("max_allowed_packet is 16777216 bytes")
            && stderr.contains("at least 32769K"),
        "{stderr}"
    );
}
