//! Faults under load: 3 storages with one replica of every partition,
//! several client processes committing concurrently (with conflicts on
//! shared counters) and recording every transaction acknowledged to them,
//! while a storage is killed, cut off, silently held, while every storage
//! restarts in turn, or while the master is killed. Afterwards every
//! acknowledged transaction must be in every replica with its exact data,
//! none half-applied, no counter update lost, the replicas equal
//! (`neoctl check`), every cell UP_TO_DATE again, and the clients must
//! have kept working without a restart.
//!
//! The storages run in network namespaces (`neo_testkit::hosts`): these
//! tests need root and iproute2, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use neo_testkit::cluster::{test_bin_dir, NetCluster};

const STORAGES: usize = 3;
const CLIENTS: usize = 4;
const COUNTERS: usize = 3;

/// A running cluster with load clients committing.
fn loaded_cluster(name: &str) -> NetCluster {
    let mut cluster = NetCluster::new(name, STORAGES, &test_bin_dir()).unwrap();
    cluster.start(12, 1);
    let counters = cluster.create_counters(COUNTERS);
    cluster.start_loads(CLIENTS, &counters);
    wait_for_commits(&cluster, 20);
    cluster
}

fn wait_for_commits(cluster: &NetCluster, more: usize) {
    cluster.wait_for_commits(more);
}

/// The checks after a fault (see [`NetCluster::heal_and_verify`]), with
/// how long the cells took to be UP_TO_DATE again.
fn heal_and_verify(mut cluster: NetCluster, fault: &str) {
    let (report, back, stats) = cluster.heal_and_verify(fault);
    eprintln!(
        "{fault}: UP_TO_DATE {:.2} s after healing; {} acknowledged, {} replicas compared, \
         {} increments; clients: {}",
        back.as_secs_f64(),
        report.acknowledged,
        report.replicas_compared,
        report.increments,
        stats.join(" | ")
    );
}

#[test]
fn a_storage_killed_and_restarted() {
    let mut cluster = loaded_cluster("kill9");
    cluster.kill("storage1");
    wait_for_commits(&cluster, 20);
    cluster.start_storage(1);
    heal_and_verify(cluster, "kill -9");
}

#[test]
fn a_storage_cut_off_and_reconnected() {
    let cluster = loaded_cluster("cut");
    cluster.net.cut(1).unwrap();
    wait_for_commits(&cluster, 20);
    heal_and_verify(cluster, "cut");
}

/// A storage whose packets are silently held for 10 s: commits go on
/// without it (liveness gives it up), and it catches up once released.
#[test]
fn a_storage_silently_held_for_10_s() {
    let cluster = loaded_cluster("held");
    cluster.net.hold(1).unwrap();
    let held = Instant::now();
    let before = cluster.acknowledged();
    // Commits go on while it is held.
    cluster.wait_for("commits while held", |cluster| {
        cluster.acknowledged() >= before + 20
    });
    let resumed = held.elapsed();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(held.elapsed()));
    cluster.net.release(1).unwrap();
    eprintln!(
        "held: 20 commits {:.2} s after the hold",
        resumed.as_secs_f64()
    );
    heal_and_verify(cluster, "held 10 s");
}

#[test]
fn every_storage_restarted_in_turn() {
    let mut cluster = loaded_cluster("rolling");
    for index in 0..STORAGES {
        cluster.kill(&format!("storage{index}"));
        wait_for_commits(&cluster, 10);
        cluster.start_storage(index);
        cluster.wait_for("every cell UP_TO_DATE", NetCluster::all_up_to_date);
    }
    heal_and_verify(cluster, "rolling restart");
}

#[test]
fn the_master_killed_mid_commit_and_restarted() {
    let mut cluster = loaded_cluster("master");
    cluster.kill("master");
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_master(12, 1);
    heal_and_verify(cluster, "master kill -9");
}
