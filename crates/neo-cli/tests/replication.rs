//! Replication between two of our storages, as real processes: a storage
//! that missed commits while it was down fetches them from the other one
//! when it comes back, commits going on meanwhile, tells the master each
//! partition is replicated (`NotifyReplicationDone`), and its cells become
//! UP_TO_DATE; both databases then hold the same rows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::mysql::prelude::Queryable;
use bytes::Bytes;
use common::{Cluster, Setup, Store};
use neo_client::{BlockingClient, TxnMeta};
use neo_proto::{Oid, Tid};

fn meta() -> TxnMeta {
    TxnMeta {
        user: Bytes::from_static(b"tests"),
        description: Bytes::from_static(b"replicated"),
        extension: Bytes::new(),
        pack: None,
    }
}

/// Commits a new revision of each of `objects` (created when new), whose
/// data says which round wrote it.
fn commit_round(client: &BlockingClient, objects: &mut [(Oid, Tid)], round: usize) {
    let mut txn = client.begin(None).unwrap();
    for (n, (oid, serial)) in objects.iter().enumerate() {
        let data = Bytes::from(format!("object {n} round {round} {}", "x".repeat(n * 37)));
        let conflicts = txn.store(*oid, *serial, data).unwrap();
        assert!(conflicts.is_empty(), "{conflicts:?}");
    }
    txn.vote(&meta()).unwrap();
    let tid = txn.finish().unwrap();
    for (_, serial) in objects.iter_mut() {
        *serial = tid;
    }
}

/// The committed rows of storage `index`'s database: `trans` and `obj`
/// with the hash of the data, in a stable order.
fn rows(cluster: &Cluster, index: usize) -> (Vec<String>, Vec<String>) {
    let trans = "SELECT `partition`, tid, packed, hex(oids), hex(user), hex(description),
                        hex(ext), ttid
                 FROM trans ORDER BY `partition`, tid";
    let obj = "SELECT obj.`partition`, obj.oid, obj.tid, obj.value_tid, hex(data.hash),
                      data.compression, length(data.value)
               FROM obj LEFT JOIN data ON data.id = obj.data_id
               ORDER BY obj.`partition`, obj.oid, obj.tid";
    match &cluster.store {
        Store::Sqlite => {
            let conn = rusqlite::Connection::open_with_flags(
                cluster.database(index),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .unwrap();
            let collect = |query: &str| -> Vec<String> {
                let mut stmt = conn.prepare(query).unwrap();
                let rows = stmt
                    .query_map([], |row| {
                        let columns: Vec<String> = (0..row.as_ref().column_count())
                            .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                            .collect();
                        Ok(columns.join(" "))
                    })
                    .unwrap();
                rows.map(Result::unwrap).collect()
            };
            (collect(trans), collect(obj))
        }
        Store::MySql(socket) => {
            let mut conn = common::mysql_admin(socket);
            conn.select_db(&cluster.mysql_database(index)).unwrap();
            let mut collect = |query: &str| -> Vec<String> {
                let rows: Vec<::mysql::Row> = conn.query(query).unwrap();
                rows.into_iter()
                    .map(|row| format!("{:?}", row.unwrap()))
                    .collect()
            };
            (collect(trans), collect(obj))
        }
        Store::Native => {
            let log = neo_storage::backend::NativeSnapshot::read(cluster.database(index)).unwrap();
            let trans = log
                .transactions()
                .into_iter()
                .map(|(partition, tid, meta)| format!("{partition} {tid:?} {meta:?}"))
                .collect();
            let obj = log
                .objects()
                .into_iter()
                .map(|row| {
                    // Data ids are each storage's own: compared by content.
                    let data = row.data_id.map(|id| {
                        let (compression, checksum, value) = log.data(id).unwrap().unwrap();
                        (compression, checksum, value.len())
                    });
                    format!(
                        "{} {:?} {:?} {:?} {data:?}",
                        row.partition, row.oid, row.serial, row.data_serial
                    )
                })
                .collect();
            (trans, obj)
        }
    }
}

/// Waits until `done` holds (bounded).
fn wait_for(cluster: &Cluster, what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

common::on_every_setup!(a_storage_back_from_down_fetches_what_it_missed);

fn a_storage_back_from_down_fetches_what_it_missed(setup: Setup) {
    let mut cluster = setup.cluster("replication");
    cluster.start(2, 1);
    let client = cluster.client();
    let mut objects: Vec<(Oid, Tid)> = (0..20)
        .map(|_| (client.new_oid().unwrap(), Tid::ZERO))
        .collect();
    for round in 0..5 {
        commit_round(&client, &mut objects, round);
    }
    cluster.kill("storage1");
    for round in 5..40 {
        commit_round(&client, &mut objects[round % 7..], round);
    }
    cluster.start_storage(1);
    // Commits go on while it replicates.
    let running = Arc::new(AtomicBool::new(true));
    let committer = std::thread::spawn({
        let running = running.clone();
        let mut objects: Vec<(Oid, Tid)> = (0..5)
            .map(|_| (client.new_oid().unwrap(), Tid::ZERO))
            .collect();
        let client = cluster.client();
        move || {
            let mut round = 100;
            while running.load(Ordering::SeqCst) && round < 400 {
                commit_round(&client, &mut objects, round);
                round += 1;
            }
        }
    });
    // Every partition of storage 1 was outdated: each is announced, and
    // the master sets it UP_TO_DATE.
    let all_up_to_date = || {
        let table = cluster.neoctl_stdout("print pt");
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with('S')).collect();
        rows.len() == 2 && rows.iter().all(|row| row.ends_with(" UUUU"))
    };
    wait_for(&cluster, "every cell UP_TO_DATE", 60, all_up_to_date);
    running.store(false, Ordering::SeqCst);
    committer.join().unwrap();
    wait_for(&cluster, "the same rows in both databases", 30, || {
        rows(&cluster, 0) == rows(&cluster, 1)
    });
    let (trans, obj) = rows(&cluster, 1);
    assert!(
        trans.len() > 40 && obj.len() > 300,
        "{} {}",
        trans.len(),
        obj.len()
    );
    let storage_log =
        std::fs::read_to_string(cluster.dir.path().join("storage1.log")).unwrap_or_default();
    assert!(
        storage_log.contains("partition replicated"),
        "{storage_log}"
    );
    cluster.stop();
}
