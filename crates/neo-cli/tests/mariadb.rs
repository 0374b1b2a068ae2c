//! A storage on a MariaDB server of its own that the tests kill and
//! reconfigure (`scripts/mariadb`): acknowledged commits survive
//! `kill -9` of the server, the storage waits for a server that is not
//! there yet (`-w`), and refuses one whose `max_allowed_packet` is too
//! small.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{mysql_admin, Cluster, CommitLoad, PrivateServer, Store, NEOSTORAGE};
use mysql::prelude::Queryable;

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

    let load = CommitLoad::default();
    std::thread::scope(|scope| {
        for worker in 0..3u64 {
            let client = cluster.client();
            let load = &load;
            scope.spawn(move || load.run(&client, worker, false));
        }
        load.wait_for_acknowledged(BEFORE_KILL);
        server.kill();

        // The storage stops by itself, with an error: it does not
        // reconnect. (Waited for, not a failed commit: every client may
        // be in tpc_finish when it goes, and those wait for the cluster to
        // come back to learn their outcome, failing nothing meanwhile.)
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
        // Nothing is acknowledged without the storage.
        let acknowledged = load.acknowledged_count();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            load.acknowledged_count(),
            acknowledged,
            "commits still succeed"
        );
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
        load.stop.store(true, Ordering::Relaxed);
    });

    let reader = cluster.client();
    let checked = load.check(&reader);
    assert!(checked >= BEFORE_KILL);
    eprintln!("{checked} acknowledged commits all found after kill -9 of mariadbd");
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
