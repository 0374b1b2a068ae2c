//! Pack through real clusters of our processes (architecture.md §11.2,
//! §11.3): the client commits the order, the master signs it, storages
//! pack in the background and report; old revisions are gone for good,
//! current ones stay, on every replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{Cluster, Setup};
use neo_client::{BlockingClient, ClientError, TxnMeta};
use neo_proto::packets::HistoryEntry;
use neo_proto::{Oid, Tid};
use neo_storage::backend::{self, OpenOptions};
use neo_storage::db::Database;

fn meta() -> TxnMeta {
    TxnMeta {
        user: Bytes::from_static(b"tests"),
        description: Bytes::from_static(b"commit"),
        ..Default::default()
    }
}

/// Commits new revisions (`Some(data)`) or deletions (`None`) based on
/// `serial`; returns the TID.
fn commit(client: &BlockingClient, objects: &[(Oid, Tid, Option<&'static [u8]>)]) -> Tid {
    let mut txn = client.begin(None).unwrap();
    for (oid, serial, data) in objects {
        let conflicts = match data {
            Some(data) => txn.store(*oid, *serial, Bytes::from_static(data)),
            None => txn.delete(*oid, *serial),
        }
        .unwrap();
        assert!(conflicts.is_empty(), "{conflicts:?}");
    }
    txn.vote(&meta()).unwrap();
    txn.finish().unwrap()
}

/// What a test wrote: oids and the TIDs of its transactions.
struct Written {
    a: Oid,
    b: Oid,
    c: Oid,
    t1: Tid,
    t2: Tid,
    t3: Tid,
    t4: Tid,
    t5: Tid,
}

/// a: t1, t2, t4 — b: t1, t2, t5 — c: t1, deleted at t3.
fn write(client: &BlockingClient) -> Written {
    let (a, b, c) = (
        client.new_oid().unwrap(),
        client.new_oid().unwrap(),
        client.new_oid().unwrap(),
    );
    let zero = Tid::ZERO;
    let t1 = commit(
        client,
        &[
            (a, zero, Some(b"a1")),
            (b, zero, Some(b"b1")),
            (c, zero, Some(b"c1")),
        ],
    );
    let t2 = commit(client, &[(a, t1, Some(b"a2")), (b, t1, Some(b"b2"))]);
    let t3 = commit(client, &[(c, t1, None)]);
    let t4 = commit(client, &[(a, t2, Some(b"a3"))]);
    let t5 = commit(client, &[(b, t2, Some(b"b3"))]);
    Written {
        a,
        b,
        c,
        t1,
        t2,
        t3,
        t4,
        t5,
    }
}

/// Data of revision `serial` of `oid`, or the error.
fn serial(client: &BlockingClient, oid: Oid, serial: Tid) -> Result<Bytes, ClientError> {
    client.load_serial(oid, serial).map(|loaded| loaded.data)
}

/// The state after a pack at t3.
fn check_packed(client: &BlockingClient, w: &Written) {
    // Older than the revision current at t3: gone.
    for (oid, tid) in [(w.a, w.t1), (w.b, w.t1), (w.c, w.t1)] {
        let result = serial(client, oid, tid);
        assert!(
            matches!(
                result,
                Err(ClientError::OidNotFound { .. } | ClientError::OidDoesNotExist { .. })
            ),
            "{oid} at {tid}: {result:?}"
        );
    }
    // Current at t3, and everything after: intact.
    assert_eq!(serial(client, w.a, w.t2).unwrap(), &b"a2"[..]);
    assert_eq!(serial(client, w.a, w.t4).unwrap(), &b"a3"[..]);
    assert_eq!(serial(client, w.b, w.t2).unwrap(), &b"b2"[..]);
    assert_eq!(serial(client, w.b, w.t5).unwrap(), &b"b3"[..]);
    assert_eq!(client.load(w.a).unwrap().data, &b"a3"[..]);
    assert_eq!(client.load(w.b).unwrap().data, &b"b3"[..]);
    assert_eq!(client.load_before(w.a, w.t2).unwrap(), None);
    // Deleted at t3: the object vanished entirely.
    assert!(matches!(
        client.load(w.c),
        Err(ClientError::OidDoesNotExist { .. })
    ));
    // Transaction metadata is never packed.
    let info = client.transaction_info(w.t1).unwrap();
    assert_eq!(info.oids.len(), 3);
}

/// Histories of `oids` in a stopped storage's database.
fn histories(cluster: &Cluster, index: usize, oids: &[Oid]) -> Vec<Vec<HistoryEntry>> {
    let database = cluster.database(index);
    let backend = backend::open(cluster.adapter(), &database, &OpenOptions::default()).unwrap();
    let mut backend = Database::new(backend).unwrap();
    oids.iter()
        .map(|oid| backend.object_history(*oid, 0, 100).unwrap())
        .collect()
}

fn pack_scenario(name: &str, storages: usize, replicas: u32, setup: Setup) {
    let mut cluster = setup.cluster(name);
    cluster.start(storages, replicas);
    let client = cluster.client();
    let w = write(&client);
    // Nothing to pack at ZERO_TID.
    assert_eq!(client.pack(Tid::ZERO, None).unwrap(), None);
    let pack_id = client.pack(w.t3, None).unwrap().expect("a pack order");
    assert!(pack_id > w.t5);
    client.wait_for_pack(pack_id).unwrap();
    check_packed(&client, &w);
    // The pack transaction itself is an ordinary empty transaction.
    let info = client.transaction_info(pack_id).unwrap();
    assert_eq!(info.description, &b"IStorage.pack"[..]);
    assert!(info.oids.is_empty());
    // Waiting again (or for an unknown order) returns at once.
    client.wait_for_pack(pack_id).unwrap();
    client.wait_for_pack(Tid(1)).unwrap();
    client.close().unwrap();
    cluster.stop();

    let oids = [w.a, w.b, w.c];
    let first = histories(&cluster, 0, &oids);
    assert_eq!(first[0].len(), 2, "a: t2 and t4");
    assert_eq!(first[1].len(), 2, "b: t2 and t5");
    assert!(first[2].is_empty(), "c: deleted");
    for index in 1..storages {
        assert_eq!(
            histories(&cluster, index, &oids),
            first,
            "replicas packed alike"
        );
    }

    // A restart keeps the result, and the order is not redone.
    cluster.start_master(&[]);
    for index in 0..storages {
        cluster.start_storage(index);
    }
    cluster.start_admin();
    cluster.wait_state("RUNNING");
    let client = cluster.client();
    check_packed(&client, &w);
    client.wait_for_pack(pack_id).unwrap();
    // A second pack, partial, later in time.
    let b4 = commit(&client, &[(w.b, w.t5, Some(b"b4"))]);
    let a5 = commit(&client, &[(w.a, w.t4, Some(b"a5"))]);
    let partial = client.pack(a5, Some(vec![w.b])).unwrap().unwrap();
    client.wait_for_pack(partial).unwrap();
    assert!(serial(&client, w.b, w.t2).is_err());
    assert!(serial(&client, w.b, w.t5).is_err());
    assert_eq!(serial(&client, w.b, b4).unwrap(), &b"b4"[..]);
    // Not listed: untouched.
    assert_eq!(serial(&client, w.a, w.t2).unwrap(), &b"a2"[..]);
    assert_eq!(serial(&client, w.a, a5).unwrap(), &b"a5"[..]);
    client.close().unwrap();
    cluster.stop();
    let first = histories(&cluster, 0, &oids);
    assert_eq!(first[0].len(), 3);
    assert_eq!(first[1].len(), 1);
    for index in 1..storages {
        assert_eq!(histories(&cluster, index, &oids), first);
    }
}

fn pack_removes_old_history_and_survives_a_restart(setup: Setup) {
    pack_scenario("pack1", 1, 0, setup);
}

fn replicas_are_packed_identically(setup: Setup) {
    pack_scenario("pack2", 2, 1, setup);
}

common::on_every_setup!(
    pack_removes_old_history_and_survives_a_restart,
    replicas_are_packed_identically,
);
