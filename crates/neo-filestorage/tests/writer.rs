//! What the writer writes, ZODB reads: the same transactions and loads,
//! with our index (which ZODB trusts, and which is byte for byte the one
//! ZODB would save) and without; ZODB's lock is ours and ours is ZODB's.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{assert_matches_zodb, dump, helper, helper_command, index_path, make, read_all};
use neo_filestorage::{Error, FileStorage, NewRecord, NewTransaction, Record, Transaction, Writer};

const T1: u64 = 0x03e0_0000_0000_0001;
const T2: u64 = T1 + 1;
const T3: u64 = T1 + 2;
const T4: u64 = T1 + 3;
const T5: u64 = T1 + 4;
/// pickle.dumps({'k': 'v'}, 3): what ZODB keeps as a transaction's extension.
const EXTENSION: &[u8] = b"\x80\x03}q\x00X\x01\x00\x00\x00kq\x01X\x01\x00\x00\x00vq\x02s.";

fn data(oid: u64, data: &[u8]) -> NewRecord<'_> {
    NewRecord {
        oid,
        data: Some(data),
        data_txn: None,
    }
}

fn back(oid: u64, data_txn: u64) -> NewRecord<'static> {
    NewRecord {
        oid,
        data: None,
        data_txn: Some(data_txn),
    }
}

fn no_data(oid: u64) -> NewRecord<'static> {
    NewRecord {
        oid,
        data: None,
        data_txn: None,
    }
}

fn txn<'a>(tid: u64, status: u8, records: Vec<NewRecord<'a>>) -> NewTransaction<'a> {
    NewTransaction {
        tid,
        status,
        user: b"",
        description: b"",
        extension: b"",
        records,
    }
}

fn record(oid: u64, data: Option<&[u8]>, data_txn: Option<u64>) -> Record {
    Record {
        oid,
        data: data.map(<[u8]>::to_vec),
        data_txn,
    }
}

/// Writes four transactions with everything a record can be: data (one
/// over 64 KiB), a deletion, an undone creation, backpointers (one to a
/// backpointer), a packed transaction; returns what a reader must see,
/// positions left at 0.
fn write_four(path: &Path, big: &[u8]) -> Vec<Transaction> {
    let mut writer = Writer::open(path).expect("create");
    assert_eq!(writer.last_tid(), None);
    let mut first = txn(
        T1,
        b' ',
        vec![data(0, b"root 1"), data(1, big), data(2, b"two 1")],
    );
    (first.user, first.description, first.extension) = (b"alice", b"first", EXTENSION);
    writer.append(&first).expect("T1");
    writer
        .append(&txn(
            T2,
            b' ',
            vec![data(0, b"root 2"), no_data(1), data(3, b"three")],
        ))
        .expect("T2");
    let checked = NewRecord {
        oid: 2,
        data: Some(b"two 1"),
        data_txn: Some(T1),
    };
    writer
        .append(&txn(T3, b'p', vec![back(0, T1), checked]))
        .expect("T3");
    writer
        .append(&txn(
            T4,
            b' ',
            vec![back(0, T3), no_data(4), data(1, b"one again")],
        ))
        .expect("T4");
    assert_eq!(writer.last_tid(), Some(T4));
    writer.close().expect("close");

    let plain = |tid, status, records| Transaction {
        tid,
        status,
        user: Vec::new(),
        description: Vec::new(),
        extension: Vec::new(),
        position: 0,
        records,
    };
    vec![
        Transaction {
            user: b"alice".to_vec(),
            description: b"first".to_vec(),
            extension: EXTENSION.to_vec(),
            ..plain(
                T1,
                b' ',
                vec![
                    record(0, Some(b"root 1"), None),
                    record(1, Some(big), None),
                    record(2, Some(b"two 1"), None),
                ],
            )
        },
        plain(
            T2,
            b' ',
            vec![
                record(0, Some(b"root 2"), None),
                record(1, None, None),
                record(3, Some(b"three"), None),
            ],
        ),
        plain(
            T3,
            b'p',
            vec![
                record(0, Some(b"root 1"), Some(T1)),
                record(2, Some(b"two 1"), Some(T1)),
            ],
        ),
        plain(
            T4,
            b' ',
            vec![
                record(0, Some(b"root 1"), Some(T3)),
                record(4, None, None),
                record(1, Some(b"one again"), None),
            ],
        ),
    ]
}

fn without_positions(mut txns: Vec<Transaction>) -> Vec<Transaction> {
    for txn in &mut txns {
        txn.position = 0;
    }
    txns
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn zodb_reads_what_the_writer_writes_with_our_index_and_without() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    let expected = write_four(&path, &big);
    assert_eq!(
        &fs::read(&path).expect("read")[..4],
        b"FS30",
        "ZODB's magic on Python 3"
    );

    let fs = FileStorage::open(&path).expect("open");
    assert!(fs.index_used(), "our own index is read back");
    assert_eq!(without_positions(read_all(&fs)), expected);

    let zodb = dump(&path);
    assert_eq!(zodb["used_index"], 1, "ZODB trusts our index");
    assert_matches_zodb(&fs, &zodb);

    // ZODB saves, for the same file, the very bytes we saved.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let copy = other_dir.path().join("Data.fs");
    fs::copy(&path, &copy).expect("copy");
    helper(&["reindex", utf8(&copy)]);
    let theirs = fs::read(index_path(&copy)).expect("ZODB's index");
    assert_eq!(
        fs::read(index_path(&path)).expect("our index"),
        theirs,
        "our index is ZODB's"
    );

    fs::remove_file(index_path(&path)).expect("remove our index");
    let zodb = dump(&path);
    assert_eq!(zodb["used_index"], 0);
    assert_matches_zodb(&FileStorage::open(&path).expect("open"), &zodb);

    // Appending later: prev pointers into the earlier transactions, a
    // backpointer to a backpointer's revision, data for a deleted oid.
    let mut writer = Writer::open(&path).expect("append");
    assert_eq!(writer.last_tid(), Some(T4));
    writer
        .append(&txn(
            T5,
            b' ',
            vec![data(0, b"root 5"), data(4, b"four reborn"), back(2, T3)],
        ))
        .expect("T5");
    writer.close().expect("close");
    let zodb = dump(&path);
    assert_eq!(zodb["used_index"], 1);
    let fs = FileStorage::open(&path).expect("open");
    assert_matches_zodb(&fs, &zodb);
    let last = fs.transaction(T5).expect("read").expect("T5");
    assert_eq!(last.records[2], record(2, Some(b"two 1"), Some(T3)));
}

#[test]
fn the_writer_appends_to_a_file_zodb_made_and_zodb_appends_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "Data.fs", &["--small"]);
    let before = read_all(&FileStorage::open(&path).expect("open"));
    let first = before[0].tid;
    let last = before.last().expect("transactions").tid;

    let mut writer = Writer::open(&path).expect("append");
    assert_eq!(writer.last_tid(), Some(last));
    // Root back to its first revision, new data for oid 1.
    writer
        .append(&txn(
            last + 1,
            b' ',
            vec![back(0, first), data(1, b"by neo-filestorage")],
        ))
        .expect("append");
    writer.close().expect("close");

    let zodb = dump(&path);
    assert_eq!(zodb["used_index"], 1);
    assert_matches_zodb(&FileStorage::open(&path).expect("open"), &zodb);

    helper(&["append", utf8(&path)]);
    let zodb = dump(&path);
    let fs = FileStorage::open(&path).expect("open");
    assert_matches_zodb(&fs, &zodb);
    assert_eq!(read_all(&fs).len(), before.len() + 3);
}

#[test]
fn what_the_format_cannot_hold_is_refused_and_leaves_the_file_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    let mut writer = Writer::open(&path).expect("create");
    writer
        .append(&txn(T2, b' ', vec![data(0, b"zero")]))
        .expect("T2");
    let long = vec![b'u'; 65536];
    let cases: Vec<(&str, NewTransaction<'_>)> = vec![
        ("an older tid", txn(T1, b' ', vec![data(0, b"x")])),
        ("the same tid", txn(T2, b' ', vec![data(0, b"x")])),
        (
            "a backpointer to no revision",
            txn(T3, b' ', vec![back(0, T1)]),
        ),
        (
            "a backpointer to an unknown oid",
            txn(T3, b' ', vec![back(9, T2)]),
        ),
        ("empty data", txn(T3, b' ', vec![data(0, b"")])),
        (
            "an oid twice",
            txn(T3, b' ', vec![data(1, b"a"), data(1, b"b")]),
        ),
        ("status 'c'", txn(T3, b'c', vec![data(1, b"a")])),
        (
            "a user of 64 KiB",
            NewTransaction {
                user: &long,
                ..txn(T3, b' ', vec![data(1, b"a")])
            },
        ),
        (
            "data that is not the backpointer's",
            txn(
                T3,
                b' ',
                vec![NewRecord {
                    oid: 0,
                    data: Some(b"other"),
                    data_txn: Some(T2),
                }],
            ),
        ),
    ];
    for (what, bad) in cases {
        let err = writer
            .append(&bad)
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        let expected = matches!(
            err,
            Error::TidNotIncreasing { .. } | Error::InvalidTransaction { .. }
        );
        assert!(expected, "{what}: {err}");
        assert!(
            err.to_string().contains(utf8(&path)),
            "{what}: names the file: {err}"
        );
    }
    writer
        .append(&txn(T3, b' ', vec![data(1, b"one")]))
        .expect("T3");
    writer.close().expect("close");
    let tids: Vec<u64> = read_all(&FileStorage::open(&path).expect("open"))
        .iter()
        .map(|t| t.tid)
        .collect();
    assert_eq!(tids, [T2, T3], "refused transactions left nothing");
}

#[test]
fn the_lock_is_zodbs_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    let lock = PathBuf::from(format!("{}.lock", path.display()));

    let writer = Writer::open(&path).expect("create");
    assert_eq!(
        fs::read_to_string(&lock).expect("lock file"),
        format!(" {}\n", std::process::id())
    );
    assert!(
        matches!(Writer::open(&path), Err(Error::Locked { .. })),
        "a second writer"
    );
    let out = helper(&["try-open", utf8(&path)]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "locked",
        "ZODB sees our lock"
    );
    // Readers take no lock.
    FileStorage::open(&path).expect("read while writing");
    writer.close().expect("close");

    let mut zodb = helper_command(&["hold-lock", utf8(&path)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ZODB");
    let mut line = String::new();
    let stdout = zodb.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ZODB's answer");
    assert_eq!(line.trim(), "locked", "ZODB opened the file");
    let err = Writer::open(&path).err().expect("ZODB holds the lock");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(zodb.stdin.take()); // ZODB closes the storage when stdin closes
    assert!(zodb.wait().expect("wait for ZODB").success());
    Writer::open(&path)
        .expect("the lock is free again")
        .close()
        .expect("close");
}

#[test]
fn a_crash_cut_tail_is_saved_aside_and_cut_off_as_zodb_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("Data.fs");
    let mut writer = Writer::open(&path).expect("create");
    writer
        .append(&txn(T1, b' ', vec![data(0, b"zero")]))
        .expect("T1");
    writer
        .append(&txn(T2, b' ', vec![data(0, b"zero 2"), data(1, b"one")]))
        .expect("T2");
    writer.close().expect("close");
    let whole = fs::read(&path).expect("read");
    let first_end = read_all(&FileStorage::open(&path).expect("open"))[1].position as usize;
    // T2 cut in its middle, as a crash while writing it would leave it.
    let cut = (first_end + whole.len()) / 2;
    fs::write(&path, &whole[..cut]).expect("cut");

    let mut writer = Writer::open(&path).expect("open a cut file");
    assert_eq!(writer.last_tid(), Some(T1));
    assert!(
        !index_path(&path).exists(),
        "the index of the whole file is gone"
    );
    let saved = fs::read(format!("{}.tr0", path.display())).expect("the tail saved");
    assert_eq!(saved, whole[first_end..cut]);
    writer
        .append(&txn(T3, b' ', vec![data(1, b"one at last")]))
        .expect("T3");
    writer.close().expect("close");

    let zodb = dump(&path);
    let fs = FileStorage::open(&path).expect("open");
    assert_matches_zodb(&fs, &zodb);
    let tids: Vec<u64> = read_all(&fs).iter().map(|t| t.tid).collect();
    assert_eq!(tids, [T1, T3]);
}

#[test]
fn a_file_cut_in_its_last_transaction_reads_but_is_not_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Data.fs");
    let mut writer = Writer::open(&path).unwrap();
    writer
        .append(&txn(0x10, b' ', vec![data(1, b"one")]))
        .unwrap();
    writer
        .append(&txn(0x20, b' ', vec![data(1, b"two")]))
        .unwrap();
    writer.close().unwrap();
    let whole = FileStorage::open(&path).unwrap();
    whole.check_complete().unwrap();
    let length = fs::metadata(&path).unwrap().len();
    let first_end = whole.transaction(0x20).unwrap().unwrap().position;
    drop(whole);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(length - 3)
        .unwrap();
    fs::remove_file(index_path(&path)).unwrap();
    // Read as ZODB reads it: up to the last whole transaction...
    let cut = FileStorage::open(&path).unwrap();
    assert_eq!(cut.last_tid(), Some(0x10));
    // ...but a migration is told.
    match cut.check_complete() {
        Err(Error::Truncated { offset, reason, .. }) => {
            assert_eq!(offset, first_end);
            assert!(reason.contains("incomplete transaction"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
