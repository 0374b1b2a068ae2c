//! The storage node's state machine driven packet by packet over a real
//! SQLite database, without any network: what it answers, and in which
//! order, when requests have to wait for locks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use neo_net::{Input, Node, Output};
use neo_proto::packets::{self as p, UndoSerial};
use neo_proto::{Checksum, Oid, Packet, Tid};

/// Undoing several transactions in one transaction asks for undo serials
/// right after storing the first undo. When both wait for the unlock of
/// a commit, the undo serials must still see that store, or the second
/// undo builds on the committed revision instead of on its own store.
#[test]
fn undo_serials_waiting_with_a_store_see_that_store() {
    let mut harness = Harness::new();
    let oid = Oid(0);
    let (committing, committed) = (tid(1), tid(2));
    let undoing = tid(3);

    // A transaction is being committed on the oid: locked, not unlocked.
    let stored = harness.store(committing, oid, Tid::ZERO, b"first");
    assert!(matches!(
        answers(&stored).as_slice(),
        [Packet::AnswerStoreObject(p::AnswerStoreObject {
            conflict: None
        })]
    ));
    let voted = harness.client_sends(p::AskStoreTransaction {
        ttid: committing,
        user: b"".as_slice().into(),
        description: b"".as_slice().into(),
        extension: b"".as_slice().into(),
        oids: vec![oid],
        pack: None,
    });
    assert!(matches!(
        answers(&voted).as_slice(),
        [Packet::AnswerStoreTransaction(_)]
    ));
    let locked = harness.master_sends(p::AskLockInformation {
        ttid: committing,
        tid: committed,
        pack_approved: false,
    });
    assert!(matches!(
        answers(&locked).as_slice(),
        [Packet::AnswerInformationLocked(_)]
    ));

    // The undoing transaction stores, then asks: both wait.
    assert!(answers(&harness.store(undoing, oid, committed, b"undone")).is_empty());
    let undo_serials = harness.client_sends(p::AskObjectUndoSerial {
        ttid: undoing,
        ltid: tid(10),
        undone_tid: committed,
        oids: vec![oid],
    });
    assert!(answers(&undo_serials).is_empty(), "{undo_serials:?}");

    let unlocked = harness.master_sends(p::NotifyUnlockInformation { ttid: committing });
    match answers(&unlocked).as_slice() {
        [Packet::AnswerStoreObject(store), Packet::AnswerObjectUndoSerial(undo)] => {
            assert_eq!(store.conflict, None);
            assert_eq!(
                undo.serials.0,
                vec![(
                    oid,
                    UndoSerial {
                        current_serial: undoing,
                        undo_serial: None,
                        is_current: false,
                    }
                )]
            );
        }
        other => panic!("unexpected answers {other:?}"),
    }
}

/// Votes fed together are committed together by the flush, which alone
/// gives their answers.
#[test]
fn votes_fed_together_are_answered_after_one_flush() {
    let mut harness = Harness::new();
    let ttids = [tid(1), tid(2)];
    for (n, ttid) in ttids.into_iter().enumerate() {
        let stored = harness.store(ttid, Oid(n as u64), Tid::ZERO, b"data");
        assert_eq!(answers(&stored).len(), 1, "{stored:?}");
    }
    for (msg_id, ttid) in (100..).zip(ttids) {
        harness.storage.handle(
            Input::Packet {
                conn: CLIENT,
                msg_id,
                packet: p::AskVoteTransaction { ttid }.into(),
            },
            1.0,
        );
    }
    assert_eq!(harness.committed_votes(), 0);
    let flushed = harness.storage.poll_output();
    assert_eq!(harness.committed_votes(), 2);
    assert_eq!(
        flushed,
        vec![
            Output::Answer {
                conn: CLIENT,
                msg_id: 100,
                packet: p::AnswerVoteTransaction {}.into(),
            },
            Output::Answer {
                conn: CLIENT,
                msg_id: 101,
                packet: p::AnswerVoteTransaction {}.into(),
            },
        ]
    );
    assert_eq!(harness.storage.poll_output(), vec![]);
}

/// A transaction locked but not unlocked yet may already be reported
/// committed to the client: listing TIDs waits for its unlock rather than
/// leaving it out.
#[test]
fn tid_listings_wait_for_the_unlock_of_a_locked_transaction() {
    let mut harness = Harness::new();
    let (ttid, committed) = (tid(1), tid(2));
    harness.store(ttid, Oid(0), Tid::ZERO, b"data");
    harness.vote_metadata(ttid, vec![Oid(0)]);
    harness.lock(ttid, committed);

    let listed = harness.client_sends(p::AskTIDsFrom {
        min_tid: Tid::ZERO,
        max_tid: Tid::MAX,
        length: 10,
        partition: 0,
    });
    assert!(answers(&listed).is_empty(), "{listed:?}");
    let undo_log = harness.client_sends(p::AskTIDs {
        first: 0,
        last: 10,
        partition: neo_proto::INVALID_PARTITION,
    });
    assert!(answers(&undo_log).is_empty(), "{undo_log:?}");

    let unlocked = harness.master_sends(p::NotifyUnlockInformation { ttid });
    match answers(&unlocked).as_slice() {
        [Packet::AnswerTIDsFrom(from), Packet::AnswerTIDs(tids)] => {
            assert_eq!(from.tids, vec![committed]);
            assert_eq!(tids.tids, vec![committed]);
        }
        other => panic!("unexpected answers {other:?}"),
    }
}

/// The error answer among `outputs`, if any.
fn error_code(outputs: &[Output]) -> Option<neo_proto::ErrorCode> {
    answers(outputs)
        .into_iter()
        .find_map(|packet| match packet {
            Packet::Error(error) => Some(error.code),
            _ => None,
        })
}

/// A request the database refuses is answered with the error its kind
/// says, and the node goes on serving (the harness fails on any `Exit`):
/// an undo of packed data is `UNDO_PACK_ERROR`, an oid beyond what the
/// database can hold is a protocol error that closes that connection.
#[test]
fn refused_requests_are_answered_and_the_node_goes_on() {
    let mut harness = Harness::new();
    let undo = harness.client_sends(p::AskStoreObject {
        oid: Oid(1),
        serial: Tid::ZERO,
        compression: 0,
        checksum: Checksum::ZERO,
        data: b"".as_slice().into(),
        data_serial: Some(tid(1)),
        ttid: tid(2),
    });
    assert_eq!(
        error_code(&undo),
        Some(neo_proto::ErrorCode::UndoPackError),
        "{undo:?}"
    );
    assert!(!undo.iter().any(|o| matches!(o, Output::Close { .. })));

    let huge = harness.store(tid(3), Oid(u64::MAX), Tid::ZERO, b"data");
    assert_eq!(
        error_code(&huge),
        Some(neo_proto::ErrorCode::ProtocolError),
        "{huge:?}"
    );
    assert!(huge.contains(&Output::Close { conn: CLIENT }), "{huge:?}");

    // Still serving: a load of an oid that was never stored.
    let load = harness.client_sends(p::AskObject {
        oid: Oid(2),
        at: None,
        before: None,
    });
    assert_eq!(
        error_code(&load),
        Some(neo_proto::ErrorCode::OidDoesNotExist)
    );
}
