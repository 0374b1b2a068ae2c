//! The seeded simulation (issue #9): whole clusters — the real master and
//! storages over real SQLite databases, scripted clients — run in one
//! thread under faults drawn from each seed (connections broken, nodes
//! crashed and restarted, traffic held, nodes cut off), then every
//! acknowledged transaction is checked in every replica
//! (`neo_testkit::sim` says what else is checked, and how).
//!
//! A failure prints its seed, the last events and how to replay it:
//! `NEO_SIM_SEED=<seed> cargo test -p neo-testkit --test simulation <test>`
//! runs that seed alone (`NEO_SIM_SEED=1..1000`: a longer search), and
//! `NEO_SIM_TRACE=1` prints every event as it happens. A replay is the same run, event for event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use neo_testkit::sim::{run, Outcome, SimConfig};

/// Seeds per configuration in CI: a debug run takes a few tenths of a
/// second.
const SEEDS: u64 = 40;

/// The seeds to run: `NEO_SIM_SEED` alone (`N`, or `FIRST..LAST` for a
/// longer search than CI's), or `1..=SEEDS`.
fn seeds() -> Vec<u64> {
    let Ok(seeds) = std::env::var("NEO_SIM_SEED") else {
        return (1..=SEEDS).collect();
    };
    let number = |text: &str| -> u64 {
        text.trim()
            .parse()
            .expect("NEO_SIM_SEED is a number or FIRST..LAST")
    };
    match seeds.split_once("..") {
        Some((first, last)) => (number(first)..=number(last)).collect(),
        None => vec![number(&seeds)],
    }
}

fn echo() -> bool {
    std::env::var_os("NEO_SIM_TRACE").is_some()
}

/// Runs every seed with `config` on a few threads; fails listing each
/// failing seed with its last events and how to replay it.
fn run_seeds(test: &str, config: &SimConfig) {
    let seeds = seeds();
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = run(config, *seed, echo());
                    results.lock().unwrap().push((*seed, result));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(seed, _)| *seed);
    let mut failures = Vec::new();
    let (mut acknowledged, mut in_doubt, mut faults) = (0, 0, 0);
    for (seed, result) in results {
        match result {
            Ok(outcome) => {
                acknowledged += outcome.acknowledged;
                in_doubt += outcome.in_doubt;
                faults += outcome.faults;
            }
            Err(failure) => failures.push(format!(
                "{failure}replay: NEO_SIM_SEED={seed} cargo test -p neo-testkit --test simulation \
                 {test} (NEO_SIM_TRACE=1 prints every event)\n"
            )),
        }
    }
    eprintln!(
        "{test}: {} seeds in {:.1} s: {acknowledged} transactions acknowledged and checked, \
         {in_doubt} in doubt, {faults} faults",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn two_storages_without_replicas_keep_every_acknowledged_commit() {
    run_seeds(
        "two_storages_without_replicas_keep_every_acknowledged_commit",
        &SimConfig::new(2, 3, 0),
    );
}

#[test]
fn three_storages_without_replicas_keep_every_acknowledged_commit() {
    run_seeds(
        "three_storages_without_replicas_keep_every_acknowledged_commit",
        &SimConfig::new(3, 2, 0),
    );
}

/// With a replica of every partition, a lost storage leaves the cluster
/// RUNNING and comes back OUT_OF_DATE, to catch up by replication.
#[test]
fn three_storages_with_one_replica_keep_every_acknowledged_commit() {
    run_seeds(
        "three_storages_with_one_replica_keep_every_acknowledged_commit",
        &SimConfig::new(3, 3, 1),
    );
}

/// The same seed gives the same run, event for event.
#[test]
fn a_seed_replays_to_the_same_trace() {
    let config = SimConfig::new(2, 2, 0);
    let first: Outcome = run(&config, 7, false).unwrap_or_else(|failure| panic!("{failure}"));
    let again = run(&config, 7, false).unwrap_or_else(|failure| panic!("{failure}"));
    assert_eq!(first, again);
    let other = run(&config, 8, false).unwrap_or_else(|failure| panic!("{failure}"));
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "another seed, another run"
    );
}

/// A failing seed fails again the same way, after the same events (here
/// the run fails at its end: it asks for more commits than any run makes).
#[test]
fn a_failing_seed_replays_to_the_same_failure() {
    let config = SimConfig {
        min_acknowledged: usize::MAX,
        ..SimConfig::new(2, 2, 0)
    };
    let first = run(&config, 11, false).expect_err("no run commits that much");
    let again = run(&config, 11, false).expect_err("no run commits that much");
    assert!(
        first.message.contains("transactions acknowledged"),
        "{first}"
    );
    assert_eq!(first.message, again.message);
    assert_eq!(first.trace, again.trace);
    assert_eq!(
        (first.trace_lines, first.trace_hash),
        (again.trace_lines, again.trace_hash)
    );
}
