//! The scripted nodes' link to the master: connect (again, a while after
//! a failure), identify as a client or an admin, and say when the
//! identification is accepted. Shared by [`super::client`] and
//! [`super::admin`].

use neo_net::{ConnId, Outbox, Token};
use neo_proto::packets as p;
use neo_proto::{Address, Map, NodeId, NodeType, Packet, UnixTime};

/// Where a scripted node stands with the master.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Not connected; the next attempt at `retry_at`.
    Idle { retry_at: UnixTime },
    /// A connection attempt is running.
    Connecting { token: Token },
    /// Identification sent with `token`, not answered yet.
    Identifying { conn: ConnId, token: Token },
    /// Identified as `nid`.
    Ready { conn: ConnId, nid: NodeId },
}

/// What an input on the master link means to its node.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// Not the master link's business.
    Other,
    /// Handled by the link; nothing for the node to do.
    Handled,
    /// Identified as `nid` on `conn`.
    Identified { conn: ConnId, nid: NodeId },
    /// The link to the master is lost (or was never made).
    Lost,
}

/// The link of a scripted node to the master.
#[derive(Debug)]
pub struct MasterLink {
    address: Address,
    cluster: String,
    node_type: NodeType,
    state: State,
}

impl MasterLink {
    /// A link that connects at once.
    pub fn new(address: Address, cluster: String, node_type: NodeType) -> MasterLink {
        MasterLink {
            address,
            cluster,
            node_type,
            state: State::Idle { retry_at: 0.0 },
        }
    }

    /// The identified connection, if any.
    pub fn ready(&self) -> Option<(ConnId, NodeId)> {
        match self.state {
            State::Ready { conn, nid } => Some((conn, nid)),
            _ => None,
        }
    }

    /// Whether `conn` is the connection to the master.
    pub fn is_master(&self, conn: ConnId) -> bool {
        matches!(self.state, State::Identifying { conn: c, .. } | State::Ready { conn: c, .. } if c == conn)
    }

    /// When the next connection attempt is due, if one waits.
    pub fn deadline(&self) -> Option<UnixTime> {
        match self.state {
            State::Idle { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    /// Connects if an attempt is due; `token` is a fresh token of the node.
    pub fn poll(&mut self, now: UnixTime, token: impl FnOnce() -> Token, out: &mut Outbox) {
        if let State::Idle { retry_at } = self.state {
            if retry_at <= now {
                let token = token();
                out.connect(token, self.address.clone());
                self.state = State::Connecting { token };
            }
        }
    }

    /// Gives the link up, to try again at `retry_at` (the node closes
    /// what it must).
    pub fn lose(&mut self, retry_at: UnixTime) {
        self.state = State::Idle { retry_at };
    }

    /// Stops for good: no more attempts.
    pub fn stop(&mut self) {
        self.state = State::Idle {
            retry_at: f64::INFINITY,
        };
    }

    /// The master answered the identification on `conn`.
    fn identified(&mut self, conn: ConnId, answer: &Packet, out: &mut Outbox) -> Event {
        match answer {
            Packet::AcceptIdentification(p::AcceptIdentification {
                node_type: NodeType::Master,
                your_nid: Some(nid),
                ..
            }) => {
                self.state = State::Ready { conn, nid: *nid };
                Event::Identified { conn, nid: *nid }
            }
            // Refused (not ready yet, most likely): try again later.
            _ => {
                out.close(conn);
                Event::Lost
            }
        }
    }

    /// Takes the inputs that concern the link. `token` gives the node's
    /// fresh tokens; a lost link is `Idle` until the node says when to
    /// retry ([`MasterLink::lose`]).
    pub fn handle(
        &mut self,
        input: &neo_net::Input,
        token: impl FnOnce() -> Token,
        out: &mut Outbox,
    ) -> Event {
        use neo_net::Input;
        match input {
            Input::Connected { conn, token: t } => match self.state {
                State::Connecting { token: attempt } if *t == attempt => {
                    let token = token();
                    let request = p::RequestIdentification {
                        node_type: self.node_type,
                        nid: None,
                        address: None,
                        cluster: self.cluster.clone(),
                        id_timestamp: None,
                        extra: Map::new(),
                    };
                    out.request(*conn, token, request);
                    self.state = State::Identifying { conn: *conn, token };
                    Event::Handled
                }
                _ => Event::Other,
            },
            Input::ConnectFailed { token: t } => match self.state {
                State::Connecting { token: attempt } if *t == attempt => Event::Lost,
                _ => Event::Other,
            },
            Input::Answer {
                conn,
                token: t,
                packet,
            } => match self.state {
                State::Identifying { conn: c, token } if *conn == c && *t == token => {
                    self.identified(*conn, packet, out)
                }
                _ => Event::Other,
            },
            Input::Closed { conn } if self.is_master(*conn) => Event::Lost,
            _ => Event::Other,
        }
    }
}
