//! Against a real NEO/py cluster (not run in CI): start one (e.g. a
//! `neomaster` with `--autostart 2 --replicas 1` and two SQLite
//! `neostorage`s on 127.0.0.1), then
//!
//! ```sh
//! NEO_MASTERS=127.0.0.1:21100 NEO_CLUSTER=interop \
//!     cargo test -p neo-client --test interop_neopy -- --ignored --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use neo_client::{BlockingClient, ClientConfig, ClientError, Invalidation, TxnMeta};
use neo_proto::{Address, Oid, Tid};

fn config() -> ClientConfig {
    let masters = std::env::var("NEO_MASTERS").unwrap_or_else(|_| "127.0.0.1:21100".into());
    let masters = masters
        .split_whitespace()
        .map(|m| Address::parse(m, 10000).unwrap())
        .collect();
    let cluster = std::env::var("NEO_CLUSTER").unwrap_or_else(|_| "interop".into());
    let mut config = ClientConfig::new(masters, cluster);
    config.ready_timeout = Duration::from_secs(10);
    config
}

/// The current serial of `oid`, or ZERO if it does not exist yet.
fn serial_of(client: &BlockingClient, oid: Oid) -> Tid {
    match client.load(oid) {
        Ok(loaded) => loaded.serial,
        Err(ClientError::OidDoesNotExist { .. }) => Tid::ZERO,
        Err(error) => panic!("load {oid}: {error}"),
    }
}

#[test]
#[ignore = "needs a running NEO/py cluster"]
fn commit_load_and_invalidate_against_neo_py() {
    let seen: Arc<Mutex<Vec<Invalidation>>> = Arc::default();
    let watcher = {
        let seen = seen.clone();
        BlockingClient::connect(
            config().on_invalidation(move |i| seen.lock().unwrap().push(i.clone())),
        )
        .unwrap()
    };
    let client = BlockingClient::connect(config()).unwrap();
    println!(
        "identified as {:?}, last tid {:?}",
        client.node_id(),
        client.last_transaction()
    );

    let root_serial = serial_of(&client, Oid(0));
    let child = client.new_oid().unwrap();
    let root_data = Bytes::from(format!("root from rust, previous {root_serial}").repeat(10));
    let mut txn = client.begin(None).unwrap();
    assert!(txn
        .store(Oid(0), root_serial, root_data.clone())
        .unwrap()
        .is_empty());
    assert!(txn
        .store(child, Tid::ZERO, Bytes::from_static(b"child"))
        .unwrap()
        .is_empty());
    let meta = TxnMeta {
        user: Bytes::from_static(b"rust"),
        description: Bytes::from_static(b"interop commit"),
        ..TxnMeta::default()
    };
    txn.vote(&meta).unwrap();
    let tid = txn.finish().unwrap();
    println!("committed {tid} (ttid {})", txn.ttid());
    assert_eq!(client.last_transaction(), Some(tid));

    let root = client.load(Oid(0)).unwrap();
    assert_eq!(
        (root.data.clone(), root.serial, root.next_serial),
        (root_data, tid, None)
    );
    assert_eq!(&client.load(child).unwrap().data[..], b"child");
    if root_serial != Tid::ZERO {
        let before = client.load_before(Oid(0), tid).unwrap().unwrap();
        assert_eq!(
            (before.serial, before.next_serial),
            (root_serial, Some(tid))
        );
    }

    watcher.sync().unwrap();
    assert!(seen.lock().unwrap().contains(&Invalidation::Objects {
        tid,
        oids: vec![Oid(0), child],
    }));
    assert_eq!(watcher.last_transaction(), Some(tid));

    // A store based on an old serial conflicts.
    if root_serial != Tid::ZERO {
        let mut txn = client.begin(None).unwrap();
        txn.store(Oid(0), root_serial, Bytes::from_static(b"stale"))
            .unwrap();
        match txn.vote(&TxnMeta::default()) {
            Err(ClientError::Conflicts(conflicts)) => {
                assert_eq!(conflicts[0].conflict_serial, tid);
                println!("conflict reported: {:?}", conflicts[0]);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        txn.abort().unwrap();
    }

    let info = client.transaction_info(tid).unwrap();
    assert_eq!(&info.description[..], b"interop commit");
    assert_eq!(info.oids, vec![Oid(0), child]);
    let history = client.history(Oid(0), 0, 5).unwrap();
    assert_eq!(history[0].serial, tid);
    let log = client.undo_log_tids(0, 10).unwrap();
    assert_eq!(log[0], tid);
    let chunk = client.iterate_tids(Tid::ZERO, None, 100).unwrap();
    assert_eq!(chunk.last(), Some(&tid));
    println!("history {history:?}\nundo log {log:?}");

    // readCurrent and deletion of the child.
    let mut txn = client.begin(None).unwrap();
    txn.check_current_serial(Oid(0), tid).unwrap();
    txn.delete(child, tid).unwrap();
    txn.vote(&TxnMeta::default()).unwrap();
    let deleted_at = txn.finish().unwrap();
    assert!(matches!(
        client.load(child),
        Err(ClientError::NoData { .. })
    ));
    println!("deleted {child} at {deleted_at}");

    // Timing of loads (debug build): one round trip each.
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        client.load(Oid(0)).unwrap();
    }
    println!("1000 loads in {:?}", started.elapsed());
}

#[test]
#[ignore = "needs a NEO/py cluster"]
fn pack_orders_are_read_from_neo_py_s_master() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let client = BlockingClient::connect(config()).unwrap();
    // Completed orders come from NEO/py's storages, whose partial orders
    // carry their oids as one bin (decoding it is the test).
    let orders = client.pack_orders(Tid(1)).unwrap();
    println!("{orders:?}");
    assert!(orders.windows(2).all(|pair| pair[0].id < pair[1].id));
    assert!(orders
        .iter()
        .all(|order| order.partial == order.oids.is_some()));
}
