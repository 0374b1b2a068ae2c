//! The admin state machine driven deterministically: the tests play the
//! masters and `neoctl`, and check every output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use neo_admin::mail::{EmailConfig, Mail};
use neo_admin::{Admin, AdminConfig, ConfigError, NOT_CONNECTED};
use neo_net::{ConnId, Input, Node, Output, Token};
use neo_proto::packets::{self as p, CellChange, CellInfo, NodeInfo};
use neo_proto::{
    Address, CellState, ClusterState, ErrorCode, NodeId, NodeState, NodeType, Oid, Packet, Tid,
    Value,
};

const T0: f64 = 1_790_000_000.0;
const MASTER_CONN: ConnId = ConnId(100);
const CTL: ConnId = ConnId(7);
const CTL2: ConnId = ConnId(8);

fn master_nid() -> NodeId {
    NodeId::new(NodeType::Master, 1).unwrap()
}
fn admin_nid() -> NodeId {
    NodeId::new(NodeType::Admin, 1).unwrap()
}

fn config(masters: &[u16]) -> AdminConfig {
    AdminConfig {
        cluster: "test".into(),
        masters: masters
            .iter()
            .map(|port| Address::new("127.0.0.1", *port))
            .collect(),
        bind: Address::new("127.0.0.1", 9999),
        monitor_backup: vec!["bk".into()],
        nid: None,
        monitor: Default::default(),
    }
}

struct Sim {
    admin: Admin,
    now: f64,
}

impl Sim {
    fn new(masters: &[u16]) -> Sim {
        Sim {
            admin: Admin::new(config(masters)).unwrap(),
            now: T0,
        }
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        self.admin.handle(input, self.now);
        self.admin.poll_output()
    }

    fn ctl(&mut self, msg_id: u32, packet: impl Into<Packet>) -> Vec<Output> {
        self.input(Input::Packet {
            conn: CTL,
            msg_id,
            packet: packet.into(),
        })
    }

    fn master_says(&mut self, packet: impl Into<Packet>) -> Vec<Output> {
        self.input(Input::Packet {
            conn: MASTER_CONN,
            msg_id: 0,
            packet: packet.into(),
        })
    }

    fn answer(&mut self, token: Token, packet: impl Into<Packet>) -> Vec<Output> {
        self.input(Input::Answer {
            conn: MASTER_CONN,
            token,
            packet: packet.into(),
        })
    }

    /// Starts, connects to the first master and identifies; then the master
    /// sends its node list (master, two storages, the admin) and a table of
    /// 4 partitions, both storages in every row, and the admin asks the
    /// cluster state, answered RECOVERING.
    fn connected(&mut self) {
        let outputs = self.input(Input::Start);
        let (token, _) = connect(&outputs);
        let outputs = self.input(Input::Connected {
            conn: MASTER_CONN,
            token,
        });
        let (token, _) = request(&outputs, MASTER_CONN);
        let outputs = self.answer(
            token,
            p::AcceptIdentification {
                node_type: NodeType::Master,
                nid: Some(master_nid()),
                your_nid: Some(admin_nid()),
            },
        );
        let (cluster_token, packet) = request(&outputs, MASTER_CONN);
        assert_eq!(packet, p::AskClusterState {}.into());
        assert!(self.admin.is_connected());
        self.master_says(p::NotifyNodeInformation {
            timestamp: T0,
            nodes: vec![
                node(NodeType::Admin, admin_nid(), NodeState::Running),
                // The primary, at the address the admin reached it.
                NodeInfo {
                    address: Some(Address::new("127.0.0.1", 10000)),
                    ..node(NodeType::Master, master_nid(), NodeState::Running)
                },
                node(NodeType::Storage, NodeId(1), NodeState::Running),
                node(NodeType::Storage, NodeId(2), NodeState::Running),
            ],
        });
        let row = vec![
            CellInfo {
                nid: NodeId(1),
                state: CellState::UpToDate,
            },
            CellInfo {
                nid: NodeId(2),
                state: CellState::UpToDate,
            },
        ];
        self.master_says(p::SendPartitionTable {
            ptid: Some(1),
            num_replicas: 1,
            rows: vec![row; 4],
        });
        self.answer(
            cluster_token,
            p::AnswerClusterState {
                state: Some(ClusterState::Recovering),
            },
        );
    }
}

fn node(node_type: NodeType, nid: NodeId, state: NodeState) -> NodeInfo {
    let port = 20000 + (nid.0 & 0xff) as u16;
    NodeInfo {
        node_type,
        address: Some(Address::new("127.0.0.1", port)),
        nid: Some(nid),
        state,
        id_timestamp: Some(T0),
    }
}

fn connect(outputs: &[Output]) -> (Token, Address) {
    match outputs {
        [Output::Connect { token, address }] => (*token, address.clone()),
        other => panic!("expected one Connect, got {other:?}"),
    }
}

fn request(outputs: &[Output], to: ConnId) -> (Token, Packet) {
    match outputs {
        [Output::Request {
            conn,
            token,
            packet,
        }] if *conn == to => (*token, packet.clone()),
        other => panic!("expected one request to {to}, got {other:?}"),
    }
}

fn answer_to_ctl(outputs: &[Output], msg_id: u32) -> Packet {
    match outputs {
        [Output::Answer {
            conn: CTL,
            msg_id: id,
            packet,
        }] if *id == msg_id => packet.clone(),
        other => panic!("expected one answer #{msg_id} to neoctl, got {other:?}"),
    }
}

fn error(code: ErrorCode, message: &str) -> Packet {
    p::Error::new(code, message).into()
}

#[test]
fn configuration_is_checked() {
    let mut bad = config(&[10000]);
    bad.cluster.clear();
    assert_eq!(Admin::new(bad).unwrap_err(), ConfigError::EmptyCluster);
    assert_eq!(Admin::new(config(&[])).unwrap_err(), ConfigError::NoMaster);
}

#[test]
fn identifies_as_admin_with_its_backups() {
    let mut sim = Sim::new(&[10000]);
    let (token, address) = connect(&sim.input(Input::Start));
    assert_eq!(address, Address::new("127.0.0.1", 10000));
    let outputs = sim.input(Input::Connected {
        conn: MASTER_CONN,
        token,
    });
    let (_, packet) = request(&outputs, MASTER_CONN);
    let Packet::RequestIdentification(request) = packet else {
        panic!("not an identification: {packet:?}");
    };
    assert_eq!(request.node_type, NodeType::Admin);
    assert_eq!(request.nid, None);
    assert_eq!(request.address, Some(Address::new("127.0.0.1", 9999)));
    assert_eq!(request.cluster, "test");
    assert_eq!(request.id_timestamp, None);
    assert_eq!(
        request.extra.0,
        vec![(
            "backup".to_owned(),
            Value::Array(vec![Value::Bin(b"bk".as_slice().into())])
        )]
    );
}

#[test]
fn masters_are_tried_in_turn_at_most_once_per_retry_interval_each() {
    let interval = neo_cluster::RETRY_INTERVAL;
    let mut sim = Sim::new(&[10000, 10001]);
    let (first, address) = connect(&sim.input(Input::Start));
    assert_eq!(address.port, 10000);
    let outputs = sim.input(Input::ConnectFailed { token: first });
    let (second, address) = connect(&outputs);
    assert_eq!(address.port, 10001);
    sim.now += interval / 4.0;
    // Back to the first master, tried a moment ago: not before the interval.
    assert!(sim.input(Input::ConnectFailed { token: second }).is_empty());
    assert_eq!(sim.admin.poll_timeout(), Some(T0 + interval));
    sim.now = T0 + interval;
    let (third, address) = connect(&sim.input(Input::Timeout));
    assert_eq!(address.port, 10000);
    assert_eq!(sim.admin.poll_timeout(), None);
    // A late outcome of an attempt we no longer wait for changes nothing.
    assert!(sim.input(Input::ConnectFailed { token: second }).is_empty());
    assert_ne!(third, second);
}

#[test]
fn follows_not_primary_master_redirects() {
    let mut sim = Sim::new(&[10000]);
    let (token, _) = connect(&sim.input(Input::Start));
    sim.input(Input::Connected {
        conn: MASTER_CONN,
        token,
    });
    let primary = Address::new("127.0.0.1", 10001);
    let outputs = sim.master_says(p::NotPrimaryMaster {
        primary: Some(1),
        known_masters: vec![Address::new("127.0.0.1", 10000), primary.clone()],
    });
    let [Output::Close { conn: MASTER_CONN }, Output::Connect { token, address }] =
        outputs.as_slice()
    else {
        panic!("expected a close and a connection to the primary: {outputs:?}");
    };
    assert_eq!(*address, primary);
    // The secondary's close is not a loss of the master.
    assert!(sim.input(Input::Closed { conn: MASTER_CONN }).is_empty());
    let other = ConnId(101);
    let outputs = sim.input(Input::Connected {
        conn: other,
        token: *token,
    });
    request(&outputs, other);
}

#[test]
fn refuses_everything_until_identified() {
    let mut sim = Sim::new(&[10000]);
    sim.input(Input::Start);
    sim.input(Input::Accepted { conn: CTL });
    let not_ready = error(ErrorCode::NotReady, NOT_CONNECTED);
    for (msg_id, packet) in [
        Packet::from(p::AskClusterState {}),
        p::AskNodeList { node_type: None }.into(),
        p::AskPrimary {}.into(),
        p::AskMonitorInformation {}.into(),
        p::SetClusterState {
            state: ClusterState::Verifying,
        }
        .into(),
    ]
    .into_iter()
    .enumerate()
    {
        let outputs = sim.ctl(msg_id as u32, packet);
        assert_eq!(answer_to_ctl(&outputs, msg_id as u32), not_ready);
    }
    // Ping needs no master; flush_log is a notification: no answer at all.
    let outputs = sim.ctl(9, p::Ping {});
    assert_eq!(answer_to_ctl(&outputs, 9), p::Pong {}.into());
    assert!(sim.ctl(10, p::FlushLog {}).is_empty());
}

#[test]
fn answers_from_its_copy_of_the_cluster() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    sim.input(Input::Accepted { conn: CTL });

    let outputs = sim.ctl(3, p::AskClusterState {});
    assert_eq!(
        answer_to_ctl(&outputs, 3),
        p::AnswerClusterState {
            state: Some(ClusterState::Recovering)
        }
        .into()
    );
    let outputs = sim.ctl(4, p::AskPrimary {});
    assert_eq!(
        answer_to_ctl(&outputs, 4),
        p::AnswerPrimary {
            primary: Some(master_nid())
        }
        .into()
    );
    let Packet::AnswerNodeList(all) =
        answer_to_ctl(&sim.ctl(5, p::AskNodeList { node_type: None }), 5)
    else {
        panic!()
    };
    assert_eq!(all.nodes.len(), 4);
    let Packet::AnswerNodeList(storages) = answer_to_ctl(
        &sim.ctl(
            6,
            p::AskNodeList {
                node_type: Some(NodeType::Storage),
            },
        ),
        6,
    ) else {
        panic!()
    };
    let nids: Vec<_> = storages.nodes.iter().map(|n| n.nid).collect();
    assert_eq!(nids, vec![Some(NodeId(1)), Some(NodeId(2))]);

    // Row ranges: max 0 = to the end, max exclusive.
    let rows = |sim: &mut Sim, min, max| {
        let outputs = sim.ctl(
            8,
            p::AskPartitionList {
                min_offset: min,
                max_offset: max,
                nid: None,
            },
        );
        match answer_to_ctl(&outputs, 8) {
            Packet::AnswerPartitionList(answer) => {
                assert_eq!(answer.ptid, Some(1));
                assert_eq!(answer.num_replicas, 1);
                answer.rows.len()
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(rows(&mut sim, 0, 0), 4);
    assert_eq!(rows(&mut sim, 1, 3), 2);
    assert_eq!(rows(&mut sim, 2, 0), 2);
    assert_eq!(rows(&mut sim, 3, 4), 1);
    assert_eq!(rows(&mut sim, 3, 2), 0);
    let outputs = sim.ctl(
        9,
        p::AskPartitionList {
            min_offset: 0,
            max_offset: 5,
            nid: None,
        },
    );
    assert_eq!(
        outputs,
        vec![
            Output::Answer {
                conn: CTL,
                msg_id: 9,
                packet: error(ErrorCode::ProtocolError, "invalid partition table offset"),
            },
            Output::Close { conn: CTL },
        ]
    );
}

#[test]
fn keeps_the_partition_table_and_nodes_up_to_date() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    let change = |ptid, state| p::NotifyPartitionChanges {
        ptid,
        num_replicas: 1,
        changes: vec![CellChange {
            partition: 0,
            nid: NodeId(2),
            state,
        }],
    };
    assert!(sim.master_says(change(2, CellState::OutOfDate)).is_empty());
    let pt = sim.admin.partition_table().unwrap();
    assert_eq!(pt.ptid(), Some(2));
    assert_eq!(pt.cell_state(0, NodeId(2)), Some(CellState::OutOfDate));
    sim.master_says(p::NotifyNodeInformation {
        timestamp: T0 + 1.0,
        nodes: vec![node(NodeType::Storage, NodeId(2), NodeState::Unknown)],
    });
    assert!(sim.admin.nodes().get(NodeId(2)).is_none());
    sim.master_says(p::NotifyClusterInformation {
        state: ClusterState::Running,
    });
    assert_eq!(sim.admin.cluster_state(), Some(ClusterState::Running));

    // A gap in ptids: our copy is stale; the connection is dropped so that
    // the next session brings a full table.
    let outputs = sim.master_says(change(4, CellState::UpToDate));
    assert!(matches!(
        outputs.as_slice(),
        [
            Output::Answer {
                conn: MASTER_CONN,
                ..
            },
            Output::Close { conn: MASTER_CONN }
        ]
    ));
}

#[test]
fn relays_requests_with_neoctl_msg_ids() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    sim.input(Input::Accepted { conn: CTL });
    sim.input(Input::Accepted { conn: CTL2 });
    let set = p::SetClusterState {
        state: ClusterState::Verifying,
    };
    let (first, packet) = request(&sim.ctl(41, set.clone()), MASTER_CONN);
    assert_eq!(packet, set.into());
    let (second, _) = request(
        &sim.input(Input::Packet {
            conn: CTL2,
            msg_id: 41,
            packet: p::AskLastIDs {}.into(),
        }),
        MASTER_CONN,
    );
    // Answers come in any order; each goes back where it came from.
    let ids = p::AnswerLastIDs {
        last_tid: Some(Tid(5)),
        last_oid: None,
        first_tid: Tid::MAX,
    };
    assert_eq!(
        sim.answer(second, ids.clone()),
        vec![Output::Answer {
            conn: CTL2,
            msg_id: 41,
            packet: ids.into(),
        }]
    );
    let ack = error(ErrorCode::Ack, "Cluster state changed");
    assert_eq!(answer_to_ctl(&sim.answer(first, ack.clone()), 41), ack);

    // flush_log is relayed as a notification.
    assert_eq!(
        sim.ctl(42, p::FlushLog {}),
        vec![Output::Notify {
            conn: MASTER_CONN,
            packet: p::FlushLog {}.into(),
        }]
    );

    // A relayed PROTOCOL_ERROR ends the neoctl connection.
    let (token, _) = request(&sim.ctl(43, p::Truncate { tid: Tid(1) }), MASTER_CONN);
    let refusal = error(ErrorCode::ProtocolError, "bad");
    assert_eq!(
        sim.answer(token, refusal.clone()),
        vec![
            Output::Answer {
                conn: CTL,
                msg_id: 43,
                packet: refusal,
            },
            Output::Close { conn: CTL },
        ]
    );
}

/// neoctl requests relayed to the master are bounded: over the limit they
/// are refused NOT_READY instead of queued without end.
#[test]
fn relayed_requests_are_bounded() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    sim.input(Input::Accepted { conn: CTL });
    for msg_id in 0..1024 {
        request(&sim.ctl(msg_id, p::AskLastIDs {}), MASTER_CONN);
    }
    let refused = answer_to_ctl(&sim.ctl(1024, p::AskLastIDs {}), 1024);
    assert!(
        matches!(&refused, Packet::Error(e) if e.code == ErrorCode::NotReady),
        "{refused:?}"
    );
}

#[test]
fn unexpected_packets_from_neoctl_are_protocol_errors() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    sim.input(Input::Accepted { conn: CTL });
    let outputs = sim.ctl(
        2,
        p::NotifyClusterInformation {
            state: ClusterState::Running,
        },
    );
    assert!(matches!(
        outputs.as_slice(),
        [
            Output::Answer { conn: CTL, msg_id: 2, packet: Packet::Error(e) },
            Output::Close { conn: CTL },
        ] if e.code == ErrorCode::ProtocolError
    ));
}

#[test]
fn losing_the_master_refuses_pending_requests_and_reconnects() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    sim.input(Input::Accepted { conn: CTL });
    request(&sim.ctl(1, p::AskRecovery {}), MASTER_CONN);
    sim.now += 5.0;
    let outputs = sim.input(Input::Closed { conn: MASTER_CONN });
    let [Output::Answer {
        conn: CTL,
        msg_id: 1,
        packet,
    }, Output::Connect { token, address }] = outputs.as_slice()
    else {
        panic!("expected a refusal and a new connection: {outputs:?}");
    };
    assert_eq!(*packet, error(ErrorCode::NotReady, NOT_CONNECTED));
    assert_eq!(*address, Address::new("127.0.0.1", 10000));
    let token = *token;
    assert!(!sim.admin.is_connected());
    let outputs = sim.ctl(2, p::AskNodeList { node_type: None });
    assert_eq!(
        answer_to_ctl(&outputs, 2),
        error(ErrorCode::NotReady, NOT_CONNECTED)
    );
    // The next identification proposes the id we had.
    let other = ConnId(101);
    let outputs = sim.input(Input::Connected { conn: other, token });
    let (_, Packet::RequestIdentification(request)) = request(&outputs, other) else {
        panic!()
    };
    assert_eq!(request.nid, Some(admin_nid()));
}

#[test]
fn exits_when_the_master_goes_away_after_stopping() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    sim.master_says(p::NotifyClusterInformation {
        state: ClusterState::Stopping,
    });
    assert_eq!(
        sim.input(Input::Closed { conn: MASTER_CONN }),
        vec![Output::Exit(Ok(()))]
    );
}

#[test]
fn summary_asks_the_last_tid_when_running() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    sim.input(Input::Accepted { conn: CTL });
    // RECOVERING: answered at once, a problem.
    let outputs = sim.ctl(1, p::AskMonitorInformation {});
    assert_eq!(
        answer_to_ctl(&outputs, 1),
        p::AnswerMonitorInformation {
            warning: vec![],
            problem: vec![None],
            summary: "RECOVERING; UP_TO_DATE=8".into(),
        }
        .into()
    );
    sim.master_says(p::NotifyClusterInformation {
        state: ClusterState::Running,
    });
    let (token, packet) = request(&sim.ctl(2, p::AskMonitorInformation {}), MASTER_CONN);
    assert_eq!(packet, p::AskLastTransaction {}.into());
    // A second question waits for the same answer.
    assert!(sim.ctl(3, p::AskMonitorInformation {}).is_empty());
    let outputs = sim.answer(
        token,
        p::AnswerLastTransaction {
            tid: Tid(0x040d_42d9_fef9_3adc),
        },
    );
    let expected = Packet::from(p::AnswerMonitorInformation {
        warning: vec![],
        problem: vec![],
        summary: "RUNNING; UP_TO_DATE=8; ltid=040d42d9fef93adc (2026-11-25 21:45:59.759426)".into(),
    });
    assert_eq!(
        outputs,
        vec![
            Output::Answer {
                conn: CTL,
                msg_id: 2,
                packet: expected.clone(),
            },
            Output::Answer {
                conn: CTL,
                msg_id: 3,
                packet: expected,
            },
        ]
    );
    // A storage with cells goes down: a problem, counted as DOWN.
    sim.master_says(p::NotifyNodeInformation {
        timestamp: T0 + 2.0,
        nodes: vec![node(NodeType::Storage, NodeId(2), NodeState::Down)],
    });
    let (token, _) = request(&sim.ctl(4, p::AskMonitorInformation {}), MASTER_CONN);
    let outputs = sim.answer(token, p::AnswerLastTransaction { tid: Tid::ZERO });
    assert_eq!(
        answer_to_ctl(&outputs, 4),
        p::AnswerMonitorInformation {
            warning: vec![],
            problem: vec![None],
            summary: "RUNNING; UP_TO_DATE=8; DOWN=1; ltid=0000000000000000 (1900-01-01 00:00:00)"
                .into(),
        }
        .into()
    );
}

#[test]
fn a_silent_master_is_dropped_after_the_monitoring_timeout() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    sim.input(Input::Accepted { conn: CTL });
    sim.master_says(p::NotifyClusterInformation {
        state: ClusterState::Running,
    });
    request(&sim.ctl(1, p::AskMonitorInformation {}), MASTER_CONN);
    assert_eq!(sim.admin.poll_timeout(), Some(sim.now + 60.0));
    sim.now += 30.0;
    assert!(sim.input(Input::Timeout).is_empty());
    sim.now += 30.0;
    assert_eq!(
        sim.input(Input::Timeout),
        vec![Output::Close { conn: MASTER_CONN }]
    );
    // Closed once, not at every later wake-up.
    assert_eq!(sim.admin.poll_timeout(), None);
    assert!(sim.input(Input::Timeout).is_empty());
}

/// An admin given one master learns the others from the primary's node
/// notifications: when the primary is lost, a spare is tried next.
#[test]
fn masters_learnt_from_notifications_are_tried_after_a_loss() {
    let mut sim = Sim::new(&[10000]);
    sim.connected();
    let spare = Address::new("127.0.0.1", 10001);
    sim.master_says(p::NotifyNodeInformation {
        timestamp: T0 + 100.0,
        nodes: vec![p::NodeInfo {
            node_type: NodeType::Master,
            address: Some(spare.clone()),
            nid: None,
            state: NodeState::Down,
            id_timestamp: None,
        }],
    });
    sim.now += 5.0;
    let outputs = sim.input(Input::Closed { conn: MASTER_CONN });
    // The masters in turn: the spare is tried first or right after.
    let (token, address) = connect(&outputs);
    let address = if address == spare {
        address
    } else {
        connect(&sim.input(Input::ConnectFailed { token })).1
    };
    assert_eq!(address, spare);
}

fn with_email(sim: &mut Sim) {
    let mut config = config(&[10000]);
    config.monitor.email = Some(EmailConfig {
        to: vec!["ops@example.invalid".into()],
        from: "neo@example.invalid".into(),
    });
    sim.admin = Admin::new(config).unwrap();
}

fn subject(mail: &Mail) -> String {
    let text = String::from_utf8(mail.message.clone()).unwrap();
    let line = text
        .lines()
        .find(|line| line.starts_with("Subject: "))
        .unwrap();
    line["Subject: ".len()..].to_owned()
}

/// E-mails follow operations.md §4.4: a report when a monitored value
/// changes (the last TID asked first when running), a mail when it
/// changed or the last one failed; a failure shows in the summary and is
/// sent again by the 10-minute timer.
#[test]
fn e_mails_report_changes_and_a_failure_is_sent_again() {
    let mut sim = Sim::new(&[10000]);
    with_email(&mut sim);
    sim.connected();
    // RECOVERING: reported at once, a problem.
    let mails = sim.admin.poll_mail();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert_eq!(subject(&mails[0]), "NEO monitoring: PROBLEM (test)");
    sim.admin.mail_sent(mails[0].id, Ok(()), sim.now);

    let outputs = sim.master_says(p::NotifyClusterInformation {
        state: ClusterState::Running,
    });
    let (token, packet) = request(&outputs, MASTER_CONN);
    assert_eq!(packet, p::AskLastTransaction {}.into());
    assert!(sim.admin.poll_mail().is_empty());
    sim.answer(token, p::AnswerLastTransaction { tid: Tid::ZERO });
    let ok = sim.admin.poll_mail();
    assert_eq!(subject(&ok[0]), "NEO monitoring: OK");
    sim.admin.mail_sent(ok[0].id, Ok(()), sim.now);
    // Sent, no backup to watch: no timer left.
    assert_eq!(sim.admin.poll_timeout(), None);

    // A storage is lost; the mail fails.
    let outputs = sim.master_says(p::NotifyNodeInformation {
        timestamp: T0 + 2.0,
        nodes: vec![node(NodeType::Storage, NodeId(2), NodeState::Down)],
    });
    let (token, _) = request(&outputs, MASTER_CONN);
    sim.answer(token, p::AnswerLastTransaction { tid: Tid::ZERO });
    let problem = sim.admin.poll_mail();
    assert_eq!(subject(&problem[0]), "NEO monitoring: PROBLEM (test)");
    let body = String::from_utf8(problem[0].message.clone()).unwrap();
    assert!(body.ends_with(
        "\r\n\r\nRUNNING; UP_TO_DATE=8; DOWN=1; ltid=0000000000000000 (1900-01-01 00:00:00)"
    ));
    sim.admin
        .mail_sent(problem[0].id, Err("connection refused".into()), sim.now);
    let failure = sim.admin.mail_failure().unwrap().to_owned();
    assert!(failure.ends_with(":\n\nconnection refused"), "{failure}");
    // The summary says it, and makes the cluster a problem.
    sim.input(Input::Accepted { conn: CTL });
    let (token, _) = request(&sim.ctl(1, p::AskMonitorInformation {}), MASTER_CONN);
    let outputs = sim.answer(token, p::AnswerLastTransaction { tid: Tid::ZERO });
    let Packet::AnswerMonitorInformation(summary) = answer_to_ctl(&outputs, 1) else {
        panic!("{outputs:?}");
    };
    assert_eq!(summary.problem, vec![None]);
    assert!(summary.summary.ends_with(&failure));

    // Ten minutes later the timer sends it again, with the note.
    assert_eq!(sim.admin.poll_timeout(), Some(sim.now + 600.0));
    sim.now += 600.0;
    let (token, _) = request(&sim.input(Input::Timeout), MASTER_CONN);
    // Woken once: the timer is not due again while the answer is awaited.
    assert_eq!(sim.admin.poll_timeout(), Some(sim.now + 60.0));
    sim.answer(token, p::AnswerLastTransaction { tid: Tid::ZERO });
    let again = sim.admin.poll_mail();
    assert_eq!(subject(&again[0]), "NEO monitoring: PROBLEM");
    let body = String::from_utf8(again[0].message.clone()).unwrap();
    assert!(body.contains("A notification could not be sent at"));
    sim.admin.mail_sent(again[0].id, Ok(()), sim.now);
    assert_eq!(sim.admin.mail_failure(), None);
    // The master is lost: reported at once.
    sim.input(Input::Closed { conn: MASTER_CONN });
    let lost = sim.admin.poll_mail();
    assert_eq!(subject(&lost[0]), "NEO monitoring: PROBLEM (test)");
    assert!(String::from_utf8(lost[0].message.clone())
        .unwrap()
        .ends_with(&format!("\r\n\r\n{NOT_CONNECTED}")));
}

/// With the status page, the last ids are asked every second while the
/// cluster runs and someone looks, one question at a time; the JSON shows
/// them.
#[test]
fn the_status_page_asks_the_last_ids_every_second_while_looked_at() {
    let mut sim = Sim::new(&[10000]);
    let mut config = config(&[10000]);
    config.monitor.status_page = true;
    sim.admin = Admin::new(config).unwrap();
    sim.connected();
    sim.admin.status_json(sim.now);
    // Not running: nothing asked.
    assert!(sim.input(Input::Timeout).is_empty());
    sim.master_says(p::NotifyClusterInformation {
        state: ClusterState::Running,
    });
    sim.now += 1.0;
    let (token, packet) = request(&sim.input(Input::Timeout), MASTER_CONN);
    assert_eq!(packet, p::AskLastIDs {}.into());
    // Unanswered: not asked again.
    sim.now += 1.0;
    assert!(sim.input(Input::Timeout).is_empty());
    let ids = p::AnswerLastIDs {
        last_tid: Some(Tid(0x040d_42d9_fef9_3adc)),
        last_oid: Some(Oid(41)),
        first_tid: Tid(1),
    };
    sim.answer(token, ids.clone());
    sim.now += 1.0;
    let (token, packet) = request(&sim.input(Input::Timeout), MASTER_CONN);
    assert_eq!(packet, p::AskLastIDs {}.into());
    sim.answer(token, ids);
    let status: serde_json::Value = serde_json::from_str(&sim.admin.status_json(sim.now)).unwrap();
    assert_eq!(status["state"], "RUNNING");
    assert_eq!(status["last_tid"]["tid"], "040d42d9fef93adc");
    assert_eq!(status["pt"]["rows"].as_array().unwrap().len(), 4);
    // Nobody looking for longer than the window: nothing asked.
    sim.now += 11.0;
    assert!(sim.input(Input::Timeout).is_empty());
    sim.admin.status_json(sim.now);
    sim.now += 1.0;
    request(&sim.input(Input::Timeout), MASTER_CONN);
}
