//! Election (architecture.md §2): masters driven through the `Node` trait
//! alone, over a small in-memory network that delivers in order, refuses
//! connections to masters that are not up and can cut links. Start times
//! come from a seeded generator, so every run is reproducible.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap, VecDeque};

use neo_master::{MasterConfig, MasterNode};
use neo_net::{ConnId, Input, Node, Output, Token};
use neo_proto::packets as p;
use neo_proto::{Address, ErrorCode, Map, NodeType, Packet};

const CLUSTER: &str = "election";

fn address(index: usize) -> Address {
    Address::new("127.0.0.1", 10000 + index as u16)
}

fn config(index: usize, count: usize) -> MasterConfig {
    MasterConfig {
        cluster: CLUSTER.into(),
        address: address(index),
        partitions: 4,
        replicas: 1,
        autostart: None,
        masters: (0..count).map(address).collect(),
        nid: None,
    }
}

/// Masters on a network that delivers in order.
struct Net {
    count: usize,
    nodes: Vec<Option<MasterNode>>,
    now: f64,
    /// Each connection end: its owner and the other end.
    ends: HashMap<ConnId, (usize, ConnId)>,
    /// Requests in flight: (receiving end, msg_id) → the asker's token.
    asks: HashMap<(ConnId, u32), Token>,
    next_msg_id: u32,
    next_conn: u64,
    queue: VecDeque<(usize, Input)>,
    /// Pairs of masters that cannot reach each other.
    cut: BTreeSet<(usize, usize)>,
}

impl Net {
    fn new(count: usize) -> Net {
        Net {
            count,
            nodes: (0..count).map(|_| None).collect(),
            now: 1_700_000_000.0,
            ends: HashMap::new(),
            asks: HashMap::new(),
            next_msg_id: 0,
            next_conn: 1,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
        }
    }

    fn start(&mut self, index: usize) {
        let mut node = MasterNode::new(config(index, self.count)).unwrap();
        node.handle(Input::Start, self.now);
        self.nodes[index] = Some(node);
        self.flush(index);
    }

    /// Kills a master: its connections close on the other side.
    fn kill(&mut self, index: usize) {
        self.nodes[index] = None;
        let owned: Vec<ConnId> = self
            .ends
            .iter()
            .filter(|(_, (owner, _))| *owner == index)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in owned {
            self.close(conn);
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Cuts every link between `index` and the others, closing them.
    fn isolate(&mut self, index: usize) {
        for other in 0..self.count {
            if other != index {
                self.cut.insert((index.min(other), index.max(other)));
            }
        }
        let crossing: Vec<ConnId> = self
            .ends
            .iter()
            .filter(|(_, (owner, peer))| {
                let other = self.ends.get(peer).map(|(o, _)| *o);
                (*owner == index) != (other == Some(index))
            })
            .map(|(conn, _)| *conn)
            .collect();
        for conn in crossing {
            self.close(conn);
        }
    }

    fn close(&mut self, conn: ConnId) {
        let Some((owner, peer)) = self.ends.remove(&conn) else {
            return;
        };
        self.queue.push_back((owner, Input::Closed { conn }));
        if let Some((peer_owner, _)) = self.ends.remove(&peer) {
            self.queue
                .push_back((peer_owner, Input::Closed { conn: peer }));
        }
    }

    fn new_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(1_000_000 + self.next_conn)
    }

    fn peer(&self, conn: ConnId) -> Option<(usize, ConnId)> {
        let (_, peer) = self.ends.get(&conn)?;
        let (owner, _) = self.ends.get(peer)?;
        Some((*owner, *peer))
    }

    fn flush(&mut self, index: usize) {
        let Some(node) = self.nodes[index].as_mut() else {
            return;
        };
        for output in node.poll_output() {
            match output {
                Output::Connect { token, address } => {
                    let target = (address.port - 10000) as usize;
                    let up = self.nodes.get(target).is_some_and(Option::is_some);
                    if up && self.reachable(index, target) {
                        let (a, b) = (self.new_conn(), self.new_conn());
                        self.ends.insert(a, (index, b));
                        self.ends.insert(b, (target, a));
                        self.queue.push_back((target, Input::Accepted { conn: b }));
                        self.queue
                            .push_back((index, Input::Connected { conn: a, token }));
                    } else {
                        self.queue
                            .push_back((index, Input::ConnectFailed { token }));
                    }
                }
                Output::Request {
                    conn,
                    token,
                    packet,
                } => {
                    if let Some((owner, peer)) = self.peer(conn) {
                        self.next_msg_id += 1;
                        let msg_id = self.next_msg_id;
                        self.asks.insert((peer, msg_id), token);
                        self.queue.push_back((
                            owner,
                            Input::Packet {
                                conn: peer,
                                msg_id,
                                packet,
                            },
                        ));
                    }
                }
                Output::Notify { conn, packet } => {
                    if let Some((owner, peer)) = self.peer(conn) {
                        self.next_msg_id += 1;
                        let msg_id = self.next_msg_id;
                        self.queue.push_back((
                            owner,
                            Input::Packet {
                                conn: peer,
                                msg_id,
                                packet,
                            },
                        ));
                    }
                }
                Output::Answer {
                    conn,
                    msg_id,
                    packet,
                } => {
                    let token = self.asks.remove(&(conn, msg_id));
                    if let (Some((owner, peer)), Some(token)) = (self.peer(conn), token) {
                        self.queue.push_back((
                            owner,
                            Input::Answer {
                                conn: peer,
                                token,
                                packet,
                            },
                        ));
                    }
                }
                Output::Close { conn } => self.close(conn),
                Output::CloseClient { .. } => {}
                Output::Exit(result) => panic!("master {index} exited: {result:?}"),
            }
        }
    }

    /// Delivers everything and runs timers until `seconds` have passed.
    fn run(&mut self, seconds: f64) {
        let end = self.now + seconds;
        loop {
            while let Some((index, input)) = self.queue.pop_front() {
                if let Some(node) = self.nodes[index].as_mut() {
                    node.handle(input, self.now);
                    self.flush(index);
                }
            }
            let next = self
                .nodes
                .iter()
                .flatten()
                .filter_map(|node| node.poll_timeout())
                .fold(end, f64::min);
            self.now = self.now.max(next.min(end)) + 0.001;
            if self.now >= end {
                return;
            }
            for index in 0..self.count {
                let due = self.nodes[index]
                    .as_ref()
                    .and_then(|node| node.poll_timeout())
                    .is_some_and(|at| at <= self.now);
                if due {
                    self.queue.push_back((index, Input::Timeout));
                }
            }
        }
    }

    /// The masters playing the primary role.
    fn primaries(&self) -> Vec<usize> {
        (0..self.count)
            .filter(|i| {
                self.nodes[*i]
                    .as_ref()
                    .is_some_and(|n| n.primary().is_some())
            })
            .collect()
    }

    /// Exactly one primary, and every other live master its identified
    /// secondary: returns the primary.
    fn one_primary(&self) -> usize {
        let primaries = self.primaries();
        assert_eq!(primaries.len(), 1, "primaries: {primaries:?}");
        let primary = primaries[0];
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(secondary) = node.as_ref().and_then(MasterNode::secondary) else {
                continue;
            };
            assert_eq!(*secondary.primary(), address(primary), "master {index}");
            assert!(secondary.is_identified(), "master {index} not identified");
        }
        primary
    }
}

/// Three masters started together, settled: the network and its primary.
fn three_elected() -> (Net, usize) {
    let mut net = Net::new(3);
    for index in 0..3 {
        net.start(index);
    }
    net.run(3.0);
    let primary = net.one_primary();
    (net, primary)
}

/// A tiny deterministic generator for start times.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn three_masters_started_in_any_order_elect_exactly_one_primary() {
    for seed in 0..300u64 {
        let mut state = seed;
        let mut net = Net::new(3);
        let mut order: Vec<usize> = (0..3).collect();
        order.sort_by_key(|_| lcg(&mut state));
        for index in order {
            net.start(index);
            // Started together, or up to 30 ms apart.
            let gap = (lcg(&mut state) % 4) as f64 * 0.01;
            net.run(gap);
        }
        net.run(5.0);
        net.one_primary();
    }
}

#[test]
fn the_oldest_candidate_wins() {
    let mut net = Net::new(3);
    net.start(2);
    net.run(0.5);
    net.start(0);
    net.start(1);
    net.run(3.0);
    assert_eq!(net.one_primary(), 2);
}

#[test]
fn a_spare_takes_over_when_the_primary_dies_and_the_old_one_comes_back_as_secondary() {
    let (mut net, first) = three_elected();
    net.kill(first);
    net.run(3.0);
    let second = net.one_primary();
    assert_ne!(second, first);
    net.start(first);
    net.run(3.0);
    assert_eq!(
        net.one_primary(),
        second,
        "the restarted master must not win"
    );
}

#[test]
fn every_master_dies_but_one_which_becomes_primary() {
    let (mut net, first) = three_elected();
    let survivor = (first + 1) % 3;
    for index in 0..3 {
        if index != survivor {
            net.kill(index);
        }
    }
    net.run(5.0);
    assert_eq!(net.one_primary(), survivor);
}

#[test]
fn a_master_cut_from_the_others_is_not_followed_by_them() {
    let (mut net, first) = three_elected();
    net.isolate(first);
    net.run(5.0);
    // The two others elect one of them; the cut one keeps playing the
    // primary role on its side, which is why a new primary waits for
    // every storage of the table before starting (§2.5, tested in
    // state_machine.rs: a_restarted_master_waits_for_every_storage_of_the_table).
    let others: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let primaries: Vec<usize> = net
        .primaries()
        .into_iter()
        .filter(|i| *i != first)
        .collect();
    assert_eq!(primaries.len(), 1, "{primaries:?}");
    for index in others {
        if index != primaries[0] {
            let secondary = net.nodes[index].as_ref().unwrap().secondary().unwrap();
            assert_eq!(*secondary.primary(), address(primaries[0]));
        }
    }
    // Healed: the cut master, older, still RECOVERING, wins again or
    // follows: in any case, one primary.
    net.cut.clear();
    net.run(5.0);
    net.one_primary();
}

/// Sends `request` on a fresh connection to master `index`, returns what
/// it answered (packets on that connection, then whether it closed).
fn identify_to(net: &mut Net, index: usize, request: p::RequestIdentification) -> Vec<Packet> {
    let (probe, conn) = (net.new_conn(), net.new_conn());
    // The probe end is owned by nobody: outputs to it are collected below.
    net.ends.insert(conn, (index, probe));
    net.ends.insert(probe, (usize::MAX, conn));
    let node = net.nodes[index].as_mut().unwrap();
    node.handle(Input::Accepted { conn }, net.now);
    node.handle(
        Input::Packet {
            conn,
            msg_id: 7,
            packet: request.into(),
        },
        net.now,
    );
    let mut answers = Vec::new();
    for output in node.poll_output() {
        match output {
            Output::Answer {
                conn: c, packet, ..
            }
            | Output::Notify { conn: c, packet }
                if c == conn =>
            {
                answers.push(packet)
            }
            _ => {}
        }
    }
    answers
}

fn storage_request(nid: Option<neo_proto::NodeId>) -> p::RequestIdentification {
    p::RequestIdentification {
        node_type: NodeType::Storage,
        nid,
        address: Some(Address::new("127.0.0.1", 20000)),
        cluster: CLUSTER.into(),
        id_timestamp: None,
        extra: Map::new(),
    }
}

#[test]
fn a_secondary_redirects_every_node_to_the_primary() {
    let (mut net, primary) = three_elected();
    let secondary = (primary + 1) % 3;
    let answers = identify_to(&mut net, secondary, storage_request(None));
    let [Packet::NotPrimaryMaster(redirect)] = answers.as_slice() else {
        panic!("{answers:?}");
    };
    let index = redirect.primary.expect("the primary is named") as usize;
    assert_eq!(redirect.known_masters[index], address(primary));
    assert_eq!(redirect.known_masters[0], address(secondary));
    assert_eq!(redirect.known_masters.len(), 3);
}

#[test]
fn new_storage_ids_wait_until_no_other_master_can_win() {
    let mut net = Net::new(2);
    net.start(0);
    // Master 1 is not up yet but master 0 has not tried it: no new id.
    let answers = identify_to(&mut net, 0, storage_request(None));
    assert!(
        matches!(&answers[..], [Packet::Error(e)] if e.code == ErrorCode::NotReady),
        "{answers:?}"
    );
    // A storage with its id is welcome at once.
    let answers = identify_to(
        &mut net,
        0,
        p::RequestIdentification {
            address: Some(Address::new("127.0.0.1", 20001)),
            ..storage_request(Some(neo_proto::NodeId(3)))
        },
    );
    assert!(
        matches!(answers.first(), Some(Packet::AcceptIdentification(_))),
        "{answers:?}"
    );
    // Once master 1 was found unreachable, master 0 hands out ids.
    net.run(0.1);
    let answers = identify_to(&mut net, 0, storage_request(None));
    assert!(
        matches!(answers.first(), Some(Packet::AcceptIdentification(_))),
        "{answers:?}"
    );
}

#[test]
fn a_challenge_from_an_older_candidate_after_recovery_is_accepted() {
    // Out of RECOVERING (here: never left, but the peer has no key) a
    // master identifying without key is a secondary: accepted.
    let mut net = Net::new(2);
    net.start(0);
    net.run(2.0);
    let answers = identify_to(
        &mut net,
        0,
        p::RequestIdentification {
            node_type: NodeType::Master,
            nid: None,
            address: Some(address(1)),
            cluster: CLUSTER.into(),
            id_timestamp: None,
            extra: Map::new(),
        },
    );
    assert!(
        matches!(answers.first(), Some(Packet::AcceptIdentification(_))),
        "{answers:?}"
    );
    // A key older than ours wins.
    let answers = identify_to(
        &mut net,
        0,
        p::RequestIdentification {
            node_type: NodeType::Master,
            nid: None,
            address: Some(Address::new("127.0.0.1", 10005)),
            cluster: CLUSTER.into(),
            id_timestamp: Some(1.0),
            extra: Map::new(),
        },
    );
    assert!(answers.is_empty(), "the winner gets no answer: {answers:?}");
    assert!(net.nodes[0].as_ref().unwrap().secondary().is_some());
}
