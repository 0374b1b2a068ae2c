//! The master state machine where a peer could make it do wrong: a commit
//! caught by a return to recovery, answers that arrive out of order, and a
//! limit on everything a client controls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use neo_net::{ConnId, Output};
use neo_proto::packets as p;
use neo_proto::{ClusterState, ErrorCode, Map, NodeId, NodeType, Oid, Packet, Tid};

/// Finishes the remaining verification steps of a restarted cluster of
/// `storages` that report nothing pending and `last_tid`.
fn finish_verification(sim: &mut Sim, storages: &[ConnId], last_tid: Tid) {
    verify(sim, storages, storages, last_tid);
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
}

fn begin(sim: &mut Sim, client: ConnId, msg_id: u32) -> Tid {
    let outputs = sim.send(client, msg_id, p::AskBeginTransaction { tid: None });
    match to(&outputs, client)[..] {
        [Packet::AnswerBeginTransaction(begin)] => begin.ttid,
        ref other => panic!("expected a TTID, got {other:?}"),
    }
}

fn finish(ttid: Tid, oids: Vec<Oid>) -> p::AskFinishTransaction {
    p::AskFinishTransaction {
        ttid,
        oids,
        deleted: vec![],
        checked: vec![],
        pack: None,
    }
}

fn not_ready(outputs: &[Output], conn: ConnId, msg_id: u32) -> bool {
    outputs.iter().any(|output| {
        matches!(output, Output::Answer { conn: c, msg_id: m, packet: Packet::Error(error) }
            if *c == conn && *m == msg_id && error.code == ErrorCode::NotReady)
    })
}

/// Regression: a transaction in `tpc_finish` when the master went back to
/// recovery stayed in its commit queue. Once the cluster ran again, the
/// master "committed" it — invalidations to clients and a last TID raised
/// to a TID that no storage has, since the storages dropped it — because
/// losing the storage had emptied the set of locks it waited for.
#[test]
fn a_transaction_caught_in_tpc_finish_by_recovery_is_never_committed_later() {
    let mut sim = Sim::new(2, 0, None);
    let (storages, _admin) = running_cluster(&mut sim, 1);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let last_tid = sim.master.last_tid();
    let ttid = begin(&mut sim, client, 1);
    let outputs = sim.send(client, 2, finish(ttid, vec![Oid(5)]));
    assert!(names(&to(&outputs, storages[0])).contains(&"AskLockInformation"));
    // The storage dies before locking: back to recovery.
    sim.close(storages[0]);
    assert_eq!(sim.master.cluster_state(), ClusterState::Recovering);

    // It comes back without the transaction (it never locked it).
    let (storage, _, _) = sim.identify(NodeType::Storage, Some(NodeId(1)), Some(20000));
    let recovery = p::AnswerRecovery {
        ptid: Some(1),
        backup_tid: None,
        truncate_tid: None,
    };
    sim.reply(storage, p::AskRecovery::CODE, recovery);
    finish_verification(&mut sim, &[storage], last_tid);
    let ready = sim.send(storage, 0, p::NotifyReady {});
    let (observer, _, joined) = sim.identify(NodeType::Client, None, None);
    let more = sim.send(observer, 1, p::AskLastTransaction {});
    for output in ready.iter().chain(&joined).chain(&more) {
        assert!(
            !matches!(
                output,
                Output::Answer {
                    packet: Packet::AnswerTransactionFinished(_),
                    ..
                } | Output::Notify {
                    packet: Packet::InvalidateObjects(_) | Packet::NotifyUnlockInformation(_),
                    ..
                }
            ),
            "the dropped transaction was completed: {output:?}"
        );
    }
    assert_eq!(sim.master.last_tid(), last_tid);
    assert_eq!(
        to(&more, observer),
        [&Packet::AnswerLastTransaction(p::AnswerLastTransaction {
            tid: last_tid
        })]
    );
}

/// Verification asks one storage the final TID of two transactions; its
/// answers are matched to the right transaction by token even when they
/// come in the other order.
#[test]
fn final_tid_answers_in_verification_are_matched_by_token_not_order() {
    let mut sim = Sim::new(1, 1, Some(2));
    let (voter, _, _) = sim.identify(NodeType::Storage, None, Some(20000));
    let (other, _, _) = sim.identify(NodeType::Storage, None, Some(20001));
    sim.reply(voter, p::AskRecovery::CODE, empty_recovery());
    sim.reply(other, p::AskRecovery::CODE, empty_recovery());
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    let (first, second) = (Tid(0x0400_0000_0000_0001), Tid(0x0400_0000_0000_0002));
    let voted = p::AnswerLockedTransactions {
        ttids: Map(vec![(first, None), (second, None)]),
    };
    sim.reply(voter, p::AskLockedTransactions::CODE, voted);
    let outputs = sim.reply(
        other,
        p::AskLockedTransactions::CODE,
        p::AnswerLockedTransactions { ttids: Map::new() },
    );
    assert_eq!(
        to(&outputs, other),
        [
            &Packet::AskFinalTID(p::AskFinalTID { ttid: first }),
            &Packet::AskFinalTID(p::AskFinalTID { ttid: second }),
        ]
    );
    // The second is answered first: it was committed as `tid`.
    let tid = Tid(0x0400_0000_0000_0007);
    let is_final_of = |ttid| move |request: &Packet| matches!(request, Packet::AskFinalTID(ask) if ask.ttid == ttid);
    sim.reply_to(
        other,
        is_final_of(second),
        p::AnswerFinalTID { tid: Some(tid) },
    );
    let outputs = sim.reply_to(other, is_final_of(first), p::AnswerFinalTID { tid: None });
    assert_eq!(
        to(&outputs, voter),
        [
            &Packet::ValidateTransaction(p::ValidateTransaction { ttid: second, tid }),
            &Packet::AskLastIDs(p::AskLastIDs {}),
        ]
    );
}

#[test]
fn begins_over_the_transaction_limit_are_refused_not_ready() {
    let mut sim = Sim::new(2, 0, None);
    running_cluster(&mut sim, 1);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let limit = 65_536;
    for msg_id in 0..limit {
        begin(&mut sim, client, msg_id);
    }
    let outputs = sim.send(client, limit, p::AskBeginTransaction { tid: None });
    assert!(not_ready(&outputs, client, limit), "{outputs:?}");
    assert!(
        !closed(&outputs, client),
        "over a limit is not a protocol error"
    );
}

#[test]
fn begins_held_while_storages_start_are_bounded() {
    let mut sim = Sim::new(2, 1, None);
    let (storages, _admin) = running_cluster(&mut sim, 2);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    // A known storage comes back while running: it is starting, begins wait.
    sim.close(storages[1]);
    let (storage, _, outputs) = sim.identify(NodeType::Storage, Some(NodeId(2)), Some(20001));
    assert!(names(&to(&outputs, storage)).contains(&"StartOperation"));
    let limit = 4096;
    for msg_id in 0..limit {
        let outputs = sim.send(client, msg_id, p::AskBeginTransaction { tid: None });
        assert!(to(&outputs, client).is_empty(), "held");
    }
    let outputs = sim.send(client, limit, p::AskBeginTransaction { tid: None });
    assert!(not_ready(&outputs, client, limit), "{outputs:?}");
    // Those held are answered once the storage is ready.
    let outputs = sim.send(storage, 0, p::NotifyReady {});
    assert_eq!(to(&outputs, client).len(), limit as usize);
}

#[test]
fn final_tid_and_pack_waiters_are_bounded() {
    let mut sim = Sim::new(2, 0, None);
    let (storages, _admin) = running_cluster(&mut sim, 1);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    commit(&mut sim, client, &storages, vec![Oid(1)], None);
    let ttid = begin(&mut sim, client, 1);
    sim.send(client, 2, finish(ttid, vec![Oid(1)]));
    // The transaction waits for its lock: AskFinalTID waits with it.
    let limit = 4096;
    for msg_id in 100..100 + limit {
        let outputs = sim.send(client, msg_id, p::AskFinalTID { ttid });
        assert!(to(&outputs, client).is_empty());
    }
    let outputs = sim.send(client, 1, p::AskFinalTID { ttid });
    assert!(not_ready(&outputs, client, 1), "{outputs:?}");
    let outputs = sim.locked(storages[0], ttid);
    let answered = to(&outputs, client)
        .iter()
        .filter(|packet| matches!(packet, Packet::AnswerFinalTID(_)))
        .count();
    assert_eq!(answered, limit as usize);

    // A pack order not completed yet: WaitForPack waits.
    let last = sim.master.last_tid();
    let pack = p::PackRequest {
        oids: None,
        pack_tid: last,
    };
    let (pack_id, approved, _) = commit(&mut sim, client, &storages, vec![], Some(pack));
    assert!(approved);
    for msg_id in 0..limit {
        let outputs = sim.send(client, msg_id, p::WaitForPack { pack_id });
        assert!(to(&outputs, client).is_empty());
    }
    let outputs = sim.send(client, limit, p::WaitForPack { pack_id });
    assert!(not_ready(&outputs, client, limit), "{outputs:?}");
}

#[test]
fn partitions_out_of_range_in_tpc_finish_are_a_protocol_error() {
    let mut sim = Sim::new(2, 0, None);
    running_cluster(&mut sim, 1);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let ttid = begin(&mut sim, client, 1);
    let mut request = finish(ttid, vec![]);
    request.deleted = vec![2];
    let outputs = sim.send(client, 2, request);
    assert!(closed(&outputs, client));
    assert!(matches!(
        to(&outputs, client)[..],
        [Packet::Error(ref error)] if error.code == ErrorCode::ProtocolError
    ));
}
