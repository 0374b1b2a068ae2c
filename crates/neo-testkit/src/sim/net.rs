//! The simulated network: TCP connections between nodes, as `neo-net`'s
//! shell and connections present them to a node (`connection.rs`).
//!
//! Each connection has two ends, each with its own [`ConnId`] (as two
//! processes would). Bytes travel: a packet is encoded with the real
//! codec, cut in two now and then, and decoded by the receiving end's
//! [`StreamDecoder`], after the handshake magic. Each end numbers the
//! packets it originates; an answer carries the msg_id of its request and
//! is matched to the request pending at the asking end, which gets
//! [`Input::Answer`] with the request's token (and the packets sent ahead
//! of that answer with its msg_id as [`Input::AnswerPart`]). An end closes
//! on `CloseClient` once neither side has requests for the other (protocol.md
//! §9.5). What travels toward an end
//! arrives in the order it was sent (TCP): an arrival time is never
//! earlier than the one before it. A closed end gets no answers for its
//! pending requests.
//!
//! The network knows nothing of time passing: the world tells it when
//! things arrive and asks what is due.

use std::collections::{BTreeMap, VecDeque};

use neo_net::{is_answer_part, ConnId, Input, Token};
use neo_proto::packets::{CloseClient, Error as ErrorPacket};
use neo_proto::RESPONSE_MASK;
use neo_proto::{answer_code, encode_frame, packet_name, Packet, StreamDecoder, MAGIC};

/// Virtual time, in microseconds since the start of the run.
pub type Micros = u64;

/// Names a connection of the simulation.
pub type LinkId = u64;

/// One end of a connection: 0 made it, 1 accepted it.
pub type Side = usize;

/// What travels toward an end.
#[derive(Debug)]
enum Item {
    /// The handshake is done: the node hears of the connection.
    Opened,
    /// Part of the byte stream.
    Bytes(Vec<u8>),
    /// The peer closed: the end of the stream, after its bytes.
    Eof,
    /// The connection broke: each end learns it by itself (a reset, its
    /// watchdog), however the network is held.
    Broken,
    /// The connection attempt broke before the handshake.
    Failed,
}

impl Item {
    /// Whether it travels the network (and a held network holds it).
    fn travels(&self) -> bool {
        matches!(self, Item::Opened | Item::Bytes(_) | Item::Eof)
    }
}

/// How a packet is sent.
#[derive(Clone, Copy, Debug)]
pub enum Send {
    /// Answers the request `msg_id`.
    Answer(u32),
    /// A notification, with a fresh msg_id.
    Notify,
    /// A request whose answer comes back with this token.
    Request(Token),
}

#[derive(Debug)]
struct End {
    node: usize,
    conn: ConnId,
    /// For the end that connected, the token of its `Output::Connect`.
    token: Option<Token>,
    /// The node was told of the connection.
    known: bool,
    /// The node may still use it: false once it closed it, was told it
    /// closed, or died.
    open: bool,
    /// The node uses it for its own requests (protocol.md §9.5).
    client: bool,
    /// The peer uses it for its requests to the node.
    server: bool,
    next_msg_id: u32,
    /// Requests this end sent and waits for, by msg_id: their token and
    /// the answer code expected.
    pending: BTreeMap<u32, (Token, u16)>,
    /// The bytes from the peer, through the real codec.
    decoder: StreamDecoder,
    /// What is on its way here, with its arrival time (never decreasing).
    incoming: VecDeque<(Micros, Item)>,
    /// When an arrival event is due for this end, if one is.
    armed: Option<Micros>,
}

impl End {
    fn new(node: usize, conn: ConnId, token: Option<Token>) -> End {
        End {
            node,
            conn,
            token,
            known: false,
            open: true,
            client: token.is_some(),
            server: token.is_none(),
            next_msg_id: 0,
            pending: BTreeMap::new(),
            decoder: StreamDecoder::new(),
            incoming: VecDeque::new(),
            armed: None,
        }
    }

    /// Queues `item` to arrive no sooner than `at` and after what is
    /// already on its way; returns when an arrival event is needed.
    fn push(&mut self, at: Micros, item: Item) -> Option<Micros> {
        let at = self.incoming.back().map_or(at, |(last, _)| at.max(*last));
        self.incoming.push_back((at, item));
        self.arm(at)
    }

    fn arm(&mut self, at: Micros) -> Option<Micros> {
        match self.armed {
            Some(armed) if armed <= at => None,
            _ => {
                self.armed = Some(at);
                Some(at)
            }
        }
    }

    /// The end is over for its node: nothing more arrives.
    fn shut(&mut self) {
        self.open = false;
        self.pending.clear();
        self.incoming.clear();
    }
}

/// What a received packet is to the receiving end.
enum Dispatch {
    /// An input for its node.
    Deliver(Box<Input>),
    /// Taken by the connection (`CloseClient` while the node still has
    /// requests on it).
    Handled,
    /// The end closes (`CloseClient` and no requests of the node's).
    Close,
}

/// An arrival event to schedule: toward `side` of `link` at `at`.
pub type Arrival = (LinkId, Side, Micros);

/// Every connection of the simulation.
#[derive(Debug, Default)]
pub struct Net {
    links: BTreeMap<LinkId, [End; 2]>,
    next_link: LinkId,
    next_conn: u64,
    by_conn: BTreeMap<ConnId, (LinkId, Side)>,
}

impl Net {
    fn fresh_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    /// A connection from node `from` (attempt `token`) to node `to`: the
    /// acceptor hears of it at `accepted`, the connecting node at
    /// `connected`.
    pub fn connect(
        &mut self,
        from: usize,
        to: usize,
        token: Token,
        accepted: Micros,
        connected: Micros,
    ) -> Vec<Arrival> {
        self.next_link += 1;
        let link = self.next_link;
        let (near, far) = (self.fresh_conn(), self.fresh_conn());
        let mut ends = [End::new(from, near, Some(token)), End::new(to, far, None)];
        let mut arrivals = Vec::new();
        arrivals.extend(ends[1].push(accepted, Item::Opened).map(|at| (link, 1, at)));
        arrivals.extend(
            ends[0]
                .push(connected, Item::Opened)
                .map(|at| (link, 0, at)),
        );
        self.by_conn.insert(near, (link, 0));
        self.by_conn.insert(far, (link, 1));
        self.links.insert(link, ends);
        arrivals
    }

    /// The end `node` uses as `conn`, if it is still open.
    fn end_of(&self, node: usize, conn: ConnId) -> Option<(LinkId, Side)> {
        let (link, side) = *self.by_conn.get(&conn)?;
        let end = &self.links.get(&link)?[side];
        (end.node == node && end.open && end.known).then_some((link, side))
    }

    /// Node `node` sends `packet` on `conn`; the bytes arrive no sooner
    /// than `at`, in one piece or cut at `cut` (a fraction of their
    /// length, in thousandths). Sends on a closed connection go nowhere.
    pub fn send(
        &mut self,
        node: usize,
        conn: ConnId,
        how: Send,
        packet: &Packet,
        at: Micros,
        cut: Option<u64>,
    ) -> Vec<Arrival> {
        let Some((link, side)) = self.end_of(node, conn) else {
            return Vec::new();
        };
        let Some(ends) = self.links.get_mut(&link) else {
            return Vec::new();
        };
        let sender = &mut ends[side];
        let msg_id = match how {
            Send::Answer(msg_id) => {
                sender.server = true;
                msg_id
            }
            Send::Notify | Send::Request(_) => {
                let msg_id = sender.next_msg_id;
                sender.next_msg_id = msg_id.wrapping_add(1);
                msg_id
            }
        };
        if let Send::Request(token) = how {
            sender.client = true;
            let expected = answer_code(packet.code()).unwrap_or(ErrorPacket::CODE);
            sender.pending.insert(msg_id, (token, expected));
        }
        let peer = &mut ends[1 - side];
        if !peer.open {
            return Vec::new();
        }
        let mut bytes = encode_frame(msg_id, packet);
        let mut arrivals = Vec::new();
        if let Some(thousandths) = cut {
            let split = (bytes.len() as u64 * thousandths / 1000) as usize;
            if split > 0 && split < bytes.len() {
                let rest = bytes.split_off(split);
                arrivals.extend(peer.push(at, Item::Bytes(bytes)));
                bytes = rest;
            }
        }
        arrivals.extend(peer.push(at, Item::Bytes(bytes)));
        arrivals
            .into_iter()
            .map(|at| (link, 1 - side, at))
            .collect()
    }

    /// Node `node` closes `conn`: what it sent still arrives, then the end
    /// of the stream (no sooner than `at`); nothing more reaches it.
    /// Returns whether it was open (then the node is told `Closed`).
    pub fn close(&mut self, node: usize, conn: ConnId, at: Micros) -> (bool, Vec<Arrival>) {
        let Some((link, side)) = self.end_of(node, conn) else {
            return (false, Vec::new());
        };
        let Some(ends) = self.links.get_mut(&link) else {
            return (false, Vec::new());
        };
        ends[side].shut();
        let peer = &mut ends[1 - side];
        let arrival = if peer.open {
            peer.push(at, Item::Eof)
        } else {
            None
        };
        self.tidy(link);
        (
            true,
            arrival.map(|at| (link, 1 - side, at)).into_iter().collect(),
        )
    }

    /// Node `node` is done with its own requests on `conn`: if the peer
    /// still sends it requests, `CloseClient` tells it and the connection
    /// stays; otherwise it closes, as [`Net::close`].
    pub fn close_client(
        &mut self,
        node: usize,
        conn: ConnId,
        at: Micros,
        cut: Option<u64>,
    ) -> (bool, Vec<Arrival>) {
        let Some((link, side)) = self.end_of(node, conn) else {
            return (false, Vec::new());
        };
        let Some(ends) = self.links.get_mut(&link) else {
            return (false, Vec::new());
        };
        if !ends[side].server {
            return self.close(node, conn, at);
        }
        ends[side].client = false;
        let packet = CloseClient {}.into();
        (false, self.send(node, conn, Send::Notify, &packet, at, cut))
    }

    /// The connection breaks (a cut, a firewall): what was on its way is
    /// lost; each end still open learns it at `at`.
    pub fn cut(&mut self, link: LinkId, at: Micros) -> Vec<Arrival> {
        let Some(ends) = self.links.get_mut(&link) else {
            return Vec::new();
        };
        let mut arrivals = Vec::new();
        for (side, end) in ends.iter_mut().enumerate() {
            if !end.open {
                continue;
            }
            end.incoming.clear();
            end.pending.clear();
            let item = match (end.known, end.token) {
                (true, _) => Item::Broken,
                (false, Some(_)) => Item::Failed,
                // An acceptor never hears of a connection that broke
                // during the handshake.
                (false, None) => {
                    end.open = false;
                    continue;
                }
            };
            arrivals.extend(end.push(at, item).map(|at| (link, side, at)));
        }
        self.tidy(link);
        arrivals
    }

    /// Node `node` is gone (crashed or exited): what it sent still
    /// arrives (the kernel flushes it), then its peers see the end of the
    /// stream, no sooner than `at`.
    pub fn node_down(&mut self, node: usize, at: Micros) -> Vec<Arrival> {
        let mut arrivals = Vec::new();
        for (link, ends) in &mut self.links {
            for side in 0..2 {
                if ends[side].node != node || !ends[side].open {
                    continue;
                }
                ends[side].shut();
                let peer = &mut ends[1 - side];
                if peer.open {
                    arrivals.extend(peer.push(at, Item::Eof).map(|at| (*link, 1 - side, at)));
                }
            }
        }
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.tidy(link);
        }
        arrivals
    }

    /// The connections still open at some end, oldest first.
    pub fn open_links(&self) -> Vec<LinkId> {
        self.links
            .iter()
            .filter(|(_, ends)| ends.iter().any(|end| end.open))
            .map(|(link, _)| *link)
            .collect()
    }

    /// The connections of `node` still open at its end.
    pub fn links_of(&self, node: usize) -> Vec<LinkId> {
        self.links
            .iter()
            .filter(|(_, ends)| ends.iter().any(|end| end.node == node && end.open))
            .map(|(link, _)| *link)
            .collect()
    }

    /// Whether an end of `link` waits for the answer to a request.
    pub fn awaits_answer(&self, link: LinkId) -> bool {
        self.links
            .get(&link)
            .is_some_and(|ends| ends.iter().any(|end| end.open && !end.pending.is_empty()))
    }

    /// The nodes at the ends of `link`: (`side`'s, its peer's).
    pub fn nodes(&self, link: LinkId, side: Side) -> Option<(usize, usize)> {
        let ends = self.links.get(&link)?;
        Some((ends[side].node, ends[1 - side].node))
    }

    /// The arrival event at `at` toward `side` of `link` fires: whether it
    /// is the one expected (later ones replace earlier ones).
    pub fn fire(&mut self, link: LinkId, side: Side, at: Micros) -> bool {
        match self.links.get_mut(&link) {
            Some(ends) if ends[side].armed == Some(at) => {
                ends[side].armed = None;
                true
            }
            _ => false,
        }
    }

    /// When the next item toward `side` of `link` arrives, and whether it
    /// travels the network (then a hold delays it).
    pub fn next_arrival(&self, link: LinkId, side: Side) -> Option<(Micros, bool)> {
        let ends = self.links.get(&link)?;
        ends[side]
            .incoming
            .front()
            .map(|(at, item)| (*at, item.travels()))
    }

    /// Arms an arrival event at `at` (the next item is held until then);
    /// returns it if one must be scheduled.
    pub fn rearm(&mut self, link: LinkId, side: Side, at: Micros) -> Option<Arrival> {
        let ends = self.links.get_mut(&link)?;
        ends[side].arm(at).map(|at| (link, side, at))
    }

    /// Takes the next item toward `side` of `link` and turns it into what
    /// its node is told: `(node, inputs, closed)`, `closed` when the end
    /// closed on `CloseClient` (then [`Net::peer_sees_end`]). A packet no
    /// node could have sent (undecodable, an answer to nothing) is an
    /// error.
    pub fn deliver(
        &mut self,
        link: LinkId,
        side: Side,
    ) -> Result<Option<(usize, Vec<Input>, bool)>, String> {
        let Some(ends) = self.links.get_mut(&link) else {
            return Ok(None);
        };
        let mut closed = false;
        let peer_node = ends[1 - side].node;
        let end = &mut ends[side];
        let Some((_, item)) = end.incoming.pop_front() else {
            return Ok(None);
        };
        let conn = end.conn;
        let inputs = match item {
            Item::Opened => {
                end.known = true;
                end.decoder.extend(&MAGIC);
                vec![match end.token {
                    Some(token) => Input::Connected { conn, token },
                    None => Input::Accepted { conn },
                }]
            }
            Item::Failed => {
                end.open = false;
                end.token
                    .map(|token| Input::ConnectFailed { token })
                    .into_iter()
                    .collect()
            }
            Item::Eof | Item::Broken => {
                end.shut();
                vec![Input::Closed { conn }]
            }
            Item::Bytes(bytes) => {
                end.decoder.extend(&bytes);
                let mut inputs = Vec::new();
                loop {
                    let frame = match end.decoder.next_frame() {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(error) => {
                            return Err(format!("node {peer_node} sent undecodable bytes: {error}"))
                        }
                    };
                    match Self::dispatch(end, frame.msg_id, frame.packet, peer_node)? {
                        Dispatch::Deliver(input) => inputs.push(*input),
                        Dispatch::Handled => {}
                        Dispatch::Close => {
                            // Neither side has requests left: the end
                            // closes.
                            end.shut();
                            inputs.push(Input::Closed { conn });
                            closed = true;
                            break;
                        }
                    }
                }
                inputs
            }
        };
        let node = end.node;
        if !closed {
            self.tidy(link);
        }
        Ok(Some((node, inputs, closed)))
    }

    /// The peer of `side` of `link`, which closed, sees the end of the
    /// stream no sooner than `at`.
    pub fn peer_sees_end(&mut self, link: LinkId, side: Side, at: Micros) -> Vec<Arrival> {
        let Some(ends) = self.links.get_mut(&link) else {
            return Vec::new();
        };
        let peer = &mut ends[1 - side];
        let arrival = if peer.open {
            peer.push(at, Item::Eof)
        } else {
            None
        };
        self.tidy(link);
        arrival.map(|at| (link, 1 - side, at)).into_iter().collect()
    }

    /// What a received packet is to its node, as `neo-net`'s reader
    /// decides it: requests and notifications as packets (those sent
    /// ahead of an answer with its request's msg_id as parts of it),
    /// answers to the request pending with their msg_id, errors answering
    /// nothing as packets; `CloseClient` is the connection's business.
    fn dispatch(
        end: &mut End,
        msg_id: u32,
        packet: Packet,
        from: usize,
    ) -> Result<Dispatch, String> {
        let conn = end.conn;
        let code = packet.code();
        if let Packet::CloseClient(_) = packet {
            end.server = false;
            return Ok(if end.client {
                Dispatch::Handled
            } else {
                Dispatch::Close
            });
        }
        if code & RESPONSE_MASK == 0 {
            if is_answer_part(&packet) {
                if let Some((token, _)) = end.pending.get(&msg_id) {
                    return Ok(Dispatch::Deliver(Box::new(Input::AnswerPart {
                        conn,
                        token: *token,
                        packet,
                    })));
                }
            }
            return Ok(Dispatch::Deliver(Box::new(Input::Packet {
                conn,
                msg_id,
                packet,
            })));
        }
        match end.pending.remove(&msg_id) {
            Some((token, expected)) if code == expected || code == ErrorPacket::CODE => {
                Ok(Dispatch::Deliver(Box::new(Input::Answer {
                    conn,
                    token,
                    packet,
                })))
            }
            None if code == ErrorPacket::CODE => Ok(Dispatch::Deliver(Box::new(Input::Packet {
                conn,
                msg_id,
                packet,
            }))),
            Some((_, expected)) => Err(format!(
                "node {from} answered msg_id {msg_id} with {}, expected {}",
                packet.name(),
                packet_name(expected).unwrap_or("?")
            )),
            None => Err(format!(
                "node {from} sent {} for msg_id {msg_id}, which answers no request",
                packet.name()
            )),
        }
    }

    /// Forgets `link` once nothing can happen on it any more.
    fn tidy(&mut self, link: LinkId) {
        let over = self
            .links
            .get(&link)
            .is_some_and(|ends| ends.iter().all(|end| !end.open && end.incoming.is_empty()));
        if over {
            if let Some(ends) = self.links.remove(&link) {
                for end in &ends {
                    self.by_conn.remove(&end.conn);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use neo_proto::packets::{AddObject, AnswerObject, AskObject, Ping};
    use neo_proto::{Checksum, Oid, Tid};

    /// Delivers everything on its way toward `side` of `link`.
    fn drain(net: &mut Net, link: LinkId, side: Side) -> Vec<Input> {
        let mut inputs = Vec::new();
        while let Some((_, found, _)) = net.deliver(link, side).unwrap() {
            inputs.extend(found);
        }
        inputs
    }

    fn ask(oid: u64) -> Packet {
        AskObject {
            oid: Oid(oid),
            at: None,
            before: None,
        }
        .into()
    }

    fn answer(oid: u64) -> Packet {
        AnswerObject {
            oid: Oid(oid),
            serial: Tid(1),
            next_serial: None,
            compression: Some(0),
            checksum: Checksum::ZERO,
            data: Bytes::new(),
            data_serial: None,
        }
        .into()
    }

    #[test]
    fn answers_reach_their_requests_by_msg_id_and_a_closed_end_gets_none() {
        let mut net = Net::default();
        let arrivals = net.connect(0, 1, Token(9), 10, 20);
        assert_eq!(arrivals.len(), 2);
        let link = arrivals[0].0;
        let [Input::Accepted { conn: far }] = drain(&mut net, link, 1)[..] else {
            panic!("the acceptor hears of it first");
        };
        let [Input::Connected { conn: near, token }] = drain(&mut net, link, 0)[..] else {
            panic!("then the connecting end, with its token");
        };
        assert_eq!(token, Token(9));
        // Two requests, cut anywhere on the way; answered in the other
        // order, each reaches its own token.
        net.send(0, near, Send::Request(Token(1)), &ask(1), 30, Some(500));
        net.send(0, near, Send::Request(Token(2)), &ask(2), 30, None);
        let requests: Vec<u32> = drain(&mut net, link, 1)
            .into_iter()
            .map(|input| match input {
                Input::Packet { msg_id, .. } => msg_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(requests, [0, 1]);
        net.send(1, far, Send::Answer(1), &answer(2), 40, None);
        net.send(1, far, Send::Answer(0), &answer(1), 40, None);
        let tokens: Vec<Token> = drain(&mut net, link, 0)
            .into_iter()
            .map(|input| match input {
                Input::Answer { token, .. } => token,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(tokens, [Token(2), Token(1)]);
        // A request whose end closes is never answered; the peer sees the
        // end of the stream after what was sent before it.
        net.send(0, near, Send::Request(Token(3)), &ask(3), 50, None);
        net.send(0, near, Send::Notify, &Ping {}.into(), 50, None);
        let (open, _) = net.close(0, near, 60);
        assert!(open);
        net.send(1, far, Send::Answer(2), &answer(3), 70, None);
        assert!(drain(&mut net, link, 0).is_empty());
        let seen = drain(&mut net, link, 1);
        assert!(matches!(
            seen[..],
            [
                Input::Packet { .. },
                Input::Packet { .. },
                Input::Closed { .. }
            ]
        ));
    }

    /// A connected pair: (link, connecting end's conn, accepting end's).
    fn pair(net: &mut Net) -> (LinkId, ConnId, ConnId) {
        let link = net.connect(0, 1, Token(9), 10, 20)[0].0;
        let [Input::Accepted { conn: far }] = drain(net, link, 1)[..] else {
            panic!("accepted");
        };
        let [Input::Connected { conn: near, .. }] = drain(net, link, 0)[..] else {
            panic!("connected");
        };
        (link, near, far)
    }

    #[test]
    fn packets_ahead_of_an_answer_are_its_parts_and_close_client_keeps_a_used_link() {
        let mut net = Net::default();
        let (link, near, far) = pair(&mut net);
        net.send(0, near, Send::Request(Token(1)), &ask(1), 30, None);
        assert_eq!(drain(&mut net, link, 1).len(), 1);
        let part: Packet = AddObject {
            oid: Oid(1),
            serial: Tid(1),
            compression: 0,
            checksum: Checksum::ZERO,
            data: Bytes::new(),
            data_serial: None,
        }
        .into();
        net.send(1, far, Send::Answer(0), &part, 40, None);
        net.send(1, far, Send::Answer(0), &answer(1), 40, None);
        let seen = drain(&mut net, link, 0);
        assert!(
            matches!(
                seen[..],
                [
                    Input::AnswerPart {
                        token: Token(1),
                        ..
                    },
                    Input::Answer {
                        token: Token(1),
                        ..
                    }
                ]
            ),
            "{seen:?}"
        );
        // The acceptor answered requests, so its CloseClient keeps the
        // link for the peer, which still uses it for its requests.
        let (closed, _) = net.close_client(1, far, 50, None);
        assert!(!closed);
        assert!(drain(&mut net, link, 0).is_empty(), "taken by the link");
        net.send(0, near, Send::Request(Token(2)), &ask(2), 60, None);
        assert_eq!(drain(&mut net, link, 1).len(), 1, "still open");
        // The connecting end never answered: its CloseClient closes.
        let (closed, _) = net.close_client(0, near, 70, None);
        assert!(closed);
        assert!(matches!(
            drain(&mut net, link, 1)[..],
            [Input::Closed { .. }]
        ));
    }

    #[test]
    fn crossing_close_clients_close_both_ends() {
        let mut net = Net::default();
        let (link, near, far) = pair(&mut net);
        // Each end answered a request of the other's; both say they are
        // done with their own at once, so the CloseClients cross: each
        // end, reached by the other's with no requests left on either
        // side, closes.
        net.send(1, far, Send::Request(Token(3)), &ask(1), 30, None);
        net.send(0, near, Send::Request(Token(4)), &ask(2), 30, None);
        assert_eq!(drain(&mut net, link, 0).len(), 1);
        assert_eq!(drain(&mut net, link, 1).len(), 1);
        net.send(0, near, Send::Answer(0), &answer(1), 40, None);
        net.send(1, far, Send::Answer(0), &answer(2), 40, None);
        assert_eq!(drain(&mut net, link, 0).len(), 1);
        assert_eq!(drain(&mut net, link, 1).len(), 1);
        assert!(!net.close_client(1, far, 50, None).0, "CloseClient sent");
        assert!(!net.close_client(0, near, 50, None).0, "CloseClient sent");
        for side in [0, 1] {
            let Some((_, inputs, closed)) = net.deliver(link, side).unwrap() else {
                panic!("CloseClient arrives");
            };
            assert!(closed);
            assert!(matches!(inputs[..], [Input::Closed { .. }]));
            net.peer_sees_end(link, side, 60);
        }
        assert!(net.open_links().is_empty());
    }
}
