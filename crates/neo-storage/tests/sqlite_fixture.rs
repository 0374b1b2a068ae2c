//! Opens, in place, copies of the databases written by a NEO/py cluster
//! (`shared/vectors/neopy-sqlite`) and checks that they serve exactly what
//! NEO/py committed (`expected.json`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use neo_proto::{CellState, NodeId, Oid, Tid};
use neo_storage::backend::{ObjectRecord, OpenOptions, RequestError, SqliteBackend};
use neo_storage::db::{Database, ObjectLookup, UndoLookup};
use serde_json::Value;
use sha1::{Digest, Sha1};

fn fixture_dir() -> PathBuf {
    let base = match std::env::var_os("NEO_VECTORS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors"),
    };
    let dir = base.join("neopy-sqlite");
    assert!(
        dir.is_dir(),
        "fixture not found at {}: set NEO_VECTORS_DIR",
        dir.display()
    );
    dir
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Opens a writable copy (the fixture itself is read-only).
fn open_copy(name: &str) -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(fixture_dir().join(name), &path).unwrap();
    let backend = Database::new(Box::new(
        SqliteBackend::open(&path, &OpenOptions::default()).unwrap(),
    ))
    .unwrap();
    (dir, backend)
}

fn tid(value: &Value) -> Tid {
    Tid(u64::from_str_radix(value.as_str().unwrap(), 16).unwrap())
}

fn oid(text: &str) -> Oid {
    Oid(u64::from_str_radix(text, 16).unwrap())
}

/// Uncompressed data of a record.
fn plain(record: &ObjectRecord) -> Vec<u8> {
    assert_eq!(
        Sha1::digest(&record.data).as_slice(),
        &record.checksum.0,
        "stored checksum of serial {}",
        record.serial
    );
    match record.compression {
        Some(0) => record.data.clone(),
        Some(1) => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(&record.data[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        other => panic!("unexpected compression {other:?}"),
    }
}

fn sha1_hex(data: &[u8]) -> String {
    hex::encode(Sha1::digest(data))
}

fn load(backend: &mut Database, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> ObjectRecord {
    match backend.get_object(oid, at, before).unwrap() {
        ObjectLookup::Found(record) => record,
        other => panic!("{oid} at {at:?} before {before:?}: {other:?}"),
    }
}

/// The pickle (protocol 3) NEO/py's client stored for `{"step": n}`.
fn step_extension(step: u8) -> Vec<u8> {
    let mut pickle = b"\x80\x03}q\x00X\x04\x00\x00\x00stepq\x01K".to_vec();
    pickle.push(step);
    pickle.extend_from_slice(b"s.");
    pickle
}

#[test]
fn fixture_configuration_and_partition_table() {
    for (name, nid) in [("storage0.sqlite", 2), ("storage1.sqlite", 1)] {
        let (_dir, mut backend) = open_copy(name);
        assert_eq!(backend.name().unwrap().as_deref(), Some("fixture"));
        assert_eq!(backend.nid().unwrap(), Some(NodeId(nid)));
        assert_eq!(backend.ptid().unwrap(), Some(1));
        assert_eq!(backend.num_replicas().unwrap(), 1);
        assert_eq!(backend.num_partitions(), 4);
        assert_eq!(backend.truncate_tid().unwrap(), None);
        assert_eq!(backend.backup_tid().unwrap(), None);
        let pt = backend.partition_table().unwrap();
        for partition in 0..4 {
            let mut cells: Vec<_> = pt
                .cells(partition)
                .iter()
                .map(|cell| (cell.nid, cell.state))
                .collect();
            cells.sort_by_key(|&(nid, _)| nid);
            assert_eq!(
                cells,
                [
                    (NodeId(1), CellState::UpToDate),
                    (NodeId(2), CellState::UpToDate)
                ]
            );
        }
        assert_eq!(
            backend.readable_partitions(),
            (0..4).collect::<BTreeSet<_>>()
        );
        let cells = backend.assigned_cells();
        assert_eq!(cells.len(), 4);
        assert!(cells.iter().all(|cell| cell.state == CellState::UpToDate
            && cell.complete_up_to.is_none()
            && cell.pack == Some(Tid(0))));
        assert!(backend.unfinished_transactions().unwrap().is_empty());
    }
}

#[test]
fn fixture_transactions() {
    let expected = expected();
    let transactions = expected["transactions"].as_array().unwrap();
    for name in ["storage0.sqlite", "storage1.sqlite"] {
        let (_dir, mut backend) = open_copy(name);
        let mut by_tid = BTreeMap::new();
        for (index, txn) in transactions.iter().enumerate() {
            let tid = tid(&txn["tid"]);
            let meta = backend
                .get_transaction(tid, false)
                .unwrap()
                .unwrap_or_else(|| panic!("transaction {tid} missing"));
            assert_eq!(meta.user, txn["user"].as_str().unwrap().as_bytes());
            assert_eq!(
                meta.description,
                txn["description"].as_str().unwrap().as_bytes()
            );
            match txn["extension"]["step"].as_u64() {
                Some(step) => assert_eq!(meta.extension, step_extension(step as u8)),
                None => assert_eq!(meta.extension, b""),
            }
            assert!(!meta.packed);
            assert!(meta.ttid <= tid, "ttid after tid in {tid}");
            assert_eq!(meta.ttid.0 % 4, tid.0 % 4, "ttid and tid not congruent");
            assert_eq!(backend.final_tid(meta.ttid).unwrap(), Some(tid));
            if let Some(oids) = txn["oids"].as_array() {
                let want: Vec<Oid> = oids.iter().map(|o| oid(o.as_str().unwrap())).collect();
                assert_eq!(meta.oids, want, "oids of transaction {index}");
            }
            by_tid.insert(tid, meta);
        }
        // The undo transaction lists the oids of the undone one.
        let undo = &transactions[6];
        let undone = by_tid[&tid(&undo["undo_of"])].oids.clone();
        let undo_oids = &by_tid[&tid(&undo["tid"])].oids;
        assert_eq!(
            undo_oids.iter().collect::<BTreeSet<_>>(),
            undone.iter().collect::<BTreeSet<_>>()
        );

        let tids: Vec<Tid> = by_tid.keys().rev().copied().collect();
        assert_eq!(backend.tid_list(0, 100, &[0, 1, 2, 3]).unwrap(), tids);
        assert_eq!(backend.tid_list(2, 3, &[0, 1, 2, 3]).unwrap(), tids[2..5]);
        for partition in 0..4 {
            let want: Vec<Tid> = by_tid
                .keys()
                .filter(|tid| tid.0 % 4 == u64::from(partition))
                .copied()
                .collect();
            let got = backend
                .replication_tid_list(Tid::ZERO, Tid::MAX, 100, partition)
                .unwrap();
            assert_eq!(got, want);
        }
        let last_tid = tid(&expected["last_tid"]);
        let ids = backend.last_ids().unwrap();
        assert_eq!(ids.tid, Some(last_tid));
        assert_eq!(ids.oid, Some(Oid(0x20)));
        assert_eq!(backend.first_tid().unwrap(), *by_tid.keys().next().unwrap());
    }
}

#[test]
fn fixture_objects_revisions_and_current() {
    let expected = expected();
    let last_tid = tid(&expected["last_tid"]);
    let undo = &expected["transactions"][6];
    let undo_tid = tid(&undo["tid"]);
    let undone_tid = tid(&undo["undo_of"]);
    let (_dir, mut backend) = open_copy("storage0.sqlite");
    let objects = expected["objects"].as_object().unwrap();
    assert_eq!(objects.len(), 32);
    let mut undone_oids = 0;
    for (oid_hex, revisions) in objects {
        let oid = oid(oid_hex);
        let revisions = revisions.as_array().unwrap();
        let history = backend.object_history(oid, 0, 100).unwrap();
        let touched_by_undo = revisions
            .iter()
            .any(|rev| tid(&rev["serial"]) == undone_tid);
        assert_eq!(
            history.len(),
            revisions.len() + usize::from(touched_by_undo),
            "history of {oid}"
        );
        // Newest first; the full list of serials gives next_serial.
        let serials: Vec<Tid> = history.iter().rev().map(|entry| entry.serial).collect();
        for window in history.windows(2) {
            assert!(window[0].serial > window[1].serial);
        }
        for rev in revisions {
            let serial = tid(&rev["serial"]);
            let record = load(&mut backend, oid, Some(serial), None);
            assert_eq!(record.serial, serial);
            assert_eq!(record.data_serial, None);
            let data = plain(&record);
            assert_eq!(data.len() as u64, rev["size"].as_u64().unwrap());
            assert_eq!(sha1_hex(&data), rev["sha1"].as_str().unwrap());
            let position = serials.iter().position(|s| *s == serial).unwrap();
            assert_eq!(record.next_serial, serials.get(position + 1).copied());
            // Stored size in the history.
            let entry = history.iter().find(|entry| entry.serial == serial).unwrap();
            assert_eq!(entry.size, record.data.len() as u64);
            // loadBefore(serial + 1) finds the same revision.
            let before = load(&mut backend, oid, None, Some(Tid(serial.0 + 1)));
            assert_eq!(before, record);
        }
        // Current revision: latest, and before last_tid + 1.
        let current = &expected["current"][oid_hex.as_str()];
        let latest = load(&mut backend, oid, None, None);
        assert_eq!(latest.serial, tid(&current["serial"]));
        assert_eq!(latest.next_serial, None);
        let data = plain(&latest);
        assert_eq!(sha1_hex(&data), current["sha1"].as_str().unwrap());
        assert_eq!(data.len() as u64, current["size"].as_u64().unwrap());
        let before = load(&mut backend, oid, None, Some(Tid(last_tid.0 + 1)));
        assert_eq!(before, latest);
        if touched_by_undo {
            undone_oids += 1;
            // The undo record points back at the revision before the undone one.
            assert_eq!(latest.serial, undo_tid);
            let index = revisions
                .iter()
                .position(|rev| tid(&rev["serial"]) == undone_tid)
                .unwrap();
            let restored = &revisions[index - 1];
            assert_eq!(latest.data_serial, Some(tid(&restored["serial"])));
            assert_eq!(sha1_hex(&data), restored["sha1"].as_str().unwrap());
        }
    }
    assert_eq!(undone_oids, 8);

    // Misses: before the first revision, and an unknown oid.
    let first = tid(&expected["objects"]["0000000000000001"][0]["serial"]);
    assert_eq!(
        backend.get_object(Oid(1), None, Some(first)).unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert_eq!(
        backend
            .get_object(Oid(1), Some(Tid(first.0 + 1)), None)
            .unwrap(),
        ObjectLookup::NoMatchingRevision
    );
    assert_eq!(
        backend.get_object(Oid(0x1234), None, None).unwrap(),
        ObjectLookup::OidDoesNotExist
    );
    assert!(backend
        .object_history(Oid(0x1234), 0, 10)
        .unwrap()
        .is_empty());
    assert_eq!(backend.last_object_tid(Oid(0x14)).unwrap(), Some(undo_tid));

    // Every oid has data at the last tid.
    let mut all = Vec::new();
    for partition in 0..4 {
        let (oids, next) = backend
            .oids_from(partition, 1000, Oid(0), last_tid)
            .unwrap();
        assert_eq!(next, None);
        assert!(oids.iter().all(|oid| oid.0 % 4 == u64::from(partition)));
        all.extend(oids);
    }
    all.sort();
    assert_eq!(all, (1..=32).map(Oid).collect::<Vec<_>>());
    // Paging: a full page gives the next min_oid.
    let (oids, next) = backend.oids_from(1, 2, Oid(0), last_tid).unwrap();
    assert_eq!(oids, vec![Oid(1), Oid(5)]);
    assert_eq!(next, Some(Oid(9)));
    // Before transaction 6, oids 31 and 32 did not exist.
    let (oids, _) = backend.oids_from(3, 1000, Oid(0), undone_tid).unwrap();
    assert!(!oids.contains(&Oid(31)));
}

#[test]
fn fixture_find_undo_tid() {
    let expected = expected();
    let last_tid = tid(&expected["last_tid"]);
    let snapshot = Tid(last_tid.0 + 1);
    let undo_tid = tid(&expected["transactions"][6]["tid"]);
    let undone_tid = tid(&expected["transactions"][6]["undo_of"]);
    let (_dir, mut backend) = open_copy("storage1.sqlite");
    let oids = backend
        .get_transaction(undone_tid, false)
        .unwrap()
        .unwrap()
        .oids;
    let objects = &expected["objects"];
    for oid in oids {
        let revisions = objects[oid.to_string().as_str()].as_array().unwrap();
        let index = revisions
            .iter()
            .position(|rev| tid(&rev["serial"]) == undone_tid)
            .unwrap();
        let previous = tid(&revisions[index - 1]["serial"]);
        // Undoing step 5 again: already undone, so not current.
        let UndoLookup::Found(found) = backend
            .find_undo_tid(oid, snapshot, undone_tid, None)
            .unwrap()
        else {
            panic!("{oid}: undo of step 5 not found");
        };
        assert_eq!(found.current_serial, undo_tid);
        assert_eq!(found.undo_serial, Some(previous));
        assert!(!found.is_current);
        // Undoing the undo: it is current and restores step 5.
        let UndoLookup::Found(found) = backend
            .find_undo_tid(oid, snapshot, undo_tid, None)
            .unwrap()
        else {
            panic!("{oid}: undo of the undo not found");
        };
        assert_eq!(found.current_serial, undo_tid);
        assert_eq!(found.undo_serial, Some(undone_tid));
        assert!(found.is_current);
        // From a snapshot before the undo, step 5 is current.
        let UndoLookup::Found(found) = backend
            .find_undo_tid(oid, undo_tid, undone_tid, None)
            .unwrap()
        else {
            panic!("{oid}: undo from an older snapshot not found");
        };
        assert_eq!(found.current_serial, undone_tid);
        assert!(found.is_current);
        // A snapshot that does not see the undone transaction.
        assert_eq!(
            backend
                .find_undo_tid(oid, undone_tid, undone_tid, None)
                .unwrap(),
            UndoLookup::NotVisible
        );
    }
    // An oid the undone transaction did not write.
    assert_eq!(
        backend
            .find_undo_tid(Oid(32), snapshot, undone_tid, None)
            .unwrap(),
        UndoLookup::NoRecord
    );
}

#[test]
fn fixture_undo_store_reuses_data_and_detects_pack() {
    let expected = expected();
    let first = tid(&expected["transactions"][0]["tid"]);
    let (_dir, mut backend) = open_copy("storage0.sqlite");
    let original = load(&mut backend, Oid(1), Some(first), None);
    // A back-pointer reuses the data id of the original record.
    let data_id = backend
        .store_data(Oid(1), original.checksum, &original.data, 1, Some(first))
        .unwrap()
        .unwrap();
    assert_eq!(data_id >> 48, 1, "data id of partition 1");
    let (compression, checksum, data) = backend.load_data(data_id).unwrap().unwrap();
    assert_eq!(
        (Some(compression), checksum, data),
        (
            original.compression,
            original.checksum,
            original.data.clone()
        )
    );
    // A back-pointer to a serial that does not exist: removed by pack.
    let err = backend
        .store_data(
            Oid(1),
            original.checksum,
            &original.data,
            1,
            Some(Tid(first.0 - 1)),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            neo_storage::backend::Error::Request(RequestError::UndoPack { .. })
        ),
        "{err}"
    );
    // New data of partition 3 goes after the 1 MiB object's id.
    let id = backend
        .store_data(Oid(3), original.checksum, &original.data, 1, None)
        .unwrap()
        .unwrap();
    assert_eq!(id, (3 << 48) + 12);
    backend.release_data(&[data_id, id], true).unwrap();
    assert!(
        backend.load_data(id).unwrap().is_none(),
        "unreferenced data pruned"
    );
    assert!(
        backend.load_data(data_id).unwrap().is_some(),
        "referenced data kept"
    );
}
