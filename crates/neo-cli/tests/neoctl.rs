//! The `neoctl` binary end to end against a fake admin node: a
//! `neo_net::Listener` in a thread of its own that answers each request
//! with a canned packet and records what it received.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command as Process;
use std::sync::{mpsc, Arc, Mutex};

use neo_net::{ConnectionConfig, EventKind, Listener};
use neo_proto::packets::{self, CellInfo, NodeInfo, Row};
use neo_proto::{
    Address, CellState, ClusterState, ErrorCode, NodeId, NodeState, NodeType, Oid, Packet, Tid,
};

fn nid(node_type: NodeType, number: u32) -> NodeId {
    NodeId::new(node_type, number).unwrap()
}

fn node(
    node_type: NodeType,
    address: Option<&str>,
    state: NodeState,
    time: Option<f64>,
) -> NodeInfo {
    NodeInfo {
        node_type,
        address: address.map(|a| Address::parse(a, 0).unwrap()),
        nid: Some(nid(
            node_type,
            1 + u32::from(address == Some("127.0.0.1:21102")),
        )),
        state,
        id_timestamp: time,
    }
}

/// The nodes of operations.md §11.6 (after the client connected).
fn nodes() -> Vec<NodeInfo> {
    vec![
        node(
            NodeType::Master,
            Some("127.0.0.1:21000"),
            NodeState::Running,
            None,
        ),
        node(
            NodeType::Storage,
            Some("127.0.0.1:21102"),
            NodeState::Running,
            Some(1795642863.496154),
        ),
        node(
            NodeType::Admin,
            Some("127.0.0.1:21999"),
            NodeState::Running,
            Some(1795642857.585259),
        ),
        node(
            NodeType::Storage,
            Some("127.0.0.1:21101"),
            NodeState::Running,
            Some(1795642885.570998),
        ),
        node(
            NodeType::Client,
            None,
            NodeState::Running,
            Some(1795642905.023565),
        ),
    ]
}

/// 12 partitions, no replica, alternating between S1 and S2.
fn rows() -> Vec<Row> {
    (0..12)
        .map(|p| {
            vec![CellInfo {
                nid: nid(NodeType::Storage, 1 + p % 2),
                state: CellState::UpToDate,
            }]
        })
        .collect()
}

/// What the fake admin answers to `request`.
fn answer(request: &Packet) -> Option<Packet> {
    let ack = |message: &str| packets::Error::ack(message).into();
    let denied = |message: &str| packets::Error::new(ErrorCode::Denied, message).into();
    Some(match request {
        Packet::AskNodeList(ask) => packets::AnswerNodeList {
            nodes: nodes()
                .into_iter()
                .filter(|n| ask.node_type.is_none() || ask.node_type == Some(n.node_type))
                .collect(),
        }
        .into(),
        Packet::AskPartitionList(ask) => {
            let all = rows();
            let end = if ask.max_offset == 0 {
                all.len()
            } else {
                ask.max_offset as usize
            };
            if end > all.len() {
                return Some(
                    packets::Error::new(ErrorCode::ProtocolError, "invalid partition table offset")
                        .into(),
                );
            }
            packets::AnswerPartitionList {
                ptid: Some(1),
                num_replicas: 0,
                rows: all[ask.min_offset as usize..end].to_vec(),
            }
            .into()
        }
        Packet::AskClusterState(_) => packets::AnswerClusterState {
            state: Some(ClusterState::Recovering),
        }
        .into(),
        Packet::AskPrimary(_) => packets::AnswerPrimary {
            primary: Some(nid(NodeType::Master, 1)),
        }
        .into(),
        Packet::AskRecovery(_) => packets::AnswerRecovery {
            ptid: Some(1),
            backup_tid: None,
            truncate_tid: None,
        }
        .into(),
        Packet::AskLastIDs(_) => packets::AnswerLastIDs {
            last_tid: Some(Tid(0x040d42d5afed5c12)),
            last_oid: Some(Oid(0)),
            first_tid: Tid(0x03),
        }
        .into(),
        Packet::SetClusterState(set) => match set.state {
            ClusterState::Verifying | ClusterState::Stopping => ack("Cluster state changed"),
            _ => denied("Invalid state requested"),
        },
        Packet::SetNodeState(set) if set.nid == nid(NodeType::Storage, 2) => match set.state {
            NodeState::Unknown => ack("node permanently removed"),
            _ => ack("state changed"),
        },
        Packet::SetNodeState(set) if set.nid == nid(NodeType::Storage, 1) => {
            denied("a running node must be stopped before removal")
        }
        Packet::SetNodeState(_) => denied("unknown node"),
        Packet::AddPendingNodes(add) if add.nids.contains(&nid(NodeType::Storage, 2)) => {
            ack("Nodes added: S2")
        }
        Packet::AddPendingNodes(_) => ack("No node added"),
        Packet::Truncate(truncate) if truncate.tid == Tid(0x040d42d5afed5c12) => ack(""),
        Packet::Truncate(_) => denied("Truncating after last transaction does nothing"),
        Packet::CheckReplicas(_) => ack(""),
        Packet::SetNumReplicas(_) => ack(""),
        Packet::AskMonitorInformation(_) => packets::AnswerMonitorInformation {
            warning: vec![],
            problem: vec![None],
            summary: "RECOVERING".into(),
        }
        .into(),
        Packet::TweakPartitionTable(tweak) => match &tweak.drop_nids[..] {
            // operations.md §11.6: one replica more on 12 partitions.
            [] => packets::AnswerTweakPartitionTable {
                changed: true,
                rows: (0..12)
                    .map(|p| {
                        let cell = |n, state| CellInfo {
                            nid: nid(NodeType::Storage, n),
                            state,
                        };
                        let (up, out) = (1 + p % 2, 2 - p % 2);
                        vec![
                            cell(up, CellState::UpToDate),
                            cell(out, CellState::OutOfDate),
                        ]
                    })
                    .collect(),
            }
            .into(),
            [one] if *one == nid(NodeType::Storage, 2) => packets::AnswerTweakPartitionTable {
                changed: false,
                rows: rows(),
            }
            .into(),
            [_, _] => denied("Can't remove all nodes."),
            _ => packets::Error::new(ErrorCode::NotReady, "Not connected to a primary master.")
                .into(),
        },
        _ => return None,
    })
}

/// A fake admin listening on an ephemeral port; the requests it received
/// are kept in order.
struct FakeAdmin {
    address: Address,
    received: Arc<Mutex<Vec<Packet>>>,
}

impl FakeAdmin {
    fn start() -> FakeAdmin {
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = Listener::bind(&Address::new("127.0.0.1", 0)).await.unwrap();
                tx.send(listener.local_address().clone()).unwrap();
                loop {
                    let accepted = listener.accept().await.unwrap();
                    let log = log.clone();
                    tokio::spawn(async move {
                        let Ok((connection, mut inbox)) =
                            accepted.open(&ConnectionConfig::default()).await
                        else {
                            return;
                        };
                        while let Some(event) = inbox.recv().await {
                            let EventKind::Packet(frame) = event.kind else {
                                continue;
                            };
                            log.lock().unwrap().push(frame.packet.clone());
                            if let Some(reply) = answer(&frame.packet) {
                                let _ = connection.answer(frame.msg_id, reply).await;
                            }
                        }
                    });
                }
            });
        });
        FakeAdmin {
            address: rx.recv().unwrap(),
            received,
        }
    }

    fn received(&self) -> Vec<Packet> {
        self.received.lock().unwrap().clone()
    }
}

struct Output {
    stdout: String,
    stderr: String,
    status: i32,
}

fn neoctl(address: &Address, words: &str) -> Output {
    let output = Process::new(env!("CARGO_BIN_EXE_neoctl"))
        .arg("-a")
        .arg(address.to_string())
        .args(words.split_whitespace())
        .output()
        .unwrap();
    Output {
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
        status: output.status.code().unwrap(),
    }
}

#[test]
fn print_node() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "print node");
    assert_eq!(
        out.stdout,
        "A1 | ADMIN   | 127.0.0.1:21999 | RUNNING | 2026-11-25 21:40:57.585259\n\
         C1 | CLIENT  |                 | RUNNING | 2026-11-25 21:41:45.023565\n\
         M1 | MASTER  | 127.0.0.1:21000 | RUNNING | None\n\
         S1 | STORAGE | 127.0.0.1:21101 | RUNNING | 2026-11-25 21:41:25.570998\n\
         S2 | STORAGE | 127.0.0.1:21102 | RUNNING | 2026-11-25 21:41:03.496154\n"
    );
    assert_eq!((out.stderr.as_str(), out.status), ("", 0));
    let out = neoctl(&admin.address, "print node master");
    assert_eq!(
        out.stdout,
        "M1 | MASTER | 127.0.0.1:21000 | RUNNING | None\n"
    );
    assert_eq!(
        admin.received(),
        [
            packets::AskNodeList { node_type: None }.into(),
            packets::AskNodeList {
                node_type: Some(NodeType::Master)
            }
            .into(),
        ]
    );
}

#[test]
fn print_pt() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "print pt");
    assert_eq!(
        out.stdout,
        "# ptid: 1, replicas: 0\n             10v\nS1 R U.U.U.U.U.U.\nS2 R .U.U.U.U.U.U\n"
    );
    assert_eq!(out.status, 0);
    // The compact form asks the storage states too, as NEO/py does.
    assert_eq!(
        admin.received(),
        [
            packets::AskPartitionList {
                min_offset: 0,
                max_offset: 0,
                nid: None
            }
            .into(),
            packets::AskNodeList {
                node_type: Some(NodeType::Storage)
            }
            .into(),
        ]
    );
    let out = neoctl(&admin.address, "print pt 0 3");
    assert_eq!(
        out.stdout,
        "# ptid: 1, replicas: 0\n000 | S1 - UP_TO_DATE |\n001 | S2 - UP_TO_DATE |\n002 | S1 - UP_TO_DATE |\n"
    );
}

#[test]
fn print_pt_out_of_range_is_one_line() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "print pt 0 100");
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "ERROR: PROTOCOL_ERROR: invalid partition table offset\n"
    );
    assert_eq!(out.status, 1);
}

#[test]
fn single_values_and_ids() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "print cluster");
    assert_eq!((out.stdout.as_str(), out.status), ("RECOVERING\n", 0));
    let out = neoctl(&admin.address, "print primary");
    assert_eq!(out.stdout, "M1\n");
    let out = neoctl(&admin.address, "print ids");
    assert_eq!(
        out.stdout,
        "last_oid = 0x0\nlast_tid = 0x40d42d5afed5c12 (2026-11-25 21:41:41.232934)\nlast_ptid = 1\n"
    );
    let out = neoctl(&admin.address, "print summary");
    assert_eq!(out.stdout, "# {\"problem\": [null]}\nRECOVERING\n");
}

#[test]
fn start_and_stop() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "start");
    assert_eq!(out.stdout, "Cluster state changed\n");
    assert_eq!((out.stderr.as_str(), out.status), ("", 0));
    let out = neoctl(&admin.address, "set cluster STOPPING");
    assert_eq!(out.stdout, "Cluster state changed\n");
    assert_eq!(out.status, 0);
    assert_eq!(
        admin.received(),
        [
            packets::SetClusterState {
                state: ClusterState::Verifying
            }
            .into(),
            packets::SetClusterState {
                state: ClusterState::Stopping
            }
            .into(),
        ]
    );
}

#[test]
fn acknowledgements() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "kill S2");
    assert_eq!((out.stdout.as_str(), out.status), ("state changed\n", 0));
    let out = neoctl(&admin.address, "set replicas 1");
    assert_eq!((out.stdout.as_str(), out.status), ("\n", 0));
    assert_eq!(
        admin.received(),
        [
            packets::SetNodeState {
                nid: nid(NodeType::Storage, 2),
                state: NodeState::Down
            }
            .into(),
            packets::SetNumReplicas { num_replicas: 1 }.into(),
        ]
    );
}

#[test]
fn denied_is_printed_verbatim_on_stderr() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "set cluster RUNNING");
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "Invalid state requested\n");
    assert_eq!(out.status, 1);
    let out = neoctl(&admin.address, "kill C9");
    assert_eq!((out.stderr.as_str(), out.status), ("unknown node\n", 1));
}

#[test]
fn not_ready_is_an_error_line() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "tweak S9");
    assert_eq!(out.stderr, "ERROR: Not connected to a primary master.\n");
    assert_eq!(out.status, 1);
}

#[test]
fn flush_log_reaches_the_admin() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "flush_log");
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.status),
        ("", "", 0)
    );
    // The notification was sent before neoctl exited.
    for _ in 0..100 {
        if !admin.received().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(admin.received(), [packets::FlushLog {}.into()]);
}

#[test]
fn unreachable_admin() {
    // A port nobody listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = neoctl(&Address::new("127.0.0.1", port), "print cluster");
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "ERROR: not connected\n");
    assert_eq!(out.status, 1);
}

#[test]
fn bad_input_fails_before_connecting() {
    let nowhere = Address::new("127.0.0.1", 1);
    for (words, stderr) in [
        ("foo", "invalid command: foo\n"),
        ("print", "invalid command: print\n"),
        ("print foo", "invalid command: print foo\n"),
        ("set replicas -1", "invalid number of replicas\n"),
        (
            "kill s1",
            "invalid node id \"s1\": expected a type letter (M, S, C or A) followed by a number, e.g. S1\n",
        ),
    ] {
        let out = neoctl(&nowhere, words);
        assert_eq!((out.stderr.as_str(), out.status), (stderr, 1), "{words}");
    }
    let out = neoctl(&nowhere, "set cluster FOO");
    assert_eq!(out.status, 1);
    assert!(out.stderr.starts_with("invalid cluster state \"FOO\""));
    assert_eq!(out.stderr.lines().count(), 1);
    let out = neoctl(&nowhere, "truncate yesterday");
    assert_eq!(out.status, 1);
    assert_eq!(out.stderr.lines().count(), 1);
}

#[test]
fn usage_help_and_command_list() {
    let nowhere = Address::new("127.0.0.1", 1);
    let out = neoctl(&nowhere, "");
    assert!(out
        .stdout
        .starts_with("Available commands:\nprint\n  ids\n"));
    assert_eq!(out.status, 0);
    let out = neoctl(&nowhere, "--help");
    assert!(out
        .stdout
        .contains("address of an admin node (default: 127.0.0.1:9999)"));
    assert_eq!(out.status, 0);
    let out = neoctl(&nowhere, "--bogus");
    assert_eq!(out.status, 2);
    assert!(out.stderr.starts_with("neoctl: error: "));
    assert_eq!(out.stderr.lines().count(), 1);
    let out = neoctl(&nowhere, "--ca a --cert b --key c print cluster");
    assert_eq!(out.status, 1);
    assert!(out.stderr.starts_with("neoctl: error: TLS ca file a: "));
    assert_eq!(out.stderr.lines().count(), 1);
}

/// A peer that answers the handshake with `reply` and then waits.
fn fake_peer(reply: &'static [u8]) -> Address {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::from(listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(reply);
            let mut sink = [0u8; 64];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    address
}

#[test]
fn peers_that_are_not_our_admin() {
    // Protocol version 4, then an HTTP server (operations.md §11.10).
    for reply in [
        &[0x92, 0xa3, b'N', b'E', b'O', 0x04][..],
        b"HTTP/1.0 400 Bad Request\r\n\r\n",
    ] {
        let out = neoctl(&fake_peer(reply), "print cluster");
        assert_eq!(out.stdout, "");
        assert!(
            out.stderr.starts_with("ERROR: Connection closed"),
            "{}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1);
        assert_eq!(out.status, 1);
    }
}

/// operations.md §11.6: what `tweak`, `add`, `drop`, `truncate` and
/// `check` print, as NEO/py's neoctl does.
#[test]
fn elasticity_commands_print_what_neo_py_prints() {
    let admin = FakeAdmin::start();
    let out = neoctl(&admin.address, "tweak -n");
    assert_eq!(
        (out.stdout.as_str(), out.status),
        (
            "             10v\nS1 R UOUOUOUOUOUO\nS2 R OUOUOUOUOUOU\n",
            0
        )
    );
    let out = neoctl(&admin.address, "tweak -n S2");
    assert_eq!(out.stdout, "No change done.\n");
    let out = neoctl(&admin.address, "tweak S1 S2");
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.status),
        ("", "Can't remove all nodes.\n", 1)
    );
    let out = neoctl(&admin.address, "add S3");
    assert_eq!(out.stdout, "No node added\n");
    let out = neoctl(&admin.address, "add all");
    assert_eq!(out.stdout, "Nodes added: S2\n");
    let out = neoctl(&admin.address, "drop S1");
    assert_eq!(
        (out.stderr.as_str(), out.status),
        ("a running node must be stopped before removal\n", 1)
    );
    let out = neoctl(&admin.address, "drop S2");
    assert_eq!(out.stdout, "node permanently removed\n");
    let out = neoctl(&admin.address, "truncate tid:0x040d42d5afed5c12");
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.status),
        ("", "", 0)
    );
    let out = neoctl(&admin.address, "truncate tid:0x040d42d5c02149d3");
    assert_eq!(
        (out.stderr.as_str(), out.status),
        ("Truncating after last transaction does nothing\n", 1)
    );
    let out = neoctl(&admin.address, "check 0:S1 1000000000 2000000000");
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.status),
        ("", "", 0)
    );
    let received = admin.received();
    let sent = |name: &str| received.iter().filter(|p| p.name() == name).count();
    assert_eq!(sent("TweakPartitionTable"), 3);
    assert_eq!(sent("Truncate"), 2);
    assert!(received.contains(
        &packets::TweakPartitionTable {
            dry_run: true,
            drop_nids: vec![nid(NodeType::Storage, 2)]
        }
        .into()
    ));
    // `add all` names every storage the admin knows.
    assert!(received.contains(
        &packets::AddPendingNodes {
            nids: vec![nid(NodeType::Storage, 2), nid(NodeType::Storage, 1)]
        }
        .into()
    ));
    assert!(received.contains(
        &packets::CheckReplicas {
            partitions: neo_proto::Map(vec![(0, Some(nid(NodeType::Storage, 1)))]),
            min_tid: neo_cli::neoctl::command::parse_tid("1000000000").unwrap(),
            max_tid: Some(neo_cli::neoctl::command::parse_tid("2000000000").unwrap()),
        }
        .into()
    ));
}
