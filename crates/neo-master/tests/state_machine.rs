//! The master state machine driven deterministically: the tests play the
//! storages, clients and admin, and check every packet the master sends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use neo_net::{ConnId, Input, Output};
use neo_proto::packets::{self as p, NodeInfo};
use neo_proto::{
    CellState, ClusterState, ErrorCode, Map, NodeId, NodeState, NodeType, Oid, Packet, Tid,
};

#[test]
fn a_new_cluster_starts_with_neoctl_start() {
    let mut sim = Sim::new(4, 1, None);
    let (storages, _admin) = running_cluster(&mut sim, 2);
    let table = sim.master.partition_table();
    assert_eq!(table.ptid(), Some(1));
    for partition in 0..4 {
        assert_eq!(table.readable_cells(partition).count(), 2);
    }
    assert_eq!(storages.len(), 2);
    let storage_nodes: Vec<_> = sim
        .master
        .nodes()
        .of_type(NodeType::Storage)
        .map(|node| (node.nid, node.state))
        .collect();
    assert_eq!(
        storage_nodes,
        [
            (NodeId(1), NodeState::Running),
            (NodeId(2), NodeState::Running)
        ]
    );
}

#[test]
fn autostart_creates_the_cluster_without_neoctl() {
    let mut sim = Sim::new(3, 0, Some(1));
    let (storage, nid, _) = sim.identify(NodeType::Storage, None, Some(20000));
    assert_eq!(nid, Some(NodeId(1)));
    let outputs = sim.reply(storage, p::AskRecovery::CODE, empty_recovery());
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    assert_eq!(
        names(&to(&outputs, storage)),
        [
            "NotifyNodeInformation",
            "SendPartitionTable",
            "NotifyClusterInformation",
            "AskLockedTransactions"
        ]
    );
}

#[test]
fn identification_refusals() {
    let mut sim = Sim::new(4, 0, None);
    sim.input(Input::Accepted { conn: ConnId(50) });
    let wrong = p::RequestIdentification {
        node_type: NodeType::Client,
        nid: None,
        address: None,
        cluster: "other".into(),
        id_timestamp: None,
        extra: Map::new(),
    };
    let outputs = sim.send(ConnId(50), 0, wrong);
    assert_eq!(
        to(&outputs, ConnId(50)),
        [&Packet::Error(p::Error::new(
            ErrorCode::ProtocolError,
            "invalid cluster name"
        ))]
    );
    assert!(closed(&outputs, ConnId(50)));

    // A client while the cluster is not running.
    let (conn, nid, outputs) = sim.identify(NodeType::Client, None, None);
    assert_eq!(nid, None);
    assert_eq!(
        to(&outputs, conn),
        [&Packet::Error(p::Error::new(
            ErrorCode::NotReady,
            "Retry Later"
        ))]
    );
    assert!(closed(&outputs, conn));

    // A storage claiming the address of a connected one.
    let (_, _, _) = sim.identify(NodeType::Storage, None, Some(20000));
    let (conn, _, outputs) = sim.identify(NodeType::Storage, None, Some(20000));
    assert_eq!(
        to(&outputs, conn),
        [&Packet::Error(p::Error::new(
            ErrorCode::ProtocolError,
            "already connected"
        ))]
    );
}

/// Client commit: TTID, OIDs, finish, lock, answer, invalidation, unlock.
#[test]
fn a_commit_is_locked_answered_invalidated_and_unlocked() {
    let mut sim = Sim::new(4, 0, None);
    let (storages, _) = running_cluster(&mut sim, 1);
    let storage = storages[0];
    let (client, client_nid, outputs) = sim.identify(NodeType::Client, None, None);
    assert_eq!(client_nid, NodeId::new(NodeType::Client, 1));
    assert_eq!(
        names(&to(&outputs, client)),
        [
            "AcceptIdentification",
            "NotifyNodeInformation",
            "SendPartitionTable"
        ]
    );
    // The first entry of the first notification is the client itself.
    match to(&outputs, client)[1] {
        Packet::NotifyNodeInformation(notification) => {
            assert_eq!(notification.nodes[0].nid, client_nid);
            assert!(notification
                .nodes
                .iter()
                .all(|node: &NodeInfo| node.node_type != NodeType::Admin));
        }
        other => panic!("{other:?}"),
    }
    let (other, _, _) = sim.identify(NodeType::Client, None, None);

    let outputs = sim.send(client, 1, p::AskNewOIDs { count: 3 });
    assert_eq!(
        to(&outputs, client),
        [&Packet::AnswerNewOIDs(p::AnswerNewOIDs {
            oids: vec![Oid(1), Oid(2), Oid(3)]
        })]
    );
    let outputs = sim.send(client, 2, p::AskBeginTransaction { tid: None });
    let Packet::AnswerBeginTransaction(begin) = to(&outputs, client)[0] else {
        panic!("{outputs:?}")
    };
    let ttid = begin.ttid;
    let finish = p::AskFinishTransaction {
        ttid,
        oids: vec![Oid(1), Oid(2)],
        deleted: vec![],
        checked: vec![],
        pack: None,
    };
    let outputs = sim.send(client, 3, finish);
    let Packet::AskLockInformation(lock) = to(&outputs, storage)[0] else {
        panic!("{outputs:?}")
    };
    assert_eq!(lock.ttid, ttid);
    assert!(lock.tid >= ttid && lock.tid.0 % 4 == ttid.0 % 4);
    assert!(to(&outputs, client).is_empty(), "answered only once locked");

    let outputs = sim.locked(storage, ttid);
    assert!(outputs.contains(&Output::Answer {
        conn: client,
        msg_id: 3,
        packet: p::AnswerTransactionFinished {
            ttid,
            tid: lock.tid
        }
        .into()
    }));
    assert_eq!(
        to(&outputs, other),
        [&Packet::InvalidateObjects(p::InvalidateObjects {
            tid: lock.tid,
            oids: vec![Oid(1), Oid(2)]
        })]
    );
    assert_eq!(
        to(&outputs, storage),
        [&Packet::NotifyUnlockInformation(
            p::NotifyUnlockInformation { ttid }
        )]
    );
    assert_eq!(sim.master.last_tid(), lock.tid);
    let outputs = sim.send(client, 4, p::AskLastTransaction {});
    assert_eq!(
        to(&outputs, client),
        [&Packet::AnswerLastTransaction(p::AnswerLastTransaction {
            tid: lock.tid
        })]
    );
}

#[test]
fn transactions_complete_in_tid_order() {
    let mut sim = Sim::new(2, 1, None);
    let (storages, _) = running_cluster(&mut sim, 2);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let mut ttids = Vec::new();
    for msg_id in [1, 2] {
        let outputs = sim.send(client, msg_id, p::AskBeginTransaction { tid: None });
        let Packet::AnswerBeginTransaction(begin) = to(&outputs, client)[0] else {
            panic!()
        };
        ttids.push(begin.ttid);
    }
    let mut tids = Vec::new();
    for (msg_id, ttid) in [(3, ttids[0]), (4, ttids[1])] {
        let finish = p::AskFinishTransaction {
            ttid,
            oids: vec![Oid(u64::from(msg_id))],
            deleted: vec![],
            checked: vec![],
            pack: None,
        };
        let outputs = sim.send(client, msg_id, finish);
        let Packet::AskLockInformation(lock) = to(&outputs, storages[0])[0] else {
            panic!()
        };
        tids.push(lock.tid);
    }
    assert!(tids[0] < tids[1]);
    // The younger transaction is locked everywhere first...
    for &storage in &storages {
        let outputs = sim.locked(storage, ttids[1]);
        assert!(to(&outputs, client).is_empty(), "waits for the older one");
    }
    sim.locked(storages[0], ttids[0]);
    // ...and a lost storage no longer holds anything up.
    let outputs = sim.close(storages[1]);
    let finished: Vec<u32> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Answer {
                msg_id,
                packet: Packet::AnswerTransactionFinished(_),
                ..
            } => Some(*msg_id),
            _ => None,
        })
        .collect();
    assert_eq!(finished, [3, 4]);
    // S2 had cells: it is DOWN and its cells are out of date.
    let table = sim.master.partition_table();
    assert!(table
        .cells_of(NodeId(2))
        .iter()
        .all(|(_, state)| *state == CellState::OutOfDate));
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
}

#[test]
fn losing_the_only_storage_goes_back_to_recovery_and_restarts() {
    let mut sim = Sim::new(2, 0, None);
    let (storages, _admin) = running_cluster(&mut sim, 1);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let outputs = sim.close(storages[0]);
    assert_eq!(sim.master.cluster_state(), ClusterState::Recovering);
    assert!(to(&outputs, client).contains(&&Packet::StopOperation(p::StopOperation {})));
    assert!(closed(&outputs, client));

    // The storage comes back with its table: the cluster restarts alone.
    let (storage, nid, _) = sim.identify(NodeType::Storage, Some(NodeId(1)), Some(20000));
    assert_eq!(nid, Some(NodeId(1)));
    let recovery = p::AnswerRecovery {
        ptid: Some(1),
        backup_tid: None,
        truncate_tid: None,
    };
    // The master still has that table: no need to ask for it again.
    let outputs = sim.reply(storage, p::AskRecovery::CODE, recovery);
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    assert!(names(&to(&outputs, storage)).contains(&"AskLockedTransactions"));
}

#[test]
fn a_restarted_master_waits_for_every_storage_of_the_table() {
    let mut sim = Sim::new(2, 1, None);
    let rows = vec![
        vec![
            p::CellInfo {
                nid: NodeId(1),
                state: CellState::UpToDate,
            },
            p::CellInfo {
                nid: NodeId(2),
                state: CellState::UpToDate,
            },
        ];
        2
    ];
    let recovery = p::AnswerRecovery {
        ptid: Some(5),
        backup_tid: None,
        truncate_tid: None,
    };
    let (s1, _, _) = sim.identify(NodeType::Storage, Some(NodeId(1)), Some(20000));
    sim.reply(s1, p::AskRecovery::CODE, recovery.clone());
    let table = p::AnswerPartitionTable {
        ptid: Some(5),
        num_replicas: 1,
        rows: rows.clone(),
    };
    sim.reply(s1, p::AskPartitionTable::CODE, table);
    assert_eq!(sim.master.partition_table().ptid(), Some(5));
    // Operational with S1 alone, but S2 holds readable cells: wait for it.
    assert_eq!(sim.master.cluster_state(), ClusterState::Recovering);
    let (s2, _, _) = sim.identify(NodeType::Storage, Some(NodeId(2)), Some(20001));
    let outputs = sim.reply(s2, p::AskRecovery::CODE, recovery);
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    assert!(names(&to(&outputs, s2)).contains(&"AskLockedTransactions"));
}

#[test]
fn verification_replays_locked_transactions() {
    let mut sim = Sim::new(1, 0, Some(1));
    let (storage, _, _) = sim.identify(NodeType::Storage, None, Some(20000));
    sim.reply(storage, p::AskRecovery::CODE, empty_recovery());
    let ttid = Tid(0x0400_0000_0000_0001);
    let tid = Tid(0x0400_0000_0000_0005);
    let locked = p::AnswerLockedTransactions {
        ttids: Map(vec![(ttid, Some(tid)), (Tid(0x0400_0000_0000_0009), None)]),
    };
    let outputs = sim.reply(storage, p::AskLockedTransactions::CODE, locked);
    assert_eq!(
        to(&outputs, storage),
        [
            &Packet::ValidateTransaction(p::ValidateTransaction { ttid, tid }),
            &Packet::AskLastIDs(p::AskLastIDs {}),
        ]
    );
    let last_ids = p::AnswerLastIDs {
        last_tid: Some(tid),
        last_oid: Some(Oid(7)),
        first_tid: Tid(1),
    };
    let outputs = sim.reply(storage, p::AskLastIDs::CODE, last_ids);
    assert_eq!(
        to(&outputs, storage),
        [&Packet::AskPackOrders(p::AskPackOrders {
            min_id: Tid::ZERO
        })]
    );
    sim.reply(
        storage,
        p::AskPackOrders::CODE,
        p::AnswerPackOrders { orders: vec![] },
    );
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
    assert_eq!(sim.master.last_tid(), tid);
    assert_eq!(sim.master.last_oid(), Oid(7));
}

#[test]
fn stopping_tells_storages_they_are_down_and_exits() {
    let mut sim = Sim::new(2, 0, None);
    let (storages, admin) = running_cluster(&mut sim, 1);
    let outputs = sim.send(
        admin,
        9,
        p::SetClusterState {
            state: ClusterState::Stopping,
        },
    );
    assert_eq!(
        to(&outputs, admin)[0],
        &Packet::Error(p::Error::ack("Cluster state changed"))
    );
    let to_storage = to(&outputs, storages[0]);
    assert_eq!(
        names(&to_storage),
        ["NotifyClusterInformation", "NotifyNodeInformation"]
    );
    match to_storage[1] {
        Packet::NotifyNodeInformation(notification) => {
            assert_eq!(notification.nodes[0].state, NodeState::Down)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outputs.last(), Some(&Output::Exit(Ok(()))));
}

#[test]
fn imposed_tids_and_new_oids_are_checked() {
    let mut sim = Sim::new(2, 0, None);
    running_cluster(&mut sim, 1);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let outputs = sim.send(client, 1, p::AskNewOIDs { count: 1_000_000 });
    assert!(closed(&outputs, client), "absurd OID counts are refused");
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let outputs = sim.send(
        client,
        1,
        p::AskBeginTransaction {
            tid: Some(Tid::ZERO),
        },
    );
    assert!(matches!(
        to(&outputs, client)[0],
        Packet::Error(p::Error {
            code: ErrorCode::ProtocolError,
            ..
        })
    ));
}

#[test]
fn a_pack_order_is_checked_approved_signed_and_waited_for() {
    let mut sim = Sim::new(2, 1, None);
    let (storages, _) = running_cluster(&mut sim, 2);
    for &storage in &storages {
        let completed = p::NotifyPackCompleted { pack_id: Tid::ZERO };
        sim.send(storage, 0, completed);
    }
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let (first, approved, _) = commit(&mut sim, client, &storages, vec![Oid(1)], None);
    assert!(!approved);

    // The pack time must be in (0, last TID].
    for pack_tid in [Tid::ZERO, Tid(first.0 + 1)] {
        let (bad_client, _, _) = sim.identify(NodeType::Client, None, None);
        let outputs = sim.send(bad_client, 1, p::AskBeginTransaction { tid: None });
        let Packet::AnswerBeginTransaction(begin) = to(&outputs, bad_client)[0] else {
            panic!("{outputs:?}")
        };
        let finish = p::AskFinishTransaction {
            ttid: begin.ttid,
            oids: vec![],
            deleted: vec![],
            checked: vec![],
            pack: Some(p::PackRequest {
                oids: None,
                pack_tid,
            }),
        };
        let outputs = sim.send(bad_client, 2, finish);
        let Packet::Error(error) = to(&outputs, bad_client)[0] else {
            panic!("{outputs:?}")
        };
        assert_eq!(error.code, ErrorCode::ProtocolError);
        assert!(closed(&outputs, bad_client));
        for &storage in &storages {
            assert!(to(&outputs, storage).is_empty());
        }
        sim.close(bad_client);
    }

    // A valid order is approved at once and announced after the commit.
    let request = p::PackRequest {
        oids: None,
        pack_tid: first,
    };
    let (pack_id, approved, outputs) = commit(&mut sim, client, &storages, vec![], Some(request));
    assert!(approved, "AskLockInformation carries the approval");
    for &storage in &storages {
        assert_eq!(
            to(&outputs, storage),
            [
                &Packet::NotifyUnlockInformation(p::NotifyUnlockInformation {
                    ttid: match to(&outputs, storage)[0] {
                        Packet::NotifyUnlockInformation(unlock) => unlock.ttid,
                        other => panic!("{other:?}"),
                    }
                }),
                &pack_signed(vec![pack_id], vec![]),
            ]
        );
    }
    let order = p::PackOrder {
        id: pack_id,
        approved: Some(true),
        partial: false,
        oids: None,
        pack_tid: first,
    };
    assert_eq!(
        sim.master.pack_orders(Tid::ZERO),
        std::slice::from_ref(&order)
    );

    // The client waits until every storage with readable cells is done.
    let outputs = sim.send(client, 20, p::WaitForPack { pack_id });
    assert!(to(&outputs, client).is_empty());
    // A storage asks for the first approved order after what it completed.
    let outputs = sim.send(storages[0], 5, p::AskPackOrders { min_id: Tid(1) });
    assert_eq!(
        to(&outputs, storages[0]),
        [&Packet::AnswerPackOrders(p::AnswerPackOrders {
            orders: vec![order.clone()]
        })]
    );
    let outputs = sim.send(storages[0], 0, p::NotifyPackCompleted { pack_id });
    assert!(to(&outputs, client).is_empty(), "S2 did not pack yet");
    let outputs = sim.send(storages[1], 0, p::NotifyPackCompleted { pack_id });
    assert_eq!(
        to(&outputs, client),
        [&Packet::WaitedForPack(p::WaitedForPack {})]
    );
    // Completed orders are forgotten; waiting for them returns at once.
    assert!(sim.master.pack_orders(Tid::ZERO).is_empty());
    let outputs = sim.send(client, 21, p::WaitForPack { pack_id });
    assert_eq!(
        to(&outputs, client),
        [&Packet::WaitedForPack(p::WaitedForPack {})]
    );
    let outputs = sim.send(
        client,
        22,
        p::WaitForPack {
            pack_id: Tid(12345),
        },
    );
    assert_eq!(
        to(&outputs, client),
        [&Packet::WaitedForPack(p::WaitedForPack {})]
    );
    // The client's undo log needs the completed orders too: every storage
    // with readable cells is asked; one lost meanwhile does not hold the
    // answer.
    let outputs = sim.send(client, 23, p::AskPackOrders { min_id: Tid::ZERO });
    assert!(to(&outputs, client).is_empty());
    for &storage in &storages {
        assert_eq!(
            to(&outputs, storage),
            [&Packet::AskPackOrders(p::AskPackOrders {
                min_id: Tid::ZERO
            })]
        );
    }
    let answer = p::AnswerPackOrders {
        orders: vec![order.clone()],
    };
    let outputs = sim.reply(storages[0], p::AskPackOrders::CODE, answer);
    assert!(to(&outputs, client).is_empty(), "S2 did not answer yet");
    let outputs = sim.close(storages[1]);
    assert_eq!(
        to(&outputs, client).last(),
        Some(&&Packet::AnswerPackOrders(p::AnswerPackOrders {
            orders: vec![order]
        }))
    );
}

#[test]
fn losing_a_storage_that_did_not_pack_completes_the_wait() {
    let mut sim = Sim::new(2, 1, None);
    let (storages, _) = running_cluster(&mut sim, 2);
    for &storage in &storages {
        sim.send(storage, 0, p::NotifyPackCompleted { pack_id: Tid::ZERO });
    }
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let (first, _, _) = commit(&mut sim, client, &storages, vec![Oid(1)], None);
    let request = p::PackRequest {
        oids: Some(vec![Oid(1)]),
        pack_tid: first,
    };
    let (pack_id, approved, _) = commit(&mut sim, client, &storages, vec![], Some(request));
    assert!(approved);
    let outputs = sim.send(client, 20, p::WaitForPack { pack_id });
    assert!(to(&outputs, client).is_empty());
    sim.send(storages[0], 0, p::NotifyPackCompleted { pack_id });
    // S2 goes away: its cells are outdated, S1 alone has readable cells.
    let outputs = sim.close(storages[1]);
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
    assert_eq!(
        to(&outputs, client)
            .into_iter()
            .filter(|packet| packet.name() == "WaitedForPack")
            .count(),
        1
    );
}

#[test]
fn verification_reloads_orders_and_an_unsigned_one_blocks_approval() {
    let mut sim = Sim::new(1, 0, Some(1));
    let (storage, _, _) = sim.identify(NodeType::Storage, None, Some(20000));
    sim.reply(storage, p::AskRecovery::CODE, empty_recovery());
    let locked = p::AnswerLockedTransactions { ttids: Map::new() };
    sim.reply(storage, p::AskLockedTransactions::CODE, locked);
    // The storage reports its completed pack before answering AskLastIDs.
    sim.send(storage, 0, p::NotifyPackCompleted { pack_id: Tid(5) });
    let last_ids = p::AnswerLastIDs {
        last_tid: Some(Tid(100)),
        last_oid: Some(Oid(3)),
        first_tid: Tid(1),
    };
    let outputs = sim.reply(storage, p::AskLastIDs::CODE, last_ids);
    assert_eq!(
        to(&outputs, storage),
        [&Packet::AskPackOrders(p::AskPackOrders { min_id: Tid(6) })]
    );
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    let order = |id: u64, approved: Option<bool>| p::PackOrder {
        id: Tid(id),
        approved,
        partial: false,
        oids: None,
        pack_tid: Tid(2),
    };
    let orders = vec![
        order(10, Some(true)),
        order(12, Some(false)),
        order(20, None),
    ];
    let outputs = sim.reply(
        storage,
        p::AskPackOrders::CODE,
        p::AnswerPackOrders { orders },
    );
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
    assert!(names(&to(&outputs, storage)).contains(&"StartOperation"));
    // Once ready, the storage learns what is signed (and how far the
    // cluster went).
    let outputs = sim.send(storage, 1, p::NotifyReady {});
    assert_eq!(
        to(&outputs, storage),
        [&pack_signed(vec![Tid(5), Tid(10)], vec![Tid(12)])]
    );
    // Storages get the first approved order only.
    let outputs = sim.send(storage, 2, p::AskPackOrders { min_id: Tid(6) });
    assert_eq!(
        to(&outputs, storage),
        [&Packet::AnswerPackOrders(p::AnswerPackOrders {
            orders: vec![order(10, Some(true))]
        })]
    );
    let outputs = sim.send(storage, 3, p::AskPackOrders { min_id: Tid(11) });
    assert_eq!(
        to(&outputs, storage),
        [&Packet::AnswerPackOrders(p::AnswerPackOrders {
            orders: vec![]
        })]
    );

    // Order 20 is unsigned: a new order is not approved automatically.
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let request = p::PackRequest {
        oids: None,
        pack_tid: Tid(50),
    };
    let (pack_id, approved, outputs) = commit(&mut sim, client, &[storage], vec![], Some(request));
    assert!(!approved);
    assert!(!names(&to(&outputs, storage)).contains(&"NotifyPackSigned"));
    // Clients see every order.
    let outputs = sim.send(client, 30, p::AskPackOrders { min_id: Tid(6) });
    let Packet::AnswerPackOrders(answer) = to(&outputs, client)[0] else {
        panic!("{outputs:?}")
    };
    let ids: Vec<Tid> = answer.orders.iter().map(|order| order.id).collect();
    assert_eq!(ids, [Tid(10), Tid(12), Tid(20), pack_id]);
    // Completing up to 10 forgets it, and answers waits up to it only.
    let outputs = sim.send(client, 31, p::WaitForPack { pack_id: Tid(10) });
    assert!(to(&outputs, client).is_empty());
    let outputs = sim.send(storage, 0, p::NotifyPackCompleted { pack_id: Tid(10) });
    assert_eq!(
        to(&outputs, client),
        [&Packet::WaitedForPack(p::WaitedForPack {})]
    );
    let ids: Vec<Tid> = sim
        .master
        .pack_orders(Tid::ZERO)
        .iter()
        .map(|order| order.id)
        .collect();
    assert_eq!(ids, [Tid(12), Tid(20), pack_id]);
    // Completed orders, which the master forgot, come from the storages
    // (whose signatures may be older: the master's win).
    let outputs = sim.send(client, 32, p::AskPackOrders { min_id: Tid::ZERO });
    assert!(to(&outputs, client).is_empty());
    assert_eq!(
        to(&outputs, storage),
        [&Packet::AskPackOrders(p::AskPackOrders {
            min_id: Tid::ZERO
        })]
    );
    let stored = vec![order(3, Some(true)), order(10, Some(true)), order(12, None)];
    let outputs = sim.reply(
        storage,
        p::AskPackOrders::CODE,
        p::AnswerPackOrders { orders: stored },
    );
    let Packet::AnswerPackOrders(answer) = to(&outputs, client)[0] else {
        panic!("{outputs:?}")
    };
    let ids: Vec<Tid> = answer.orders.iter().map(|order| order.id).collect();
    assert_eq!(ids, [Tid(3), Tid(10), Tid(12), Tid(20), pack_id]);
    assert_eq!(answer.orders[3].approved, None);
    assert_eq!(answer.orders[2].approved, Some(false));
}
