//! The node's peers besides the master (protocol.md §9.3, §9.5): who may
//! identify to it (clients the master reported RUNNING, other storages,
//! anonymous storages of a backup cluster), and its links to other
//! storages for replication and replica checks: connecting out and
//! identifying as a storage, one connection per pair of storages
//! whichever started it, and `CloseClient` once the node is done with its
//! own requests on a link.

use std::collections::BTreeMap;

use neo_cluster::UnixTime;
use neo_net::{ConnId, Token};
use neo_proto::packets as p;
use neo_proto::{ErrorCode, Map, NodeId, NodeState, NodeType, Packet};

use super::{Asked, Storage};

/// How long a link to another storage stays open once the node stopped
/// using it for its own requests (NEO's idle timer, protocol.md §9.5).
pub(super) const IDLE_SECONDS: f64 = 100.0;

/// What a connection other than the master's is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Peer {
    /// Accepted, not identified yet.
    Unidentified,
    /// An identified client.
    Client(NodeId),
    /// Another storage, identified to us or by us; `None` for a storage of
    /// a backup cluster, which identifies without a node id.
    Storage(Option<NodeId>),
}

/// The node's connection to another storage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Link {
    /// Connecting out, with the token of the attempt.
    Connecting { token: Token },
    /// Connected out, our identification not answered yet.
    Identifying { conn: ConnId },
    /// Identified, whichever end connected. `idle_since`: when the node
    /// stopped using it for its own requests.
    Ready {
        conn: ConnId,
        idle_since: Option<UnixTime>,
    },
}

/// Links to other storages, by node id.
#[derive(Debug, Default)]
pub(super) struct Links {
    by_nid: BTreeMap<NodeId, Link>,
}

impl Links {
    /// The storage a connection attempt is for.
    fn attempt(&self, token: Token) -> Option<NodeId> {
        self.by_nid
            .iter()
            .find(|(_, link)| **link == Link::Connecting { token })
            .map(|(nid, _)| *nid)
    }

    /// The storage whose link is `conn`.
    pub(super) fn of_conn(&self, conn: ConnId) -> Option<NodeId> {
        self.by_nid.iter().find_map(|(nid, link)| match link {
            Link::Identifying { conn: c } | Link::Ready { conn: c, .. } if *c == conn => Some(*nid),
            _ => None,
        })
    }

    /// The identified connection to `nid`.
    pub(super) fn ready(&self, nid: NodeId) -> Option<ConnId> {
        match self.by_nid.get(&nid) {
            Some(Link::Ready { conn, .. }) => Some(*conn),
            _ => None,
        }
    }

    /// When the first idle link is to be given up.
    pub(super) fn idle_deadline(&self) -> Option<UnixTime> {
        self.by_nid
            .values()
            .filter_map(|link| match link {
                Link::Ready {
                    idle_since: Some(since),
                    ..
                } => Some(since + IDLE_SECONDS),
                _ => None,
            })
            .min_by(f64::total_cmp)
    }

    /// Forgets every link (operation stopped: their connections close).
    pub(super) fn clear(&mut self) {
        self.by_nid.clear();
    }
}

impl Storage {
    /// Identification of a client or a storage (protocol.md §9.3).
    pub(super) fn identify_peer(
        &mut self,
        conn: ConnId,
        msg_id: u32,
        request: p::RequestIdentification,
    ) {
        if !self.operational {
            return self.refuse(conn, msg_id, ErrorCode::NotReady, "Retry Later");
        }
        if request.cluster != self.config.cluster {
            let message = "invalid cluster name";
            return self.refuse(conn, msg_id, ErrorCode::ProtocolError, message);
        }
        let nid = match (request.node_type, request.nid) {
            (NodeType::Storage, None) => {
                // A storage of a backup cluster replicating from us.
                self.peers.insert(conn, Peer::Storage(None));
                let accept = p::AcceptIdentification {
                    node_type: NodeType::Storage,
                    nid: None,
                    your_nid: None,
                };
                return self.answer(conn, msg_id, accept);
            }
            (NodeType::Client | NodeType::Storage, Some(nid)) => nid,
            (NodeType::Client, None) => {
                let message = "a client needs a node id";
                return self.refuse(conn, msg_id, ErrorCode::ProtocolError, message);
            }
            (other, _) => {
                let message = format!("{other} nodes do not identify to a storage");
                return self.refuse(conn, msg_id, ErrorCode::ProtocolError, &message);
            }
        };
        if Some(nid) == self.nid {
            let message = "node id conflict or loopback connection";
            return self.refuse(conn, msg_id, ErrorCode::ProtocolError, message);
        }
        // Only the master's word identifies a node (§1.5); clients must
        // be running.
        let known = self.nodes.get(nid).is_some_and(|node| {
            node.node_type == request.node_type
                && node.id_timestamp == request.id_timestamp
                && (node.node_type == NodeType::Storage || node.state == NodeState::Running)
        });
        if !known {
            if request
                .id_timestamp
                .is_some_and(|t| t > self.last_notification)
            {
                // The master's notification about this node is in flight.
                if self.early_identifications.len() >= self.config.limits.early_identifications {
                    return self.refuse(conn, msg_id, ErrorCode::NotReady, "Retry Later");
                }
                self.early_identifications.push((conn, msg_id, request));
                return;
            }
            return self.refuse(conn, msg_id, ErrorCode::NotReady, "unknown by master");
        }
        let peer = if request.node_type == NodeType::Storage {
            if !self.accept_link(nid, conn) {
                return self.refuse(conn, msg_id, ErrorCode::ProtocolError, "already connected");
            }
            Peer::Storage(Some(nid))
        } else {
            Peer::Client(nid)
        };
        self.peers.insert(conn, peer);
        let accept = p::AcceptIdentification {
            node_type: NodeType::Storage,
            nid: self.nid,
            your_nid: Some(nid),
        };
        self.answer(conn, msg_id, accept);
        if peer == Peer::Storage(Some(nid)) {
            self.storage_ready(nid);
        }
    }

    /// Whether `conn`, from storage `nid`, becomes the link to it: one
    /// connection per pair of storages. When both connected at once, the
    /// one the greater id started stays: the smaller id takes the
    /// incoming one and gives up its own, not identified yet; the greater
    /// refuses the incoming one (protocol.md §9.3).
    fn accept_link(&mut self, nid: NodeId, conn: ConnId) -> bool {
        let own_is_smaller = self.nid.is_some_and(|own| own < nid);
        match self.links.by_nid.get(&nid).copied() {
            None => {}
            Some(Link::Connecting { .. }) if own_is_smaller => {}
            Some(Link::Identifying { conn: outgoing }) if own_is_smaller => {
                self.peers.remove(&outgoing);
                self.asked.closed(outgoing);
                self.out.close(outgoing);
            }
            Some(_) => return false,
        }
        let link = Link::Ready {
            conn,
            idle_since: None,
        };
        self.links.by_nid.insert(nid, link);
        true
    }

    /// The identified connection to storage `nid`, which the node uses for
    /// its own requests from now on; `None` while it connects (the link
    /// then says when it is ready: [`Storage::storage_ready`]).
    pub(super) fn storage_conn(&mut self, nid: NodeId) -> Option<ConnId> {
        match self.links.by_nid.get_mut(&nid) {
            Some(Link::Ready { conn, idle_since }) => {
                *idle_since = None;
                return Some(*conn);
            }
            Some(_) => return None,
            None => {}
        }
        let address = self.nodes.get(nid).and_then(|node| node.address.clone());
        match address {
            Some(address) if Some(nid) != self.nid => {
                let token = self.asked.fresh();
                self.links.by_nid.insert(nid, Link::Connecting { token });
                tracing::debug!(%nid, %address, "connecting to a storage");
                self.out.connect(token, address);
            }
            _ => tracing::warn!(%nid, "no address to connect to this storage"),
        }
        None
    }

    /// The node no longer needs storage `nid` for its own requests: if
    /// nothing else does, the link goes idle and ends after
    /// [`IDLE_SECONDS`].
    pub(super) fn release_storage(&mut self, nid: NodeId) {
        if self.replication_uses(nid) || self.check_uses(nid) {
            return;
        }
        if let Some(Link::Ready { idle_since, .. }) = self.links.by_nid.get_mut(&nid) {
            idle_since.get_or_insert(self.now);
        }
    }

    /// Ends the node's use of links idle for [`IDLE_SECONDS`]: `CloseClient`
    /// (the peer may still use it), or a close.
    pub(super) fn close_idle_links(&mut self) {
        for link in self.links.by_nid.values_mut() {
            if let Link::Ready { conn, idle_since } = link {
                if idle_since.is_some_and(|since| since + IDLE_SECONDS <= self.now) {
                    *idle_since = None;
                    self.out.close_client(*conn);
                }
            }
        }
    }

    /// A connection attempt of ours succeeded: if it is for a storage,
    /// identify to it (protocol.md §9.3); whether it was.
    pub(super) fn on_storage_connected(&mut self, conn: ConnId, token: Token) -> bool {
        let Some(nid) = self.links.attempt(token) else {
            return false;
        };
        self.links.by_nid.insert(nid, Link::Identifying { conn });
        self.peers.insert(conn, Peer::Storage(Some(nid)));
        let request = p::RequestIdentification {
            node_type: NodeType::Storage,
            nid: self.nid,
            address: Some(self.config.address.clone()),
            cluster: self.config.cluster.clone(),
            id_timestamp: self.id_timestamp,
            extra: Map::new(),
        };
        let why = Asked::StorageIdentification(nid);
        self.asked.send(&mut self.out, conn, why, request);
        true
    }

    /// A connection attempt of ours failed: if it was for a storage, the
    /// storage is lost; whether it was.
    pub(super) fn on_storage_connect_failed(&mut self, token: Token) -> bool {
        let Some(nid) = self.links.attempt(token) else {
            return false;
        };
        self.links.by_nid.remove(&nid);
        self.storage_lost(nid);
        true
    }

    /// The answer of storage `nid` to our identification.
    pub(super) fn on_storage_identification(&mut self, conn: ConnId, nid: NodeId, packet: Packet) {
        let accepted = match &packet {
            Packet::AcceptIdentification(accept) => {
                accept.node_type == NodeType::Storage
                    && accept.nid == Some(nid)
                    && accept.your_nid.is_none_or(|yours| Some(yours) == self.nid)
            }
            _ => false,
        };
        if self.links.by_nid.get(&nid) != Some(&Link::Identifying { conn }) {
            // Replaced by the peer's own connection meanwhile.
            return;
        }
        if accepted {
            let link = Link::Ready {
                conn,
                idle_since: None,
            };
            self.links.by_nid.insert(nid, link);
            return self.storage_ready(nid);
        }
        tracing::warn!(%nid, answer = ?packet, "the storage refused our identification");
        self.out.close(conn);
        self.links.by_nid.remove(&nid);
        self.storage_lost(nid);
    }

    /// Storage `nid` is identified: what waited for it goes on.
    fn storage_ready(&mut self, nid: NodeId) {
        tracing::debug!(%nid, "storage connected");
        self.replication_connected(nid);
        self.check_connected(nid);
    }

    /// The link to a storage closed: what needed it is aborted.
    pub(super) fn on_storage_closed(&mut self, conn: ConnId) {
        self.asked.closed(conn);
        self.feeding_closed(conn);
        if let Some(nid) = self.links.of_conn(conn) {
            self.links.by_nid.remove(&nid);
            self.storage_lost(nid);
        }
    }

    fn storage_lost(&mut self, nid: NodeId) {
        self.replication_source_lost(nid);
        self.check_peer_lost(nid);
    }
}
