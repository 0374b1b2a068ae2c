//! Files made by ZODB read as ZODB reads them: with or without its index,
//! a stale index, a garbage index, packed files, ranges of transactions.

mod common;

use std::fs;
use std::path::Path;
use std::thread;

use common::{assert_matches_zodb, dump, helper, index_path, make, read_all};
use neo_filestorage::FileStorage;

#[test]
fn a_file_with_undo_deletions_and_big_records_reads_as_zodb_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "Data.fs", &[]);
    let zodb = dump(&path);
    assert_eq!(zodb["used_index"], 1, "ZODB saved its index on close");

    let fs = FileStorage::open(&path).expect("open");
    assert!(fs.index_used(), "ZODB's own index is read");
    assert_matches_zodb(&fs, &zodb);
    let txns = read_all(&fs);
    let records = txns.iter().flat_map(|t| &t.records);
    assert!(
        records.clone().any(|r| r.data_txn.is_some()),
        "the file has backpointers"
    );
    assert!(
        records.clone().any(|r| r.data.is_none()),
        "the file has records without data"
    );
    assert!(
        records
            .clone()
            .any(|r| r.data.as_ref().is_some_and(|d| d.len() > 65536)),
        "the file has big records"
    );
    assert!(
        txns.iter()
            .any(|t| !t.extension.is_empty() && !t.user.is_empty()),
        "the file has metadata"
    );

    // Without the index: a full scan, the same view.
    fs::remove_file(index_path(&path)).expect("remove the index");
    let scanned = FileStorage::open(&path).expect("open without index");
    assert!(!scanned.index_used());
    assert_matches_zodb(&scanned, &zodb);
}

#[test]
fn a_packed_file_reads_as_zodb_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "Data.fs", &["--pack"]);
    let zodb = dump(&path);
    let fs = FileStorage::open(&path).expect("open");
    assert_matches_zodb(&fs, &zodb);
    let statuses: Vec<u8> = read_all(&fs).iter().map(|t| t.status).collect();
    assert!(
        statuses.contains(&b'p') && statuses.contains(&b' '),
        "packed and later transactions: {statuses:?}"
    );
}

#[test]
fn a_stale_index_is_used_and_what_follows_it_scanned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "Data.fs", &["--small"]);
    let stale = fs::read(index_path(&path)).expect("ZODB's index");
    helper(&["append", path.to_str().expect("utf-8")]);
    fs::write(index_path(&path), &stale).expect("put the stale index back");

    let zodb = dump(&path);
    assert_eq!(zodb["used_index"], 1, "ZODB trusts the stale index too");
    let fs = FileStorage::open(&path).expect("open");
    assert!(fs.index_used());
    assert_matches_zodb(&fs, &zodb);
}

#[test]
fn an_index_that_does_not_match_the_file_is_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "Data.fs", &["--small"]);
    let good = fs::read(index_path(&path)).expect("ZODB's index");
    let zodb = dump(&path);

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not a pickle".to_vec()),
        ("empty", Vec::new()),
        ("cut in the middle", good[..good.len() / 2].to_vec()),
    ];
    // The same entries, but a position one byte off a transaction's end.
    let mut off_by_one = good.clone();
    assert_eq!(
        good[..3],
        [0x80, 3, b'M'],
        "the position, a 2-byte int, opens the index"
    );
    off_by_one[3] -= 1; // its low byte
    cases.push(("a position inside a transaction", off_by_one));

    for (what, bytes) in cases {
        fs::write(index_path(&path), &bytes).expect("write the index");
        let fs = FileStorage::open(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!fs.index_used(), "{what} index used");
        assert_matches_zodb(&fs, &zodb);
    }
}

#[test]
fn ranges_and_single_transactions_are_found_by_tid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "Data.fs", &["--small"]);
    // With the index, the transactions' positions come from their headers;
    // without, from the scan: both must find the same.
    for with_index in [true, false] {
        if !with_index {
            fs::remove_file(index_path(&path)).expect("remove the index");
        }
        let fs = FileStorage::open(&path).expect("open");
        assert_eq!(fs.index_used(), with_index);
        let all = read_all(&fs);
        let tids: Vec<u64> = all.iter().map(|t| t.tid).collect();
        let first = tids[0];
        let last = *tids.last().expect("transactions");
        let bounds = [
            0,
            first - 1,
            first,
            tids[1],
            tids[1] + 1,
            tids[3],
            last - 1,
            last,
            last + 1,
            u64::MAX,
        ];
        for start in bounds {
            for stop in bounds {
                let got: Vec<u64> = fs
                    .iter(Some(start), Some(stop))
                    .map(|t| t.expect("transaction").tid)
                    .collect();
                let expected: Vec<u64> = tids
                    .iter()
                    .copied()
                    .filter(|&t| start <= t && t <= stop)
                    .collect();
                assert_eq!(
                    got, expected,
                    "iter({start:x}, {stop:x}), index {with_index}"
                );
            }
        }
        for txn in &all {
            assert_eq!(
                fs.transaction(txn.tid).expect("transaction").as_ref(),
                Some(txn)
            );
            assert_eq!(fs.transaction(txn.tid + 1).expect("no transaction"), None);
        }
        assert_eq!(fs.transaction(0).expect("no transaction"), None);
    }
}

#[test]
fn several_threads_read_one_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "Data.fs", &[]);
    let zodb = dump(&path);
    let fs = FileStorage::open(&path).expect("open");
    thread::scope(|s| {
        for _ in 0..3 {
            let fs = fs.clone();
            let zodb = &zodb;
            s.spawn(move || assert_matches_zodb(&fs, zodb));
        }
    });
}

#[test]
fn files_that_are_not_filestorages_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    fs::write(&path, b"FS99 something").expect("write");
    let err = FileStorage::open(&path).err().expect("refused");
    assert!(
        matches!(err, neo_filestorage::Error::NotFileStorage { magic, .. } if &magic == b"FS99"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "names the file: {err}"
    );

    let missing = FileStorage::open(dir.path().join("missing.fs"))
        .err()
        .expect("missing");
    assert!(
        matches!(missing, neo_filestorage::Error::Io { .. }),
        "{missing}"
    );

    // ZODB reads an empty file as an empty storage.
    let empty = dir.path().join("empty.fs");
    fs::write(&empty, b"").expect("write");
    let fs = FileStorage::open(&empty).expect("empty file");
    assert_eq!(
        (fs.last_tid(), fs.object_count(), read_all(&fs).len()),
        (None, 0, 0)
    );
    assert!(Path::new(&empty).exists());
}
