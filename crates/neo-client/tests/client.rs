//! The client against fake master and storage nodes on loopback: the
//! packets it sends (compared with NEO/py's in session-basic.jsonl) and
//! how it behaves when nodes misbehave.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fake::{client_nid, eventually, Cluster, FakeMaster, CLIENT_TS, CLUSTER, FIRST_TID};
use neo_client::{BlockingClient, Client, ClientConfig, ClientError, Invalidation, TxnMeta};
use neo_proto::packets::{self};
use neo_proto::{Address, ErrorCode, Map, NodeId, NodeType, Oid, Packet, Tid};

fn first_identification(packets: &[Packet]) -> packets::RequestIdentification {
    packets
        .iter()
        .find_map(|p| match p {
            Packet::RequestIdentification(r) => Some(r.clone()),
            _ => None,
        })
        .expect("an identification")
}

#[tokio::test]
async fn identifies_like_neo_py_and_loads_below_last_tid() {
    let cluster = Cluster::start(1, 1, 1).await;
    let storage = &cluster.storages[0];
    storage.put(
        Oid(0),
        Tid(FIRST_TID),
        b"root object data, long enough to compress? no",
    );
    let client = Client::connect(cluster.config()).await.unwrap();
    assert_eq!(client.node_id(), Some(client_nid(1)));
    assert_eq!(client.last_transaction(), Some(Tid(FIRST_TID)));

    // session-basic seq 87, 93: (CLIENT, nil, nil, name, nil, {}), AskLastTransaction.
    let to_master = cluster.master.received();
    assert_eq!(
        first_identification(&to_master),
        packets::RequestIdentification {
            node_type: NodeType::Client,
            nid: None,
            address: None,
            cluster: CLUSTER.into(),
            id_timestamp: None,
            extra: Map::new(),
        }
    );
    assert!(matches!(to_master[1], Packet::AskLastTransaction(_)));

    let loaded = client.load(Oid(0)).await.unwrap();
    assert_eq!(
        &loaded.data[..],
        b"root object data, long enough to compress? no"
    );
    assert_eq!(loaded.serial, Tid(FIRST_TID));
    assert_eq!(loaded.next_serial, None);

    // seq 100, 103: own nid and id_timestamp; AskObject(oid, nil, last_tid + 1).
    let to_storage = storage.received();
    assert_eq!(
        first_identification(&to_storage),
        packets::RequestIdentification {
            node_type: NodeType::Client,
            nid: Some(client_nid(1)),
            address: None,
            cluster: CLUSTER.into(),
            id_timestamp: Some(CLIENT_TS),
            extra: Map::new(),
        }
    );
    assert_eq!(
        to_storage[1],
        Packet::AskObject(packets::AskObject {
            oid: Oid(0),
            at: None,
            before: Some(Tid(FIRST_TID + 1)),
        })
    );
    client.close().await;
}

#[tokio::test]
async fn read_only_clients_say_so_and_cannot_begin() {
    let cluster = Cluster::start(1, 1, 1).await;
    let mut config = cluster.config();
    config.read_only = true;
    let client = Client::connect(config).await.unwrap();
    let identification = first_identification(&cluster.master.received());
    assert_eq!(
        identification.extra,
        Map(vec![("read_only".to_owned(), neo_proto::Value::Bool(true))])
    );
    assert!(matches!(
        client.begin(None).await,
        Err(ClientError::ReadOnly(_))
    ));
}

#[tokio::test]
async fn oid_errors_are_distinct() {
    let cluster = Cluster::start(1, 1, 1).await;
    cluster.storages[0].put(Oid(1), Tid(FIRST_TID), b"x");
    let client = Client::connect(cluster.config()).await.unwrap();
    assert!(matches!(
        client.load(Oid(7)).await,
        Err(ClientError::OidDoesNotExist { oid: Oid(7) })
    ));
    // Before its creation: loadBefore gives None, loadSerial POSKeyError.
    assert_eq!(
        client.load_before(Oid(1), Tid(FIRST_TID)).await.unwrap(),
        None
    );
    assert!(matches!(
        client.load_serial(Oid(1), Tid(5)).await,
        Err(ClientError::OidNotFound { .. })
    ));
    let record = client.load_serial(Oid(1), Tid(FIRST_TID)).await.unwrap();
    assert_eq!(&record.data[..], b"x");
}

#[tokio::test]
async fn load_fails_over_to_another_readable_cell() {
    let cluster = Cluster::start(2, 1, 2).await;
    for storage in &cluster.storages {
        storage.put(Oid(0), Tid(FIRST_TID), b"data");
    }
    cluster.storages[0].script.lock().unwrap().non_readable = true;
    let client = Client::connect(cluster.config()).await.unwrap();
    // Whatever the random choice, every load ends on S2.
    for _ in 0..8 {
        assert_eq!(&client.load(Oid(0)).await.unwrap().data[..], b"data");
    }
    assert_eq!(cluster.storages[1].count("AskObject"), 8);

    // The other way round.
    cluster.storages[0].script.lock().unwrap().non_readable = false;
    cluster.storages[1].script.lock().unwrap().non_readable = true;
    for _ in 0..4 {
        assert_eq!(&client.load(Oid(0)).await.unwrap().data[..], b"data");
    }
}

#[tokio::test]
async fn load_fails_over_when_a_storage_is_unreachable() {
    let cluster = Cluster::start(2, 1, 2).await;
    for storage in &cluster.storages {
        storage.put(Oid(0), Tid(FIRST_TID), b"data");
    }
    // The master announces S1 at an address where nothing listens.
    let unused = fake::listen().await.local_address().clone();
    cluster.master.script(|s| s.storages[0].1 = unused);
    let client = Client::connect(cluster.config()).await.unwrap();
    for _ in 0..6 {
        assert_eq!(&client.load(Oid(0)).await.unwrap().data[..], b"data");
    }
    assert_eq!(cluster.storages[1].count("AskObject"), 6);
}

#[tokio::test]
async fn checksum_mismatch_is_detected() {
    let cluster = Cluster::start(2, 1, 2).await;
    for storage in &cluster.storages {
        storage.put(Oid(0), Tid(FIRST_TID), b"data");
    }
    cluster.storages[0].script.lock().unwrap().bad_checksum = true;
    let client = Client::connect(cluster.config()).await.unwrap();
    for _ in 0..4 {
        assert_eq!(&client.load(Oid(0)).await.unwrap().data[..], b"data");
    }
    cluster.storages[1].script.lock().unwrap().bad_checksum = true;
    assert!(matches!(
        client.load(Oid(0)).await,
        Err(ClientError::ChecksumMismatch { oid: Oid(0), .. })
    ));
    // NEO/py's ignore_wrong_checksum: the data anyway, to salvage it.
    let mut config = cluster.config();
    config.ignore_wrong_checksum = true;
    let salvaging = Client::connect(config).await.unwrap();
    assert_eq!(&salvaging.load(Oid(0)).await.unwrap().data[..], b"data");
}

fn stores(packets: &[Packet]) -> Vec<packets::AskStoreObject> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::AskStoreObject(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn commit_fans_out_votes_and_finishes_like_neo_py() {
    // 2 partitions, one copy each: S1 holds partition 0, S2 partition 1.
    let cluster = Cluster::start(2, 2, 1).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    let ttid = txn.ttid();
    let oid = client.new_oid().await.unwrap();
    assert_eq!(oid, Oid(1));
    let compressible = Bytes::from(vec![b'a'; 500]);
    assert!(txn
        .store(Oid(0), Tid(FIRST_TID), compressible.clone())
        .await
        .unwrap()
        .is_empty());
    assert!(txn
        .store(oid, Tid::ZERO, Bytes::from_static(b"new"))
        .await
        .unwrap()
        .is_empty());
    let meta = TxnMeta {
        user: Bytes::from_static(b"/ alice"),
        description: Bytes::from_static(b"first commit"),
        ..TxnMeta::default()
    };
    txn.vote(&meta).await.unwrap();
    let tid = txn.finish().await.unwrap();
    assert_eq!(tid, Tid(ttid.0 + 4));
    assert_eq!(client.last_transaction(), Some(tid));

    assert!(cluster
        .master
        .received()
        .iter()
        .any(|p| matches!(p, Packet::AskNewOIDs(packets::AskNewOIDs { count: 100 }))));
    let s1 = &cluster.storages[0];
    let s2 = &cluster.storages[1];
    // Each oid went to the cell of its partition, compressed only if smaller.
    let s1_stores = stores(&s1.received());
    assert_eq!(s1_stores.len(), 1);
    assert_eq!(s1_stores[0].oid, Oid(0));
    assert_eq!(s1_stores[0].serial, Tid(FIRST_TID));
    assert_eq!(s1_stores[0].compression, 1);
    assert_eq!(
        s1_stores[0].checksum,
        neo_client::data::checksum(&s1_stores[0].data)
    );
    assert_eq!(s1_stores[0].ttid, ttid);
    let s2_stores = stores(&s2.received());
    assert_eq!(s2_stores.len(), 1);
    assert_eq!((s2_stores[0].oid, s2_stores[0].compression), (oid, 0));
    assert_eq!(&s2_stores[0].data[..], b"new");

    // Metadata on the cell of partition(ttid), a plain vote on the other.
    let (metadata, other) = if ttid.0 % 2 == 0 { (s1, s2) } else { (s2, s1) };
    let store_transaction = metadata
        .received()
        .into_iter()
        .find_map(|p| match p {
            Packet::AskStoreTransaction(s) => Some(s),
            _ => None,
        })
        .unwrap();
    assert_eq!(store_transaction.oids, vec![Oid(0), oid]);
    assert_eq!(&store_transaction.description[..], b"first commit");
    assert_eq!(other.count("AskStoreTransaction"), 0);
    assert_eq!(other.count("AskVoteTransaction"), 1);

    let finish = cluster
        .master
        .received()
        .into_iter()
        .find_map(|p| match p {
            Packet::AskFinishTransaction(f) => Some(f),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        finish,
        packets::AskFinishTransaction {
            ttid,
            oids: vec![Oid(0), oid],
            deleted: vec![],
            checked: vec![],
            pack: None,
        }
    );
}

#[tokio::test]
async fn stores_go_to_every_cell_and_checks_and_deletions_are_partitioned() {
    let cluster = Cluster::start(2, 4, 2).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    txn.check_current_serial(Oid(1), Tid(FIRST_TID))
        .await
        .unwrap();
    txn.delete(Oid(2), Tid(FIRST_TID)).await.unwrap();
    txn.vote(&TxnMeta::default()).await.unwrap();
    txn.finish().await.unwrap();
    for storage in &cluster.storages {
        let received = storage.received();
        let stored: Vec<Oid> = stores(&received).iter().map(|s| s.oid).collect();
        assert_eq!(stored, vec![Oid(0), Oid(2)], "every cell gets every store");
        let deletion = &stores(&received)[1];
        assert_eq!((deletion.compression, deletion.data.len()), (0, 0));
        assert_eq!(deletion.checksum, neo_proto::Checksum::ZERO);
        assert_eq!(storage.count("AskCheckCurrentSerial"), 1);
        // Both hold partition(ttid): both get the metadata.
        assert_eq!(storage.count("AskStoreTransaction"), 1);
    }
    let finish = cluster
        .master
        .received()
        .into_iter()
        .find_map(|p| match p {
            Packet::AskFinishTransaction(f) => Some(f),
            _ => None,
        })
        .unwrap();
    // session-basic seq 271 and 318: checked and deleted oids by partition.
    assert_eq!(finish.oids, vec![Oid(0)]);
    assert_eq!(finish.checked, vec![1]);
    assert_eq!(finish.deleted, vec![2]);
}

#[tokio::test]
async fn conflicts_are_reported_then_resolved_by_storing_again() {
    let cluster = Cluster::start(2, 1, 2).await;
    let newer = Tid(FIRST_TID + 100);
    for storage in &cluster.storages {
        storage
            .script
            .lock()
            .unwrap()
            .conflicts
            .insert(Oid(0), newer);
    }
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"mine"))
        .await
        .unwrap();
    let conflicts = match txn.vote(&TxnMeta::default()).await {
        Err(ClientError::Conflicts(conflicts)) => conflicts,
        other => panic!("expected conflicts, got {other:?}"),
    };
    assert_eq!(conflicts.len(), 1);
    let conflict = &conflicts[0];
    assert_eq!(
        (conflict.oid, conflict.serial, conflict.conflict_serial),
        (Oid(0), Tid(FIRST_TID), newer)
    );
    assert_eq!(conflict.data.as_deref(), Some(&b"mine"[..]));
    assert!(!conflict.checked);
    // Resolved data stored on top of the conflicting serial.
    txn.store(Oid(0), newer, Bytes::from_static(b"merged"))
        .await
        .unwrap();
    txn.vote(&TxnMeta::default()).await.unwrap();
    txn.finish().await.unwrap();
    for storage in &cluster.storages {
        let serials: Vec<Tid> = stores(&storage.received())
            .iter()
            .map(|s| s.serial)
            .collect();
        assert_eq!(serials, vec![Tid(FIRST_TID), newer]);
    }
}

#[tokio::test]
async fn unresolved_conflicts_block_the_vote() {
    let cluster = Cluster::start(1, 1, 1).await;
    cluster.storages[0]
        .script
        .lock()
        .unwrap()
        .conflicts
        .insert(Oid(0), Tid(FIRST_TID + 9));
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"v"))
        .await
        .unwrap();
    assert_eq!(txn.wait_stores().await.unwrap().len(), 1);
    assert!(matches!(
        txn.vote(&TxnMeta::default()).await,
        Err(ClientError::InvalidUse(_))
    ));
    txn.abort().await.unwrap();
}

#[tokio::test]
async fn abort_goes_to_storages_then_master() {
    let cluster = Cluster::start(2, 1, 2).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    let ttid = txn.ttid();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    // The store goes out (stores are sent together when an answer is
    // awaited).
    txn.wait_stores().await.unwrap();
    txn.abort().await.unwrap();
    for storage in &cluster.storages {
        eventually("abort on storage", || {
            storage.count("AbortTransaction") == 1
        })
        .await;
        assert!(storage.received().contains(&Packet::AbortTransaction(
            packets::AbortTransaction { ttid, nids: vec![] }
        )));
        // After the store on the same connection.
        let names = storage.names();
        let store = names.iter().position(|n| *n == "AskStoreObject").unwrap();
        let abort = names.iter().position(|n| *n == "AbortTransaction").unwrap();
        assert!(store < abort);
    }
    eventually("abort on master", || {
        cluster.master.count("AbortTransaction") == 1
    })
    .await;
    let abort = cluster
        .master
        .received()
        .into_iter()
        .find_map(|p| match p {
            Packet::AbortTransaction(a) => Some(a),
            _ => None,
        })
        .unwrap();
    assert_eq!(abort.ttid, ttid);
    assert_eq!(abort.nids, vec![NodeId(1), NodeId(2)]);
}

/// Stores wait to go out together: aborted before they did, they go
/// nowhere, and the storages, which never heard of the transaction, hear
/// of its abort only from the master (told which storages it involved).
#[tokio::test]
async fn stores_not_yet_sent_are_dropped_by_an_abort() {
    let cluster = Cluster::start(2, 1, 2).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    let ttid = txn.ttid();
    for oid in 0..3 {
        txn.store(Oid(oid), Tid(FIRST_TID), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    txn.abort().await.unwrap();
    eventually("abort on master", || {
        cluster.master.count("AbortTransaction") == 1
    })
    .await;
    assert!(cluster
        .master
        .received()
        .contains(&Packet::AbortTransaction(packets::AbortTransaction {
            ttid,
            nids: vec![NodeId(1), NodeId(2)]
        })));
    for storage in &cluster.storages {
        assert_eq!(storage.count("AskStoreObject"), 0);
        assert_eq!(storage.count("AbortTransaction"), 0);
    }
}

/// A storage answers an undo's question from the transaction's own
/// stores too (undoing several transactions at once): the stores still
/// queued go out before the question.
#[tokio::test]
async fn queued_stores_go_out_before_an_undo_question() {
    let cluster = Cluster::start(1, 1, 1).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(1), Tid(FIRST_TID), Bytes::from_static(b"undone"))
        .await
        .unwrap();
    txn.undo_serials(Tid(FIRST_TID), &[Oid(1)]).await.unwrap();
    let names = cluster.storages[0].names();
    let store = names.iter().position(|&name| name == "AskStoreObject");
    let undo = names.iter().position(|&name| name == "AskObjectUndoSerial");
    assert!(
        matches!((store, undo), (Some(store), Some(undo)) if store < undo),
        "{names:?}"
    );
    txn.abort().await.unwrap();
}

/// Small stores wait for the vote, which sends them together (one write
/// per storage) before it waits for their answers.
#[tokio::test]
async fn small_stores_go_out_together_at_the_vote() {
    let cluster = Cluster::start(1, 1, 1).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    for oid in 0..10 {
        txn.store(Oid(oid), Tid(FIRST_TID), Bytes::from(vec![oid as u8; 1000]))
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(cluster.storages[0].count("AskStoreObject"), 0);
    txn.vote(&TxnMeta::default()).await.unwrap();
    assert_eq!(cluster.storages[0].count("AskStoreObject"), 10);
    txn.finish().await.unwrap();
    // 64 KiB of data waiting (as sent: incompressible here) goes out
    // without waiting for the vote.
    let mut txn = client.begin(None).await.unwrap();
    let mut seed = 0x9e37_79b9_u32;
    for oid in 10..20 {
        let data: Vec<u8> = (0..10_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect();
        txn.store(Oid(oid), Tid(FIRST_TID), Bytes::from(data))
            .await
            .unwrap();
    }
    eventually("stores sent before the vote", || {
        cluster.storages[0].count("AskStoreObject") >= 16
    })
    .await;
    txn.vote(&TxnMeta::default()).await.unwrap();
    txn.finish().await.unwrap();
    assert_eq!(cluster.storages[0].count("AskStoreObject"), 20);
}

#[tokio::test]
async fn dropping_an_open_transaction_aborts_it() {
    let cluster = Cluster::start(1, 1, 1).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    txn.wait_stores().await.unwrap();
    drop(txn);
    eventually("abort on master", || {
        cluster.master.count("AbortTransaction") == 1
    })
    .await;
    eventually("abort on storage", || {
        cluster.storages[0].count("AbortTransaction") == 1
    })
    .await;
}

#[tokio::test]
async fn deadlock_notification_is_answered_with_a_relock() {
    let cluster = Cluster::start(1, 1, 1).await;
    cluster.storages[0].script.lock().unwrap().deadlock = Some(Oid(0));
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    let ttid = txn.ttid();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    // The vote sends the store, and its wait for the answers handles the
    // deadlock notification.
    txn.vote(&TxnMeta::default()).await.unwrap();
    eventually("relock", || {
        cluster.storages[0].count("AskRelockObject") == 1
    })
    .await;
    txn.finish().await.unwrap();
    assert!(cluster.storages[0]
        .received()
        .contains(&Packet::AskRelockObject(packets::AskRelockObject {
            ttid,
            oid: Oid(0)
        })));
}

#[tokio::test]
async fn not_primary_master_redirects_to_the_primary() {
    let cluster = Cluster::start(1, 1, 1).await;
    let secondary = FakeMaster::start(fake::MasterScript {
        cluster: CLUSTER.into(),
        storages: vec![],
        rows: vec![],
        last_tid: Tid::ZERO,
        next_oid: 0,
        identify_error: None,
        redirect: Some((
            Some(1),
            vec![Address::new("127.0.0.1", 1), cluster.master.address()],
        )),
        close_on_finish: false,
        final_tids: Default::default(),
        next_client: 0,
    })
    .await;
    let mut config = cluster.config();
    config.masters = vec![secondary.address()];
    let client = Client::connect(config).await.unwrap();
    assert_eq!(client.node_id(), Some(client_nid(1)));
    assert_eq!(secondary.count("RequestIdentification"), 1);
}

#[tokio::test]
async fn wrong_cluster_name_or_address_fails_in_bounded_time() {
    let cluster = Cluster::start(1, 1, 1).await;
    let mut config = cluster.config();
    config.cluster = "other".into();
    config.ready_timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let error = Client::connect(config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let message = error.to_string();
    assert!(message.contains("invalid cluster name"), "{message}");

    // Nothing listens there.
    let unused = fake::listen().await.local_address().clone();
    let mut config = ClientConfig::new(vec![unused], CLUSTER);
    config.ready_timeout = Duration::from_millis(800);
    let error = Client::connect(config).await.unwrap_err();
    assert!(matches!(error, ClientError::NotConnected { .. }), "{error}");

    // Cluster not running: NOT_READY, retried at most once per interval.
    cluster.master.script(|s| {
        s.identify_error = Some(packets::Error::new(
            ErrorCode::NotReady,
            "cluster not running",
        ))
    });
    let mut config = cluster.config();
    config.ready_timeout = Duration::from_millis(1000);
    config.retry_interval = Duration::from_millis(400);
    let before = cluster.master.count("RequestIdentification");
    let error = Client::connect(config).await.unwrap_err();
    assert!(error.to_string().contains("NOT_READY"), "{error}");
    let attempts = cluster.master.count("RequestIdentification") - before;
    assert!((2..=4).contains(&attempts), "{attempts} attempts");
}

/// An invalidation and what `last_transaction()` said while it was delivered.
type Seen = (Invalidation, Option<Tid>);

#[tokio::test]
async fn invalidations_come_in_order_before_last_transaction() {
    let cluster = Cluster::start(1, 1, 1).await;
    let client_cell: Arc<OnceLock<Client>> = Arc::new(OnceLock::new());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let config = {
        let client_cell = client_cell.clone();
        let seen = seen.clone();
        cluster.config().on_invalidation(move |invalidation| {
            let last = client_cell.get().and_then(Client::last_transaction);
            seen.lock().unwrap().push((invalidation.clone(), last));
        })
    };
    let client = Client::connect(config).await.unwrap();
    client_cell.set(client.clone()).unwrap();
    let tids = [Tid(FIRST_TID + 10), Tid(FIRST_TID + 20)];
    for (index, tid) in tids.iter().enumerate() {
        cluster
            .master
            .broadcast(packets::InvalidateObjects {
                tid: *tid,
                oids: vec![Oid(index as u64)],
            })
            .await;
    }
    // The Ping barrier: both were processed when it returns.
    client.sync().await.unwrap();
    assert_eq!(client.last_transaction(), Some(tids[1]));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (
                Invalidation::Objects {
                    tid: tids[0],
                    oids: vec![Oid(0)]
                },
                Some(Tid(FIRST_TID))
            ),
            (
                Invalidation::Objects {
                    tid: tids[1],
                    oids: vec![Oid(1)]
                },
                Some(tids[0])
            ),
        ]
    );
    // Loads now see the new snapshot.
    cluster.storages[0].put(Oid(0), tids[0], b"v2");
    client.load(Oid(0)).await.unwrap();
    assert!(cluster.storages[0]
        .received()
        .contains(&Packet::AskObject(packets::AskObject {
            oid: Oid(0),
            at: None,
            before: Some(Tid(tids[1].0 + 1)),
        })));
}

#[tokio::test]
async fn master_loss_fails_open_transactions_and_reconnects() {
    let cluster = Cluster::start(1, 1, 1).await;
    let seen: Arc<Mutex<Vec<Invalidation>>> = Arc::default();
    let config = {
        let seen = seen.clone();
        cluster
            .config()
            .on_invalidation(move |i| seen.lock().unwrap().push(i.clone()))
    };
    let client = Client::connect(config).await.unwrap();
    assert_eq!(client.new_oid().await.unwrap(), Oid(1));
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    // Meanwhile another client committed: the new master session says so.
    cluster.master.script(|s| s.last_tid = Tid(FIRST_TID + 50));
    cluster.master.drop_clients().await;
    let error = txn.vote(&TxnMeta::default()).await.unwrap_err();
    assert!(
        matches!(error, ClientError::TransactionFailed { .. }),
        "{error}"
    );
    txn.abort().await.unwrap();

    // Reconnected with the previous node id; the OID pool was discarded.
    client.sync().await.unwrap();
    let identifications: Vec<_> = cluster
        .master
        .received()
        .into_iter()
        .filter_map(|p| match p {
            Packet::RequestIdentification(r) => Some(r.nid),
            _ => None,
        })
        .collect();
    assert_eq!(identifications, vec![None, Some(client_nid(1))]);
    assert_eq!(client.new_oid().await.unwrap(), Oid(101));
    assert_eq!(client.last_transaction(), Some(Tid(FIRST_TID + 50)));
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![Invalidation::All {
            tid: Tid(FIRST_TID + 50)
        }]
    );
    // And commits work again, through new storage connections.
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(0), Tid(FIRST_TID + 50), Bytes::from_static(b"y"))
        .await
        .unwrap();
    txn.vote(&TxnMeta::default()).await.unwrap();
    txn.finish().await.unwrap();
}

#[tokio::test]
async fn finish_recovers_its_outcome_after_master_loss() {
    let cluster = Cluster::start(1, 1, 1).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    let ttid = txn.ttid();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    txn.vote(&TxnMeta::default()).await.unwrap();
    cluster.master.script(|s| s.close_on_finish = true);
    let hooked = Arc::new(Mutex::new(None));
    let hook = hooked.clone();
    let tid = txn
        .finish_with(move |tid| *hook.lock().unwrap() = Some(tid))
        .await
        .unwrap();
    assert_eq!(tid, Tid(ttid.0 + 4));
    assert_eq!(*hooked.lock().unwrap(), Some(tid));
    assert!(cluster
        .master
        .received()
        .contains(&Packet::AskFinalTID(packets::AskFinalTID { ttid })));
    assert_eq!(client.last_transaction(), Some(tid));
}

#[tokio::test]
async fn lost_storage_is_reported_to_the_master_at_vote() {
    let cluster = Cluster::start(2, 1, 2).await;
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    let ttid = txn.ttid();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    txn.wait_stores().await.unwrap();
    // S2 drops us after storing: it forgot the transaction.
    cluster.storages[1].drop_clients().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    txn.vote(&TxnMeta::default()).await.unwrap();
    assert!(cluster
        .master
        .received()
        .contains(&Packet::FailedVote(packets::FailedVote {
            ttid,
            failed_nids: vec![NodeId(2)],
        })));
    txn.finish().await.unwrap();
    // Never reconnected to S2 within that transaction.
    assert_eq!(cluster.storages[1].count("AskStoreTransaction"), 0);
}

/// A storage answering a store twice breaks the protocol: neo-net answers
/// the extra answer with a protocol error and closes that connection, the
/// transaction keeps the first answer and loses that storage, and commits
/// on the other cell, reporting the lost one to the master.
#[tokio::test]
async fn a_storage_answering_a_store_twice_is_dropped_from_the_transaction() {
    let cluster = Cluster::start(2, 1, 2).await;
    let s2 = &cluster.storages[1];
    s2.script.lock().unwrap().answer_twice = Some(Oid(0));
    let client = Client::connect(cluster.config()).await.unwrap();
    let mut txn = client.begin(None).await.unwrap();
    let ttid = txn.ttid();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(txn.wait_stores().await.unwrap().is_empty());
    eventually("the protocol error", || {
        s2.received()
            .iter()
            .any(|p| matches!(p, Packet::Error(error) if error.code == ErrorCode::ProtocolError))
    })
    .await;
    txn.vote(&TxnMeta::default()).await.unwrap();
    assert!(cluster
        .master
        .received()
        .contains(&Packet::FailedVote(packets::FailedVote {
            ttid,
            failed_nids: vec![s2.nid],
        })));
    txn.finish().await.unwrap();
    assert_eq!(cluster.storages[0].count("AskStoreTransaction"), 1);
    // The next transaction connects to it again.
    s2.script.lock().unwrap().answer_twice = None;
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"y"))
        .await
        .unwrap();
    txn.vote(&TxnMeta::default()).await.unwrap();
    txn.finish().await.unwrap();
    assert_eq!(s2.count("RequestIdentification"), 2);
}

#[tokio::test]
async fn read_side_requests() {
    let cluster = Cluster::start(2, 2, 1).await;
    let tids = [Tid(FIRST_TID), Tid(FIRST_TID + 1)];
    for (index, storage) in cluster.storages.iter().enumerate() {
        // partition(tid) = tid % 2: S1 holds even TIDs, S2 odd ones.
        let tid = tids
            .iter()
            .copied()
            .find(|t| t.0 % 2 == index as u64)
            .unwrap();
        storage
            .script
            .lock()
            .unwrap()
            .transactions
            .insert(tid, (Bytes::from(format!("txn {index}")), vec![Oid(0)]));
    }
    let client = Client::connect(cluster.config()).await.unwrap();
    let log = client.undo_log_tids(0, 10).await.unwrap();
    let mut expected = tids.to_vec();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(log, expected);
    for tid in tids {
        let info = client.transaction_info(tid).await.unwrap();
        assert_eq!(info.oids, vec![Oid(0)]);
    }
    assert!(matches!(
        client.transaction_info(Tid(4)).await,
        Err(ClientError::TidNotFound { .. })
    ));
}

#[test]
fn blocking_client_from_plain_threads() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = runtime.block_on(Cluster::start(1, 1, 1));
    cluster.storages[0].put(Oid(0), Tid(FIRST_TID), b"root");
    let client = BlockingClient::connect(cluster.config()).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    assert_eq!(&client.load(Oid(0)).unwrap().data[..], b"root");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut txn = client.begin(None).unwrap();
    let oid = client.new_oid().unwrap();
    txn.store(oid, Tid::ZERO, Bytes::from_static(b"child"))
        .unwrap();
    txn.vote(&TxnMeta::default()).unwrap();
    let tid = txn.finish().unwrap();
    assert_eq!(client.last_transaction(), Some(tid));
    client.close().unwrap();
    drop(client);
    drop(runtime);
}

#[tokio::test]
async fn partition_changes_and_stopped_storages_are_followed() {
    let cluster = Cluster::start(2, 1, 2).await;
    for storage in &cluster.storages {
        storage.put(Oid(0), Tid(FIRST_TID), b"data");
    }
    let client = Client::connect(cluster.config()).await.unwrap();
    // Connect to both storages.
    let mut txn = client.begin(None).await.unwrap();
    txn.store(Oid(0), Tid(FIRST_TID), Bytes::from_static(b"x"))
        .await
        .unwrap();
    txn.abort().await.unwrap();
    // S1's cell becomes OUT_OF_DATE (ptid 1 → 2): reads go to S2 only.
    cluster
        .master
        .broadcast(packets::NotifyPartitionChanges {
            ptid: 2,
            num_replicas: 1,
            changes: vec![packets::CellChange {
                partition: 0,
                nid: NodeId(1),
                state: neo_proto::CellState::OutOfDate,
            }],
        })
        .await;
    client.sync().await.unwrap();
    let before = cluster.storages[0].count("AskObject");
    for _ in 0..6 {
        client.load(Oid(0)).await.unwrap();
    }
    assert_eq!(cluster.storages[0].count("AskObject"), before);
    // S1 stops: its connection is closed.
    let s1 = &cluster.storages[0];
    cluster
        .master
        .broadcast(packets::NotifyNodeInformation {
            timestamp: 1795643200.0,
            nodes: vec![fake::storage_info(
                s1.nid,
                &s1.address,
                neo_proto::NodeState::Down,
            )],
        })
        .await;
    client.sync().await.unwrap();
    eventually("S1 connection closed", || {
        s1.clients.lock().unwrap().iter().all(|c| c.is_closed())
    })
    .await;
    assert!(client.is_ready(), "S2 still serves every partition");
    // A ptid gap is a protocol error: the client drops the master and
    // comes back with a fresh table.
    cluster
        .master
        .broadcast(packets::NotifyPartitionChanges {
            ptid: 9,
            num_replicas: 1,
            changes: vec![],
        })
        .await;
    eventually("reconnection", || {
        cluster.master.count("RequestIdentification") == 2
    })
    .await;
    client.load(Oid(0)).await.unwrap();
}
