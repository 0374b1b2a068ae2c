//! The end of a run: once the faults are healed, the cluster must be
//! RUNNING and every client committing; then it is stopped and every
//! storage's database is checked.

use std::path::PathBuf;

use neo_proto::{CellState, ClusterState};

use super::{unix, Role, World};
use crate::record;
use crate::sim::Outcome;

impl World {
    /// The faults are over and had time to heal: the cluster must be
    /// RUNNING with every storage, every cell UP_TO_DATE, and every client
    /// must have committed since. Then the cluster is stopped, as an operator would.
    pub(super) fn heal(&mut self) {
        self.trace.line(
            self.now,
            format_args!("HEALED? checking, then stopping the cluster"),
        );
        let since = (self.now - self.settled_at) as f64 / 1e6;
        let Some(Role::Master(master)) = &self.slots[0].role else {
            panic!("the master is down {since:.3} s after the last fault");
        };
        assert_eq!(
            master.cluster_state(),
            ClusterState::Running,
            "the cluster is not RUNNING {since:.3} s after the last fault"
        );
        for node in 1..=self.config.storages {
            let slot = &self.slots[node];
            let Some(Role::Storage(storage)) = &slot.role else {
                panic!("{} is down {since:.3} s after the last fault", slot.name);
            };
            let running = storage
                .nid()
                .is_some_and(|nid| master.nodes().is_running(nid));
            assert!(
                running,
                "{} is not RUNNING {since:.3} s after the last fault",
                slot.name
            );
        }
        // Replicas caught up: every cell is readable again.
        let pt = master.partition_table();
        for partition in 0..pt.partitions() {
            for cell in pt.cells(partition) {
                assert!(
                    cell.state == CellState::UpToDate,
                    "partition {partition} of {} is {} {since:.3} s after the last fault",
                    cell.nid,
                    cell.state
                );
            }
        }
        let settled = unix(self.settled_at);
        for slot in &self.slots[self.config.storages + 1..self.slots.len() - 1] {
            if let Some(Role::Client(client)) = &slot.role {
                assert!(
                    client.last_ack_at().is_some_and(|at| at > settled),
                    "{} committed nothing in the {since:.3} s since the last fault",
                    slot.name
                );
            }
        }
        self.stopping = true;
        let admin = self.slots.len() - 1;
        self.start(admin);
    }

    /// The cluster stopped: every acknowledged transaction and every
    /// commit the master announced must be in the storages.
    pub(super) fn check(&mut self) -> Outcome {
        let mut records = std::mem::take(&mut self.records);
        for slot in &self.slots {
            if let Some(Role::Client(client)) = &slot.role {
                records.extend(client.record());
            }
        }
        let acknowledged = records.iter().filter(|entry| entry.tid.is_some()).count();
        assert!(
            acknowledged >= self.config.min_acknowledged,
            "only {acknowledged} transactions acknowledged: the run proves little"
        );
        let paths: Vec<&std::path::Path> = self.databases.iter().map(PathBuf::as_path).collect();
        // Named as in the trace: a temporary path would differ in a replay.
        let named = |error: String| {
            let mut error = error;
            for (index, path) in self.databases.iter().enumerate() {
                error = error.replace(&path.display().to_string(), &format!("S{index}"));
            }
            error
        };
        let report =
            record::verify(&records, &paths).unwrap_or_else(|error| panic!("{}", named(error)));
        record::verify(&self.announced.entries(), &paths)
            .unwrap_or_else(|error| panic!("a commit the master announced: {}", named(error)));
        self.trace.line(
            self.now,
            format_args!(
                "verified: {acknowledged} acknowledged, {} replicas compared, {} counter increments",
                report.replicas_compared, report.increments
            ),
        );
        Outcome {
            acknowledged,
            in_doubt: records.len() - acknowledged,
            faults: self.faults,
            events: self.events,
            trace_lines: self.trace.count(),
            trace_hash: self.trace.hash(),
            seconds: self.now as f64 / 1e6,
        }
    }
}
