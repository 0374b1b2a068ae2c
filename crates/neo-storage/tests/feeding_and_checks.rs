//! The node as another storage sees it, driven packet by packet: storages
//! identify to it as the master announced them (one link per pair of
//! storages), it serves their replication (the items they lack with the
//! msg_id of their request, in bounded background steps, then the answer)
//! and their replica checks, it checks its own replicas when the master
//! asks, and it deletes the data of discarded cells. The hostile cases:
//! huge lengths and known lists, fetches and checks of transactions being
//! committed, unknown and duplicate storages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use neo_net::{ConnId, Input, Node, Output, Token};
use neo_proto::packets::{self as p, CellInfo};
use neo_proto::{CellState, ErrorCode, Map, NodeId, NodeType, Oid, Packet, Tid};
use neo_storage::db::digest;
use neo_storage::node::{MAX_CHECK_LENGTH, MAX_FETCH_LENGTH};

const PEER: ConnId = ConnId(30);

fn peer_nid() -> NodeId {
    other_storage_nid()
}

/// One partition, UP_TO_DATE on this node and on the peer.
fn setup() -> Setup {
    shared_partition(CellState::UpToDate)
}

fn identification(nid: Option<NodeId>, id_timestamp: f64) -> p::RequestIdentification {
    p::RequestIdentification {
        node_type: NodeType::Storage,
        nid,
        address: nid.map(storage_address),
        cluster: "test".to_owned(),
        id_timestamp: Some(id_timestamp),
        extra: Map::new(),
    }
}

/// The peer connects and identifies.
fn peer_identifies(harness: &mut Harness) {
    harness.input(Input::Accepted { conn: PEER });
    let outputs = harness.packet(
        PEER,
        identification(Some(peer_nid()), id_timestamp(peer_nid())),
    );
    assert_eq!(
        answers(&outputs),
        [&Packet::AcceptIdentification(p::AcceptIdentification {
            node_type: NodeType::Storage,
            nid: Some(harness.own()),
            your_nid: Some(peer_nid()),
        })]
    );
}

/// Stores, votes and locks transaction `ttid` (with its metadata),
/// writing oid 0 over `serial`; not unlocked.
fn lock(harness: &mut Harness, ttid: Tid, serial: Tid) {
    harness.store(ttid, Oid(0), serial, b"data");
    harness.vote_metadata(ttid, vec![Oid(0)]);
    harness.lock(ttid, ttid);
}

/// Commits `count` transactions, `tid(2)`, `tid(4)`..., each writing
/// oid 0.
fn commit_many(harness: &mut Harness, count: u64) {
    for n in 1..=count {
        let ttid = tid(2 * n);
        let serial = if n == 1 { Tid::ZERO } else { tid(2 * n - 2) };
        lock(harness, ttid, serial);
        harness.master_sends(p::NotifyUnlockInformation { ttid });
    }
}

/// Every packet sent to `conn` with `msg_id`, through every background
/// step until the answer.
fn pushed(harness: &mut Harness, first: Vec<Output>, msg_id: u32) -> Vec<Vec<Packet>> {
    let mut steps = vec![first];
    while harness.storage.poll_timeout() == Some(harness.now) {
        steps.push(harness.input(Input::Timeout));
    }
    steps
        .iter()
        .map(|outputs| {
            outputs
                .iter()
                .filter_map(|output| match output {
                    Output::Answer {
                        conn: PEER,
                        msg_id: m,
                        packet,
                    } => {
                        assert_eq!(*m, msg_id, "sent with the msg_id of the request");
                        Some(packet.clone())
                    }
                    _ => None,
                })
                .collect()
        })
        .filter(|packets: &Vec<Packet>| !packets.is_empty())
        .collect()
}

fn fetch_transactions(length: u32, known_tids: Vec<Tid>) -> p::AskFetchTransactions {
    p::AskFetchTransactions {
        partition: 0,
        length,
        min_tid: Tid::ZERO,
        max_tid: Tid::MAX,
        known_tids,
        ask_pack_info: true,
    }
}

fn error(outputs: &[Output]) -> Option<(ErrorCode, bool)> {
    let error = outputs.iter().find_map(|output| match output {
        Output::Answer {
            packet: Packet::Error(error),
            ..
        } => Some(error.code),
        _ => None,
    })?;
    Some((error, outputs.contains(&Output::Close { conn: PEER })))
}

#[test]
fn storages_identify_as_the_master_announced_them() {
    let mut harness = Harness::start(setup());
    let cases = [
        // The master announced another id_timestamp, older than its last
        // notification: gone since.
        (
            identification(Some(peer_nid()), 2.5),
            Some(ErrorCode::NotReady),
        ),
        // Ourselves.
        (
            identification(Some(storage_nid()), id_timestamp(storage_nid())),
            Some(ErrorCode::ProtocolError),
        ),
        // Newer than the last notification: held until it comes.
        (identification(Some(NodeId(7)), NOTIFICATION + 1.0), None),
    ];
    for (n, (request, refused)) in cases.into_iter().enumerate() {
        let conn = ConnId(40 + n as u64);
        harness.input(Input::Accepted { conn });
        let outputs = harness.packet(conn, request);
        let code = outputs.iter().find_map(|output| match output {
            Output::Answer {
                packet: Packet::Error(error),
                ..
            } => Some(error.code),
            _ => None,
        });
        assert_eq!(code, refused, "case {n}: {outputs:?}");
        assert_eq!(outputs.contains(&Output::Close { conn }), refused.is_some());
    }
    // The held one is accepted once the master announces it.
    let outputs = harness.master_sends(p::NotifyNodeInformation {
        timestamp: NOTIFICATION + 2.0,
        nodes: vec![p::NodeInfo {
            id_timestamp: Some(NOTIFICATION + 1.0),
            ..storage_info(NodeId(7), storage_address(NodeId(7)))
        }],
    });
    assert!(matches!(
        answers(&outputs)[..],
        [Packet::AcceptIdentification(_)]
    ));
    // A storage of a backup cluster, anonymous.
    harness.input(Input::Accepted { conn: PEER });
    let outputs = harness.packet(PEER, identification(None, 9.0));
    assert_eq!(
        answers(&outputs),
        [&Packet::AcceptIdentification(p::AcceptIdentification {
            node_type: NodeType::Storage,
            nid: None,
            your_nid: None,
        })]
    );
}

/// Two storages connecting to each other at once keep one connection: the
/// one the greater id started (protocol.md §9.3).
#[test]
fn of_two_links_between_storages_the_greater_id_s_stays() {
    // This node (S1) checks with S2 and connects to it; S2 connects too.
    let mut harness = Harness::start(setup());
    let outputs = harness.master_sends(check_partition(None, Tid::MAX));
    let [Output::Connect { token, .. }] = outputs[..] else {
        panic!("{outputs:?}");
    };
    let outgoing = ConnId(50);
    harness.input(Input::Connected {
        conn: outgoing,
        token,
    });
    // S2's own connection wins: ours is closed, the check goes on it.
    harness.input(Input::Accepted { conn: PEER });
    let outputs = harness.packet(
        PEER,
        identification(Some(peer_nid()), id_timestamp(peer_nid())),
    );
    assert!(
        outputs.contains(&Output::Close { conn: outgoing }),
        "{outputs:?}"
    );
    assert!(outputs.iter().any(|output| matches!(
        output,
        Output::Request {
            conn: PEER,
            packet: Packet::AskCheckTIDRange(_),
            ..
        }
    )));

    // This node is S3 now, greater than S2: S2's connection is refused.
    let mut harness = Harness::start(Setup {
        own: NodeId(3),
        rows: vec![vec![
            CellInfo {
                nid: NodeId(3),
                state: CellState::UpToDate,
            },
            CellInfo {
                nid: peer_nid(),
                state: CellState::UpToDate,
            },
        ]],
        ..setup()
    });
    let outputs = harness.master_sends(check_partition(None, Tid::MAX));
    let [Output::Connect { token, .. }] = outputs[..] else {
        panic!("{outputs:?}");
    };
    harness.input(Input::Connected {
        conn: outgoing,
        token,
    });
    harness.input(Input::Accepted { conn: PEER });
    let outputs = harness.packet(
        PEER,
        identification(Some(peer_nid()), id_timestamp(peer_nid())),
    );
    assert_eq!(error(&outputs), Some((ErrorCode::ProtocolError, true)));
}

/// A fetch is answered with what the requester lacks, each item with the
/// msg_id of the request, a few at a time in background steps, then the
/// answer: the next tid, and what the requester has that this node has
/// not, up to the next chunk only.
#[test]
fn fetches_are_pushed_in_steps_with_the_msg_id_of_the_request() {
    let mut harness = Harness::start(setup());
    commit_many(&mut harness, 300);
    peer_identifies(&mut harness);
    // The requester has tid(4), a tid this node lacks below the next
    // chunk, and one beyond it.
    let known = vec![tid(4), tid(5), tid(800)];
    let first = harness.packet(PEER, fetch_transactions(299, known));
    let msg_id = harness.next_msg_id;
    let steps = pushed(&mut harness, first, msg_id);
    assert!(steps.len() > 1, "in several steps");
    let packets: Vec<Packet> = steps.into_iter().flatten().collect();
    assert_eq!(packets.len(), 299);
    assert!(matches!(&packets[0], Packet::AddTransaction(add) if add.tid == tid(2)));
    assert!(matches!(&packets[1], Packet::AddTransaction(add) if add.tid == tid(6)));
    let Some(Packet::AnswerFetchTransactions(answer)) = packets.last() else {
        panic!("{:?}", packets.last());
    };
    assert_eq!(answer.next_tid, Some(tid(600)));
    assert_eq!(answer.delete_tids, [tid(5)]);
    assert_eq!(answer.completed_pack, Some(Tid::ZERO));

    let first = harness.packet(
        PEER,
        p::AskFetchObjects {
            partition: 0,
            length: 1000,
            min_tid: tid(600),
            max_tid: Tid::MAX,
            min_oid: Oid(0),
            known: Map(vec![(tid(598), vec![Oid(0)])]),
        },
    );
    let msg_id = harness.next_msg_id;
    let packets: Vec<Packet> = pushed(&mut harness, first, msg_id).concat();
    let [Packet::AddObject(add), Packet::AnswerFetchObjects(answer)] = &packets[..] else {
        panic!("{packets:?}");
    };
    assert_eq!(
        (add.oid, add.serial, &add.data[..]),
        (Oid(0), tid(600), &b"data"[..])
    );
    // Known below the chunk's start: not this chunk's business.
    assert_eq!((answer.next_tid, &answer.delete), (None, &Map::new()));
}

/// A peer controls the length and the known lists of a fetch: the length
/// is bounded (the answer then says where to go on), a known list beyond
/// the bound is refused, as is a partition beyond the table; a cell that
/// is not readable here is a REPLICATION_ERROR.
#[test]
fn fetches_are_bounded() {
    let mut harness = Harness::start(setup());
    commit_many(&mut harness, 1);
    peer_identifies(&mut harness);
    let first = harness.packet(PEER, fetch_transactions(u32::MAX, vec![]));
    let msg_id = harness.next_msg_id;
    let packets = pushed(&mut harness, first, msg_id).concat();
    assert_eq!(packets.len(), 2, "one transaction, then the answer");

    let known = vec![tid(2); MAX_FETCH_LENGTH as usize + 1];
    let outputs = harness.packet(PEER, fetch_transactions(10, known));
    assert_eq!(error(&outputs), Some((ErrorCode::ProtocolError, true)));

    let mut harness = Harness::start(setup());
    peer_identifies(&mut harness);
    let mut beyond = fetch_transactions(10, vec![]);
    beyond.partition = 1;
    let outputs = harness.packet(PEER, beyond);
    assert_eq!(error(&outputs), Some((ErrorCode::ProtocolError, true)));

    let mut harness = Harness::start(shared_partition(CellState::OutOfDate));
    peer_identifies(&mut harness);
    let outputs = harness.packet(PEER, fetch_transactions(10, vec![]));
    assert_eq!(error(&outputs), Some((ErrorCode::ReplicationError, false)));
}

/// A fetch must not miss a transaction being committed: it waits for the
/// unlock; objects asked before their transactions are a protocol error.
#[test]
fn fetches_wait_for_transactions_being_committed() {
    let mut harness = Harness::start(setup());
    peer_identifies(&mut harness);
    let ttid = tid(1);
    lock(&mut harness, ttid, Tid::ZERO);
    let outputs = harness.packet(PEER, fetch_transactions(10, vec![]));
    assert!(outputs.is_empty(), "{outputs:?}");
    let msg_id = harness.next_msg_id;
    let outputs = harness.packet(
        PEER,
        p::AskFetchObjects {
            partition: 0,
            length: 10,
            min_tid: Tid::ZERO,
            max_tid: Tid::MAX,
            min_oid: Oid(0),
            known: Map::new(),
        },
    );
    assert_eq!(error(&outputs), Some((ErrorCode::ProtocolError, true)));
    let unlocked = harness.master_sends(p::NotifyUnlockInformation { ttid });
    let packets = pushed(&mut harness, unlocked, msg_id).concat();
    assert!(
        matches!(&packets[..], [_, Packet::AnswerFetchTransactions(_)]),
        "{packets:?}"
    );
}

/// Check requests of a peer are answered with NEO's digests, refused with
/// CHECKING_ERROR by a cell that is out of date, bounded in length, and
/// an object range while a transaction is being committed is a protocol
/// error.
#[test]
fn check_requests_of_peers_are_served_and_bounded() {
    let mut harness = Harness::start(setup());
    commit_many(&mut harness, 2);
    peer_identifies(&mut harness);
    let outputs = harness.packet(
        PEER,
        p::AskCheckTIDRange {
            partition: 0,
            length: 40000,
            min_tid: Tid::ZERO,
            max_tid: Tid::MAX,
        },
    );
    assert_eq!(
        answers(&outputs),
        [&Packet::AnswerCheckTIDRange(p::AnswerCheckTIDRange {
            count: 2,
            digest: digest([tid(2).0, tid(4).0].into_iter()),
            max_tid: tid(4),
        })]
    );
    let outputs = harness.packet(
        PEER,
        p::AskCheckTIDRange {
            partition: 0,
            length: MAX_CHECK_LENGTH + 1,
            min_tid: Tid::ZERO,
            max_tid: Tid::MAX,
        },
    );
    assert_eq!(error(&outputs), Some((ErrorCode::ProtocolError, true)));

    let mut harness = Harness::start(setup());
    peer_identifies(&mut harness);
    let ttid = tid(1);
    lock(&mut harness, ttid, Tid::ZERO);
    let outputs = harness.packet(
        PEER,
        p::AskCheckSerialRange {
            partition: 0,
            length: 10,
            min_tid: Tid::ZERO,
            max_tid: Tid::MAX,
            min_oid: Oid(0),
        },
    );
    assert_eq!(error(&outputs), Some((ErrorCode::ProtocolError, true)));

    let mut harness = Harness::start(shared_partition(CellState::OutOfDate));
    peer_identifies(&mut harness);
    let outputs = harness.packet(
        PEER,
        p::AskCheckTIDRange {
            partition: 0,
            length: 10,
            min_tid: Tid::ZERO,
            max_tid: Tid::MAX,
        },
    );
    assert_eq!(error(&outputs), Some((ErrorCode::CheckingError, false)));
}

/// `CheckPartition`: each range is asked of the peer and computed here;
/// equal answers go on to the next range, different ones are reported to
/// the master (every node without a reference, the others than the
/// reference with one).
#[test]
fn replica_checks_report_the_nodes_that_differ() {
    for source in [None, Some(storage_address(peer_nid()))] {
        let mut harness = Harness::start(setup());
        commit_many(&mut harness, 2);
        peer_identifies(&mut harness);
        let outputs = harness.master_sends(check_partition(source.clone(), tid(4)));
        let (token, request) = check_request(&outputs);
        let Packet::AskCheckTIDRange(request) = request else {
            panic!("{request:?}");
        };
        assert_eq!((request.length, request.max_tid), (40000, tid(4)));
        let same = p::AnswerCheckTIDRange {
            count: 2,
            digest: digest([tid(2).0, tid(4).0].into_iter()),
            max_tid: tid(4),
        };
        let outputs = harness.input(Input::Answer {
            conn: PEER,
            token,
            packet: same.into(),
        });
        let (token, request) = check_request(&outputs);
        assert!(matches!(request, Packet::AskCheckSerialRange(r) if r.min_tid == Tid::ZERO));
        let different = p::AnswerCheckSerialRange {
            count: 1,
            tid_digest: digest([tid(2).0].into_iter()),
            max_tid: tid(2),
            oid_digest: digest([0].into_iter()),
            max_oid: Oid(0),
        };
        let outputs = harness.input(Input::Answer {
            conn: PEER,
            token,
            packet: different.into(),
        });
        let reported = outputs.iter().find_map(|output| match output {
            Output::Notify {
                conn: MASTER,
                packet: Packet::NotifyPartitionCorrupted(corrupted),
            } => Some(corrupted.nids.clone()),
            _ => None,
        });
        let expected = match source {
            None => vec![storage_nid(), peer_nid()],
            Some(_) => vec![storage_nid()],
        };
        assert_eq!(reported, Some(expected));
    }
}

/// `CheckPartition` of partition 0 up to `max_tid`, against `source`.
fn check_partition(source: Option<neo_proto::Address>, max_tid: Tid) -> p::CheckPartition {
    p::CheckPartition {
        partition: 0,
        source: p::CheckSource {
            upstream_name: String::new(),
            address: source,
        },
        min_tid: Tid::ZERO,
        max_tid,
    }
}

fn check_request(outputs: &[Output]) -> (Token, Packet) {
    outputs
        .iter()
        .find_map(|output| match output {
            Output::Request {
                conn: PEER,
                token,
                packet,
            } => Some((*token, packet.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected a check request: {outputs:?}"))
}

/// The data of a discarded cell is deleted in background steps, unless
/// the node runs with `--disable-drop-partitions`.
#[test]
fn discarded_cells_are_deleted_in_background_unless_disabled() {
    for disabled in [false, true] {
        let mut harness = Harness::start(setup());
        harness.storage.set_disable_drop_partitions(disabled);
        commit_many(&mut harness, 3);
        harness.master_sends(p::NotifyPartitionChanges {
            ptid: 2,
            num_replicas: 0,
            changes: vec![p::CellChange {
                partition: 0,
                nid: storage_nid(),
                state: CellState::Discarded,
            }],
        });
        while harness.storage.poll_timeout() == Some(harness.now) {
            harness.input(Input::Timeout);
        }
        let conn = rusqlite::Connection::open(harness.dir.path().join("neo.sqlite")).unwrap();
        let rows: i64 = conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM obj) + (SELECT COUNT(*) FROM trans)",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(rows, if disabled { 6 } else { 0 }, "disabled: {disabled}");
    }
}
