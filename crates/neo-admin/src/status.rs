//! The data of the status page (`--status`, ours: NEO/py has none), as
//! the JSON `GET /status.json` answers, and the activity it shows. No I/O:
//! the shell serves it.
//!
//! Throughput: NEO's master counts no commits, so the admin asks it
//! `AskLastIDs` every [`STATUS_POLL_INTERVAL`] while the cluster runs and
//! the page asked its data in the last [`ACTIVITY_WINDOW`] (nobody
//! looking, nothing asked), and derives from the answers of the last
//! [`ACTIVITY_WINDOW`] seconds the objects created per second (last OIDs
//! are allocated in order) and how long ago the last commit was (a TID is
//! its commit time).

use std::collections::VecDeque;

use neo_cluster::{datetime_of_tid, NodeTable, PartitionTable, UnixTime};
use neo_proto::{ClusterState, NodeType, Oid, Tid};
use serde_json::{json, Value};

use crate::monitor::Alert;
use crate::summary::tid_time;

/// Seconds between two `AskLastIDs` for the page.
pub const STATUS_POLL_INTERVAL: f64 = 1.0;

/// Seconds of answers the throughput is computed over.
pub const ACTIVITY_WINDOW: f64 = 10.0;

/// Answers kept: one per poll over the window, and a few late ones.
const MAX_SAMPLES: usize = 16;

/// One answer of the master.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at: UnixTime,
    tid: Option<Tid>,
    oid: Option<Oid>,
}

/// The last ids the master gave, over the last [`ACTIVITY_WINDOW`].
#[derive(Clone, Debug, Default)]
pub struct Activity {
    samples: VecDeque<Sample>,
}

impl Activity {
    /// Records an answer to `AskLastIDs` (or a last TID alone).
    pub fn record(&mut self, at: UnixTime, tid: Option<Tid>, oid: Option<Oid>) {
        self.samples.push_back(Sample { at, tid, oid });
        while self.samples.len() > MAX_SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|first| at - first.at > ACTIVITY_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Forgets everything (another master session, another cluster).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// The last TID the master gave.
    pub fn last_tid(&self) -> Option<Tid> {
        self.samples.back().and_then(|sample| sample.tid)
    }

    /// Objects created per second over the window; `None` with fewer than
    /// two answers giving an OID.
    pub fn objects_per_second(&self) -> Option<f64> {
        let mut with_oid = self
            .samples
            .iter()
            .filter_map(|sample| sample.oid.map(|oid| (sample.at, oid)));
        let (first_at, first) = with_oid.next()?;
        let (last_at, last) = with_oid.next_back()?;
        let elapsed = last_at - first_at;
        (elapsed > 0.0).then(|| last.0.saturating_sub(first.0) as f64 / elapsed)
    }
}

/// Everything the page shows, borrowed from the admin.
#[derive(Debug)]
pub struct View<'a> {
    /// The cluster's name.
    pub cluster: &'a str,
    /// Whether the admin is identified to a primary master.
    pub connected: bool,
    /// The cluster state.
    pub state: Option<ClusterState>,
    /// The node table.
    pub nodes: &'a NodeTable,
    /// The partition table.
    pub pt: Option<&'a PartitionTable>,
    /// The last ids asked of the master.
    pub activity: &'a Activity,
    /// Current alerts, most serious first.
    pub alerts: &'a [Alert],
    /// The summary line (operations.md §4.3).
    pub summary: String,
    /// The note of the last failed e-mail.
    pub mail_failure: Option<&'a str>,
    /// The time of the view.
    pub now: UnixTime,
}

impl View<'_> {
    /// The JSON of `GET /status.json`.
    pub fn to_json(&self) -> String {
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|node| {
                json!({
                    "nid": node.nid.to_string(),
                    "type": node.node_type.name(),
                    "state": node.state.name(),
                    "address": node.address.as_ref().map(ToString::to_string),
                })
            })
            .collect();
        json!({
            "cluster": self.cluster,
            "connected": self.connected,
            "state": self.state.map(ClusterState::name),
            "nodes": nodes,
            "pt": self.partition_table(),
            "last_tid": self.activity.last_tid().map(|tid| json!({
                "tid": tid.to_string(),
                "date": tid_time(tid),
                // ZERO: nothing committed yet, no age to tell.
                "age_s": datetime_of_tid(tid)
                    .filter(|_| tid != Tid::ZERO)
                    .map(|when| self.now - when.to_unix()),
            })),
            "objects_per_s": self.activity.objects_per_second(),
            "alerts": self.alerts.iter().map(|alert| json!({
                "level": alert.level.name(),
                "message": alert.message,
            })).collect::<Vec<Value>>(),
            "summary": self.summary,
            "mail_failure": self.mail_failure,
        })
        .to_string()
    }

    /// Rows of cell states (`null`: no cell) by storage column, and the
    /// replication progress.
    fn partition_table(&self) -> Value {
        let Some(pt) = self.pt else {
            return Value::Null;
        };
        let mut storages: Vec<_> = self
            .nodes
            .of_type(NodeType::Storage)
            .map(|node| node.nid)
            .collect();
        for nid in pt.nodes() {
            if !storages.contains(&nid) {
                storages.push(nid);
            }
        }
        storages.sort();
        let mut cells = 0;
        let mut not_up_to_date = 0;
        let rows: Vec<Vec<Option<&str>>> = (0..pt.partitions())
            .map(|partition| {
                storages
                    .iter()
                    .map(|nid| {
                        let state = pt.cell_state(partition, *nid)?;
                        cells += 1;
                        if state != neo_proto::CellState::UpToDate {
                            not_up_to_date += 1;
                        }
                        Some(state.name())
                    })
                    .collect()
            })
            .collect();
        json!({
            "ptid": pt.ptid(),
            "replicas": pt.num_replicas(),
            "storages": storages.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "rows": rows,
            "cells": cells,
            "not_up_to_date": not_up_to_date,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo_proto::packets::{CellInfo, NodeInfo};
    use neo_proto::{Address, CellState, NodeId, NodeState};

    #[test]
    fn throughput_is_objects_per_second_over_the_window() {
        let mut activity = Activity::default();
        assert_eq!(activity.objects_per_second(), None);
        activity.record(0.0, Some(Tid(5)), Some(Oid(100)));
        assert_eq!(activity.objects_per_second(), None);
        activity.record(1.0, Some(Tid(6)), Some(Oid(150)));
        activity.record(2.0, Some(Tid(7)), Some(Oid(300)));
        assert_eq!(activity.objects_per_second(), Some(100.0));
        assert_eq!(activity.last_tid(), Some(Tid(7)));
        // Older answers leave the window, and at most 16 are kept.
        activity.record(12.5, Some(Tid(8)), Some(Oid(300)));
        assert_eq!(activity.objects_per_second(), None);
        for second in 13..100 {
            activity.record(f64::from(second) / 10.0 + 12.5, None, Some(Oid(300)));
        }
        assert!(activity.samples.len() <= MAX_SAMPLES);
    }

    #[test]
    fn the_json_has_the_grid_the_progress_and_the_alerts() {
        let mut nodes = NodeTable::new();
        for (id, state) in [(1, NodeState::Running), (2, NodeState::Down)] {
            nodes.apply(&NodeInfo {
                node_type: NodeType::Storage,
                address: Some(Address::new("127.0.0.1", 20000 + id as u16)),
                nid: Some(NodeId(id)),
                state,
                id_timestamp: None,
            });
        }
        let row = vec![
            CellInfo {
                nid: NodeId(1),
                state: CellState::UpToDate,
            },
            CellInfo {
                nid: NodeId(2),
                state: CellState::OutOfDate,
            },
        ];
        let pt = PartitionTable::from_rows(Some(3), 1, &[row.clone(), row[..1].to_vec()]).unwrap();
        let mut activity = Activity::default();
        activity.record(10.0, Some(Tid(0x040d_42d9_fef9_3adc)), Some(Oid(1)));
        let alerts = [Alert {
            level: crate::monitor::Level::Error,
            concern: crate::monitor::Concern::Lost(NodeId(2)),
            message: "S2 is DOWN".into(),
        }];
        let view = View {
            cluster: "c",
            connected: true,
            state: Some(ClusterState::Running),
            nodes: &nodes,
            pt: Some(&pt),
            activity: &activity,
            alerts: &alerts,
            summary: "RUNNING".into(),
            mail_failure: None,
            now: 10.0,
        };
        let value: Value = serde_json::from_str(&view.to_json()).unwrap();
        assert_eq!(value["state"], "RUNNING");
        assert_eq!(value["nodes"][1]["state"], "DOWN");
        assert_eq!(value["nodes"][1]["nid"], "S2");
        assert_eq!(value["pt"]["storages"], json!(["S1", "S2"]));
        assert_eq!(
            value["pt"]["rows"],
            json!([["UP_TO_DATE", "OUT_OF_DATE"], ["UP_TO_DATE", null]])
        );
        assert_eq!(value["pt"]["cells"], 3);
        assert_eq!(value["pt"]["not_up_to_date"], 1);
        assert_eq!(value["last_tid"]["tid"], "040d42d9fef93adc");
        assert_eq!(value["last_tid"]["date"], "2026-11-25 21:45:59.759426");
        assert_eq!(value["alerts"][0]["level"], "error");
        assert_eq!(value["mail_failure"], Value::Null);
    }
}
