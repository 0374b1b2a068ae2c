//! The I/O model every node role shares, without I/O: what a node's state
//! machine is told ([`Input`]), what it asks for ([`Output`]), and the
//! [`Node`] trait that [`crate::shell`] runs.
//!
//! A node never sees a socket nor reads the clock. Connections are named by
//! [`ConnId`]s; a request that needs an answer is sent with a [`Token`] the
//! node chose, and its answer comes back with that token, so nothing ever
//! matches an answer by arrival order or by packet type. Connecting out is
//! an output like any other, and a node says when it next wants to be woken
//! ([`Node::poll_timeout`]) instead of being ticked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use neo_proto::{Address, Packet, UnixTime};

/// Names a connection, unique in the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// A fresh id (connections get one when their handshake starts).
    pub fn next() -> ConnId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Tags a request, or a connection attempt, with what the node wants to
/// know when the answer (or the outcome) comes back. Chosen by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

impl Token {
    /// A token unique in the process, for what outlives the state that
    /// chose it (a master's connection attempt whose outcome may come
    /// after the master changed role). Far above [`Requests`]' tokens,
    /// which count from 1 per node.
    pub fn unique() -> Token {
        static NEXT: AtomicU64 = AtomicU64::new(1 << 48);
        Token(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What happened, as a node is told.
#[derive(Debug)]
pub enum Input {
    /// The node runs: the first input, once.
    Start,
    /// A peer connected to our listener (handshake done).
    Accepted {
        /// The new connection.
        conn: ConnId,
    },
    /// A connection asked for with [`Output::Connect`] is established
    /// (handshake done).
    Connected {
        /// The new connection.
        conn: ConnId,
        /// The token of the [`Output::Connect`].
        token: Token,
    },
    /// A connection asked for with [`Output::Connect`] could not be made
    /// (refused, unreachable, no handshake in time).
    ConnectFailed {
        /// The token of the [`Output::Connect`].
        token: Token,
    },
    /// A request or notification from the peer (or an `Error` answering
    /// nothing we asked).
    Packet {
        /// Where from.
        conn: ConnId,
        /// Its msg_id, to answer with.
        msg_id: u32,
        /// The packet.
        packet: Packet,
    },
    /// A packet sent by the peer ahead of the answer to a request sent
    /// with [`Output::Request`], with that request's msg_id
    /// (`AddTransaction`, `AddObject`: protocol.md §2.3).
    AnswerPart {
        /// Where from.
        conn: ConnId,
        /// The token the request was sent with.
        token: Token,
        /// The packet.
        packet: Packet,
    },
    /// The answer to a request sent with [`Output::Request`]: its answer
    /// packet or an `Error`.
    Answer {
        /// Where from.
        conn: ConnId,
        /// The token the request was sent with.
        token: Token,
        /// The answer.
        packet: Packet,
    },
    /// The connection is gone; requests pending on it get no answer.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// A deadline given by [`Node::poll_timeout`] has passed.
    Timeout,
}

/// What a node asks its shell to do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Answer a request.
    Answer {
        /// Where to.
        conn: ConnId,
        /// msg_id of the request answered.
        msg_id: u32,
        /// The answer.
        packet: Packet,
    },
    /// Send a notification (a fresh msg_id).
    Notify {
        /// Where to.
        conn: ConnId,
        /// The notification.
        packet: Packet,
    },
    /// Send a request; its answer comes back as [`Input::Answer`] with
    /// `token` (or never, if the connection closes first).
    Request {
        /// Where to.
        conn: ConnId,
        /// Tag of the answer.
        token: Token,
        /// The request.
        packet: Packet,
    },
    /// Connect to `address`; the outcome comes back as [`Input::Connected`]
    /// or [`Input::ConnectFailed`] with `token`, which also tells the node
    /// what the connection is for.
    Connect {
        /// Tag of the outcome.
        token: Token,
        /// Where to.
        address: Address,
    },
    /// We are done with our own requests on the connection: tell the peer
    /// with `CloseClient` if it still sends us requests on it, else close
    /// it (protocol.md §9.5).
    CloseClient {
        /// The connection.
        conn: ConnId,
    },
    /// Close the connection once what is queued is sent.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Stop the node: `Ok` when it is done (cluster stopped), `Err` with
    /// the reason when it cannot go on.
    Exit(Result<(), String>),
}

/// A node's state machine, as [`crate::shell::run`] drives it.
pub trait Node {
    /// Takes one input at time `now`. What to do accumulates until
    /// [`Node::poll_output`].
    fn handle(&mut self, input: Input, now: UnixTime);
    /// What to do, in order, for every input handled since the last call.
    /// The shell hands a node every input already waiting before asking,
    /// so work that covers them all is done once here (the storage's group
    /// commit: one fsync for a batch of votes).
    fn poll_output(&mut self) -> Vec<Output>;
    /// When the node next wants [`Input::Timeout`], if ever. A time in the
    /// past means at once, after the inputs that are waiting.
    fn poll_timeout(&self) -> Option<UnixTime>;
}

/// The outputs a node accumulates, with a constructor per kind.
#[derive(Debug, Default)]
pub struct Outbox {
    outputs: Vec<Output>,
}

impl Outbox {
    /// Answers the request `msg_id` of `conn`.
    pub fn answer(&mut self, conn: ConnId, msg_id: u32, packet: impl Into<Packet>) {
        self.outputs.push(Output::Answer {
            conn,
            msg_id,
            packet: packet.into(),
        });
    }

    /// Sends a notification.
    pub fn notify(&mut self, conn: ConnId, packet: impl Into<Packet>) {
        self.outputs.push(Output::Notify {
            conn,
            packet: packet.into(),
        });
    }

    /// Sends a request tagged with `token`.
    pub fn request(&mut self, conn: ConnId, token: Token, packet: impl Into<Packet>) {
        self.outputs.push(Output::Request {
            conn,
            token,
            packet: packet.into(),
        });
    }

    /// Connects to `address`.
    pub fn connect(&mut self, token: Token, address: Address) {
        self.outputs.push(Output::Connect { token, address });
    }

    /// Ends our use of `conn` as a client (`CloseClient`, or a close).
    pub fn close_client(&mut self, conn: ConnId) {
        self.outputs.push(Output::CloseClient { conn });
    }

    /// Closes `conn` after what is queued.
    pub fn close(&mut self, conn: ConnId) {
        self.outputs.push(Output::Close { conn });
    }

    /// Stops the node.
    pub fn exit(&mut self, result: Result<(), String>) {
        self.outputs.push(Output::Exit(result));
    }

    /// Forgets what was not taken yet (a failed commit must not let the
    /// answers that depended on it out).
    pub fn clear(&mut self) {
        self.outputs.clear();
    }

    /// Everything accumulated, in order.
    pub fn take(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }
}

/// The requests a node sent and waits an answer for, by token, with the
/// connection each went on and why it was sent (`P`, the node's own).
#[derive(Debug)]
pub struct Requests<P> {
    next: u64,
    pending: HashMap<Token, (ConnId, P)>,
}

impl<P> Default for Requests<P> {
    fn default() -> Self {
        Requests {
            next: 0,
            pending: HashMap::new(),
        }
    }
}

impl<P> Requests<P> {
    /// A token for a new request on `conn` sent because of `why`; the
    /// request must be sent with it (see [`Requests::send`]).
    pub fn register(&mut self, conn: ConnId, why: P) -> Token {
        let token = self.fresh();
        self.pending.insert(token, (conn, why));
        token
    }

    /// Registers and sends a request in one go.
    pub fn send(&mut self, out: &mut Outbox, conn: ConnId, why: P, packet: impl Into<Packet>) {
        let token = self.register(conn, why);
        out.request(conn, token, packet);
    }

    /// A token tagging something else than a request (a connection
    /// attempt): never the token of a pending request.
    pub fn fresh(&mut self) -> Token {
        self.next += 1;
        Token(self.next)
    }

    /// The answer to `token` came from `conn`: why it was asked, if it is
    /// ours and was asked on that connection.
    pub fn answered(&mut self, conn: ConnId, token: Token) -> Option<P> {
        match self.pending.remove(&token) {
            Some((asked_on, why)) if asked_on == conn => Some(why),
            Some(entry) => {
                // A token reused on another connection is not an answer.
                self.pending.insert(token, entry);
                None
            }
            None => None,
        }
    }

    /// Why `token` was asked on `conn`, while its answer is still to come
    /// (a part of it came: [`Input::AnswerPart`]).
    pub fn pending(&self, conn: ConnId, token: Token) -> Option<&P> {
        self.pending
            .get(&token)
            .filter(|(asked_on, _)| *asked_on == conn)
            .map(|(_, why)| why)
    }

    /// `conn` closed: its requests will never be answered; returns why they
    /// were sent.
    pub fn closed(&mut self, conn: ConnId) -> Vec<P> {
        let mut gone: Vec<(Token, P)> = Vec::new();
        let tokens: Vec<Token> = self
            .pending
            .iter()
            .filter(|(_, (asked_on, _))| *asked_on == conn)
            .map(|(token, _)| *token)
            .collect();
        for token in tokens {
            if let Some((_, why)) = self.pending.remove(&token) {
                gone.push((token, why));
            }
        }
        // In the order they were sent.
        gone.sort_by_key(|(token, _)| *token);
        gone.into_iter().map(|(_, why)| why).collect()
    }

    /// Forgets every pending request; returns why they were sent, in the
    /// order they were sent.
    pub fn clear(&mut self) -> Vec<P> {
        let mut all: Vec<(Token, P)> = self
            .pending
            .drain()
            .map(|(token, (_, why))| (token, why))
            .collect();
        all.sort_by_key(|(token, _)| *token);
        all.into_iter().map(|(_, why)| why).collect()
    }

    /// The pending requests: the connection each went on and why.
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &P)> {
        self.pending.values().map(|(conn, why)| (*conn, why))
    }

    /// Forgets the pending requests for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(ConnId, &P) -> bool) {
        self.pending.retain(|_, (conn, why)| keep(*conn, why));
    }

    /// Number of pending requests.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neo_proto::packets::Ping;

    #[test]
    fn answers_are_matched_by_token_and_connection() {
        let mut requests: Requests<&str> = Requests::default();
        let mut out = Outbox::default();
        requests.send(&mut out, ConnId(1), "first", Ping {});
        requests.send(&mut out, ConnId(2), "second", Ping {});
        let tokens: Vec<Token> = out
            .take()
            .into_iter()
            .filter_map(|output| match output {
                Output::Request { token, .. } => Some(token),
                _ => None,
            })
            .collect();
        assert_eq!(tokens.len(), 2);
        // An answer on the wrong connection is not one.
        assert_eq!(requests.pending(ConnId(2), tokens[0]), None);
        assert_eq!(requests.pending(ConnId(1), tokens[0]), Some(&"first"));
        assert_eq!(requests.answered(ConnId(2), tokens[0]), None);
        assert_eq!(requests.answered(ConnId(1), tokens[0]), Some("first"));
        assert_eq!(requests.answered(ConnId(1), tokens[0]), None, "only once");
        assert_eq!(requests.closed(ConnId(2)), vec!["second"]);
        assert!(requests.is_empty());
    }

    #[test]
    fn fresh_tokens_never_collide_with_pending_ones() {
        let mut requests: Requests<u8> = Requests::default();
        let pending = requests.register(ConnId(1), 0);
        let fresh = requests.fresh();
        assert_ne!(pending, fresh);
        assert_eq!(requests.answered(ConnId(1), fresh), None);
        assert_eq!(requests.clear(), vec![0]);
    }
}
