//! Alerts: what the admin watches in its cluster and how each change is
//! reported (a structured `tracing` event, target [`ALERT_TARGET`]).
//!
//! The admin computes a [`Watched`] view after every input; [`Watch`]
//! keeps the previous one, says which concerns appeared, changed or went
//! away, and when the next cell crosses the replication lag limit. No
//! I/O and no clock: the time is given.
//!
//! Replication lag of the admin's own cluster: NEO/py's `--monitor-maxlag`
//! only measures backup clusters (upstream's last TID minus the backup
//! TID). For its own cluster this admin counts the cells that have been
//! OUT_OF_DATE for `max_lag` seconds or more, measured from when the admin
//! first saw them so (a restarted admin starts counting again).

use std::collections::{BTreeMap, BTreeSet};

use neo_cluster::{NodeTable, PartitionTable, UnixTime};
use neo_proto::{CellState, ClusterState, NodeId, NodeState, NodeType, Partition};

/// `tracing` target of every alert event, so they can be filtered or
/// routed apart from the rest of the log.
pub const ALERT_TARGET: &str = "neo::alert";

/// How serious a concern is, as logged and shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Back to normal.
    Ok,
    /// Degraded: the cluster works, with less redundancy.
    Warning,
    /// The cluster, or part of its data, is not available, or a node is
    /// lost.
    Error,
}

impl Level {
    /// The word logged and shown.
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// What a concern is about; at most one alert per concern at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Concern {
    /// The admin has no primary master (after having had one).
    Master,
    /// The cluster is not operational (neither RUNNING nor BACKINGUP).
    ClusterState,
    /// A storage owning cells, or a master, is not running.
    Lost(NodeId),
    /// Partitions without a readable cell on a running storage.
    Unreadable,
    /// Cells OUT_OF_DATE for longer than the limit.
    Lag,
}

impl Concern {
    /// The kind of concern, as logged.
    pub fn kind(self) -> &'static str {
        match self {
            Concern::Master => "master",
            Concern::ClusterState => "cluster_state",
            Concern::Lost(_) => "lost_node",
            Concern::Unreadable => "unreadable_partitions",
            Concern::Lag => "replication_lag",
        }
    }
}

/// One current concern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// How serious.
    pub level: Level,
    /// What it is about.
    pub concern: Concern,
    /// What an operator reads.
    pub message: String,
}

/// What the admin watches, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Watched {
    /// Whether the admin is identified to a primary master.
    pub connected: bool,
    /// The cluster state; `None` before the master told it.
    pub state: Option<ClusterState>,
    /// Storages owning cells and masters that are not running, with their
    /// state (the summary's DOWN counts the storages).
    pub lost: BTreeMap<NodeId, NodeState>,
    /// Partitions without a readable cell on a running storage.
    pub unreadable: Vec<Partition>,
    /// Cells OUT_OF_DATE for `max_lag` seconds or more.
    pub lagging: usize,
}

impl Watched {
    /// The concerns of this view, by concern. `had_master` says whether
    /// the admin ever had a primary master: before that, having none is
    /// not news.
    pub fn alerts(&self, had_master: bool, max_lag: f64) -> BTreeMap<Concern, Alert> {
        let mut alerts = BTreeMap::new();
        let mut add = |level, concern, message: String| {
            alerts.insert(
                concern,
                Alert {
                    level,
                    concern,
                    message,
                },
            );
        };
        if !self.connected {
            if had_master {
                add(
                    Level::Error,
                    Concern::Master,
                    "not connected to a primary master".to_owned(),
                );
            }
            return alerts;
        }
        match self.state {
            Some(ClusterState::Running | ClusterState::BackingUp) | None => {}
            Some(state) => add(
                Level::Error,
                Concern::ClusterState,
                format!("cluster is {state}, not operational"),
            ),
        }
        for (nid, state) in &self.lost {
            add(
                Level::Error,
                Concern::Lost(*nid),
                format!("{nid} is {state}"),
            );
        }
        if !self.unreadable.is_empty() {
            let count = self.unreadable.len();
            add(
                Level::Error,
                Concern::Unreadable,
                format!("{count} partition(s) without a readable cell"),
            );
        }
        if self.lagging > 0 {
            let count = self.lagging;
            add(
                Level::Warning,
                Concern::Lag,
                format!("{count} cell(s) out of date for {max_lag} s or more"),
            );
        }
        alerts
    }
}

/// The previous view and the cells being replicated.
#[derive(Debug, Default)]
pub struct Watch {
    /// Concerns as last reported.
    alerts: BTreeMap<Concern, Alert>,
    /// Since when each OUT_OF_DATE cell (partition, storage) is known so.
    out_of_date_since: BTreeMap<(Partition, NodeId), UnixTime>,
    /// Whether the admin ever had a primary master.
    had_master: bool,
    /// The time of the last update.
    updated_at: UnixTime,
}

impl Watch {
    /// Looks at the cluster as the admin knows it now; returns the alerts
    /// that appeared or changed, and those gone back to normal (at
    /// [`Level::Ok`]), in concern order.
    pub fn update(
        &mut self,
        connected: bool,
        state: Option<ClusterState>,
        nodes: &NodeTable,
        pt: Option<&PartitionTable>,
        max_lag: f64,
        now: UnixTime,
    ) -> Vec<Alert> {
        self.had_master |= connected;
        self.updated_at = now;
        let watched = self.watched(connected, state, nodes, pt, max_lag, now);
        let alerts = watched.alerts(self.had_master, max_lag);
        let mut changes = Vec::new();
        for (concern, alert) in &alerts {
            if self.alerts.get(concern) != Some(alert) {
                changes.push(alert.clone());
            }
        }
        for (concern, gone) in &self.alerts {
            if !alerts.contains_key(concern) {
                changes.push(Alert {
                    level: Level::Ok,
                    concern: *concern,
                    message: format!("resolved: {}", gone.message),
                });
            }
        }
        changes.sort_by_key(|alert| alert.concern);
        self.alerts = alerts;
        changes
    }

    /// The current concerns, most serious first.
    pub fn current(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self.alerts.values().cloned().collect();
        alerts.sort_by(|a, b| b.level.cmp(&a.level).then(a.concern.cmp(&b.concern)));
        alerts
    }

    /// Whether some cell is OUT_OF_DATE for `max_lag` or more.
    pub fn lagging(&self) -> bool {
        self.alerts.contains_key(&Concern::Lag)
    }

    /// Since when the cell OUT_OF_DATE the longest has been so, if any.
    pub fn out_of_date_since(&self) -> Option<UnixTime> {
        self.out_of_date_since
            .values()
            .copied()
            .min_by(f64::total_cmp)
    }

    /// Whether the admin ever had a primary master.
    pub fn had_master(&self) -> bool {
        self.had_master
    }

    /// When the next OUT_OF_DATE cell reaches the lag limit, if one will
    /// after the last update.
    pub fn lag_deadline(&self, max_lag: f64) -> Option<UnixTime> {
        self.out_of_date_since
            .values()
            .map(|since| since + max_lag)
            .filter(|due| *due > self.updated_at)
            .min_by(f64::total_cmp)
    }

    fn watched(
        &mut self,
        connected: bool,
        state: Option<ClusterState>,
        nodes: &NodeTable,
        pt: Option<&PartitionTable>,
        max_lag: f64,
        now: UnixTime,
    ) -> Watched {
        let running = |nid: NodeId| nodes.is_running(nid);
        let mut lost = BTreeMap::new();
        for node in nodes.of_type(NodeType::Master) {
            if node.state != NodeState::Running {
                lost.insert(node.nid, node.state);
            }
        }
        let mut unreadable = Vec::new();
        let mut out_of_date = BTreeSet::new();
        if let Some(pt) = pt {
            for nid in pt.nodes() {
                if !running(nid) {
                    let state = nodes.get(nid).map_or(NodeState::Unknown, |node| node.state);
                    lost.insert(nid, state);
                }
            }
            unreadable = pt.unreadable_partitions(running);
            for partition in 0..pt.partitions() {
                for cell in pt.cells(partition) {
                    if cell.state == CellState::OutOfDate {
                        out_of_date.insert((partition, cell.nid));
                    }
                }
            }
        }
        self.out_of_date_since
            .retain(|cell, _| out_of_date.contains(cell));
        for cell in out_of_date {
            self.out_of_date_since.entry(cell).or_insert(now);
        }
        let lagging = self
            .out_of_date_since
            .values()
            .filter(|since| now - **since >= max_lag)
            .count();
        Watched {
            connected,
            state,
            lost,
            unreadable,
            lagging,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo_proto::packets::{CellInfo, NodeInfo};
    use neo_proto::Address;

    fn storage(id: i32, state: NodeState) -> NodeInfo {
        NodeInfo {
            node_type: NodeType::Storage,
            address: Some(Address::new("127.0.0.1", 20000 + id as u16)),
            nid: Some(NodeId(id)),
            state,
            id_timestamp: None,
        }
    }

    fn table(states: [CellState; 2]) -> PartitionTable {
        let row: Vec<CellInfo> = states
            .iter()
            .enumerate()
            .map(|(index, state)| CellInfo {
                nid: NodeId(index as i32 + 1),
                state: *state,
            })
            .collect();
        PartitionTable::from_rows(Some(1), 1, &[row.clone(), row]).unwrap()
    }

    #[test]
    fn a_lost_storage_is_an_error_and_its_return_is_ok() {
        let mut watch = Watch::default();
        let mut nodes = NodeTable::new();
        nodes.apply(&storage(1, NodeState::Running));
        nodes.apply(&storage(2, NodeState::Running));
        let up = table([CellState::UpToDate; 2]);
        let running = Some(ClusterState::Running);
        assert!(watch
            .update(true, running, &nodes, Some(&up), 60.0, 0.0)
            .is_empty());

        nodes.apply(&storage(2, NodeState::Down));
        let outdated = table([CellState::UpToDate, CellState::OutOfDate]);
        let changes = watch.update(true, running, &nodes, Some(&outdated), 60.0, 1.0);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].level, Level::Error);
        assert_eq!(changes[0].concern, Concern::Lost(NodeId(2)));
        assert_eq!(changes[0].message, "S2 is DOWN");
        // Nothing new: nothing reported.
        assert!(watch
            .update(true, running, &nodes, Some(&outdated), 60.0, 2.0)
            .is_empty());
        // The lag limit is crossed at 61 s, and the deadline says so.
        assert_eq!(watch.lag_deadline(60.0), Some(61.0));
        let changes = watch.update(true, running, &nodes, Some(&outdated), 60.0, 61.0);
        assert_eq!(changes[0].concern, Concern::Lag);
        assert_eq!(changes[0].level, Level::Warning);
        assert!(watch.lagging());

        nodes.apply(&storage(2, NodeState::Running));
        let changes = watch.update(true, running, &nodes, Some(&up), 60.0, 62.0);
        let levels: Vec<(Level, Concern)> = changes.iter().map(|a| (a.level, a.concern)).collect();
        assert_eq!(
            levels,
            [
                (Level::Ok, Concern::Lost(NodeId(2))),
                (Level::Ok, Concern::Lag)
            ]
        );
        assert!(watch.current().is_empty());
    }

    #[test]
    fn unreadable_partitions_state_and_master_loss() {
        let mut watch = Watch::default();
        let mut nodes = NodeTable::new();
        // Not connected yet: not news.
        assert!(watch.update(false, None, &nodes, None, 0.0, 0.0).is_empty());
        nodes.apply(&storage(1, NodeState::Down));
        nodes.apply(&storage(2, NodeState::Down));
        let up = table([CellState::UpToDate; 2]);
        let changes = watch.update(
            true,
            Some(ClusterState::Recovering),
            &nodes,
            Some(&up),
            0.0,
            1.0,
        );
        let concerns: Vec<Concern> = changes.iter().map(|a| a.concern).collect();
        assert_eq!(
            concerns,
            [
                Concern::ClusterState,
                Concern::Lost(NodeId(1)),
                Concern::Lost(NodeId(2)),
                Concern::Unreadable
            ]
        );
        assert_eq!(changes[3].message, "2 partition(s) without a readable cell");
        assert!(changes.iter().all(|a| a.level == Level::Error));
        // The master is lost: one concern replaces the others.
        let changes = watch.update(false, None, &nodes, None, 0.0, 2.0);
        assert_eq!(changes[0].concern, Concern::Master);
        assert_eq!(changes[0].level, Level::Error);
        assert!(changes[1..].iter().all(|a| a.level == Level::Ok));
        assert_eq!(watch.current().len(), 1);
    }

    #[test]
    fn a_zero_lag_limit_reports_out_of_date_cells_at_once() {
        let mut watch = Watch::default();
        let mut nodes = NodeTable::new();
        nodes.apply(&storage(1, NodeState::Running));
        nodes.apply(&storage(2, NodeState::Running));
        let outdated = table([CellState::UpToDate, CellState::OutOfDate]);
        let running = Some(ClusterState::Running);
        let changes = watch.update(true, running, &nodes, Some(&outdated), 0.0, 5.0);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].message, "2 cell(s) out of date for 0 s or more");
        assert_eq!(watch.lag_deadline(0.0), None);
    }
}
