//! The admin node on real TCP connections (127.0.0.1, ephemeral ports):
//! the tests play the master with a `neo_net::Listener` and `neoctl` with
//! plain connections that do not identify.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use neo_admin::{run, AdminConfig, AdminError, NOT_CONNECTED};
use neo_net::{
    connect_alone, AskError, Connection, ConnectionConfig, EventKind, Inbox, Listener, Token,
};
use neo_proto::packets::{self as p, CellInfo, NodeInfo};
use neo_proto::{
    Address, CellState, ClusterState, ErrorCode, NodeId, NodeState, NodeType, Packet, Tid, Value,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const CLUSTER: &str = "fake";
const WAIT: Duration = Duration::from_secs(10);

fn master_nid() -> NodeId {
    NodeId::new(NodeType::Master, 1).unwrap()
}
fn admin_nid() -> NodeId {
    NodeId::new(NodeType::Admin, 1).unwrap()
}

async fn listen() -> Listener {
    Listener::bind(&Address::new("127.0.0.1", 0)).await.unwrap()
}

/// A running admin node and the means to stop it.
struct AdminNode {
    address: Address,
    task: JoinHandle<Result<(), AdminError>>,
    shutdown: Option<oneshot::Sender<()>>,
}

async fn start_admin(masters: Vec<Address>) -> AdminNode {
    let listener = listen().await;
    let address = listener.local_address().clone();
    let config = AdminConfig {
        cluster: CLUSTER.into(),
        masters,
        bind: address.clone(),
        monitor_backup: vec!["bk1".into()],
        nid: None,
    };
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, listener, None, async move {
        let _ = stop.await;
    }));
    AdminNode {
        address,
        task,
        shutdown: Some(shutdown),
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The next packet (request or notification) the master connection gets.
async fn next_packet(inbox: &mut Inbox) -> (u32, Packet) {
    let event = within("a packet from the admin", inbox.recv())
        .await
        .expect("connection closed");
    match event.kind {
        EventKind::Packet(frame) => (frame.msg_id, frame.packet),
        other => panic!("unexpected event {other:?}"),
    }
}

/// Accepts the admin's connection on the fake master and checks its
/// identification; returns the connection, and the nid it proposed.
async fn accept_admin(master: &Listener, admin: &Address) -> (Connection, Inbox, Option<NodeId>) {
    loop {
        let incoming = within("the admin to connect", master.accept())
            .await
            .unwrap();
        // An attempt that timed out while waiting in the backlog fails its
        // handshake: wait for the next one.
        let Ok((conn, mut inbox)) = incoming.open(&ConnectionConfig::default()).await else {
            continue;
        };
        let (msg_id, packet) = next_packet(&mut inbox).await;
        let Packet::RequestIdentification(request) = packet else {
            panic!("expected an identification, got {packet:?}");
        };
        assert_eq!(request.node_type, NodeType::Admin);
        assert_eq!(request.address.as_ref(), Some(admin));
        assert_eq!(request.cluster, CLUSTER);
        assert_eq!(request.id_timestamp, None);
        assert_eq!(
            request.extra.0,
            vec![(
                "backup".to_owned(),
                Value::Array(vec![Value::Bin(b"bk1".as_slice().into())])
            )]
        );
        conn.answer(
            msg_id,
            p::AcceptIdentification {
                node_type: NodeType::Master,
                nid: Some(master_nid()),
                your_nid: Some(admin_nid()),
            },
        )
        .await
        .unwrap();
        return (conn, inbox, request.nid);
    }
}

fn node(node_type: NodeType, nid: NodeId, port: u16) -> NodeInfo {
    NodeInfo {
        node_type,
        address: Some(Address::new("127.0.0.1", port)),
        nid: Some(nid),
        state: NodeState::Running,
        id_timestamp: if node_type == NodeType::Master {
            None
        } else {
            Some(1_790_000_000.5)
        },
    }
}

/// What a primary master sends right after accepting an admin: the full
/// node list (the admin first), the partition table (4 partitions, both
/// storages everywhere); then it answers the admin's `AskClusterState`.
async fn welcome(conn: &Connection, inbox: &mut Inbox, admin: &Address, state: ClusterState) {
    conn.notify(p::NotifyNodeInformation {
        timestamp: 1_790_000_001.0,
        nodes: vec![
            node(NodeType::Admin, admin_nid(), admin.port),
            node(NodeType::Master, master_nid(), 1),
            node(NodeType::Storage, NodeId(1), 2),
            node(NodeType::Storage, NodeId(2), 3),
        ],
    })
    .await
    .unwrap();
    let row: Vec<CellInfo> = [1, 2]
        .into_iter()
        .map(|nid| CellInfo {
            nid: NodeId(nid),
            state: CellState::UpToDate,
        })
        .collect();
    conn.notify(p::SendPartitionTable {
        ptid: Some(1),
        num_replicas: 1,
        rows: vec![row; 4],
    })
    .await
    .unwrap();
    let (msg_id, packet) = next_packet(inbox).await;
    assert_eq!(packet, p::AskClusterState {}.into());
    conn.answer(msg_id, p::AnswerClusterState { state: Some(state) })
        .await
        .unwrap();
}

async fn connect_ctl(admin: &Address) -> (Connection, Inbox) {
    connect_alone(admin, &ConnectionConfig::default())
        .await
        .unwrap()
}

/// Asks the cluster state until it is `expected` (notifications are
/// processed asynchronously).
async fn wait_cluster_state(ctl: &Connection, expected: Option<ClusterState>) {
    within("the cluster state", async {
        loop {
            if let Ok(answer) = ctl.ask(p::AskClusterState {}).await {
                if answer.state == expected {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn serves_neoctl_through_a_fake_master() {
    let master = listen().await;
    let mut admin = start_admin(vec![master.local_address().clone()]).await;
    let (mconn, mut minbox, proposed) = accept_admin(&master, &admin.address).await;
    assert_eq!(proposed, None);
    welcome(
        &mconn,
        &mut minbox,
        &admin.address,
        ClusterState::Recovering,
    )
    .await;
    mconn
        .notify(p::NotifyClusterInformation {
            state: ClusterState::Running,
        })
        .await
        .unwrap();

    let (ctl, mut ctl_inbox) = connect_ctl(&admin.address).await;
    wait_cluster_state(&ctl, Some(ClusterState::Running)).await;

    // Answered by the admin itself.
    let all = ctl.ask(p::AskNodeList { node_type: None }).await.unwrap();
    assert_eq!(all.nodes.len(), 4);
    let storages = ctl
        .ask(p::AskNodeList {
            node_type: Some(NodeType::Storage),
        })
        .await
        .unwrap();
    let nids: Vec<_> = storages.nodes.iter().map(|n| n.nid).collect();
    assert_eq!(nids, vec![Some(NodeId(1)), Some(NodeId(2))]);
    let primary = ctl.ask(p::AskPrimary {}).await.unwrap();
    assert_eq!(primary.primary, Some(master_nid()));
    for (min, max, rows) in [(0, 0, 4), (1, 3, 2), (3, 0, 1)] {
        let answer = ctl
            .ask(p::AskPartitionList {
                min_offset: min,
                max_offset: max,
                nid: None,
            })
            .await
            .unwrap();
        assert_eq!((answer.ptid, answer.num_replicas), (Some(1), 1));
        assert_eq!(answer.rows.len(), rows, "rows {min}..{max}");
    }

    // Relayed to the master and back, with neoctl's msg_id: neoctl's ids
    // are pushed past the admin's on the master connection, so an answer
    // relayed with the master-side id would not reach the request.
    for _ in 0..16 {
        let p::Pong {} = ctl.ask(p::Ping {}).await.unwrap();
    }
    ctl.send_request(
        p::SetClusterState {
            state: ClusterState::StartingBackup,
        },
        Token(1),
    )
    .await
    .unwrap();
    let (master_msg_id, packet) = next_packet(&mut minbox).await;
    assert_eq!(
        packet,
        p::SetClusterState {
            state: ClusterState::StartingBackup
        }
        .into()
    );
    assert!(master_msg_id < 16, "the test wants distinct ids");
    mconn
        .answer(master_msg_id, p::Error::ack("Cluster state changed"))
        .await
        .unwrap();
    let event = within("the relayed answer", ctl_inbox.recv())
        .await
        .unwrap();
    match event.kind {
        EventKind::Answer { token, packet } => {
            assert_eq!(token, Token(1));
            assert_eq!(packet, p::Error::ack("Cluster state changed").into());
        }
        other => panic!("expected the relayed answer, got {other:?}"),
    }

    // The summary needs the last TID, asked of the master.
    let summary = tokio::spawn({
        let ctl = ctl.clone();
        async move { ctl.ask(p::AskMonitorInformation {}).await }
    });
    let (msg_id, packet) = next_packet(&mut minbox).await;
    assert_eq!(packet, p::AskLastTransaction {}.into());
    mconn
        .answer(
            msg_id,
            p::AnswerLastTransaction {
                tid: Tid(0x040d_42d9_fef9_3adc),
            },
        )
        .await
        .unwrap();
    let summary = within("the summary", summary).await.unwrap().unwrap();
    assert_eq!(
        summary,
        p::AnswerMonitorInformation {
            warning: vec![],
            problem: vec![],
            summary: "RUNNING; UP_TO_DATE=8; ltid=040d42d9fef93adc (2026-11-25 21:45:59.759426)"
                .into(),
        }
    );

    // flush_log goes on as a notification.
    ctl.notify(p::FlushLog {}).await.unwrap();
    assert_eq!(next_packet(&mut minbox).await.1, p::FlushLog {}.into());

    // Out-of-range rows: PROTOCOL_ERROR, and the connection is closed.
    let (bad, mut bad_inbox) = connect_ctl(&admin.address).await;
    let refused = bad
        .ask(p::AskPartitionList {
            min_offset: 0,
            max_offset: 5,
            nid: None,
        })
        .await;
    match refused {
        Err(AskError::Refused { error, .. }) => assert_eq!(error.code, ErrorCode::ProtocolError),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let closed = within("neoctl to be disconnected", bad_inbox.recv()).await;
    assert!(matches!(
        closed.map(|e| e.kind),
        Some(EventKind::Closed(_)) | None
    ));

    // The master goes away: NOT_READY, while the admin looks for it again.
    mconn.close().await;
    within("neoctl to be refused", async {
        loop {
            match ctl.ask(p::AskNodeList { node_type: None }).await {
                Err(AskError::Refused { error, .. }) => {
                    assert_eq!(error.code, ErrorCode::NotReady);
                    assert_eq!(error.message, NOT_CONNECTED);
                    return;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await;
    let cluster = ctl.ask(p::AskClusterState {}).await;
    assert!(
        matches!(cluster, Err(AskError::Refused { ref error, .. }) if error.code == ErrorCode::NotReady),
        "{cluster:?}"
    );

    // It comes back and proposes the id it had; then the cluster stops:
    // once the master is gone the admin exits.
    let (mconn, mut minbox, proposed) = accept_admin(&master, &admin.address).await;
    assert_eq!(proposed, Some(admin_nid()));
    welcome(&mconn, &mut minbox, &admin.address, ClusterState::Running).await;
    wait_cluster_state(&ctl, Some(ClusterState::Running)).await;
    mconn
        .notify(p::NotifyClusterInformation {
            state: ClusterState::Stopping,
        })
        .await
        .unwrap();
    wait_cluster_state(&ctl, Some(ClusterState::Stopping)).await;
    mconn.close().await;
    let result = within("the admin to exit", &mut admin.task).await.unwrap();
    assert!(result.is_ok(), "{result:?}");
    drop(admin.shutdown.take());
}

#[tokio::test]
async fn finds_the_primary_through_a_secondary() {
    let secondary = listen().await;
    let primary = listen().await;
    let admin = start_admin(vec![secondary.local_address().clone()]).await;

    let incoming = within("the admin", secondary.accept()).await.unwrap();
    let (conn, mut inbox) = incoming.open(&ConnectionConfig::default()).await.unwrap();
    let (_, packet) = next_packet(&mut inbox).await;
    assert!(matches!(packet, Packet::RequestIdentification(_)));
    conn.notify(p::NotPrimaryMaster {
        primary: Some(1),
        known_masters: vec![
            secondary.local_address().clone(),
            primary.local_address().clone(),
        ],
    })
    .await
    .unwrap();
    conn.close().await;

    let (mconn, mut minbox, _) = accept_admin(&primary, &admin.address).await;
    welcome(
        &mconn,
        &mut minbox,
        &admin.address,
        ClusterState::Recovering,
    )
    .await;
    let (ctl, _ctl_inbox) = connect_ctl(&admin.address).await;
    wait_cluster_state(&ctl, Some(ClusterState::Recovering)).await;

    // The shutdown future stops the node.
    let AdminNode { task, shutdown, .. } = admin;
    shutdown.unwrap().send(()).unwrap();
    within("the admin to stop", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn retries_a_master_that_refuses_connections() {
    // A port nobody listens on, for now.
    let port = listen().await.local_address().port;
    let address = Address::new("127.0.0.1", port);
    let admin = start_admin(vec![address.clone()]).await;
    let (ctl, _ctl_inbox) = connect_ctl(&admin.address).await;
    let refused = ctl.ask(p::AskPrimary {}).await;
    assert!(
        matches!(refused, Err(AskError::Refused { ref error, .. }) if error.code == ErrorCode::NotReady),
        "{refused:?}"
    );
    // Let it be refused a few times, then start the master there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let master = Listener::bind(&address).await.unwrap();
    let (mconn, mut minbox, _) = accept_admin(&master, &admin.address).await;
    welcome(
        &mconn,
        &mut minbox,
        &admin.address,
        ClusterState::Recovering,
    )
    .await;
    wait_cluster_state(&ctl, Some(ClusterState::Recovering)).await;
    let primary = ctl.ask(p::AskPrimary {}).await.unwrap();
    assert_eq!(primary.primary, Some(master_nid()));
    drop(admin.shutdown);
    within("the admin to stop", admin.task)
        .await
        .unwrap()
        .unwrap();
}
