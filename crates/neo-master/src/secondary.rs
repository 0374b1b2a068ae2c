//! The secondary role (architecture.md §2.3): a spare master that keeps
//! one connection to the primary, redirects every node that contacts it
//! there with `NotPrimaryMaster`, and plays the primary role again when no
//! known master can be reached as primary.

use std::collections::{BTreeSet, HashMap};

use neo_cluster::UnixTime;
use neo_net::{ConnId, Input, Outbox, Output, Token};
use neo_proto::packets as p;
use neo_proto::{
    Address, ClusterState, ErrorCode, Map, NodeId, NodeState, NodeType, Packet, MAX_MASTERS,
};

use crate::election::{Elected, RETRY_INTERVAL};
use crate::master::MasterConfig;

/// Our link to the presumed primary.
#[derive(Debug, PartialEq)]
enum Link {
    /// Waiting for the time of the next attempt.
    Idle,
    /// Connecting, with the attempt's token.
    Dialing(Token),
    /// Connected; identified once it accepted us.
    Open { conn: ConnId, identified: bool },
}

/// A master playing the secondary role.
#[derive(Debug)]
pub struct Secondary {
    config: MasterConfig,
    /// The id the primary gave us, if any.
    nid: Option<NodeId>,
    /// The other masters known.
    masters: Vec<Address>,
    /// The presumed primary.
    primary: Address,
    link: Link,
    /// Masters tried since the last time a primary was reached: each once.
    failed: BTreeSet<Address>,
    last_attempt: HashMap<Address, UnixTime>,
    /// Connections other nodes opened to us, not answered yet.
    accepted: BTreeSet<ConnId>,
    /// Set when no known master can be reached as primary: this master
    /// plays the primary role again.
    give_up: bool,
    out: Outbox,
}

impl Secondary {
    /// The secondary of `elected`, knowing `masters` besides itself.
    pub(crate) fn new(
        config: MasterConfig,
        nid: Option<NodeId>,
        masters: Vec<Address>,
        elected: Elected,
    ) -> Secondary {
        let (link, nid) = match elected.identified {
            Some((conn, your_nid)) => (
                Link::Open {
                    conn,
                    identified: true,
                },
                your_nid.or(nid),
            ),
            None => (Link::Idle, nid),
        };
        tracing::info!(primary = %elected.primary, "playing the secondary role");
        let mut secondary = Secondary {
            failed: BTreeSet::from([config.address.clone()]),
            config,
            nid,
            masters,
            primary: elected.primary,
            link,
            last_attempt: HashMap::new(),
            accepted: BTreeSet::new(),
            give_up: false,
            out: Outbox::default(),
        };
        let primary = secondary.primary.clone();
        secondary.learn(&primary);
        secondary
    }

    /// The primary this master follows.
    pub fn primary(&self) -> &Address {
        &self.primary
    }

    /// Whether the primary accepted this master as its secondary.
    pub fn is_identified(&self) -> bool {
        matches!(
            self.link,
            Link::Open {
                identified: true,
                ..
            }
        )
    }

    /// When no master could be reached as primary: the masters known (to
    /// play the primary role with), and the id to keep.
    pub(crate) fn gave_up(&self) -> Option<(Vec<Address>, Option<NodeId>)> {
        self.give_up.then(|| (self.masters.clone(), self.nid))
    }

    /// Every connection this role holds, to close when it ends.
    pub(crate) fn connections(&self) -> Vec<ConnId> {
        let mut conns: Vec<ConnId> = self.accepted.iter().copied().collect();
        if let Link::Open { conn, .. } = self.link {
            conns.push(conn);
        }
        conns
    }

    fn learn(&mut self, address: &Address) {
        if *address != self.config.address
            && !self.masters.contains(address)
            && self.masters.len() < MAX_MASTERS
        {
            self.masters.push(address.clone());
        }
    }

    /// All masters known, this one first, as `NotPrimaryMaster` lists them.
    fn known_masters(&self) -> Vec<Address> {
        let mut known = vec![self.config.address.clone()];
        known.extend(self.masters.iter().cloned());
        known
    }

    pub(crate) fn handle(&mut self, input: Input, now: UnixTime) {
        match input {
            Input::Start | Input::Timeout | Input::AnswerPart { .. } => {}
            Input::Accepted { conn } => {
                self.accepted.insert(conn);
            }
            Input::Connected { conn, token } => {
                if self.link != Link::Dialing(token) {
                    self.out.close(conn);
                    return;
                }
                self.link = Link::Open {
                    conn,
                    identified: false,
                };
                let request = p::RequestIdentification {
                    node_type: NodeType::Master,
                    nid: self.nid,
                    address: Some(self.config.address.clone()),
                    cluster: self.config.cluster.clone(),
                    id_timestamp: None,
                    extra: Map::new(),
                };
                self.out.request(conn, token, request);
            }
            Input::ConnectFailed { token } => {
                if self.link == Link::Dialing(token) {
                    self.primary_failed(now);
                }
            }
            Input::Packet {
                conn,
                msg_id,
                packet,
            } => self.on_packet(conn, msg_id, packet, now),
            Input::Answer { conn, packet, .. } => {
                if self.link_conn() == Some(conn) {
                    self.on_primary_answer(conn, packet, now);
                }
            }
            Input::Closed { conn } => {
                self.accepted.remove(&conn);
                if self.link_conn() == Some(conn) {
                    self.primary_failed(now);
                }
            }
        }
        self.connect(now);
    }

    fn link_conn(&self) -> Option<ConnId> {
        match self.link {
            Link::Open { conn, .. } => Some(conn),
            _ => None,
        }
    }

    fn on_packet(&mut self, conn: ConnId, msg_id: u32, packet: Packet, now: UnixTime) {
        if let Packet::Ping(_) = packet {
            return self.out.answer(conn, msg_id, p::Pong {});
        }
        if self.link_conn() == Some(conn) {
            return self.on_primary_packet(packet, now);
        }
        if !self.accepted.contains(&conn) {
            return;
        }
        self.accepted.remove(&conn);
        let Packet::RequestIdentification(request) = packet else {
            return self.refuse(conn, msg_id, "not identified");
        };
        if request.cluster != self.config.cluster {
            return self.refuse(conn, msg_id, "invalid cluster name");
        }
        if request.address.as_ref() == Some(&self.config.address) {
            return self.refuse(conn, msg_id, "address conflicts with this master");
        }
        let mut primary = Some(self.primary.clone());
        if request.address.as_ref() == Some(&self.primary) {
            primary = None;
        } else if !self.is_identified() {
            if let (NodeType::Master, Some(address)) = (request.node_type, &request.address) {
                self.learn(address);
                if request.id_timestamp.is_some() {
                    // An electing master while we have no primary yet:
                    // follow it (§2.3 step 1).
                    self.out.close(conn);
                    return self.follow(address.clone(), now);
                }
            }
            primary = None;
        }
        let known = self.known_masters();
        let index = primary.and_then(|primary| known.iter().position(|m| *m == primary));
        self.out.notify(
            conn,
            p::NotPrimaryMaster {
                primary: index.map(|i| i as u32),
                known_masters: known,
            },
        );
        self.out.close(conn);
    }

    /// Answers a protocol error and closes, as NEO does.
    fn refuse(&mut self, conn: ConnId, msg_id: u32, message: &str) {
        self.out.answer(
            conn,
            msg_id,
            p::Error::new(ErrorCode::ProtocolError, message),
        );
        self.out.close(conn);
    }

    fn on_primary_answer(&mut self, conn: ConnId, packet: Packet, now: UnixTime) {
        match packet {
            Packet::AcceptIdentification(accept) if accept.node_type == NodeType::Master => {
                if let Some(nid) = accept.your_nid {
                    neo_log::set_node(&nid.to_string());
                }
                tracing::info!(primary = %self.primary, nid = ?accept.your_nid, "identified to the primary master");
                self.nid = accept.your_nid.or(self.nid);
                self.link = Link::Open {
                    conn,
                    identified: true,
                };
            }
            other => {
                tracing::info!(primary = %self.primary, "presumed primary answered {}", other.name());
                self.out.close(conn);
                self.primary_failed(now);
            }
        }
    }

    fn on_primary_packet(&mut self, packet: Packet, now: UnixTime) {
        match packet {
            Packet::NotPrimaryMaster(redirect) => {
                for master in &redirect.known_masters {
                    self.learn(master);
                }
                let named = redirect
                    .primary
                    .and_then(|i| redirect.known_masters.get(i as usize))
                    .filter(|named| **named != self.config.address && **named != self.primary)
                    .cloned();
                if let Some(named) = named {
                    self.follow(named, now);
                }
                // Else the peer closes the connection: the next master.
            }
            Packet::NotifyNodeInformation(notification) => {
                for node in &notification.nodes {
                    if node.node_type != NodeType::Master {
                        continue;
                    }
                    if let Some(address) = &node.address {
                        self.learn(address);
                    }
                    if node.nid.is_some() && node.nid == self.nid && node.state == NodeState::Down {
                        tracing::info!("the primary says this master is DOWN: exiting");
                        self.out.exit(Ok(()));
                    }
                }
            }
            Packet::NotifyClusterInformation(info) if info.state == ClusterState::Stopping => {
                tracing::info!("the cluster is stopping: exiting");
                self.out.exit(Ok(()));
            }
            _ => {}
        }
    }

    /// Follows another master as primary.
    fn follow(&mut self, primary: Address, now: UnixTime) {
        if let Link::Open { conn, .. } = self.link {
            self.out.close(conn);
        }
        tracing::info!(%primary, "following another primary");
        self.learn(&primary);
        self.primary = primary;
        self.link = Link::Idle;
        self.connect(now);
    }

    /// The connection to the presumed primary failed or closed (§2.3 step
    /// 4): the same one again if it had been reached, else the next master
    /// not tried; none left, play the primary role.
    fn primary_failed(&mut self, now: UnixTime) {
        let reached = self.is_identified();
        self.link = Link::Idle;
        if reached {
            tracing::info!(primary = %self.primary, "lost the primary master");
            self.failed = BTreeSet::from([self.config.address.clone()]);
        } else {
            match self.masters.iter().find(|m| !self.failed.contains(*m)) {
                Some(next) => self.primary = next.clone(),
                None => {
                    tracing::info!("no master reachable as primary: playing the primary role");
                    self.give_up = true;
                    return;
                }
            }
        }
        self.connect(now);
    }

    /// Connects to the presumed primary when the link is idle and the
    /// attempt is due.
    fn connect(&mut self, now: UnixTime) {
        if self.link != Link::Idle || self.give_up {
            return;
        }
        let due = self
            .last_attempt
            .get(&self.primary)
            .is_none_or(|last| now >= last + RETRY_INTERVAL);
        if !due {
            return;
        }
        let token = Token::unique();
        self.failed.insert(self.primary.clone());
        self.last_attempt.insert(self.primary.clone(), now);
        self.link = Link::Dialing(token);
        self.out.connect(token, self.primary.clone());
    }

    pub(crate) fn poll_output(&mut self) -> Vec<Output> {
        self.out.take()
    }

    pub(crate) fn poll_timeout(&self) -> Option<UnixTime> {
        if self.link != Link::Idle || self.give_up {
            return None;
        }
        Some(
            self.last_attempt
                .get(&self.primary)
                .map_or(0.0, |last| last + RETRY_INTERVAL),
        )
    }
}
