//! Replication of the node's OUT_OF_DATE cells (architecture.md §9.1),
//! driven packet by packet: the master is asked which transactions are in
//! progress, a source is connected and identified to, chunks are fetched
//! in background steps and stored, progress survives a restart, and the
//! master is told once every lockless write became a lock. The hostile
//! cases: answers of an aborted replication, a source that vanishes or
//! refuses, a source that sends what was not asked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use neo_net::{ConnId, Input, Node, Output, Token};
use neo_proto::packets as p;
use neo_proto::{CellState, ErrorCode, Map, NodeId, NodeType, Oid, Packet, Tid};

const SOURCE: ConnId = ConnId(20);

fn source_nid() -> NodeId {
    other_storage_nid()
}

/// One partition: OUT_OF_DATE here, UP_TO_DATE on the source.
fn setup() -> Setup {
    shared_partition(CellState::OutOfDate)
}

/// The requests among `outputs`.
fn requests(outputs: &[Output]) -> Vec<(ConnId, Token, Packet)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Request {
                conn,
                token,
                packet,
            } => Some((*conn, *token, packet.clone())),
            _ => None,
        })
        .collect()
}

fn notifications(outputs: &[Output]) -> Vec<(ConnId, Packet)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Notify { conn, packet } => Some((*conn, packet.clone())),
            _ => None,
        })
        .collect()
}

/// Answers the `AskUnfinishedTransactions` the node sent when it started.
fn answer_unfinished(harness: &mut Harness, max_tid: Tid, ttids: Vec<Tid>) -> Vec<Output> {
    let asked = requests(&harness.started);
    let [(MASTER, token, Packet::AskUnfinishedTransactions(request))] = asked.as_slice() else {
        panic!("expected AskUnfinishedTransactions: {:?}", harness.started);
    };
    assert_eq!(request.partitions, [0]);
    let answer = p::AnswerUnfinishedTransactions { max_tid, ttids };
    harness.input(Input::Answer {
        conn: MASTER,
        token: *token,
        packet: answer.into(),
    })
}

/// Connects the source as `outputs` ask and identifies to it as
/// NEO does; returns the outputs of the accepted identification.
fn connect_source(harness: &mut Harness, outputs: &[Output]) -> Vec<Output> {
    let Some(token) = outputs.iter().find_map(|output| match output {
        Output::Connect { token, address } if *address == storage_address(source_nid()) => {
            Some(*token)
        }
        _ => None,
    }) else {
        panic!("expected a connection to the source: {outputs:?}");
    };
    let identify = harness.input(Input::Connected {
        conn: SOURCE,
        token,
    });
    let asked = requests(&identify);
    let [(SOURCE, token, Packet::RequestIdentification(request))] = asked.as_slice() else {
        panic!("expected an identification: {identify:?}");
    };
    assert_eq!(request.node_type, NodeType::Storage);
    assert_eq!(request.nid, Some(storage_nid()));
    assert_eq!(request.address, Some(own_address()));
    // The id_timestamp the master announced for this node, bit for bit.
    assert_eq!(request.id_timestamp, Some(id_timestamp(storage_nid())));
    let accept = p::AcceptIdentification {
        node_type: NodeType::Storage,
        nid: Some(source_nid()),
        your_nid: Some(storage_nid()),
    };
    harness.input(Input::Answer {
        conn: SOURCE,
        token: *token,
        packet: accept.into(),
    })
}

/// The next background step, which must ask the next chunk.
fn next_fetch(harness: &mut Harness) -> (Token, Packet) {
    assert_eq!(
        harness.storage.poll_timeout(),
        Some(harness.now),
        "background work"
    );
    let outputs = harness.input(Input::Timeout);
    let asked = requests(&outputs);
    let [(SOURCE, token, packet)] = asked.as_slice() else {
        panic!("expected a fetch: {outputs:?}");
    };
    (*token, packet.clone())
}

fn part(harness: &mut Harness, token: Token, packet: impl Into<Packet>) -> Vec<Output> {
    harness.input(Input::AnswerPart {
        conn: SOURCE,
        token,
        packet: packet.into(),
    })
}

fn answer(harness: &mut Harness, token: Token, packet: impl Into<Packet>) -> Vec<Output> {
    harness.input(Input::Answer {
        conn: SOURCE,
        token,
        packet: packet.into(),
    })
}

fn add_transaction(tid: Tid, oids: Vec<Oid>) -> p::AddTransaction {
    p::AddTransaction {
        tid,
        user: b"user".as_slice().into(),
        description: b"replicated".as_slice().into(),
        extension: Default::default(),
        packed: false,
        ttid: tid,
        oids,
        pack: None,
    }
}

fn add_object(oid: Oid, serial: Tid, data: &'static [u8]) -> p::AddObject {
    p::AddObject {
        oid,
        serial,
        compression: 0,
        checksum: checksum(data),
        data: data.into(),
        data_serial: None,
    }
}

fn transactions_done(next_tid: Option<Tid>) -> p::AnswerFetchTransactions {
    p::AnswerFetchTransactions {
        next_tid,
        delete_tids: vec![],
        completed_pack: None,
    }
}

fn objects_done(next: Option<(Tid, Oid)>) -> p::AnswerFetchObjects {
    p::AnswerFetchObjects {
        next_tid: next.map(|(tid, _)| tid),
        next_oid: next.map(|(_, oid)| oid),
        delete: Map::new(),
    }
}

/// `(trans rows, obj rows, own cell's pt.tid)` as committed on disk.
fn on_disk(harness: &Harness) -> (i64, i64, Option<i64>) {
    let conn = rusqlite::Connection::open(harness.dir.path().join("neo.sqlite")).unwrap();
    let count = |table: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
    };
    let cell = conn
        .query_row(
            "SELECT tid FROM pt WHERE nid = ?",
            [harness.own().0],
            |row| row.get(0),
        )
        .ok();
    (count("trans"), count("obj"), cell)
}

fn load(harness: &mut Harness, oid: Oid) -> Packet {
    let outputs = harness.client_sends(p::AskObject {
        oid,
        at: None,
        before: None,
    });
    answers(&outputs)[0].clone()
}

/// Whether a store was answered as accepted without a lock (ZERO_TID).
fn lockless(outputs: &[Output]) -> bool {
    matches!(
        answers(outputs)[..],
        [Packet::AnswerStoreObject(p::AnswerStoreObject {
            conflict: Some(Tid::ZERO)
        })]
    )
}

fn replication_done(outputs: &[Output]) -> Option<p::NotifyReplicationDone> {
    notifications(outputs)
        .into_iter()
        .find_map(|(conn, packet)| match packet {
            Packet::NotifyReplicationDone(done) if conn == MASTER => Some(done),
            _ => None,
        })
}

/// The whole of §9.1 as NEO/py's storages do it (session-replication.jsonl
/// seq 182–236): AskUnfinishedTransactions, identification with the
/// id_timestamp, transactions then objects, NotifyReplicationDone; reads
/// only once the master says UP_TO_DATE.
#[test]
fn an_out_of_date_cell_is_fetched_then_announced() {
    let mut harness = Harness::start(setup());
    let max_tid = tid(9);
    let outputs = answer_unfinished(&mut harness, max_tid, vec![]);
    let outputs = connect_source(&mut harness, &outputs);
    assert!(requests(&outputs).is_empty(), "asked in a background step");

    let (token, fetch) = next_fetch(&mut harness);
    let Packet::AskFetchTransactions(fetch) = fetch else {
        panic!("{fetch:?}");
    };
    assert_eq!(
        (fetch.partition, fetch.length, fetch.min_tid, fetch.max_tid),
        (0, 1000, Tid::ZERO, max_tid)
    );
    assert!(fetch.known_tids.is_empty() && fetch.ask_pack_info);
    part(&mut harness, token, add_transaction(tid(1), vec![Oid(0)]));
    part(&mut harness, token, add_transaction(tid(2), vec![Oid(0)]));
    answer(&mut harness, token, transactions_done(None));

    let (token, fetch) = next_fetch(&mut harness);
    let Packet::AskFetchObjects(fetch) = fetch else {
        panic!("{fetch:?}");
    };
    assert_eq!((fetch.min_tid, fetch.min_oid), (Tid::ZERO, Oid(0)));
    part(&mut harness, token, add_object(Oid(0), tid(1), b"first"));
    part(&mut harness, token, add_object(Oid(0), tid(2), b"second"));
    answer(&mut harness, token, objects_done(None));
    // Not readable yet: only the master makes it so.
    let refused = load(&mut harness, Oid(0));
    assert!(
        matches!(&refused, Packet::Error(e) if e.code == ErrorCode::NonReadableCell),
        "{refused:?}"
    );

    let outputs = harness.input(Input::Timeout);
    let done = replication_done(&outputs).expect("announced");
    assert_eq!((done.partition, done.tid), (0, max_tid));
    assert_eq!(on_disk(&harness), (2, 2, Some(max_tid.0 as i64)));
    // Nothing left: the source's link goes idle, then is given up.
    assert_eq!(harness.storage.poll_timeout(), Some(harness.now + 100.0));
    harness.now += 100.0;
    let outputs = harness.input(Input::Timeout);
    assert_eq!(outputs, [Output::CloseClient { conn: SOURCE }]);

    harness.master_sends(p::NotifyPartitionChanges {
        ptid: 2,
        num_replicas: 1,
        changes: vec![p::CellChange {
            partition: 0,
            nid: storage_nid(),
            state: CellState::UpToDate,
        }],
    });
    let Packet::AnswerObject(object) = load(&mut harness, Oid(0)) else {
        panic!("not served");
    };
    assert_eq!((object.serial, &object.data[..]), (tid(2), &b"second"[..]));
}

/// Progress is committed per chunk: a node restarted in the middle of
/// the objects resumes after what it had, instead of from the start.
#[test]
fn a_restart_in_the_middle_resumes_where_it_stopped() {
    let mut harness = Harness::start(setup());
    let max_tid = tid(9);
    let outputs = answer_unfinished(&mut harness, max_tid, vec![]);
    connect_source(&mut harness, &outputs);
    let (token, _) = next_fetch(&mut harness);
    part(&mut harness, token, add_transaction(tid(1), vec![Oid(0)]));
    answer(&mut harness, token, transactions_done(Some(tid(5))));
    // The next chunk starts at the next tid and knows nothing of it yet.
    let (token, fetch) = next_fetch(&mut harness);
    let Packet::AskFetchTransactions(fetch) = fetch else {
        panic!("{fetch:?}");
    };
    assert_eq!((fetch.min_tid, fetch.ask_pack_info), (tid(5), false));
    part(&mut harness, token, add_transaction(tid(5), vec![Oid(0)]));
    answer(&mut harness, token, transactions_done(None));
    let (token, _) = next_fetch(&mut harness);
    part(&mut harness, token, add_object(Oid(0), tid(1), b"first"));
    answer(&mut harness, token, objects_done(Some((tid(5), Oid(0)))));
    let (token, fetch) = next_fetch(&mut harness);
    let Packet::AskFetchObjects(fetch) = fetch else {
        panic!("{fetch:?}");
    };
    assert_eq!((fetch.min_tid, fetch.min_oid), (tid(5), Oid(0)));
    // What came before this chunk is committed, and the cell says so.
    assert_eq!(on_disk(&harness), (2, 1, Some(tid(4).0 as i64)));
    // This part is lost with the restart.
    part(&mut harness, token, add_object(Oid(0), tid(5), b"lost"));

    let mut harness = harness.restart(setup());
    let outputs = answer_unfinished(&mut harness, max_tid, vec![]);
    connect_source(&mut harness, &outputs);
    let (_, fetch) = next_fetch(&mut harness);
    let Packet::AskFetchTransactions(fetch) = fetch else {
        panic!("{fetch:?}");
    };
    assert_eq!(fetch.min_tid, tid(5), "resumed, not restarted");
    assert_eq!(fetch.known_tids, [tid(5)]);
}

/// Answers and parts of a replication that was aborted (here by the
/// source's REPLICATION_ERROR) are recognised by their token and ignored;
/// the replication is tried again a second later.
#[test]
fn answers_of_an_aborted_replication_are_ignored() {
    let mut harness = Harness::start(setup());
    let outputs = answer_unfinished(&mut harness, tid(9), vec![]);
    connect_source(&mut harness, &outputs);
    let (aborted, _) = next_fetch(&mut harness);
    let error = p::Error::new(ErrorCode::ReplicationError, "partition 0 dropped");
    answer(&mut harness, aborted, error);
    assert_eq!(harness.storage.poll_timeout(), Some(harness.now + 1.0));
    part(&mut harness, aborted, add_transaction(tid(1), vec![Oid(0)]));
    answer(&mut harness, aborted, transactions_done(None));
    assert_eq!(on_disk(&harness).0, 0, "nothing of the aborted replication");

    harness.now += 1.0;
    let outputs = harness.input(Input::Timeout);
    let asked = requests(&outputs);
    let [(SOURCE, retried, Packet::AskFetchTransactions(fetch))] = asked.as_slice() else {
        panic!("expected a fetch again: {outputs:?}");
    };
    assert_ne!(*retried, aborted);
    assert_eq!(fetch.min_tid, Tid::ZERO);
}

/// A source that vanishes aborts the replication; it is tried again a
/// second later, connecting again.
#[test]
fn a_source_that_vanishes_is_connected_again_a_second_later() {
    let mut harness = Harness::start(setup());
    let outputs = answer_unfinished(&mut harness, tid(9), vec![]);
    connect_source(&mut harness, &outputs);
    let (token, _) = next_fetch(&mut harness);
    part(&mut harness, token, add_transaction(tid(1), vec![Oid(0)]));
    harness.input(Input::Closed { conn: SOURCE });
    harness.now += 1.0;
    let outputs = harness.input(Input::Timeout);
    connect_source(&mut harness, &outputs);
    let (_, fetch) = next_fetch(&mut harness);
    assert!(matches!(fetch, Packet::AskFetchTransactions(f) if f.known_tids == [tid(1)]));
}

/// A source can only make the node write what it asked: another
/// partition's or a later transaction, more items than the chunk has, a
/// bad checksum, a deletion outside the chunk or a chunk that does not
/// move forward end the link.
#[test]
fn a_source_sending_what_was_not_asked_is_dropped() {
    type Hostile = fn(&mut Harness, Token) -> Vec<Output>;
    let hostile: [Hostile; 6] = [
        |h, token| part(h, token, add_transaction(tid(10), vec![])),
        |h, token| {
            // The same transaction, more times than the chunk has items.
            for _ in 0..1000 {
                assert!(part(h, token, add_transaction(tid(1), vec![])).is_empty());
            }
            part(h, token, add_transaction(tid(1), vec![]))
        },
        |h, token| {
            let mut add = add_object(Oid(0), tid(1), b"data");
            add.data = b"changed".as_slice().into();
            answer(h, token, transactions_done(None));
            let (token, _) = next_fetch(h);
            part(h, token, add)
        },
        |h, token| {
            let mut done = transactions_done(None);
            done.delete_tids = vec![tid(12)];
            answer(h, token, done)
        },
        |h, token| answer(h, token, transactions_done(Some(Tid::ZERO))),
        |h, token| {
            answer(h, token, transactions_done(None));
            let (token, _) = next_fetch(h);
            answer(h, token, objects_done(Some((Tid::ZERO, Oid(0)))))
        },
    ];
    for (case, send) in hostile.into_iter().enumerate() {
        let mut harness = Harness::start(setup());
        let outputs = answer_unfinished(&mut harness, tid(9), vec![]);
        connect_source(&mut harness, &outputs);
        let (token, _) = next_fetch(&mut harness);
        let outputs = send(&mut harness, token);
        assert!(
            outputs.contains(&Output::Close { conn: SOURCE }),
            "case {case}: {outputs:?}"
        );
        assert_eq!(on_disk(&harness).1, 0, "case {case}: no object record");
        assert_eq!(
            harness.storage.poll_timeout(),
            Some(harness.now + 1.0),
            "case {case}: retried later"
        );
    }
}

/// Transactions in progress when the node asked are waited for: their
/// commit is fetched too, and only then is the partition announced.
#[test]
fn transactions_in_progress_are_fetched_before_the_announcement() {
    let mut harness = Harness::start(setup());
    let ttid = tid(8);
    let outputs = answer_unfinished(&mut harness, tid(7), vec![ttid]);
    connect_source(&mut harness, &outputs);
    let (token, _) = next_fetch(&mut harness);
    answer(&mut harness, token, transactions_done(None));
    let (token, _) = next_fetch(&mut harness);
    answer(&mut harness, token, objects_done(None));
    let outputs = harness.input(Input::Timeout);
    assert_eq!(replication_done(&outputs), None, "waits for {ttid}");

    let outputs = harness.master_sends(p::NotifyTransactionFinished {
        ttid,
        max_tid: tid(9),
    });
    assert!(outputs.is_empty(), "{outputs:?}");
    let (token, fetch) = next_fetch(&mut harness);
    let Packet::AskFetchTransactions(fetch) = fetch else {
        panic!("{fetch:?}");
    };
    assert_eq!((fetch.min_tid, fetch.max_tid), (tid(8), tid(9)));
    part(&mut harness, token, add_transaction(tid(9), vec![Oid(0)]));
    answer(&mut harness, token, transactions_done(None));
    let (token, fetch) = next_fetch(&mut harness);
    assert!(matches!(fetch, Packet::AskFetchObjects(f) if f.min_tid == tid(8)));
    part(&mut harness, token, add_object(Oid(0), tid(9), b"late"));
    answer(&mut harness, token, objects_done(None));
    let outputs = harness.input(Input::Timeout);
    let done = replication_done(&outputs).expect("announced");
    assert_eq!(done.tid, tid(9));
}

/// While replicating, stores are accepted without locks (ZERO_TID). Once
/// the partition is fetched, an oid two transactions wrote so holds the
/// announcement until one of them ends; then the write of the other
/// becomes a real lock, which new stores of the oid wait for.
#[test]
fn lockless_writes_become_locks_before_the_announcement() {
    let mut harness = Harness::start(setup());
    let outputs = answer_unfinished(&mut harness, tid(3), vec![]);
    connect_source(&mut harness, &outputs);
    for ttid in [tid(10), tid(11)] {
        let stored = harness.store(ttid, Oid(0), Tid::ZERO, b"lockless");
        assert!(lockless(&stored), "{stored:?}");
    }
    let (token, _) = next_fetch(&mut harness);
    answer(&mut harness, token, transactions_done(None));
    let (token, _) = next_fetch(&mut harness);
    answer(&mut harness, token, objects_done(None));
    let outputs = harness.input(Input::Timeout);
    assert_eq!(replication_done(&outputs), None, "two lockless writers");

    let outputs = harness.client_sends(p::AbortTransaction {
        ttid: tid(10),
        nids: vec![],
    });
    assert_eq!(replication_done(&outputs).map(|d| d.tid), Some(tid(3)));
    // tid(11) holds a real lock now: a new store waits for it.
    let stored = harness.store(tid(12), Oid(0), Tid::ZERO, b"waits");
    assert!(answers(&stored).is_empty(), "{stored:?}");
}

/// A discarded cell aborts its replication; a store for a partition that
/// is not this node's is answered without being stored.
#[test]
fn a_discarded_cell_stops_its_replication() {
    let mut harness = Harness::start(setup());
    let outputs = answer_unfinished(&mut harness, tid(9), vec![]);
    connect_source(&mut harness, &outputs);
    let (token, _) = next_fetch(&mut harness);
    harness.master_sends(p::NotifyPartitionChanges {
        ptid: 2,
        num_replicas: 0,
        changes: vec![p::CellChange {
            partition: 0,
            nid: storage_nid(),
            state: CellState::Discarded,
        }],
    });
    part(&mut harness, token, add_transaction(tid(1), vec![Oid(0)]));
    assert_eq!(on_disk(&harness).0, 0);
    harness.now += 1.0;
    let outputs = harness.input(Input::Timeout);
    assert!(requests(&outputs).is_empty(), "{outputs:?}");
    let stored = harness.store(tid(10), Oid(0), Tid::ZERO, b"not ours");
    assert!(lockless(&stored), "{stored:?}");
    harness.client_sends(p::AskVoteTransaction { ttid: tid(10) });
    assert_eq!(harness.committed_votes(), 0, "nothing stored");
}
