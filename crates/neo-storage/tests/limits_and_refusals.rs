//! The storage node where a peer could make it do wrong: limits on what
//! peers make it hold, requests it does not serve yet (refused, never
//! silently ignored), and its session with the master (found through any
//! listed master, found again when lost).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use neo_net::{ConnId, Input, Node, Output};
use neo_proto::packets as p;
use neo_proto::{Address, CellState, ErrorCode, Map, NodeState, NodeType, Oid, Packet, Tid};
use neo_storage::node::{Limits, MAX_LIST_LENGTH};

/// The error answered to `msg_id` among `outputs`, if any.
fn error_answer(outputs: &[Output], msg_id: u32) -> Option<&p::Error> {
    outputs.iter().find_map(|output| match output {
        Output::Answer {
            msg_id: m,
            packet: Packet::Error(error),
            ..
        } if *m == msg_id => Some(error),
        _ => None,
    })
}

fn closed(outputs: &[Output], conn: ConnId) -> bool {
    outputs.contains(&Output::Close { conn })
}

/// A transaction that holds the write lock of `oid`, voted.
fn hold_lock(harness: &mut Harness, ttid: Tid, oid: Oid) {
    harness.store(ttid, oid, Tid::ZERO, b"holder");
    harness.client_sends(p::AskVoteTransaction { ttid });
}

#[test]
fn requests_waiting_for_locks_are_bounded_in_number() {
    let limits = Limits {
        waiting: 8,
        ..Limits::default()
    };
    let mut harness = Harness::with_limits(limits);
    hold_lock(&mut harness, tid(1), Oid(0));
    for _ in 0..8 {
        let outputs = harness.store(tid(2), Oid(0), Tid::ZERO, b"waits");
        assert!(outputs.is_empty(), "waits for the lock: {outputs:?}");
    }
    let outputs = harness.store(tid(2), Oid(0), Tid::ZERO, b"one too many");
    let msg_id = harness.next_msg_id;
    let error = error_answer(&outputs, msg_id).expect("refused");
    assert_eq!(error.code, ErrorCode::NotReady);
    assert!(
        !closed(&outputs, CLIENT),
        "over a limit is not a protocol error"
    );
    // Loads wait in the same queue.
    let load = p::AskObject {
        oid: Oid(0),
        at: None,
        before: None,
    };
    harness.master_sends(p::AskLockInformation {
        ttid: tid(1),
        tid: tid(3),
        pack_approved: false,
    });
    let outputs = harness.client_sends(load);
    assert_eq!(
        error_answer(&outputs, harness.next_msg_id).map(|e| e.code),
        Some(ErrorCode::NotReady)
    );
}

#[test]
fn requests_waiting_for_locks_are_bounded_in_bytes() {
    let limits = Limits {
        waiting_bytes: 10,
        ..Limits::default()
    };
    let mut harness = Harness::with_limits(limits);
    hold_lock(&mut harness, tid(1), Oid(0));
    assert!(harness
        .store(tid(2), Oid(0), Tid::ZERO, b"123456")
        .is_empty());
    let outputs = harness.store(tid(3), Oid(0), Tid::ZERO, b"789012");
    assert_eq!(
        error_answer(&outputs, harness.next_msg_id).map(|e| e.code),
        Some(ErrorCode::NotReady)
    );
}

#[test]
fn identifications_early_for_the_master_are_bounded() {
    let limits = Limits {
        early_identifications: 2,
        ..Limits::default()
    };
    let mut harness = Harness::with_limits(limits);
    let mut refused = Vec::new();
    for conn in 10..13 {
        let conn = ConnId(conn);
        harness.input(Input::Accepted { conn });
        // A client the master has not announced yet, with a newer id
        // timestamp than the last notification: held.
        let outputs = harness.packet(
            conn,
            p::RequestIdentification {
                node_type: NodeType::Client,
                nid: Some(neo_proto::NodeId::new(NodeType::Client, conn.0 as u32).unwrap()),
                address: None,
                cluster: "test".to_owned(),
                id_timestamp: Some(NOTIFICATION + 1.0),
                extra: Map::new(),
            },
        );
        refused.push(closed(&outputs, conn));
    }
    assert_eq!(refused, [false, false, true]);
}

/// No answer may exceed a packet: `AskTIDsFrom`, whose callers take a
/// short answer for the end, is refused over the limit, like listings of a
/// partition beyond the table; the other listings are answered with at
/// most [`MAX_LIST_LENGTH`] items (their callers page).
#[test]
fn listings_never_answer_more_than_a_packet_holds() {
    let too_long = MAX_LIST_LENGTH + 1;
    let refused: Vec<Packet> = vec![
        p::AskTIDsFrom {
            min_tid: Tid::ZERO,
            max_tid: Tid::MAX,
            length: too_long as u32,
            partition: 0,
        }
        .into(),
        // The table has one partition.
        p::AskTIDsFrom {
            min_tid: Tid::ZERO,
            max_tid: Tid::MAX,
            length: 10,
            partition: 1,
        }
        .into(),
        p::AskOIDsFrom {
            partition: 1,
            length: 10,
            min_oid: Oid(0),
            tid: Tid::MAX,
        }
        .into(),
        p::AskTIDs {
            first: 0,
            last: 10,
            partition: 1,
        }
        .into(),
    ];
    for request in refused {
        let name = request.name();
        let mut harness = Harness::new();
        let outputs = harness.client_sends(request);
        let error = error_answer(&outputs, harness.next_msg_id)
            .unwrap_or_else(|| panic!("{name} not refused: {outputs:?}"));
        assert_eq!(error.code, ErrorCode::ProtocolError, "{name}");
        assert!(closed(&outputs, CLIENT), "{name}");
    }
    let mut harness = Harness::new();
    harness.store(tid(1), Oid(0), Tid::ZERO, b"data");
    harness.vote_metadata(tid(1), vec![Oid(0)]);
    harness.lock(tid(1), tid(2));
    harness.master_sends(p::NotifyUnlockInformation { ttid: tid(1) });
    let paged: Vec<Packet> = vec![
        p::AskTIDs {
            first: 0,
            last: u64::MAX,
            partition: neo_proto::INVALID_PARTITION,
        }
        .into(),
        p::AskObjectHistory {
            oid: Oid(0),
            first: 0,
            last: u64::MAX,
        }
        .into(),
        p::AskOIDsFrom {
            partition: 0,
            length: u32::MAX,
            min_oid: Oid(0),
            tid: Tid::MAX,
        }
        .into(),
    ];
    for request in paged {
        let name = request.name();
        let outputs = harness.client_sends(request);
        match outputs.as_slice() {
            [Output::Answer {
                packet: Packet::AnswerTIDs(answer),
                ..
            }] => assert_eq!(answer.tids, [tid(2)]),
            [Output::Answer {
                packet: Packet::AnswerObjectHistory(answer),
                ..
            }] => assert_eq!(answer.history.len(), 1),
            [Output::Answer {
                packet: Packet::AnswerOIDsFrom(answer),
                ..
            }] => assert_eq!(answer.oids, [Oid(0)]),
            other => panic!("{name} not served: {other:?}"),
        }
    }
}

#[test]
fn partition_changes_beyond_the_table_are_refused() {
    let mut harness = Harness::new();
    let outputs = harness.master_sends(p::NotifyPartitionChanges {
        ptid: 2,
        num_replicas: 0,
        changes: vec![p::CellChange {
            partition: 7,
            nid: storage_nid(),
            state: CellState::UpToDate,
        }],
    });
    let error = error_answer(&outputs, harness.next_msg_id).expect("refused");
    assert_eq!(error.code, ErrorCode::ProtocolError);
    assert!(closed(&outputs, MASTER));
}

/// Asked to replicate, the node stops and says why instead of leaving the
/// master waiting for a replication that never comes.
#[test]
fn a_replication_order_stops_the_node_with_the_reason() {
    let mut harness = Harness::new();
    harness.next_msg_id += 1;
    let outputs = harness.input_may_exit(Input::Packet {
        conn: MASTER,
        msg_id: harness.next_msg_id,
        packet: p::Replicate {
            tid: tid(9),
            upstream_name: String::new(),
            sources: Map(vec![(0, Some(Address::new("127.0.0.1", 3)))]),
        }
        .into(),
    });
    let reason = outputs.iter().find_map(|output| match output {
        Output::Exit(Err(reason)) => Some(reason.clone()),
        _ => None,
    });
    let reason = reason.expect("the node exits");
    assert!(reason.contains("replicate partitions 0"), "{reason}");
}

/// Lost, the master is looked for again, the same one first; a secondary
/// master's redirection is followed.
#[test]
fn the_primary_is_found_again_and_redirections_are_followed() {
    let mut harness = Harness::new();
    let outputs = harness.input(Input::Closed { conn: MASTER });
    assert_eq!(outputs, [Output::Close { conn: CLIENT }]);
    // Tried a moment ago: again once the retry interval has passed.
    let again = 1.0 + neo_cluster::RETRY_INTERVAL;
    assert_eq!(harness.storage.poll_timeout(), Some(again));
    harness.now = again;
    let outputs = harness.input(Input::Timeout);
    let [Output::Connect { token, address }] = outputs.as_slice() else {
        panic!("expected a new attempt: {outputs:?}");
    };
    assert_eq!(address.port, 10000);
    let secondary = ConnId(30);
    let outputs = harness.input(Input::Connected {
        conn: secondary,
        token: *token,
    });
    assert!(matches!(
        outputs.as_slice(),
        [Output::Request {
            packet: Packet::RequestIdentification(_),
            ..
        }]
    ));
    let primary = Address::new("127.0.0.1", 10001);
    harness.next_msg_id += 1;
    let outputs = harness.input(Input::Packet {
        conn: secondary,
        msg_id: harness.next_msg_id,
        packet: p::NotPrimaryMaster {
            primary: Some(1),
            known_masters: vec![Address::new("127.0.0.1", 10000), primary.clone()],
        }
        .into(),
    });
    let [Output::Close { conn }, Output::Connect { address, .. }] = outputs.as_slice() else {
        panic!("expected a connection to the primary: {outputs:?}");
    };
    assert_eq!((*conn, address), (secondary, &primary));
}

/// A storage given one master learns the others from the primary's node
/// notifications: when the primary is lost, a spare is tried next.
#[test]
fn masters_learnt_from_notifications_are_tried_after_a_loss() {
    let mut harness = Harness::new();
    let spare = Address::new("127.0.0.1", 10001);
    harness.master_sends(p::NotifyNodeInformation {
        timestamp: 1e9,
        nodes: vec![p::NodeInfo {
            node_type: NodeType::Master,
            address: Some(spare.clone()),
            nid: None,
            state: NodeState::Down,
            id_timestamp: None,
        }],
    });
    harness.input(Input::Closed { conn: MASTER });
    harness.now += 10.0;
    let outputs = harness.input(Input::Timeout);
    let [Output::Connect { token, address }] = outputs.as_slice() else {
        panic!("expected an attempt: {outputs:?}");
    };
    assert_eq!(address.port, 10000, "the same master first");
    let outputs = harness.input(Input::ConnectFailed { token: *token });
    let [Output::Connect { address, .. }] = outputs.as_slice() else {
        panic!("expected an attempt at the spare: {outputs:?}");
    };
    assert_eq!(*address, spare);
}
