//! The storages' import progress (the Importer, architecture.md §12.7),
//! shown by `print summary`.
//!
//! Each storage the master reports RUNNING is asked once, on a connection
//! of its own that identifies as nothing, `AskMonitorInformation`: ours
//! answer with the progress of their import, and with a warning while it
//! goes on, so that they are asked again every [`PROBE_INTERVAL`]; a
//! storage that does not import is not asked again until it restarts.
//! NEO/py's storages refuse the question (an error, then they close), and
//! are not asked again either. A connection is closed once answered.

use std::collections::BTreeMap;

use neo_cluster::{NodeTable, UnixTime};
use neo_net::{ConnId, Token};
use neo_proto::{Address, NodeId, NodeState, NodeType, Packet};

/// Seconds between two questions to a storage that imports.
pub(crate) const PROBE_INTERVAL: f64 = 2.0;

/// Where the admin stands with one storage.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Probe {
    /// To ask from this time on.
    Due(UnixTime),
    /// Connecting to ask.
    Connecting(Token),
    /// Asked on this connection.
    Asked(ConnId),
    /// Does not import, or refused the question: not asked again while it
    /// runs.
    Done,
}

/// The storages' import progress.
#[derive(Debug, Default)]
pub(crate) struct Imports {
    probes: BTreeMap<NodeId, Probe>,
    /// The last progress each storage reported, while it runs.
    summaries: BTreeMap<NodeId, String>,
}

impl Imports {
    /// Follows the node table: a storage that runs is to be asked, one that
    /// stopped is forgotten (asked again once back).
    pub fn update(&mut self, nodes: &NodeTable, now: UnixTime) {
        let running: Vec<NodeId> = nodes
            .of_type(NodeType::Storage)
            .filter(|node| node.state == NodeState::Running)
            .map(|node| node.nid)
            .collect();
        self.probes.retain(|nid, _| running.contains(nid));
        self.summaries.retain(|nid, _| running.contains(nid));
        for nid in running {
            self.probes.entry(nid).or_insert(Probe::Due(now));
        }
    }

    /// The storages to connect to now, with their addresses; `token`
    /// gives each attempt its token.
    pub fn due(
        &mut self,
        nodes: &NodeTable,
        now: UnixTime,
        mut token: impl FnMut() -> Token,
    ) -> Vec<(Token, Address)> {
        let mut connect = Vec::new();
        for (nid, probe) in &mut self.probes {
            if !matches!(*probe, Probe::Due(at) if at <= now) {
                continue;
            }
            match nodes.get(*nid).and_then(|node| node.address.clone()) {
                Some(address) => {
                    let attempt = token();
                    *probe = Probe::Connecting(attempt);
                    connect.push((attempt, address));
                }
                None => *probe = Probe::Done,
            }
        }
        connect
    }

    /// When a storage is next to be asked.
    pub fn deadline(&self) -> Option<UnixTime> {
        self.probes
            .values()
            .filter_map(|probe| match probe {
                Probe::Due(at) => Some(*at),
                _ => None,
            })
            .min_by(f64::total_cmp)
    }

    /// A connection of ours was made: the storage to ask on it, if it is
    /// one of these.
    pub fn connected(&mut self, token: Token, conn: ConnId) -> Option<NodeId> {
        let (nid, probe) = self
            .probes
            .iter_mut()
            .find(|(_, probe)| **probe == Probe::Connecting(token))?;
        *probe = Probe::Asked(conn);
        Some(*nid)
    }

    /// A connection attempt of ours failed: tried again later.
    pub fn connect_failed(&mut self, token: Token, now: UnixTime) -> bool {
        match self
            .probes
            .values_mut()
            .find(|probe| **probe == Probe::Connecting(token))
        {
            Some(probe) => {
                *probe = Probe::Due(now + PROBE_INTERVAL);
                true
            }
            None => false,
        }
    }

    /// The answer of storage `nid`.
    pub fn answered(&mut self, nid: NodeId, packet: Packet, now: UnixTime) {
        let next = match packet {
            Packet::AnswerMonitorInformation(answer) => {
                if answer.summary.is_empty() {
                    self.summaries.remove(&nid);
                } else {
                    self.summaries.insert(nid, answer.summary);
                }
                if answer.warning.is_empty() {
                    Probe::Done
                } else {
                    Probe::Due(now + PROBE_INTERVAL)
                }
            }
            other => {
                tracing::debug!(%nid, packet = other.name(), "storage does not tell its import");
                Probe::Done
            }
        };
        if let Some(probe) = self.probes.get_mut(&nid) {
            *probe = next;
        }
    }

    /// A connection closed: if it was a question still unanswered, the
    /// storage is not asked again while it runs.
    pub fn closed(&mut self, conn: ConnId) -> bool {
        match self
            .probes
            .values_mut()
            .find(|probe| **probe == Probe::Asked(conn))
        {
            Some(probe) => {
                *probe = Probe::Done;
                true
            }
            None => false,
        }
    }

    /// Whether `conn` is one of ours.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.probes
            .values()
            .any(|probe| *probe == Probe::Asked(conn))
    }

    /// `print summary`'s lines: `S1: import: 42.0% (…)`, one per storage.
    pub fn lines(&self) -> String {
        self.summaries
            .iter()
            .map(|(nid, summary)| format!("\n{nid}: {summary}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use neo_cluster::Node;
    use neo_proto::packets as p;

    use super::*;

    fn storage(number: u32, state: NodeState) -> Node {
        Node {
            nid: NodeId::new(NodeType::Storage, number).unwrap(),
            node_type: NodeType::Storage,
            address: Some(Address::new("127.0.0.1", 20000 + number as u16)),
            state,
            id_timestamp: Some(1.0),
        }
    }

    fn answer(summary: &str, importing: bool) -> Packet {
        p::AnswerMonitorInformation {
            warning: if importing { vec![None] } else { Vec::new() },
            problem: Vec::new(),
            summary: summary.to_owned(),
        }
        .into()
    }

    #[test]
    fn an_importing_storage_is_asked_until_it_is_done_and_others_once() {
        let mut nodes = NodeTable::new();
        nodes.insert(storage(1, NodeState::Running));
        nodes.insert(storage(2, NodeState::Running));
        nodes.insert(storage(3, NodeState::Down));
        let (s1, s2) = (
            nodes.iter().next().unwrap().nid,
            NodeId::new(NodeType::Storage, 2).unwrap(),
        );
        let mut imports = Imports::default();
        let mut next = 0;
        let mut token = || {
            next += 1;
            Token(next)
        };
        imports.update(&nodes, 0.0);
        let asked = imports.due(&nodes, 0.0, &mut token);
        assert_eq!(asked.len(), 2, "the running storages only");
        assert_eq!(imports.deadline(), None);
        assert_eq!(imports.connected(asked[0].0, ConnId(10)), Some(s1));
        assert_eq!(imports.connected(asked[1].0, ConnId(11)), Some(s2));
        assert!(imports.owns(ConnId(10)));
        imports.answered(s1, answer("import: 10.0% (…)", true), 0.5);
        imports.answered(s2, answer("", false), 0.5);
        assert_eq!(imports.lines(), format!("\n{s1}: import: 10.0% (…)"));
        // Only the importing one, again after the interval.
        assert_eq!(imports.deadline(), Some(0.5 + PROBE_INTERVAL));
        assert!(imports.due(&nodes, 1.0, &mut token).is_empty());
        let again = imports.due(&nodes, 0.5 + PROBE_INTERVAL, &mut token);
        assert_eq!(again.len(), 1);
        imports.connected(again[0].0, ConnId(12));
        imports.answered(s1, answer("import: all data are imported; …", false), 3.0);
        assert_eq!(imports.deadline(), None);
        assert!(imports.lines().contains("all data are imported"));
        // Stopped, it is forgotten; back, it is asked again.
        nodes.insert(storage(1, NodeState::Down));
        imports.update(&nodes, 4.0);
        assert_eq!(imports.lines(), "");
        nodes.insert(storage(1, NodeState::Running));
        imports.update(&nodes, 5.0);
        assert_eq!(imports.deadline(), Some(5.0));
    }

    #[test]
    fn a_storage_that_refuses_or_fails_is_left_alone_or_tried_later() {
        let mut nodes = NodeTable::new();
        nodes.insert(storage(1, NodeState::Running));
        let s1 = nodes.iter().next().unwrap().nid;
        let mut imports = Imports::default();
        imports.update(&nodes, 0.0);
        let asked = imports.due(&nodes, 0.0, || Token(1));
        // Unreachable: tried again later.
        assert!(imports.connect_failed(asked[0].0, 0.0));
        assert_eq!(imports.deadline(), Some(PROBE_INTERVAL));
        let asked = imports.due(&nodes, PROBE_INTERVAL, || Token(2));
        imports.connected(asked[0].0, ConnId(7));
        // NEO/py's storage: an error, or the connection closed.
        let error = p::Error::new(neo_proto::ErrorCode::ProtocolError, "unexpected packet");
        imports.answered(s1, error.into(), 3.0);
        assert_eq!(imports.deadline(), None);
        assert!(!imports.closed(ConnId(7)), "answered already");
        assert_eq!(imports.lines(), "");
    }
}
