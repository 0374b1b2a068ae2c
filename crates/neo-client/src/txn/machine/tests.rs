//! `ClientTxn` without sockets: what it sends where, and what answers do.
use neo_proto::packets::{CellInfo, RelockConflict, StoredData};
use neo_proto::CellState;

use super::*;

/// ttid % 2 == 1: the metadata goes to partition 1 of a 2-row table.
const TTID: Tid = Tid(0x0101);
const BASE: Tid = Tid(0x0050);

fn table(rows: &[&[(i32, CellState)]]) -> PartitionTable {
    let rows: Vec<Vec<CellInfo>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|(nid, state)| CellInfo {
                    nid: NodeId(*nid),
                    state: *state,
                })
                .collect()
        })
        .collect();
    PartitionTable::from_rows(Some(1), 1, &rows).unwrap()
}

/// One partition on storages 1 (up to date) and 2 (replicating).
fn replicated() -> PartitionTable {
    table(&[&[(1, CellState::UpToDate), (2, CellState::OutOfDate)]])
}

/// Partition 0 on storage 1, partition 1 on storage 2.
fn split() -> PartitionTable {
    table(&[&[(1, CellState::UpToDate)], &[(2, CellState::UpToDate)]])
}

fn txn(max_bytes_in_flight: usize) -> ClientTxn {
    let limits = Limits {
        max_bytes_in_flight,
        max_object_size: 1 << 20,
    };
    ClientTxn::new(TTID, limits)
}

/// Tokens unique in the whole test binary, as the client's are.
fn next() -> Token {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Token(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn record(oid: u64, serial: Tid, data: &'static [u8]) -> Store {
    let data = Bytes::from_static(data);
    Store {
        oid: Oid(oid),
        serial,
        encoded: data::encode(&data, false),
        data: Some(data),
        data_serial: None,
    }
}

fn stored(conflict: Option<Tid>) -> Option<Packet> {
    Some(packets::AnswerStoreObject { conflict }.into())
}

fn nids(requests: &[Outgoing]) -> Vec<NodeId> {
    requests.iter().map(|request| request.nid).collect()
}

/// Answers every request with the answer its request expects.
fn answer_all(txn: &mut ClientTxn, requests: &[Outgoing]) {
    for request in requests {
        let answer: Packet = match &request.packet {
            Packet::AskStoreObject(_) => packets::AnswerStoreObject { conflict: None }.into(),
            Packet::AskCheckCurrentSerial(_) => {
                packets::AnswerCheckCurrentSerial { conflict: None }.into()
            }
            Packet::AskStoreTransaction(_) => packets::AnswerStoreTransaction {}.into(),
            Packet::AskVoteTransaction(_) => packets::AnswerVoteTransaction {}.into(),
            other => panic!("unexpected request {other:?}"),
        };
        assert!(txn.on_answer(request.token, Some(answer)));
    }
}

/// A transaction that stored `oid` on every cell of its partition, each
/// cell locking it.
fn stored_on(pt: &PartitionTable, oid: u64) -> ClientTxn {
    let mut txn = txn(1 << 20);
    let requests = txn.store(pt, record(oid, BASE, b"x"), &mut next).unwrap();
    answer_all(&mut txn, &requests);
    txn
}

#[test]
fn stores_fan_out_to_every_cell_of_the_oid_partition() {
    let pt = split();
    let mut txn = txn(1 << 20);
    let first = txn.store(&pt, record(2, BASE, b"even"), &mut next).unwrap();
    assert_eq!(nids(&first), [NodeId(1)]);
    assert_eq!(
        first[0].packet,
        Packet::AskStoreObject(packets::AskStoreObject {
            oid: Oid(2),
            serial: BASE,
            compression: data::RAW,
            checksum: data::checksum(b"even"),
            data: Bytes::from_static(b"even"),
            data_serial: None,
            ttid: TTID,
        })
    );
    let pt = replicated();
    let both = txn.store(&pt, record(3, BASE, b"odd"), &mut next).unwrap();
    assert_eq!(nids(&both), [NodeId(1), NodeId(2)], "replicating cells too");
    assert_ne!(both[0].token, both[1].token);
    assert_eq!(both[0].packet, both[1].packet);
    assert!(!txn.all_answered());
}

#[test]
fn conflicts_settle_when_every_answer_of_the_store_is_in() {
    let pt = replicated();
    let mut txn = txn(1 << 20);
    let requests = txn.store(&pt, record(0, BASE, b"mine"), &mut next).unwrap();
    assert!(txn.on_answer(requests[0].token, stored(Some(Tid(0x60)))));
    assert!(txn.take_conflicts().is_empty(), "one answer still awaited");
    assert!(txn.on_answer(requests[1].token, stored(Some(Tid(0x70)))));
    assert_eq!(
        txn.take_conflicts(),
        [Conflict {
            oid: Oid(0),
            serial: BASE,
            conflict_serial: Tid(0x70),
            data: Some(Bytes::from_static(b"mine")),
            checked: false,
        }],
        "the newest conflicting serial"
    );
    let unresolved = txn.vote(&pt, &TxnMeta::default(), &mut next);
    assert!(matches!(unresolved, Err(ClientError::InvalidUse(_))));
    // Stored again on top of it: the vote may go on.
    let again = txn.store(&pt, record(0, Tid(0x70), b"merged"), &mut next);
    answer_all(&mut txn, &again.unwrap());
    assert!(txn.vote(&pt, &TxnMeta::default(), &mut next).is_ok());
}

#[test]
fn answers_to_a_superseded_store_are_ignored() {
    let pt = split();
    let mut txn = txn(1 << 20);
    let old = txn.store(&pt, record(0, BASE, b"one"), &mut next).unwrap();
    let new = txn.store(&pt, record(0, BASE, b"two"), &mut next).unwrap();
    assert!(txn.on_answer(old[0].token, stored(Some(Tid(0x60)))));
    assert!(txn.take_conflicts().is_empty());
    assert!(!txn.all_answered());
    assert!(txn.on_answer(new[0].token, stored(None)));
    assert!(txn.take_conflicts().is_empty());
    assert!(txn.check_fatal().is_ok());
    assert!(txn.all_answered());
}

#[test]
fn an_answer_for_a_token_not_pending_changes_nothing() {
    // A peer cannot pick our tokens (neo-net maps its msg_ids to them,
    // once); the machine still ignores a token answered already.
    let pt = replicated();
    let mut txn = txn(1 << 20);
    let requests = txn.store(&pt, record(0, BASE, b"x"), &mut next).unwrap();
    assert!(txn.on_answer(requests[0].token, stored(None)));
    assert!(!txn.on_answer(requests[0].token, stored(Some(Tid(0x60)))));
    assert!(!txn.on_answer(Token(999), None));
    assert!(!txn.all_answered(), "the second cell has not answered");
    assert!(txn.on_answer(requests[1].token, stored(None)));
    assert!(txn.take_conflicts().is_empty());
    assert!(txn.failed_nodes().is_empty());
}

#[test]
fn lockless_partitions_need_a_locked_cell_that_did_not_fail() {
    let pt = replicated();
    let commit = |failing: i32, running: bool| {
        let mut txn = txn(1 << 20);
        let requests = txn.store(&pt, record(0, BASE, b"x"), &mut next).unwrap();
        // Storage 2 replicates: it stores without locking.
        assert!(txn.on_answer(requests[0].token, stored(None)));
        assert!(txn.on_answer(requests[1].token, stored(Some(Tid::ZERO))));
        txn.node_failed(NodeId(failing));
        let votes = txn.vote(&pt, &TxnMeta::default(), &mut next).unwrap();
        answer_all(&mut txn, &votes);
        txn.vote_result(&pt, |_| running)
    };
    // The locked cell is lost: nothing holds the write lock any more.
    assert!(matches!(
        commit(1, true),
        Err(ClientError::TransactionFailed { reason, .. }) if reason.contains("partition 0")
    ));
    // The lockless one is lost: reported to the master while running.
    let failed_vote = commit(2, true).unwrap().unwrap();
    assert_eq!(failed_vote.failed_nids, [NodeId(2)]);
    assert_eq!(failed_vote.ttid, TTID);
    assert_eq!(commit(2, false).unwrap(), None);
    // Without failures, lockless cells are fine.
    let mut txn = txn(1 << 20);
    let requests = txn.store(&pt, record(0, BASE, b"x"), &mut next).unwrap();
    assert!(txn.on_answer(requests[0].token, stored(Some(Tid::ZERO))));
    assert!(txn.on_answer(requests[1].token, stored(Some(Tid::ZERO))));
    let votes = txn.vote(&pt, &TxnMeta::default(), &mut next).unwrap();
    answer_all(&mut txn, &votes);
    assert_eq!(txn.vote_result(&pt, |_| true).unwrap(), None);
}

#[test]
fn a_store_no_cell_answered_fails_the_transaction() {
    let pt = split();
    let mut txn = txn(1 << 20);
    let requests = txn.store(&pt, record(0, BASE, b"x"), &mut next).unwrap();
    assert!(txn.on_answer(requests[0].token, None));
    assert!(txn.is_failed(NodeId(1)));
    assert!(matches!(
        txn.check_fatal(),
        Err(ClientError::TransactionFailed { .. })
    ));
    // Storage 1 is never asked again in this transaction.
    let later = txn.store(&pt, record(2, BASE, b"y"), &mut next);
    assert!(later.is_err(), "the transaction is failed");
    assert_eq!(
        txn.abort(),
        Some(Abort {
            live: vec![],
            tried: vec![NodeId(1)],
        })
    );
    assert_eq!(txn.abort(), None, "aborted once");
}

#[test]
fn relock_answers_with_data_become_conflicts() {
    let pt = split();
    let mut txn = stored_on(&pt, 0);
    let relock = txn.on_deadlock(Oid(0), NodeId(1), &mut next).unwrap();
    assert_eq!(relock.nid, NodeId(1));
    assert_eq!(
        relock.packet,
        Packet::AskRelockObject(packets::AskRelockObject {
            ttid: TTID,
            oid: Oid(0)
        })
    );
    assert_eq!(
        txn.on_deadlock(Oid(0), NodeId(1), &mut next),
        None,
        "one relock in flight per oid and storage"
    );
    assert_eq!(txn.on_deadlock(Oid(0), NodeId(2), &mut next), None);
    assert_eq!(txn.on_deadlock(Oid(4), NodeId(1), &mut next), None);
    assert!(!txn.all_answered());
    let given_back = Bytes::from(vec![b'z'; 300]);
    let encoded = data::encode(&given_back, true);
    assert_eq!(encoded.compression, data::ZLIB);
    let conflict = RelockConflict {
        serial: BASE,
        conflict_tid: Tid(0x90),
        data: Some(StoredData {
            compression: encoded.compression,
            checksum: encoded.checksum,
            data: encoded.data,
        }),
    };
    let answer = packets::AnswerRelockObject {
        conflict: Some(conflict),
    };
    assert!(txn.on_answer(relock.token, Some(answer.into())));
    assert_eq!(
        txn.take_conflicts(),
        [Conflict {
            oid: Oid(0),
            serial: BASE,
            conflict_serial: Tid(0x90),
            data: Some(given_back),
            checked: false,
        }]
    );
    assert!(txn.vote(&pt, &TxnMeta::default(), &mut next).is_err());
}

/// The lost update of the fault tests: every store answered, then a
/// `NotifyDeadlock` makes the client give the lock up (relock); voting
/// before the relock is answered would commit the store without its lock.
#[test]
fn no_vote_while_a_relock_is_unanswered() {
    let pt = split();
    let mut txn = stored_on(&pt, 0);
    assert!(txn.all_answered());
    let relock = txn.on_deadlock(Oid(0), NodeId(1), &mut next).unwrap();
    assert!(!txn.all_answered());
    assert!(txn.vote(&pt, &TxnMeta::default(), &mut next).is_err());
    // The lock taken again without conflict: the vote may go.
    let answer = packets::AnswerRelockObject { conflict: None };
    assert!(txn.on_answer(relock.token, Some(answer.into())));
    assert!(txn.all_answered());
    assert!(txn.vote(&pt, &TxnMeta::default(), &mut next).is_ok());
}

#[test]
fn deadlocks_are_ignored_once_voting() {
    let pt = split();
    let mut txn = stored_on(&pt, 0);
    txn.vote(&pt, &TxnMeta::default(), &mut next).unwrap();
    assert_eq!(txn.on_deadlock(Oid(0), NodeId(1), &mut next), None);
}

#[test]
fn stores_wait_while_their_bytes_exceed_the_budget() {
    let pt = split();
    let mut txn = txn(10);
    let first = txn
        .store(&pt, record(0, BASE, b"12345678"), &mut next)
        .unwrap();
    assert!(!txn.over_budget());
    let second = txn
        .store(&pt, record(1, BASE, b"12345678"), &mut next)
        .unwrap();
    assert!(txn.over_budget(), "16 bytes in flight");
    answer_all(&mut txn, &first);
    assert!(!txn.over_budget(), "8 bytes in flight");
    // A store again of oid 1 replaces its bytes instead of adding.
    txn.store(&pt, record(1, BASE, b"1234"), &mut next).unwrap();
    assert!(!txn.over_budget());
    txn.store(&pt, record(1, BASE, b"12345678901"), &mut next)
        .unwrap();
    assert!(txn.over_budget(), "11 bytes in flight");
    assert!(txn.on_answer(second[0].token, stored(None)));
    assert!(
        txn.over_budget(),
        "a superseded store's answer frees nothing"
    );
}

#[test]
fn vote_and_finish_carry_the_oids_and_partitions() {
    let pt = split();
    let mut txn = txn(1 << 20);
    let mut requests = Vec::new();
    requests.extend(txn.store(&pt, record(0, BASE, b"a"), &mut next).unwrap());
    requests.extend(txn.check_current(&pt, Oid(1), BASE, &mut next).unwrap());
    let deletion = Store {
        data: None,
        encoded: data::no_data(),
        ..record(2, BASE, b"")
    };
    requests.extend(txn.store(&pt, deletion, &mut next).unwrap());
    // An undo back to a revision without data: a back-pointer, not a
    // deletion (NEO/py's delete_list takes only stores with neither).
    let back_pointer = Store {
        data: None,
        encoded: data::no_data(),
        data_serial: Some(BASE),
        ..record(3, BASE, b"")
    };
    requests.extend(txn.store(&pt, back_pointer, &mut next).unwrap());
    answer_all(&mut txn, &requests);
    assert!(matches!(
        txn.check_current(&pt, Oid(0), BASE, &mut next),
        Err(ClientError::InvalidUse(_))
    ));
    assert!(txn.finish_request().is_err(), "not voted");
    let pack = PackRequest {
        oids: None,
        pack_tid: BASE,
    };
    let meta = TxnMeta {
        description: Bytes::from_static(b"d"),
        pack: Some(pack.clone()),
        ..TxnMeta::default()
    };
    let votes = txn.vote(&pt, &meta, &mut next).unwrap();
    // partition(ttid) = 1, on storage 2: the metadata goes there.
    assert_eq!(nids(&votes), [NodeId(2), NodeId(1)]);
    assert_eq!(
        votes[0].packet,
        Packet::AskStoreTransaction(packets::AskStoreTransaction {
            ttid: TTID,
            user: Bytes::new(),
            description: Bytes::from_static(b"d"),
            extension: Bytes::new(),
            oids: vec![Oid(0), Oid(1), Oid(2), Oid(3)],
            pack: Some(pack.clone()),
        })
    );
    assert_eq!(
        votes[1].packet,
        Packet::AskVoteTransaction(packets::AskVoteTransaction { ttid: TTID })
    );
    answer_all(&mut txn, &votes);
    assert_eq!(txn.vote_result(&pt, |_| true).unwrap(), None);
    txn.voted();
    assert_eq!(
        txn.finish_request().unwrap(),
        packets::AskFinishTransaction {
            ttid: TTID,
            oids: vec![Oid(0), Oid(3)],
            deleted: vec![0],
            checked: vec![1],
            pack: Some(pack),
        }
    );
    txn.finished();
    assert_eq!(txn.abort(), None, "never aborted once finishing");
}

#[test]
fn a_vote_without_metadata_fails() {
    let pt = split();
    let mut txn = stored_on(&pt, 1);
    let votes = txn.vote(&pt, &TxnMeta::default(), &mut next).unwrap();
    assert_eq!(nids(&votes), [NodeId(2)]);
    assert!(txn.on_answer(votes[0].token, None));
    assert!(txn.vote_result(&pt, |_| true).is_err());
    // A storage refusing the vote fails it at once.
    let mut refused = self::txn(1 << 20);
    let votes = refused.vote(&pt, &TxnMeta::default(), &mut next).unwrap();
    let error = packets::Error::new(neo_proto::ErrorCode::ProtocolError, "no");
    assert!(refused.on_answer(votes[0].token, Some(error.into())));
    assert!(refused.check_fatal().is_err());
}

#[test]
fn undo_asks_partition_by_partition() {
    let txn = txn(1 << 20);
    let oids = [Oid(0), Oid(1), Oid(2), Oid(3)];
    let groups = txn.undo_groups(&split(), &oids);
    let expected = BTreeMap::from([(0, vec![Oid(0), Oid(2)]), (1, vec![Oid(1), Oid(3)])]);
    assert_eq!(groups, expected);
}
