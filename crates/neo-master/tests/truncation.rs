//! `neoctl truncate` and pending truncations (architecture.md §5.1 step 5,
//! §11.1), driven through the `Node` trait. The packets are those of
//! NEO/py's master in `shared/vectors/session-restart.jsonl` (seq 187-237).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use neo_net::ConnId;
use neo_proto::packets::{self as p, CellInfo};
use neo_proto::{CellState, ClusterState, ErrorCode, Map, NodeId, NodeType, Oid, Packet, Tid};

fn recovery(ptid: Option<u64>, truncate_tid: Option<Tid>) -> p::AnswerRecovery {
    p::AnswerRecovery {
        ptid,
        backup_tid: None,
        truncate_tid,
    }
}

/// Two storages with every partition, and two commits.
fn committed_cluster() -> (Sim, Vec<ConnId>, ConnId, Tid, Tid) {
    let mut sim = Sim::new(2, 1, None);
    let (storages, admin) = running_cluster(&mut sim, 2);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let (first, _, _) = commit(&mut sim, client, &storages, vec![Oid(1)], None);
    let (second, _, _) = commit(&mut sim, client, &storages, vec![Oid(2)], None);
    (sim, storages, admin, first, second)
}

#[test]
fn truncate_refusals() {
    let (mut sim, storages, admin, first, second) = committed_cluster();
    let truncate = |tid| p::Truncate { tid };
    assert_eq!(
        denied(&mut sim, admin, truncate(second)),
        "Truncating after last transaction does nothing"
    );
    assert_eq!(
        denied(&mut sim, admin, truncate(Tid(first.0 - 1))),
        "Truncating before first transaction is probably not what you intended to do"
    );
    // A pack order approved after the truncation point.
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let pack = p::PackRequest {
        oids: None,
        pack_tid: first,
    };
    let (_, approved, _) = commit(&mut sim, client, &storages, vec![], Some(pack));
    assert!(approved);
    assert_eq!(
        denied(&mut sim, admin, truncate(second)),
        "Can not truncate before an approved pack"
    );
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
}

#[test]
fn a_truncation_stops_waits_for_every_storage_truncates_and_restarts() {
    let (mut sim, storages, admin, first, second) = committed_cluster();
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let outputs = sim.send(admin, 1, p::Truncate { tid: first });
    assert_eq!(
        error_answer(&outputs, admin, 1),
        (ErrorCode::Ack, String::new())
    );
    assert_eq!(sim.master.cluster_state(), ClusterState::Recovering);
    for &storage in &storages {
        let sent = to(&outputs, storage);
        assert_eq!(
            names(&sent),
            [
                "StopOperation",
                "Truncate",
                // The two clients gone, then both storages pending.
                "NotifyNodeInformation",
                "NotifyNodeInformation",
                "NotifyNodeInformation",
                "NotifyClusterInformation",
                "AskRecovery"
            ]
        );
        assert_eq!(sent[1], &Packet::Truncate(p::Truncate { tid: first }));
    }
    assert!(closed(&outputs, client));
    // The decision is the cluster's until carried out.
    let outputs = sim.send(admin, 2, p::AskRecovery {});
    assert_eq!(
        to(&outputs, admin),
        [&Packet::AnswerRecovery(recovery(Some(1), Some(first)))]
    );

    // S1 recorded it; S2 did not (say it restarted before): it is told
    // again and asked again, the cluster waits for it.
    sim.reply(
        storages[0],
        p::AskRecovery::CODE,
        recovery(Some(1), Some(first)),
    );
    let outputs = sim.reply(storages[1], p::AskRecovery::CODE, recovery(Some(1), None));
    assert_eq!(
        to(&outputs, storages[1]),
        [
            &Packet::Truncate(p::Truncate { tid: first }),
            &Packet::AskRecovery(p::AskRecovery {}),
        ]
    );
    assert_eq!(sim.master.cluster_state(), ClusterState::Recovering);
    let outputs = sim.reply(
        storages[1],
        p::AskRecovery::CODE,
        recovery(Some(1), Some(first)),
    );
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    assert!(names(&to(&outputs, storages[1])).contains(&"AskLockedTransactions"));

    // Verification's AskLastIDs makes them truncate; what they report
    // after it is the new last TID, lower than before.
    assert_eq!(sim.master.last_tid(), second);
    let outputs = verify(&mut sim, &storages, &storages, first);
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
    assert!(names(&to(&outputs, storages[0])).contains(&"StartOperation"));
    assert_eq!(sim.master.last_tid(), first);
    let outputs = sim.send(admin, 3, p::AskRecovery {});
    assert_eq!(
        to(&outputs, admin),
        [&Packet::AnswerRecovery(recovery(Some(1), None))]
    );
    // New transactions get TIDs above every one used before.
    for &storage in &storages {
        sim.send(storage, 1, p::NotifyReady {});
    }
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let (third, _, _) = commit(&mut sim, client, &storages, vec![Oid(1)], None);
    assert!(third > second);
}

/// A truncation decided by another master (NEO/py's) and found on the
/// storages is carried out: the cluster waits for every storage of the
/// table, even one whose cells are not readable, makes sure each recorded
/// it, and every storage truncates at verification.
#[test]
fn a_pending_truncation_found_on_storages_is_carried_out() {
    let tid = Tid(0x0400_0000_0000_0001);
    let mut sim = Sim::new(1, 1, None);
    let (s1, _, _) = sim.identify(NodeType::Storage, Some(NodeId(1)), Some(20000));
    let outputs = sim.reply(s1, p::AskRecovery::CODE, recovery(Some(5), Some(tid)));
    assert_eq!(names(&to(&outputs, s1)), ["AskPartitionTable"]);
    let rows = vec![vec![
        CellInfo {
            nid: NodeId(1),
            state: CellState::UpToDate,
        },
        CellInfo {
            nid: NodeId(2),
            state: CellState::OutOfDate,
        },
    ]];
    let table = p::AnswerPartitionTable {
        ptid: Some(5),
        num_replicas: 1,
        rows,
    };
    sim.reply(s1, p::AskPartitionTable::CODE, table);
    // S1 alone holds every readable cell, but S2 must truncate too.
    assert_eq!(sim.master.cluster_state(), ClusterState::Recovering);
    let (s2, _, _) = sim.identify(NodeType::Storage, Some(NodeId(2)), Some(20001));
    let outputs = sim.reply(s2, p::AskRecovery::CODE, recovery(Some(5), None));
    assert_eq!(names(&to(&outputs, s2)), ["Truncate", "AskRecovery"]);
    let outputs = sim.reply(s2, p::AskRecovery::CODE, recovery(Some(5), Some(tid)));
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    assert!(names(&to(&outputs, s1)).contains(&"AskLockedTransactions"));
    let outputs = sim.reply(
        s1,
        p::AskLockedTransactions::CODE,
        p::AnswerLockedTransactions { ttids: Map::new() },
    );
    // Both are asked their last ids, S2 with no readable cell included.
    assert_eq!(names(&to(&outputs, s2)), ["AskLastIDs"]);
    assert_eq!(names(&to(&outputs, s1)), ["AskLastIDs"]);
}

/// Losing a storage in verification while a truncation is pending goes
/// back to recovery: starting would truncate some storages and not
/// others.
#[test]
fn a_storage_lost_before_truncating_sends_the_cluster_back_to_recovery() {
    let (mut sim, storages, admin, first, _) = committed_cluster();
    sim.send(admin, 1, p::Truncate { tid: first });
    for &storage in &storages {
        sim.reply(
            storage,
            p::AskRecovery::CODE,
            recovery(Some(1), Some(first)),
        );
    }
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    sim.close(storages[1]);
    assert_eq!(sim.master.cluster_state(), ClusterState::Recovering);
    // S1's answer to the verification left behind is moot.
    let late = p::AnswerLockedTransactions { ttids: Map::new() };
    let outputs = sim.reply(storages[0], p::AskLockedTransactions::CODE, late);
    assert!(outputs.is_empty(), "{outputs:?}");
    // It comes back: the truncation goes on.
    let (back, _, _) = sim.identify(NodeType::Storage, Some(NodeId(2)), Some(20001));
    sim.reply(
        storages[0],
        p::AskRecovery::CODE,
        recovery(Some(1), Some(first)),
    );
    sim.reply(back, p::AskRecovery::CODE, recovery(Some(1), Some(first)));
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    verify(&mut sim, &[storages[0], back], &[storages[0], back], first);
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
    assert_eq!(sim.master.last_tid(), first);
}
