//! The primary role's side of the election (architecture.md §2.1-2.2).
//!
//! A master plays the primary role from its start, with an election key:
//! the time it started to play it and its address, the smallest winning.
//! While the cluster is RECOVERING it challenges every other known master
//! (`RequestIdentification` carrying the key's time) and answers their
//! challenges: a peer with a smaller key makes it lose (no answer, the
//! connection dropped), any other peer is accepted as a secondary. A
//! challenge accepted by its peer also means losing: that peer is the
//! primary. Once out of RECOVERING, masters that connect simply become
//! secondaries. Losing is reported in [`Election::lost_to`]; the node
//! around the roles ([`crate::MasterNode`]) then switches to the secondary
//! role.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use neo_cluster::UnixTime;
use neo_net::{ConnId, Token};
use neo_proto::packets as p;
use neo_proto::{Address, ClusterState, Map, NodeId, NodeState, NodeType, Packet, MAX_MASTERS};

use crate::master::Master;

/// At most one connection attempt per master address per this many
/// seconds: the same limit as every node's search for the primary.
pub(crate) use neo_cluster::RETRY_INTERVAL;

/// Who won against this master.
#[derive(Clone, Debug, PartialEq)]
pub struct Elected {
    /// The primary's address.
    pub primary: Address,
    /// Our connection to it, already identified, when it accepted our
    /// challenge; with the id it gave us.
    pub identified: Option<(ConnId, Option<NodeId>)>,
}

/// The election state of a master playing the primary role.
#[derive(Debug, Default)]
pub(crate) struct Election {
    /// The key's time: when this master started to play the primary role
    /// (set at start).
    pub started: Option<f64>,
    /// Other masters known: configured, then learnt.
    pub masters: Vec<Address>,
    /// Connection attempts of challenges, by token.
    pub dialing: HashMap<Token, Address>,
    /// Our challenge connections, by connection.
    pub challenges: BTreeMap<ConnId, Address>,
    /// When each master was last tried.
    pub last_attempt: HashMap<Address, UnixTime>,
    /// Masters whose last challenge found nobody (refused, closed): the
    /// election does not wait for them.
    pub unreachable: BTreeSet<Address>,
    /// Set when this master lost.
    pub lost_to: Option<Elected>,
}

impl Election {
    /// Learns a master's address (not ours), within [`MAX_MASTERS`].
    pub fn learn(&mut self, address: &Address, own: &Address) -> bool {
        if address == own || self.masters.contains(address) || self.masters.len() >= MAX_MASTERS {
            return false;
        }
        self.masters.push(address.clone());
        true
    }
}

impl Master {
    /// The key's time while the election runs (RECOVERING), else `None`.
    pub(crate) fn election_key(&self) -> Option<f64> {
        (self.state == ClusterState::Recovering)
            .then_some(self.election.started)
            .flatten()
    }

    /// Addresses of the masters identified to us (our secondaries).
    fn secondaries(&self) -> BTreeSet<Address> {
        self.identified()
            .into_iter()
            .filter(|(_, node_type, _)| *node_type == NodeType::Master)
            .filter_map(|(nid, _, _)| self.nodes.get(nid)?.address.clone())
            .collect()
    }

    /// Whether no other master can still win: each known one is our
    /// secondary or could not be reached. New storage ids are handed out
    /// only then, so that two candidates never give the same id to two
    /// storages (NEO/py does, and then never leaves RECOVERING).
    pub(crate) fn election_settled(&self) -> bool {
        let secondaries = self.secondaries();
        self.election.masters.iter().all(|master| {
            secondaries.contains(master) || self.election.unreachable.contains(master)
        })
    }

    /// A master asks to identify while we elect: `true` when its key is
    /// smaller, so it wins; the connection is dropped and we follow it.
    pub(crate) fn challenged(&mut self, conn: ConnId, request: &p::RequestIdentification) -> bool {
        let (Some(key), Some(peer_key), Some(address)) = (
            self.election_key(),
            request.id_timestamp,
            request.address.as_ref(),
        ) else {
            return false;
        };
        if (peer_key, address) >= (key, &self.config.address) {
            return false;
        }
        tracing::info!(primary = %address, "a master with an older key is electing: losing the election");
        self.out.close(conn);
        self.peers.remove(&conn);
        self.election.learn(address, &self.config.address);
        self.election.lost_to = Some(Elected {
            primary: address.clone(),
            identified: None,
        });
        true
    }

    /// Known masters to challenge, with when each may be tried next: not
    /// our secondaries, not being dialed or challenged already.
    fn to_challenge(&self) -> Vec<(Address, UnixTime)> {
        let secondaries = self.secondaries();
        let busy: BTreeSet<&Address> = self
            .election
            .dialing
            .values()
            .chain(self.election.challenges.values())
            .collect();
        self.election
            .masters
            .iter()
            .filter(|master| !secondaries.contains(*master) && !busy.contains(master))
            .map(|master| {
                let due = self
                    .election
                    .last_attempt
                    .get(master)
                    .map_or(0.0, |last| last + RETRY_INTERVAL);
                (master.clone(), due)
            })
            .collect()
    }

    /// While electing, challenges every known master not connected yet, at
    /// most once per [`RETRY_INTERVAL`] each.
    pub(crate) fn challenge_masters(&mut self, now: UnixTime) {
        if self.election_key().is_none() || self.election.lost_to.is_some() {
            return;
        }
        for (master, due) in self.to_challenge() {
            if due > now {
                continue;
            }
            let token = Token::unique();
            self.election.last_attempt.insert(master.clone(), now);
            self.election.dialing.insert(token, master.clone());
            self.out.connect(token, master);
        }
    }

    /// When the next challenge is due, if one waits.
    pub(crate) fn next_challenge(&self) -> Option<UnixTime> {
        self.election_key()?;
        self.to_challenge()
            .into_iter()
            .map(|(_, due)| due)
            .min_by(f64::total_cmp)
    }

    /// A challenge connection is open: present our key.
    pub(crate) fn on_connected(&mut self, conn: ConnId, token: Token) {
        let Some(address) = self.election.dialing.remove(&token) else {
            self.out.close(conn);
            return;
        };
        let Some(key) = self.election_key() else {
            self.out.close(conn);
            return;
        };
        self.election.challenges.insert(conn, address);
        let request = p::RequestIdentification {
            node_type: NodeType::Master,
            nid: Some(self.nid),
            address: Some(self.config.address.clone()),
            cluster: self.config.cluster.clone(),
            id_timestamp: Some(key),
            extra: Map::new(),
        };
        self.out.request(conn, token, request);
    }

    pub(crate) fn on_connect_failed(&mut self, token: Token) {
        if let Some(address) = self.election.dialing.remove(&token) {
            self.election.unreachable.insert(address);
        }
    }

    /// Whether `conn` is one of our challenges (not a peer of the cluster).
    pub(crate) fn is_challenge(&self, conn: ConnId) -> bool {
        self.election.challenges.contains_key(&conn)
    }

    /// The answer to a challenge.
    pub(crate) fn on_challenge_answer(&mut self, conn: ConnId, packet: Packet) {
        let Some(address) = self.election.challenges.get(&conn).cloned() else {
            return;
        };
        match packet {
            Packet::AcceptIdentification(accept) if accept.node_type == NodeType::Master => {
                tracing::info!(primary = %address, "another master accepted us: it won the election");
                self.election.challenges.remove(&conn);
                self.election.lost_to = Some(Elected {
                    primary: address,
                    identified: Some((conn, accept.your_nid)),
                });
            }
            Packet::NotPrimaryMaster(redirect) => {
                let own = self.config.address.clone();
                for master in &redirect.known_masters {
                    self.election.learn(master, &own);
                }
                let primary = redirect
                    .primary
                    .and_then(|index| redirect.known_masters.get(index as usize))
                    .filter(|primary| **primary != own);
                // A peer that does not know yet that we won against the
                // master it names: keep electing.
                if let Some(primary) = primary.filter(|p| !self.secondaries().contains(*p)) {
                    tracing::info!(%primary, "a secondary names another primary: following it");
                    self.election.lost_to = Some(Elected {
                        primary: primary.clone(),
                        identified: None,
                    });
                }
                self.drop_challenge(conn);
            }
            other => {
                tracing::warn!(master = %address, "challenge answered {}", other.name());
                self.drop_challenge(conn);
            }
        }
    }

    fn drop_challenge(&mut self, conn: ConnId) {
        self.out.close(conn);
        if let Some(address) = self.election.challenges.remove(&conn) {
            self.election.unreachable.insert(address);
        }
    }

    /// A challenge connection closed.
    pub(crate) fn on_challenge_closed(&mut self, conn: ConnId) {
        if let Some(address) = self.election.challenges.remove(&conn) {
            self.election.unreachable.insert(address);
        }
    }

    /// The election is over (out of RECOVERING): challenges still open
    /// are closed; known masters that are not our secondaries are DOWN for
    /// whoever asks.
    pub(crate) fn end_election(&mut self) {
        for conn in std::mem::take(&mut self.election.challenges).into_keys() {
            self.out.close(conn);
        }
        self.election.dialing.clear();
    }

    /// Known masters that are not identified: NEO lists them (without id,
    /// DOWN) to the nodes that identify, which is how they learn them.
    pub(crate) fn unidentified_masters(&self) -> Vec<p::NodeInfo> {
        self.election
            .masters
            .iter()
            .filter(|master| self.nodes.by_address(master).is_none())
            .map(|master| p::NodeInfo {
                node_type: NodeType::Master,
                address: Some(master.clone()),
                nid: None,
                state: NodeState::Down,
                id_timestamp: None,
            })
            .collect()
    }

    /// The masters known, this one included, as `NotPrimaryMaster` lists
    /// them.
    pub fn known_masters(&self) -> Vec<Address> {
        let mut masters = vec![self.config.address.clone()];
        masters.extend(self.election.masters.iter().cloned());
        masters
    }

    /// Every connection this master holds, to close when its role ends.
    pub(crate) fn connections(&self) -> Vec<neo_net::ConnId> {
        self.peers
            .keys()
            .chain(self.election.challenges.keys())
            .copied()
            .collect()
    }

    /// Who won, once this master lost the election.
    pub fn lost_to(&self) -> Option<&Elected> {
        self.election.lost_to.as_ref()
    }
}
