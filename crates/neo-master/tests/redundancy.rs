//! Redundancy, master side, driven through the `Node` trait: cells lost
//! and caught up, storages added, tweaked, killed and dropped, replica
//! checks. The packets are those of NEO/py's master in
//! `shared/vectors/session-replication.jsonl` where it shows them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use neo_net::ConnId;
use neo_proto::packets::{self as p, CellChange, CellInfo};
use neo_proto::{
    CellState, ClusterState, ErrorCode, Map, NodeId, NodeState, NodeType, Packet, Tid, Value,
};

fn s(n: i32) -> NodeId {
    NodeId(n)
}

fn changes(ptid: u64, num_replicas: u32, cells: &[(u32, i32, CellState)]) -> Packet {
    p::NotifyPartitionChanges {
        ptid,
        num_replicas,
        changes: cells
            .iter()
            .map(|(partition, nid, state)| CellChange {
                partition: *partition,
                nid: s(*nid),
                state: *state,
            })
            .collect(),
    }
    .into()
}

fn cell(nid: i32, state: CellState) -> CellInfo {
    CellInfo { nid: s(nid), state }
}

fn state_of(sim: &Sim, nid: NodeId) -> Option<NodeState> {
    sim.master.nodes().get(nid).map(|node| node.state)
}

/// `session-replication.jsonl` seq 147-285: a second storage joins a
/// one-storage cluster with one replica wanted, is added, gets cells by
/// a tweak, replicates them, is checked, and the replicas are set again.
#[test]
fn add_tweak_replicate_check_as_neo_py_does() {
    use CellState::*;
    let mut sim = Sim::new(4, 1, None);
    let (storages, admin) = running_cluster(&mut sim, 1);
    let s1 = storages[0];
    let (s2, nid, outputs) = sim.identify(NodeType::Storage, None, Some(20001));
    assert_eq!(nid, Some(s(2)));
    assert_eq!(state_of(&sim, s(2)), Some(NodeState::Pending));
    // A pending storage gets the table, but no StartOperation (seq 151).
    assert_eq!(
        names(&to(&outputs, s2)),
        [
            "AcceptIdentification",
            "NotifyNodeInformation",
            "SendPartitionTable",
            "NotifyClusterInformation"
        ]
    );

    let outputs = sim.send(admin, 4, p::AddPendingNodes { nids: vec![s(2)] });
    assert_eq!(
        names(&to(&outputs, s2)),
        ["StartOperation", "NotifyNodeInformation"]
    );
    assert_eq!(
        names(&to(&outputs, admin)),
        ["NotifyNodeInformation", "Error"]
    );
    assert_eq!(
        error_answer(&outputs, admin, 4),
        (ErrorCode::Ack, "Nodes added: S2".into())
    );
    assert_eq!(names(&to(&outputs, s1)), ["NotifyNodeInformation"]);
    assert_eq!(state_of(&sim, s(2)), Some(NodeState::Running));
    sim.send(s2, 1, p::NotifyReady {});

    let tweak = p::TweakPartitionTable {
        dry_run: false,
        drop_nids: vec![],
    };
    let outputs = sim.send(admin, 5, tweak.clone());
    let outdated = changes(
        2,
        1,
        &[
            (0, 2, OutOfDate),
            (1, 2, OutOfDate),
            (2, 2, OutOfDate),
            (3, 2, OutOfDate),
        ],
    );
    let rows = vec![vec![cell(1, UpToDate), cell(2, OutOfDate)]; 4];
    assert_eq!(
        to(&outputs, admin),
        [
            &outdated,
            &Packet::AnswerTweakPartitionTable(p::AnswerTweakPartitionTable {
                changed: true,
                rows
            })
        ]
    );
    assert_eq!(to(&outputs, s1), [&outdated]);
    assert_eq!(to(&outputs, s2), [&outdated]);
    // Tweaking a tweaked table changes nothing.
    let outputs = sim.send(admin, 6, tweak);
    assert!(matches!(
        to(&outputs, admin)[..],
        [Packet::AnswerTweakPartitionTable(
            p::AnswerTweakPartitionTable { changed: false, .. }
        )]
    ));
    assert!(to(&outputs, s1).is_empty());

    // Replication done before asking the unfinished transactions: the
    // storage may have missed transactions, the cell stays out of date.
    let last_tid = sim.master.last_tid();
    let done = |partition| p::NotifyReplicationDone {
        partition,
        tid: last_tid,
    };
    let outputs = sim.send(s2, 2, done(0));
    assert!(to(&outputs, s1).is_empty() && !closed(&outputs, s2));
    let ask = p::AskUnfinishedTransactions {
        partitions: vec![0, 1, 2, 3],
    };
    let outputs = sim.send(s2, 3, ask);
    assert_eq!(
        to(&outputs, s2),
        [&Packet::AnswerUnfinishedTransactions(
            p::AnswerUnfinishedTransactions {
                max_tid: last_tid,
                ttids: vec![]
            }
        )]
    );
    let outputs = sim.send(s2, 4, done(0));
    let up = changes(3, 1, &[(0, 2, UpToDate)]);
    for conn in [s1, s2, admin] {
        assert_eq!(to(&outputs, conn), [&up]);
    }
    // Late and repeated notices are ignored.
    let outputs = sim.send(s2, 5, done(0));
    assert!(outputs.is_empty(), "{outputs:?}");
    for partition in 1..4 {
        sim.send(s2, 6, done(partition));
    }
    assert_eq!(sim.master.partition_table().ptid(), Some(6));

    let check = p::CheckReplicas {
        partitions: Map((0..4).map(|partition| (partition, None)).collect()),
        min_tid: Tid::ZERO,
        max_tid: None,
    };
    let outputs = sim.send(admin, 7, check);
    assert_eq!(
        error_answer(&outputs, admin, 7),
        (ErrorCode::Ack, String::new())
    );
    let checks: Vec<Packet> = (0..4)
        .map(|partition| {
            p::CheckPartition {
                partition,
                source: p::CheckSource {
                    upstream_name: String::new(),
                    address: None,
                },
                min_tid: Tid::ZERO,
                max_tid: last_tid,
            }
            .into()
        })
        .collect();
    assert_eq!(to(&outputs, s2), checks.iter().collect::<Vec<_>>());
    assert!(to(&outputs, s1).is_empty());

    let outputs = sim.send(admin, 8, p::SetNumReplicas { num_replicas: 1 });
    let bumped = changes(7, 1, &[]);
    for conn in [s1, s2] {
        assert_eq!(to(&outputs, conn), [&bumped]);
    }
    assert_eq!(to(&outputs, admin)[0], &bumped);
    assert_eq!(
        error_answer(&outputs, admin, 8),
        (ErrorCode::Ack, String::new())
    );
}

/// A storage lost in service: its cells go out of date, the cluster runs
/// on; back, it is RUNNING at once and started, and catches up.
#[test]
fn a_lost_storage_comes_back_running_with_out_of_date_cells() {
    use CellState::*;
    let mut sim = Sim::new(2, 1, None);
    let (storages, admin) = running_cluster(&mut sim, 2);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let outputs = sim.close(storages[1]);
    let outdated = changes(2, 1, &[(0, 2, OutOfDate), (1, 2, OutOfDate)]);
    for conn in [storages[0], admin, client] {
        assert!(to(&outputs, conn).contains(&&outdated), "{conn}");
    }
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
    assert_eq!(state_of(&sim, s(2)), Some(NodeState::Down));

    let (back, nid, outputs) = sim.identify(NodeType::Storage, Some(s(2)), Some(20005));
    assert_eq!(nid, Some(s(2)));
    assert_eq!(state_of(&sim, s(2)), Some(NodeState::Running));
    assert_eq!(
        names(&to(&outputs, back)),
        [
            "AcceptIdentification",
            "NotifyNodeInformation",
            "SendPartitionTable",
            "NotifyClusterInformation",
            "StartOperation"
        ]
    );
    sim.send(back, 1, p::NotifyReady {});
    // A transaction in progress when it asks: it hears of its end.
    let outputs = sim.send(client, 1, p::AskBeginTransaction { tid: None });
    let Packet::AnswerBeginTransaction(begin) = to(&outputs, client)[0] else {
        panic!("{outputs:?}")
    };
    let ask = p::AskUnfinishedTransactions {
        partitions: vec![0, 1],
    };
    let outputs = sim.send(back, 2, ask);
    assert!(matches!(
        to(&outputs, back)[..],
        [Packet::AnswerUnfinishedTransactions(ref answer)] if answer.ttids == [begin.ttid]
    ));
    let outputs = sim.send(
        client,
        2,
        p::AbortTransaction {
            ttid: begin.ttid,
            nids: vec![],
        },
    );
    assert!(names(&to(&outputs, back)).contains(&"AbortTransaction"));
    let done = p::NotifyReplicationDone {
        partition: 1,
        tid: Tid::ZERO,
    };
    let outputs = sim.send(back, 3, done);
    assert_eq!(to(&outputs, client), [&changes(3, 1, &[(1, 2, UpToDate)])]);
    // Lost again: its up-to-date cell is outdated, the other one was not
    // readable; coming back does not make it updatable again by itself.
    let outputs = sim.close(back);
    // The node first, then its cells (as NEO/py).
    assert_eq!(
        names(&to(&outputs, admin)),
        ["NotifyNodeInformation", "NotifyPartitionChanges"]
    );
    assert_eq!(to(&outputs, admin)[1], &changes(4, 1, &[(1, 2, OutOfDate)]));
    let (back, _, _) = sim.identify(NodeType::Storage, Some(s(2)), Some(20005));
    let done = p::NotifyReplicationDone {
        partition: 0,
        tid: Tid::ZERO,
    };
    let outputs = sim.send(back, 1, done);
    assert!(to(&outputs, admin).is_empty());
}

#[test]
fn replication_done_for_a_partition_not_assigned_is_a_protocol_error() {
    let mut sim = Sim::new(2, 0, None);
    let (storages, _admin) = running_cluster(&mut sim, 2);
    // S1 has partition 0 only.
    let done = p::NotifyReplicationDone {
        partition: 1,
        tid: Tid::ZERO,
    };
    let outputs = sim.send(storages[0], 7, done);
    assert_eq!(
        error_answer(&outputs, storages[0], 7).0,
        ErrorCode::ProtocolError
    );
    assert!(closed(&outputs, storages[0]));
    // Partitions beyond the table are refused the same way.
    let ask = p::AskUnfinishedTransactions {
        partitions: vec![0, 9],
    };
    let outputs = sim.send(storages[1], 8, ask);
    assert_eq!(
        error_answer(&outputs, storages[1], 8).0,
        ErrorCode::ProtocolError
    );
    assert!(closed(&outputs, storages[1]));
}

#[test]
fn admin_requests_that_change_the_table_need_a_running_cluster() {
    let mut sim = Sim::new(2, 0, None);
    let (admin, _, _) = sim.identify(NodeType::Admin, None, Some(9999));
    let cases: [(Packet, &str); 4] = [
        (
            p::AddPendingNodes { nids: vec![] }.into(),
            "addPendingNodes",
        ),
        (
            p::SetNumReplicas { num_replicas: 1 }.into(),
            "setNumReplicas",
        ),
        (
            p::TweakPartitionTable {
                dry_run: true,
                drop_nids: vec![],
            }
            .into(),
            "tweakPartitionTable",
        ),
        (p::Truncate { tid: Tid(1) }.into(), "truncate"),
    ];
    for (request, rpc) in cases {
        assert_eq!(
            denied(&mut sim, admin, request),
            format!("{rpc} RPC can not be used in RECOVERING state")
        );
    }
}

#[test]
fn tweak_refusals_and_dry_run() {
    let mut sim = Sim::new(4, 1, None);
    let (storages, admin) = running_cluster(&mut sim, 2);
    let tweak = |dry_run, drop: &[i32]| p::TweakPartitionTable {
        dry_run,
        drop_nids: drop.iter().map(|n| s(*n)).collect(),
    };
    assert_eq!(
        denied(&mut sim, admin, tweak(false, &[1, 2])),
        "Can't remove all nodes."
    );
    let outputs = sim.send(admin, 1, p::AddPendingNodes { nids: vec![s(7)] });
    assert_eq!(
        error_answer(&outputs, admin, 1),
        (ErrorCode::Ack, "No node added".into())
    );
    // A dry run shows S2 evacuated onto S1, and changes nothing.
    let outputs = sim.send(admin, 2, tweak(true, &[2]));
    let Packet::AnswerTweakPartitionTable(answer) = to(&outputs, admin)[0] else {
        panic!("{outputs:?}")
    };
    assert!(!answer.changed, "S1 already has every partition");
    assert_eq!(sim.master.partition_table().ptid(), Some(1));
    sim.send(admin, 3, p::SetNumReplicas { num_replicas: 0 });
    let outputs = sim.send(admin, 4, tweak(true, &[]));
    let Packet::AnswerTweakPartitionTable(answer) = to(&outputs, admin)[0] else {
        panic!("{outputs:?}")
    };
    assert!(answer.changed);
    assert!(answer.rows.iter().all(|row| row.len() == 1));
    assert!(
        to(&outputs, storages[0]).is_empty(),
        "a dry run broadcasts nothing"
    );
    assert_eq!(sim.master.partition_table().ptid(), Some(2));
    // A storage down must be listed.
    sim.close(storages[1]);
    assert_eq!(
        denied(&mut sim, admin, tweak(false, &[])),
        "tweak: down nodes must be listed explicitly"
    );
    let outputs = sim.send(admin, 5, tweak(false, &[2]));
    assert!(matches!(
        to(&outputs, admin)[..],
        [Packet::AnswerTweakPartitionTable(
            p::AnswerTweakPartitionTable { changed: false, .. }
        )]
    ));
}

/// operations.md §11.6: `kill S2` then `drop S2`, with their refusals.
#[test]
fn kill_and_drop_with_their_refusals() {
    use CellState::*;
    let mut sim = Sim::new(2, 1, None);
    let (storages, admin) = running_cluster(&mut sim, 2);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let state = |nid, state| p::SetNodeState { nid, state };
    assert_eq!(
        denied(&mut sim, admin, state(s(9), NodeState::Down)),
        "unknown node"
    );
    let admin_nid = NodeId::new(NodeType::Admin, 1).unwrap();
    assert_eq!(
        denied(&mut sim, admin, state(admin_nid, NodeState::Down)),
        "can not switch node to DOWN state"
    );
    let master = NodeId::new(NodeType::Master, 1).unwrap();
    assert_eq!(
        denied(&mut sim, admin, state(master, NodeState::Down)),
        "can not kill primary master node"
    );
    assert_eq!(
        denied(&mut sim, admin, state(s(2), NodeState::Unknown)),
        "a running node must be stopped before removal"
    );

    let outputs = sim.send(admin, 1, state(s(2), NodeState::Down));
    // S2 is told it is down, then disconnected; its cells go out of date
    // before anybody hears of its state (seq 304-316 for a master).
    match to(&outputs, storages[1])[..] {
        [Packet::NotifyNodeInformation(ref told)] => {
            assert_eq!(
                (told.nodes[0].nid, told.nodes[0].state),
                (Some(s(2)), NodeState::Down)
            );
        }
        ref other => panic!("{other:?}"),
    }
    assert!(closed(&outputs, storages[1]));
    let outdated = changes(2, 1, &[(0, 2, OutOfDate), (1, 2, OutOfDate)]);
    assert_eq!(
        names(&to(&outputs, admin)),
        ["NotifyPartitionChanges", "Error", "NotifyNodeInformation"]
    );
    assert_eq!(to(&outputs, admin)[0], &outdated);
    assert_eq!(
        error_answer(&outputs, admin, 1),
        (ErrorCode::Ack, "state changed".into())
    );
    assert_eq!(to(&outputs, client), [&outdated, to(&outputs, admin)[2]]);
    assert_eq!(sim.master.cluster_state(), ClusterState::Running);
    // Its connection closing later changes nothing more.
    assert!(sim.close(storages[1]).is_empty());

    // S1 holds the only readable copies now.
    assert_eq!(
        denied(&mut sim, admin, state(s(1), NodeState::Down)),
        "Refuse to drop nodes that contain the only readable copies of partition 0"
    );
    let outputs = sim.send(admin, 2, state(s(2), NodeState::Down));
    assert_eq!(
        error_answer(&outputs, admin, 2),
        (ErrorCode::Ack, "node already in DOWN state".into())
    );
    let outputs = sim.send(admin, 3, state(s(2), NodeState::Unknown));
    assert_eq!(
        error_answer(&outputs, admin, 3),
        (ErrorCode::Ack, "node permanently removed".into())
    );
    assert_eq!(
        to(&outputs, admin)[0],
        &changes(3, 1, &[(0, 2, Discarded), (1, 2, Discarded)])
    );
    assert_eq!(state_of(&sim, s(2)), None);
    assert_eq!(
        denied(&mut sim, admin, state(s(2), NodeState::Down)),
        "unknown node"
    );
}

/// `drop` of a storage still connected (pending): it is told it is gone,
/// which makes it wipe its database, and disconnected.
#[test]
fn a_dropped_pending_storage_is_told_and_disconnected() {
    let mut sim = Sim::new(2, 0, None);
    let (storages, admin) = running_cluster(&mut sim, 1);
    let (pending, _, _) = sim.identify(NodeType::Storage, None, Some(20009));
    let outputs = sim.send(
        admin,
        1,
        p::SetNodeState {
            nid: s(2),
            state: NodeState::Unknown,
        },
    );
    assert_eq!(
        error_answer(&outputs, admin, 1),
        (ErrorCode::Ack, "state changed".into())
    );
    match to(&outputs, pending)[..] {
        [Packet::NotifyNodeInformation(ref told)] => {
            assert_eq!(told.nodes[0].state, NodeState::Unknown)
        }
        ref other => panic!("{other:?}"),
    }
    assert!(closed(&outputs, pending));
    assert!(names(&to(&outputs, storages[0])).contains(&"NotifyNodeInformation"));
    assert_eq!(state_of(&sim, s(2)), None);
}

/// Evacuating a storage: its readable cells FEED the new ones; dropping
/// the new storage before they are up to date gives them back.
#[test]
fn feeding_cells_go_back_up_to_date_when_their_replacement_is_dropped() {
    use CellState::*;
    let mut sim = Sim::new(2, 0, None);
    let (storages, admin) = running_cluster(&mut sim, 1);
    let (s2, _, _) = sim.identify(NodeType::Storage, None, Some(20001));
    sim.send(admin, 1, p::AddPendingNodes { nids: vec![s(2)] });
    sim.send(s2, 1, p::NotifyReady {});
    let outputs = sim.send(
        admin,
        2,
        p::TweakPartitionTable {
            dry_run: false,
            drop_nids: vec![],
        },
    );
    assert_eq!(
        to(&outputs, storages[0])[0],
        &changes(2, 0, &[(1, 1, Feeding), (1, 2, OutOfDate)])
    );
    let kill = p::SetNodeState {
        nid: s(2),
        state: NodeState::Down,
    };
    sim.send(admin, 3, kill);
    let drop = p::SetNodeState {
        nid: s(2),
        state: NodeState::Unknown,
    };
    let outputs = sim.send(admin, 4, drop);
    // (Killing S2 changed no cell: it had none readable.)
    assert_eq!(
        to(&outputs, storages[0])[0],
        &changes(3, 0, &[(1, 2, Discarded), (1, 1, UpToDate)])
    );
}

/// A corruption found by a replica check marks the differing cells,
/// unless no readable copy would be left.
#[test]
fn corrupted_cells_are_marked_unless_they_are_the_last_readable_ones() {
    use CellState::*;
    let mut sim = Sim::new(2, 2, None);
    let (storages, admin) = running_cluster(&mut sim, 3);
    let check = p::CheckReplicas {
        partitions: Map(vec![(0, Some(s(1))), (1, None)]),
        min_tid: Tid::ZERO,
        max_tid: Some(Tid(7)),
    };
    let outputs = sim.send(admin, 1, check);
    let Packet::CheckPartition(order) = to(&outputs, storages[2])[0] else {
        panic!("{outputs:?}")
    };
    assert_eq!(
        order.source.address,
        sim.master.nodes().get(s(1)).unwrap().address
    );
    let corrupted = |partition, nids: &[i32]| p::NotifyPartitionCorrupted {
        partition,
        nids: nids.iter().map(|n| s(*n)).collect(),
    };
    let outputs = sim.send(storages[2], 2, corrupted(0, &[3, 2]));
    let marked = changes(2, 2, &[(0, 2, Corrupted), (0, 3, Corrupted)]);
    assert_eq!(to(&outputs, admin), [&marked]);
    // Every cell of partition 1 reported (a check without reference):
    // nobody can tell which is right, nothing is marked.
    let outputs = sim.send(storages[2], 3, corrupted(1, &[1, 2, 3]));
    assert!(to(&outputs, admin).is_empty());
    // CORRUPTED cells are not readable: losing S1 loses partition 0.
    sim.close(storages[0]);
    assert_eq!(sim.master.cluster_state(), ClusterState::Recovering);
    let outputs = sim.send(storages[1], 4, corrupted(5, &[2]));
    assert!(closed(&outputs, storages[1]), "partition out of range");
}

/// The storages' `devpath` spreads the copies of a new table over
/// machines; a devpath beyond reason is refused.
#[test]
fn devpaths_spread_the_copies_of_a_new_table() {
    let mut sim = Sim::new(4, 1, Some(4));
    let mut conns: Vec<ConnId> = Vec::new();
    for (index, machine) in ["a", "a", "b", "b"].into_iter().enumerate() {
        let devpath = Value::Array(vec![Value::Bin(machine.as_bytes().to_vec().into())]);
        let extra = Map(vec![("devpath".to_owned(), devpath)]);
        let port = 20000 + index as u16;
        let (conn, _, _) = sim.identify_with(NodeType::Storage, None, Some(port), extra);
        conns.push(conn);
    }
    for conn in conns {
        sim.reply(conn, p::AskRecovery::CODE, empty_recovery());
    }
    assert_eq!(sim.master.cluster_state(), ClusterState::Verifying);
    let table = sim.master.partition_table();
    for partition in 0..4 {
        let machines: Vec<i32> = table
            .cells(partition)
            .iter()
            .map(|c| (c.nid.0 - 1) / 2)
            .collect();
        assert_eq!(machines.len(), 2);
        assert_ne!(machines[0], machines[1], "partition {partition}");
    }
    let long = Value::Array(vec![Value::Bin(vec![b'x'; 300].into())]);
    let extra = Map(vec![("devpath".to_owned(), long)]);
    let (conn, nid, outputs) = sim.identify_with(NodeType::Storage, None, Some(20010), extra);
    assert_eq!(nid, None);
    assert_eq!(error_answer(&outputs, conn, 0).0, ErrorCode::ProtocolError);
}

/// `neoctl flush_log` reaches every other node (NEO/py's storages keep
/// their log in memory until told).
#[test]
fn flush_log_is_relayed_to_every_other_node() {
    let mut sim = Sim::new(2, 0, None);
    let (storages, admin) = running_cluster(&mut sim, 2);
    let (client, _, _) = sim.identify(NodeType::Client, None, None);
    let outputs = sim.send(admin, 1, p::FlushLog {});
    for conn in [storages[0], storages[1], client] {
        assert_eq!(to(&outputs, conn), [&Packet::FlushLog(p::FlushLog {})]);
    }
    assert!(to(&outputs, admin).is_empty());
}
